"""calibrate(): placement of ranges, per-channel weights, provenance, a zoo model end to end."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.calib.calibrate import calibrate, calibrate_ranges
from edgekit.calib.datahash import FeedHash
from edgekit.calib.profiles import quantizable_tensors, resolve_profile, scale_groups
from edgekit.calib.recipe import QuantRecipe, TensorKind
from edgekit.errors import EdgekitError


def conv_model(seed: int = 0) -> onnx.ModelProto:
    """Conv -> Relu -> a; s = a + Conv(a); ConvTranspose(s) -> MaxPool; Concat; GlobalAveragePool; Gemm."""
    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.5, name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["a"]),
        helper.make_node("Conv", ["a", "w2"], ["c2"]),
        helper.make_node("Add", ["a", "c2"], ["s"]),
        helper.make_node("ConvTranspose", ["s", "wt"], ["t"], strides=[1, 1]),  # 4x4 -> 5x5
        helper.make_node("MaxPool", ["t"], ["tp"], kernel_shape=[2, 2]),  # 5x5 -> 4x4
        helper.make_node("Concat", ["s", "tp"], ["cat"], axis=1),
        helper.make_node("GlobalAveragePool", ["cat"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["logits"], transB=1),
    ]
    inits = [init("w1", 4, 3, 3, 3), init("b1", 4), init("w2", 4, 4, 1, 1), init("wt", 4, 6, 2, 2),
             init("wg", 5, 10), init("bg", 5)]
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def feeds(n: int, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 3, 4, 4)).astype(np.float32)} for _ in range(n)]


def test_ranges_for_the_tensors_the_profile_quantizes() -> None:
    model, data = conv_model(), feeds(3)
    recipe = calibrate(model, data, observer="minmax")
    planned = [n for n, kind in quantizable_tensors(model, resolve_profile("trt")) if kind is TensorKind.ACTIVATION]
    activations = [n for n, t in recipe.tensors.items() if t.kind is TensorKind.ACTIVATION]
    assert sorted(activations) == sorted(planned) and {"x", "a", "s", "f"} <= set(planned)
    observed, count = calibrate_ranges(model, data, planned, observer="minmax")
    assert count == 3
    x = np.stack([f["x"] for f in data])
    assert observed["x"] == pytest.approx((x.min(), x.max()))
    groups = [set(g) for g in scale_groups(model, resolve_profile("trt"))]
    for name in planned:
        group = next((g for g in groups if name in g), {name})  # Concat inputs share one range
        union = (min(observed[n][0] for n in group), max(observed[n][1] for n in group))
        tq = recipe.tensors[name]
        assert (tq.rmin[0], tq.rmax[0]) == pytest.approx(union), name
        assert tq.zero_point == (0,) and tq.scale[0] == pytest.approx(max(-union[0], union[1]) / 127, rel=1e-6)


def test_weights_per_output_channel() -> None:
    model = conv_model()
    recipe = calibrate(model, feeds(2), observer="minmax")
    weights = {n: t for n, t in recipe.tensors.items() if t.kind is TensorKind.WEIGHT}
    assert {n: (t.axis, len(t.scale)) for n, t in weights.items()} == {
        "w1": (0, 4), "w2": (0, 4), "wt": (1, 6), "wg": (0, 5)}  # ConvTranspose: axis 1; Gemm transB: 0
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_allclose(weights["wt"].scale, np.abs(inits["wt"]).max(axis=(0, 2, 3)) / 127, rtol=1e-6)
    np.testing.assert_allclose(weights["w1"].rmin, inits["w1"].min(axis=(1, 2, 3)), rtol=1e-6)


def test_profile_decides_the_numerics() -> None:
    recipe = calibrate(conv_model(), feeds(2), observer="minmax", profile="tflite")
    assert recipe.profile == "tflite"
    x = recipe.tensors["x"]  # asymmetric int8 activations
    assert x.dtype == "int8" and x.scale[0] == pytest.approx((x.rmax[0] - x.rmin[0]) / 255, rel=1e-6)
    assert calibrate(conv_model(), feeds(1), profile="ort-cpu").profile.startswith("ort-cpu-")


def test_unknown_names_are_refused_before_reading_data() -> None:
    pulled = []

    def stream() -> Iterator[dict[str, np.ndarray]]:
        pulled.append(1)
        yield from feeds(1)

    with pytest.raises(EdgekitError, match="Did you mean 'minmax'"):
        calibrate(conv_model(), stream(), observer="minmx")
    with pytest.raises(EdgekitError, match="profile 'trtt'"):
        calibrate(conv_model(), stream(), profile="trtt")
    assert pulled == []


def test_provenance_and_json_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save(conv_model(), path)
    data = feeds(4)
    recipe = calibrate(path, data, observer="percentile", percentile=99.9, samples=3)
    prov = recipe.provenance
    assert (prov.observer, prov.percentile, prov.samples) == ("percentile", 99.9, 3)
    assert prov.model_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    expected = FeedHash()
    for feed in data[:3]:
        expected.update(feed)
    assert prov.data_hash == expected.hexdigest()
    assert calibrate(path, feeds(3, seed=2)).provenance.data_hash != prov.data_hash
    assert calibrate(path, data, data_hash="abc").provenance.data_hash == "abc"
    saved = recipe.save(tmp_path / "recipe.json")
    assert QuantRecipe.load(saved) == recipe


@pytest.mark.parametrize("observer", ["entropy", "percentile", "mse"])
def test_histogram_observers_stay_inside_the_observed_range(observer: str) -> None:
    minmax = calibrate(conv_model(), feeds(3), observer="minmax")
    recipe = calibrate(conv_model(), feeds(3), observer=observer)
    for name, tq in recipe.tensors.items():
        if tq.kind is TensorKind.ACTIVATION:
            ref = minmax.tensors[name]
            assert ref.rmin[0] <= tq.rmin[0] < tq.rmax[0] <= ref.rmax[0], name
            assert tq.scale[0] > 0.0


def test_zoo_model_end_to_end() -> None:
    torch = pytest.importorskip("torch")
    from edgekit.graph import optimize
    from edgekit.models import get_model
    from edgekit.onnx_export import torch_to_onnx

    torch.manual_seed(0)
    model, _ = optimize(torch_to_onnx(get_model("shufflenetv2-0.5"), torch.randn(1, 3, 64, 64),
                                      output_names=["logits"]))
    rng = np.random.default_rng(0)
    data = ({"images": rng.standard_normal((1, 3, 64, 64)).astype(np.float32)} for _ in range(3))
    recipe = calibrate(model, data)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    for node in convs:
        assert recipe.tensors[node.input[0]].kind is TensorKind.ACTIVATION
        weight = recipe.tensors[node.input[1]]
        assert weight.kind is TensorKind.WEIGHT and weight.axis == (0 if len(weight.scale) > 1 else None)
    assert recipe.provenance.samples == 3 and recipe.provenance.observer == "entropy"
    assert all(np.isfinite(t.scale).all() for t in recipe.tensors.values())
