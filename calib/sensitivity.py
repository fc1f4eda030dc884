"""Per-layer sensitivity: how much each part of a quantized model costs on its own.

A *unit* is what mixed precision can keep float (node ids, the recipe's ``layer_precision`` keys):

- ``layer``: one node the profile quantizes (a Conv/Gemm/MatMul with its weights and input
  quantizers, an Add, a pooling op...);
- ``tensor``: one quantized activation tensor, as the set of nodes that must stay float for it
  to have no quantizer: its readers, and its producer where the profile quantizes that op's
  output (onnxruntime's QLinearConv writes integers, so the conv must go float as well).

Each unit is measured twice, on its own (the rest of the graph as is):

- *only it INT8* (every other unit float): SQNR and cosine of its tensor against fp32 (the
  unit's own quantization error), SQNR at the graph outputs, and the task-metric drop;
- *only it float* (every other unit INT8): the task metric it wins back against full INT8.

plus ``steps``: how many INT8 codes its tensor's values use per channel (median over
channels) under the recipe; a handful means its signal is lost in the quantization grid.
Units rank by the metric they win back float alone (per node kept float), then the metric they
lose INT8 alone, then by SQNR (:func:`sensitivity_key`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.calib.placement import node_id, plan_placement
from edgekit.calib.profiles import Profile, resolve_profile
from edgekit.calib.qdq import quantize_model
from edgekit.calib.recipe import Precision, QuantRecipe, TensorKind, TensorQuant
from edgekit.graph.graph_view import replace_nodes

LAYER, TENSOR = "layer", "tensor"
# Activations an integer kernel applies before writing its output: a layer's error is read after them.
FUSED_ACTIVATIONS = frozenset({"Relu", "Clip", "LeakyRelu"})
_EPS = 1e-30
# A drop function: a variant of the graph -> points of the task metric lost against fp32.
DropFn = Callable[[onnx.ModelProto], float]


@dataclass(frozen=True)
class Unit:
    """A part of the model mixed precision can keep float.

    Args:
        kind: ``layer`` or ``tensor``.
        name: the node id (layer) or the activation tensor's name (tensor).
        op_type: the layer's op, or the op that produces the tensor.
        nodes: node ids that stay float to take this unit out of INT8.
        tensor: the tensor whose error is measured: the layer's output (after an activation
            the integer kernel fuses), or the tensor itself.
    """

    kind: str
    name: str
    op_type: str
    nodes: frozenset[str]
    tensor: str


@dataclass(frozen=True)
class UnitSensitivity:
    """One unit's error on its own; metric effects in points of the task metric.

    Args:
        kind, name, op_type, tensor: the unit (see :class:`Unit`); ``nodes`` its float set.
        sqnr_db, cosine: its tensor against fp32 when only it is INT8.
        output_sqnr_db: the graph outputs against fp32 when only it is INT8.
        steps: INT8 codes its tensor's values use per channel (median), under the recipe.
        int8_only_drop: metric drop when only it is INT8 (None: not measured).
        float_only_gain: metric won back against full INT8 when only it is float (None: not measured).
        rank: 1 = most sensitive.
    """

    kind: str
    name: str
    op_type: str
    tensor: str
    nodes: tuple[str, ...]
    sqnr_db: float
    cosine: float
    output_sqnr_db: float
    steps: int | None
    int8_only_drop: float | None
    float_only_gain: float | None
    rank: int = 0

    @property
    def effect(self) -> float:
        """The larger metric effect in points (0 where neither was measured)."""
        return max(self.int8_only_drop or 0.0, self.float_only_gain or 0.0)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict."""
        return {**asdict(self), "nodes": list(self.nodes), "effect": round(self.effect, 4)}


