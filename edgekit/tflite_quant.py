"""Full-integer INT8 TFLite with ai-edge-quantizer: the QuantRecipe's ranges, else the calibration samples.

Activation ranges come, per TFLite tensor, from (in this order):

1. ``recipe``: the QuantRecipe calibrated on the ONNX graph (``tflite`` profile). Each TFLite
   tensor is traced back to its ONNX node through the tensor's name (litert-torch names it
   after :class:`edgekit.onnx_to_torch.Step` ``<index>``; a fused conv + ReLU names both) and
   kept only where one probe input gives the same values in both graphs.
2. ``calibration``: what ai-edge-quantizer measures on the same calibration samples, with a
   *running* min/max. Its default update is a moving average of per-sample ranges, which
   clipped MobileNetV2's logits and cost 7 top-1 points here (DESIGN.md).
3. ``derived``: a PAD / RESHAPE-like output takes its input's range (PAD adds its zero); a
   LOGISTIC / TANH output has the fixed range of the TFLite int8 spec.

The recipe's ranges alone are ``method = "recipe"``; with measured ranges filling gaps,
``"recipe+calibration"``; without a recipe, ``"calibration"``. Weights are int8 symmetric per
output channel and biases int32, which is the TFLite int8 spec and the ``tflite`` profile's rule.

The graph's inputs and outputs stay float32 (ai-edge-quantizer's INPUT/OUTPUT ops are not
quantized: a QUANTIZE op follows each input, a DEQUANTIZE precedes each output), and the ops
that write graph outputs (a classifier's FC, a detector's heads) run in float, so logits are
never clipped to an int8 grid. ``Int8Tflite.io`` lists any boundary tensor that is int8 anyway.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import CalibrationDataError
from edgekit.tflite_convert import NHWC, TfliteGraph, quiet_converters

if TYPE_CHECKING:
    from edgekit.calib.recipe import QuantRecipe
    from edgekit.onnx_to_torch import OnnxModule

METHOD_RECIPE, METHOD_MIXED, METHOD_CALIBRATION = "recipe", "recipe+calibration", "calibration"
_STEP = re.compile(r"\.Step_(\d+);")
# TFLite ops whose output range is their input's (PAD adds the padding value 0).
_RANGE_FOLLOWS_INPUT: Mapping[str, bool] = {"PAD": True, "PADV2": False, "RESHAPE": False, "TRANSPOSE": False,
                                            "SQUEEZE": False, "EXPAND_DIMS": False, "SLICE": False,
                                            "STRIDED_SLICE": False}
# TFLite ops whose int8 output range is fixed by the spec, whatever the input.
_FIXED_RANGE: Mapping[str, tuple[float, float]] = {"LOGISTIC": (0.0, 1.0), "TANH": (-1.0, 1.0)}
QSV = dict[str, np.ndarray]


@dataclass(frozen=True)
class QuantizedTensor:
    """An int8 tensor at the graph boundary and how to convert to and from float.

    ``real = (q - zero_point) * scale``.
    """

    name: str
    dtype: str
    scale: tuple[float, ...]
    zero_point: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"name": self.name, "dtype": self.dtype, "scale": list(self.scale), "zero_point": list(self.zero_point)}


@dataclass(frozen=True)
class Int8Tflite:
    """A full-integer TFLite model and how its ranges were chosen.

    Args:
        content: the ``.tflite`` flatbuffer.
        method: ``recipe``, ``recipe+calibration`` or ``calibration`` (see the module doc).
        from_recipe, calibrated, derived: activation tensors whose range came from each source.
        samples: calibration samples ai-edge-quantizer ran (0 when the recipe sufficed).
        float_ops: TFLite op types kept float (graph-output writers, mixed-precision layers).
        io: boundary tensors stored int8 (empty: float inputs and outputs).
    """

    content: bytes
    method: str
    from_recipe: int
    calibrated: int
    derived: int
    samples: int
    float_ops: tuple[str, ...]
    io: tuple[QuantizedTensor, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (no model bytes)."""
        return {"method": self.method, "observer_update": "running min/max" if self.calibrated else None,
                "tensors": {"recipe": self.from_recipe, "calibrated": self.calibrated, "derived": self.derived},
                "samples": self.samples, "float_ops": list(self.float_ops), "int8_io": [t.to_dict() for t in self.io]}


def steps_in_name(name: str) -> list[int]:
    """Indices of the :class:`~edgekit.onnx_to_torch.Step` modules a TFLite tensor name mentions."""
    return [int(m) for m in _STEP.findall(name)]


