"""``edgekit build-engine``: plans, the trtexec fallback, manifest provenance, and mypy against tensorrt-stubs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit import engine
from edgekit.bundle import GraphFile, Manifest, PostProcess, TensorSpec, read_manifest, verify, write_manifest
from edgekit.calib.calibrate import calibrate
from edgekit.cli import main
from edgekit.engine import EngineBuildError, EngineOptions, build_engine, plan_build, read_sources, retag_cache
from edgekit.errors import BundleError, MissingDependencyError
from edgekit.exporters.onnx import write_graphs
from edgekit.exporters.registry import ExportJob, Precision, get_target
from edgekit.inputspec import make_input_spec
from edgekit.runtimes.backends.tensorrt import check_engine_version

REPO = Path(__file__).resolve().parents[1]
INSTALL = "On a Jetson, JetPack provides it: sudo apt install python3-libnvinfer"


def _conv_graph(input_name: str, shape: list[int | str], seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    c = int(shape[1])
    w1 = numpy_helper.from_array(rng.standard_normal((4, c, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((2, 4, 1, 1)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", [input_name, "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["out"], name="conv2")]
    out_shape = [shape[0], 2, *shape[2:]]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _feeds(graph: onnx.ModelProto, rois: int = 3) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    value = graph.graph.input[0]
    shape = [d.dim_value or rois for d in value.type.tensor_type.shape.dim]
    return [{value.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(3)]


def _bundle(out: Path, target: str, graphs: dict[str, onnx.ModelProto], *, reference: bool = False) -> Path:
    """A bundle as `edgekit export --target trt-*` writes it (manifest, graph files, tensorrt.json)."""
    recipes = ({r: calibrate(g, _feeds(g), observer="minmax", profile="trt") for r, g in graphs.items()}
               if target == "trt-int8" else {})
    out.mkdir()
    files = get_target(target).export(ExportJob(graphs=graphs, input_spec=make_input_spec("classify", (8, 8)),
                                                recipes=recipes), out)
    if reference:  # the fp32 reference graph INT8 exports add for the accuracy report
        files += write_graphs({"model.fp32": graphs["model"]}, out, Precision.FP32)
    manifest = Manifest(model="tiny", task="classify", target=target, input=make_input_spec("classify", (8, 8)),
                        outputs=(TensorSpec("out", (1, 2, 8, 8)),), graphs=tuple(files),
                        postprocess=PostProcess("twostage", {"post_nms_top_n": 50}))
    write_manifest(manifest, out)
    return out


@pytest.fixture()
def int8_bundle(tmp_path: Path) -> Path:
    return _bundle(tmp_path / "b", "trt-int8", {"model": _conv_graph("images", [1, 3, 8, 8], 0)}, reference=True)


@pytest.fixture()
def no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError


def test_without_tensorrt_the_build_stops_with_the_exact_trtexec_command(int8_bundle: Path, no_tensorrt: None) -> None:
    with pytest.raises(MissingDependencyError) as info:
        build_engine(int8_bundle)
    b = int8_bundle
    assert str(info.value) == (
        "TensorRT is not installed here: the 'tensorrt' Python module cannot be imported. "
        f"{INSTALL}. Or build the same engine with trtexec:\n"
        f"  trtexec --onnx={b}/model.qdq.onnx --int8 --fp16 --saveEngine={b}/model.engine "
        "--memPoolSize=workspace:1024M"
    )
    assert not (b / "model.engine").exists()


def test_cli_prints_the_message_and_fails(int8_bundle: Path, no_tensorrt: None,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build-engine", str(int8_bundle), "--dla", "1", "--workspace", "256"]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "MissingDependencyError: TensorRT is not installed here" in out
    assert (f"trtexec --onnx={int8_bundle}/model.qdq.onnx --int8 --fp16 --saveEngine={int8_bundle}/model.engine "
            "--memPoolSize=workspace:256M --useDLACore=1 --allowGPUFallback") in out


@pytest.mark.parametrize(("options", "command"), [
    (EngineOptions(implicit=True), "trtexec --onnx={b}/model.onnx --int8 --fp16 --calib={b}/model.trt_cache "
                                   "--saveEngine={b}/model.engine --memPoolSize=workspace:1024M"),
    (EngineOptions(int8=True), "trtexec --onnx={b}/model.qdq.onnx --int8 --saveEngine={b}/model.engine "
                               "--memPoolSize=workspace:1024M"),
    (EngineOptions(fp16=True), "trtexec --onnx={b}/model.onnx --fp16 --saveEngine={b}/model.engine "
                               "--memPoolSize=workspace:1024M"),
    (EngineOptions(dla_core=0, workspace_mb=512, out=Path("x.engine")),
     "trtexec --onnx={b}/model.qdq.onnx --int8 --fp16 --saveEngine=x.engine --memPoolSize=workspace:512M "
     "--useDLACore=0 --allowGPUFallback"),
])
def test_trtexec_command_follows_the_options(int8_bundle: Path, options: EngineOptions, command: str) -> None:
    (step,) = plan_build(int8_bundle, options)  # the fp32 reference graph gets no engine
    assert engine.trtexec_command(step, options) == command.format(b=int8_bundle)


def test_fp16_bundle_refuses_int8(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "f", "trt-fp16", {"model": _conv_graph("images", [1, 3, 8, 8], 0)})
    (step,) = plan_build(bundle, EngineOptions())
    assert engine.trtexec_command(step, EngineOptions()) == (
        f"trtexec --onnx={bundle}/model.onnx --fp16 --saveEngine={bundle}/model.engine --memPoolSize=workspace:1024M")
    for options in (EngineOptions(int8=True), EngineOptions(implicit=True)):
        with pytest.raises(EngineBuildError, match="holds no INT8 graph .target trt-fp16.; drop --int8"):
            plan_build(bundle, options)


def test_symbolic_dimensions_get_an_optimization_profile(tmp_path: Path) -> None:
    graphs = {"stage1": _conv_graph("images", [1, 3, 8, 8], 0), "head": _conv_graph("pooled", ["rois", 5, 7, 7], 1)}
    bundle = _bundle(tmp_path / "d", "trt-int8", graphs)
    steps = {s.role: s for s in plan_build(bundle, EngineOptions())}
    assert steps["stage1"].shapes == {}
    assert steps["head"].shapes == {"pooled": ((1, 5, 7, 7), (50, 5, 7, 7), (50, 5, 7, 7))}  # post_nms_top_n
    assert engine.trtexec_command(steps["head"], EngineOptions()).endswith(
        "--minShapes=pooled:1x5x7x7 --optShapes=pooled:50x5x7x7 --maxShapes=pooled:50x5x7x7")
    with pytest.raises(EngineBuildError, match="--out names one engine file but bundle .* has 2 graphs"):
        plan_build(bundle, EngineOptions(out=tmp_path / "x.engine"))


def test_a_changed_source_file_is_refused(int8_bundle: Path) -> None:
    with open(int8_bundle / "model.qdq.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match="does not match the hash in tensorrt.json"):
        plan_build(int8_bundle, EngineOptions())
    (int8_bundle / "model.trt_cache").unlink()
    with pytest.raises(BundleError, match="'model.trt_cache' .graph 'model'. is missing"):
        plan_build(int8_bundle, EngineOptions(implicit=True))


def test_a_built_engine_replaces_the_graph_in_the_manifest(int8_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", type(sys)("tensorrt"))
    sys.modules["tensorrt"].__version__ = "10.3.0.30"  # type: ignore[attr-defined]
    monkeypatch.setattr(engine, "serialize_engine", lambda step, options: b"plan:" + step.onnx.name.encode())
    monkeypatch.setattr(engine, "device_name", lambda: "NVIDIA Jetson AGX Orin Developer Kit")
    recipe_hash = read_sources(int8_bundle)["model"].recipe_hash
    for _ in range(2):  # a rebuild starts from tensorrt.json, not from the manifest entry it replaced
        (record,) = build_engine(int8_bundle)
        assert (int8_bundle / "model.engine").read_bytes() == b"plan:model.qdq.onnx"
        manifest = verify(int8_bundle)  # hashes of the new entry hold
        graph = manifest.graph("model")
        assert (graph.path, graph.precision, graph.sha256) == ("model.engine", "int8", record.sha256)
        assert manifest.graph("model.fp32").path == "model.fp32.onnx"
        assert manifest.toolchain["tensorrt"] == "10.3.0.30"
        assert manifest.toolchain["tensorrt.device"] == "NVIDIA Jetson AGX Orin Developer Kit"
        assert manifest.toolchain["tensorrt.recipe.model"] == recipe_hash
        assert (record.mode, record.recipe_hash, record.workspace_mb) == ("explicit", recipe_hash, 1024)
    check_engine_version(manifest.toolchain["tensorrt"], "10.3.0.30", int8_bundle / "model.engine", graph.precision)
    engines = json.loads((int8_bundle / "tensorrt.json").read_text())["engines"]
    assert [e["engine"] for e in engines] == ["model.engine"]
    # --out outside the bundle leaves the bundle as it was and writes the provenance beside the engine
    before = read_manifest(int8_bundle)
    build_engine(int8_bundle, EngineOptions(fp16=True, out=int8_bundle.parent / "elsewhere.engine"))
    assert (int8_bundle.parent / "elsewhere.engine").read_bytes() == b"plan:model.onnx"
    assert '"mode": "float"' in (int8_bundle.parent / "elsewhere.engine.json").read_text()
    assert read_manifest(int8_bundle).to_dict() == before.to_dict()


def test_the_cache_header_is_rewritten_for_the_installed_release() -> None:
    cache = b"TRT-100300-EntropyCalibration2\nimages: 3c010204\n"
    assert retag_cache(cache, "8.6.1") == b"TRT-8601-EntropyCalibration2\nimages: 3c010204\n"
    assert retag_cache(cache, "10.3.0.30") == cache
    with pytest.raises(BundleError, match="does not start with a 'TRT-' header"):
        retag_cache(b"images: 3c010204\n", "10.3.0")


@pytest.fixture(scope="module")
def stubs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tensorrt-stubs")


def _mypy(stubs: Path, *files: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["bash", str(REPO / "tools" / "tensorrt_stubs.sh"), str(stubs), *files], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    if result.returncode == 3:  # no PyPI here: say so rather than pass
        pytest.skip(f"tensorrt-stubs or mypy could not be downloaded: {result.stderr.strip()}")
    return result


def test_builder_is_clean_under_mypy_against_tensorrt_stubs(stubs_dir: Path) -> None:
    result = _mypy(stubs_dir, "edgekit/engine.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found in 1 source file" in result.stdout


def test_mypy_catches_a_misspelled_tensorrt_call(stubs_dir: Path, tmp_path: Path) -> None:
    source = (REPO / "edgekit" / "engine.py").read_text()
    assert source.count("trt.BuilderFlag.FP16") == 1
    broken = tmp_path / "engine_typo.py"
    broken.write_text(source.replace("trt.BuilderFlag.FP16", "trt.BuilderFlag.FP61"))
    result = _mypy(stubs_dir, str(broken))
    assert result.returncode == 1, result.stdout + result.stderr
    assert '"type[BuilderFlag]" has no attribute "FP61"' in result.stdout
