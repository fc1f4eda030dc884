"""QDQ ONNX writer: runs in onnxruntime close to fp32, stores integers, and runs as integer kernels."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch
from onnxruntime.quantization import QuantType
from qdq_cases import (
    SMALL_SHAPE,
    SmallCNN,
    Stage1,
    consumers,
    cosine,
    export_optimized,
    feeds,
    initializer,
    make_recipe,
    ort_default_qdq,
    producers,
    run,
    settle_batchnorm,
)

import edgekit.models.zoo.shufflenetv2  # noqa: F401  (registers the networks used here)
import edgekit.models.zoo.thundernet  # noqa: F401
from edgekit.calib.profiles import resolve_profile
from edgekit.calib.qdq import RecipeMismatchError, count_integer_convs, quantize_model
from edgekit.calib.recipe import Precision
from edgekit.models import get_model

SHUFFLE_SHAPE = (1, 3, 96, 96)
STAGE1_SHAPE = (1, 3, 160, 160)
PROFILES = ("trt", "ort-cpu", "openvino", "tflite")


@pytest.fixture(scope="module")
def small_model() -> onnx.ModelProto:
    return export_optimized(settle_batchnorm(SmallCNN(), SMALL_SHAPE), SMALL_SHAPE)


@pytest.fixture(scope="module")
def shufflenet() -> onnx.ModelProto:
    torch.manual_seed(0)
    return export_optimized(settle_batchnorm(get_model("shufflenetv2-1.0"), SHUFFLE_SHAPE), SHUFFLE_SHAPE)


@pytest.fixture(scope="module")
def stage1() -> onnx.ModelProto:
    torch.manual_seed(0)
    wrapper = Stage1(settle_batchnorm(get_model("thundernet-snet146"), STAGE1_SHAPE)).eval()
    return export_optimized(wrapper, STAGE1_SHAPE, ("rpn_logits", "rpn_deltas", "sam"))


def _qdq(model: onnx.ModelProto, profile: str, shape: tuple[int, ...]) -> onnx.ModelProto:
    qdq = quantize_model(model, make_recipe(model, profile, feeds(shape, 6, seed=10)))
    onnx.checker.check_model(qdq, full_check=True)
    return qdq


def _dq_source(model: onnx.ModelProto, name: str) -> onnx.NodeProto | None:
    node = producers(model).get(name)
    return node if node is not None and node.op_type == "DequantizeLinear" else None


@pytest.mark.parametrize("profile", PROFILES)
def test_qdq_runs_close_to_fp32(small_model: onnx.ModelProto, profile: str) -> None:
    qdq = _qdq(small_model, profile, SMALL_SHAPE)
    assert sum(n.op_type == "QuantizeLinear" for n in qdq.graph.node) > 5
    for feed in feeds(SMALL_SHAPE, 2, seed=99):  # held out from calibration
        (expected,), (got,) = run(small_model, feed), run(qdq, feed)
        assert cosine(expected, got) >= 0.99
        assert not np.allclose(expected, got, rtol=0, atol=1e-6)  # it did quantize
    assert {p.key: p.value for p in qdq.metadata_props}["edgekit.quant_profile"] == resolve_profile(profile).name


@pytest.fixture(scope="module")
def shufflenet_peer(shufflenet: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's own static quantizer, per-channel u8s8, on the same calibration data."""
    return ort_default_qdq(shufflenet, feeds(SHUFFLE_SHAPE, 6, seed=10), per_channel=True,
                           activation_type=QuantType.QUInt8)


@pytest.mark.parametrize("profile", PROFILES)
def test_shufflenet_qdq_is_as_close_as_onnxruntimes_own(shufflenet: onnx.ModelProto, shufflenet_peer: onnx.ModelProto,
                                                       profile: str) -> None:
    """A randomly initialised 56-layer net amplifies any perturbation (logit cosine ~0.95 for every
    INT8 scheme, onnxruntime's included), so the yardstick here is onnxruntime's own quantizer:
    ``ort-cpu`` reproduces it, and no profile is more than 0.02 below it."""
    qdq = _qdq(shufflenet, profile, SHUFFLE_SHAPE)
    for feed in feeds(SHUFFLE_SHAPE, 2, seed=99):
        (expected,), (got,), (peer,) = run(shufflenet, feed), run(qdq, feed), run(shufflenet_peer, feed)
        assert cosine(expected, got) >= cosine(expected, peer) - 0.02
        assert cosine(expected, got) >= 0.9
        if profile == "ort-cpu":  # same numerics; only the head differs (onnxruntime quantizes logits)
            assert cosine(got, peer) >= 0.999


