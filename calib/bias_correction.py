"""``correct_bias``: empirical bias correction of weight-quantization error (Nagel et al., ICCV 2019).

"Data-Free Quantization Through Weight Equalization and Bias Correction", section 4.2. With
quantized weights ``W_q = W + eps`` a layer computes ``W_q x = W x + eps x``: its output is
shifted by ``eps x``, whose mean over the data is a per-output-channel constant the bias can
absorb::

    b' = b - E[eps x]

For a Gemm that is ``alpha * E[x] @ eps``. For a conv it is the mean over samples *and output
positions* of ``conv(eps, x)``; by linearity that is ``sum_{c,k} eps[o, c, k] * M[c, k]``, where
``M[c, k]`` averages the zero-padded batch-mean input ``E[x]`` (a ``C x H x W`` map) over the
positions kernel tap ``k`` reads. Near a padded border a tap reads zeros, so this is exact
where the paper's ``eps @ E[x_c]`` is not — and on small maps (3x3 at the end of a 96x96
MobileNetV2) the border is most of the map.

``E[x]`` comes from one streaming pass of the fp32 model in onnxruntime, the layer inputs added
as graph outputs; memory holds one mean map per layer input whatever the number of samples.
Run it after calibration, on the model the recipe was computed for (after
``equalize_cross_layer`` when that runs): only biases change, and weight names are kept, so the
recipe still applies to the result.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import helper

from edgekit.calib.recipe import Precision, QuantRecipe, TensorKind, TensorQuant
from edgekit.errors import CalibrationDataError, GraphPassError, MissingDependencyError
from edgekit.graph.graph_view import GraphView, NameSource, add_initializer, attr, prune

_INT_RANGE = {"int8": (-128, 127), "uint8": (0, 255)}
# Symmetric int8 weights use [-127, 127] in every profile (profiles.derive; TensorRT requires it).
_WEIGHT_INT8_MIN = -127


@dataclass(frozen=True)
class LayerCorrection:
    """The bias change of one layer in the report.

    Args:
        node: node name (or first output name) of the Conv/Gemm.
        max_abs_shift: largest ``|b' - b|`` over output channels.
        mean_abs_shift: mean ``|b' - b|`` over output channels.
        bias_created: True where the layer had no bias before.
    """

    node: str
    max_abs_shift: float
    mean_abs_shift: float
    bias_created: bool = False


@dataclass(frozen=True)
class BiasCorrectionReport:
    """What bias correction did to a model.

    Args:
        layers: one entry per corrected layer, in graph order.
    """

    layers: tuple[LayerCorrection, ...]

    @property
    def description(self) -> str:
        """The change in words, e.g. ``corrected 52 biases (3 created), largest shift 0.041``."""
        created = sum(layer.bias_created for layer in self.layers)
        text = f"corrected {len(self.layers)} biases"
        if created:
            text += f" ({created} created)"
        if self.layers:
            text += f", largest shift {max(layer.max_abs_shift for layer in self.layers):.3g}"
        return text

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return {**asdict(self), "description": self.description}


def correct_bias(model: onnx.ModelProto, recipe: QuantRecipe,
                 feeds: Iterable[Mapping[str, np.ndarray]]) -> onnx.ModelProto:
    """Subtract each quantized layer's mean weight-quantization error from its bias; return a new model.

    A layer is corrected when it is a Conv, or a Gemm without ``transA``, whose weight (input
    1) has an INT8 ``weight`` entry in ``recipe`` and which ``recipe.layer_precision`` does not
    keep in float. Layers without a bias get one.

    Args:
        model: the fp32 ONNX the recipe was computed on; it is not changed.
        recipe: gives the weights' scales and zero points.
        feeds: calibration inputs, ``{input name: array}`` per step (streamed once).

    Raises:
        CalibrationDataError: ``feeds`` is empty, misses a graph input, or changes a layer
            input's shape between steps.
        GraphPassError: a recipe entry does not fit its weight (channel count, axis).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    view = GraphView(out, shapes={})
    layers = [node for node in out.graph.node if _quantized_layer(view, node, recipe)]
    if not layers:
        return out
    means = input_means(model, sorted({node.input[0] for node in layers}), feeds)
    names = NameSource(out)
    for node in layers:
        w = view.const(node.input[1])
        eps = fake_quantize(w, recipe.tensors[node.input[1]]).astype(np.float64) - w.astype(np.float64)
        shift = _SHIFTS[node.op_type](node, eps, means[node.input[0]])
        _set_bias(view, out, names, node, shift)
    return prune(out)


