"""Backend profiles: where each INT8 backend wants Q/DQ pairs, and the integers it wants in them.

One calibration (ranges per tensor) serves every backend; a ``Profile`` turns ranges into
scales and zero points (``derive``) and says which tensors to quantize (``quantizable_tensors``,
worked out by :mod:`edgekit.calib.placement`). The profiles, and the sources they follow:

- ``trt``: TensorRT explicit quantization. Symmetric int8, zero point 0; per-channel weights;
  Q/DQ on the inputs of weighted ops and on the residual input of an Add (TensorRT fuses the
  conv-produced input into the conv's epilogue); a conv's output gets a Q only where the next
  op needs an integer input, never between a conv and its ReLU (TensorRT fuses them); Concat,
  MaxPool, Slice, Reshape... commute, so their inputs and outputs share one scale; dedicated
  Q/DQ pairs per consumer. TensorRT developer guide, "Explicit Quantization" and "Q/DQ Layer-
  Placement Recommendations" (https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/
  quantized-types-explicit-quantization.html); onnxruntime ``qdq_quantizer.py`` (DedicatedQDQPair).
- ``ort-cpu``: onnxruntime's CPU EP fuses ``DQ -> op -> Q`` node groups into QLinearConv,
  QLinearAdd... only when the op's *output* is quantized too, and the conv bias is int32, so
  every integer op gets an output Q (a ReLU/Clip in between is absorbed). The ISA decides the
  integer types (see :mod:`edgekit.calib.isa`): u8s8 with VNNI, u8s8 with 7-bit weights
  without it, s8s8 on ARM64; ``resolve_profile("ort-cpu")`` picks one and says why. (On x86,
  onnxruntime 1.32 left 6 of ShuffleNetV2's 56 convs float with int8 activations, those whose
  input feeds two convs, and 13 of ThunderNet stage 1's 63; with uint8 activations none.)
- ``openvino``: NNCF's default (preset PERFORMANCE, hardware config ``cpu.json``): symmetric
  activations, unsigned when the calibrated range is non-negative; per-channel 8-bit weights
  in [-127, 127], first layer in half range (NNCF's ``OverflowFix.FIRST_LAYER``); quantizers on
  the inputs of Conv/MatMul, Add/Mul/Sub/Div between activations, pooling and ReduceMean,
  linear Resize, placed on the producer side of MaxPool/Reshape/Slice/Concat (which commute,
  Concat with unified scales). nncf ``src/nncf/common/hardware/configs/cpu.json``,
  ``quantization/fake_quantize.py``, ``tests/onnx/data/reference_graphs/quantization/shufflenet_v2_x1_0.dot``.
- ``tflite``: the TFLite int8 spec: asymmetric int8 activations, symmetric per-axis int8 weights,
  int32 bias; pooling, Concat, Reshape, Resize keep their input's scale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.calib.isa import CpuIsa, detect_isa
from edgekit.calib.placement import plan_placement
from edgekit.calib.recipe import TensorKind, TensorQuant
from edgekit.errors import CalibrationDataError, EdgekitError, suggest

ALL_INPUTS = None  # in ``quantized_inputs``: every activation input of the op
_TINY = 1e-12  # below this a range is "all zeros": any scale is exact, use 1.0


class UnknownProfileError(EdgekitError, KeyError):
    """A backend profile name that is not registered."""

    def __str__(self) -> str:
        return str(self.args[0])


def _table(entries: Mapping[str, tuple[int, ...] | None]) -> Mapping[str, tuple[int, ...] | None]:
    return MappingProxyType(dict(entries))


@dataclass(frozen=True)
class Profile:
    """Numerics and Q/DQ placement of one INT8 backend.

    Args:
        name: registry name (``trt``, ``ort-cpu-u8s8``...).
        activation_symmetric: zero point 0 (scale from max |range|) or asymmetric.
        activation_dtype: ``int8``, ``uint8``, or ``by_range`` (uint8 where the calibrated
            range is non-negative, else int8: NNCF's signedness rule).
        quantized_inputs: op type (``Resize.nearest`` for a nearest-mode Resize) -> indices of
            the inputs that get Q/DQ when they are activations (``ALL_INPUTS`` for all).
        quantized_outputs: op types whose output is quantized too (onnxruntime's integer ops).
        commuting: op types Q/DQ passes through: data in and out share one scale.
        fused_activations: activations absorbed by the op before them (an output Q goes after).
        requantize_commuting: put Q/DQ on both sides of a commuting op (onnxruntime, TensorRT,
            TFLite run it on integers), not only on its producer side (NNCF).
        dedicated_qdq_pairs: one Q/DQ pair per consuming node instead of one per tensor.
        fuse_residual_add: leave float the Add input a single-use Conv/Gemm produces (TensorRT
            folds the Add into that conv) and quantize the other (residual) input.
        integer_needs_quantized_output: an op whose output must stay float (a head producing
            a graph output) gains nothing from quantized inputs and is left float entirely.
        int32_bias: bias as int32 + DequantizeLinear (scale = input scale x weight scale).
        weight_qmax: largest weight code (symmetric, narrow range: [-qmax, qmax]).
        reduced_weight_qmax: the same where the range is reduced.
        reduce_range: reduce every weight's range (onnxruntime u8s8 without VNNI).
        reduce_first_layer: reduce the range of the first weighted layers only (NNCF).
        reason: why this profile (the ISA choice, for reports).
    """

    name: str
    activation_symmetric: bool
    activation_dtype: str
    quantized_inputs: Mapping[str, tuple[int, ...] | None]
    commuting: frozenset[str]
    quantized_outputs: frozenset[str] = frozenset()
    fused_activations: frozenset[str] = frozenset()
    requantize_commuting: bool = True
    dedicated_qdq_pairs: bool = False
    fuse_residual_add: bool = False
    integer_needs_quantized_output: bool = False
    int32_bias: bool = False
    weight_qmax: float = 127.0
    reduced_weight_qmax: float = 64.0
    reduce_range: bool = False
    reduce_first_layer: bool = False
    reason: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.activation_dtype not in ("int8", "uint8", "by_range"):
            raise ValueError(f"profile '{self.name}': activation_dtype must be int8, uint8 or by_range")


# Shape and data-movement ops: max/slice/copy values without arithmetic, so the quantized grid
# survives them exactly.
_MOVEMENT = frozenset({"MaxPool", "GlobalMaxPool", "Slice", "Split", "Reshape", "Flatten", "Squeeze",
                       "Unsqueeze", "Transpose", "Pad", "DepthToSpace", "SpaceToDepth"})
_WEIGHTED = {"Conv": (0,), "ConvTranspose": (0,), "Gemm": (0,), "MatMul": (0, 1)}
_ELEMENTWISE = {op: ALL_INPUTS for op in ("Add", "Mul", "Sub", "Div", "Max", "Min")}

TRT = Profile(
    name="trt", activation_symmetric=True, activation_dtype="int8",
    quantized_inputs=_table({**_WEIGHTED, "Add": ALL_INPUTS, "AveragePool": (0,), "GlobalAveragePool": (0,)}),
    commuting=_MOVEMENT | {"Concat", "Resize.nearest"},
    dedicated_qdq_pairs=True, fuse_residual_add=True,
)

# onnxruntime's CPU QDQ fusions (QLinearConv, QLinearMatMul/QGemm, QLinearAdd/Mul, QLinearConcat,
# QLinearAveragePool/GlobalAveragePool, QLinearSigmoid/LeakyRelu; MaxPool/Resize/Slice/Reshape/
# Transpose run on the integers when both sides share a scale).
_ORT_INTEGER_OPS = {**_WEIGHTED, "Add": ALL_INPUTS, "Mul": ALL_INPUTS, "Concat": ALL_INPUTS, "AveragePool": (0,),
                    "GlobalAveragePool": (0,), "Sigmoid": (0,), "LeakyRelu": (0,)}
_ORT_CPU = Profile(
    name="ort-cpu-u8s8", activation_symmetric=False, activation_dtype="uint8",
    quantized_inputs=_table(_ORT_INTEGER_OPS), quantized_outputs=frozenset(_ORT_INTEGER_OPS),
    commuting=_MOVEMENT | {"Resize"}, fused_activations=frozenset({"Relu", "Clip"}),
    integer_needs_quantized_output=True, int32_bias=True,
)

OPENVINO = Profile(
    name="openvino", activation_symmetric=True, activation_dtype="by_range",
    quantized_inputs=_table({**_WEIGHTED, **_ELEMENTWISE, "AveragePool": (0,), "GlobalAveragePool": (0,),
                             "ReduceMean": (0,), "ReduceSum": (0,), "ReduceL2": (0,), "Resize": (0,), "Pow": (0,),
                             "MeanVarianceNormalization": (0,), "GroupNormalization": (0,)}),
    commuting=_MOVEMENT | {"Concat", "ReduceMax", "Tile", "Resize.nearest"},
    requantize_commuting=False, reduced_weight_qmax=63.5, reduce_first_layer=True,
)

_TFLITE_OPS = {**_WEIGHTED, "Add": ALL_INPUTS, "Mul": ALL_INPUTS, "Sub": ALL_INPUTS, "AveragePool": (0,),
               "GlobalAveragePool": (0,), "ReduceMean": (0,)}
TFLITE = Profile(
    name="tflite", activation_symmetric=False, activation_dtype="int8",
    quantized_inputs=_table(_TFLITE_OPS), quantized_outputs=frozenset(_TFLITE_OPS),
    commuting=_MOVEMENT | {"Concat", "Resize"}, fused_activations=frozenset({"Relu", "Clip"}),
    integer_needs_quantized_output=True, int32_bias=True,
)

PROFILES: Mapping[str, Profile] = MappingProxyType({p.name: p for p in (
    TRT,
    _ORT_CPU,
    replace(_ORT_CPU, name="ort-cpu-u8s8-reduce-range", reduce_range=True),
    replace(_ORT_CPU, name="ort-cpu-s8s8", activation_dtype="int8"),
    OPENVINO,
    TFLITE,
)})

# A name that resolves by the CPU: the first rule whose test holds picks the concrete profile.
IsaRule = tuple[Callable[[CpuIsa], bool], str, str]
ISA_RULES: Mapping[str, tuple[IsaRule, ...]] = MappingProxyType({
    "ort-cpu": (
        (lambda isa: isa.vnni, "ort-cpu-u8s8",
         "VNNI (vpdpbusd) accumulates u8 x s8 products in int32 without saturation: u8s8 with "
         "full-range weights is onnxruntime's fast INT8 form"),
        (lambda isa: isa.is_x86, "ort-cpu-u8s8-reduce-range",
         "no VNNI: onnxruntime's u8s8 kernels use vpmaddubsw, whose int16 sum of two u8 x s8 "
         "products saturates (2*255*127 > 32767); 7-bit weights in [-64, 64] keep it below"),
        (lambda isa: isa.is_arm64, "ort-cpu-s8s8",
         "ARM64: onnxruntime's kernels are s8s8 (sdot/smmla or widening multiplies), no int16 saturation"),
        (lambda isa: True, "ort-cpu-u8s8-reduce-range",
         "unknown CPU: the form that cannot saturate on any onnxruntime kernel"),
    ),
})


def profile_names() -> list[str]:
    """Every name ``resolve_profile`` accepts."""
    return sorted({*PROFILES, *ISA_RULES})


def resolve_profile(name: str, isa: CpuIsa | None = None) -> Profile:
    """The profile called ``name``; a CPU-dependent name (``ort-cpu``) resolves for ``isa``.

    Args:
        name: a concrete profile (``trt``, ``ort-cpu-u8s8``...) or ``ort-cpu``.
        isa: the CPU to resolve for; default: this machine's (``detect_isa()``).

    Raises:
        UnknownProfileError: ``name`` is neither; the message lists the names that exist.
    """
    if name in PROFILES:
        return PROFILES[name]
    if name in ISA_RULES:
        isa = detect_isa() if isa is None else isa
        test, chosen, why = next(rule for rule in ISA_RULES[name] if rule[0](isa))
        return replace(PROFILES[chosen], reason=f"{name} on {isa.describe()}: {chosen}: {why}")
    raise UnknownProfileError(
        f"quantization profile '{name}' is not registered. Available: {', '.join(profile_names())}."
        + suggest(name, profile_names())
    )


def derive(
    rmin: Sequence[float] | float,
    rmax: Sequence[float] | float,
    profile: Profile,
    kind: TensorKind,
    axis: int | None = None,
    *,
    reduce_range: bool | None = None,
) -> tuple[tuple[float, ...], tuple[int, ...], str]:
    """Scale(s), zero point(s) and integer dtype for a calibrated range under ``profile``.

    Every range is first widened to include 0 (so 0.0 is exact: zero padding, ReLU zeros).
    Weights: symmetric, ``scale = max|r| / qmax`` with qmax 127 (``[-127, 127]``) or the
    profile's reduced qmax. Activations: symmetric ``max|r| / 127`` (int8) or ``/ 255`` (uint8),
    or asymmetric ``(rmax - rmin) / 255`` with ``zp = round(qmin - rmin / scale)``.

    Args:
        rmin, rmax: one value (per-tensor) or one per channel.
        profile: the backend profile.
        kind: activation or weight.
        axis: channel axis of per-channel ranges (only carried through; no effect on values).
        reduce_range: weights only: override the profile's ``reduce_range``.
    """
    lo = np.minimum(np.atleast_1d(np.asarray(rmin, dtype=np.float64)), 0.0)
    hi = np.maximum(np.atleast_1d(np.asarray(rmax, dtype=np.float64)), 0.0)
    amax = np.maximum(np.abs(lo), np.abs(hi))
    if kind == TensorKind.WEIGHT:
        reduced = profile.reduce_range if reduce_range is None else reduce_range
        qmax = profile.reduced_weight_qmax if reduced else profile.weight_qmax
        scale, zero_point, dtype = amax / qmax, np.zeros_like(amax), "int8"
    else:
        dtype = profile.activation_dtype
        if dtype == "by_range":
            dtype = "uint8" if bool(np.all(lo >= 0)) else "int8"
        qmin, qmax = (0, 255) if dtype == "uint8" else (-128, 127)
        if profile.activation_symmetric:
            scale, zero_point = amax / (255.0 if dtype == "uint8" else 127.0), np.zeros_like(amax)
        else:
            scale = (hi - lo) / (qmax - qmin)
            safe = np.where(scale > _TINY, scale, 1.0)
            zero_point = np.clip(np.round(qmin - lo / safe), qmin, qmax)
    scale = np.where(scale > _TINY, scale, 1.0).astype(np.float32)  # ONNX stores float32 scales
    return tuple(float(s) for s in scale), tuple(int(z) for z in zero_point), dtype


def quantizable_tensors(model: onnx.ModelProto, profile: Profile) -> list[tuple[str, TensorKind]]:
    """The tensors ``profile`` quantizes in ``model``: activations (need calibrated ranges) then weights."""
    placement = plan_placement(model, profile)
    return ([(name, TensorKind.ACTIVATION) for name in placement.activations]
            + [(name, TensorKind.WEIGHT) for name in placement.weights])


def scale_groups(model: onnx.ModelProto, profile: Profile) -> list[tuple[str, ...]]:
    """Activation tensors that must share one scale (Concat inputs and output, commuting ops)."""
    return [tuple(sorted(group)) for group in plan_placement(model, profile).groups]


def tensor_quants(
    model: onnx.ModelProto,
    ranges: Mapping[str, tuple[float, float]],
    profile: Profile,
    *,
    keep_float: Iterable[str] = (),
) -> dict[str, TensorQuant]:
    """TensorQuants for every tensor ``profile`` quantizes: what a QuantRecipe's ``tensors`` hold.

    Activation ranges come from calibration; members of a shared-scale group get the union of
    their ranges; weight ranges are read per output channel from the initializers.

    Args:
        model: the optimized fp32 model the ranges were collected on.
        ranges: activation tensor name -> (rmin, rmax) over the calibration data.
        profile: the backend profile to derive for.
        keep_float: node names mixed precision keeps float (the recipe's ``layer_precision``).

    Raises:
        CalibrationDataError: a quantized activation has no range (names the first few).
    """
    placement = plan_placement(model, profile, keep_float=frozenset(keep_float))
    missing = [name for name in placement.activations if name not in ranges]
    if missing:
        raise CalibrationDataError(
            f"no calibrated range for {len(missing)} tensor(s) profile '{profile.name}' quantizes "
            f"(e.g. {', '.join(missing[:3])}); collect statistics for quantizable_tensors(model, profile)."
        )
    merged = {name: (float(ranges[name][0]), float(ranges[name][1])) for name in placement.activations}
    for group in placement.groups:
        lo, hi = min(merged[n][0] for n in group), max(merged[n][1] for n in group)
        merged.update({n: (lo, hi) for n in group})
    quants = {}
    for name, (lo, hi) in merged.items():
        scale, zp, dtype = derive(lo, hi, profile, TensorKind.ACTIVATION)
        quants[name] = TensorQuant(name, TensorKind.ACTIVATION, (lo,), (hi,), scale, zp, None, dtype)
    initializers = {t.name: t for t in model.graph.initializer}
    for name, axis in placement.weights.items():
        lo_c, hi_c, axis = _channel_ranges(numpy_helper.to_array(initializers[name]), axis)
        reduced = profile.reduce_range or name in placement.reduced_weights
        scale, zp, dtype = derive(lo_c, hi_c, profile, TensorKind.WEIGHT, axis, reduce_range=reduced)
        quants[name] = TensorQuant(name, TensorKind.WEIGHT, lo_c, hi_c, scale, zp, axis, dtype)
    return quants


def _channel_ranges(weight: np.ndarray, axis: int | None) -> tuple[tuple[float, ...], tuple[float, ...], int | None]:
    """Per-channel (min, max) along ``axis``; per-tensor where there is one channel or no axis."""
    if axis is None or weight.ndim == 0 or weight.shape[axis] == 1:
        return (float(weight.min()),), (float(weight.max()),), None
    moved = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)
    return tuple(map(float, moved.min(axis=1))), tuple(map(float, moved.max(axis=1))), axis % weight.ndim
