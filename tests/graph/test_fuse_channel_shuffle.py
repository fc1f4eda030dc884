"""fuse_channel_shuffle: shuffles become relabellings; outputs stay (onnxruntime before/after)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx_cases import GraphBuilder, assert_same_outputs, ops

from edgekit.graph import fuse_channel_shuffle
from edgekit.graph.channel_layout import ChannelLayouts

N, H, W = 1, 5, 5


def _check(g: GraphBuilder, model: onnx.ModelProto) -> onnx.ModelProto:
    before = model.SerializeToString()
    out = fuse_channel_shuffle(model)
    assert model.SerializeToString() == before, "the pass changed its argument"
    assert_same_outputs(model, out, g.feed())
    return out


def _slice_steps(model: onnx.ModelProto) -> list[int]:
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return sorted(int(inits[n.input[4]][0]) for n in model.graph.node if n.op_type == "Slice")


def test_absorbed_by_next_dense_conv() -> None:
    g = GraphBuilder(1)
    x = g.input("x", [N, 8, H, W])
    y = g.conv(g.op("Relu", [g.shuffle(x, N, 8, H, W)]), 8, 6)
    out = _check(g, g.model([y]))
    assert ops(out) == {"Relu": 1, "Conv": 1}


def test_through_per_channel_ops_and_depthwise_conv() -> None:
    g = GraphBuilder(2)
    x = g.input("x", [N, 6, H, W])
    y = g.bn(g.shuffle(x, N, 6, H, W, groups=3), 6)
    y = g.op("Mul", [y, g.rand(6, 1, 1)])
    y = g.op("Add", [y, g.const(np.array(0.5, np.float32))])
    y = g.conv(y, 6, 6, k=3, group=6)
    y = g.op("Clip", [y, g.const(np.array(-0.5, np.float32)), g.const(np.array(0.5, np.float32))])
    out = _check(g, g.model([g.conv(y, 6, 4)]))
    assert ops(out) == {"BatchNormalization": 1, "Mul": 1, "Add": 1, "Conv": 2, "Clip": 1}


def test_conv_output_absorbs_shuffle_before_graph_output() -> None:
    # A dense conv may write its channels in any order: it writes them already shuffled.
    g = GraphBuilder(3)
    x = g.input("x", [N, 3, H, W])
    out = _check(g, g.model([g.shuffle(g.conv(x, 3, 8), N, 8, H, W)]))
    assert ops(out) == {"Conv": 1}


def test_concat_shuffle_split_becomes_strided_slices() -> None:
    # The tail of ShuffleNetV2's stride-2 unit and the head of the next one.
    g = GraphBuilder(4)
    x = g.input("x", [N, 4, H, W])
    cat = g.op("Concat", [g.op("Relu", [g.conv(x, 4, 4)]), g.op("Relu", [g.conv(x, 4, 4, k=3)])], axis=1)
    keep, work = g.op("Split", [g.shuffle(cat, N, 8, H, W), g.const(np.array([4, 4], np.int64))], n_out=2, axis=1)
    out = _check(g, g.model([g.conv(keep, 4, 3), g.conv(work, 4, 3)]))
    assert ops(out) == {"Conv": 4, "Relu": 2, "Concat": 1, "Slice": 2}
    assert _slice_steps(out) == [2, 2]


def _unit(g: GraphBuilder, x: str, c: int, use_split: bool) -> str:
    """A stride-1 ShuffleNetV2 unit: split, branch on one half, concat, shuffle."""
    half = c // 2
    if use_split:
        keep, work = g.op("Split", [x, g.const(np.array([half, half], np.int64))], n_out=2, axis=1)
    else:  # torch's chunk: two Slices
        one, zero = g.const(np.array([1], np.int64)), g.const(np.array([0], np.int64))
        mid, end = g.const(np.array([half], np.int64)), g.const(np.array([c], np.int64))
        keep, work = g.op("Slice", [x, zero, mid, one]), g.op("Slice", [x, mid, end, one])
    branch = g.op("Relu", [g.conv(work, half, half)])
    branch = g.op("Relu", [g.conv(g.conv(branch, half, half, k=3, group=half), half, half)])
    return g.shuffle(g.op("Concat", [keep, branch], axis=1), N, c, H, W)


@pytest.mark.parametrize("use_split", [True, False])
def test_shufflenet_units_leave_no_transpose(use_split: bool) -> None:
    g = GraphBuilder(5)
    c = 12  # half 6: not a power of two, like ShuffleNetV2's 58 and 116
    x = g.input("x", [N, 3, H, W])
    y = g.op("Concat", [g.op("Relu", [g.conv(x, 3, c // 2)]), g.op("Relu", [g.conv(x, 3, c // 2, k=3)])], axis=1)
    y = g.shuffle(y, N, c, H, W)
    for _ in range(4):
        y = _unit(g, y, c, use_split)
    pooled = g.op("ReduceMean", [y], axes=[2, 3], keepdims=0)  # the classifier head absorbs the last shuffle
    out = _check(g, g.model([g.op("Gemm", [pooled, g.rand(5, c), g.rand(5)], transB=1)]))
    counts = ops(out)
    assert counts["Transpose"] == counts["Reshape"] == counts["Gather"] == counts["Split"] == 0
    assert counts["Slice"] == 8 and set(_slice_steps(out)) == {2}


def test_fixed_input_to_graph_output_uses_gather() -> None:
    # Nothing can absorb the permutation (graph input in, graph output out): the last resort.
    g = GraphBuilder(6)
    x = g.input("x", [N, 4, H, W])
    out = _check(g, g.model([g.op("Relu", [g.shuffle(x, N, 4, H, W)])]))
    assert ops(out) == {"Relu": 1, "Gather": 1}


def test_residual_add_with_two_layouts_is_kept_exact() -> None:
    # Add of the shuffled tensor and the unshuffled one: both must be read in order.
    g = GraphBuilder(7)
    x = g.input("x", [N, 4, H, W])
    y = g.op("Add", [g.shuffle(x, N, 4, H, W), x])
    out = _check(g, g.model([g.conv(y, 4, 2)]))
    assert ops(out)["Transpose"] == 0
    assert ops(out)["Gather"] == 1


def test_shared_weight_is_not_changed_for_its_other_user() -> None:
    g = GraphBuilder(8)
    x = g.input("x", [N, 4, H, W])
    w = g.rand(4, 1, 3, 3)
    dw = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=4)
    a = g.op("Conv", [g.shuffle(x, N, 4, H, W), w], **dw)
    b = g.op("Conv", [x, w], **dw)
    out = _check(g, g.model([g.conv(a, 4, 3), b]))
    assert ops(out)["Transpose"] == 0


@pytest.mark.parametrize("perm", [[0, 2, 3, 1], [0, 1, 3, 2]])
def test_transpose_that_is_no_shuffle_is_left_alone(perm: list[int]) -> None:
    g = GraphBuilder(9)
    x = g.input("x", [N, 4, H, W])
    model = g.model([g.op("Transpose", [g.op("Relu", [x])], perm=perm)])
    assert fuse_channel_shuffle(model).SerializeToString() == model.SerializeToString()


def test_reshape_transpose_reshape_on_spatial_axes_is_left_alone() -> None:
    # [N, C, H, W] -> [N, C, H, 1, W] -> swap axes 2 and 3: not a channel shuffle.
    g = GraphBuilder(10)
    x = g.input("x", [N, 4, H, W])
    five = g.op("Reshape", [x, g.const(np.array([N, 4, H, 1, W], np.int64))])
    t = g.op("Transpose", [five], perm=[0, 1, 3, 2, 4])
    y = g.op("Reshape", [t, g.const(np.array([N, 4, H, W], np.int64))])
    model = g.model([y])
    out = fuse_channel_shuffle(model)
    assert ops(out) == ops(model)
    assert_same_outputs(model, out, g.feed())


def test_layouts_refuse_a_contradiction_and_keep_state() -> None:
    layouts = ChannelLayouts()
    free = layouts.source(4, free=True)
    fixed = layouts.source(2, free=False)
    assert layouts.require_same_sets([free[:2]], [free[2:]])  # a free source may move channels
    assert not layouts.require_same_sets([fixed[:1]], [fixed[1:]])  # a fixed one may not
    slot = layouts.solve()
    assert set(slot[free[:2]]) == set(free[2:].tolist())
    assert slot[fixed].tolist() == fixed.tolist()


def test_graph_outputs_read_through_each_other_keep_their_values() -> None:
    # R = relu(shuffle(x)) and B = shuffle(R) are both graph outputs (B listed first): R must
    # be restored by a Gather, and B must be gathered from R's physical layout, not from R.
    g = GraphBuilder(11)
    x = g.input("x", [N, 4, H, W])
    r = g.op("Relu", [g.shuffle(x, N, 4, H, W)])
    b = g.shuffle(r, N, 4, H, W)
    out = _check(g, g.model([b, r]))
    assert [v.name for v in out.graph.output] == [b, r]
    assert ops(out)["Transpose"] == 0


def test_through_spatial_reshape_and_flatten_to_gemm() -> None:
    # [N, C, H, W] -> [N, C, H*W] -> mean -> [N, C]: still channels; the Gemm absorbs them.
    g = GraphBuilder(12)
    x = g.input("x", [N, 6, H, W])
    y = g.op("Reshape", [g.shuffle(x, N, 6, H, W, groups=3), g.const(np.array([N, 6, H * W], np.int64))])
    y = g.op("Flatten", [g.op("ReduceMean", [y], axes=[2], keepdims=1)], axis=1)
    out = _check(g, g.model([g.op("Gemm", [y, g.rand(6, 4), g.rand(4)])]))
    assert ops(out) == {"Reshape": 1, "ReduceMean": 1, "Flatten": 1, "Gemm": 1}
