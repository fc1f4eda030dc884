"""Walk a graph once, in order, and plan where each tensor's channels go (``fuse_channel_shuffle``).

The planner keeps, per tensor, its channels in logical and in physical order (see
``channel_layout``); the rules in ``channel_rules`` say how each op type moves them. Dropped
permutations, permuted constants, and the static slices (or Gathers) that replace channel
selections are recorded here and written out by ``fuse_channel_shuffle``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from edgekit.graph.channel_layout import ChannelLayouts
from edgekit.graph.graph_view import GraphView, NameSource


@dataclass(frozen=True)
class Permutation:
    """Nodes that only reorder channels: ``output[:, j] = source[:, order[j]]``.

    Args:
        source: the tensor they read.
        output: the tensor they write.
        order: the channel gather indices.
        nodes: the nodes (a Reshape/Transpose/Reshape shuffle, or one Gather), all dropped.
    """

    source: str
    output: str
    order: np.ndarray
    nodes: tuple[onnx.NodeProto, ...]


@dataclass(frozen=True)
class ParamPermutation:
    """A constant input of a node to reorder along ``axis`` like the channels of ``tensor``."""

    input_index: int
    axis: int
    tensor: str


@dataclass(frozen=True)
class Selection:
    """A channel selection (a Split output or a Slice) as planned.

    Args:
        output: the tensor it writes.
        source: the tensor it reads.
        logical: the channels of ``source`` it selects in the original graph.
        physical: the physical channels it reads instead, as ``range(start, stop, step)``
            arguments, or None where no static slice works (a Gather is written).
    """

    output: str
    source: str
    logical: np.ndarray
    physical: tuple[int, int, int] | None


Rule = Callable[["ChannelPlanner", onnx.NodeProto], None]


def node_key(node: onnx.NodeProto) -> str:
    """A node's identity in a plan: its first output (unique in a valid graph)."""
    return node.output[0]


class ChannelPlanner:
    """Plans the channel layout of every tensor in ``view`` (see the module docstring).

    Args:
        view: the graph.
        permutations: channel permutations found in it (they are dropped).
        names: where new tensor names come from.
        rules: op type -> how channels pass through it (``channel_rules.RULES``); an op type
            without a rule is opaque.
    """

    def __init__(self, view: GraphView, permutations: list[Permutation], names: NameSource,
                 rules: dict[str, Rule]) -> None:
        self.view = view
        self.rules = rules
        self.names = names
        self.layouts = ChannelLayouts()
        self.labels: dict[str, np.ndarray] = {}
        self.slots: dict[str, np.ndarray] = {}
        self.alias: dict[str, str] = {}  # dropped tensor -> the tensor that carries its data
        self.dropped: set[str] = set()
        self.opaque_nodes: set[str] = set()
        self.params: dict[str, list[ParamPermutation]] = {}
        self.selections: dict[str, list[Selection]] = {}
        self.in_order: dict[str, str | None] = {}  # read in logical order: None, or the Gather output
        self._permutation_at = {node_key(p.nodes[-1]): p for p in permutations}
        self._inside_permutation = {node_key(n) for p in permutations for n in p.nodes[:-1]}
        self.slice_groups = _slice_groups(view)

    def run(self) -> ChannelPlanner:
        """Plan every node, then require graph outputs in logical order; returns ``self``."""
        for node in self.view.graph.node:
            key = node_key(node)
            if key in self._inside_permutation:
                self.dropped.add(key)
            elif key in self._permutation_at:
                self.permute(self._permutation_at[key])
            else:
                self.rules.get(node.op_type, ChannelPlanner.opaque)(self, node)
        for out in self.view.graph.output:
            if out.name in self.labels:
                self.read_in_order(out.name)
        return self

    # -- the operations the rules are written in ----------------------------------------------

    def track(self, name: str, channels: int | None = None) -> bool:
        """Make sure ``name`` has a layout (a fixed source if nothing gave it one); False if unknown."""
        if name in self.labels:
            return True
        channels = self.view.channels(name) if channels is None else channels
        if channels is None:
            return False
        self.labels[name] = self.slots[name] = self.layouts.source(channels, free=False)
        return True

    def same_as(self, node: onnx.NodeProto, source: str, params: list[ParamPermutation] | None = None) -> None:
        """``node``'s first output has the channels of ``source``; ``params`` follow them."""
        if not self.track(source):
            self.opaque(node)
            return
        self.labels[node.output[0]] = self.labels[source]
        self.slots[node.output[0]] = self.slots[source]
        if params:
            self.params[node_key(node)] = params

    def free_source(self, name: str, channels: int) -> None:
        """``name`` is written by an op whose output channels may be reordered."""
        self.labels[name] = self.slots[name] = self.layouts.source(channels, free=True)

    def permute(self, perm: Permutation) -> None:
        """Drop a permutation: its output is its input relabelled."""
        self.track(perm.source, len(perm.order))
        self.dropped.update(node_key(n) for n in perm.nodes)
        self.alias[perm.output] = self.alias.get(perm.source, perm.source)
        self.labels[perm.output] = self.labels[perm.source][perm.order]
        self.slots[perm.output] = self.slots[perm.source]

    def select(self, owners: list[str], source: str, parts: list[np.ndarray], outputs: list[str]) -> None:
        """Plan the channel selections ``parts`` of ``source``; part k is written to
        ``outputs[k]`` by the node whose key is ``owners[k]``."""
        labels, slots = self.labels[source], self.slots[source]
        wanted = [labels[p] for p in parts]
        chosen: list[np.ndarray | None] = [None] * len(parts)
        for candidate in _candidates(parts, len(labels)):
            if self.layouts.require_same_sets(wanted, [slots[c] for c in candidate]):
                chosen = list(candidate)
                break
        for owner, out, part, phys in zip(owners, outputs, parts, chosen, strict=True):
            if phys is None:  # read through a Gather: the output is in logical order
                self.labels[out] = self.slots[out] = self.layouts.source(len(part), free=False)
            else:
                self.labels[out], self.slots[out] = labels[part], slots[phys]
            plan = Selection(out, source, part, None if phys is None else as_range(phys))
            self.selections.setdefault(owner, []).append(plan)

    def opaque(self, node: onnx.NodeProto) -> None:
        """An op we do not look into: its tracked inputs are read in logical order."""
        self.opaque_nodes.add(node_key(node))
        for name in node.input:
            if name in self.labels:
                self.read_in_order(name)

    def read_in_order(self, name: str) -> None:
        """``name`` is read in its original channel order (by an opaque op or as a graph output)."""
        if name not in self.in_order:
            ok = self.layouts.require_order(self.labels[name], self.slots[name])
            self.in_order[name] = None if ok else self.names(f"{name}_in_order")


