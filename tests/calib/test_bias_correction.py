"""Bias correction: the mean output error of weight quantization goes into the bias."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.calib.bias_correction import bias_correction_report, correct_bias, fake_quantize
from edgekit.calib.recipe import Precision, Provenance, QuantRecipe, TensorKind, TensorQuant
from edgekit.errors import CalibrationDataError
from edgekit.graph.graph_view import GraphView, attr
from zoo_onnx import trained_like_onnx

OPSET = 17
SAMPLES = Path(__file__).resolve().parents[2] / "edgekit" / "data" / "samples"


def weight_recipe(model: onnx.ModelProto, *, per_channel: bool, levels: int = 127) -> QuantRecipe:
    """Symmetric int8 weight entries for every Conv/Gemm (``scale = amax / levels``; a small
    ``levels`` makes the quantization deliberately coarse)."""
    view = GraphView(model, shapes={})
    tensors = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        w = view.const(node.input[1])
        axis = 1 if node.op_type == "Gemm" and not attr(node, "transB", 0) else 0
        amax = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(1)
        amax = np.maximum(amax if per_channel else amax.max(keepdims=True), 1e-12)
        tensors[node.input[1]] = TensorQuant(
            node.input[1], TensorKind.WEIGHT, tuple(-amax), tuple(amax), tuple(amax / levels),
            (0,) * amax.size, axis if per_channel else None)
    return QuantRecipe("trt", tensors, Provenance("test", "minmax", 0, ""))


def weight_quantized(model: onnx.ModelProto, recipe: QuantRecipe) -> onnx.ModelProto:
    """``model`` with every weight in ``recipe`` replaced by its fake-quantized value."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.name in recipe.tensors:
            w = fake_quantize(numpy_helper.to_array(init), recipe.tensors[init.name])
            init.CopyFrom(numpy_helper.from_array(w, init.name))
    return out


