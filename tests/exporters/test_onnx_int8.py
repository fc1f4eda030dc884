"""The ``onnx-int8`` target: QDQ graphs from the job's recipes, integer kernels in onnxruntime, recipe.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.bundle import file_digest
from edgekit.calib.calibrate import calibrate
from edgekit.calib.qdq import count_integer_convs
from edgekit.errors import ExportError
from edgekit.exporters.onnx_int8 import OnnxInt8
from edgekit.exporters.registry import ExportJob, Precision, get_spec, get_target, list_targets
from edgekit.inputspec import make_input_spec
from edgekit.quantize import read_recipe_file


def _two_convs() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(0.3 * rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(0.1 * rng.standard_normal(8).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(0.3 * rng.standard_normal((4, 8, 3, 3)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
         helper.make_node("Relu", ["c1"], ["r1"]),
         helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
         helper.make_node("Relu", ["c2"], ["r2"]),
         helper.make_node("GlobalAveragePool", ["r2"], ["out"])],
        "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 1, 1])],
        [w1, b1, w2],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _feeds(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"images": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(count)]


def test_onnx_int8_is_registered_with_its_capabilities() -> None:
    assert "onnx-int8" in list_targets()
    spec = get_spec("onnx-int8")
    assert spec.quant_profile == "ort-cpu" and spec.precisions[0] == Precision.INT8
    assert spec.requires == ("onnx", "onnxruntime") and spec.available and spec.dynamic_batch
    assert isinstance(get_target("onnx-int8"), OnnxInt8)


def test_a_job_without_recipes_is_refused(tmp_path: Path) -> None:
    job = ExportJob(graphs={"model": _two_convs()}, input_spec=make_input_spec("classify", (16, 16)))
    with pytest.raises(ExportError, match="needs a QuantRecipe for every graph; none for model. Calibrate first"):
        get_target("onnx-int8").export(job, tmp_path)
    assert not any(tmp_path.iterdir())


def test_writes_qdq_graphs_that_run_integer_kernels_and_the_recipes(tmp_path: Path) -> None:
    model = _two_convs()
    recipe = calibrate(model, _feeds(8, 0), observer="minmax", profile="ort-cpu")
    calibration = {"observer": "minmax", "samples": 8, "profile": recipe.profile}
    job = ExportJob(graphs={"model": model}, input_spec=make_input_spec("classify", (16, 16)),
                    recipes={"model": recipe}, calibration=calibration)
    (graph_file,) = get_target("onnx-int8").export(job, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "recipe.json"]
    assert (graph_file.role, graph_file.path, graph_file.precision) == ("model", "model.onnx", "int8")
    assert (graph_file.sha256, graph_file.size_bytes) == file_digest(tmp_path / "model.onnx")
    qdq = onnx.load(tmp_path / "model.onnx")
    onnx.checker.check_model(qdq, full_check=True)
    stored = {t.name: t.data_type for t in qdq.graph.initializer}
    assert stored["w1_quantized"] == stored["w2_quantized"] == TensorProto.INT8  # weights stored as integers
    assert "w1" not in stored and "w2" not in stored
    counts = count_integer_convs(qdq)
    assert (counts.integer, counts.float) == (2, 0)
    # close to fp32 on held-out inputs
    fp32 = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(qdq.SerializeToString(), providers=["CPUExecutionProvider"])
    for feed in _feeds(4, 1):
        a, b = fp32.run(None, feed)[0].ravel(), int8.run(None, feed)[0].ravel()
        assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.995
    recipes, record = read_recipe_file(tmp_path)
    assert recipes["model"].content_hash() == recipe.content_hash() and record == calibration
    assert json.loads((tmp_path / "recipe.json").read_text())["version"] == 1
