"""How channels pass through each op type: the rule table of ``fuse_channel_shuffle``.

- a channel permutation (a shuffle, a permuting Gather) is dropped: its output relabels its input;
- element-wise and per-channel ops (Relu, BN, Add/Mul with per-channel constants, depthwise
  conv, pooling ...) keep the layout of their input and permute their per-channel constants;
- a Concat on axis 1 joins layouts; a Split/Slice on axis 1 becomes a static slice, possibly
  strided, of its input's physical layout (the choice is checked by ``ChannelLayouts``);
- a dense Conv/ConvTranspose/Gemm/MatMul absorbs any layout into its weights' input axis;
  a dense conv's output is a free source (its weights' output axis can be permuted);
- anything else is opaque: it reads its inputs in their original order, and where that cannot
  be arranged a Gather on axis 1 puts them in order (the last resort).

Each rule reads one node and tells the planner what its outputs hold; a rule that meets
something it does not understand calls ``opaque`` (always safe).
"""

from __future__ import annotations

import numpy as np
import onnx

from edgekit.graph.channel_plan import (
    ChannelPlanner,
    ParamPermutation,
    Permutation,
    Rule,
    channel_axis_slice,
    node_key,
)
from edgekit.graph.graph_view import attr


def opaque(p: ChannelPlanner, node: onnx.NodeProto) -> None:
    """An op we do not look into: its tracked inputs are read in logical order."""
    p.opaque(node)


def _same_channels(p: ChannelPlanner, node: onnx.NodeProto) -> None:
    if len(node.output) != 1 or not node.input:
        opaque(p, node)
        return
    p.same_as(node, node.input[0])


def _per_channel_params(p: ChannelPlanner, node: onnx.NodeProto) -> None:
    # BatchNormalization, InstanceNormalization: data, then 1-D per-channel parameters.
    if len(node.output) != 1 or any(p.view.const(n) is None for n in node.input[1:]):
        opaque(p, node)
        return
    params = [ParamPermutation(i, 0, node.input[0]) for i in range(1, len(node.input))]
    p.same_as(node, node.input[0], params)


def _broadcast(p: ChannelPlanner, node: onnx.NodeProto) -> None:
    # Element-wise ops: one input varies per channel and is not constant; constants that vary
    # per channel are permuted like it, constants that do not are left alone.
    view = p.view
    rank = view.rank(node.output[0])
    dynamic, params = [], []
    for i, name in enumerate(node.input):
        value = view.const(name)
        shape = value.shape if value is not None else view.shape(name)
        if shape is None or rank is None:
            opaque(p, node)
            return
        axis = 1 - (rank - len(shape))
        if axis < 0 or shape[axis] == 1:
            continue
        if value is None:
            dynamic.append((name, axis))
        else:
            params.append((i, axis))
    if len(dynamic) != 1 or dynamic[0][1] != 1:
        opaque(p, node)  # two per-channel dynamic inputs must agree: keep both in order
        return
    source = dynamic[0][0]
    p.same_as(node, source, [ParamPermutation(i, axis, source) for i, axis in params])


def _conv(p: ChannelPlanner, node: onnx.NodeProto) -> None:
    view = p.view
    w = view.const(node.input[1])
    has_bias = len(node.input) > 2 and bool(node.input[2])
    if w is None or (has_bias and view.const(node.input[2]) is None):
        opaque(p, node)
        return
    group = int(attr(node, "group", 1))
    cout, cin = w.shape[0], w.shape[1] * group
    bias = [ParamPermutation(2, 0, node.output[0])] if has_bias else []
    if group == 1:
        p.track(node.input[0], cin)
        p.params[node_key(node)] = [ParamPermutation(1, 1, node.input[0]), ParamPermutation(1, 0, node.output[0]), *bias]
        p.free_source(node.output[0], cout)
    elif group == cin == cout:  # depthwise: channel c of the output reads channel c only
        p.track(node.input[0], cin)
        p.same_as(node, node.input[0], [ParamPermutation(1, 0, node.input[0]), *bias])
    else:
        opaque(p, node)


