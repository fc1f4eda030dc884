"""Write a QDQ ONNX: the optimized fp32 graph plus QuantizeLinear/DequantizeLinear per the recipe.

``quantize_model(model, recipe)`` places Q/DQ pairs where the recipe's profile asks
(:func:`edgekit.calib.placement.plan_placement`) with the scales and zero points the recipe
holds (it is the single source of truth; nothing is re-derived here):

- activations: ``x -> QuantizeLinear -> DequantizeLinear -> readers`` (one pair per reading
  node for TensorRT, which cannot share a pair between consumers);
- weights: stored as int8 initializers read through DequantizeLinear (per-channel: axis 0,
  ConvTranspose axis 1);
- biases: int32 (scale = input scale x weight scale) where the profile wants them, else float;
- graph outputs stay float, and so do tensors and layers the recipe keeps in FP16/FP32.

``count_integer_convs`` loads the result in onnxruntime and counts how many convolutions its
CPU graph optimizer turned into integer kernels: the number the ``ort-cpu`` profile is for.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgekit.calib.placement import Edge, Placement, node_id, plan_placement
from edgekit.calib.profiles import resolve_profile
from edgekit.calib.recipe import Precision, QuantRecipe, TensorQuant
from edgekit.errors import EdgekitError
from edgekit.graph.graph_view import NameSource, prune, replace_nodes

_NP_DTYPE = {"int8": np.int8, "uint8": np.uint8}
# Metadata key of the mixed-precision map (node -> fp16/fp32) in a QDQ graph.
LAYER_PRECISION_KEY = "edgekit.layer_precision"

# onnxruntime's integer convolution kernels after graph optimization, and its float ones
# (FusedConv: Conv+activation; the NCHWc layout pass keeps the name Conv in its own domain).
INTEGER_CONV_OPS = frozenset({"QLinearConv", "ConvInteger", "NhwcQLinearConv", "QLinearConvTranspose"})
FLOAT_CONV_OPS = frozenset({"Conv", "FusedConv", "NhwcFusedConv", "ConvTranspose"})


class RecipeMismatchError(EdgekitError):
    """A recipe that does not fit the graph it is applied to."""


def quantize_model(model: onnx.ModelProto, recipe: QuantRecipe) -> onnx.ModelProto:
    """A QDQ copy of ``model`` quantized per ``recipe`` (``model`` is not modified).

    Args:
        model: the optimized fp32 model the recipe was calibrated on.
        recipe: per-tensor scales/zero points for one profile; ``layer_precision`` entries
            other than INT8 keep those nodes float.

    Raises:
        UnknownProfileError: the recipe names a profile that does not exist.
        RecipeMismatchError: a tensor the profile quantizes has no entry in the recipe, or
            tensors that must share a scale (Concat inputs) do not.
    """
    profile = resolve_profile(recipe.profile)
    keep_float = frozenset(n for n, p in recipe.layer_precision.items() if p != Precision.INT8)
    _check_layer_names(model, keep_float)
    placement = plan_placement(model, profile, keep_float)
    quants = _int8_quants(placement, recipe)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    build = _Build(out, NameSource(out))
    for name in placement.activations:
        if name in quants:
            build.activation(name, quants[name], placement.readers[name], profile.dedicated_qdq_pairs)
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for name, edges in placement.weight_readers.items():
        if name in quants:
            tq = quants[name]
            codes = _quantize(initializers[name], tq.scale, tq.zero_point, tq.axis, _NP_DTYPE[tq.dtype])
            build.constant(name, codes, tq.scale, tq.zero_point, tq.axis, edges)
    for nid, (x, w, b) in placement.biases.items():
        if (nid, 0) in build.alias and (nid, 1) in build.alias:  # input and weight are integer
            bias = initializers[b]
            # bias scale = input scale x weight scale per output channel (a grouped ConvTranspose
            # repeats its weight scales once per group).
            scale = quants[x].scale[0] * np.resize(np.asarray(quants[w].scale, dtype=np.float64), bias.shape[0])
            axis = 0 if len(quants[w].scale) > 1 else None
            scale = tuple(map(float, scale if axis is not None else scale[:1]))
            codes = _quantize(bias, scale, (0,) * len(scale), axis, np.int32)
            build.constant(f"{nid}_bias", codes, scale, (0,) * len(scale), axis, [(nid, 2)])
    nodes = [q for v in model.graph.input for q in build.after.get(v.name, [])] + build.head
    for index, node in enumerate(model.graph.node):
        nid = node_id(node, index)
        new = onnx.NodeProto()
        new.CopyFrom(node)
        for i in range(len(new.input)):
            new.input[i] = build.alias.get((nid, i), new.input[i])
        nodes.append(new)
        nodes.extend(q for o in node.output for q in build.after.get(o, []))
    replace_nodes(out, nodes)
    prune(out)  # drops the float weights and biases nothing reads any more
    props = {**{p.key: p.value for p in out.metadata_props}, "edgekit.quant_profile": profile.name,
             "edgekit.recipe_hash": recipe.content_hash()}
    if keep_float:  # mixed precision: the float layers travel with the graph (TensorRT, OpenVINO read it)
        props[LAYER_PRECISION_KEY] = json.dumps({n: recipe.layer_precision[n].value for n in sorted(keep_float)})
    onnx.helper.set_model_props(out, props)
    return out


@dataclass
class _Build:
    """The pieces ``quantize_model`` adds: nodes after each tensor, constant DQs, rewired edges."""

    model: onnx.ModelProto
    names: NameSource
    alias: dict[Edge, str] = field(default_factory=dict)
    after: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)
    head: list[onnx.NodeProto] = field(default_factory=list)

    def params(self, stem: str, scale: Sequence[float], zero_point: Sequence[int], per_channel: bool,
               dtype: type) -> tuple[str, str]:
        """Scale and zero-point initializers: scalars per-tensor, 1-D per-channel."""
        s_name, z_name = self.names(f"{stem}_scale"), self.names(f"{stem}_zero_point")
        self.model.graph.initializer.extend([
            numpy_helper.from_array(np.asarray(scale if per_channel else scale[0], dtype=np.float32), s_name),
            numpy_helper.from_array(np.asarray(zero_point if per_channel else zero_point[0], dtype=dtype), z_name),
        ])
        return s_name, z_name

    def activation(self, name: str, tq: TensorQuant, edges: Sequence[Edge], dedicated: bool) -> None:
        """Q/DQ after ``name``, read by ``edges`` (a pair per edge when ``dedicated``)."""
        scale, zp = self.params(name, tq.scale, tq.zero_point, False, _NP_DTYPE[tq.dtype])
        pairs = [[e] for e in edges] if dedicated else [list(edges)]
        for k, pair_edges in enumerate(pairs):
            stem = f"{name}_{k}" if len(pairs) > 1 else name
            q_out, dq_out = self.names(f"{stem}_quantized"), self.names(f"{stem}_dequantized")
            self.after.setdefault(name, []).extend([
                helper.make_node("QuantizeLinear", [name, scale, zp], [q_out],
                                 name=self.names(f"{stem}_QuantizeLinear")),
                helper.make_node("DequantizeLinear", [q_out, scale, zp], [dq_out],
                                 name=self.names(f"{stem}_DequantizeLinear")),
            ])
            self.alias.update({edge: dq_out for edge in pair_edges})

    def constant(self, stem: str, codes: np.ndarray, scale: Sequence[float], zero_point: Sequence[int],
                 axis: int | None, edges: Sequence[Edge]) -> None:
        """Integer ``codes`` as an initializer read through a DequantizeLinear by ``edges``."""
        q_name = self.names(f"{stem}_quantized")
        self.model.graph.initializer.append(numpy_helper.from_array(codes, q_name))
        s_name, z_name = self.params(stem, scale, zero_point, axis is not None, codes.dtype.type)
        out = self.names(f"{stem}_dequantized")
        attrs = {"axis": axis} if axis is not None else {}
        self.head.append(helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [out],
                                          name=self.names(f"{stem}_DequantizeLinear"), **attrs))
        self.alias.update({edge: out for edge in edges})


def _check_layer_names(model: onnx.ModelProto, names: frozenset[str]) -> None:
    """Refuse float-layer names that match no node (a typo would otherwise quantize the layer silently)."""
    from edgekit.errors import suggest

    known = [node_id(n, i) for i, n in enumerate(model.graph.node)]
    unknown = sorted(names - set(known))
    if unknown:
        raise RecipeMismatchError(f"the recipe keeps layer '{unknown[0]}' float, but the graph has no node of that "
                                  f"name ({len(unknown)} unknown in all).{suggest(unknown[0], known)}")


def _int8_quants(placement: Placement, recipe: QuantRecipe) -> dict[str, TensorQuant]:
    """The recipe's INT8 entries for the placed tensors; checks coverage and shared scales."""
    wanted = [*placement.activations, *placement.weights]
    missing = [n for n in wanted if n not in recipe.tensors]
    if missing:
        raise RecipeMismatchError(
            f"the recipe (profile '{recipe.profile}') has no entry for {len(missing)} tensor(s) the profile "
            f"quantizes, e.g. {', '.join(missing[:3])}: it was calibrated on another graph or for another "
            f"profile. Recalibrate on this model."
        )
    quants = {n: recipe.tensors[n] for n in wanted if recipe.tensors[n].precision == Precision.INT8}
    for group in placement.groups:
        params = {(quants[n].scale, quants[n].zero_point, quants[n].dtype) for n in group if n in quants}
        if len(params) > 1:
            raise RecipeMismatchError(
                f"tensors {', '.join(sorted(group)[:4])} must share one scale for profile '{recipe.profile}' "
                f"(they meet at a Concat or pass through a commuting op) but the recipe gives them "
                f"{len(params)} different ones; build the recipe with edgekit.calib.profiles.tensor_quants."
            )
    return quants


