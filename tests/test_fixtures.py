"""The trained fixtures that ship in ``edgekit/fixtures``: each meets its bar on held-out data.

Held-out means the shipped sample sets (``edgekit/data/samples``, seeds 1001-1003), whose
seed differs from the training set's (the card records the training set's ``synth.json``).
Each set is scored whole: 60 images, about 1 s per classifier and a few seconds per
segmenter or detector.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from edgekit.evaluate import evaluate
from edgekit.models.registry import get_spec
from edgekit.models.weights import load_weights
from edgekit.train import read_card

ROOT = Path(__file__).resolve().parents[1] / "edgekit"
FIXTURES = ROOT / "fixtures"
SAMPLES = ROOT / "data" / "samples"

# (model, held-out set, metric, bar): the bars of the issue that asked for these fixtures
# (top-1 >= 0.95, ThunderNet-SNet146 AP50 >= 0.70, mIoU >= 0.75). thundernet-snet49 has no bar
# in the issue: its row holds its measured AP50 less a margin, so a worse retrain cannot ship
# silently. Segmenters are added when their weights ship (see fixtures/README.md).
BARS = [
    ("shufflenetv2-1.0", "cls-val", "top1", 0.95),
    ("mobilenetv2", "cls-val", "top1", 0.95),
    ("thundernet-snet146", "det-val", "map50", 0.70),
    ("thundernet-snet49", "det-val", "map50", 0.50),
    ("dfanet-b", "seg-val", "miou", 0.75),
    ("bisenet", "seg-val", "miou", 0.75),
    ("lpsnet-s", "seg-val", "miou", 0.75),
]


@pytest.mark.parametrize(("name", "held_out", "metric", "bar"), BARS, ids=[b[0] for b in BARS])
def test_fixture_meets_its_bar_on_held_out_data(name: str, held_out: str, metric: str, bar: float) -> None:
    weights = FIXTURES / f"{name}.safetensors"
    card = read_card(weights)
    assert card is not None, f"{weights} has no card"
    val_seed = json.loads((SAMPLES / held_out / "synth.json").read_text())["seed"]
    assert card.train["data_synth"]["seed"] != val_seed, "trained on the held-out seed"
    result = evaluate(name, weights, SAMPLES / held_out)
    assert result["images"] == 60 and result["imgsz"] == list(card.imgsz)
    assert result[metric] >= bar, result
    assert card.metric is not None and result[metric] == pytest.approx(card.metric[metric], abs=1e-6)


@pytest.mark.parametrize("name", [b[0] for b in BARS])
def test_fixture_is_fp16_and_loads_strictly_into_the_default_build(name: str) -> None:
    weights = FIXTURES / f"{name}.safetensors"
    with safe_open(str(weights), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
        assert f.metadata()["model"] == name
    assert torch.float32 not in dtypes and torch.float16 in dtypes
    card = read_card(weights)
    assert card is not None and card.model == name and len(card.class_names) == card.num_classes
    load_weights(get_spec(name).build(num_classes=card.num_classes), weights, strict=True)


def test_readme_lists_every_fixture_with_its_command() -> None:
    readme = (FIXTURES / "README.md").read_text()
    for name, *_ in BARS:
        card = read_card(FIXTURES / f"{name}.safetensors")
        assert card is not None and card.command in readme, name
