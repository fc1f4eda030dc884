"""``remove_concat_split``: a Concat followed by a Split at the same boundaries is a no-op.

``Split(Concat(a, b, axis=k), [|a|, |b|], axis=k)`` gives back ``a`` and ``b``: the readers of
the Split outputs can read ``a`` and ``b`` directly, saving two copies. The same holds for a
Slice taking exactly one Concat input's range. The Concat goes too once nothing reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from edgekit.graph.graph_view import GraphView, attr, prune, rename_inputs, replace_nodes


@dataclass(frozen=True)
class ConcatSplit:
    """Readers of a Concat that only take back the Concat's own inputs.

    Args:
        concat: the Concat.
        readers: the Split/Slice nodes that are removed.
        forward: ``(reader output, Concat input it equals)`` pairs.
    """

    concat: onnx.NodeProto
    readers: tuple[onnx.NodeProto, ...]
    forward: tuple[tuple[str, str], ...]


def match_concat_split(view: GraphView, concat: onnx.NodeProto) -> ConcatSplit | None:
    """The Split/Slice readers of ``concat`` that undo it, or None."""
    if concat.op_type != "Concat":
        return None
    rank = view.rank(concat.output[0])
    if rank is None:
        return None
    axis = int(attr(concat, "axis")) % rank
    shapes = [view.shape(name) for name in concat.input]
    if any(s is None or not isinstance(s[axis], int) for s in shapes):
        return None
    widths = [int(s[axis]) for s in shapes]  # type: ignore[index]
    if 0 in widths:
        return None  # an empty input has no range of its own to hand back
    offsets = np.cumsum([0, *widths])
    ranges = {(int(offsets[k]), int(offsets[k + 1])): name for k, name in enumerate(concat.input)}
    readers, forward = [], []
    for node in view.users(concat.output[0]):
        if any(o in view.graph_outputs for o in node.output):
            continue  # a graph output keeps its name and its producer
        pairs = _undone(view, node, axis, int(offsets[-1]), widths, ranges)
        if pairs:
            readers.append(node)
            forward.extend(pairs)
    if not readers:
        return None
    return ConcatSplit(concat, tuple(readers), tuple(forward))


def remove_concat_split(model: onnx.ModelProto) -> onnx.ModelProto:
    """Let readers of Split/Slice-after-Concat read the Concat inputs; return a new model."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    view = GraphView(out)
    matches = [m for n in out.graph.node if (m := match_concat_split(view, n)) is not None]
    if not matches:
        return out
    alias = {old: new for m in matches for old, new in m.forward}
    for old in alias:  # a Concat input may itself be a removed Split output: follow the chain
        while alias[old] in alias:
            alias[old] = alias[alias[old]]
    removed = {id(r) for m in matches for r in m.readers}
    nodes = [rename_inputs(n, alias) for n in out.graph.node if id(n) not in removed]
    replace_nodes(out, nodes)
    return prune(out)


def _undone(view: GraphView, node: onnx.NodeProto, axis: int, total: int, widths: list[int],
            ranges: dict[tuple[int, int], str]) -> list[tuple[str, str]]:
    """``(output, concat input)`` pairs if ``node`` only splits the Concat back, else []."""
    rank = view.rank(node.input[0])
    if node.op_type == "Split" and rank is not None and int(attr(node, "axis", 0)) % rank == axis:
        sizes = view.const(node.input[1]) if len(node.input) > 1 and node.input[1] else None
        if sizes is None and attr(node, "split") is not None:  # opset < 13: an attribute
            sizes = np.asarray(attr(node, "split"))
        if sizes is None and not (len(node.input) > 1 and node.input[1]) and total % len(node.output) == 0:
            sizes = np.full(len(node.output), total // len(node.output))
        if sizes is not None and [int(s) for s in sizes] == widths:
            return list(zip(node.output, ranges.values(), strict=True))
    if node.op_type == "Slice" and node.input[0] and rank is not None:
        bounds = _slice_bounds(view, node, axis, total, rank)
        if bounds in ranges:
            return [(node.output[0], ranges[bounds])]
    return []


def _slice_bounds(view: GraphView, node: onnx.NodeProto, axis: int, total: int, rank: int) -> tuple[int, int] | None:
    """``(start, stop)`` of a step-1 static Slice on ``axis`` only, or None."""
    args = [view.const(n) if n else None for n in node.input[1:]]
    starts, ends = (args + [None, None])[:2]
    axes = args[2] if len(args) > 2 else None
    steps = args[3] if len(args) > 3 else None
    if starts is None or ends is None or starts.size != 1:
        return None
    if (len(args) > 2 and node.input[3] and axes is None) or (len(args) > 3 and node.input[4] and steps is None):
        return None
    if (int(axes.reshape(-1)[0]) % rank if axes is not None else 0) != axis:
        return None
    if steps is not None and int(steps.reshape(-1)[0]) != 1:
        return None
    start, stop, _ = slice(int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0])).indices(total)
    return start, stop