def running_min_max(old: QSV, new: QSV) -> QSV:
    """ai-edge-quantizer QSV update: the running minimum and maximum over all samples."""
    if not old:
        return new
    return {"min": np.minimum(old["min"], new["min"]), "max": np.maximum(old["max"], new["max"])}


def quantize_int8(graph: TfliteGraph, module: OnnxModule, *, recipe: QuantRecipe | None,
                  feeds: Iterable[Mapping[str, np.ndarray]] | None) -> Int8Tflite:
    """Quantize a float TFLite graph (from :func:`~edgekit.tflite_convert.onnx_to_tflite`) to INT8.

    Args:
        graph: the float conversion of the ONNX graph ``module`` was built from.
        module: :func:`~edgekit.onnx_to_torch.onnx_to_torch` of that ONNX graph.
        recipe: its QuantRecipe (``tflite`` profile), or None.
        feeds: the calibration samples as ONNX feed dicts (NCHW float32), or None.

    Raises:
        CalibrationDataError: neither a recipe nor samples, or tensors neither could range.
    """
    if recipe is None and feeds is None:
        raise CalibrationDataError("INT8 TFLite needs a QuantRecipe or calibration samples; pass --calib-data DIR.")
    from ai_edge_quantizer import quantizer

    model = _TfliteIndex(graph.content)
    manager = _recipe_manager(model, _float_steps(module, recipe))
    fed = _TfliteFeeds(graph, feeds) if feeds is not None else None
    probe = fed.first if fed is not None and fed.first is not None else _random_feed(graph)
    # One probe run names the tensors the recipe quantizes; its values are not used as ranges.
    needed = _calibrate(graph.content, manager, [probe])
    mapped = _recipe_qsvs(graph, module, recipe, probe, needed) if recipe is not None else {}
    measured: dict[str, QSV] = {}
    qsvs, derived = _fill(model, needed, mapped, measured)
    if set(needed) - set(qsvs) and fed is not None:
        measured = _calibrate(graph.content, manager, fed)
        qsvs, derived = _fill(model, needed, mapped, measured)
    missing = sorted(set(needed) - set(qsvs))
    if missing:
        raise CalibrationDataError(f"{len(missing)} TFLite tensor(s) have no range in the recipe and no calibration "
                                   f"samples were given (first: {missing[0]}); pass --calib-data DIR.")
    quant = quantizer.Quantizer(graph.content)
    quant.load_quantization_recipe(manager.get_quantization_recipe())
    with quiet_converters():
        content = bytes(quant.quantize(qsvs, enable_progress_report=False).quantized_model)
    n_recipe = sum(1 for k in qsvs if k in mapped)
    n_measured = len(qsvs) - n_recipe - len(derived)
    method = METHOD_CALIBRATION if not n_recipe else METHOD_MIXED if n_measured else METHOD_RECIPE
    return Int8Tflite(content=content, method=method, from_recipe=n_recipe, calibrated=n_measured,
                      derived=len(derived), samples=fed.count if fed is not None and measured else 0,
                      float_ops=model.float_op_types(manager), io=boundary_quantization(content, graph))


