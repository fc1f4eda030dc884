"""Backend profiles: the registry, the ISA-dependent ``ort-cpu`` choice and ``derive`` numerics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto
from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType
from qdq_cases import SMALL_SHAPE, SmallCNN, export_optimized, settle_batchnorm

from edgekit.calib.isa import CpuIsa
from edgekit.calib.profiles import (
    PROFILES,
    UnknownProfileError,
    derive,
    profile_names,
    quantizable_tensors,
    resolve_profile,
    scale_groups,
    tensor_quants,
)
from edgekit.calib.recipe import TensorKind
from edgekit.errors import CalibrationDataError

ACT, WEIGHT = TensorKind.ACTIVATION, TensorKind.WEIGHT


@pytest.fixture(scope="module")
def small_model():
    return export_optimized(settle_batchnorm(SmallCNN(), SMALL_SHAPE), SMALL_SHAPE)


def test_registry_names_resolve() -> None:
    assert {"trt", "ort-cpu", "openvino", "tflite"} <= set(profile_names())
    for name, profile in PROFILES.items():
        assert resolve_profile(name) is profile and profile.name == name


def test_unknown_profile_lists_and_suggests() -> None:
    with pytest.raises(UnknownProfileError, match=r"'trtt' is not registered.*ort-cpu.*Did you mean 'trt'"):
        resolve_profile("trtt")


@pytest.mark.parametrize(("isa", "chosen", "why"), [
    (CpuIsa("x86_64", frozenset({"avx2", "avx512f", "avx512_vnni"})), "ort-cpu-u8s8", "VNNI"),
    (CpuIsa("x86_64", frozenset({"avx2", "avx_vnni"})), "ort-cpu-u8s8", "VNNI"),
    (CpuIsa("x86_64", frozenset({"avx2", "avx512f"})), "ort-cpu-u8s8-reduce-range", "vpmaddubsw"),
    (CpuIsa("aarch64", frozenset({"asimd", "asimddp"})), "ort-cpu-s8s8", "ARM64"),
    (CpuIsa("riscv64"), "ort-cpu-u8s8-reduce-range", "unknown CPU"),
])
def test_ort_cpu_follows_the_isa(isa: CpuIsa, chosen: str, why: str) -> None:
    profile = resolve_profile("ort-cpu", isa=isa)
    assert profile.name == chosen
    assert why in profile.reason and isa.describe() in profile.reason
    full = derive(-1.0, 1.0, profile, WEIGHT)[0][0]
    assert full == pytest.approx(1 / 64 if chosen.endswith("reduce-range") else 1 / 127)
    act_dtype = derive(0.0, 1.0, profile, ACT)[2]
    assert act_dtype == ("int8" if chosen == "ort-cpu-s8s8" else "uint8")


def test_trt_activation_is_symmetric_int8() -> None:
    assert derive(-2.0, 1.0, PROFILES["trt"], ACT) == ((np.float32(2 / 127).item(),), (0,), "int8")
    assert derive(0.0, 6.0, PROFILES["trt"], ACT) == ((np.float32(6 / 127).item(),), (0,), "int8")


@pytest.mark.parametrize(("rmin", "rmax"), [(-1.0, 3.0), (0.0, 6.0), (-7.5, -0.25), (0.3, 2.0), (-1e-3, 50.0)])
def test_ort_cpu_matches_onnxruntime(rmin: float, rmax: float) -> None:
    """u8 activations and symmetric (reduced) int8 weights as onnxruntime's own quantizer computes them."""
    qmin, qmax = get_qmin_qmax_for_qType(TensorProto.UINT8)
    zp, scale = compute_scale_zp(np.float32(rmin), np.float32(rmax), qmin, qmax)
    assert derive(rmin, rmax, PROFILES["ort-cpu-u8s8"], ACT) == ((pytest.approx(float(scale), rel=1e-6),), (int(zp),),
                                                                 "uint8")
    for name, reduce in (("ort-cpu-u8s8", False), ("ort-cpu-u8s8-reduce-range", True)):
        wmin, wmax = get_qmin_qmax_for_qType(TensorProto.INT8, reduce_range=reduce, symmetric=True)
        wzp, wscale = compute_scale_zp(np.float32(rmin), np.float32(rmax), wmin, wmax, symmetric=True)
        scales, zps, dtype = derive(rmin, rmax, PROFILES[name], WEIGHT)
        assert scales[0] == pytest.approx(float(wscale), rel=1e-6) and zps == (int(wzp),) == (0,) and dtype == "int8"