def test_weights_are_stored_as_int8_per_channel(small_model: onnx.ModelProto) -> None:
    qdq = _qdq(small_model, "trt", SMALL_SHAPE)
    original = {t.name: onnx.numpy_helper.to_array(t) for t in small_model.graph.initializer}
    for node, fp32_node in zip([n for n in qdq.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm")],
                               [n for n in small_model.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm")]):
        dq = _dq_source(qdq, node.input[1])
        assert dq is not None, node.name
        codes, scale, zp = (initializer(qdq, name) for name in dq.input)
        assert codes.dtype == np.int8 and zp.dtype == np.int8 and not zp.any() and np.abs(codes).max() == 127
        axis = {a.name: a.i for a in dq.attribute}.get("axis")
        expected_axis = 1 if node.op_type == "ConvTranspose" else 0
        assert axis == expected_axis and scale.shape == (codes.shape[expected_axis],)
        weight = original[fp32_node.input[1]]
        shape = [1] * weight.ndim
        shape[expected_axis] = -1
        assert np.abs(codes * scale.reshape(shape) - weight).max() <= scale.max() / 2 + 1e-7
        assert node.input[2] == fp32_node.input[2]  # TensorRT: float bias


def test_trt_pairs_are_symmetric_dedicated_and_shared_at_concat(small_model: onnx.ModelProto) -> None:
    qdq = _qdq(small_model, "trt", SMALL_SHAPE)
    quantizers = [n for n in qdq.graph.node if n.op_type == "QuantizeLinear"]
    assert all(initializer(qdq, q.input[2]).dtype == np.int8 and initializer(qdq, q.input[2]) == 0 for q in quantizers)
    pool = next(n for n in small_model.graph.node if n.op_type == "MaxPool")
    assert len([q for q in consumers(qdq, pool.output[0]) if q.op_type == "QuantizeLinear"]) == 2  # one per conv
    concat = next(n for n in qdq.graph.node if n.op_type == "Concat")
    scales = {float(initializer(qdq, _dq_source(qdq, x).input[1])) for x in concat.input}
    out_q = [q for q in consumers(qdq, concat.output[0]) if q.op_type == "QuantizeLinear"]
    scales |= {float(initializer(qdq, q.input[1])) for q in out_q}
    assert len(scales) == 1 and out_q


def test_ort_cpu_biases_are_int32(small_model: onnx.ModelProto) -> None:
    qdq = _qdq(small_model, "ort-cpu", SMALL_SHAPE)
    for node in (n for n in qdq.graph.node if n.op_type in ("Conv", "ConvTranspose")):
        x_dq, w_dq, b_dq = (_dq_source(qdq, name) for name in node.input)
        assert initializer(qdq, b_dq.input[0]).dtype == np.int32
        expected = float(initializer(qdq, x_dq.input[1])) * initializer(qdq, w_dq.input[1])
        np.testing.assert_allclose(initializer(qdq, b_dq.input[1]), expected, rtol=1e-6)
    gemm = next(n for n in qdq.graph.node if n.op_type == "Gemm")  # the head stays float
    assert all(_dq_source(qdq, name) is None for name in gemm.input)


@pytest.mark.parametrize(("profile", "first_max", "rest_max"), [
    ("ort-cpu-u8s8", {127}, 127), ("ort-cpu-u8s8-reduce-range", {64}, 64), ("openvino", {63, 64}, 127),
])
def test_weight_code_ranges(small_model: onnx.ModelProto, profile: str, first_max: set[int], rest_max: int) -> None:
    """u8s8 without VNNI: 7-bit weights everywhere; NNCF: the first layer only (amax / 63.5 lands on 63 or 64)."""
    qdq = _qdq(small_model, profile, SMALL_SHAPE)
    weighted = [n for n in qdq.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm")]
    peaks = [int(np.abs(initializer(qdq, _dq_source(qdq, n.input[1]).input[0]).astype(int)).max())
             for n in weighted if _dq_source(qdq, n.input[1]) is not None]
    assert peaks[0] in first_max and max(peaks[1:]) == rest_max


def test_shufflenet_convs_run_as_integer_kernels(shufflenet: onnx.ModelProto) -> None:
    """All 56 convs become QLinearConv for both ISA branches of ``ort-cpu``; onnxruntime's default
    s8s8 QDQ on this x86 build leaves some in float (its count is printed for the report)."""
    calibration = feeds(SHUFFLE_SHAPE, 4, seed=3)
    for profile in ("ort-cpu-u8s8", "ort-cpu-u8s8-reduce-range"):
        ours = count_integer_convs(quantize_model(shufflenet, make_recipe(shufflenet, profile, calibration)))
        assert (ours.integer, ours.float) == (56, 0), profile
    default = count_integer_convs(ort_default_qdq(shufflenet, calibration))
    print(f"shufflenetv2-1.0 integer convs: ort-cpu {ours.integer}/{ours.total}, "
          f"onnxruntime quantize_static default {default.integer}/{default.total}")
    assert default.total == 56 and default.integer <= ours.integer


def test_thundernet_stage1_convs_run_as_integer_kernels(stage1: onnx.ModelProto) -> None:
    """Every conv but the two RPN heads (their outputs are graph outputs and stay float) is integer."""
    calibration = feeds(STAGE1_SHAPE, 3, seed=4)
    ours = count_integer_convs(quantize_model(stage1, make_recipe(stage1, "ort-cpu", calibration)))
    heads = [n for n in stage1.graph.node if n.op_type == "Conv" and n.output[0] in ("rpn_logits", "rpn_deltas")]
    total = sum(n.op_type == "Conv" for n in stage1.graph.node)
    assert (ours.integer, ours.float) == (total - len(heads), len(heads)) and len(heads) == 2
    default = count_integer_convs(ort_default_qdq(stage1, calibration))
    print(f"thundernet-snet146 stage1 integer convs: ort-cpu {ours.integer}/{ours.total}, "
          f"onnxruntime quantize_static default {default.integer}/{default.total}")
    assert default.integer <= ours.integer


def test_heads_and_graph_outputs_stay_float(small_model: onnx.ModelProto) -> None:
    for profile in PROFILES:
        qdq = _qdq(small_model, profile, SMALL_SHAPE)
        assert [o.name for o in qdq.graph.output] == ["logits"]
        assert producers(qdq)["logits"].op_type == "Gemm" and not consumers(qdq, "logits")


def test_mixed_precision_keeps_layers_and_tensors_float(small_model: onnx.ModelProto) -> None:
    recipe = make_recipe(small_model, "trt", feeds(SMALL_SHAPE, 4, seed=5))
    mix = next(n for n in small_model.graph.node if n.op_type == "Conv" and "mix" in n.name)
    pool = next(n for n in small_model.graph.node if n.op_type == "MaxPool")
    tensors = dict(recipe.tensors)
    tensors["images"] = dataclasses.replace(tensors["images"], precision=Precision.FP16)
    qdq = quantize_model(small_model, recipe.replace(tensors=tensors, layer_precision={mix.name: Precision.FP16}))
    fp16_conv = next(n for n in qdq.graph.node if n.name == mix.name)
    assert list(fp16_conv.input) == list(mix.input)  # float input, weight and bias
    assert not [n for n in consumers(qdq, "images") if n.op_type == "QuantizeLinear"]
    assert [n for n in consumers(qdq, pool.output[0]) if n.op_type == "QuantizeLinear"]
    (got,), (expected,) = run(qdq, feeds(SMALL_SHAPE, 1, 7)[0]), run(small_model, feeds(SMALL_SHAPE, 1, 7)[0])
    assert cosine(expected, got) >= 0.99


def test_recipe_must_fit_the_graph(small_model: onnx.ModelProto) -> None:
    recipe = make_recipe(small_model, "trt", feeds(SMALL_SHAPE, 2, seed=6))
    missing = {k: v for k, v in recipe.tensors.items() if k != "images"}
    with pytest.raises(RecipeMismatchError, match="no entry for 1 tensor"):
        quantize_model(small_model, recipe.replace(tensors=missing))
    concat = next(n for n in small_model.graph.node if n.op_type == "Concat")
    tensors = dict(recipe.tensors)
    first = tensors[concat.input[0]]
    tensors[concat.input[0]] = dataclasses.replace(first, scale=(first.scale[0] * 2,))
    with pytest.raises(RecipeMismatchError, match="must share one scale"):
        quantize_model(small_model, recipe.replace(tensors=tensors))


def test_input_model_is_not_modified(small_model: onnx.ModelProto) -> None:
    before = small_model.SerializeToString()
    quantize_model(small_model, make_recipe(small_model, "ort-cpu", feeds(SMALL_SHAPE, 2, seed=8)))
    assert small_model.SerializeToString() == before
