"""Cross-layer equalization: exact in fp32, smaller per-channel weight range spread."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.calib.equalize import equalization_report, equalize_cross_layer, range_spread
from edgekit.graph.graph_view import GraphView
from zoo_onnx import trained_like_onnx

OPSET = 17


def run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    """First output of ``model`` in onnxruntime with its graph optimizations off."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def assert_fp32_preserved(before: onnx.ModelProto, after: onnx.ModelProto, feed: dict[str, np.ndarray]) -> None:
    """Max abs difference <= 1e-5 of the output's range."""
    onnx.checker.check_model(after, full_check=True)
    a, b = run(before, feed), run(after, feed)
    assert np.abs(a - b).max() <= 1e-5 * float(a.max() - a.min()), (np.abs(a - b).max(), a.max() - a.min())


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Conv weight per conv (by output name)."""
    view = GraphView(model, shapes={})
    return {n.output[0]: view.const(n.input[1]) for n in model.graph.node if n.op_type == "Conv"}


def conv(nodes: list, inits: list, x: str, w: np.ndarray, b: np.ndarray | str | None, name: str,
         **attrs: object) -> str:
    """Append a Conv reading ``x``; ``b`` may name an existing initializer (shared bias)."""
    inits.append(numpy_helper.from_array(w.astype(np.float32), f"{name}_w"))
    inputs = [x, f"{name}_w"]
    if isinstance(b, str):
        inputs.append(b)
    elif b is not None:
        inits.append(numpy_helper.from_array(b.astype(np.float32), f"{name}_b"))
        inputs.append(f"{name}_b")
    k = w.shape[2]
    nodes.append(helper.make_node("Conv", inputs, [name], name=name, kernel_shape=[k, k], pads=[k // 2] * 4, **attrs))
    return name


def hand_built() -> onnx.ModelProto:
    """conv -> Relu -> depthwise -> conv (a triple), conv -> MaxPool -> conv, a Clip pair, and a
    conv whose output has two readers; the stem conv shares its bias with an unrelated conv.

    Between each equalizable pair sits a hidden per-channel scale ``d`` spanning four decades
    (conv1 rows times ``d``, conv2 columns divided by ``d``), the imbalance BatchNorm folding
    leaves in trained nets and the one equalization can undo.
    """
    rng = np.random.default_rng(0)
    d1, d2, d3 = (10.0 ** rng.uniform(-2, 2, n) for n in (8, 8, 16))
    w_a = rng.standard_normal((8, 3, 3, 3)) * d1[:, None, None, None]
    w_dw = rng.standard_normal((8, 1, 3, 3)) * (d2 / d1)[:, None, None, None]
    w_c = rng.standard_normal((16, 8, 1, 1)) * d3[:, None, None, None] / d2[None, :, None, None]
    w_d = rng.standard_normal((8, 16, 3, 3)) / d3[None, :, None, None]
    nodes: list = []
    inits = [numpy_helper.from_array(np.full(8, 0.3, np.float32), "shared_b"),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    a = conv(nodes, inits, "x", w_a, "shared_b", "a")
    nodes.append(helper.make_node("Relu", [a], ["a_relu"]))
    dw = conv(nodes, inits, "a_relu", w_dw, rng.standard_normal(8) * d2, "dw", group=8)
    c = conv(nodes, inits, dw, w_c, rng.standard_normal(16) * d3, "c")
    nodes.append(helper.make_node("MaxPool", [c], ["pool"], kernel_shape=[2, 2], strides=[2, 2]))
    d = conv(nodes, inits, "pool", w_d, rng.standard_normal(8), "d")
    nodes.append(helper.make_node("Clip", [d, "lo", "hi"], ["clip"]))
    e = conv(nodes, inits, "clip", rng.standard_normal((8, 8, 1, 1)), None, "e")
    f = conv(nodes, inits, e, rng.standard_normal((8, 8, 1, 1)), "shared_b", "f")  # e has two readers
    nodes.append(helper.make_node("Add", [e, f], ["y"]))
    graph = helper.make_graph(nodes, "cle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_hand_built_graph_is_preserved_and_balanced() -> None:
    model = hand_built()
    feed = {"x": np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)}
    out = equalize_cross_layer(model)
    assert_fp32_preserved(model, out, feed)

    report = equalization_report(model, out)
    assert [(p.first, p.second, p.between) for p in report.pairs] == [
        ("a", "dw", ("Relu",)), ("dw", "c", ()), ("c", "d", ("MaxPool",))]
    assert [s[:2] for s in report.skipped] == [("d", "e")] and "Clip" in report.skipped[0][2]
    assert json.loads(json.dumps(report.to_dict()))["description"].startswith("equalized 3 conv pairs")
    for pair in report.pairs:
        assert pair.spread_after < pair.spread_before / 5, pair
    # The worst per-channel output range spread of the equalized convs shrinks by orders of magnitude.
    before, after = weights(model), weights(out)
    for name in ("a", "dw", "c"):
        spread = [range_spread(np.abs(w[name]).reshape(w[name].shape[0], -1).max(1)) for w in (before, after)]
        assert spread[1] < spread[0] / 20, (name, spread)
    # Untouched: behind the Clip, and the conv whose output has two readers.
    for name in ("e", "f"):
        np.testing.assert_array_equal(after[name], before[name])
    # The stem's shared bias was copied, not rescaled under conv f's feet.
    view = GraphView(out, shapes={})
    conv_a, conv_f = (view.producer[n] for n in ("a", "f"))
    assert conv_f.input[2] == "shared_b" and conv_a.input[2] != "shared_b"
    np.testing.assert_array_equal(view.const("shared_b"), np.full(8, 0.3, np.float32))


def test_single_pair_equalizes_to_the_geometric_mean() -> None:
    model = hand_built()
    out = equalize_cross_layer(model)
    # a -> dw -> c is a chain, but for any pair the scales settle where both ranges agree:
    # max|W1[i]| == max|W2[:, i]| channel by channel.
    w = weights(out)
    r1 = np.abs(w["c"]).reshape(16, -1).max(1)
    r2 = np.abs(w["d"]).max(axis=(0, 2, 3))
    np.testing.assert_allclose(r1, r2, rtol=1e-5)
    r1 = np.abs(w["dw"]).reshape(8, -1).max(1)
    r2 = np.abs(w["c"]).max(axis=(0, 2, 3))
    np.testing.assert_allclose(r1, r2, rtol=1e-3)  # shared dw: equal up to the convergence tolerance


def test_graph_without_equalizable_pairs_is_unchanged() -> None:
    rng = np.random.default_rng(3)
    nodes: list = []
    inits = [numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    a = conv(nodes, inits, "x", rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4), "a")
    nodes.append(helper.make_node("Clip", [a, "lo", "hi"], ["clip"]))  # ReLU6
    b = conv(nodes, inits, "clip", rng.standard_normal((4, 4, 1, 1)), None, "b")
    nodes.append(helper.make_node("Sigmoid", [b], ["sig"]))
    c = conv(nodes, inits, "sig", rng.standard_normal((4, 4, 1, 1)), None, "c")
    conv(nodes, inits, c, rng.standard_normal((4, 4, 1, 1)), None, "d")  # c also is a graph output
    graph = helper.make_graph(nodes, "none", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4, 8, 8]) for n in (c, "d")],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    out = equalize_cross_layer(model)
    report = equalization_report(model, out)
    assert report.pairs == () and [s[:2] for s in report.skipped] == [("a", "b"), ("b", "c")]
    assert report.description == ("equalized 0 conv pairs; skipped 2 (Clip is not positively homogeneous, "
                                  "Sigmoid is not positively homogeneous)")
    assert out.SerializeToString() == model.SerializeToString()


# MobileNetV2: every conv -> conv path but the linear bottlenecks crosses a ReLU6 (Clip), and
# only the two bottlenecks not followed by a residual Add (features.1, features.17) feed a conv
# alone. ShuffleNetV2 1.0x: 1x1 -> ReLU -> depthwise -> 1x1 in each of 16 blocks' right branch
# (2 pairs each) plus the depthwise -> 1x1 of the 3 downsampling left branches.
@pytest.mark.slow
@pytest.mark.parametrize(("name", "pairs", "skipped"), [("mobilenetv2", 2, 34), ("shufflenetv2-1.0", 35, 0)])
def test_zoo_model_is_preserved_and_balanced(name: str, pairs: int, skipped: int) -> None:
    model = trained_like_onnx(name, 96)
    out = equalize_cross_layer(model)
    feed = {"input": np.random.default_rng(2).standard_normal((1, 3, 96, 96)).astype(np.float32)}
    assert_fp32_preserved(model, out, feed)
    report = equalization_report(model, out)
    assert (len(report.pairs), len(report.skipped)) == (pairs, skipped), report.description
    assert all(p.spread_after <= p.spread_before * (1 + 1e-6) for p in report.pairs)
    assert max(p.spread_after for p in report.pairs) < max(p.spread_before for p in report.pairs) / 10
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in model.graph.node]
