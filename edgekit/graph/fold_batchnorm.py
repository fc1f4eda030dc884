"""``fold_batchnorm``: remove every inference-mode BatchNormalization from a graph.

In inference BatchNormalization is a per-channel affine map ``y = s * x + t`` with
``s = gamma / sqrt(var + eps)`` and ``t = beta - mean * s``. Where it goes, in order of
preference (the first rule that matches wins):

1. into the linear op that produces its input (Conv, ConvTranspose, Gemm):
   ``W' = W * s`` on the output-channel axis, ``b' = b * s + t``;
2. through a Concat on axis 1 into each of the linear ops producing the Concat's inputs,
   each taking its own slice of ``s`` and ``t``;
3. into the next Conv/Gemm, which reads the BN output alone: ``W' = W * s`` on the
   input-channel axis, ``b' = b + sum(W * t)``. Only for convs without zero padding: a padded
   border is 0 after the BN but would be ``t`` inside the folded conv;
4. otherwise a per-channel Mul and Add, which cost less than the BN and later passes can fold.

A producer or Concat output with other readers (or that is a graph output) is left alone,
since the other readers need the un-normalised values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from edgekit.errors import GraphPassError
from edgekit.graph.graph_view import (
    GraphView,
    NameSource,
    add_initializer,
    attr,
    infer_shapes,
    prune,
    replace_nodes,
)

_LINEAR = ("Conv", "ConvTranspose", "Gemm")


@dataclass(frozen=True)
class Affine:
    """A BatchNormalization as ``y = scale * x + shift`` (per channel, float64)."""

    scale: np.ndarray
    shift: np.ndarray


@dataclass(frozen=True)
class BatchNormFold:
    """Where one BatchNormalization goes.

    Args:
        bn: the BatchNormalization node.
        rule: ``producer``, ``concat``, ``consumer`` or ``affine`` (see the module docstring).
        linear: the Conv/ConvTranspose/Gemm nodes that absorb it (none for ``affine``).
        concat: the Concat between the BN and its producers (rule ``concat`` only).
    """

    bn: onnx.NodeProto
    rule: str
    linear: tuple[onnx.NodeProto, ...] = ()
    concat: onnx.NodeProto | None = None


def fold_batchnorm(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold or replace every BatchNormalization; return a new model (``model`` is not changed).

    Raises:
        GraphPassError: a BatchNormalization in training mode, with non-constant parameters,
            or (for the Mul/Add fallback) an input of unknown rank.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    shapes = infer_shapes(out)
    names = NameSource(out)
    # Two BNs may touch the same conv (one before it, one after); such a pair is folded in
    # two sweeps, each on a fresh index of the graph.
    while True:
        view = GraphView(out, shapes)
        folds = _plan(view)
        if not folds:
            break
        replaced: dict[str, list[onnx.NodeProto]] = {}
        for fold in folds:
            replaced.update(_REWRITES[fold.rule](view, fold, out, names))
        nodes = []
        for node in out.graph.node:
            nodes.extend(replaced.get(node.output[0], [node]))
        replace_nodes(out, nodes)
    return prune(out)


def find_fold(view: GraphView, bn: onnx.NodeProto) -> BatchNormFold:
    """The first rule that applies to ``bn`` (the Mul/Add fallback always does)."""
    for rule in (_into_producer, _through_concat, _into_consumer):
        fold = rule(view, bn)
        if fold is not None:
            return fold
    return BatchNormFold(bn, "affine")


def batchnorm_affine(view: GraphView, bn: onnx.NodeProto) -> Affine:
    """``scale`` and ``shift`` of an inference-mode BatchNormalization."""
    if len([o for o in bn.output if o]) > 1 or attr(bn, "training_mode", 0):
        raise GraphPassError(
            f"BatchNormalization '{bn.name or bn.output[0]}' is in training mode (it outputs running "
            "statistics); export the model in eval mode (model.eval()) before optimizing."
        )
    params = [view.const(name) for name in bn.input[1:5]]
    if any(p is None for p in params):
        raise GraphPassError(
            f"BatchNormalization '{bn.name or bn.output[0]}' has non-constant parameters; only "
            "constant gamma/beta/mean/var can be folded. Export with do_constant_folding=True."
        )
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)
    scale = gamma / np.sqrt(var + float(attr(bn, "epsilon", 1e-5)))
    return Affine(scale, beta - mean * scale)


def _plan(view: GraphView) -> list[BatchNormFold]:
    folds: list[BatchNormFold] = []
    busy: set[str] = set()
    for node in view.graph.node:
        if node.op_type != "BatchNormalization":
            continue
        fold = find_fold(view, node)
        touched = {n.output[0] for n in (fold.bn, *fold.linear, *([fold.concat] if fold.concat else []))}
        if touched & busy:
            continue
        busy |= touched
        folds.append(fold)
    return folds


# -- matching ------------------------------------------------------------------------------


def _foldable_linear(view: GraphView, name: str) -> onnx.NodeProto | None:
    """The Conv/ConvTranspose/Gemm producing ``name`` alone for one reader, with constant weights."""
    node = view.producer.get(name)
    if node is None or node.op_type not in _LINEAR or not view.is_single_use(name):
        return None
    if any(view.const(i) is None for i in node.input[1:] if i):
        return None
    if node.op_type == "Gemm" and (view.rank(name) not in (None, 2)):
        return None
    return node


def _into_producer(view: GraphView, bn: onnx.NodeProto) -> BatchNormFold | None:
    linear = _foldable_linear(view, bn.input[0])
    return None if linear is None else BatchNormFold(bn, "producer", (linear,))


def _through_concat(view: GraphView, bn: onnx.NodeProto) -> BatchNormFold | None:
    concat = view.producer.get(bn.input[0])
    if concat is None or concat.op_type != "Concat" or not view.is_single_use(bn.input[0]):
        return None
    rank = view.rank(concat.output[0])
    axis = int(attr(concat, "axis"))
    if rank is None or axis % rank != 1:
        return None
    linear = tuple(_foldable_linear(view, name) for name in concat.input)
    if any(n is None for n in linear):
        return None
    return BatchNormFold(bn, "concat", linear, concat)  # type: ignore[arg-type]


def _into_consumer(view: GraphView, bn: onnx.NodeProto) -> BatchNormFold | None:
    if not view.is_single_use(bn.output[0]):
        return None
    (node,) = view.users(bn.output[0])
    if node.op_type not in ("Conv", "Gemm") or node.input[0] != bn.output[0]:
        return None
    if bn.output[0] in node.input[1:] or any(view.const(i) is None for i in node.input[1:] if i):
        return None
    if node.op_type == "Gemm" and attr(node, "transA", 0):
        return None
    if node.op_type == "Conv":
        # The fold is exact only where the conv never reads padding (see module docstring).
        pads = attr(node, "pads", None) or []
        if attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", "NOTSET", "VALID") or any(pads):
            return None
    return BatchNormFold(bn, "consumer", (node,))


# -- rewriting -----------------------------------------------------------------------------

Rewrite = Callable[[GraphView, BatchNormFold, onnx.ModelProto, NameSource], dict[str, list[onnx.NodeProto]]]


def _rewrite_producer(view: GraphView, fold: BatchNormFold, out: onnx.ModelProto,
                      names: NameSource) -> dict[str, list[onnx.NodeProto]]:
    affine = batchnorm_affine(view, fold.bn)
    new = _scaled_linear(view, fold.linear[0], affine, out, names, fold.bn.output[0])
    return {fold.linear[0].output[0]: [new], fold.bn.output[0]: []}


def _rewrite_concat(view: GraphView, fold: BatchNormFold, out: onnx.ModelProto,
                    names: NameSource) -> dict[str, list[onnx.NodeProto]]:
    affine = batchnorm_affine(view, fold.bn)
    replaced: dict[str, list[onnx.NodeProto]] = {fold.bn.output[0]: []}
    start = 0
    for linear in fold.linear:
        width = _output_channels(view, linear)
        part = Affine(affine.scale[start:start + width], affine.shift[start:start + width])
        replaced[linear.output[0]] = [_scaled_linear(view, linear, part, out, names, linear.output[0])]
        start += width
    if start != affine.scale.size:
        raise GraphPassError(
            f"Concat '{fold.concat.name or fold.concat.output[0]}' joins {start} channels but the "  # type: ignore[union-attr]
            f"BatchNormalization after it has {affine.scale.size}; the graph is inconsistent."
        )
    concat = onnx.NodeProto()
    concat.CopyFrom(fold.concat)
    concat.output[0] = fold.bn.output[0]
    replaced[fold.concat.output[0]] = [concat]  # type: ignore[union-attr]
    return replaced


def _rewrite_consumer(view: GraphView, fold: BatchNormFold, out: onnx.ModelProto,
                      names: NameSource) -> dict[str, list[onnx.NodeProto]]:
    affine = batchnorm_affine(view, fold.bn)
    node = fold.linear[0]
    w = view.const(node.input[1]).astype(np.float64)
    bias = view.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    new = onnx.NodeProto()
    new.CopyFrom(node)
    new.input[0] = fold.bn.input[0]
    if node.op_type == "Conv":
        groups = int(attr(node, "group", 1))
        cin_g = w.shape[1]
        per_out = np.arange(w.shape[0]) // (w.shape[0] // groups)  # group of each output channel
        chans = per_out[:, None] * cin_g + np.arange(cin_g)[None, :]  # input channel of W[o, i]
        s, t = affine.scale[chans], affine.shift[chans]
        extra = (w * t.reshape(*t.shape, *[1] * (w.ndim - 2))).sum(axis=tuple(range(1, w.ndim)))
        w_new = w * s.reshape(*s.shape, *[1] * (w.ndim - 2))
        b_new = (0 if bias is None else bias.astype(np.float64)) + extra
    else:  # Gemm: A = s * x + t, so alpha * A @ B = alpha * x @ (s B) + alpha * t @ B
        trans_b = int(attr(node, "transB", 0))
        b_mat = w.T if trans_b else w  # [K, M]
        alpha, beta = float(attr(node, "alpha", 1.0)), float(attr(node, "beta", 1.0))
        scaled = b_mat * affine.scale[:, None]
        w_new = scaled.T if trans_b else scaled
        b_new = alpha * (affine.shift @ b_mat) + (0 if bias is None else beta * bias.astype(np.float64))
        _set_attr(new, "beta", 1.0)
    dtype = view.const(node.input[1]).dtype
    _set_input(new, 1, add_initializer(out, names(f"{node.input[1]}_bnfold"), w_new.astype(dtype)))
    _set_input(new, 2, add_initializer(out, names(f"{node.output[0]}_bias_bnfold"), np.asarray(b_new, dtype)))
    return {node.output[0]: [new], fold.bn.output[0]: []}


def _rewrite_affine(view: GraphView, fold: BatchNormFold, out: onnx.ModelProto,
                    names: NameSource) -> dict[str, list[onnx.NodeProto]]:
    bn = fold.bn
    affine = batchnorm_affine(view, bn)
    rank = view.rank(bn.input[0])
    if rank is None or rank < 2:
        raise GraphPassError(
            f"BatchNormalization '{bn.name or bn.output[0]}' reads a tensor of unknown rank, so it "
            "cannot be written as a per-channel Mul/Add. Export with static input shapes."
        )
    dtype = view.const(bn.input[1]).dtype
    shape = (-1, *[1] * (rank - 2))
    scale = add_initializer(out, names(f"{bn.output[0]}_scale"), affine.scale.reshape(shape).astype(dtype))
    shift = add_initializer(out, names(f"{bn.output[0]}_shift"), affine.shift.reshape(shape).astype(dtype))
    scaled = names(f"{bn.output[0]}_scaled")
    stem = bn.name or bn.output[0]
    return {bn.output[0]: [
        onnx.helper.make_node("Mul", [bn.input[0], scale], [scaled], name=names(f"{stem}_mul")),
        onnx.helper.make_node("Add", [scaled, shift], [bn.output[0]], name=names(f"{stem}_add")),
    ]}


_REWRITES: dict[str, Rewrite] = {
    "producer": _rewrite_producer,
    "concat": _rewrite_concat,
    "consumer": _rewrite_consumer,
    "affine": _rewrite_affine,
}


def _output_channels(view: GraphView, node: onnx.NodeProto) -> int:
    w = view.const(node.input[1])
    if node.op_type == "Conv":
        return w.shape[0]
    if node.op_type == "ConvTranspose":
        return w.shape[1] * int(attr(node, "group", 1))
    return w.shape[0] if attr(node, "transB", 0) else w.shape[1]


def _scaled_linear(view: GraphView, node: onnx.NodeProto, affine: Affine, out: onnx.ModelProto,
                   names: NameSource, output: str) -> onnx.NodeProto:
    """``node`` with ``affine`` applied to its output channels, writing ``output``."""
    w = view.const(node.input[1])
    dtype = w.dtype
    w = w.astype(np.float64)
    bias = view.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    scale, shift = affine.scale, affine.shift
    new = onnx.NodeProto()
    new.CopyFrom(node)
    new.output[0] = output
    if node.op_type == "Conv":
        w_new = w * scale.reshape(-1, *[1] * (w.ndim - 1))
        b_new = (0 if bias is None else bias.astype(np.float64)) * scale + shift
    elif node.op_type == "ConvTranspose":
        groups = int(attr(node, "group", 1))
        grouped = w.reshape(groups, w.shape[0] // groups, *w.shape[1:])
        w_new = (grouped * scale.reshape(groups, 1, -1, *[1] * (w.ndim - 2))).reshape(w.shape)
        b_new = (0 if bias is None else bias.astype(np.float64)) * scale + shift
    else:  # Gemm: Y = alpha * A @ op(B) + beta * C, output channels on the last axis of Y
        trans_b = int(attr(node, "transB", 0))
        w_new = w * (scale[:, None] if trans_b else scale[None, :])
        beta = float(attr(node, "beta", 1.0))
        b_new = (0 if bias is None else beta * bias.astype(np.float64)) * scale + shift
        _set_attr(new, "beta", 1.0)
    _set_input(new, 1, add_initializer(out, names(f"{node.input[1]}_bnfold"), w_new.astype(dtype)))
    _set_input(new, 2, add_initializer(out, names(f"{output}_bias_bnfold"), np.asarray(b_new).astype(dtype)))
    return new


def _set_input(node: onnx.NodeProto, index: int, name: str) -> None:
    while len(node.input) <= index:
        node.input.append("")
    node.input[index] = name


def _set_attr(node: onnx.NodeProto, name: str, value: float) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, onnx.helper.make_attribute(name, value)])
