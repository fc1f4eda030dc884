"""Where a backend profile puts Q/DQ pairs in an optimized fp32 ONNX graph.

A profile names the op inputs that must be integer (``quantized_inputs``), the ops whose
output must be integer too (``quantized_outputs``, onnxruntime) and the ops a quantizer
passes through (``commuting``). ``plan_placement`` turns that into a ``Placement``:

1. *Demands.* Each activation input a quantized op reads is demanded on that edge; each
   output a ``quantized_outputs`` op writes (after a fused ReLU/Clip) is demanded on every
   edge that reads it. Graph outputs are never quantized (a head's logits stay float).
2. *Tracing.* A demand on the output of a commuting op (MaxPool, Slice, Concat, ...) is a
   demand on its data inputs too, and they all join one scale group (the op keeps the grid)::

       Relu ──Q/DQ──▶ MaxPool ──Q/DQ──▶ Conv      requantize_commuting (TensorRT, onnxruntime)
       Relu ──Q/DQ──▶ MaxPool ─────────▶ Conv      producer side only (NNCF / OpenVINO)

3. *Weights and biases.* The weight initializer of each quantized Conv/Gemm/MatMul is
   quantized per output channel; int32 biases where the profile asks for them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import onnx

from edgekit.graph.graph_view import GraphView, attr

if TYPE_CHECKING:
    from edgekit.calib.profiles import Profile

Edge = tuple[str, int]  # (node id, input index) of a node reading a tensor

# Weighted op -> index of its weight input.
WEIGHT_INPUT: Mapping[str, int] = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}
_BIASED = frozenset({"Conv", "ConvTranspose", "Gemm"})


@dataclass(frozen=True)
class Placement:
    """Q/DQ placement of one profile on one graph.

    Args:
        activations: activation tensors that get a Q/DQ pair, in graph order.
        readers: activation tensor -> the edges that read its dequantized value (other
            readers keep the float tensor).
        groups: activation tensors that must share one scale (each of size >= 2).
        weights: weight initializer -> per-channel axis (None: per-tensor).
        weight_readers: weight initializer -> the edges that read its dequantized value.
        reduced_weights: weights quantized with a reduced range (NNCF's first layer).
        biases: node id -> (input, weight, bias) names of a bias to store as int32.
        integer_nodes: node ids with at least one quantized input (weights included).
    """

    activations: tuple[str, ...]
    readers: Mapping[str, tuple[Edge, ...]]
    groups: tuple[frozenset[str], ...] = ()
    weights: Mapping[str, int | None] = field(default_factory=dict)
    weight_readers: Mapping[str, tuple[Edge, ...]] = field(default_factory=dict)
    reduced_weights: frozenset[str] = frozenset()
    biases: Mapping[str, tuple[str, str, str]] = field(default_factory=dict)
    integer_nodes: frozenset[str] = frozenset()


def node_id(node: onnx.NodeProto, index: int) -> str:
    """A node's name, or ``<op>_<index>`` for an unnamed node."""
    return node.name or f"{node.op_type}_{index}"


def op_key(node: onnx.NodeProto) -> str:
    """The key profiles use for ``node``: its op type, ``Resize.nearest`` for a nearest Resize."""
    if node.op_type == "Resize" and attr(node, "mode", b"nearest") in (b"nearest", "nearest"):
        return "Resize.nearest"
    return node.op_type


def _lookup(table: Mapping[str, object] | frozenset[str], node: onnx.NodeProto) -> bool:
    return op_key(node) in table or node.op_type in table


def data_inputs(node: onnx.NodeProto) -> range:
    """Indices of the inputs a commuting op moves data from (Concat: all; others: the first)."""
    return range(len(node.input)) if node.op_type == "Concat" else range(min(1, len(node.input)))


def weight_axis(node: onnx.NodeProto, view: GraphView) -> int | None:
    """The output-channel axis of ``node``'s weight: Conv 0, ConvTranspose 1, Gemm by transB, MatMul last."""
    rank = view.rank(node.input[1]) or 0
    axes = {"Conv": 0, "ConvTranspose": 1, "Gemm": 0 if attr(node, "transB", 0) else 1, "MatMul": rank - 1}
    return axes[node.op_type] if rank >= 2 else None


class _Groups:
    """Union-find over tensor names."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, name: str) -> str:
        self.parent.setdefault(name, name)
        while self.parent[name] != name:
            self.parent[name] = self.parent[self.parent[name]]
            name = self.parent[name]
        return name

    def union(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


def plan_placement(model: onnx.ModelProto, profile: Profile, keep_float: frozenset[str] = frozenset()) -> Placement:
    """Where ``profile`` puts Q/DQ pairs in ``model``.

    Args:
        model: an optimized fp32 model (BN folded; initializers as weights).
        profile: the backend profile.
        keep_float: node ids to leave float (mixed precision).
    """
    view = GraphView(model)
    nodes = list(model.graph.node)
    ids = [node_id(n, i) for i, n in enumerate(nodes)]
    id_of = {id(n): nid for n, nid in zip(nodes, ids)}

    def is_act(name: str) -> bool:
        return bool(name) and view.const(name) is None

    def fused_output(node: onnx.NodeProto) -> str:
        out = node.output[0]
        users = view.users(out)
        if (view.is_single_use(out) and users[0].op_type in profile.fused_activations
                and id_of[id(users[0])] not in keep_float):
            return users[0].output[0]
        return out

    float_nodes = set(keep_float)
    if profile.integer_needs_quantized_output:
        # A head whose output stays float cannot run on integers: leave its inputs float too.
        float_nodes |= {nid for n, nid in zip(nodes, ids)
                        if n.op_type in profile.quantized_outputs and fused_output(n) in view.graph_outputs}

    readers: dict[str, set[Edge]] = {}
    traced: set[str] = set()
    commuting_outputs: set[str] = set()
    groups = _Groups()

    def demand(tensor: str, edge: Edge) -> None:
        stack = [(tensor, edge)]
        while stack:
            name, reader = stack.pop()
            readers.setdefault(name, set()).add(reader)
            producer = view.producer.get(name)
            if name in traced or producer is None:
                continue
            traced.add(name)
            pid = id_of[id(producer)]
            if pid in float_nodes or not _lookup(profile.commuting, producer):
                continue
            commuting_outputs.add(name)
            for j in data_inputs(producer):
                source = producer.input[j]
                if is_act(source):
                    groups.union(name, source)
                    stack.append((source, (pid, j)))

    weights: dict[str, int | None] = {}
    weight_readers: dict[str, set[Edge]] = {}
    integer_nodes: set[str] = set()
    for node, nid in zip(nodes, ids):
        if nid in float_nodes or _lookup(profile.commuting, node):
            continue
        indices = profile.quantized_inputs.get(op_key(node), profile.quantized_inputs.get(node.op_type, ()))
        if indices == ():
            continue
        candidates = range(len(node.input)) if indices is None else indices
        acts = [(i, node.input[i]) for i in candidates if i < len(node.input) and is_act(node.input[i])]
        w = WEIGHT_INPUT.get(node.op_type)
        if w is not None and w < len(node.input) and node.input[w] in view.initializers:
            weights[node.input[w]] = weight_axis(node, view)
            weight_readers.setdefault(node.input[w], set()).add((nid, w))
            integer_nodes.add(nid)
        elif w is None and indices is None and len(acts) < 2:
            continue  # an elementwise op with a constant operand: a scale-shift, fused by backends
        if node.op_type == "Add" and profile.fuse_residual_add:
            acts = _drop_fused_input(acts, node, view)
        for i, name in acts:
            demand(name, (nid, i))
            integer_nodes.add(nid)

    for node, nid in zip(nodes, ids):
        if nid in float_nodes or node.op_type not in profile.quantized_outputs:
            continue
        out = fused_output(node)
        if out not in view.graph_outputs:
            for user in view.users(out):
                for i, name in enumerate(user.input):
                    if name == out:
                        demand(out, (id_of[id(user)], i))

    quantized = set(readers) if profile.requantize_commuting else set(readers) - commuting_outputs
    order = [*view.graph_inputs] + [o for n in nodes for o in n.output]
    activations = tuple(dict.fromkeys(o for o in order if o in quantized))
    members: dict[str, set[str]] = {}
    for name in activations:
        members.setdefault(groups.find(name), set()).add(name)
    biases = {}
    if profile.int32_bias:
        for node, nid in zip(nodes, ids):
            if (node.op_type in _BIASED and len(node.input) > 2 and node.input[2] in view.initializers
                    and node.input[1] in weights and (nid, 0) in readers.get(node.input[0], ())
                    and attr(node, "alpha", 1.0) == 1.0 and attr(node, "beta", 1.0) == 1.0
                    and view.rank(node.input[2]) == 1):
                biases[nid] = (node.input[0], node.input[1], node.input[2])
    reduced = _first_weighted(view, nodes, ids, weight_readers) if profile.reduce_first_layer else set()
    return Placement(
        activations=activations,
        readers={name: tuple(sorted(readers[name])) for name in activations},
        groups=tuple(frozenset(g) for g in members.values() if len(g) > 1),
        weights=weights,
        weight_readers={name: tuple(sorted(edges)) for name, edges in weight_readers.items()},
        reduced_weights=frozenset(reduced),
        biases=biases,
        integer_nodes=frozenset(integer_nodes),
    )


def _drop_fused_input(acts: list[tuple[int, str]], node: onnx.NodeProto, view: GraphView) -> list[tuple[int, str]]:
    """Leave float the one Add input a single-use Conv/Gemm of the Add's own shape produces (TensorRT fuses it)."""
    out_shape = view.shape(node.output[0])
    for k, (_, name) in enumerate(acts):
        producer = view.producer.get(name)
        if (len(acts) == 2 and producer is not None and producer.op_type in _BIASED
                and view.is_single_use(name) and view.shape(name) == out_shape and out_shape is not None):
            return acts[:k] + acts[k + 1:]
    return acts


def _first_weighted(view: GraphView, nodes: list[onnx.NodeProto], ids: list[str],
                    weight_readers: Mapping[str, set[Edge]]) -> set[str]:
    """Weights of the quantized weighted nodes met first on every path from the graph inputs."""
    weight_of = {nid: w for w, edges in weight_readers.items() for nid, _ in edges}
    id_of = {id(n): nid for n, nid in zip(nodes, ids)}
    first: set[str] = set()
    seen: set[str] = set()
    queue = deque(user for name in view.graph_inputs for user in view.users(name))
    while queue:
        node = queue.popleft()
        nid = id_of[id(node)]
        if nid in seen:
            continue
        seen.add(nid)
        if nid in weight_of:
            first.add(weight_of[nid])
            continue
        queue.extend(user for out in node.output for user in view.users(out))
    return first
