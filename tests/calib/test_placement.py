"""Q/DQ placement per backend profile, checked against each backend's rules."""

from __future__ import annotations

import onnx
import pytest
import torch
from qdq_cases import SMALL_SHAPE, SmallCNN, export_optimized, settle_batchnorm

import edgekit.models.zoo.shufflenetv2  # noqa: F401  (registers shufflenetv2-1.0)
from edgekit.calib.placement import Placement, node_id, plan_placement
from edgekit.calib.profiles import PROFILES
from edgekit.models import get_model

WEIGHTED = ("Conv", "ConvTranspose", "Gemm")


@pytest.fixture(scope="module")
def small_model() -> onnx.ModelProto:
    return export_optimized(settle_batchnorm(SmallCNN(), SMALL_SHAPE), SMALL_SHAPE)


@pytest.fixture(scope="module")
def shufflenet() -> onnx.ModelProto:
    torch.manual_seed(0)
    return export_optimized(get_model("shufflenetv2-1.0"), (1, 3, 96, 96))


def _nodes(model: onnx.ModelProto, op_type: str) -> list[tuple[str, onnx.NodeProto]]:
    return [(node_id(n, i), n) for i, n in enumerate(model.graph.node) if n.op_type == op_type]


def _reads_dq(placement: Placement, nid: str, index: int, tensor: str) -> bool:
    return (nid, index) in placement.readers.get(tensor, ())


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def _users(model: onnx.ModelProto, name: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if name in n.input]


def _is_depthwise(node: onnx.NodeProto) -> bool:
    return node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_common_rules(small_model: onnx.ModelProto, profile: str) -> None:
    """Every profile: graph outputs stay float; every weighted op reads integer weights; groups are quantized."""
    placement = plan_placement(small_model, PROFILES[profile])
    outputs = {o.name for o in small_model.graph.output}
    assert not outputs & set(placement.activations)
    assert set(placement.readers) == set(placement.activations)
    assert all(group <= set(placement.activations) for group in placement.groups)
    weighted = [(nid, n) for op in WEIGHTED for nid, n in _nodes(small_model, op) if nid in placement.integer_nodes]
    for nid, node in weighted:
        assert placement.weight_readers[node.input[1]] == ((nid, 1),)
        assert _reads_dq(placement, nid, 0, node.input[0]) or not PROFILES[profile].requantize_commuting


def test_trt_rules(small_model: onnx.ModelProto) -> None:
    placement = plan_placement(small_model, PROFILES["trt"])
    producers = _producers(small_model)
    for op in WEIGHTED:  # every weighted op has integer inputs, the head's included
        for nid, node in _nodes(small_model, op):
            assert _reads_dq(placement, nid, 0, node.input[0]), nid
    for name in placement.activations:  # never a Q/DQ between a conv and the ReLU it feeds
        producer = producers.get(name)
        users = _users(small_model, name)
        assert not (producer is not None and producer.op_type in WEIGHTED and [u.op_type for u in users] == ["Relu"])
    ((add_id, add),) = _nodes(small_model, "Add")  # residual Add: the conv-produced input is fused, the other quantized
    conv_in = [i for i, x in enumerate(add.input) if producers[x].op_type == "Conv"]
    assert len(conv_in) == 1
    assert not _reads_dq(placement, add_id, conv_in[0], add.input[conv_in[0]])
    assert _reads_dq(placement, add_id, 1 - conv_in[0], add.input[1 - conv_in[0]])
    ((_, concat),) = _nodes(small_model, "Concat")  # Concat inputs and output share one scale
    ((_, pool),) = _nodes(small_model, "MaxPool")
    assert {*concat.input, concat.output[0]} in placement.groups
    assert {pool.input[0], pool.output[0]} in placement.groups
    assert not placement.biases and not placement.reduced_weights  # TensorRT takes float biases