def _quantize(values: np.ndarray, scale: Sequence[float], zero_point: Sequence[int], axis: int | None,
              dtype: type) -> np.ndarray:
    """``clip(round(values / scale) + zp)`` in ``dtype``, per-channel parameters broadcast along ``axis``."""
    shape = [1] * values.ndim
    if axis is not None:
        shape[axis] = -1
    scale = np.asarray(scale, dtype=np.float64).reshape(shape if axis is not None else ())
    zero_point = np.asarray(zero_point, dtype=np.float64).reshape(shape if axis is not None else ())
    limits = np.iinfo(dtype)
    codes = np.clip(np.round(values.astype(np.float64) / scale) + zero_point, limits.min, limits.max)
    return codes.astype(dtype)


@dataclass(frozen=True)
class IntegerConvCount:
    """Convolutions onnxruntime runs on integers vs in float, after its graph optimizations.

    Args:
        integer: QLinearConv / ConvInteger nodes in the optimized graph.
        float: Conv / FusedConv nodes left in float.
        op_counts: every op type of the optimized graph with its count.
    """

    integer: int
    float: int
    op_counts: Mapping[str, int]

    @property
    def total(self) -> int:
        return self.integer + self.float


def count_integer_convs(model: onnx.ModelProto, threads: int = 1) -> IntegerConvCount:
    """Optimize ``model`` with onnxruntime's CPU EP (ORT_ENABLE_ALL) and count integer vs float convs."""
    import onnxruntime as ort  # on use: writing a QDQ model does not need onnxruntime

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # the "hardware-specific optimized model" warning is expected here
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    counts: dict[str, int] = {}
    for node in optimized.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return IntegerConvCount(
        integer=sum(counts.get(op, 0) for op in INTEGER_CONV_OPS),
        float=sum(counts.get(op, 0) for op in FLOAT_CONV_OPS),
        op_counts=dict(sorted(counts.items())),
    )
