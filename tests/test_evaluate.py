"""PyTorch evaluation: metrics wired to the data, preprocessing taken from the weights' card."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from edgekit.data import MaskFolders, Preprocess, open_dataset
from edgekit.errors import EdgekitError
from edgekit.evaluate import default_preprocess, evaluate, evaluate_model
from edgekit.models.registry import Task, get_spec
from edgekit.train import WeightsCard, save_weights, write_card

SAMPLES = Path(__file__).resolve().parents[1] / "edgekit" / "data" / "samples"


class Constant(nn.Module):
    """Predicts the same class scores everywhere: ``[N, C]`` or ``[N, C, H, W]``."""

    def __init__(self, scores: list[float], dense: bool) -> None:
        super().__init__()
        self.register_buffer("scores", torch.tensor(scores))
        self.dense = dense

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        s = self.scores[None, :, None, None].expand(n, -1, h, w) if self.dense else self.scores.expand(n, -1)
        return s.clone()


def test_classification_counts_top1_and_top5() -> None:
    dataset = open_dataset(SAMPLES / "cls-val")  # 10 images of each of 6 classes
    metrics = evaluate_model(Constant([1, 0.5, 0.4, 0.3, 0.2, 0], dense=False), Task.CLASSIFY, dataset,
                             Preprocess(imgsz=(96, 96)), batch_size=7)
    assert metrics == {"top1": pytest.approx(10 / 60), "top5": pytest.approx(50 / 60)}


@pytest.mark.parametrize("imgsz", [256, 96])
def test_segmentation_scores_at_the_mask_resolution(imgsz: int) -> None:
    dataset = open_dataset(SAMPLES / "seg-val")
    masks = np.stack([s.mask for s in dataset])
    background = float((masks == 0).mean())
    metrics = evaluate_model(Constant([1, 0, 0, 0, 0, 0, 0], dense=True), Task.SEGMENT, dataset,
                             Preprocess(imgsz=(imgsz, imgsz)))
    assert metrics["pixel_accuracy"] == pytest.approx(background)
    assert metrics["per_class_iou"] == {"background": pytest.approx(background), "circle": 0.0, "ellipse": 0.0,
                                        "hexagon": 0.0, "square": 0.0, "star": 0.0, "triangle": 0.0}
    assert metrics["miou"] == pytest.approx(background / 7)


def test_segmentation_leaves_ignored_pixels_out(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.new("RGB", (8, 4)).save(tmp_path / "images" / "a.png")
    mask = np.full((4, 8), 1, np.uint8)
    mask[:, :2] = 0
    mask[:, 6:] = 255
    Image.fromarray(mask).save(tmp_path / "masks" / "a.png")
    metrics = evaluate_model(Constant([0, 1], dense=True), Task.SEGMENT, MaskFolders(tmp_path, classes=["bg", "fg"]),
                             Preprocess(imgsz=(4, 8)))
    assert metrics["pixel_accuracy"] == pytest.approx(16 / 24)  # 8 ignored pixels do not count
    assert metrics["per_class_iou"] == {"bg": 0.0, "fg": pytest.approx(16 / 24)}


def test_evaluate_takes_size_and_preprocessing_from_the_card(tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    save_weights(get_spec("shufflenetv2-0.5").build(num_classes=6).state_dict(), weights)
    write_card(WeightsCard(model="shufflenetv2-0.5", task="classify", num_classes=6, class_names=[],
                           imgsz=(48, 48), preprocess=Preprocess(imgsz=(48, 48)).to_dict()), weights)
    result = evaluate("shufflenetv2-0.5", weights, SAMPLES / "cls-val", limit=5)
    assert result["imgsz"] == [48, 48] and result["images"] == 5 and result["task"] == "classify"
    assert set(result) >= {"top1", "top5", "model", "weights", "data"}
    with pytest.raises(EdgekitError, match="trained for 'shufflenetv2-0.5', not 'mobilenetv2'"):
        evaluate("mobilenetv2", weights, SAMPLES / "cls-val")


def test_without_a_card_the_task_defaults_apply() -> None:
    pre = default_preprocess("classify", (224, 224))
    assert pre.resize.value == "shorter-side-crop" and pre.crop_pct == 0.875
    assert default_preprocess(Task.SEGMENT, (64, 64)).resize.value == "stretch"
    result = evaluate("shufflenetv2-0.5", None, SAMPLES / "cls-val", limit=2)
    assert result["imgsz"] == [224, 224] and result["weights"] is None


def test_data_of_another_task_is_refused() -> None:
    with pytest.raises(EdgekitError, match="segment dataset but the model is a classify model"):
        evaluate("shufflenetv2-0.5", None, SAMPLES / "seg-val", limit=1)


def test_cli_warns_when_weights_have_no_card(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from edgekit.cli import app

    weights = tmp_path / "w.safetensors"
    save_weights(get_spec("shufflenetv2-0.5").build(num_classes=6).state_dict(), weights)
    args = ["eval", "--model", "shufflenetv2-0.5", "--weights", str(weights), "--data", str(SAMPLES / "cls-val"),
            "--limit", "2"]
    bare = CliRunner().invoke(app, args)
    assert bare.exit_code == 0, bare.output
    assert "no card beside" in bare.stderr and "224x224" in bare.stderr
    sized = CliRunner().invoke(app, [*args, "--imgsz", "64", "64", "--json", str(tmp_path / "m.json")])
    assert sized.exit_code == 0, sized.output
    import json

    stored = json.loads((tmp_path / "m.json").read_text())
    assert stored["imgsz"] == [64, 64] and stored["preprocessing"] == "registered defaults, --imgsz"
    write_card(WeightsCard(model="shufflenetv2-0.5", task="classify", num_classes=6, class_names=[],
                           imgsz=(48, 48), preprocess=Preprocess(imgsz=(48, 48)).to_dict()), weights)
    carded = CliRunner().invoke(app, args)
    assert carded.exit_code == 0 and "no card" not in carded.stderr
