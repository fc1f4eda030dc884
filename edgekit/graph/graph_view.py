"""A read-only index over an ONNX graph, and the small edits every pass shares.

Passes look nodes up by the tensors they produce and consume, read constants (initializers
and ``Constant`` nodes alike) as numpy arrays and read static shapes; then they build a new
node list. ``GraphView`` answers those questions for one snapshot of a graph and never edits
it; ``add_initializer``/``prune`` work on the copy a pass returns.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

Dim = int | str | None
Shape = tuple[Dim, ...]


class GraphView:
    """Producers, consumers, constants and shapes of one graph (a snapshot; not updated).

    Args:
        model: the model to index.
        shapes: tensor shapes, when the caller already has them (a pass that rebuilds the
            view after edits that keep shapes); by default ``infer_shapes(model)``.
    """

    def __init__(self, model: onnx.ModelProto, shapes: dict[str, Shape] | None = None) -> None:
        graph = model.graph
        self.model = model
        self.graph = graph
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.initializers = {t.name: t for t in graph.initializer}
        self.graph_inputs = {v.name for v in graph.input} - set(self.initializers)
        self.graph_outputs = {v.name for v in graph.output}
        self.shapes = infer_shapes(model) if shapes is None else shapes

    def users(self, name: str) -> list[onnx.NodeProto]:
        """Nodes that read ``name``."""
        return self.consumers.get(name, [])

    def is_single_use(self, name: str) -> bool:
        """True when exactly one node reads ``name`` and it is not a graph output."""
        return len(self.users(name)) == 1 and name not in self.graph_outputs

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer or ``Constant`` node output (also through Identity), else None."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Identity":  # torch shares equal tensors this way
            return self.const(node.input[0])
        if node is not None and node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
                if attr.name in ("value_float", "value_int"):
                    return np.array(onnx.helper.get_attribute_value(attr))
                if attr.name in ("value_floats", "value_ints"):
                    return np.array(onnx.helper.get_attribute_value(attr))
        return None

    def shape(self, name: str) -> Shape | None:
        """The inferred shape of ``name`` (ints for static dims), or None when unknown."""
        if name in self.initializers:
            return tuple(self.initializers[name].dims)
        value = self.const(name)
        if value is not None:
            return tuple(value.shape)
        return self.shapes.get(name)

    def channels(self, name: str) -> int | None:
        """The static size of axis 1 of ``name``, or None."""
        shape = self.shape(name)
        if shape is None or len(shape) < 2 or not isinstance(shape[1], int):
            return None
        return shape[1]

    def rank(self, name: str) -> int | None:
        """The rank of ``name``, or None."""
        shape = self.shape(name)
        return None if shape is None else len(shape)


def attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    """The value of attribute ``name`` of ``node``, or ``default``."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Number of nodes per op type, sorted by op type."""
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


class NameSource:
    """Hands out tensor names unused in a model, remembering those it gave.

    Args:
        model: the model whose names must not be reused.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self._taken = _names(model)

    def __call__(self, stem: str) -> str:
        """A new name starting with ``stem``."""
        name, i = stem, 0
        while name in self._taken:
            i += 1
            name = f"{stem}_{i}"
        self._taken.add(name)
        return name


def add_initializer(model: onnx.ModelProto, name: str, value: np.ndarray) -> str:
    """Append ``value`` as initializer ``name`` to ``model`` (which the caller owns); return the name."""
    model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
    return name


def prune(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove, in place, nodes whose outputs nobody reads and initializers nobody uses.

    Also drops ``value_info`` entries of tensors that no longer exist. Returns ``model``.
    """
    graph = model.graph
    needed = {v.name for v in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output if o):
            kept.append(node)
            needed.update(i for i in node.input if i)
            needed.update(_subgraph_inputs(node))
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    live_inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(live_inits)
    produced = {o for n in graph.node for o in n.output} | {v.name for v in graph.input}
    live_info = [v for v in graph.value_info if v.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(live_info)
    return model


def replace_nodes(model: onnx.ModelProto, nodes: Iterable[onnx.NodeProto]) -> None:
    """Replace the node list of ``model`` (which the caller owns) by ``nodes``."""
    nodes = list(nodes)
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def rename_inputs(node: onnx.NodeProto, alias: dict[str, str]) -> onnx.NodeProto:
    """A copy of ``node`` reading ``alias[name]`` wherever it read ``name``."""
    new = onnx.NodeProto()
    new.CopyFrom(node)
    for i, name in enumerate(new.input):
        new.input[i] = alias.get(name, name)
    return new


def _names(model: onnx.ModelProto) -> set[str]:
    graph = model.graph
    names = {v.name for v in graph.input} | {v.name for v in graph.output}
    names |= {t.name for t in graph.initializer}
    names |= {o for n in graph.node for o in n.output}
    names |= {n.name for n in graph.node if n.name}
    return names


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    # If/Loop/Scan bodies may read outer-scope tensors by name.
    names: set[str] = set()
    for a in node.attribute:
        for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            for sub in g.node:
                names.update(i for i in sub.input if i)
                names.update(_subgraph_inputs(sub))
    return names


def infer_shapes(model: onnx.ModelProto) -> dict[str, Shape]:
    """Tensor shapes from ``value_info`` and ONNX shape inference (on a copy; best effort)."""
    shapes: dict[str, Shape] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        infos = [*model.graph.value_info, *inferred.graph.value_info]
    except Exception:  # inference is best effort: passes treat unknown shapes as "do not touch"
        infos = list(model.graph.value_info)
    for info in [*model.graph.input, *model.graph.output, *infos]:
        shape = _shape_of(info)
        if shape is not None and (info.name not in shapes or _more_static(shape, shapes[info.name])):
            shapes[info.name] = shape
    return shapes


def _shape_of(info: onnx.ValueInfoProto) -> Shape | None:
    t = info.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims: list[Dim] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def _more_static(a: Shape, b: Shape) -> bool:
    return sum(isinstance(d, int) for d in a) > sum(isinstance(d, int) for d in b)