def _conv_transpose(p: ChannelPlanner, node: onnx.NodeProto) -> None:
    view = p.view
    w = view.const(node.input[1])
    has_bias = len(node.input) > 2 and bool(node.input[2])
    if w is None or int(attr(node, "group", 1)) != 1 or (has_bias and view.const(node.input[2]) is None):
        opaque(p, node)
        return
    bias = [ParamPermutation(2, 0, node.output[0])] if has_bias else []
    p.track(node.input[0], w.shape[0])
    p.params[node_key(node)] = [ParamPermutation(1, 0, node.input[0]), ParamPermutation(1, 1, node.output[0]), *bias]
    p.free_source(node.output[0], w.shape[1])


def _matrix(p: ChannelPlanner, node: onnx.NodeProto) -> None:
    # Gemm/MatMul on a [N, K] input: the layout of K goes into the rows of B (columns if transB).
    view = p.view
    b = view.const(node.input[1])
    trans_b = int(attr(node, "transB", 0))
    if b is None or b.ndim != 2 or view.rank(node.input[0]) != 2 or attr(node, "transA", 0):
        opaque(p, node)
        return
    p.track(node.input[0], b.shape[1] if trans_b else b.shape[0])
    p.params[node_key(node)] = [ParamPermutation(1, 1 if trans_b else 0, node.input[0])]
    for name in node.input[2:]:
        if name in p.labels:
            p.read_in_order(name)


def _concat(p: ChannelPlanner, node: onnx.NodeProto) -> None:
    rank = p.view.rank(node.output[0])
    if rank is None or int(attr(node, "axis")) % rank != 1 or not all(p.track(n) for n in node.input):
        opaque(p, node)
        return
    labels = np.concatenate([p.labels[n] for n in node.input])
    if len(np.unique(labels)) != len(labels):  # the same channel twice: no layout is a set
        opaque(p, node)
        return
    p.labels[node.output[0]] = labels
    p.slots[node.output[0]] = np.concatenate([p.slots[n] for n in node.input])