def bias_correction_report(before: onnx.ModelProto, after: onnx.ModelProto) -> BiasCorrectionReport:
    """What ``correct_bias`` changed, layer by layer (nodes matched by their output names).

    Args:
        before: the model given to ``correct_bias``.
        after: what it returned.
    """
    view_before, view_after = GraphView(before, shapes={}), GraphView(after, shapes={})
    layers = []
    for node in after.graph.node:
        old = view_before.producer.get(node.output[0])
        if node.op_type not in _SHIFTS or old is None:
            continue
        new_bias, old_bias = _bias(view_after, node), _bias(view_before, old)
        if new_bias is None or (old_bias is not None and np.array_equal(new_bias, old_bias)):
            continue
        delta = np.abs(new_bias.astype(np.float64) - (0.0 if old_bias is None else old_bias))
        layers.append(LayerCorrection(node.name or node.output[0], float(delta.max()), float(delta.mean()),
                                      old_bias is None))
    return BiasCorrectionReport(tuple(layers))


def fake_quantize(w: np.ndarray, quant: TensorQuant) -> np.ndarray:
    """``w`` quantized and dequantized with ``quant``'s scale and zero point (round half to even,
    as ONNX QuantizeLinear), in ``w``'s dtype. Int8 weights are clipped to ``[-127, 127]``.

    Raises:
        GraphPassError: the entry's channel count does not match ``w`` on its axis.
    """
    scale = np.asarray(quant.scale, np.float64)
    zero_point = np.asarray(quant.zero_point, np.float64)
    if quant.axis is not None:
        if not -w.ndim <= quant.axis < w.ndim or w.shape[quant.axis] != scale.size:
            raise GraphPassError(
                f"recipe entry '{quant.name}' has {scale.size} scales on axis {quant.axis}, but the "
                f"weight has shape {w.shape}; recalibrate on this model."
            )
        shape = [1] * w.ndim
        shape[quant.axis] = scale.size
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    qmin, qmax = _INT_RANGE[quant.dtype]
    if quant.kind is TensorKind.WEIGHT and quant.dtype == "int8":
        qmin = _WEIGHT_INT8_MIN
    q = np.clip(np.round(w.astype(np.float64) / scale) + zero_point, qmin, qmax)
    return ((q - zero_point) * scale).astype(w.dtype)