def quantizable_units(model: onnx.ModelProto, profile: Profile | str) -> list[Unit]:
    """The layer and tensor units of ``model`` under ``profile``, in graph order (layers first)."""
    profile = resolve_profile(profile) if isinstance(profile, str) else profile
    placement = plan_placement(model, profile)
    nodes = list(model.graph.node)
    ids = [node_id(n, i) for i, n in enumerate(nodes)]
    by_id = dict(zip(ids, nodes))
    producer = {o: nid for nid, n in zip(ids, nodes) for o in n.output}
    users: dict[str, list[str]] = {}
    for nid, n in zip(ids, nodes):
        for name in n.input:
            users.setdefault(name, []).append(nid)
    graph_outputs = {o.name for o in model.graph.output}
    units = []
    for nid in ids:
        if nid in placement.integer_nodes:
            node = by_id[nid]
            out = node.output[0]
            follow = users.get(out, [])
            if (len(follow) == 1 and out not in graph_outputs
                    and by_id[follow[0]].op_type in FUSED_ACTIVATIONS):
                out = by_id[follow[0]].output[0]
            units.append(Unit(LAYER, nid, node.op_type, frozenset({nid}), out))
    for tensor in placement.activations:
        float_nodes = _tensor_float_set(model, profile, tensor, placement.readers[tensor], producer, by_id)
        op = by_id[producer[tensor]].op_type if tensor in producer else "input"
        units.append(Unit(TENSOR, tensor, op, float_nodes, tensor))
    return units


def _tensor_float_set(model: onnx.ModelProto, profile: Profile, tensor: str, readers: Iterable[tuple[str, int]],
                      producer: Mapping[str, str], by_id: Mapping[str, onnx.NodeProto]) -> frozenset[str]:
    """Nodes that must stay float for ``tensor`` to get no quantizer: its readers, and an op writing it as integers.

    The writer is the producer, or the op before a fused activation that produces it (a conv
    whose ReLU onnxruntime folds into QLinearConv), where the profile quantizes that op's output.
    """
    chosen = {nid for nid, _ in readers}
    writer = producer.get(tensor)
    if writer is not None and by_id[writer].op_type in FUSED_ACTIVATIONS and by_id[writer].input[0] in producer:
        writer = producer[by_id[writer].input[0]]
    if writer is not None and by_id[writer].op_type in profile.quantized_outputs:
        chosen.add(writer)
    for _ in range(4):  # a reader kept float can expose another (a commuting op's consumer)
        placement = plan_placement(model, profile, frozenset(chosen))
        if tensor not in placement.activations:
            break
        chosen |= {nid for nid, _ in placement.readers[tensor]}
    return frozenset(chosen)