def test_openvino_signedness_follows_the_range() -> None:
    """NNCF: unsigned where the calibrated range is non-negative (ReLU outputs), else signed."""
    ov = PROFILES["openvino"]
    assert derive(0.0, 5.0, ov, ACT) == ((np.float32(5 / 255).item(),), (0,), "uint8")
    assert derive(-5.0, 2.0, ov, ACT) == ((np.float32(5 / 127).item(),), (0,), "int8")
    assert derive(-1.0, 2.0, ov, WEIGHT)[0] == (np.float32(2 / 127).item(),)
    assert derive(-1.0, 2.0, ov, WEIGHT, reduce_range=True)[0] == (np.float32(2 / 63.5).item(),)


def test_weights_per_channel_and_degenerate_ranges() -> None:
    scales, zps, dtype = derive((-1.0, -0.5, 0.0), (0.5, 2.0, 0.0), PROFILES["tflite"], WEIGHT, axis=0)
    assert scales == (np.float32(1 / 127).item(), np.float32(2 / 127).item(), 1.0) and zps == (0, 0, 0)
    assert dtype == "int8"
    for profile in PROFILES.values():  # an all-zero tensor: any positive scale is exact
        assert derive(0.0, 0.0, profile, ACT)[0] == (1.0,)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(PROFILES)), st.floats(-1e3, 1e3), st.floats(0, 1e3))
def test_zero_is_exact_and_the_range_fits(name: str, rmin: float, width: float) -> None:
    rmax = rmin + width
    (scale,), (zp,), dtype = derive(rmin, rmax, PROFILES[name], ACT)
    qmin, qmax = (0, 255) if dtype == "uint8" else (-128, 127)
    assert qmin <= zp <= qmax and scale > 0
    for value in (min(rmin, 0.0), max(rmax, 0.0)):  # the calibrated range is representable
        code = np.clip(np.round(np.float32(value) / np.float32(scale)) + zp, qmin, qmax)
        assert abs((code - zp) * scale - value) <= scale * 0.5 + 1e-6 * max(1.0, abs(value))


def test_quantizable_tensors_lists_activations_then_weights(small_model) -> None:
    listed = quantizable_tensors(small_model, PROFILES["trt"])
    kinds = [kind for _, kind in listed]
    assert kinds == sorted(kinds, key=lambda k: k is WEIGHT) and ACT in kinds and WEIGHT in kinds
    weights = {name for name, kind in listed if kind is WEIGHT}
    convs = [n for n in small_model.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm")]
    assert weights == {n.input[1] for n in convs}


def test_tensor_quants_unifies_groups_and_quantizes_weights_per_channel(small_model) -> None:
    profile = PROFILES["trt"]
    names = [n for n, kind in quantizable_tensors(small_model, profile) if kind is ACT]
    rng = np.random.default_rng(0)
    ranges = {n: (-float(rng.uniform(0, 3)), float(rng.uniform(0.1, 3))) for n in names}
    quants = tensor_quants(small_model, ranges, profile)
    groups = scale_groups(small_model, profile)
    assert groups, "the Concat and the MaxPool make shared-scale groups"
    for group in groups:
        assert len({quants[n].scale for n in group}) == 1
        widest = max(max(-ranges[n][0], ranges[n][1]) for n in group)
        assert quants[group[0]].scale[0] == pytest.approx(widest / 127, rel=1e-6)
    up = next(n for n in small_model.graph.node if n.op_type == "ConvTranspose")
    assert quants[up.input[1]].axis == 1 and len(quants[up.input[1]].scale) == 16  # output channels of ConvTranspose
    stem = next(n for n in small_model.graph.node if n.op_type == "Conv")
    assert quants[stem.input[1]].axis == 0 and len(quants[stem.input[1]].scale) == 16
    with pytest.raises(CalibrationDataError, match="no calibrated range"):
        tensor_quants(small_model, dict(list(ranges.items())[1:]), profile)
