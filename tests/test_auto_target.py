"""``--target auto-int8`` (``edgekit.auto_target``): candidates exported, measured here, the fastest within budget kept.

A two-conv classifier on 24 synthetic images (10 calibrate, 14 evaluate) keeps each run to a
few seconds; the choice rule itself is tested on hand-made rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import edgekit
from edgekit import auto_target
from edgekit.api import ExportResult
from edgekit.auto_target import (
    INT8_REPORT_NAME,
    SAFER_FIRST,
    SELECTION_NAME,
    TIE_FRACTION,
    Candidate,
    SelectionOptions,
    decide,
    read_selection,
)
from edgekit.bundle import read_manifest
from edgekit.cli import main
from edgekit.data import synthesize
from edgekit.errors import CalibrationDataError, ExportError, UnknownTargetError
from edgekit.exporters.registry import Precision
from edgekit.models.layers import ConvBNAct
from edgekit.report import AccuracyBudgetError
from edgekit.report.latency import LatencyComparison
from edgekit.report.report import _speed_notes
from edgekit.runtimes import load

PAIR = SelectionOptions(candidates="onnx-fp32,onnx-int8", runs=5)
TINY_FACTORY = '''
from torch import nn
from edgekit.models.layers import ConvBNAct


def tiny(num_classes: int = 6) -> nn.Module:
    net = nn.Sequential(ConvBNAct(3, 8, 3, stride=2), ConvBNAct(8, 16, 3, stride=2), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(16, num_classes))
    net.input_size = (32, 32)
    return net
'''


def tiny_net() -> nn.Module:
    """Two convs and a linear head, 32x32 input, 6 classes (the synthetic shapes)."""
    torch.manual_seed(0)
    net = nn.Sequential(ConvBNAct(3, 8, 3, stride=2), ConvBNAct(8, 16, 3, stride=2), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(16, 6))
    net.input_size = (32, 32)  # type: ignore[assignment]
    return net


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize("cls", 24, 4401, tmp_path_factory.mktemp("auto") / "data", imgsz=48)


@pytest.fixture(scope="module")
def pair(data: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    out = tmp_path_factory.mktemp("pair") / "bundle"
    return edgekit.export(tiny_net(), out=out, target="auto-int8", calib_data=data, calib_samples=10, selection=PAIR)


def expected_choice(rows: list[dict[str, Any]]) -> str:
    """The rule, from the recorded numbers: the fastest within budget; ties within 3 % go to the safer precision."""
    within = [r for r in rows if r["meets_budget"]]
    fastest = min(r["latency_ms"]["p50"] for r in within)
    tied = [r for r in within if r["latency_ms"]["p50"] <= fastest * (1 + TIE_FRACTION)]
    return min(tied, key=lambda r: (SAFER_FIRST.index(Precision(r["precision"])), r["latency_ms"]["p50"]))["target"]


# ---------------------------------------------------------------- end to end


def test_selection_json_records_every_candidate_and_the_rule_picks_the_chosen(pair: ExportResult) -> None:
    selection = read_selection(pair.bundle)
    assert selection is not None and selection == pair.selection.to_dict()  # type: ignore[union-attr]
    rows = selection["candidates"]
    assert [r["target"] for r in rows] == ["onnx-fp32", "onnx-int8"]
    assert [r["target"] for r in rows if r["chosen"]] == [selection["chosen"]] == [expected_choice(rows)]
    reference = selection["reference"]["metric"]
    for r in rows:
        assert r["drop_pt"] == pytest.approx(100 * (reference - r["metric"]), abs=1e-3)
        assert r["meets_budget"] == (r["drop_pt"] <= selection["max_drop"])
        assert r["backend"] == "onnxruntime" and r["size_bytes"] > 0 and r["reason"]
        assert r["latency_ms"]["p50"] >= r["latency_ms"]["infer_p50"] > 0
    fp32 = next(r for r in rows if r["target"] == "onnx-fp32")
    assert fp32["drop_pt"] == 0.0 and fp32["meets_budget"]  # the reference's own function
    assert "onnx-int8" in selection["reference"]["source"]
    assert selection["requested"] == "auto-int8" and selection["metric"]["key"] == "top1"
    assert selection["evaluation"]["same_as_calibration"] and selection["evaluation"]["images"] == 14
    assert selection["runs"] == 5 and selection["threads"] >= 1
    assert {"model", "machine", "isa"} <= set(selection["cpu"]) and isinstance(selection["cpu"]["isa"], list)


def test_the_bundle_at_out_is_the_chosen_target_and_predicts(pair: ExportResult) -> None:
    chosen = pair.selection.chosen  # type: ignore[union-attr]
    manifest = read_manifest(pair.bundle)
    assert manifest.target == chosen == pair.manifest.target
    assert not (pair.bundle / "candidates").exists()
    assert not [p for p in pair.bundle.parent.iterdir() if p.name.startswith(".")]  # no temporary siblings left
    model = load(pair.bundle, backend="onnxruntime")
    result = model.predict(np.full((48, 48, 3), 128, np.uint8))
    assert len(result.class_ids) == 5
    names = {p.name for p in pair.bundle.iterdir()}
    if chosen == "onnx-int8":  # INT8 won: its own report, now naming `out`
        assert "report.json" in names and INT8_REPORT_NAME not in names
        assert json.loads((pair.bundle / "report.json").read_text())["bundle"] == str(pair.bundle)
    else:  # a float target won: the INT8 report says why INT8 lost
        assert INT8_REPORT_NAME in names and "report.json" not in names
        assert json.loads((pair.bundle / INT8_REPORT_NAME).read_text())["target"] == "onnx-int8"


def test_an_int8_drop_over_budget_keeps_a_float_target_and_the_int8_report(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    measured = auto_target._report_metric

    def int8_loses_ten_points(report: Any, variant: str, key: str) -> float | None:
        value = measured(report, variant, key)
        return None if value is None else value - 0.1 * (variant == "int8")

    monkeypatch.setattr(auto_target, "_report_metric", int8_loses_ten_points)
    result = edgekit.export(tiny_net(), out=tmp_path / "b", target="auto-int8", calib_data=data, calib_samples=10,
                            selection=PAIR)
    rows = {c.target: c for c in result.selection.candidates}  # type: ignore[union-attr]
    assert rows["onnx-int8"].drop_pt == pytest.approx(10.0) and not rows["onnx-int8"].meets_budget
    assert rows["onnx-int8"].reason == "drop 10.00 pt > 1.00 budget"
    assert rows["onnx-fp32"].chosen and result.manifest.target == "onnx-fp32" and result.report is None
    assert result.selection.int8_report == INT8_REPORT_NAME  # type: ignore[union-attr]
    assert (tmp_path / "b" / INT8_REPORT_NAME).is_file()


def test_openvino_candidates_run_on_openvino(data: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    result = edgekit.export(tiny_net(), out=tmp_path / "b", target="auto-int8", calib_data=data, calib_samples=10,
                            selection=SelectionOptions(candidates=("openvino-fp32", "openvino-fp16", "openvino-int8"),
                                                       runs=3, threads=1))
    rows = result.selection.to_dict()["candidates"]  # type: ignore[union-attr]
    assert [(r["backend"], r["precision"]) for r in rows] == [("openvino", "fp32"), ("openvino", "fp16"),
                                                              ("openvino", "int8")]
    assert result.selection.threads == 1 and result.manifest.target == expected_choice(rows)  # type: ignore[union-attr]


# ---------------------------------------------------------------- the rule


def row(target: str, precision: str, latency_ms: float, drop_pt: float | None = 0.0) -> Candidate:
    return Candidate(target=target, backend="onnxruntime", precision=precision, latency_ms=latency_ms,
                     infer_ms=latency_ms / 2, metric=None, drop_pt=drop_pt,
                     meets_budget=drop_pt is not None and drop_pt <= 1.0, size_bytes=1)


def test_int8_clearly_faster_and_within_budget_wins() -> None:
    rows = decide([row("onnx-fp32", "fp32", 2.0), row("onnx-int8", "int8", 1.0, 0.4)], 1.0)
    assert [r.chosen for r in rows] == [False, True]
    assert rows[1].reason == "fastest within budget" and rows[0].reason == "2.00x the latency of onnx-int8"


def test_equal_speeds_go_to_the_safer_precision() -> None:
    rows = decide([row("onnx-int8", "int8", 0.99), row("openvino-fp16", "fp16", 1.0), row("onnx-fp32", "fp32", 1.01)],
                  1.0)
    assert [r.target for r in rows if r.chosen] == ["onnx-fp32"]
    assert rows[2].reason.startswith("within 3% of the fastest (onnx-int8")
    assert rows[0].reason == "INT8 not faster than fp32 here: 1.02x"
    assert rows[1].reason == "within 3% of onnx-fp32, which has the safer precision"


def test_over_budget_is_skipped_and_nothing_within_budget_is_an_error() -> None:
    rows = decide([row("onnx-fp32", "fp32", 2.0), row("onnx-int8", "int8", 1.0, 1.7)], 1.0)
    assert rows[0].chosen and rows[1].reason == "drop 1.70 pt > 1.00 budget"
    with pytest.raises(AccuracyBudgetError, match="no candidate is within --max-drop 1.00 pt .*onnx-int8 1.70 pt"):
        decide([row("openvino-fp16", "fp16", 2.0, 1.2), row("onnx-int8", "int8", 1.0, 1.7)], 1.0)


def test_the_report_points_at_auto_int8_when_int8_is_not_faster() -> None:
    slower = LatencyComparison("onnxruntime", 1, 20, 3, fp32_ms=2.0, int8_ms=2.5, fp32_total_ms=2.5, int8_total_ms=3.0)
    (note,) = _speed_notes(slower, {}, {})
    assert note.endswith("`--target auto-int8` picks the fastest precision that meets the budget.")


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({}, CalibrationDataError, "--calib-data"),
    ({"calib_data": "CALIB", "selection": SelectionOptions(candidates="onnx-fp32,onnx-in8")}, UnknownTargetError,
     "candidate 'onnx-in8' is not a target. Candidates: onnx-fp32, onnx-int8, .*Did you mean 'onnx-int8'"),
    ({"calib_data": "CALIB", "selection": SelectionOptions(candidates="onnx-fp32,trt-int8")}, UnknownTargetError,
     "TensorRT bundles run only on an NVIDIA GPU"),
    ({"calib_data": "CALIB", "selection": SelectionOptions(candidates="onnx-fp32,openvino-fp16")}, ExportError,
     "hold no INT8 target. Add one of onnx-int8, openvino-int8, tflite-int8"),
    ({"calib_data": "CALIB", "selection": SelectionOptions(candidates="onnx-int8,onnx-int8")}, ExportError,
     "more than once"),
    ({"calib_data": "CALIB", "eval_data": "CALIB", "strict": True}, ExportError, "Drop --strict"),
])
def test_bad_requests_are_refused_before_any_work_and_write_nothing(data: Path, tmp_path: Path, kwargs: dict[str, Any],
                                                                    error: type[Exception], match: str) -> None:
    kwargs = {k: data if v == "CALIB" else v for k, v in kwargs.items()}
    with pytest.raises(error, match=match):
        edgekit.export("no-such-model", out=tmp_path / "b", target="auto-int8", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_selection_options_apply_to_auto_int8_only(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="drop them for --target onnx-fp32"):
        edgekit.export(tiny_net(), out=tmp_path / "b", selection=SelectionOptions(runs=3))
    with pytest.raises(ExportError, match="runs must be >= 1"):
        SelectionOptions(runs=0)


def test_a_failing_run_leaves_the_existing_bundle_untouched(data: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "b"
    before = edgekit.export(tiny_net(), out=out)
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(auto_target, "_report_metric", lambda report, variant, key: None)  # nothing measurable
    with pytest.raises(AccuracyBudgetError, match="nothing was written"):
        edgekit.export(tiny_net(), out=out, target="auto-int8", calib_data=data, calib_samples=10, selection=PAIR)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files and before.manifest.target == "onnx-fp32"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


# ---------------------------------------------------------------- CLI


def test_cli_help_lists_auto_int8(capsys: pytest.CaptureFixture[str]) -> None:
    from typer.testing import CliRunner

    from edgekit.cli import app

    out = CliRunner().invoke(app, ["export", "--help"], env={"COLUMNS": "250"}).output
    assert "auto-int8: the fastest of the float and INT8 targets on this machine that meets --max-drop" in out
    assert "--candidates" in out and "--runs" in out and "--threads" in out


def test_cli_exports_a_factory_model_and_prints_the_table(data: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    factory = tmp_path / "tiny.py"
    factory.write_text(TINY_FACTORY)
    code = main(["export", "--model", f"{factory}:tiny", "--out", str(tmp_path / "b"), "--target", "auto-int8",
                 "--calib-data", str(data), "--calib-samples", "10", "--candidates", "onnx-fp32,onnx-int8",
                 "--runs", "3", "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    selection = read_selection(tmp_path / "b")
    assert selection is not None and selection["threads"] == 1
    # A factory builds a fresh random init per call: the candidates must share one build, so fp32 drops nothing.
    assert next(r for r in selection["candidates"] if r["target"] == "onnx-fp32")["drop_pt"] == 0.0
    assert "auto-int8 [2/2] exporting onnx-int8" in out and "onnx-fp32" in out and "onnx-int8" in out
    assert f"(auto-int8 chose {selection['chosen']}, see {SELECTION_NAME})" in out


def test_an_int8_winner_keeps_its_report_renamed_after_out(data: Path, tmp_path: Path) -> None:
    result = edgekit.export(tiny_net(), out=tmp_path / "b", target="auto-int8", calib_data=data, calib_samples=10,
                            selection=SelectionOptions(candidates="onnx-int8", runs=3))
    assert result.manifest.target == "onnx-int8" and result.selection.int8_report is None  # type: ignore[union-attr]
    assert result.report is not None and result.report.bundle == str(tmp_path / "b")
    assert json.loads((tmp_path / "b" / "report.json").read_text())["bundle"] == str(tmp_path / "b")
    assert str(tmp_path / "b") in (tmp_path / "b" / "report.html").read_text()
    assert not (tmp_path / "b" / INT8_REPORT_NAME).exists()
