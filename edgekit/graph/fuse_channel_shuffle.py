"""``fuse_channel_shuffle``: remove channel shuffles by relabelling channels instead of moving them.

ShuffleNet's ``channel_shuffle`` exports as Reshape ``[N, g, C/g, H, W]`` -> Transpose
``[0, 2, 1, 3, 4]`` -> Reshape ``[N, C, H, W]``: a fixed permutation of the channels, which
costs a full copy (and, on TFLite, layout transposes around it). A permutation is only a
relabelling, so it can be carried forward instead: element-wise and per-channel ops (ReLU, BN,
per-channel constants, depthwise convs) run on the channels in whatever order they sit, and
the next dense conv reads them through its weights' input axis, permuted to match.

The shuffle is usually followed by a Split into two halves, and each half takes channels from
both inputs of the Concat before the shuffle, so no single permutation makes both halves
contiguous. But dense convs may also lay out their *output* channels in any order. With that
freedom ``channel_layout.ChannelLayouts`` finds a layout where every Split reads a static
slice, here the even and the odd channels (``x[:, 0::2]``, ``x[:, 1::2]``), which is the
strided form of ShuffleNetV2 in its authors' own code. A ShuffleNetV2 or SNet graph ends with
no Transpose, no 5-D Reshape and no Gather: only the weights changed. Where no static slice
fits, the pass reads the tensor through a Gather on axis 1, so the graph stays exact.

Run it after constant folding (``cleanup``): Slice bounds that torch writes as shape
arithmetic must be constants for a Split to be recognised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from edgekit.errors import GraphPassError
from edgekit.graph.channel_plan import ChannelPlanner, Permutation, Selection, as_range, node_key
from edgekit.graph.channel_rules import RULES
from edgekit.graph.graph_view import GraphView, NameSource, add_initializer, attr, prune, replace_nodes

_INT64_MIN = np.iinfo(np.int64).min


@dataclass(frozen=True)
class ChannelShuffle:
    """A Reshape -> Transpose -> Reshape that shuffles channels.

    Args:
        first: the Reshape splitting axis 1 into ``(groups, channels / groups)``.
        transpose: the Transpose swapping those two axes.
        last: the Reshape merging them back.
        groups: the shuffle's group count.
        channels: size of axis 1.
    """

    first: onnx.NodeProto
    transpose: onnx.NodeProto
    last: onnx.NodeProto
    groups: int
    channels: int

    def permutation(self) -> Permutation:
        """The shuffle as ``output[:, j] = input[:, order[j]]``."""
        # Input channel k*C/g + i lands on output channel i*g + k.
        order = np.arange(self.channels).reshape(self.groups, -1).T.reshape(-1)
        return Permutation(self.first.input[0], self.last.output[0], order,
                           (self.first, self.transpose, self.last))


def match_shuffle(view: GraphView, transpose: onnx.NodeProto) -> ChannelShuffle | None:
    """The channel shuffle around ``transpose``, or None."""
    if transpose.op_type != "Transpose":
        return None
    first = view.producer.get(transpose.input[0])
    users = view.users(transpose.output[0])
    if first is None or first.op_type != "Reshape" or len(users) != 1 or users[0].op_type != "Reshape":
        return None
    last = users[0]
    if not view.is_single_use(first.output[0]) or not view.is_single_use(transpose.output[0]):
        return None
    x, split, y = view.shape(first.input[0]), view.shape(first.output[0]), view.shape(last.output[0])
    if x is None or split is None or y is None or len(x) < 2 or len(split) != len(x) + 1:
        return None
    if list(attr(transpose, "perm") or []) != [0, 2, 1, *range(3, len(split))]:
        return None
    channels, groups, per_group = x[1], split[1], split[2]
    if not all(isinstance(d, int) for d in (channels, groups, per_group)) or groups * per_group != channels:
        return None
    if x[0] != split[0] or tuple(split[3:]) != tuple(x[2:]) or tuple(y) != tuple(x):
        return None
    return ChannelShuffle(first, transpose, last, groups, channels)


def fuse_channel_shuffle(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove channel shuffles, carrying the permutation into weights; return a new model.

    Raises:
        GraphPassError: the planned layout is inconsistent (an internal error; the graph is
            not rewritten rather than rewritten wrongly).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for n in out.graph.node for a in n.attribute):
        return out  # subgraphs read outer tensors by name, out of this pass's sight
    view = GraphView(out)
    shuffles = [m for n in out.graph.node if (m := match_shuffle(view, n)) is not None]
    if not shuffles and not any(n.op_type == "Gather" for n in out.graph.node):
        return out
    names = NameSource(out)
    plan = ChannelPlanner(view, [s.permutation() for s in shuffles], names, RULES).run()
    rewriter = _Rewriter(out, view, plan, names)
    nodes = _fold_output_identities(rewriter.nodes(), rewriter.restores, view)
    replace_nodes(out, nodes)
    return prune(out)


def _fold_output_identities(nodes: list[onnx.NodeProto], restores: set[str], view: GraphView) -> list[onnx.NodeProto]:
    """Let the producer write a graph output directly instead of through an Identity we added."""
    producer = {o: n for n in nodes for o in n.output}
    keep_name = view.graph_outputs | view.graph_inputs | set(view.initializers)
    rename: dict[str, str] = {}
    dropped = set()
    for node in nodes:
        source = node.input[0] if node.name in restores else None
        if source and source in producer and source not in keep_name and source not in rename:
            rename[source] = node.output[0]
            dropped.add(id(node))
    result = []
    for node in nodes:
        if id(node) in dropped:
            continue
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = rename.get(name, name)
        result.append(node)
    return result


class _Rewriter:
    """Writes the planned graph: new node list, permuted constants, slices and gathers."""

    def __init__(self, out: onnx.ModelProto, view: GraphView, plan: ChannelPlanner, names: NameSource) -> None:
        self.out, self.view, self.plan, self.names = out, view, plan, names
        slot = plan.layouts.solve()
        self.label_at = np.empty_like(slot)
        self.label_at[slot] = np.arange(slot.size)
        self._orders: dict[str, np.ndarray] = {}
        self.alias = dict(plan.alias)
        self.in_order = dict(plan.in_order)
        # Tensors that must exist under their own name in logical order: graph outputs.
        self.after: dict[str, list[onnx.NodeProto]] = {}
        self.renamed: dict[str, str] = {}
        self.restores: set[str] = set()  # names of the Identity nodes restoring graph outputs
        # First give the producers of graph outputs that need a Gather a new output name, so
        # that every tensor's physical name is final before any node reads it.
        for output in view.graph.output:
            if self.in_order.get(output.name) is not None and self.physical(output.name) == output.name:
                self.alias[output.name] = self.renamed[output.name] = self.names(f"{output.name}_physical")
        for output in view.graph.output:
            self._restore_output(output.name)
        for name, ordered in self.in_order.items():
            if ordered is not None and name not in view.graph_outputs:
                self._emit_after(self.physical(name), self._gather(name, ordered))

    def physical(self, name: str) -> str:
        """The tensor that holds ``name``'s data in the rewritten graph (in physical order)."""
        while name in self.alias:
            name = self.alias[name]
        return name

    def order(self, name: str) -> np.ndarray:
        """``order[p]``: the original channel index of physical channel p of ``name``."""
        if name not in self._orders:
            labels, held = self.plan.labels[name], self.label_at[self.plan.slots[name]]
            sorter = np.argsort(labels)
            found = sorter[np.clip(np.searchsorted(labels[sorter], held), 0, len(labels) - 1)]
            if not np.array_equal(labels[found], held):
                raise GraphPassError(
                    f"fuse_channel_shuffle planned tensor '{name}' with channels it does not hold; "
                    "this is a bug in the pass. Leave the pass out (optimize(passes=...)) and report it."
                )
            self._orders[name] = found
        return self._orders[name]

    def nodes(self) -> list[onnx.NodeProto]:
        """The rewritten node list, in order."""
        result = [n for name in self.view.graph_inputs for n in self.after.get(name, [])]
        for node in self.view.graph.node:
            key = node_key(node)
            if key in self.plan.dropped:
                continue
            if key in self.plan.selections and not self._unchanged(self.plan.selections[key]):
                new_nodes = [self._selection(sel) for sel in self.plan.selections[key]]
            else:
                new_nodes = [self._rewire(node)]
            for new in new_nodes:
                result.append(new)
                for name in new.output:
                    result.extend(self.after.get(name, []))
        return result

    # -- pieces ---------------------------------------------------------------------------------

    def _rewire(self, node: onnx.NodeProto) -> onnx.NodeProto:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        key = node_key(node)
        for i, name in enumerate(new.input):
            ordered = self.in_order.get(name) if key in self.plan.opaque_nodes else None
            new.input[i] = ordered or self.physical(name)
        for i, name in enumerate(new.output):
            new.output[i] = self.renamed.get(name, name)
        by_input: dict[int, list] = {}
        for perm in self.plan.params.get(key, []):
            by_input.setdefault(perm.input_index, []).append(perm)
        for index, perms in by_input.items():
            value, changed = self.view.const(node.input[index]), False
            for perm in perms:
                order = self.order(perm.tensor)
                if not np.array_equal(order, np.arange(order.size)):
                    value, changed = np.take(value, order, axis=perm.axis), True
            if changed:
                new.input[index] = add_initializer(self.out, self.names(f"{node.input[index]}_perm"), value)
        return new

    def _unchanged(self, selections: list[Selection]) -> bool:
        return all(s.physical is not None and s.physical == as_range(s.logical) for s in selections)

    def _selection(self, sel: Selection) -> onnx.NodeProto:
        source = self.physical(sel.source)
        output = self.renamed.get(sel.output, sel.output)
        if sel.physical is None:
            index = np.argsort(self.order(sel.source))[sel.logical]
            return self._gather_node(source, index, output)
        start, stop, step = sel.physical
        stop = _INT64_MIN if stop < 0 else stop  # a negative stop would count from the end
        consts = [self._const(f"{output}_{k}", np.array([v], np.int64))
                  for k, v in (("starts", start), ("ends", stop), ("axes", 1), ("steps", step))]
        return onnx.helper.make_node("Slice", [source, *consts], [output], name=self.names(f"{output}_slice"))

    def _gather(self, name: str, output: str) -> onnx.NodeProto:
        """A Gather putting ``name`` (read physically) back in logical order into ``output``."""
        return self._gather_node(self.physical(name), np.argsort(self.order(name)), output)

    def _gather_node(self, source: str, index: np.ndarray, output: str) -> onnx.NodeProto:
        index_name = self._const(f"{output}_index", index.astype(np.int64))
        return onnx.helper.make_node("Gather", [source, index_name], [output], axis=1,
                                     name=self.names(f"{output}_gather"))

    def _const(self, stem: str, value: np.ndarray) -> str:
        return add_initializer(self.out, self.names(stem), value)

    def _emit_after(self, physical: str, node: onnx.NodeProto) -> None:
        self.after.setdefault(physical, []).append(node)

    def _restore_output(self, name: str) -> None:
        """Make graph output ``name`` hold its original channels under its own name."""
        physical = self.physical(name)
        if self.in_order.get(name) is not None:
            self.in_order[name] = name
            node = self._gather_node(physical, np.argsort(self.order(name)), name)
        elif physical != name:
            node = onnx.helper.make_node("Identity", [physical], [name], name=self.names(f"{name}_restore"))
            self.restores.add(node.name)
        else:
            return
        self._emit_after(physical, node)
