"""The accuracy-drop report: numbers that agree with each other, per-layer errors, verdict and ``--strict``."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from report_cases import tiny_int8_bundle

import edgekit
from edgekit.api import ExportResult
from edgekit.calib.calibrate import calibrate
from edgekit.calib.qdq import quantize_model
from edgekit.cli import main
from edgekit.errors import BundleError
from edgekit.report import FAIL, PASS, AccuracyBudgetError, regenerate
from edgekit.report.latency import LatencyComparison
from edgekit.report.layers import find_layers, layer_errors
from edgekit.report.report import _speed_notes


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    return tiny_int8_bundle(tmp_path_factory.mktemp("report"))


def _json(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "report.json").read_text())


def test_report_numbers_agree_with_each_other(exported: ExportResult) -> None:
    report = _json(exported.bundle)
    assert report["model"] == "TinyNet" and report["target"] == "onnx-int8" and report["task"] == "classify"
    assert report["headline"]["key"] == "top1"
    fp32, int8 = report["metrics"]["fp32"], report["metrics"]["int8"]
    assert set(fp32) == set(int8) >= {"top1", "top5", "images"} and fp32["images"] == 14
    assert report["drop"] == pytest.approx(100 * (fp32["top1"] - int8["top1"]), abs=1e-3)
    assert report["verdict"] == (PASS if report["drop"] <= report["max_drop"] else FAIL)
    assert report["evaluation"]["same_as_calibration"] and "split deterministically" in report["notes"][0]
    lat = report["latency"]
    assert lat["fp32_ms"] > 0 and lat["int8_ms"] > 0 and lat["runs"] == 20 and lat["backend"] == "onnxruntime"
    assert lat["speedup"] == pytest.approx(lat["fp32_ms"] / lat["int8_ms"], rel=1e-3)
    assert report["integer_convs"]["model"] == {"integer": 4, "float": 0, "total": 4}
    cal = report["calibration"]
    assert cal["samples"] == cal["files"] == 10 and cal["profile"].startswith("ort-cpu") and cal["cpu"]["arch"]
    assert [g["role"] for g in report["graphs"]] == ["model", "model.fp32"]
    layers = report["layers"]
    assert len(layers) == 4 and [e["sqnr_db"] for e in layers] == sorted(e["sqnr_db"] for e in layers)
    assert all(-1.0 <= e["cosine"] <= 1.0 + 1e-9 and e["max_abs_err"] >= 0 for e in layers)
    assert exported.report is not None and exported.report.to_dict()["drop"] == report["drop"]


def _chain() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(0.4 * rng.standard_normal((6, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(0.4 * rng.standard_normal((5, 6, 1, 1)).astype(np.float32), "w2")]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
         helper.make_node("Relu", ["c1"], ["r1"]),
         helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
         helper.make_node("Relu", ["c2"], ["r2"]),
         helper.make_node("GlobalAveragePool", ["r2"], ["y"])],
        "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 1, 1])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_layer_errors_compare_what_the_next_layer_reads() -> None:
    model = _chain()
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((1, 3, 12, 12)).astype(np.float32)} for _ in range(6)]
    qdq = quantize_model(model, calibrate(model, feeds, observer="minmax", profile="ort-cpu-u8s8"))
    probes = find_layers(model, qdq)
    # each conv is followed through its fused Relu to the re-quantized tensor
    assert [(p.layer, p.reference, p.requantized) for p in probes] == [("conv1", "r1", True), ("conv2", "r2", True)]
    errors = layer_errors("model", model, qdq, feeds[:3])
    # by hand: the reference graph's r1 against the DequantizeLinear output the QDQ graph feeds conv2
    q_tensor = probes[0].quantized
    qdq_probe = onnx.ModelProto()
    qdq_probe.CopyFrom(qdq)
    qdq_probe.graph.output.append(helper.make_tensor_value_info(q_tensor, TensorProto.FLOAT, None))
    ref_probe = onnx.ModelProto()
    ref_probe.CopyFrom(model)
    ref_probe.graph.output.append(helper.make_tensor_value_info("r1", TensorProto.FLOAT, None))
    run_q = ort.InferenceSession(qdq_probe.SerializeToString(), providers=["CPUExecutionProvider"])
    run_f = ort.InferenceSession(ref_probe.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.concatenate([run_f.run(["r1"], f)[0].ravel() for f in feeds[:3]]).astype(np.float64)
    y = np.concatenate([run_q.run([q_tensor], f)[0].ravel() for f in feeds[:3]]).astype(np.float64)
    assert not np.array_equal(x, y)
    sqnr = 10 * np.log10((x @ x) / ((x - y) @ (x - y)))
    assert errors[0].sqnr_db == pytest.approx(sqnr, abs=1e-3)
    assert errors[0].cosine == pytest.approx(x @ y / np.linalg.norm(x) / np.linalg.norm(y), abs=1e-6)
    assert errors[0].max_abs_err == pytest.approx(np.abs(x - y).max(), rel=1e-5)
    assert 20 < errors[0].sqnr_db < 60  # 8-bit grid: tens of dB, not exact


def test_html_is_self_contained_with_embedded_plots(exported: ExportResult) -> None:
    html = (exported.bundle / "report.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing fetched from the network
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 2
    for data in images:
        width, height = Image.open(io.BytesIO(base64.b64decode(data))).size
        assert width > 300 and height > 200
    report = _json(exported.bundle)
    assert f">{report['verdict']}</div>" in html and "TinyNet" in html and "Per-layer error" in html
    png = Image.open(exported.bundle / "report.png")
    assert png.format == "PNG" and png.size[0] > 1000


def test_regenerate_keeps_the_split_and_takes_a_new_budget(exported: ExportResult) -> None:
    before = _json(exported.bundle)
    report = regenerate(exported.bundle, max_drop=0.25)
    after = _json(exported.bundle)
    assert after["max_drop"] == report.max_drop == 0.25
    assert after["evaluation"] == before["evaluation"]
    assert after["metrics"]["fp32"] == before["metrics"]["fp32"]  # deterministic fp32 pipeline


def test_strict_fails_when_the_drop_exceeds_the_budget(exported: ExportResult, monkeypatch: pytest.MonkeyPatch) -> None:
    import edgekit.bundle_eval as bundle_eval

    real = bundle_eval.evaluate_task

    def worse_int8(task: Any, dataset: Any, **kwargs: Any) -> dict[str, Any]:
        metrics = real(task, dataset, **kwargs)
        if kwargs.get("label") == "evaluating int8":  # five points below fp32
            metrics["top1"] = max(0.0, metrics["top1"] - 0.05)
        return metrics

    monkeypatch.setattr(bundle_eval, "evaluate_task", worse_int8)
    report = regenerate(exported.bundle, max_drop=1.0)
    assert report.verdict == FAIL and report.drop > 1.0
    assert report.notes[0].startswith(f"FAIL: the top1 drop of {report.drop:.2f} pt exceeds the 1.00 pt budget.")
    assert report.notes[0].endswith("Try another --observer (percentile, minmax, entropy) or more --calib-samples.")
    with pytest.raises(AccuracyBudgetError, match="the drop exceeds --max-drop"):
        report.enforce()
    assert main(["report", str(exported.bundle)]) == 0
    assert main(["report", str(exported.bundle), "--strict"]) == 1
    assert _json(exported.bundle)["verdict"] == FAIL


def test_a_float_bundle_has_no_report(tmp_path: Path) -> None:
    from report_cases import TinyNet

    result = edgekit.export(TinyNet(), out=tmp_path / "fp32")
    with pytest.raises(BundleError, match="not a quantized bundle"):
        regenerate(result.bundle)


def test_the_report_says_plainly_when_int8_is_not_faster() -> None:
    slower = LatencyComparison("onnxruntime", 1, 20, 3, fp32_ms=2.0, int8_ms=2.5, fp32_total_ms=2.5, int8_total_ms=3.0)
    faster = LatencyComparison("onnxruntime", 1, 20, 3, fp32_ms=2.0, int8_ms=1.0, fp32_total_ms=2.5, int8_total_ms=1.5)
    calibration = {"cpu_description": "x86_64 [avx2]"}
    (note,) = _speed_notes(slower, calibration, {})
    assert note.startswith("INT8 is not faster than fp32 on this CPU (x86_64 [avx2]) with onnxruntime: 2.50 ms vs "
                           "2.00 ms")
    assert _speed_notes(faster, calibration, {}) == [] and faster.speedup == 2.0 and faster.int8_faster
    (convs,) = _speed_notes(faster, calibration, {"stage1": {"integer": 61, "float": 2, "total": 63}})
    assert convs == "2 of 63 convolutions of 'stage1' stay float in onnxruntime's optimized graph."
