"""``equalize_cross_layer``: cross-layer equalization of consecutive convs (Nagel et al., ICCV 2019).

"Data-Free Quantization Through Weight Equalization and Bias Correction", section 4.1. For
two convs joined by a positively homogeneous map ``f`` (``f(s * x) = s * f(x)`` for every
``s > 0``: ReLU, LeakyReLU, PReLU, max and average pooling, Resize, or nothing)::

    conv2(f(conv1(x)))  ==  conv2'(f(conv1'(x)))
    conv1': W1[i] / s_i, b1[i] / s_i        (output channel i)
    conv2': W2[:, i] * s_i                  (input channel i; for a grouped or depthwise
                                             conv2, the slice of the group that reads i)

With ``r1_i = max|W1[i]|`` and ``r2_i = max|W2[:, i]|``, ``s_i = sqrt(r1_i / r2_i)`` gives both
ranges the same value ``sqrt(r1_i * r2_i)``: the spread of per-channel ranges, which is what
ruins per-tensor INT8 on depthwise nets with folded BatchNorm, shrinks to at most the geometric
mean of the two spreads. Zero padding stays zero under the scaling, so the rewrite is exact in
real arithmetic; in float32 it differs only by rounding.

Clip (ReLU6) is not positively homogeneous: its bound 6 would have to become ``6 / s_i`` per
channel, which a Clip cannot express. Such pairs are skipped and listed in the report, so
MobileNetV2 keeps only its linear bottleneck -> next expansion pairs. Chains
conv -> depthwise -> conv share the depthwise conv between two pairs; as in the paper, the
pairs are equalized in turn, round after round, until the scales settle.

Run it on the optimized fp32 graph (BatchNorm folded) *before* calibration: weight names are
kept, but their values and the ranges of the activations between the pairs change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.errors import GraphPassError
from edgekit.graph.graph_view import GraphView, NameSource, add_initializer, attr, prune

# Ops between two convs through which a per-channel positive scale passes unchanged
# (f(s * x) == s * f(x), channel by channel). Clip is absent on purpose: see the module docstring.
# Pools and Resize act on each channel alone and are linear or max-based, so they commute too.
_HOMOGENEOUS = frozenset({"Relu", "LeakyRelu", "PRelu", "MaxPool", "AveragePool", "GlobalAveragePool",
                          "GlobalMaxPool", "Resize", "Identity"})
_MAX_CHAIN = 8  # ops between the two convs; longer chains are not conv pairs in practice


Slot = tuple[str, int]  # a node (by its first output) and the index of one of its inputs


@dataclass(frozen=True)
class EqualizationPair:
    """Two convs the pass may equalize.

    Args:
        first: the conv whose output channels are divided by ``s``.
        second: the conv whose input channels are multiplied by ``s``.
        between: op types on the single-use path from ``first`` to ``second``.
    """

    first: onnx.NodeProto
    second: onnx.NodeProto
    between: tuple[str, ...] = ()


@dataclass(frozen=True)
class PairRecord:
    """One equalized pair in the report.

    Args:
        first, second: node names (or first output names) of the two convs.
        between: op types between them.
        spread_before, spread_after: the larger of the two per-channel range spreads
            (``max/min`` of ``r1`` and of ``r2``, dead channels left out) before and after.
    """

    first: str
    second: str
    between: tuple[str, ...]
    spread_before: float
    spread_after: float


@dataclass(frozen=True)
class EqualizationReport:
    """What cross-layer equalization did to a model.

    Args:
        pairs: the pairs equalized.
        skipped: ``(first, second, reason)`` for conv pairs behind an op that blocks the scaling.
    """

    pairs: tuple[PairRecord, ...]
    skipped: tuple[tuple[str, str, str], ...] = ()

    @property
    def description(self) -> str:
        """The change in words: ``equalized 2 conv pairs (worst range spread 605 -> 24.4); skipped
        34 (Clip is not positively homogeneous)``."""
        text = f"equalized {len(self.pairs)} conv pairs"
        if self.pairs:
            worst_before = max(p.spread_before for p in self.pairs)
            worst_after = max(p.spread_after for p in self.pairs)
            text += f" (worst range spread {worst_before:.3g} -> {worst_after:.3g})"
        if self.skipped:
            reasons = sorted({r for _, _, r in self.skipped})
            text += f"; skipped {len(self.skipped)} ({', '.join(reasons)})"
        return text

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {**asdict(self), "description": self.description}


def equalize_cross_layer(model: onnx.ModelProto, *, max_rounds: int = 32,
                         tolerance: float = 1e-4) -> onnx.ModelProto:
    """Equalize every conv pair joined by a positively homogeneous path; return a new model.

    Weights and biases keep their initializer names, except where another node reads the
    same initializer (e.g. the all-zero biases the constant deduplication shares): that conv
    gets its own copy, so the other reader is unchanged.

    Args:
        model: optimized fp32 ONNX (BatchNorm folded); it is not changed.
        max_rounds: sweeps over all pairs at most (chains through a depthwise conv need several).
        tolerance: stop once no scale of a sweep differs from 1 by more than this (log scale).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    view = GraphView(out, shapes={})
    pairs = find_pairs(view)
    values: dict[Slot, np.ndarray] = {}
    for pair in pairs:
        for slot in _slots(pair):
            node = view.producer[slot[0]]
            values.setdefault(slot, view.const(node.input[slot[1]]).astype(np.float64))
    for _ in range(max_rounds):
        worst = 0.0
        for pair in pairs:
            scale = _equalize_pair(pair, values)
            worst = max(worst, float(np.abs(np.log(scale)).max()))
        if worst <= tolerance:
            break
    _write_back(view, out, values)
    return out


