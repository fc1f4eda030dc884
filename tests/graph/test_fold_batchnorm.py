"""fold_batchnorm: every BatchNormalization goes, the outputs stay (onnxruntime before/after)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx_cases import GraphBuilder, assert_same_outputs, ops

from edgekit.errors import GraphPassError
from edgekit.graph import fold_batchnorm


def _check(g: GraphBuilder, model: onnx.ModelProto) -> onnx.ModelProto:
    before = model.SerializeToString()
    out = fold_batchnorm(model)
    assert model.SerializeToString() == before, "the pass changed its argument"
    assert ops(out)["BatchNormalization"] == 0
    assert_same_outputs(model, out, g.feed())
    return out


@pytest.mark.parametrize("group", [1, 2])
def test_into_preceding_conv(group: int) -> None:
    g = GraphBuilder(1)
    x = g.input("x", [1, 4, 6, 6])
    y = g.op("Relu", [g.bn(g.conv(x, 4, 6, k=3, group=group, bias=group == 1), 6)])
    out = _check(g, g.model([y]))
    assert ops(out) == {"Conv": 1, "Relu": 1}


def test_into_preceding_conv_transpose_per_group() -> None:
    g = GraphBuilder(2)
    x = g.input("x", [1, 4, 5, 5])
    w = g.rand(4, 3, 3, 3)  # [Cin, Cout/group, k, k] with group 2: 6 output channels
    up = g.op("ConvTranspose", [x, w], group=2, strides=[2, 2], kernel_shape=[3, 3])
    out = _check(g, g.model([g.bn(up, 6)]))
    assert ops(out) == {"ConvTranspose": 1}


@pytest.mark.parametrize("trans_b", [0, 1])
def test_into_preceding_gemm(trans_b: int) -> None:
    g = GraphBuilder(3)
    x = g.input("x", [2, 5])
    w = g.rand(3, 5) if trans_b else g.rand(5, 3)
    y = g.op("Gemm", [x, w, g.rand(3)], transB=trans_b, alpha=0.5, beta=2.0)
    out = _check(g, g.model([g.bn(y, 3)]))
    assert ops(out) == {"Gemm": 1}


def test_after_concat_into_both_producers() -> None:
    g = GraphBuilder(4)
    x = g.input("x", [1, 3, 5, 5])
    cat = g.op("Concat", [g.conv(x, 3, 4, k=3), g.conv(x, 3, 2, bias=False)], axis=1)
    out = _check(g, g.model([g.op("Relu", [g.bn(cat, 6)])]))
    assert ops(out) == {"Conv": 2, "Concat": 1, "Relu": 1}


@pytest.mark.parametrize("group", [1, 3])
def test_into_next_unpadded_conv(group: int) -> None:
    g = GraphBuilder(5)
    x = g.input("x", [1, 6, 5, 5])
    y = g.conv(g.bn(g.op("Relu", [x]), 6), 6, 3, k=3, pad=0, group=group)
    out = _check(g, g.model([y]))
    assert ops(out) == {"Relu": 1, "Conv": 1}


def test_into_next_gemm() -> None:
    g = GraphBuilder(6)
    x = g.input("x", [2, 4])
    y = g.op("Gemm", [g.bn(g.op("Relu", [x]), 4), g.rand(3, 4), g.rand(3)], transB=1, beta=0.5)
    out = _check(g, g.model([y]))
    assert ops(out) == {"Relu": 1, "Gemm": 1}


def test_before_and_after_the_same_conv() -> None:
    # BN -> Conv -> BN: both fold into one conv (over two sweeps).
    g = GraphBuilder(7)
    x = g.input("x", [1, 4, 5, 5])
    y = g.bn(g.conv(g.bn(x, 4), 4, 5, pad=0), 5)
    out = _check(g, g.model([y]))
    assert ops(out) == {"Conv": 1}


def test_padded_next_conv_gets_mul_add() -> None:
    # A BN at the graph input before a padded conv cannot fold exactly: Mul + Add.
    g = GraphBuilder(8)
    x = g.input("x", [1, 3, 6, 6])
    out = _check(g, g.model([g.conv(g.bn(x, 3), 3, 4, k=3, pad=1)]))
    assert ops(out) == {"Mul": 1, "Add": 1, "Conv": 1}


def test_shared_conv_output_keeps_conv() -> None:
    # The conv output also feeds a Relu that needs the un-normalised values.
    g = GraphBuilder(9)
    x = g.input("x", [1, 3, 4, 4])
    c = g.conv(x, 3, 4, k=3)
    model = g.model([g.bn(c, 4), g.op("Relu", [c])])
    out = _check(g, model)
    assert ops(out) == {"Conv": 1, "Mul": 1, "Add": 1, "Relu": 1}
    weights = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    conv = next(n for n in out.graph.node if n.op_type == "Conv")
    original = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert np.array_equal(weights[conv.input[1]], original[model.graph.node[0].input[1]])


def test_graph_without_batchnorm_is_unchanged() -> None:
    g = GraphBuilder(10)
    x = g.input("x", [1, 3, 4, 4])
    model = g.model([g.op("Relu", [g.conv(x, 3, 4)])])
    out = fold_batchnorm(model)
    assert out is not model
    assert out.SerializeToString() == model.SerializeToString()


def test_training_mode_is_refused() -> None:
    g = GraphBuilder(11)
    x = g.input("x", [1, 3, 4, 4])
    y = g.bn(g.conv(x, 3, 3), 3)
    model = g.model([y])
    bn = model.graph.node[-1]
    bn.attribute.append(onnx.helper.make_attribute("training_mode", 1))
    with pytest.raises(GraphPassError, match="training mode"):
        fold_batchnorm(model)


def test_dynamic_parameters_are_refused() -> None:
    g = GraphBuilder(12)
    x = g.input("x", [1, 3, 4, 4])
    gamma = g.input("gamma", [3])
    y = g.op("BatchNormalization", [g.op("Relu", [x]), gamma, g.rand(3), g.rand(3), g.rand(3, low=0.5)])
    with pytest.raises(GraphPassError, match="non-constant"):
        fold_batchnorm(g.model([y]))


def test_parameters_shared_through_identity_fold() -> None:
    # torch exports equal buffers once and refers to them through Identity nodes.
    g = GraphBuilder(13)
    x = g.input("x", [1, 3, 4, 4])
    zeros = g.const(np.zeros(3, np.float32))
    ones = g.const(np.ones(3, np.float32))
    y = g.op("BatchNormalization", [g.conv(x, 3, 3), g.rand(3), zeros, g.op("Identity", [zeros]),
                                    g.op("Identity", [ones])])
    out = _check(g, g.model([y]))
    assert ops(out) == {"Conv": 1}
