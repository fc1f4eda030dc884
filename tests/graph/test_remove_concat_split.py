"""remove_concat_split: Split/Slice at a Concat's own boundaries cancel it (onnxruntime before/after)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx_cases import GraphBuilder, assert_same_outputs, ops

from edgekit.graph import remove_concat_split


def _two_branches(g: GraphBuilder) -> tuple[str, str]:
    x = g.input("x", [1, 3, 4, 4])
    return g.conv(x, 3, 4), g.conv(x, 3, 2)


def _check(g: GraphBuilder, model: onnx.ModelProto) -> onnx.ModelProto:
    before = model.SerializeToString()
    out = remove_concat_split(model)
    assert model.SerializeToString() == before, "the pass changed its argument"
    assert_same_outputs(model, out, g.feed())
    return out


def test_split_at_concat_boundaries_cancels() -> None:
    g = GraphBuilder(1)
    a, b = _two_branches(g)
    cat = g.op("Concat", [a, b], axis=1)
    p, q = g.op("Split", [cat, g.const(np.array([4, 2], np.int64))], n_out=2, axis=1)
    out = _check(g, g.model([g.op("Relu", [p]), g.op("Sigmoid", [q])]))
    assert ops(out) == {"Conv": 2, "Relu": 1, "Sigmoid": 1}


def test_equal_split_without_sizes_cancels() -> None:
    g = GraphBuilder(2)
    x = g.input("x", [1, 3, 4, 4])
    cat = g.op("Concat", [g.conv(x, 3, 3), g.conv(x, 3, 3)], axis=-3)
    p, q = g.op("Split", [cat], n_out=2, axis=1)
    out = _check(g, g.model([g.op("Relu", [p]), g.op("Relu", [q])]))
    assert ops(out) == {"Conv": 2, "Relu": 2}


def test_slices_at_concat_boundaries_cancel_and_shared_concat_stays() -> None:
    g = GraphBuilder(3)
    a, b = _two_branches(g)
    cat = g.op("Concat", [a, b], axis=1)
    axes = g.const(np.array([1], np.int64))
    first = g.op("Slice", [cat, g.const(np.array([0], np.int64)), g.const(np.array([4], np.int64)), axes])
    second = g.op("Slice", [cat, g.const(np.array([4], np.int64)), g.const(np.array([2**62], np.int64)), axes])
    out = _check(g, g.model([g.op("Relu", [first]), g.op("Relu", [second]), g.op("Sigmoid", [cat])]))
    assert ops(out) == {"Conv": 2, "Concat": 1, "Relu": 2, "Sigmoid": 1}


def test_other_boundaries_are_left_alone() -> None:
    g = GraphBuilder(4)
    a, b = _two_branches(g)
    cat = g.op("Concat", [a, b], axis=1)
    p, q = g.op("Split", [cat, g.const(np.array([3, 3], np.int64))], n_out=2, axis=1)
    one = g.const(np.array([1], np.int64))
    strided = g.op("Slice", [cat, g.const(np.array([0], np.int64)), g.const(np.array([4], np.int64)), one,
                             g.const(np.array([2], np.int64))])
    model = g.model([p, q, strided])
    assert remove_concat_split(model).SerializeToString() == model.SerializeToString()


def test_split_on_another_axis_is_left_alone() -> None:
    g = GraphBuilder(5)
    x = g.input("x", [1, 2, 4, 4])
    cat = g.op("Concat", [x, g.op("Relu", [x])], axis=1)
    p, q = g.op("Split", [cat, g.const(np.array([2, 2], np.int64))], n_out=2, axis=2)
    model = g.model([p, q])
    assert remove_concat_split(model).SerializeToString() == model.SerializeToString()
