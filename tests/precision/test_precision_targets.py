"""The precision map survives into every INT8 target's artefact, read back from the files themselves.

``--precision auto`` on the collapsing segmenter (tests/precision/collapse_cases.py) keeps the
collapsed tensor's writer and reader float. Read back: the OpenVINO IR has no FakeQuantize on
those convolutions (and carries the map in its rt_info; the runtime compiles it at f32), the
TFLite model runs those CONV_2D ops on float tensors while the others are int8, and TensorRT's
QDQ ONNX has no Q/DQ around them, with the map in tensorrt.json and the engine build command.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import edgekit
from edgekit.engine import EngineOptions, plan_build, trtexec_command
from edgekit.quantize import read_recipe_file

# The collapsed tensor is /conv2/Conv's output, read by /mix/Conv. Profiles whose integer ops write
# integers (onnxruntime, TFLite) keep both float; TensorRT and OpenVINO quantize inputs only, so
# keeping the reader float leaves the tensor float.
FLOAT_LAYERS = {"/conv2/Conv", "/mix/Conv"}
READER_ONLY = {"/mix/Conv"}


def _export(case, out: Path, target: str):
    return edgekit.export(case.model, out=out, target=target, task="segment", calib_data=case.train, calib_samples=32,
                          eval_data=case.eval, mean=case.mean, std=case.std, max_drop=1.0, precision="auto")


def _float_layers(bundle: Path) -> dict[str, str]:
    recipes, _ = read_recipe_file(bundle)
    return {n: p.value for n, p in recipes["model"].layer_precision.items()}


def test_openvino_ir_has_no_fakequantize_on_float_layers(collapse_case, tmp_path: Path) -> None:
    import openvino as ov

    result = _export(collapse_case, tmp_path / "ov", "openvino-int8")
    assert set(_float_layers(tmp_path / "ov")) == READER_ONLY
    model = ov.Core().read_model(str(tmp_path / "ov" / "model.xml"))
    stored = json.loads(model.get_rt_info(["edgekit", "layer_precision"]).astype(str))
    assert stored == {n: "fp32" for n in READER_ONLY}
    quantized = {}
    for op in model.get_ops():
        if op.get_type_name() == "Convolution":
            layer = op.get_friendly_name().removesuffix("/WithoutBiases")
            quantized[layer] = any(_reaches_fakequantize(op.input_value(i).get_node()) for i in range(2))
    assert {n for n, q in quantized.items() if not q} == READER_ONLY
    assert sum(quantized.values()) == len(quantized) - 1
    # the report ran the IR on OpenVINO (at f32: the IR keeps fp32 layers) and the collapse is gone
    assert result.report.evaluation["backend"] == "openvino"
    assert result.report.verdict == "PASS" and result.report.drop <= 1.0


def _reaches_fakequantize(node, depth: int = 4) -> bool:
    """FakeQuantize on this input, through the Convert/Multiply/Subtract chain of a compressed int8 weight."""
    if node.get_type_name() == "FakeQuantize":
        return True
    if depth == 0 or node.get_type_name() not in ("Convert", "Multiply", "Subtract", "Reshape"):
        return node.get_type_name() == "Constant" and str(node.get_element_type()) in ("<Type: 'int8_t'>", "i8")
    return any(_reaches_fakequantize(node.input_value(i).get_node(), depth - 1) for i in range(node.get_input_size()))


def test_tflite_runs_the_float_layers_in_float(collapse_case, tmp_path: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    from edgekit.onnx_to_torch import onnx_to_torch
    from edgekit.tflite_quant import steps_in_name

    result = _export(collapse_case, tmp_path / "tfl", "tflite-int8")
    layers = _float_layers(tmp_path / "tfl")
    assert set(layers) == FLOAT_LAYERS
    info = json.loads((tmp_path / "tfl" / "tflite.json").read_text())["graphs"]["model"]["int8"]
    assert info["layer_precision"] == layers
    names = onnx_to_torch(onnx.load(tmp_path / "tfl" / "model.fp32.onnx")).node_names
    interpreter = Interpreter(model_path=str(tmp_path / "tfl" / "model.tflite"))
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    conv_dtypes = {}
    for op in interpreter._get_ops_details():
        if op["op_name"] != "CONV_2D":
            continue
        # a fused conv + ReLU names both steps; the conv is the one called .../Conv
        node = next(names[s] for s in steps_in_name(tensors[op["outputs"][0]]["name"]) if names[s].endswith("Conv"))
        conv_dtypes.setdefault(node, set()).add(np.dtype(tensors[op["inputs"][1]]["dtype"]).name)
    assert {n for n, d in conv_dtypes.items() if d == {"float32"}} == FLOAT_LAYERS
    assert {n for n, d in conv_dtypes.items() if d == {"int8"}} == {"/conv1/Conv", "/conv3/Conv", "/head/Conv"}
    assert result.report.verdict == "PASS"


def test_tensorrt_qdq_cache_and_engine_command(collapse_case, tmp_path: Path) -> None:
    result = _export(collapse_case, tmp_path / "trt", "trt-int8")
    layers = _float_layers(tmp_path / "trt")
    # TensorRT has FP16: the float layer runs there (its fp16 rounding simulated in the search: the
    # collapsed signal spans a few fp16 steps of its offsets, which costs less than the budget)
    assert layers == {n: "fp16" for n in READER_ONLY}
    record = result.report.precision["search"]
    assert (record["float_precision_target"], record["float_precision"]) == ("fp16", "fp16")
    assert record["drop"] <= 1.0
    qdq = onnx.load(tmp_path / "trt" / "model.qdq.onnx")
    props = {p.key: p.value for p in qdq.metadata_props}
    assert json.loads(props["edgekit.layer_precision"]) == layers
    dequantized = {n.output[0] for n in qdq.graph.node if n.op_type == "DequantizeLinear"}
    reads_dq = {n.name: any(i in dequantized for i in n.input) for n in qdq.graph.node if n.op_type == "Conv"}
    assert {n for n, q in reads_dq.items() if not q} == READER_ONLY
    sources = json.loads((tmp_path / "trt" / "tensorrt.json").read_text())["sources"]
    assert sources[0]["layer_precision"] == layers
    (step,) = plan_build(tmp_path / "trt", EngineOptions())
    command = trtexec_command(step, EngineOptions())
    assert "--layerPrecisions=/mix/Conv:fp16" in command
    assert "--precisionConstraints=obey" in command
    assert result.report.verdict == "PASS"


def test_unknown_float_layer_is_refused() -> None:
    from edgekit.calib.calibrate import calibrate
    from edgekit.calib.qdq import RecipeMismatchError, quantize_model
    from edgekit.calib.recipe import Precision

    from edgekit.calib.mixed_precision import apply_float_set

    model = _tiny_graph()
    recipe = calibrate(model, [{"x": np.ones((1, 3, 8, 8), np.float32)}], observer="minmax", profile="trt")
    with pytest.raises(ValueError, match="not in the graph"):
        apply_float_set(model, recipe, ["conv9"], Precision.FP16)
    with pytest.raises(RecipeMismatchError, match="keeps layer 'conv9' float.*Did you mean 'conv1'"):
        quantize_model(model, recipe.replace(layer_precision={"conv9": Precision.FP16}))


def _tiny_graph() -> onnx.ModelProto:
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv1"),
                               helper.make_node("Relu", ["y"], ["z"], name="relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 8, 8])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fp16_target_falls_back_to_fp32_layers_when_fp16_misses_the_budget(collapse_case, tmp_path: Path) -> None:
    # a zero budget: fp16's rounding of the collapsed signal (simulated) costs a little, fp32 nothing
    result = edgekit.export(collapse_case.model, out=tmp_path / "trt", target="trt-int8", task="segment",
                            calib_data=collapse_case.train, calib_samples=32, eval_data=collapse_case.eval,
                            mean=collapse_case.mean, std=collapse_case.std, max_drop=0.0, precision="auto")
    record = result.report.precision["search"]
    assert (record["float_precision_target"], record["float_precision"], record["verdict"]) == ("fp16", "fp32",
                                                                                                 "PASS")
    assert set(_float_layers(tmp_path / "trt").values()) == {"fp32"} and "/mix/Conv" in _float_layers(tmp_path / "trt")