def _split(p: ChannelPlanner, node: onnx.NodeProto) -> None:
    view = p.view
    source, rank, channels = node.input[0], view.rank(node.input[0]), view.channels(node.input[0])
    sizes = view.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if sizes is None and attr(node, "split") is not None:  # opset < 13 keeps sizes in an attribute
        sizes = np.asarray(attr(node, "split"))
    if rank is None or channels is None or int(attr(node, "axis", 0)) % rank != 1:
        opaque(p, node)
        return
    if sizes is None:
        if (len(node.input) > 1 and node.input[1]) or channels % len(node.output):
            opaque(p, node)
            return
        sizes = np.full(len(node.output), channels // len(node.output))
    offsets = np.cumsum([0, *sizes.tolist()])
    p.track(source)
    parts = [np.arange(offsets[k], offsets[k + 1]) for k in range(len(node.output))]
    p.select([node_key(node)] * len(parts), source, parts, list(node.output))


def _slice(p: ChannelPlanner, node: onnx.NodeProto) -> None:
    index = channel_axis_slice(p.view, node)
    if index is None:
        axes = p.view.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        rank = p.view.rank(node.input[0])
        if axes is None or rank is None or 1 in {int(a) % rank for a in axes.reshape(-1)}:
            opaque(p, node)
        else:
            p.same_as(node, node.input[0])
        return
    group = p.slice_groups.get(node_key(node), [node])
    if node.output[0] in p.labels:
        return  # planned together with an earlier Slice of its group
    p.track(node.input[0])
    p.select([node_key(m) for m in group], node.input[0], [channel_axis_slice(p.view, m) for m in group],
             [m.output[0] for m in group])


def _reshape(p: ChannelPlanner, node: onnx.NodeProto) -> None:
    # Channel-preserving when axis 1 keeps its size and the axes after it keep their total
    # size (then axis 0 does too): only the spatial axes are regrouped.
    before, after = p.view.shape(node.input[0]), p.view.shape(node.output[0])
    if (before is not None and after is not None and len(before) >= 2 and len(after) >= 2
            and all(isinstance(d, int) for d in (*before[1:], *after[1:]))
            and before[1] == after[1] and np.prod(before[2:]) == np.prod(after[2:])):
        p.same_as(node, node.input[0])
    else:
        opaque(p, node)


def _flatten(p: ChannelPlanner, node: onnx.NodeProto) -> None:
    shape = p.view.shape(node.input[0])
    if int(attr(node, "axis", 1)) == 1 and shape is not None and all(d == 1 for d in shape[2:]):
        p.same_as(node, node.input[0])
    else:
        opaque(p, node)


def _spatial_axes(p: ChannelPlanner, node: onnx.NodeProto, axes: object, rank: int | None) -> None:
    axes = None if axes is None else np.asarray(axes).reshape(-1)
    # No axes, or an empty list, means "every axis" (Reduce*, Squeeze): the channels go too.
    if axes is None or axes.size == 0 or rank is None or {0, 1} & {int(a) % rank for a in axes}:
        opaque(p, node)
    else:
        p.same_as(node, node.input[0])


def _reduce(p: ChannelPlanner, node: onnx.NodeProto) -> None:
    axes = attr(node, "axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        axes = p.view.const(node.input[1])
    _spatial_axes(p, node, axes, p.view.rank(node.input[0]))


def _squeeze(p: ChannelPlanner, node: onnx.NodeProto) -> None:
    axes = p.view.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    name = node.output[0] if node.op_type == "Unsqueeze" else node.input[0]
    _spatial_axes(p, node, axes, p.view.rank(name))


def _transpose(p: ChannelPlanner, node: onnx.NodeProto) -> None:
    perm = attr(node, "perm")
    if perm is not None and list(perm[:2]) == [0, 1]:
        p.same_as(node, node.input[0])
    else:
        opaque(p, node)


def _pad(p: ChannelPlanner, node: onnx.NodeProto) -> None:
    pads, rank = p.view.const(node.input[1]), p.view.rank(node.input[0])
    if pads is None or rank is None or len(node.input) > 3 or pads[1] != 0 or pads[rank + 1] != 0:
        opaque(p, node)
    else:
        p.same_as(node, node.input[0])


def _resize(p: ChannelPlanner, node: onnx.NodeProto) -> None:
    scales = p.view.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    sizes = p.view.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    channels = p.view.channels(node.input[0])
    if attr(node, "coordinate_transformation_mode", b"half_pixel") in (b"tf_crop_and_resize", "tf_crop_and_resize"):
        p.opaque(node)  # the crop box may cut the channel axis too
        return
    if (scales is not None and scales.size > 1 and scales[1] == 1) or (
            sizes is not None and sizes.size > 1 and channels is not None and sizes[1] == channels):
        p.same_as(node, node.input[0])
    else:
        opaque(p, node)


def _gather(p: ChannelPlanner, node: onnx.NodeProto) -> None:
    # A Gather of every channel in another order is a permutation like a shuffle.
    index, rank = p.view.const(node.input[1]), p.view.rank(node.input[0])
    channels = p.view.channels(node.input[0])
    if (index is None or rank is None or channels is None or index.ndim != 1
            or int(attr(node, "axis", 0)) % rank != 1
            or not np.array_equal(np.sort(index % channels), np.arange(channels))):
        opaque(p, node)
        return
    p.permute(Permutation(node.input[0], node.output[0], index % channels, (node,)))


def _order_free(p: ChannelPlanner, node: onnx.NodeProto) -> None:
    """Shape/Size: the result does not depend on the order of channels; nothing to require."""


_UNARY = (
    "Relu LeakyRelu Elu Selu Celu Sigmoid HardSigmoid HardSwish Tanh Softplus Softsign Clip Identity "
    "Neg Abs Exp Log Sqrt Reciprocal Erf Floor Ceil Round Sign Cast Dropout ThresholdedRelu Mish "
    "MaxPool AveragePool LpPool GlobalAveragePool GlobalMaxPool GlobalLpPool"
).split()
_ELEMENTWISE = "Add Sub Mul Div Pow Max Min Sum Mean".split()

RULES: dict[str, Rule] = {
    **{op: _same_channels for op in _UNARY},
    **{op: _broadcast for op in _ELEMENTWISE},
    "PRelu": _broadcast,
    "BatchNormalization": _per_channel_params,
    "InstanceNormalization": _per_channel_params,
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _matrix,
    "MatMul": _matrix,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Reshape": _reshape,
    "Flatten": _flatten,
    **{op: _reduce for op in "ReduceMean ReduceMax ReduceMin ReduceSum ReduceL2 ReduceProd".split()},
    "Squeeze": _squeeze,
    "Unsqueeze": _squeeze,
    "Transpose": _transpose,
    "Pad": _pad,
    "Resize": _resize,
    "Gather": _gather,
    "Shape": _order_free,
    "Size": _order_free,
}
