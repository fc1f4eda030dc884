"""The mixed-precision search: prefix growth, bisection and pruning over a ranking; recipes with float layers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.calib.calibrate import calibrate
from edgekit.calib.mixed_precision import apply_float_set, search_float_set
from edgekit.calib.qdq import LAYER_PRECISION_KEY, quantize_model
from edgekit.calib.recipe import Precision


def _drop(bad: dict[str, float], base: float = 0.1):
    """A drop that is ``base`` plus the cost of every bad item not kept float."""
    calls = []

    def drop_of(items: frozenset) -> float:
        calls.append(items)
        return base + sum(cost for item, cost in bad.items() if item not in items)

    return drop_of, calls


def test_within_budget_keeps_nothing_float() -> None:
    drop_of, calls = _drop({})
    result = search_float_set([{"a"}, {"b"}], drop_of, budget=0.5)
    assert result.passed and result.float_items == () and result.evaluations == 1 and calls == [frozenset()]


def test_finds_the_bad_items_and_prunes_the_good_ones_ranked_before_them() -> None:
    # the ranking is imperfect: "c" and "e" (harmless) rank before "d" (bad)
    drop_of, _ = _drop({"a": 3.0, "b": 2.0, "d": 1.5})
    ranked = [{"a"}, {"c"}, {"b"}, {"e"}, {"d"}, {"f"}, {"g"}, {"h"}]
    result = search_float_set(ranked, drop_of, budget=0.5)
    assert result.passed and set(result.float_items) == {"a", "b", "d"}
    assert result.float_items == ("a", "b", "d")  # most sensitive first
    assert result.drop_int8 == 6.6 and result.drop == pytest.approx(0.1)
    stages = [t.stage for t in result.trials]
    assert stages[0] == "int8" and "grow" in stages and "prune" in stages and stages[-1] != "grow"
    # fewer evaluations than trying every prefix and every removal blindly (1 + 8 + 8)
    assert result.evaluations < 17


def test_units_are_node_sets_and_pruning_is_per_node() -> None:
    drop_of, _ = _drop({"w": 2.0})
    result = search_float_set([{"v", "w"}], drop_of, budget=0.5)
    assert result.float_items == ("w",)


def test_unreachable_budget_is_fail_with_the_best_plan() -> None:
    drop_of, _ = _drop({"a": 3.0, "b": 1.0}, base=2.0)  # 2.0 pt are lost whatever stays float
    result = search_float_set([{"a"}, {"b"}, {"c"}], drop_of, budget=0.5)
    assert not result.passed
    assert set(result.float_items) == {"a", "b"} and result.drop == 2.0  # lowest drop, fewest items on a tie


def _convs() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(0.3 * rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(0.3 * rng.standard_normal((8, 8, 1, 1)).astype(np.float32), "w2"),
             numpy_helper.from_array(0.3 * rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w3")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3"], ["y"], name="conv3")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _feeds(n: int = 4) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(n)]


@pytest.mark.parametrize("profile", ["trt", "ort-cpu-u8s8"])
def test_apply_float_set_omits_qdq_and_marks_the_tensors(profile: str) -> None:
    model = _convs()
    recipe = calibrate(model, _feeds(), observer="minmax", profile=profile)
    mixed = apply_float_set(model, recipe, ["conv2"], Precision.FP16)
    assert mixed.layer_precision == {"conv2": Precision.FP16}
    assert mixed.tensors["w2"].precision is Precision.FP16  # nothing INT8 reads it any more
    assert mixed.tensors["w1"].precision is Precision.INT8
    qdq = quantize_model(model, mixed)
    dequantized = {n.output[0] for n in qdq.graph.node if n.op_type == "DequantizeLinear"}
    reads = {n.name: [i in dequantized for i in n.input] for n in qdq.graph.node if n.op_type == "Conv"}
    assert not reads["conv2"][1] and reads["conv1"][1]  # conv2's weight stays float
    # TensorRT: no Q/DQ reaches conv2 at all; onnxruntime: conv1's QLinearConv still writes integers
    assert reads["conv2"][0] is (profile != "trt")
    assert {p.key: p.value for p in qdq.metadata_props}[LAYER_PRECISION_KEY] == '{"conv2": "fp16"}'
    # a float layer keeps its float weight
    assert "w2" in {t.name for t in qdq.graph.initializer}
    # round trip through JSON keeps the map
    assert type(mixed).from_dict(mixed.to_dict()).layer_precision == mixed.layer_precision


def test_apply_float_set_refuses_int8_and_unknown_nodes() -> None:
    model = _convs()
    recipe = calibrate(model, _feeds(), observer="minmax", profile="trt")
    with pytest.raises(ValueError, match="fp16 or fp32"):
        apply_float_set(model, recipe, ["conv2"], Precision.INT8)
    with pytest.raises(ValueError, match="conv7"):
        apply_float_set(model, recipe, ["conv7"], Precision.FP32)


def test_a_float_commuting_op_exposes_its_output_with_its_inputs_grid() -> None:
    # NNCF's placement quantizes only the producer side of a MaxPool; once the MaxPool stays float,
    # its output needs a quantizer of its own: it takes its input's parameters.
    from edgekit.calib.sensitivity import complete_recipe, float_variant

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(0.3 * rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(0.3 * rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             helper.make_node("Conv", ["p1", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    recipe = calibrate(model, _feeds(), observer="minmax", profile="openvino")
    assert "r1" in recipe.tensors and "p1" not in recipe.tensors
    completed = complete_recipe(model, recipe.replace(layer_precision={"pool": Precision.FP32}))
    assert completed.tensors["p1"].scale == recipe.tensors["r1"].scale
    qdq = float_variant(model, recipe, ["pool"])
    assert "p1" in {n.input[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    assert apply_float_set(model, recipe, ["pool"], Precision.FP32).tensors["p1"].precision is Precision.INT8
