"""Per-layer sensitivity: units, each measured alone INT8 and alone float, ranked; a planted outlier is found."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.calib.calibrate import calibrate
from edgekit.calib.placement import plan_placement
from edgekit.calib.profiles import resolve_profile
from edgekit.calib.sensitivity import (analyze_sensitivity, float_variant, quantizable_units, restore_biases,
                                       sensitivity_key)


def _planted(outlier: float = 300.0) -> onnx.ModelProto:
    """conv1 -> relu -> conv2 -> relu -> conv3; one channel of conv2's output is ``outlier`` times larger.

    conv3 divides that channel's weights by the same factor, so the fp32 function is unchanged
    (ReLU is positively homogeneous), but one INT8 scale over conv2's output crushes the other channels.
    """
    rng = np.random.default_rng(0)
    w1 = 0.4 * rng.standard_normal((8, 3, 3, 3))
    w2 = 0.4 * rng.standard_normal((8, 8, 1, 1))
    w3 = 0.4 * rng.standard_normal((4, 8, 1, 1))
    b2 = 0.1 * rng.standard_normal(8)
    w2[0] *= outlier
    b2[0] *= outlier
    w3[:, 0] /= outlier
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for a, n in ((w1, "w1"), (w2, "w2"), (b2, "b2"),
                                                                           (w3, "w3"))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3"], ["y"], name="conv3")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _feeds(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(n)]


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_units_of_each_kind_and_their_float_sets() -> None:
    model = _planted()
    units = {(u.kind, u.name): u for u in quantizable_units(model, "ort-cpu-u8s8")}
    # conv3 writes the graph output, which stays float: onnxruntime runs it float (nothing to gain)
    assert {n for k, n in units if k == "layer"} == {"conv1", "conv2"}
    assert {n for k, n in units if k == "tensor"} == {"x", "r1", "r2"}
    # onnxruntime's QLinearConv writes integers: r2 loses its quantizer only with its writer float too
    assert units[("tensor", "r2")].nodes == {"conv2", "conv3"}
    assert units[("layer", "conv2")].tensor == "r2"  # read after the ReLU the integer kernel fuses
    trt = {(u.kind, u.name): u for u in quantizable_units(model, "trt")}
    assert trt[("tensor", "r2")].nodes == {"conv3"}  # TensorRT quantizes inputs only: the reader alone
    for profile in ("ort-cpu-u8s8", "trt"):
        for unit in quantizable_units(model, profile):
            if unit.kind == "tensor":
                placement = plan_placement(model, resolve_profile(profile), unit.nodes)
                assert unit.name not in placement.activations


def _sign_drop(model: onnx.ModelProto):
    held_out = _feeds(16, 2)
    reference = [_run(model, f) for f in held_out]

    def drop(variant: onnx.ModelProto) -> float:  # points of output sign agreement: a stand-in task metric
        same = [np.mean(np.sign(_run(variant, f)) == np.sign(r)) for f, r in zip(held_out, reference)]
        return 100.0 * (1.0 - float(np.mean(same)))

    return drop


@pytest.mark.parametrize(("profile", "top"), [("trt", {("layer", "conv3"), ("tensor", "r2")}),
                                              ("ort-cpu-u8s8", {("layer", "conv2")})])
def test_the_planted_outlier_ranks_first(profile: str, top: set[tuple[str, str]]) -> None:
    model = _planted()
    recipe = calibrate(model, _feeds(8, 0), observer="minmax", profile=profile)
    drop = _sign_drop(model)
    ranked = analyze_sensitivity(model, recipe, _feeds(4, 1), int8_only_drop=drop, float_only_drop=drop)
    assert {(r.kind, r.name) for r in ranked[:len(top)]} == top and ranked[0].rank == 1
    assert ranked[0].float_only_gain > 50 and ranked[0].output_sqnr_db < 5
    steps = {r.name: r.steps for r in ranked if r.kind == "tensor"}
    # the crushed tensor: its channels use one code each of the 256; a healthy one uses dozens
    assert steps["r2"] <= 2 and steps["r1"] > 20
    assert ranked == sorted(ranked, key=sensitivity_key)
    without_metric = analyze_sensitivity(model, recipe, _feeds(4, 1))
    assert without_metric[0].output_sqnr_db == min(r.output_sqnr_db for r in without_metric)
    assert all(r.int8_only_drop is None and r.float_only_gain is None for r in without_metric)


def test_float_layers_take_back_their_fp32_bias() -> None:
    model = _planted()
    shifted = onnx.ModelProto()
    shifted.CopyFrom(model)
    for t in shifted.graph.initializer:
        if t.name == "b2":  # what bias correction would do to conv2
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) + 1.0, "b2"))
    restored = restore_biases(shifted, model, {"conv2"})
    assert np.array_equal(numpy_helper.to_array(next(t for t in restored.graph.initializer if t.name == "b2")),
                          numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "b2")))
    recipe = calibrate(model, _feeds(8, 0), observer="minmax", profile="trt")
    every_layer = {"conv1", "conv2", "conv3"}
    feed = _feeds(1, 3)[0]
    float_graph = float_variant(shifted, recipe, every_layer, reference=model)
    assert not any(n.op_type == "QuantizeLinear" for n in float_graph.graph.node)
    np.testing.assert_allclose(_run(float_graph, feed), _run(model, feed), rtol=1e-5, atol=1e-5)


def test_fp16_layers_are_simulated_by_rounding() -> None:
    from edgekit.calib.recipe import Precision
    from edgekit.calib.sensitivity import round_to_fp16

    model = _planted()
    recipe = calibrate(model, _feeds(8, 0), observer="minmax", profile="trt")
    feed = _feeds(1, 4)[0]
    fp16 = float_variant(model, recipe, {"conv1", "conv2", "conv3"}, Precision.FP16)
    casts = [n for n in fp16.graph.node if n.op_type == "Cast"]
    assert len(casts) == 2 * (3 + 3)  # around each float conv's activation input and output
    got, want = _run(fp16, feed), _run(model, feed)
    assert not np.array_equal(got, want) and np.allclose(got, want, rtol=1e-2, atol=1e-2)
    # a small signal on a large offset is lost in fp16 as on the device
    x = np.full((1, 3, 8, 8), 4.0, np.float32) + 1e-3 * np.arange(192, dtype=np.float32).reshape(1, 3, 8, 8)
    rounded = _run(round_to_fp16(model, {"conv1"}), {"x": x})
    np.testing.assert_allclose(rounded, _run(model, {"x": x.astype(np.float16).astype(np.float32)}), rtol=2e-2,
                               atol=2e-2)