def input_means(model: onnx.ModelProto, tensors: list[str],
                feeds: Iterable[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Mean over samples (axis 0) of each tensor in ``tensors``, one streaming pass of ``model``.

    Raises:
        CalibrationDataError: see ``correct_bias``.
        MissingDependencyError: onnxruntime is not installed.
    """
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise MissingDependencyError(
            "bias correction runs the fp32 model in onnxruntime; install it with: pip install 'edgekit[export]'"
        ) from exc

    graph_inputs = [v.name for v in model.graph.input if v.name not in {t.name for t in model.graph.initializer}]
    extra = [name for name in tensors if name not in graph_inputs]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {v.name for v in probe.graph.output}
    # The inputs of a Conv/Gemm are float32 here; shapes are left for onnxruntime to infer.
    probe.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                              for n in extra if n not in known)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    sums: dict[str, np.ndarray] = {}
    count = 0
    for step, feed in enumerate(feeds):
        missing = [n for n in graph_inputs if n not in feed]
        if missing:
            raise CalibrationDataError(
                f"calibration step {step} has no value for graph input(s) {missing}; it has "
                f"{sorted(feed)}. Feed one array per model input, named as in the model."
            )
        values = dict(zip(extra, session.run(extra, {n: feed[n] for n in graph_inputs}) if extra else []))
        values.update({n: np.asarray(feed[n]) for n in tensors if n in graph_inputs})
        for name in tensors:
            part = values[name].astype(np.float64).sum(axis=0)
            if name in sums and sums[name].shape != part.shape:
                raise CalibrationDataError(
                    f"tensor '{name}' has per-sample shape {part.shape} at calibration step {step} but "
                    f"{sums[name].shape} before; bias correction needs one input size for all samples."
                )
            sums[name] = sums[name] + part if name in sums else part
        count += int(np.asarray(feed[graph_inputs[0]]).shape[0]) if graph_inputs else 1
    if count == 0:
        raise CalibrationDataError("bias correction got no calibration samples; pass a non-empty iterable of feeds.")
    return {name: total / count for name, total in sums.items()}


# -- which layers --------------------------------------------------------------------------


def _quantized_layer(view: GraphView, node: onnx.NodeProto, recipe: QuantRecipe) -> bool:
    if node.op_type not in _SHIFTS or len(node.input) < 2 or view.const(node.input[1]) is None:
        return False
    if node.op_type == "Gemm" and attr(node, "transA", 0):
        return False
    if node.op_type == "Gemm" and float(attr(node, "beta", 1.0)) == 0.0:
        return False  # no bias term to put the correction in
    if len(node.input) > 2 and node.input[2] and view.const(node.input[2]) is None:
        return False  # a bias computed at run time cannot absorb a constant
    quant = recipe.tensors.get(node.input[1])
    if quant is None or quant.kind is not TensorKind.WEIGHT or quant.precision is not Precision.INT8:
        return False
    return recipe.layer_precision.get(node.name, Precision.INT8) is Precision.INT8


# -- the expected output shift -------------------------------------------------------------


def _conv_shift(node: onnx.NodeProto, eps: np.ndarray, mean_map: np.ndarray) -> np.ndarray:
    """Mean over output positions of ``conv(eps, E[x])`` per output channel."""
    kernel = eps.shape[2:]
    spatial = mean_map.shape[1:]
    nd = len(kernel)
    strides = list(attr(node, "strides", None) or [1] * nd)
    dilations = list(attr(node, "dilations", None) or [1] * nd)
    pads = _pads(node, spatial, kernel, strides, dilations)
    padded = np.pad(mean_map, [(0, 0)] + [(pads[d], pads[d + nd]) for d in range(nd)])
    out_size = [(padded.shape[d + 1] - dilations[d] * (kernel[d] - 1) - 1) // strides[d] + 1 for d in range(nd)]
    taps = np.empty((mean_map.shape[0], *kernel))
    for tap in itertools.product(*(range(k) for k in kernel)):
        window = tuple(slice(tap[d] * dilations[d], tap[d] * dilations[d] + strides[d] * (out_size[d] - 1) + 1,
                             strides[d]) for d in range(nd))
        taps[(slice(None), *tap)] = padded[(slice(None), *window)].mean(axis=tuple(range(1, nd + 1)))
    group = int(attr(node, "group", 1))
    cout, cin_g = eps.shape[:2]
    taps = taps.reshape(group, 1, cin_g, -1)  # input channel g * cin_g + c
    eps = eps.reshape(group, cout // group, cin_g, -1)
    return (eps * taps).sum(axis=(2, 3)).reshape(cout)


def _gemm_shift(node: onnx.NodeProto, eps: np.ndarray, mean_row: np.ndarray) -> np.ndarray:
    """``alpha * E[A] @ eps'`` (eps' transposed where ``transB``), divided by ``beta`` for C."""
    eps_b = eps.T if attr(node, "transB", 0) else eps
    return float(attr(node, "alpha", 1.0)) * (mean_row @ eps_b) / float(attr(node, "beta", 1.0))


_SHIFTS = {"Conv": _conv_shift, "Gemm": _gemm_shift}


def _pads(node: onnx.NodeProto, spatial: tuple[int, ...], kernel: tuple[int, ...], strides: list[int],
          dilations: list[int]) -> list[int]:
    """Begin and end pads per spatial axis (ONNX ``pads`` layout), ``auto_pad`` resolved."""
    nd = len(kernel)
    auto_pad = attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        total = [max((-(-spatial[d] // strides[d]) - 1) * strides[d] + dilations[d] * (kernel[d] - 1) + 1
                     - spatial[d], 0) for d in range(nd)]
        small = [t // 2 for t in total]
        begin = small if auto_pad == "SAME_UPPER" else [t - s for t, s in zip(total, small)]
        return begin + [t - b for t, b in zip(total, begin)]
    if auto_pad == "VALID":
        return [0] * (2 * nd)
    return list(attr(node, "pads", None) or [0] * (2 * nd))


# -- writing the bias ----------------------------------------------------------------------


def _bias(view: GraphView, node: onnx.NodeProto) -> np.ndarray | None:
    return view.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None


def _set_bias(view: GraphView, out: onnx.ModelProto, names: NameSource, node: onnx.NodeProto,
              shift: np.ndarray) -> None:
    """Give ``node`` (of ``out``) the bias ``b - shift``, as a new initializer."""
    old = _bias(view, node)
    dtype = view.const(node.input[1]).dtype
    base = np.zeros(shift.shape) if old is None else old.astype(np.float64)
    new = (base - shift).astype(dtype)
    # A new name: bias initializers are often shared (equal constants are deduplicated), and
    # the other readers must keep the old values. prune() drops the old one if unused.
    name = add_initializer(out, names(f"{node.input[1]}_bias_corrected"), new)
    while len(node.input) < 3:
        node.input.append("")
    node.input[2] = name
