"""The backend protocol: checked feeds, named outputs, the same numbers from every engine; the
LiteRT boundary (NHWC, int8 quantize/dequantize) on hand-built .tflite models; the TensorRT
version check and missing-package path (no GPU here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from runtime_cases import CPU_BACKENDS, onnx_linear_classifier, tflite_linear_classifier, write_classifier_bundle

from edgekit.bundle import GraphFile, TensorSpec, read_manifest
from edgekit.errors import BundleError, MissingDependencyError
from edgekit.runtimes import Backend, FeedError, create_backend, installed_backends, load
from edgekit.runtimes.backends import BACKENDS, get_entry
from edgekit.runtimes.backends import litert as litert_backend
from edgekit.runtimes.backends.tensorrt import check_engine_version, rebuild_command, release

RNG = np.random.default_rng(0)
WEIGHT = RNG.normal(size=(5, 3)).astype(np.float32)
BIAS = RNG.normal(size=5).astype(np.float32)
SIZE = (8, 8)
HAS_LITERT = "litert" in installed_backends()


def reference_logits(x: np.ndarray) -> np.ndarray:
    """What the linear classifier computes, in float64."""
    return x.astype(np.float64).mean(axis=(2, 3)) @ WEIGHT.T.astype(np.float64) + BIAS


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_classifier_bundle(tmp_path_factory.mktemp("onnx") / "b", "model.onnx",
                                   onnx_linear_classifier(WEIGHT, BIAS, SIZE), SIZE, 5)


def loaded(bundle: Path, backend: str) -> Backend:
    graph = read_manifest(bundle).graph("model")
    return create_backend(backend, bundle / graph.path, graph)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_every_backend_computes_the_graph(onnx_bundle: Path, backend: str) -> None:
    engine = loaded(onnx_bundle, backend)
    x = RNG.normal(size=(1, 3, *SIZE)).astype(np.float32)
    out = engine.run({"images": x})
    assert list(out) == ["logits"] and out["logits"].dtype == np.float32 and out["logits"].shape == (1, 5)
    np.testing.assert_allclose(out["logits"], reference_logits(x), atol=1e-5)
    assert [t.name for t in engine.inputs] == ["images"] and [t.name for t in engine.outputs] == ["logits"]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_feeds_are_checked_before_the_engine(onnx_bundle: Path, backend: str) -> None:
    engine = loaded(onnx_bundle, backend)
    good = np.zeros((1, 3, *SIZE), np.float32)
    with pytest.raises(FeedError, match=r"missing \['images'\], unexpected \['image'\]"):
        engine.run({"image": good})
    with pytest.raises(FeedError, match="is float64; the graph takes float32"):
        engine.run({"images": good.astype(np.float64)})
    with pytest.raises(FeedError, match=r"has shape \[1, 3, 8, 9\]; the graph takes \[1, 3, 8, 8\]"):
        engine.run({"images": np.zeros((1, 3, 8, 9), np.float32)})
    with pytest.raises(FeedError, match="must be a numpy array"):
        engine.run({"images": good.tolist()})  # type: ignore[dict-item]


def test_named_dimensions_take_any_size() -> None:
    from edgekit.runtimes.backends import check_feeds

    specs = (TensorSpec("pooled", ("rois", 5, 7, 7)),)
    for n in (0, 1, 37):
        check_feeds({"pooled": np.zeros((n, 5, 7, 7), np.float32)}, specs, "head")
    with pytest.raises(FeedError):
        check_feeds({"pooled": np.zeros((3, 4, 7, 7), np.float32)}, specs, "head")


def test_a_graph_file_that_does_not_fit_its_manifest_is_refused(onnx_bundle: Path) -> None:
    graph = read_manifest(onnx_bundle).graph("model")
    renamed = GraphFile(**{**graph.__dict__, "inputs": (TensorSpec("pixels", (1, 3, 8, 8)),)})
    for backend in CPU_BACKENDS:
        with pytest.raises(BundleError, match="does not belong to this manifest"):
            create_backend(backend, onnx_bundle / graph.path, renamed)


def test_missing_outputs_are_a_bundle_error() -> None:
    graph = GraphFile("model", "m.onnx", "0" * 64, 1, (TensorSpec("x", (1,)),), (TensorSpec("y", (1,)),))

    class Forgetful(Backend):
        name = "forgetful"

        def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {"z": feeds["x"]}

    with pytest.raises(BundleError, match="returned no y"):
        Forgetful(Path("m.onnx"), graph).run({"x": np.zeros(1, np.float32)})
    with pytest.raises(FeedError, match="threads must be >= 1"):
        Forgetful(Path("m.onnx"), graph, threads=0)


@pytest.mark.skipif("openvino" not in installed_backends(), reason="openvino not installed")
def test_openvino_runs_fp32_bundles_in_f32(onnx_bundle: Path) -> None:
    # Without the hint the CPU plugin computes in bf16 where the CPU has AVX-512 BF16 / AMX.
    engine = loaded(onnx_bundle, "openvino")
    assert engine.settings["config"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert "float32" in engine.settings["inference_precision"] or "f32" in engine.settings["inference_precision"]
    assert loaded(onnx_bundle, "openvino").settings["num_threads"] >= 1


def test_backend_table_and_aliases() -> None:
    assert get_entry("ORT").name == "onnxruntime" and get_entry("tflite").name == "litert"
    assert BACKENDS["openvino"].reads("model.xml") and BACKENDS["openvino"].reads("model.onnx")
    assert not BACKENDS["litert"].reads("model.onnx") and BACKENDS["tensorrt"].reads("m.engine")
    assert BACKENDS["litert"].requires == (("ai_edge_litert", "tflite_runtime"),)


# ---------------------------------------------------------------- LiteRT

@pytest.mark.skipif(not HAS_LITERT, reason="no LiteRT interpreter installed")
@pytest.mark.parametrize("nhwc", [True, False], ids=["nhwc", "nchw"])
def test_litert_runs_nchw_feeds_on_either_layout(tmp_path: Path, nhwc: bool) -> None:
    bundle = write_classifier_bundle(tmp_path / "b", "model.tflite", tflite_linear_classifier(WEIGHT, BIAS, SIZE,
                                     nhwc=nhwc), SIZE, 5, target="tflite-fp32")
    engine = loaded(bundle, "litert")
    # A non-symmetric input: a wrong transpose would average the wrong axes.
    x = RNG.normal(size=(1, 3, *SIZE)).astype(np.float32) + np.arange(3, dtype=np.float32)[None, :, None, None]
    np.testing.assert_allclose(engine.run({"images": x})["logits"], reference_logits(x), atol=1e-5)
    assert engine.settings["nhwc"] == (["images"] if nhwc else [])
    assert engine.settings["interpreter"] in litert_backend.INTERPRETER_MODULES


@pytest.mark.skipif(not HAS_LITERT, reason="no LiteRT interpreter installed")
def test_litert_quantizes_int8_inputs_and_dequantizes_outputs(tmp_path: Path) -> None:
    (in_scale, in_zp), (out_scale, out_zp) = (0.02, 3), (0.05, -4)
    data = tflite_linear_classifier(WEIGHT, BIAS, SIZE, quant=((in_scale, in_zp), (out_scale, out_zp)))
    bundle = write_classifier_bundle(tmp_path / "b", "model.tflite", data, SIZE, 5, target="tflite-int8",
                                     precision="int8")
    engine = loaded(bundle, "litert")
    assert engine.settings["quantized_io"] == ["images", "logits"]
    x = np.clip(RNG.normal(size=(1, 3, *SIZE)), -2, 2).astype(np.float32)
    got = engine.run({"images": x})["logits"]
    assert got.dtype == np.float32
    # What the int8 model computes: the input rounded to its grid, the output to its own.
    q_in = np.clip(np.round(x / in_scale) + in_zp, -128, 127)
    expected = reference_logits((q_in - in_zp) * in_scale)
    assert np.abs(got - expected).max() <= out_scale / 2 + 1e-6
    assert np.abs(got - reference_logits(x)).max() <= out_scale / 2 + in_scale  # and near the float model


def test_quantize_rounds_half_away_from_zero_and_saturates() -> None:
    b = litert_backend.Boundary(spec=TensorSpec("x", (5,)), index=0, dtype=np.dtype(np.int8), to_file=None,
                                scales=np.array([0.5], np.float32), zero_points=np.array([1]), axis=0)
    q = b.quantize(np.array([0.25, -0.25, 0.75, 100.0, -100.0], np.float32))
    assert q.tolist() == [2, 0, 3, 127, -128]  # 0.5 -> 1, -0.5 -> -1 (then + zp 1), saturated ends
    np.testing.assert_allclose(b.dequantize(q), [0.5, -0.5, 1.0, 63.0, -64.5])
    per_axis = litert_backend.Boundary(spec=TensorSpec("x", (1, 2, 1, 1)), index=0, dtype=np.dtype(np.int8),
                                       to_file=None, scales=np.array([1.0, 0.1], np.float32),
                                       zero_points=np.array([0, 0]), axis=1)
    assert per_axis.quantize(np.full((1, 2, 1, 1), 0.5, np.float32)).reshape(-1).tolist() == [1, 5]


def test_litert_layout_is_matched_against_the_manifest() -> None:
    spec = TensorSpec("images", (1, 3, 32, 48))
    assert litert_backend.file_layout(spec, (1, 3, 32, 48)) is None
    assert litert_backend.file_layout(spec, (1, 32, 48, 3)) == litert_backend.NCHW_TO_NHWC
    assert litert_backend.file_layout(TensorSpec("images", ("batch", 3, 32, 48)), (-1, 32, 48, 3)) is not None
    with pytest.raises(BundleError, match="neither that nor its NHWC form"):
        litert_backend.file_layout(spec, (1, 48, 32, 3))


@pytest.mark.skipif(not HAS_LITERT, reason="no LiteRT interpreter installed")
def test_litert_classifier_agrees_with_onnxruntime(tmp_path: Path, onnx_bundle: Path) -> None:
    tfl = write_classifier_bundle(tmp_path / "tfl", "model.tflite", tflite_linear_classifier(WEIGHT, BIAS, SIZE),
                                  SIZE, 5, target="tflite-fp32")
    image = (RNG.uniform(0, 255, size=(20, 30, 3))).astype(np.uint8)
    a, b = load(tfl, backend="litert").predict(image), load(onnx_bundle, backend="onnxruntime").predict(image)
    assert a.class_ids.tolist() == b.class_ids.tolist() and a.labels == b.labels
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)


def test_the_first_litert_package_that_imports_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(litert_backend, "INTERPRETER_MODULES", ("edgekit_no_such_module.interpreter",))
    with pytest.raises(MissingDependencyError, match=r"pip install 'edgekit\[tflite\]'"):
        litert_backend.interpreter_class()
    if HAS_LITERT:
        monkeypatch.setattr(litert_backend, "INTERPRETER_MODULES",
                            ("edgekit_no_such_module.interpreter", "ai_edge_litert.interpreter"))
        assert litert_backend.interpreter_class()[1] == "ai_edge_litert.interpreter"


# ---------------------------------------------------------------- TensorRT (no GPU here)

@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed")
def test_tensorrt_missing_is_a_clear_error(tmp_path: Path) -> None:
    graph = GraphFile("model", "model.engine", "0" * 64, 1, (TensorSpec("images", (1, 3, 8, 8)),),
                      (TensorSpec("logits", (1, 5)),), precision="fp16")
    with pytest.raises(MissingDependencyError, match="tensorrt.*python3-libnvinfer"):
        create_backend("tensorrt", tmp_path / "model.engine", graph)
    from edgekit.runtimes.backends.tensorrt import TensorRtBackend, import_libraries

    with pytest.raises(MissingDependencyError, match="python3-libnvinfer"):
        import_libraries()
    with pytest.raises(MissingDependencyError):
        TensorRtBackend(tmp_path / "model.engine", graph)
    assert "tensorrt" not in sys.modules


def test_tensorrt_engines_from_another_release_are_refused() -> None:
    engine = Path("bundle/model.engine")
    check_engine_version("10.3.0.30", "10.3.0", engine, "fp16")  # the build number does not matter
    with pytest.raises(BundleError) as info:
        check_engine_version("10.3.0", "8.6.2", engine, "int8")
    message = str(info.value)
    assert "built with TensorRT 10.3.0; this board has 8.6.2" in message
    assert "edgekit build-engine bundle (or: trtexec --onnx=bundle/model.qdq.onnx --int8 --fp16 " \
           "--saveEngine=bundle/model.engine)" in message
    with pytest.raises(BundleError, match="does not say which TensorRT built"):
        check_engine_version(None, "10.3.0", engine, "fp32")
    assert release("10.3.0.30") == (10, 3, 0) and release("8.6.1.post1") == (8, 6, 1)
    assert rebuild_command(engine, "fp16").endswith("trtexec --onnx=bundle/model.onnx --fp16 "
                                                    "--saveEngine=bundle/model.engine)")