def outputs(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    """First output of ``model`` for every feed, stacked on axis 0."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, feed)[0] for feed in feeds])


def channel_mean_error(model: onnx.ModelProto, recipe: QuantRecipe, reference: onnx.ModelProto,
                       feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    """Per output channel, mean over samples and positions of (weight-quantized - fp32 reference)."""
    diff = outputs(weight_quantized(model, recipe), feeds) - outputs(reference, feeds)
    return diff.mean(axis=(0, *range(2, diff.ndim)))


def single_layer(op: str, w: np.ndarray, x_shape: list[int], *, bias: bool, **attrs: object) -> onnx.ModelProto:
    """A graph holding one Conv or Gemm."""
    inits = [numpy_helper.from_array(w.astype(np.float32), "w")]
    inputs = ["x", "w"]
    if bias:
        n_out = w.shape[0] if op == "Conv" or attrs.get("transB") else w.shape[1]
        inits.append(numpy_helper.from_array(np.linspace(-1, 1, n_out).astype(np.float32), "b"))
        inputs.append("b")
    node = helper.make_node(op, inputs, ["y"], name="layer", **attrs)
    graph = helper.make_graph([node], "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def shifted_feeds(shape: list[int], n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Inputs with a per-channel mean far from zero (post-ReLU activations look like this)."""
    rng = np.random.default_rng(seed)
    means = np.linspace(0.5, 3.0, shape[1]).reshape(1, -1, *[1] * (len(shape) - 2))
    return [{"x": (means + rng.standard_normal(shape)).astype(np.float32)} for _ in range(n)]


def test_mean_error_of_a_coarsely_quantized_conv_drops_5x() -> None:
    rng = np.random.default_rng(0)
    model = single_layer("Conv", rng.standard_normal((16, 8, 3, 3)), [1, 8, 12, 12], bias=False,
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    recipe = weight_recipe(model, per_channel=False, levels=7)  # ~4-bit, one scale per tensor
    calibration, held_out = shifted_feeds([1, 8, 12, 12], 16, seed=1), shifted_feeds([1, 8, 12, 12], 16, seed=2)
    corrected = correct_bias(model, recipe, calibration)
    before = np.abs(channel_mean_error(model, recipe, model, held_out)).mean()
    after = np.abs(channel_mean_error(corrected, recipe, model, held_out)).mean()
    assert after * 5 <= before, (before, after)
    assert before > 0.05  # the quantization error is real, not rounding noise
    np.testing.assert_array_equal(GraphView(corrected, shapes={}).const("w"), GraphView(model, shapes={}).const("w"))
    report = bias_correction_report(model, corrected)
    assert [(layer.node, layer.bias_created) for layer in report.layers] == [("layer", True)]
    assert json.loads(json.dumps(report.to_dict()))["description"].startswith("corrected 1 biases (1 created)")


# On the calibration data itself the correction is exact: mean error 0 in every channel,
# whatever the padding, stride, dilation, groups or auto_pad (the border taps read zeros).
@pytest.mark.parametrize(("op", "w_shape", "x_shape", "attrs"), [
    ("Conv", (6, 4, 3, 3), [2, 4, 5, 5], {"kernel_shape": [3, 3], "pads": [1, 0, 2, 1], "strides": [2, 1]}),
    ("Conv", (8, 1, 3, 3), [1, 4, 6, 6], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "group": 4}),
    ("Conv", (4, 2, 3, 3), [1, 4, 7, 8], {"kernel_shape": [3, 3], "pads": [2, 2, 2, 1], "dilations": [2, 2],
                                          "group": 2}),
    ("Conv", (4, 4, 2, 2), [1, 4, 7, 6], {"kernel_shape": [2, 2], "auto_pad": "SAME_UPPER", "strides": [2, 3]}),
    ("Conv", (5, 3, 3), [1, 3, 9], {"kernel_shape": [3], "auto_pad": "SAME_LOWER", "strides": [2]}),
    ("Gemm", (10, 6), [3, 6], {"transB": 1, "alpha": 0.5, "beta": 2.0}),
    ("Gemm", (6, 10), [3, 6], {}),
])
def test_correction_is_exact_on_the_calibration_data(op: str, w_shape: tuple[int, ...], x_shape: list[int],
                                                     attrs: dict[str, object]) -> None:
    model = single_layer(op, np.random.default_rng(0).standard_normal(w_shape), x_shape, bias=True, **attrs)
    recipe = weight_recipe(model, per_channel=True, levels=3)
    feeds = shifted_feeds(x_shape, 4, seed=5)
    corrected = correct_bias(model, recipe, iter(feeds))  # a one-shot iterator is enough
    before = channel_mean_error(model, recipe, model, feeds) if op == "Conv" else None
    error = channel_mean_error(corrected, recipe, model, feeds)
    np.testing.assert_allclose(error, 0, atol=2e-5)
    if before is not None:
        assert np.abs(before).max() > 0.1


def test_fake_quantize_rounds_half_to_even_and_clips_weights_to_127() -> None:
    quant = TensorQuant("w", TensorKind.WEIGHT, (-1.0,), (1.0,), (0.5,), (0,))
    w = np.array([0.25, 0.75, -0.75, 63.4, -64.0, -70.0], np.float32)
    np.testing.assert_array_equal(fake_quantize(w, quant), [0.0, 1.0, -1.0, 63.5, -63.5, -63.5])
    per_channel = TensorQuant("w", TensorKind.WEIGHT, (-1.0, -1.0), (1.0, 1.0), (1.0, 0.1), (0, 0), axis=1)
    np.testing.assert_allclose(fake_quantize(np.full((3, 2), 0.26, np.float32), per_channel), [[0.0, 0.3]] * 3,
                               rtol=1e-6)


def test_layers_kept_in_float_or_absent_from_the_recipe_are_not_touched() -> None:
    rng = np.random.default_rng(0)
    model = single_layer("Conv", rng.standard_normal((4, 3, 1, 1)), [1, 3, 4, 4], bias=True, kernel_shape=[1, 1])
    recipe = weight_recipe(model, per_channel=True, levels=3)
    feeds = shifted_feeds([1, 3, 4, 4], 2, seed=0)
    for kept in (recipe.replace(layer_precision={"layer": Precision.FP16}), recipe.replace(tensors={})):
        assert correct_bias(model, kept, feeds).SerializeToString() == model.SerializeToString()


def test_bad_calibration_data_is_refused() -> None:
    model = single_layer("Conv", np.ones((2, 3, 1, 1)), [1, 3, 4, 4], bias=False, kernel_shape=[1, 1])
    recipe = weight_recipe(model, per_channel=True, levels=3)
    with pytest.raises(CalibrationDataError, match="no calibration samples"):
        correct_bias(model, recipe, [])
    with pytest.raises(CalibrationDataError, match=r"no value for graph input\(s\) \['x'\]"):
        correct_bias(model, recipe, [{"image": np.zeros((1, 3, 4, 4), np.float32)}])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.slow
def test_mobilenetv2_per_tensor_weights_get_closer_to_fp32() -> None:
    pytest.importorskip("torch")
    from edgekit.data import open_dataset
    from edgekit.data.transforms import Preprocess

    model = trained_like_onnx("mobilenetv2", 96)
    preprocess = Preprocess(imgsz=(96, 96))
    images = [preprocess(s.image)[0] for s in open_dataset(SAMPLES / "cls-val")]
    calibration, held_out = [{"input": x} for x in images[::2]], [{"input": x} for x in images[1::2]]
    recipe = weight_recipe(model, per_channel=False)  # per-tensor: deliberately bad for depthwise convs
    reference = outputs(model, held_out)
    before = cosine(outputs(weight_quantized(model, recipe), held_out), reference)
    corrected = correct_bias(model, recipe, calibration)
    after = cosine(outputs(weight_quantized(corrected, recipe), held_out), reference)
    assert after > before and (1 - after) * 5 < (1 - before), (before, after)
    assert len(bias_correction_report(model, corrected).layers) == 53  # 52 convs and the classifier
