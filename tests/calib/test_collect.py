"""The statistics pass: values reach the observers, the data streams, bad data is named."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.calib.collect import collect_statistics
from edgekit.calib.observers import MinMaxObserver
from edgekit.errors import CalibrationDataError

SHAPE = [1, 2, 4, 4]


def small_model() -> onnx.ModelProto:
    """x -> Mul(2) -> m -> Relu -> r -> Add(r, x) -> y;  x -> Log -> lg -> Add(lg, y) -> out."""
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["m"]),
        helper.make_node("Relu", ["m"], ["r"]),
        helper.make_node("Add", ["r", "x"], ["y"]),
        helper.make_node("Log", ["x"], ["lg"]),
        helper.make_node("Add", ["lg", "y"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, SHAPE)],
        [numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def feeds(n: int, seed: int = 0, positive: bool = True) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    make = (lambda: rng.uniform(0.1, 3.0, SHAPE)) if positive else (lambda: rng.standard_normal(SHAPE))
    return [{"x": make().astype(np.float32)} for _ in range(n)]


def test_observers_see_every_tensor_of_every_sample() -> None:
    data = feeds(5)
    observers = {name: MinMaxObserver() for name in ("x", "m", "r", "y", "out")}
    assert collect_statistics(small_model(), data, observers) == 5
    xs = np.stack([d["x"] for d in data])
    expected = {"x": xs, "m": 2 * xs, "r": np.maximum(2 * xs, 0), "y": 3 * xs, "out": np.log(xs) + 3 * xs}
    for name, values in expected.items():
        assert observers[name].compute_range() == pytest.approx((values.min(), values.max()), rel=1e-6), name


def test_outputs_in_groups_give_the_same_statistics() -> None:
    data = feeds(3)
    whole = {name: MinMaxObserver() for name in ("m", "r", "y")}
    grouped = {name: MinMaxObserver() for name in ("m", "r", "y")}
    collect_statistics(small_model(), data, whole)
    collect_statistics(small_model(), data, grouped, max_outputs_per_run=1, progress=True)
    assert {k: o.compute_range() for k, o in whole.items()} == {k: o.compute_range() for k, o in grouped.items()}


def test_streams_and_stops_after_samples() -> None:
    pulled = []

    def stream() -> Iterator[dict[str, np.ndarray]]:
        for index, feed in enumerate(feeds(10)):
            pulled.append(index)
            yield feed

    observers = {"r": MinMaxObserver()}
    assert collect_statistics(small_model(), stream(), observers, samples=4) == 4
    assert pulled == [0, 1, 2, 3]  # the fifth feed is never loaded


def test_model_is_not_modified() -> None:
    model = small_model()
    before = model.SerializeToString()
    collect_statistics(model, feeds(1), {"m": MinMaxObserver()})
    assert model.SerializeToString() == before


def test_nan_activation_names_tensor_and_sample() -> None:
    data = feeds(4)
    data[2]["x"][0, 0, 0, 0] = -1.0  # Log(-1) = NaN in 'lg' only
    with pytest.raises(CalibrationDataError, match=r"activation 'lg' holds 1 NaN and 0 Inf .* calibration sample 2"):
        collect_statistics(small_model(), data, {"r": MinMaxObserver(), "lg": MinMaxObserver()})


def test_inf_activation_is_refused() -> None:
    data = feeds(2)
    data[1]["x"][0, 1, 2, 3] = 0.0  # Log(0) = -Inf
    with pytest.raises(CalibrationDataError, match=r"'out' holds 0 NaN and 1 Inf .* sample 1"):
        collect_statistics(small_model(), data, {"out": MinMaxObserver()})


def test_nan_input_names_the_graph_input() -> None:
    data = feeds(3)
    data[1]["x"][0, 0, 1, 1] = np.nan
    with pytest.raises(CalibrationDataError, match=r"graph input 'x' of calibration sample 1 holds 1 NaN"):
        collect_statistics(small_model(), data, {"x": MinMaxObserver(), "m": MinMaxObserver()})


def test_empty_data_says_what_to_check() -> None:
    with pytest.raises(CalibrationDataError, match=r"no calibration samples were read.*--calib-data"):
        collect_statistics(small_model(), iter([]), {"m": MinMaxObserver()})


def test_feed_without_the_input_or_of_the_wrong_shape() -> None:
    with pytest.raises(CalibrationDataError, match=r"sample 0 has no value for graph input 'x' \(it has: images\)"):
        collect_statistics(small_model(), [{"images": np.zeros(SHAPE, np.float32)}], {"m": MinMaxObserver()})
    bad = [feeds(1)[0], {"x": np.ones([1, 2, 5, 5], np.float32)}]
    with pytest.raises(CalibrationDataError, match=r"could not run the model on calibration sample 1 \(x: float32\[1, 2, 5, 5\]\)"):
        collect_statistics(small_model(), bad, {"m": MinMaxObserver()})


def test_unknown_tensor_name_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="Did you mean 'lg'"):
        collect_statistics(small_model(), feeds(1), {"lgg": MinMaxObserver()})
