"""Segmentation training: aligned masks, OHEM, auxiliary heads trained but not shipped, a tiny overfit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgekit.data import open_dataset, synthesize
from edgekit.models.registry import get_spec
from edgekit.models.weights import load_weights
from edgekit.train import TrainConfig, train
from edgekit.train.segmentation import SegmentationTrainer, ohem_cross_entropy


@pytest.fixture(scope="module")
def seg4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four 64x64 scenes with masks (seed 13)."""
    return synthesize("seg", 4, 13, tmp_path_factory.mktemp("data") / "seg", imgsz=64)


def _trainer(data: Path, model: str, imgsz: int) -> SegmentationTrainer:
    dataset = open_dataset(data)
    return SegmentationTrainer(dataset, SegmentationTrainer.default_preprocess(imgsz), get_spec(model),
                               dataset.num_classes)


def test_masks_are_resized_and_turned_with_their_images(seg4: Path) -> None:
    trainer = _trainer(seg4, "lpsnet-s", 32)
    x, y = trainer.make_batch([0, 1, 2, 3], np.random.default_rng(3))
    assert x.shape == (4, 3, 32, 32) and y.shape == (4, 32, 32) and y.dtype == torch.int64
    for i in range(4):
        pixels, mask = trainer.sample(i)
        assert mask.shape == (32, 32) and set(np.unique(mask)) <= set(range(7))
        ref_x = torch.from_numpy(trainer.preprocess.normalize(pixels)[0])
        ref_y = torch.from_numpy(mask.astype(np.int64))
        pairs = [(torch.rot90(a, k, (-2, -1)), torch.rot90(b, k, (-2, -1)))
                 for a, b in ((ref_x, ref_y), (ref_x.flip(-1), ref_y.flip(-1))) for k in range(4)]
        assert any(torch.equal(x[i], a) and torch.equal(y[i], b) for a, b in pairs)


def test_bisenet_trains_with_aux_heads_and_ships_without_them(seg4: Path, tmp_path: Path) -> None:
    trainer = _trainer(seg4, "bisenet", 64)
    model = trainer.build_model().train()
    assert model.aux16 is not None
    terms = trainer.loss(model, trainer.make_batch([0, 1], np.random.default_rng(0)))
    assert set(terms) == {"ce", "aux1", "aux2"} and all(t.item() > 0 for t in terms.values())
    state = trainer.export_state(model)
    assert not any(k.startswith("aux") for k in state)
    assert any(k.startswith("aux") for k in model.state_dict())
    result = train(TrainConfig(model="bisenet", data=seg4, out=tmp_path / "b.safetensors", epochs=1, batch=2,
                               imgsz=64, threads=1, progress=False))
    assert set(result.losses[0]) == {"ce", "aux1", "aux2", "loss"}
    load_weights(get_spec("bisenet").build(num_classes=7), result.weights, strict=True)


def test_tiny_overfit_drives_the_loss_down(seg4: Path, tmp_path: Path) -> None:
    # Four 64x64 scenes, one batch, 12 steps of BiSeNet (main and both auxiliary heads).
    result = train(TrainConfig(model="bisenet", data=seg4, out=tmp_path / "w.safetensors", epochs=12, batch=4,
                               imgsz=64, lr=5e-3, weight_decay=0.0, threads=1, progress=False))
    ce = [epoch["ce"] for epoch in result.losses]
    assert np.mean(ce[-3:]) < 0.6 * np.mean(ce[:3]), ce
    assert result.losses[-1]["aux1"] < result.losses[0]["aux1"]


def test_ohem_averages_only_the_hard_pixels() -> None:
    # 10 pixels of class 0: 8 confidently right (p ~ 0.999), 2 wrong; 2 more ignored.
    logits = torch.zeros(1, 2, 1, 12)
    logits[0, 0, 0, :8] = 7.0
    logits[0, 1, 0, 8:] = 3.0
    target = torch.zeros(1, 1, 12, dtype=torch.int64)
    target[0, 0, 10:] = 255
    hard = F.cross_entropy(logits[..., 8:10], target[..., 8:10])
    assert ohem_cross_entropy(logits, target, min_kept=0.1) == pytest.approx(hard.item())
    # Fewer hard pixels than min_kept: the highest losses fill up the share (5 of 10 pixels).
    top5 = F.cross_entropy(logits, target, ignore_index=255, reduction="none").flatten()[:10].topk(5).values
    assert ohem_cross_entropy(logits, target, min_kept=0.5) == pytest.approx(top5.mean().item())


def test_ohem_of_an_unlabelled_batch_is_zero_with_a_gradient() -> None:
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = ohem_cross_entropy(logits, torch.full((1, 2, 2), 255))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None
