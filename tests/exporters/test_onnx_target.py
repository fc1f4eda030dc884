"""The target registry and the ``onnx-fp32`` target."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.bundle import file_digest
from edgekit.errors import ExportError, MissingDependencyError, UnknownTargetError
from edgekit.exporters.onnx import OnnxFp32, tensor_specs
from edgekit.exporters.registry import ExportJob, Precision, Target, TargetSpec, get_spec, get_target, list_targets
from edgekit.inputspec import make_input_spec


def _conv_relu(batch: int | str = 1) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["out"])],
        "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, 4, 8, 8])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_fp32_is_registered_with_its_capabilities() -> None:
    assert "onnx-fp32" in list_targets()
    spec = get_spec("onnx-fp32")
    assert spec.precisions == (Precision.FP32,) and spec.dynamic_batch
    assert spec.requires == ("onnx", "onnxruntime") and spec.extra == "export" and spec.available
    assert isinstance(get_target("onnx-fp32"), OnnxFp32)


def test_unknown_target_lists_targets_and_suggests() -> None:
    with pytest.raises(UnknownTargetError) as info:
        get_target("onnx-fp23")
    message = str(info.value)
    assert "target 'onnx-fp23' is not registered" in message
    assert "Available: " + ", ".join(list_targets()) in message
    assert message.endswith("Did you mean 'onnx-fp32'?")


def test_requests_a_target_cannot_honour_are_refused() -> None:
    fixed = Target(TargetSpec("fixed-int8", (Precision.INT8,), dynamic_batch=False, requires=(), extra="x"))
    with pytest.raises(ExportError, match="does not support a dynamic batch; drop --dynamic-batch"):
        fixed.check_request(dynamic_batch=True, precision="int8")
    with pytest.raises(ExportError, match="holds int8 graphs, not fp32"):
        fixed.check_request(precision="fp32")
    fixed.check_request(precision="int8")


def test_missing_package_names_the_extra() -> None:
    target = Target(TargetSpec("trt-int8", (Precision.INT8,), False, ("edgekit_no_such_package",), "tensorrt"))
    assert not target.spec.available
    with pytest.raises(MissingDependencyError,
                       match=r"needs edgekit_no_such_package.*pip install 'edgekit\[tensorrt\]'"):
        target.ensure_available()


def _job(graphs: dict) -> ExportJob:
    return ExportJob(graphs=graphs, input_spec=make_input_spec("classify", (8, 8), dynamic_batch=True))


def test_onnx_fp32_writes_one_checked_file_per_role(tmp_path: Path) -> None:
    graphs = {"model": _conv_relu("batch")}
    (graph_file,) = get_target("onnx-fp32").export(_job(graphs), tmp_path)
    path = tmp_path / "model.onnx"
    assert graph_file.path == "model.onnx" and graph_file.role == "model" and graph_file.precision == "fp32"
    assert (graph_file.sha256, graph_file.size_bytes) == file_digest(path)
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no external-data sidecar
    assert graph_file.inputs[0].shape == ("batch", 3, 8, 8) and graph_file.outputs[0].name == "out"
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)
    (y,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x})
    assert y.shape == (3, 4, 8, 8) and float(y.min()) == 0.0


def test_onnx_fp32_refuses_a_graph_that_fails_the_checker(tmp_path: Path) -> None:
    bad = _conv_relu()
    bad.graph.node[1].input[0] = "nowhere"
    with pytest.raises(ExportError, match="graph 'model' fails onnx.checker"):
        get_target("onnx-fp32").export(_job({"model": bad}), tmp_path)


def test_tensor_specs_read_names_shapes_and_dtypes() -> None:
    (spec,) = tensor_specs(_conv_relu("n").graph.input)
    assert (spec.name, spec.shape, spec.dtype) == ("images", ("n", 3, 8, 8), "float32")


def test_importing_the_exporters_imports_no_toolchain() -> None:
    code = (
        "import sys\n"
        "from edgekit.exporters.registry import list_targets\n"
        "import edgekit.exporters\n"
        "print(list_targets(), sorted(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("[]") and "'onnx-fp32'" in out.stdout
