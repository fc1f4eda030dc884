"""The collapse case: a segmenter whose activations use one or two INT8 steps loses its masks; the search fixes it.

``CollapseSeg`` (tests/precision/collapse_cases.py) computes what a briefly trained TinySeg
computes, with inputs at ±0.02 and a BatchNorm whose eps dwarfs its running variances, so one
activation tensor is a per-channel offset plus a signal 500 times smaller. Measured here:
onnxruntime INT8 (ort-cpu profile, per-tensor activations, per-channel weights) loses most of
the masks; the sensitivity analysis names that tensor; ``--precision auto`` keeps its writer and
reader float and meets the budget; label-free (plain photos) does the same against fp32 masks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import torch

import edgekit
from edgekit.cli import main
from edgekit.quantize import read_recipe_file

COLLAPSED_TENSOR = "/conv2/Conv_output_0"  # bn2 folded into conv2: the offsets + tiny signal


def _export(case, out: Path, **options):
    return edgekit.export(case.model, out=out, target="onnx-int8", task="segment", calib_data=case.train,
                          calib_samples=32, eval_data=case.eval, mean=case.mean, std=case.std, **options)


def test_the_rewrite_keeps_the_fp32_masks(collapse_case) -> None:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        normal, collapsing = collapse_case.normal(x), collapse_case.model(x * 0.02)
    assert torch.equal(normal.argmax(1), collapsing.argmax(1))
    # ... and the rewritten BatchNorm is the pathological kind: running variances far below eps
    bn = collapse_case.model.bn2
    assert float(bn.running_var.max()) < bn.eps / 1000


def test_int8_collapses_and_sensitivity_names_the_tensor(collapse_case, tmp_path: Path, capsys) -> None:
    result = _export(collapse_case, tmp_path / "int8", max_drop=1.0)
    report = result.report
    assert report.verdict == "FAIL" and report.evaluation["mode"] == "labelled"
    fp32, int8 = report.metrics["fp32"]["miou"], report.metrics["int8"]["miou"]
    assert fp32 > 0.15 and int8 < 0.5 * fp32  # most of the masks are gone
    code = main(["sensitivity", str(tmp_path / "int8"), "--calib-data", str(collapse_case.train), "--eval-data",
                 str(collapse_case.eval)])
    assert code == 0
    sens = json.loads((tmp_path / "int8" / "sensitivity.json").read_text())
    top = sens["rows"][0]
    assert (top["kind"], top["name"], top["steps"]) == ("tensor", COLLAPSED_TENSOR, 1)
    assert top["float_only_gain"] > 0.8 * sens["drop_int8"]  # keeping it float wins back nearly everything
    assert top["output_sqnr_db"] < 0  # on its own INT8, the outputs are noise
    assert top["sqnr_db"] > 40  # ... while the tensor itself looks fine: its offsets dominate its power
    assert COLLAPSED_TENSOR in capsys.readouterr().out
    rebuilt = json.loads((tmp_path / "int8" / "report.json").read_text())
    assert rebuilt["precision"]["sensitivity"]["rows"][0]["name"] == COLLAPSED_TENSOR
    html = (tmp_path / "int8" / "report.html").read_text()
    assert "Per-layer sensitivity" in html and COLLAPSED_TENSOR in html


def test_auto_precision_brings_it_within_budget(collapse_case, tmp_path: Path) -> None:
    result = _export(collapse_case, tmp_path / "auto", max_drop=1.0, precision="auto")
    record = result.report.precision["search"]
    assert record["drop_int8"] > 5 and record["drop"] <= 1.0 and record["verdict"] == "PASS"
    # onnxruntime writes integers out of QLinearConv: the tensor's writer and reader both stay float
    assert sorted(f["node"] for f in record["float_layers"]) == ["/conv2/Conv", "/mix/Conv"]
    assert result.report.verdict == "PASS" and result.report.drop <= 1.0
    recipes, calibration = read_recipe_file(tmp_path / "auto")
    assert {k: v.value for k, v in recipes["model"].layer_precision.items()} == {"/conv2/Conv": "fp32",
                                                                                 "/mix/Conv": "fp32"}
    qdq = onnx.load(tmp_path / "auto" / "model.onnx")
    assert COLLAPSED_TENSOR not in {n.input[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    html = (tmp_path / "auto" / "report.html").read_text()
    assert "Mixed precision: layers kept in float" in html and "latency vs full INT8" in html


def test_label_free_on_plain_photos(collapse_case, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted((collapse_case.eval / "images").iterdir())[:24]:
        shutil.copy(path, photos / path.name)
    plain = edgekit.export(collapse_case.model, out=tmp_path / "int8", target="onnx-int8", task="segment",
                           calib_data=collapse_case.train, calib_samples=32, eval_data=photos, mean=collapse_case.mean,
                           std=collapse_case.std, max_drop=5.0)
    assert plain.report.evaluation["mode"] == "label-free"
    assert plain.report.headline["key"] == "miou_vs_fp32" and plain.report.metrics["fp32"]["miou_vs_fp32"] == 1.0
    assert plain.report.metrics["int8"]["miou_vs_fp32"] < 0.3 and plain.report.verdict == "FAIL"
    auto = edgekit.export(collapse_case.model, out=tmp_path / "auto", target="onnx-int8", task="segment",
                          calib_data=collapse_case.train, calib_samples=32, eval_data=photos, mean=collapse_case.mean,
                          std=collapse_case.std, max_drop=5.0, precision="auto")
    record = auto.report.precision["search"]
    assert record["mode"] == "label-free" and record["metric"] == "miou_vs_fp32" and record["verdict"] == "PASS"
    assert {"/conv2/Conv", "/mix/Conv"} <= {f["node"] for f in record["float_layers"]}
    assert auto.report.verdict == "PASS" and np.isclose(auto.report.drop, record["drop"], atol=1e-6)
    assert "label-free" in auto.report.notes[0]