def as_range(index: np.ndarray) -> tuple[int, int, int] | None:
    """``(start, stop, step)`` with ``list(range(...)) == list(index)``, or None."""
    if len(index) == 0:
        return None
    step = int(index[1] - index[0]) if len(index) > 1 else 1
    if step == 0 or not np.array_equal(index, index[0] + step * np.arange(len(index))):
        return None
    stop = int(index[-1]) + (1 if step > 0 else -1)
    return int(index[0]), stop, step


def channel_axis_slice(view: GraphView, node: onnx.NodeProto) -> np.ndarray | None:
    """The channels a static Slice on axis 1 (only) selects, or None."""
    consts = [view.const(n) if n else None for n in list(node.input[1:5]) + [""] * (5 - len(node.input))]
    starts, ends, axes, steps = consts
    rank, channels = view.rank(node.input[0]), view.channels(node.input[0])
    if starts is None or ends is None or rank is None or channels is None or starts.size != 1:
        return None
    if (axes is None and node.input[3:4] not in ([], [""])) or (steps is None and node.input[4:5] not in ([], [""])):
        return None  # axes/steps given but not constant
    axis = int(axes.reshape(-1)[0]) % rank if axes is not None else 0
    step = int(steps.reshape(-1)[0]) if steps is not None else 1
    if axis != 1 or step == 0:
        return None
    return np.arange(channels)[slice(int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0]), step)]


def _candidates(parts: list[np.ndarray], channels: int) -> list[list[np.ndarray]]:
    """Static slices that could realise ``parts``: as written, round-robin strides, blocks."""
    found = [list(parts)]
    sizes = [len(p) for p in parts]
    if sum(sizes) == channels and all(as_range(p) is not None for p in parts):
        n = len(parts)
        strided = [np.arange(k, channels, n) for k in range(n)]
        if [len(s) for s in strided] == sizes:
            found.append(strided)
        offsets = np.cumsum([0, *sizes])
        found.append([np.arange(offsets[k], offsets[k + 1]) for k in range(n)])
    unique: list[list[np.ndarray]] = []
    for cand in found:
        if not any(all(np.array_equal(a, b) for a, b in zip(cand, u, strict=True)) for u in unique):
            unique.append(cand)
    return unique


def _slice_groups(view: GraphView) -> dict[str, list[onnx.NodeProto]]:
    """Channel Slices of one tensor that together take every channel once (torch's chunk)."""
    by_source: dict[str, list[onnx.NodeProto]] = {}
    for node in view.graph.node:
        if node.op_type == "Slice" and channel_axis_slice(view, node) is not None:
            by_source.setdefault(node.input[0], []).append(node)
    groups: dict[str, list[onnx.NodeProto]] = {}
    for source, nodes in by_source.items():
        taken = np.concatenate([channel_axis_slice(view, n) for n in nodes])
        if len(nodes) > 1 and np.array_equal(np.sort(taken), np.arange(view.channels(source))):
            for node in nodes:
                groups[node_key(node)] = nodes
    return groups
