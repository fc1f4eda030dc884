"""Classification training: batches as evaluation sees them, augmentation, a tiny overfit, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.cli import main
from edgekit.data import open_dataset, synthesize
from edgekit.models.registry import get_spec
from edgekit.train import TrainConfig, train
from edgekit.train.classification import ClassificationTrainer, random_dihedral


@pytest.fixture(scope="module")
def cls12(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve 32x32 images, two per class (seed 11)."""
    return synthesize("cls", 12, 11, tmp_path_factory.mktemp("data") / "cls", imgsz=32)


def test_batch_is_the_evaluation_tensor_up_to_a_symmetry(cls12: Path) -> None:
    dataset = open_dataset(cls12)
    trainer = ClassificationTrainer(dataset, ClassificationTrainer.default_preprocess(32),
                                    get_spec("shufflenetv2-0.5"), dataset.num_classes)
    x, y = trainer.make_batch([0, 5, 7], np.random.default_rng(0))
    assert x.dtype == torch.float32 and x.shape == (3, 3, 32, 32)
    assert y.tolist() == [dataset[i].label for i in (0, 5, 7)]
    for row, i in zip(x, (0, 5, 7)):
        ref = torch.from_numpy(trainer.preprocess(dataset[i].image)[0][0])
        variants = [torch.rot90(v, k, (1, 2)) for v in (ref, ref.flip(2)) for k in range(4)]
        assert any(torch.equal(row, v) for v in variants)


def test_dihedral_moves_images_and_masks_together_and_draws_all_eight() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (64, 5, 5, 3), dtype=np.uint8)
    masks = images[..., 0].copy()
    out_images, out_masks = random_dihedral(rng, images, masks)
    assert np.array_equal(out_images[..., 0], out_masks)
    seen = {next(k for k in range(8) if np.array_equal(
        np.rot90(images[i][:, ::-1] if k & 1 else images[i], k >> 1), out_images[i])) for i in range(64)}
    assert seen == set(range(8))
    assert np.array_equal(images[..., 0], masks)  # inputs untouched


def test_dihedral_only_half_turns_non_square_items() -> None:
    images = np.arange(40 * 2 * 3).reshape(40, 2, 3)
    (out,) = random_dihedral(np.random.default_rng(0), images)
    assert out.shape == images.shape  # a quarter-turn would have failed to fit


def test_tiny_overfit_drives_the_loss_down(tmp_path: Path) -> None:
    # Six 64x64 images, one batch, 12 steps: the loss falls from ~ln 6 towards the smoothing floor.
    data = synthesize("cls", 6, 11, tmp_path / "cls", imgsz=64)
    result = train(TrainConfig(model="mobilenetv3-small", data=data, out=tmp_path / "w.safetensors", epochs=12,
                               batch=6, imgsz=64, lr=3e-3, weight_decay=0.0, threads=1, progress=False, seed=0))
    ce = [epoch["ce"] for epoch in result.losses]
    assert np.mean(ce[-3:]) < 0.6 * np.mean(ce[:3]), ce


def test_cli_trains_then_evaluates_to_json(cls12: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "w.safetensors"
    assert main(["train", "--model", "shufflenetv2-0.5", "--data", str(cls12), "--epochs", "1", "--batch", "4",
                 "--imgsz", "32", "--out", str(weights), "--threads", "1"]) == 0
    assert weights.is_file() and weights.with_suffix(".json").is_file()
    capsys.readouterr()
    assert main(["eval", "--model", "shufflenetv2-0.5", "--weights", str(weights), "--data", str(cls12),
                 "--json", str(tmp_path / "m.json")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "m.json").read_text())
    assert printed["images"] == 12 and printed["imgsz"] == [32, 32] and 0 <= printed["top1"] <= printed["top5"] <= 1


def test_cli_error_is_one_line(cls12: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--model", "shufflenetv2-0.5", "--data", str(cls12), "--out", str(tmp_path / "w.pt")])
    out = capsys.readouterr().out
    assert code == 1 and "TrainError" in out and ".safetensors" in out and "Traceback" not in out