class _TfliteIndex:
    """Ops and tensor names of a TFLite model, as the interpreter lists them."""

    def __init__(self, content: bytes) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        interpreter = Interpreter(model_content=content,
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        self.names = {int(t["index"]): t["name"] for t in interpreter.get_tensor_details()}
        self.ops = interpreter._get_ops_details()  # the only op listing the interpreter offers
        self.outputs = {int(d["index"]) for d in interpreter.get_output_details()}

    def scope(self, op: Mapping[str, Any]) -> str:
        """ai-edge-quantizer's scope of an op: its output tensor names, each followed by ';'."""
        return "".join(self.names[int(i)] + ";" for i in op["outputs"] if int(i) >= 0)

    def float_op_types(self, manager: Any) -> tuple[str, ...]:
        """Types of the ops the recipe manager leaves float (sorted, with repeats)."""
        from ai_edge_quantizer.algorithm_manager import AlgorithmName

        kept = [op["op_name"] for op in self.ops
                if manager.get_quantization_configs(op["op_name"], self.scope(op))[0] == AlgorithmName.NO_QUANTIZE]
        return tuple(sorted(kept))


def _float_steps(module: OnnxModule, recipe: QuantRecipe | None) -> set[int]:
    """Steps of layers the recipe keeps in FP16/FP32 (mixed precision)."""
    from edgekit.calib.recipe import Precision

    if recipe is None or not recipe.layer_precision:
        return set()
    return {i for i, name in enumerate(module.node_names)
            if recipe.layer_precision.get(name, Precision.INT8) is not Precision.INT8}


def _recipe_manager(model: _TfliteIndex, float_steps: set[int]) -> Any:
    """ai-edge-quantizer's static int8 recipe, float at the graph boundary and in the output writers."""
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.qtyping import TFLOperationName
    from ai_edge_quantizer.recipe_manager import RecipeManager

    manager = RecipeManager()
    manager.add_static_config(".*", TFLOperationName.ALL_SUPPORTED, 8, 8)
    for io_op in (TFLOperationName.INPUT, TFLOperationName.OUTPUT):
        manager.add_quantization_config(".*", io_op, algorithm_key=AlgorithmName.NO_QUANTIZE)
    for op in model.ops:
        writes_output = any(int(i) in model.outputs for i in op["outputs"])
        mixed = any(s in float_steps for i in op["outputs"] for s in steps_in_name(model.names[int(i)]))
        if writes_output or mixed:
            # A later scope wins over ".*" (RecipeManager.get_quantization_configs).
            manager.add_quantization_config(f"^{re.escape(model.scope(op))}$", TFLOperationName.ALL_SUPPORTED,
                                            algorithm_key=AlgorithmName.NO_QUANTIZE)
    return manager


class _TfliteFeeds:
    """ONNX feed dicts as the float TFLite signature's inputs (``args_<i>``, NHWC where stored so)."""

    def __init__(self, graph: TfliteGraph, feeds: Iterable[Mapping[str, np.ndarray]]) -> None:
        self.graph, self.feeds = graph, feeds
        self.count = 0
        # One look ahead: the probe of the recipe mapping. A one-shot iterator keeps its rest.
        self._rest = iter(feeds)
        head = next(self._rest, None)
        self._head = head
        self.first = self._convert(head) if head is not None else None

    def _convert(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for i, t in enumerate(self.graph.inputs):
            if t.name not in feed:
                raise CalibrationDataError(f"calibration feed lacks input '{t.name}' (has {', '.join(feed)}).")
            x = np.asarray(feed[t.name], np.float32)
            out[f"args_{i}"] = np.ascontiguousarray(x.transpose(0, 2, 3, 1) if t.layout == NHWC else x)
        return out

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.count = 0
        if self._rest is self.feeds:  # a one-shot iterator: the look-ahead, then what is left
            source: Iterable[Mapping[str, np.ndarray]] = [self._head] if self._head is not None else []
            source = [*source, *self._rest]
        else:
            source = self.feeds
        for feed in source:
            self.count += 1
            yield self._convert(feed)


def _random_feed(graph: TfliteGraph) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for i, t in enumerate(graph.inputs):
        shape = [d if isinstance(d, int) else 1 for d in t.shape]
        x = rng.standard_normal(shape, dtype=np.float32)
        out[f"args_{i}"] = np.ascontiguousarray(x.transpose(0, 2, 3, 1) if t.layout == NHWC else x)
    return out


def _calibrate(content: bytes, manager: Any, feeds: Iterable[dict[str, np.ndarray]]) -> dict[str, QSV]:
    """Running min/max of every tensor the recipe quantizes, over ``feeds`` (ai-edge-quantizer)."""
    from ai_edge_quantizer import calibrator

    cal = calibrator.Calibrator(content, num_threads=1, qsv_update_func=running_min_max)
    with quiet_converters():
        # One call per sample: Calibrator.calibrate lists its whole dataset first (to size a
        # progress bar), which would hold every sample in memory and exhaust a one-shot iterator.
        for feed in feeds:
            cal.calibrate({"serving_default": [feed]}, manager)
    qsvs = cal.get_model_qsvs()
    if not qsvs:
        raise CalibrationDataError("no calibration sample reached the TFLite graph (the calibration set is empty).")
    return qsvs


def _recipe_qsvs(graph: TfliteGraph, module: OnnxModule, recipe: QuantRecipe, probe: dict[str, np.ndarray],
                 needed: Mapping[str, QSV]) -> dict[str, QSV]:
    """TFLite tensor -> QSV from the recipe, for tensors whose ONNX twin is found and checked."""
    import torch
    from ai_edge_litert.interpreter import Interpreter

    from edgekit.calib.recipe import TensorKind

    interpreter = Interpreter(model_content=graph.content, experimental_preserve_all_tensors=True)
    interpreter.get_signature_runner()(**probe)
    tfl = {t["name"]: int(t["index"]) for t in interpreter.get_tensor_details()}
    nchw = [probe[f"args_{i}"].transpose(0, 3, 1, 2) if t.layout == NHWC else probe[f"args_{i}"]
            for i, t in enumerate(graph.inputs)]
    with torch.no_grad():
        env = module.run_all(*(torch.from_numpy(np.ascontiguousarray(x)) for x in nchw))
    steps = module.step_list()
    out: dict[str, QSV] = {}
    # The signature's inputs are the ONNX graph inputs, in order.
    boundary = {d["name"]: graph.inputs[i].name for i, d in enumerate(interpreter.get_input_details())}
    for name in needed:
        if name not in tfl:
            continue
        value = interpreter.get_tensor(tfl[name])
        if name in boundary and boundary[name] in recipe.tensors:
            out[name] = _qsv(recipe.tensors[boundary[name]], needed[name])
            continue
        for step in sorted(set(steps_in_name(name)), reverse=True):  # the last op of a fused group writes it
            match = [o for o in steps[step].outputs
                     if o in recipe.tensors and recipe.tensors[o].kind is TensorKind.ACTIVATION
                     and _same_values(value, env[o].numpy())]
            if match:
                out[name] = _qsv(recipe.tensors[match[0]], needed[name])
                break
    return out


def _qsv(quant: Any, like: QSV) -> QSV:
    """A recipe range as a per-tensor QSV shaped like the measured one."""
    shape = np.shape(like["min"])
    return {"min": np.full(shape, min(quant.rmin), np.float32), "max": np.full(shape, max(quant.rmax), np.float32)}


def _same_values(tfl: np.ndarray, ref: np.ndarray) -> bool:
    """True when a TFLite tensor holds the ONNX tensor's values, as stored or channels-last."""
    scale = float(np.abs(ref).max()) or 1.0
    # Try both orders: a 4-D shape like [1, 24, 24, 24] reads the same either way.
    views = [tfl] + ([tfl.transpose(0, 3, 1, 2)] if tfl.ndim == 4 else [])
    return any(v.shape == ref.shape and np.allclose(v, ref, rtol=1e-3, atol=1e-4 * scale) for v in views)


def _fill(model: _TfliteIndex, needed: Mapping[str, QSV], mapped: Mapping[str, QSV],
          measured: Mapping[str, QSV]) -> tuple[dict[str, QSV], set[str]]:
    """Per tensor, in graph order: the recipe's range, else its input's (PAD-like ops), else the measured one.

    A PAD-like op takes its input's range even where a measured one exists, so its output
    shares the input's scale and needs no requantization.
    """
    qsvs: dict[str, QSV] = {}
    derived: set[str] = set()
    produced = {model.names[int(o)]: op for op in model.ops for o in op["outputs"] if int(o) >= 0}
    for name in [n for n in needed if n not in produced]:  # graph inputs
        if name in mapped or name in measured:
            qsvs[name] = mapped[name] if name in mapped else measured[name]
    for op in model.ops:
        kind = op["op_name"]
        source = model.names.get(int(op["inputs"][0]), "") if len(op["inputs"]) else ""
        for index in op["outputs"]:
            name = model.names.get(int(index), "")
            if name not in needed:
                continue
            if name in mapped:
                qsvs[name] = mapped[name]
            elif kind in _FIXED_RANGE:
                shape = np.shape(needed[name]["min"])
                lo_hi = _FIXED_RANGE[kind]
                qsvs[name] = {"min": np.full(shape, lo_hi[0], np.float32), "max": np.full(shape, lo_hi[1], np.float32)}
                derived.add(name)
            elif kind in _RANGE_FOLLOWS_INPUT and source in qsvs:
                lo, hi = qsvs[source]["min"], qsvs[source]["max"]
                if _RANGE_FOLLOWS_INPUT[kind]:
                    lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
                qsvs[name] = {"min": lo, "max": hi}
                derived.add(name)
            elif name in measured:
                qsvs[name] = measured[name]
    return qsvs, derived


def boundary_quantization(content: bytes, graph: TfliteGraph) -> tuple[QuantizedTensor, ...]:
    """Inputs and outputs of ``content`` that are stored as integers, with their scale and zero point."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    out = []
    pairs: Sequence[tuple[Any, Any]] = [*zip(graph.inputs, interpreter.get_input_details()),
                                        *zip(graph.outputs, interpreter.get_output_details())]
    for layout, detail in pairs:
        dtype = np.dtype(detail["dtype"])
        if np.issubdtype(dtype, np.integer):
            q = detail["quantization_parameters"]
            out.append(QuantizedTensor(layout.name, dtype.name, tuple(float(s) for s in q["scales"]),
                                       tuple(int(z) for z in q["zero_points"])))
    return tuple(out)