def equalization_report(before: onnx.ModelProto, after: onnx.ModelProto) -> EqualizationReport:
    """What ``equalize_cross_layer`` changed: pairs, range spreads before and after, skipped pairs.

    Args:
        before: the model given to ``equalize_cross_layer``.
        after: what it returned (nodes are matched by their output names, which it keeps).

    Raises:
        GraphPassError: a conv of ``before`` is missing from ``after``.
    """
    view_before, view_after = GraphView(before, shapes={}), GraphView(after, shapes={})
    records = []
    for pair in find_pairs(view_before):
        spreads = []
        for view in (view_before, view_after):
            first, second = (_node(view, n.output[0]) for n in (pair.first, pair.second))
            r1 = _output_ranges(view.const(first.input[1]))
            r2 = _input_ranges(view.const(second.input[1]), int(attr(second, "group", 1)))
            spreads.append(max(range_spread(r1), range_spread(r2)))
        records.append(PairRecord(_label(pair.first), _label(pair.second), pair.between, *spreads))
    return EqualizationReport(tuple(records), tuple(_blocked_pairs(view_before)))


def find_pairs(view: GraphView) -> list[EqualizationPair]:
    """Conv pairs joined by a single-use path of positively homogeneous ops, in graph order."""
    pairs = []
    for node in view.graph.node:
        if node.op_type != "Conv" or not _constant_params(view, node):
            continue
        path = _path_to_conv(view, node)
        if path is None:
            continue
        second, between = path
        if all(op in _HOMOGENEOUS for op in between) and _channels_match(view, node, second):
            pairs.append(EqualizationPair(node, second, between))
    return pairs


def range_spread(ranges: np.ndarray) -> float:
    """``max / min`` of per-channel ranges, leaving out dead (all-zero) channels; 1 if none."""
    live = ranges[ranges > 0]
    return float(live.max() / live.min()) if live.size else 1.0


# -- matching ------------------------------------------------------------------------------


def _constant_params(view: GraphView, node: onnx.NodeProto) -> bool:
    """True when the conv's weight (and bias, if any) are constants."""
    params = [name for name in node.input[1:] if name]
    return bool(params) and node.input[0] not in params and all(view.const(n) is not None for n in params)


def _path_to_conv(view: GraphView, node: onnx.NodeProto) -> tuple[onnx.NodeProto, tuple[str, ...]] | None:
    """The conv reached from ``node`` along single-use data inputs, and the ops passed on the way."""
    tensor, between = node.output[0], []
    for _ in range(_MAX_CHAIN + 1):
        if not view.is_single_use(tensor):
            return None
        (user,) = view.users(tensor)
        if user.input[0] != tensor or tensor in user.input[1:]:
            return None
        if user.op_type == "Conv":
            return (user, tuple(between)) if _constant_params(view, user) else None
        if len([o for o in user.output if o]) != 1:
            return None
        between.append(user.op_type)
        tensor = user.output[0]
    return None


