"""Detection training: anchor and RoI targets by hand, flips, an overfit run, determinism, the evaluator."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.data import ImageMeta, synthesize
from edgekit.models import get_spec
from edgekit.train import TrainConfig, get_task_trainer, train
from edgekit.train.detection import (
    IGNORE,
    DetectionLossConfig,
    DetectionTarget,
    DetectionTrainer,
    PreparedImage,
    hflip,
    losses,
    match_anchors,
    sample_rois,
    subsample,
    training_proposal_counts,
)
from edgekit.train.detection_eval import to_detections


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: the steps are many small ops, which a second thread only slows down."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def boxes(*rows: tuple[float, float, float, float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_match_anchors_thresholds_and_best_anchor() -> None:
    gt = boxes((0, 0, 10, 10), (100, 100, 120, 140))
    anchors = boxes(
        (0, 0, 10, 11),      # IoU 0.91 with gt 0: positive
        (0, 0, 10, 14),      # IoU 0.71: positive
        (0, 0, 10, 20),      # IoU 0.5: ignored
        (50, 50, 60, 60),    # IoU 0: negative
        (100, 100, 120, 200),  # IoU 0.4 with gt 1, its best anchor: positive despite < 0.7
        (0, 5, 10, 40),      # IoU 0.125 with gt 0: negative
    )
    labels, matched = match_anchors(anchors, gt, 0.7, 0.3)
    assert labels.tolist() == [1, 1, IGNORE, 0, 1, 0]
    assert matched[[0, 1, 4]].tolist() == [0, 0, 1]


def test_match_anchors_ties_and_no_gt() -> None:
    gt = boxes((0, 0, 20, 20))
    anchors = boxes((0, 0, 10, 40), (0, 0, 40, 10), (100, 100, 110, 110))  # both IoU 1/3, tied best
    labels, _ = match_anchors(anchors, gt, 0.7, 0.3)
    assert labels.tolist() == [1, 1, 0]
    labels, matched = match_anchors(anchors, torch.zeros(0, 4), 0.7, 0.3)
    assert labels.tolist() == [0, 0, 0] and matched.tolist() == [0, 0, 0]


def test_subsample_caps_positives_and_fills_with_negatives() -> None:
    torch.manual_seed(0)
    labels = torch.tensor([1] * 10 + [0] * 100 + [IGNORE] * 5)
    out = subsample(labels, batch=16, positive_fraction=0.25)
    assert int((out == 1).sum()) == 4 and int((out == 0).sum()) == 12
    assert bool((out[110:] == IGNORE).all())
    few = subsample(torch.tensor([1, 0, 0, 0]), batch=256, positive_fraction=0.5)
    assert few.tolist() == [1, 0, 0, 0]  # fewer than the batch: everything labelled is kept


def test_sample_rois_adds_gt_with_zero_box_targets() -> None:
    torch.manual_seed(0)
    model = get_spec("thundernet-snet49").build(num_classes=6)
    target = DetectionTarget(boxes((10, 10, 50, 60)), torch.tensor([4]))
    proposals = boxes((10, 10, 50, 62), (200, 200, 260, 260), (12, 10, 50, 60))
    rois, cls, deltas = sample_rois(model, proposals, target)
    assert rois.shape == (4, 4)
    by_roi = {tuple(r.tolist()): (int(c), d) for r, c, d in zip(rois, cls, deltas)}
    assert by_roi[(10.0, 10.0, 50.0, 60.0)][0] == 5  # class index 4 -> logit column 5
    assert torch.allclose(by_roi[(10.0, 10.0, 50.0, 60.0)][1], torch.zeros(4))
    assert by_roi[(200.0, 200.0, 260.0, 260.0)][0] == 0  # background
    # (12, 10, 50, 60) vs gt: dx = 10 * (30 - 31) / 38
    assert by_roi[(12.0, 10.0, 50.0, 60.0)][1][0].item() == pytest.approx(10 * -1 / 38, rel=1e-5)


def test_training_proposal_counts_are_restored() -> None:
    model = get_spec("thundernet-snet49").build(num_classes=6)
    with training_proposal_counts(model, 2000, 300):
        assert (model.pre_nms_top_n, model.post_nms_top_n) == (2000, 300)
    assert (model.pre_nms_top_n, model.post_nms_top_n) == (2000, 200)


def test_hflip_moves_pixels_and_boxes_together() -> None:
    pixels = np.zeros((8, 10, 3), np.uint8)
    pixels[2:5, 1:3] = 255  # object at x in [1, 3)
    image = PreparedImage(pixels, np.array([[1, 2, 3, 5]], np.float32), np.array([2]))
    flipped = hflip(image)
    assert flipped.boxes.tolist() == [[7, 2, 9, 5]]
    ys, xs = np.nonzero(flipped.pixels[..., 0])
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (7, 9, 2, 5)
    assert hflip(flipped).boxes.tolist() == image.boxes.tolist()


@pytest.fixture(scope="module")
def tiny_det(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize("det", 4, seed=77, out=tmp_path_factory.mktemp("det") / "train", imgsz=160)


def test_loss_decreases_on_four_image_overfit(tiny_det: Path) -> None:
    """20 AdamW steps on the same 4 images (160 px, SNet49) at least halve the total loss.

    64 proposals per image instead of 300 keep the RPN NMS (a Python loop) short.
    """
    from edgekit.data import open_dataset

    torch.manual_seed(0)
    spec = get_spec("thundernet-snet49")
    trainer = DetectionTrainer(open_dataset(tiny_det), DetectionTrainer.default_preprocess(160), spec, 6)
    model = trainer.build_model().train()
    images, targets = trainer.make_batch([0, 1, 2, 3], np.random.default_rng(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    totals = []
    config = DetectionLossConfig(train_post_nms_top_n=64)
    for _ in range(20):
        terms = losses(model, images, targets, config)
        total = sum(terms.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(float(total.detach()))
    assert all(math.isfinite(t) for t in totals)
    assert sum(totals[-3:]) / 3 < 0.5 * totals[0], totals


def test_training_run_is_bit_identical_for_a_seed(tiny_det: Path, tmp_path: Path) -> None:
    """The registered trainer through edgekit.train: same seed and threads, bit-identical tensors.

    The files' bytes may still differ: safetensors writes the metadata keys in hash-map order.
    """
    from safetensors import safe_open

    assert get_task_trainer("detect") is DetectionTrainer
    runs = []
    for run in ("a", "b"):
        out = tmp_path / run / "w.safetensors"
        train(TrainConfig(model="thundernet-snet49", data=tiny_det, out=out, epochs=1, imgsz=160, batch=2,
                          seed=5, threads=1, progress=False))
        with safe_open(str(out), "pt") as f:
            runs.append((f.metadata(), {k: f.get_tensor(k) for k in f.keys()}))
    (meta_a, a), (meta_b, b) = runs
    assert meta_a == meta_b and a.keys() == b.keys() and len(a) > 100
    assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def test_to_detections_maps_letterboxed_boxes_back_and_drops_padding() -> None:
    # A 200x100 (w x h) image letterboxed into 100x100: scale 0.5, 25 px bands top and bottom.
    meta = ImageMeta(orig_size=(100, 200), input_size=(100, 100), resized=(50, 100), scale=(0.5, 0.5), pad=(25, 0))
    out = to_detections(np.array([[10, 30, 20, 40], [0, 0, 0, 0]], np.float32), np.array([0.9, 0.0], np.float32),
                        np.array([3, -1]), meta)
    assert out.boxes.tolist() == [[20, 10, 40, 30]]
    assert out.labels.tolist() == [3] and out.scores.tolist() == pytest.approx([0.9])
