"""cleanup: onnxslim folds shape arithmetic and drops dead nodes; the interface stays."""

from __future__ import annotations

import numpy as np
import onnx
from onnx_cases import GraphBuilder, assert_same_outputs, ops

from edgekit.graph import cleanup


def _shape_arithmetic_model() -> tuple[GraphBuilder, onnx.ModelProto]:
    # What torch writes for x.chunk(2, 1): Shape -> Gather(1) -> Div(2) as the Slice end.
    g = GraphBuilder(1)
    x = g.input("x", [1, 6, 3, 3])
    y = g.op("Relu", [x])
    channels = g.op("Gather", [g.op("Shape", [y]), g.const(np.array([1], np.int64))], axis=0)
    half = g.op("Div", [channels, g.const(np.array([2], np.int64))])
    first = g.op("Slice", [y, g.const(np.array([0], np.int64)), half, g.const(np.array([1], np.int64))])
    g.op("Sigmoid", [x])  # dead: nobody reads it
    model = g.model([g.bn(g.conv(first, 3, 4), 4)])
    model.metadata_props.add(key="edgekit.model", value="case")
    return g, model


def test_folds_shape_arithmetic_and_drops_dead_nodes() -> None:
    g, model = _shape_arithmetic_model()
    before = model.SerializeToString()
    out = cleanup(model)
    assert model.SerializeToString() == before, "the pass changed its argument"
    assert_same_outputs(model, out, g.feed())
    counts = ops(out)
    assert counts["Shape"] == counts["Gather"] == counts["Div"] == counts["Sigmoid"] == 0
    assert counts["Slice"] == 1


def test_keeps_opset_names_metadata_and_leaves_fusion_to_our_passes() -> None:
    _, model = _shape_arithmetic_model()
    out = cleanup(model)
    assert [(o.domain, o.version) for o in out.opset_import] == [("", 17)]
    assert [v.name for v in out.graph.input] == ["x"]
    assert [v.name for v in out.graph.output] == [v.name for v in model.graph.output]
    assert {p.key: p.value for p in out.metadata_props} == {"edgekit.model": "case"}
    assert ops(out)["BatchNormalization"] == 1  # conv+BN folding is fold_batchnorm's job


def test_clean_graph_keeps_its_nodes() -> None:
    g = GraphBuilder(2)
    x = g.input("x", [1, 3, 4, 4])
    model = g.model([g.op("Relu", [g.conv(x, 3, 4)])])
    out = cleanup(model)
    assert ops(out) == ops(model)
    assert_same_outputs(model, out, g.feed())