def test_ort_cpu_rules(small_model: onnx.ModelProto) -> None:
    """onnxruntime fuses DQ -> Conv -> Q: every conv output is quantized (after its ReLU), the head stays float."""
    placement = plan_placement(small_model, PROFILES["ort-cpu-u8s8"])
    for op in ("Conv", "ConvTranspose"):
        for nid, node in _nodes(small_model, op):
            out = node.output[0]
            users = _users(small_model, out)
            quantized_out = users[0].output[0] if [u.op_type for u in users] == ["Relu"] else out
            assert quantized_out in placement.activations, nid
            assert placement.biases[nid] == tuple(node.input[:3])
    ((gemm_id, gemm),) = _nodes(small_model, "Gemm")
    assert gemm_id not in placement.integer_nodes and gemm.input[0] not in placement.activations
    ((_, concat),) = _nodes(small_model, "Concat")  # QLinearConcat rescales: inputs keep their own scales
    assert not any(concat.input[0] in group for group in placement.groups)


def test_openvino_quantizers_sit_before_commuting_ops(small_model: onnx.ModelProto) -> None:
    placement = plan_placement(small_model, PROFILES["openvino"])
    producers = _producers(small_model)
    commuting = {"MaxPool", "Concat", "Resize", "Slice", "Reshape", "Transpose"}
    assert not [t for t in placement.activations if t in producers and producers[t].op_type in commuting]
    ((_, concat),) = _nodes(small_model, "Concat")
    assert set(concat.input) in placement.groups  # NNCF's unified Concat scales
    ((pool_id, pool),) = _nodes(small_model, "MaxPool")
    assert placement.readers[pool.input[0]] == ((pool_id, 0),)
    first_conv = _nodes(small_model, "Conv")[0][1]
    assert placement.reduced_weights == {first_conv.input[1]}  # NNCF's OverflowFix.FIRST_LAYER


def test_openvino_matches_nncf_on_shufflenet(shufflenet: onnx.ModelProto) -> None:
    """NNCF's reference QDQ ShuffleNetV2 (nncf tests/onnx/data/reference_graphs/quantization/
    shufflenet_v2_x1_0.dot) quantizes the input, every ReLU output, every depthwise conv output
    and the pooled features: 58 activation quantizers, none after MaxPool/Concat/Slice."""
    placement = plan_placement(shufflenet, PROFILES["openvino"])
    expected = {"images"}
    for node in shufflenet.graph.node:
        if node.op_type in ("Relu", "ReduceMean") or _is_depthwise(node):
            expected.add(node.output[0])
    assert set(placement.activations) == expected
    assert len(expected) == 58
    gemm = _nodes(shufflenet, "Gemm")[0][1]
    assert gemm.input[1] in placement.weights and gemm.output[0] not in placement.activations


def test_every_shufflenet_conv_is_integer_for_trt_and_ort(shufflenet: onnx.ModelProto) -> None:
    convs = _nodes(shufflenet, "Conv")
    assert len(convs) == 56
    for profile in ("trt", "ort-cpu-u8s8"):
        placement = plan_placement(shufflenet, PROFILES[profile])
        assert all(_reads_dq(placement, nid, 0, n.input[0]) for nid, n in convs), profile
    # TensorRT: a whole stage's Concats and Slices share one scale, so the Concats vanish.
    concats = [n for _, n in _nodes(shufflenet, "Concat")]
    groups = plan_placement(shufflenet, PROFILES["trt"]).groups
    for concat in concats:
        assert any({*concat.input, concat.output[0]} <= group for group in groups)


def test_keep_float_leaves_a_layer_and_its_weights_float(small_model: onnx.ModelProto) -> None:
    (mix_id, mix), = [(nid, n) for nid, n in _nodes(small_model, "Conv") if "mix" in nid]
    for profile in ("trt", "ort-cpu-u8s8"):
        placement = plan_placement(small_model, PROFILES[profile], keep_float=frozenset({mix_id}))
        assert mix_id not in placement.integer_nodes and mix.input[1] not in placement.weights
        assert mix_id not in placement.biases
    # TensorRT quantizes inputs only: the float conv reads the float Concat output. (onnxruntime
    # still quantizes that output for the integer Concat; a float reader then sees its DQ.)
    placement = plan_placement(small_model, PROFILES["trt"], keep_float=frozenset({mix_id}))
    ((add_id, add),) = _nodes(small_model, "Add")
    assert not _reads_dq(placement, mix_id, 0, mix.input[0])
    assert _reads_dq(placement, add_id, list(add.input).index(mix.input[0]), mix.input[0])