def _channels_match(view: GraphView, first: onnx.NodeProto, second: onnx.NodeProto) -> bool:
    w1, w2 = view.const(first.input[1]), view.const(second.input[1])
    return w1.shape[0] == w2.shape[1] * int(attr(second, "group", 1))


def _blocked_pairs(view: GraphView) -> list[tuple[str, str, str]]:
    """Conv pairs that a non-homogeneous op (Clip, Sigmoid, ...) keeps from being equalized."""
    blocked = []
    for node in view.graph.node:
        if node.op_type != "Conv" or not _constant_params(view, node):
            continue
        path = _path_to_conv(view, node)
        if path is None:
            continue
        stoppers = sorted({op for op in path[1] if op not in _HOMOGENEOUS})
        if stoppers:
            reason = f"{'/'.join(stoppers)} is not positively homogeneous"
            blocked.append((_label(node), _label(path[0]), reason))
    return blocked


def _slots(pair: EqualizationPair) -> list[Slot]:
    """The (node, input index) of every constant the pair rescales."""
    first, second = pair.first.output[0], pair.second.output[0]
    slots = [(first, 1), (second, 1)]
    if len(pair.first.input) > 2 and pair.first.input[2]:
        slots.append((first, 2))
    return slots


def _write_back(view: GraphView, out: onnx.ModelProto, values: dict[Slot, np.ndarray]) -> None:
    """Store ``values`` in ``out``: in place where the node owns the initializer, else as a copy."""
    names = NameSource(out)
    by_name = {init.name: init for init in out.graph.initializer}
    for (output, index), value in values.items():
        node = view.producer[output]
        name = node.input[index]
        dtype = view.const(name).dtype
        owned = name in by_name and len(view.users(name)) == 1 and list(node.input).count(name) == 1
        if owned:
            by_name[name].CopyFrom(numpy_helper.from_array(value.astype(dtype), name))
        else:
            node.input[index] = add_initializer(out, names(f"{name}_cle"), value.astype(dtype))
    prune(out)


def _node(view: GraphView, output: str) -> onnx.NodeProto:
    if output not in view.producer:
        raise GraphPassError(
            f"no node writes '{output}' in the equalized model; pass equalization_report the model "
            "equalize_cross_layer returned for the same input."
        )
    return view.producer[output]


def _label(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


# -- the arithmetic ------------------------------------------------------------------------


def _output_ranges(w: np.ndarray) -> np.ndarray:
    """``max|W[o]|`` per output channel of a conv weight ``[Cout, Cin/g, *k]``."""
    return np.abs(w).reshape(w.shape[0], -1).max(axis=1)


def _input_ranges(w: np.ndarray, group: int) -> np.ndarray:
    """``max|W[:, i]|`` per input channel ``i`` of the conv's full input (``group * Cin/g``)."""
    cout, cin_g = w.shape[:2]
    grouped = np.abs(w).reshape(group, cout // group, cin_g, -1)
    return grouped.max(axis=(1, 3)).reshape(-1)  # channel g * cin_g + c


def _equalize_pair(pair: EqualizationPair, values: dict[Slot, np.ndarray]) -> np.ndarray:
    """Replace the pair's weights in ``values`` by their equalized versions; return the scales ``s``."""
    first, second = pair.first.output[0], pair.second.output[0]
    w1_slot, w2_slot, bias_slot = (first, 1), (second, 1), (first, 2)
    w1, w2 = values[w1_slot], values[w2_slot]
    group = int(attr(pair.second, "group", 1))
    r1, r2 = _output_ranges(w1), _input_ranges(w2, group)
    # A dead channel on either side has no range to balance: leave it as it is.
    live = (r1 > 0) & (r2 > 0)
    scale = np.ones_like(r1)
    scale[live] = np.sqrt(r1[live] / r2[live])
    values[w1_slot] = w1 / scale.reshape(-1, *[1] * (w1.ndim - 1))
    if bias_slot in values:
        values[bias_slot] = values[bias_slot] / scale
    cout, cin_g = w2.shape[:2]
    grouped = w2.reshape(group, cout // group, cin_g, -1) * scale.reshape(group, 1, cin_g, 1)
    values[w2_slot] = grouped.reshape(w2.shape)
    return scale