def float_variant(model: onnx.ModelProto, recipe: QuantRecipe, float_nodes: Iterable[str],
                  precision: Precision = Precision.FP32, *,
                  reference: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """The QDQ graph with ``float_nodes`` kept float (the recipe's own float layers stay float too).

    Args:
        reference: the fp32 graph before bias correction: float layers take their biases from it
            (a corrected bias offsets weight-quantization error a float layer does not have).
    """
    nodes = set(float_nodes)
    merged = {**recipe.layer_precision, **{n: precision for n in nodes}}
    if reference is not None:
        model = restore_biases(model, reference, nodes | {n for n, p in merged.items() if p is not Precision.INT8})
    qdq = quantize_model(model, complete_recipe(model, recipe.replace(layer_precision=merged)))
    fp16 = {n for n, p in merged.items() if p is Precision.FP16}
    return round_to_fp16(qdq, fp16) if fp16 else qdq


def round_to_fp16(model: onnx.ModelProto, nodes: set[str]) -> onnx.ModelProto:
    """``model`` with ``nodes`` reading and writing fp16-rounded values, their constants rounded too.

    What an FP16 layer on TensorRT does to its numbers (storage in fp16, accumulation in fp32),
    simulated in fp32 onnxruntime: ``Cast(fp16) -> Cast(fp32)`` on each activation input and
    output. A tensor whose information lies below fp16's resolution of its magnitude (a small
    signal on a large offset) is lost there as it is on the device.
    """
    from onnx import TensorProto, helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    initializers = {t.name: t for t in out.graph.initializer}
    new_nodes: list[onnx.NodeProto] = []
    count = 0
    for index, original in enumerate(model.graph.node):
        node = onnx.NodeProto()
        node.CopyFrom(original)
        if node_id(node, index) not in nodes:
            new_nodes.append(node)
            continue
        for i, name in enumerate(node.input):
            if name in initializers:
                t = initializers[name]
                if t.data_type == TensorProto.FLOAT:
                    value = numpy_helper.to_array(t).astype(np.float16).astype(np.float32)
                    t.CopyFrom(numpy_helper.from_array(value, name))
            elif name:
                count += 1
                half, back = f"{name}_fp16_{count}", f"{name}_fp16r_{count}"
                new_nodes += [helper.make_node("Cast", [name], [half], to=TensorProto.FLOAT16, name=half),
                              helper.make_node("Cast", [half], [back], to=TensorProto.FLOAT, name=back)]
                node.input[i] = back
        new_nodes.append(node)
        for j, name in enumerate(node.output):
            count += 1
            raw, half = f"{name}_fp32_{count}", f"{name}_fp16_{count}"
            node.output[j] = raw
            new_nodes += [helper.make_node("Cast", [raw], [half], to=TensorProto.FLOAT16, name=half),
                          helper.make_node("Cast", [half], [name], to=TensorProto.FLOAT, name=f"{half}_back")]
    replace_nodes(out, new_nodes)
    return out


def complete_recipe(model: onnx.ModelProto, recipe: QuantRecipe) -> QuantRecipe:
    """The recipe plus entries for tensors its float layers newly expose to a quantizer.

    A profile that quantizes only the producer side of a commuting op (NNCF's placement: Q/DQ
    before a MaxPool, none after) needs the op's output quantized once the op itself stays
    float. That output's values are a subset of its input's (MaxPool, Slice, Reshape...), so
    it takes its input's parameters: the grid the int8 graph already used there.
    """
    from dataclasses import replace as replace_field

    from edgekit.calib.placement import data_inputs, op_key

    profile = resolve_profile(recipe.profile)
    keep_float = frozenset(n for n, p in recipe.layer_precision.items() if p is not Precision.INT8)
    if not keep_float:
        return recipe
    placement = plan_placement(model, profile, keep_float)
    producer = {o: n for n in model.graph.node for o in n.output}
    tensors = dict(recipe.tensors)

    def upstream(name: str, depth: int = 8) -> TensorQuant | None:
        # through commuting ops (MaxPool, Slice, Concat...: their inputs shared one scale group)
        quant = tensors.get(name)
        if quant is not None and quant.kind is TensorKind.ACTIVATION:
            return quant
        node = producer.get(name)
        if node is None or depth == 0 or not ({op_key(node), node.op_type} & profile.commuting):
            return None
        return next((q for j in data_inputs(node) if (q := upstream(node.input[j], depth - 1)) is not None), None)

    changed = False
    for name in [*placement.activations, *placement.weights]:
        if name in tensors and tensors[name].precision is not Precision.INT8:  # float in another plan, INT8 here
            tensors[name] = replace_field(tensors[name], precision=Precision.INT8)
            changed = True
        elif name not in tensors and (quant := upstream(name)) is not None:
            tensors[name] = replace_field(quant, name=name, precision=Precision.INT8)
            changed = True
    return recipe.replace(tensors=tensors) if changed else recipe


def restore_biases(graph: onnx.ModelProto, reference: onnx.ModelProto, nodes: set[str]) -> onnx.ModelProto:
    """``graph`` with the biases of ``nodes`` set back to ``reference``'s (zeros where it had none)."""
    if not nodes or graph is reference:
        return graph
    ref_bias = {node_id(n, i): n.input[2] if len(n.input) > 2 else "" for i, n in enumerate(reference.graph.node)}
    ref_init = {t.name: t for t in reference.graph.initializer}
    changes = {}
    for index, node in enumerate(graph.graph.node):
        nid = node_id(node, index)
        if nid in nodes and node.op_type in ("Conv", "Gemm", "ConvTranspose") and len(node.input) > 2:
            old = ref_bias.get(nid, "")
            changes[node.input[2]] = old
    if not changes:
        return graph
    out = onnx.ModelProto()
    out.CopyFrom(graph)
    for tensor in out.graph.initializer:
        if tensor.name in changes:
            current = numpy_helper.to_array(tensor)
            source = ref_init.get(changes[tensor.name])
            value = numpy_helper.to_array(source) if source is not None else np.zeros_like(current)
            tensor.CopyFrom(numpy_helper.from_array(value.astype(current.dtype).reshape(current.shape), tensor.name))
    return out


def analyze_sensitivity(
    model: onnx.ModelProto,
    recipe: QuantRecipe,
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    reference: onnx.ModelProto | None = None,
    units: Sequence[Unit] | None = None,
    int8_only_drop: DropFn | None = None,
    float_only_drop: DropFn | None = None,
    full_int8_drop: float | None = None,
    isolate: bool = True,
    precision: Precision = Precision.FP32,
) -> list[UnitSensitivity]:
    """Measure every unit on its own and rank them, most sensitive first.

    Args:
        model: the fp32 graph the recipe applies to.
        recipe: its QuantRecipe.
        feeds: a few feed dicts the tensor errors are measured on.
        reference: the fp32 graph before bias correction (errors are measured against it, float
            layers take its biases); default ``model``.
        units: the units to measure; default: :func:`quantizable_units`.
        int8_only_drop: metric drop of a variant with only one unit INT8 (None: not measured).
        float_only_drop: metric drop of a variant with only one unit float (None: not measured).
        full_int8_drop: the full-INT8 graph's drop, the base of ``float_only_gain``; measured
            with ``float_only_drop`` when None.
        isolate: build the only-it-INT8 variant of every unit for its SQNR, cosine and
            ``int8_only_drop``. False (the export's search, which needs only the float-alone
            gains): SQNR and cosine are read from the full-INT8 graph, where errors accumulate
            from the input, and ``int8_only_drop`` is not measured.
        precision: what float units run at (FP16 simulated by rounding, :func:`round_to_fp16`).
    """
    units = list(units) if units is not None else quantizable_units(model, recipe.profile)
    everything = frozenset().union(*(u.nodes for u in units)) if units else frozenset()
    outputs = [o.name for o in model.graph.output]
    base = reference if reference is not None else model
    expected = _run(base, feeds, list(dict.fromkeys([u.tensor for u in units] + outputs)))

    def variant(nodes: Iterable[str]) -> onnx.ModelProto:
        return float_variant(model, recipe, nodes, precision, reference=reference)

    if float_only_drop is not None and full_int8_drop is None:
        full_int8_drop = float_only_drop(variant(()))
    # A tensor unit often has the node set of a layer unit (a conv's input): measure each set once.
    int8_only: dict[frozenset[str], float] = {}
    float_only: dict[frozenset[str], float] = {}
    results = []
    full, full_values = model, {}
    if not isolate:
        full = variant(())
        full_values = _run(full, feeds, list(dict.fromkeys([_dequantized_name(full, u.tensor) for u in units]
                                                           + outputs)))
    for unit in units:
        only_int8 = variant(everything - unit.nodes) if isolate else full
        probe = _dequantized_name(only_int8, unit.tensor)
        values = _run(only_int8, feeds, [probe, *outputs]) if isolate else full_values
        own = _compare(expected[unit.tensor], values[probe])
        out = _compare_many([expected[o] for o in outputs], [values[o] for o in outputs])
        gain = drop = None
        if float_only_drop is not None and full_int8_drop is not None:
            if unit.nodes not in float_only:
                float_only[unit.nodes] = float_only_drop(variant(unit.nodes))
            gain = round(full_int8_drop - float_only[unit.nodes], 4)
        if int8_only_drop is not None and isolate:
            if unit.nodes not in int8_only:
                int8_only[unit.nodes] = int8_only_drop(only_int8)
            drop = round(int8_only[unit.nodes], 4)
        results.append(UnitSensitivity(
            unit.kind, unit.name, unit.op_type, unit.tensor, tuple(sorted(unit.nodes)), round(own[0], 3),
            round(own[1], 6), round(out[0], 3), _steps(expected[unit.tensor], recipe, unit.tensor), drop, gain))
    return rank_units(results)


def sensitivity_key(result: UnitSensitivity) -> tuple[float, float, float, float]:
    """Sort key, most sensitive first: metric won back float alone per float node, then lost INT8 alone, then SQNR.

    What a unit wins back with everything else INT8, per node it keeps float, is what keeping
    it float buys the search (which wants few float layers), so it leads; the drop with it
    alone INT8 separates units that win nothing on their own (errors spread over many layers),
    and output then own SQNR the rest (or everything, without a metric).
    """
    gain = max(result.float_only_gain or 0.0, 0.0) / max(len(result.nodes), 1)
    return (-round(gain, 2), -round(result.int8_only_drop or 0.0, 2), result.output_sqnr_db, result.sqnr_db)


def rank_units(results: Iterable[UnitSensitivity]) -> list[UnitSensitivity]:
    """The results sorted by :func:`sensitivity_key`, ``rank`` set (1 = most sensitive)."""
    return [replace(r, rank=i + 1) for i, r in enumerate(sorted(results, key=sensitivity_key))]


def _steps(values: Sequence[np.ndarray], recipe: QuantRecipe, tensor: str) -> int | None:
    """INT8 codes the tensor's values use per channel (median over channels), or None without a recipe entry."""
    quant = recipe.tensors.get(tensor)
    if quant is None or quant.kind is not TensorKind.ACTIVATION:
        return None
    x = np.concatenate([np.asarray(v, np.float64).reshape(v.shape[0], v.shape[1] if v.ndim > 1 else 1, -1)
                        for v in values], axis=2)
    codes = np.round(x / quant.scale[0]) + quant.zero_point[0]
    lo, hi = (0, 255) if quant.dtype == "uint8" else (-128, 127)
    codes = np.clip(codes, lo, hi).astype(np.int64)
    per_channel = [len(np.unique(codes[:, c])) for c in range(codes.shape[1])]
    return int(np.median(per_channel))


def _dequantized_name(model: onnx.ModelProto, tensor: str) -> str:
    """What readers of ``tensor`` see in a QDQ graph: the DequantizeLinear after its QuantizeLinear, else itself."""
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    for q in users.get(tensor, []):
        if q.op_type == "QuantizeLinear":
            for dq in users.get(q.output[0], []):
                if dq.op_type == "DequantizeLinear":
                    return dq.output[0]
    return tensor


def _run(model: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]],
         names: list[str]) -> dict[str, list[np.ndarray]]:
    """Each of ``names`` on each feed (onnxruntime, basic optimizations: every tensor kept, Q/DQ as specified)."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                              for n in names if n not in have)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in feeds:
        for name, value in zip(names, session.run(names, {k: feed[k] for k in inputs})):
            out[name].append(value)
    return out


def _compare(reference: Sequence[np.ndarray], quantized: Sequence[np.ndarray]) -> tuple[float, float]:
    """SQNR (dB) and cosine of ``quantized`` against ``reference`` over all feeds."""
    return _compare_many([reference], [quantized])


def _compare_many(reference: Sequence[Sequence[np.ndarray]],
                  quantized: Sequence[Sequence[np.ndarray]]) -> tuple[float, float]:
    signal = noise = dot = power = 0.0
    for refs, quants in zip(reference, quantized):
        for x, y in zip(refs, quants):
            x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
            signal += float(x @ x)
            noise += float((x - y) @ (x - y))
            dot += float(x @ y)
            power += float(y @ y)
    sqnr = 10.0 * math.log10(max(signal, _EPS) / max(noise, _EPS))
    cosine = 1.0 if signal <= _EPS and power <= _EPS else dot / max(math.sqrt(signal * power), _EPS)
    return sqnr, cosine
