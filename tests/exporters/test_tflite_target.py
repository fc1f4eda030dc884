"""The TFLite targets: numerics vs PyTorch (fp32, fp16), op structure (no shuffle left), INT8 on a trained classifier.

Each graph is converted once per session (``get_case``): a litert-torch conversion takes
10-20 s here, so the cases run at small inputs (the op structure does not depend on size).
Files go through the target (``Target.export``) and are run by the SDK's LiteRT adapter,
which feeds the NHWC inputs the targets store.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_quantizer")

from edgekit.api import ExportOptions, export, get_pipeline, resolve_model  # noqa: E402
from edgekit.bundle import GraphFile  # noqa: E402
from edgekit.detector_export import HEAD_ROLE, STAGE1_ROLE, Head, Stage1, detector_to_onnx  # noqa: E402
from edgekit.errors import ExportError  # noqa: E402
from edgekit.exporters.registry import ExportJob, get_spec, get_target  # noqa: E402
from edgekit.inputspec import InputSpec, make_input_spec  # noqa: E402
from edgekit.models import get_spec as get_model_spec  # noqa: E402
from edgekit.runtimes.backends import create_backend  # noqa: E402
from edgekit.tflite_convert import tflite_op_counts  # noqa: E402
from lively import lively

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "edgekit" / "fixtures" / "shufflenetv2-1.0.safetensors"
CLS_VAL = ROOT / "edgekit" / "data" / "samples" / "cls-val"


@dataclass
class Case:
    """Optimized fp32 graphs (by role), the torch modules they came from, and an input per role."""

    graphs: dict[str, onnx.ModelProto]
    modules: dict[str, nn.Module]
    examples: dict[str, np.ndarray]
    spec: InputSpec


def _single_graph_case(name: str, imgsz: tuple[int, int], weights: Path | None = None) -> Case:
    torch.manual_seed(0)
    opts = ExportOptions(imgsz=imgsz, weights=weights, num_classes=6 if weights else None)
    source = resolve_model(name, opts)
    if weights is None:
        lively(source.module)
    spec = make_input_spec(source.task, imgsz)
    plan = get_pipeline(source.task)(source, spec, opts)
    example = np.random.default_rng(0).standard_normal((1, 3, *imgsz)).astype(np.float32)
    return Case(dict(plan.graphs), {"model": source.module}, {"model": example}, spec)


def _detector_case(name: str, imgsz: tuple[int, int]) -> Case:
    torch.manual_seed(0)
    detector = lively(get_model_spec(name).build())
    graphs = detector_to_onnx(detector, imgsz)
    rng = np.random.default_rng(0)
    pooled = rng.standard_normal((5, detector.ps_channels, detector.pooled_size, detector.pooled_size))
    return Case({STAGE1_ROLE: graphs.stage1, HEAD_ROLE: graphs.head},
                {STAGE1_ROLE: Stage1(detector).eval(), HEAD_ROLE: Head(detector).eval()},
                {STAGE1_ROLE: rng.standard_normal((1, 3, *imgsz)).astype(np.float32),
                 HEAD_ROLE: pooled.astype(np.float32)},  # 5 RoIs: the head was converted at another count
                make_input_spec("detect", imgsz))


CASES = {
    # The trained fixture where it exists (realistic activations), at its training size.
    "shufflenetv2-1.0": lambda: _single_graph_case("shufflenetv2-1.0", (96, 96),
                                                   FIXTURE if FIXTURE.is_file() else None),
    "snet146": lambda: _single_graph_case("snet146", (64, 64)),
    "lpsnet-s": lambda: _single_graph_case("lpsnet-s", (64, 128)),
    "thundernet-snet146": lambda: _detector_case("thundernet-snet146", (160, 160)),
}


@functools.cache
def get_case(name: str) -> Case:
    """Each case is traced and optimized once per session."""
    return CASES[name]()


@functools.cache
def exported(name: str, target: str, out: Path) -> tuple[Path, tuple[GraphFile, ...]]:
    """Each (case, float target) is converted once per session."""
    case = get_case(name)
    out.mkdir(parents=True, exist_ok=True)
    files = get_target(target).export(ExportJob(graphs=case.graphs, input_spec=case.spec), out)
    return out, tuple(files)


@pytest.fixture(scope="session")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tflite")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    x, y = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def _torch_outputs(case: Case, role: str) -> list[np.ndarray]:
    with torch.no_grad():
        out = case.modules[role](torch.from_numpy(case.examples[role]))
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def _cosines(name: str, target: str, work: Path) -> dict[str, float]:
    case = get_case(name)
    bundle, files = exported(name, target, work / f"{name}-{target}")
    out = {}
    for graph in files:
        backend = create_backend("litert", bundle / graph.path, graph)  # transposes NHWC at the boundary
        got = backend.run({graph.inputs[0].name: case.examples[graph.role]})
        for tensor, want in zip(graph.outputs, _torch_outputs(case, graph.role)):
            out[f"{graph.role}/{tensor.name}"] = cosine(got[tensor.name], want)
    return out


def test_tflite_targets_are_registered() -> None:
    assert [get_spec(f"tflite-{p}").precisions[0].value for p in ("fp32", "fp16", "int8")] == ["fp32", "fp16", "int8"]
    assert get_spec("tflite-int8").quant_profile == "tflite" and get_spec("tflite-fp32").quant_profile is None
    assert not get_spec("tflite-fp32").dynamic_batch and get_spec("tflite-int8").available


# Case-major order, so a case's fp16 run reuses its fp32 conversion (tflite_convert keeps a few).
FLOAT_RUNS = [(name, target) for name in CASES for target in ("tflite-fp32", "tflite-fp16")]
MIN_COSINE = {"tflite-fp32": 0.9999, "tflite-fp16": 0.999}


@pytest.mark.parametrize(("name", "target"), FLOAT_RUNS, ids=[f"{n}-{t}" for n, t in FLOAT_RUNS])
def test_float_targets_match_pytorch(name: str, target: str, work: Path) -> None:
    cosines = _cosines(name, target, work)
    assert cosines and min(cosines.values()) >= MIN_COSINE[target], cosines
    if target == "tflite-fp16":
        bundle32, files32 = exported(name, "tflite-fp32", work / f"{name}-tflite-fp32")
        bundle16, files16 = exported(name, "tflite-fp16", work / f"{name}-tflite-fp16")
        for f32, f16 in zip(files32, files16):
            assert f16.precision == "fp16" and f16.size_bytes < 0.6 * f32.size_bytes
            assert tflite_op_counts((bundle16 / f16.path).read_bytes()).get("DEQUANTIZE", 0) > 0


@pytest.mark.parametrize("name", ["shufflenetv2-1.0", "snet146"])
def test_shuffle_nets_convert_without_transpose_or_reshape(name: str, work: Path) -> None:
    """No TRANSPOSE and no RESHAPE at all, so none for the channel shuffle.

    None is allowed, not even at the graph ends: the image input is stored NHWC (no layout
    transpose after it) and the logits leave a MEAN + FULLY_CONNECTED as 2-D tensors (no
    transpose before them). The 16 shuffles live on as relabelled conv weights and the
    ONNX graph's 26 strided channel reads (x[:, 0::2], x[:, 1::2]); every conv survives.
    """
    case = get_case(name)
    bundle, (graph,) = exported(name, "tflite-fp32", work / f"{name}-tflite-fp32")
    ops = tflite_op_counts((bundle / graph.path).read_bytes())
    onnx_ops = [n.op_type for n in case.graphs["model"].graph.node]
    assert ops.get("TRANSPOSE", 0) == ops.get("RESHAPE", 0) == 0, ops
    assert ops["STRIDED_SLICE"] == onnx_ops.count("Slice") == 26 and "SLICE" not in ops, ops
    assert ops["CONV_2D"] + ops["DEPTHWISE_CONV_2D"] == onnx_ops.count("Conv"), ops
    assert ops["CONCATENATION"] == onnx_ops.count("Concat") == 16
    info = json.loads((bundle / "tflite.json").read_text())["graphs"]["model"]
    assert [t["layout"] for t in info["inputs"]] == ["NHWC"] and info["ops"] == ops


def test_plain_litert_torch_conversion_of_a_unit_stack_keeps_the_shuffle_ops() -> None:
    """The counter sees shuffles where they exist: a ShuffleNetV2 stage converted as is (no ONNX passes)."""
    import litert_torch

    from edgekit.models.zoo.shufflenetv2 import make_stage
    from edgekit.tflite_convert import quiet_converters

    stage = lively(make_stage(24, 116, 4))
    with quiet_converters(), torch.no_grad():
        ops = tflite_op_counts(litert_torch.convert(stage, (torch.randn(1, 24, 16, 16),)).model_content())
    # 4 units, one shuffle each: a 5-D reshape/transpose/reshape, plus layout transposes around it.
    assert ops.get("TRANSPOSE", 0) >= 4 and ops.get("RESHAPE", 0) >= 8, ops


def _partitions(content: bytes) -> int:
    """XNNPACK delegate partitions: each op the delegate does not take splits the graph."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    return sum(op["op_name"] == "DELEGATE" for op in interpreter._get_ops_details())


def test_deinterleaved_reads_run_in_one_xnnpack_graph_with_the_same_results(work: Path) -> None:
    """``channel_reads="deinterleave"``: one TRANSPOSE per stride-1 unit, no STRIDED_SLICE, delegated, bit-exact.

    The strided form (the targets' default) leaves no TRANSPOSE/RESHAPE, but XNNPACK does not take a
    stride-2 STRIDED_SLICE: 26 of them split ShuffleNetV2 into 15 delegate partitions.
    """
    from ai_edge_litert.interpreter import Interpreter

    from edgekit.tflite_rewrite import deinterleave_channel_reads

    bundle, (graph,) = exported("shufflenetv2-1.0", "tflite-fp32", work / "shufflenetv2-1.0-tflite-fp32")
    strided = (bundle / graph.path).read_bytes()
    rewritten, reads = deinterleave_channel_reads(strided)
    ops = tflite_op_counts(rewritten)
    assert reads == 26 and "STRIDED_SLICE" not in ops
    assert ops["TRANSPOSE"] == 13 and ops["RESHAPE"] == 26 and ops["SLICE"] == 26  # 13 stride-1 units
    assert _partitions(strided) >= 13 and _partitions(rewritten) <= 2
    x = np.random.default_rng(3).standard_normal((1, 96, 96, 3)).astype(np.float32)
    outs = [Interpreter(model_content=c).get_signature_runner()(args_0=x)["output_0"] for c in (strided, rewritten)]
    np.testing.assert_array_equal(outs[0], outs[1])


def test_detector_pipeline_files_and_head_takes_any_roi_count(work: Path) -> None:
    bundle, files = exported("thundernet-snet146", "tflite-fp32", work / "thundernet-snet146-tflite-fp32")
    assert [f.path for f in files] == ["stage1.tflite", "head.tflite"]
    info = json.loads((bundle / "tflite.json").read_text())
    assert [t["layout"] for t in info["graphs"]["stage1"]["outputs"]] == ["NHWC"] * 3
    # The head flattens its pooled RoIs: NHWC would put a TRANSPOSE before the flatten.
    assert [t["layout"] for t in info["graphs"]["head"]["inputs"]] == ["NCHW"]
    assert "TRANSPOSE" not in info["graphs"]["stage1"]["ops"] and "TRANSPOSE" not in info["graphs"]["head"]["ops"]
    head = create_backend("litert", bundle / "head.tflite", files[1])
    case = get_case("thundernet-snet146")
    for rois in (1, 7):
        pooled = np.resize(case.examples[HEAD_ROLE], (rois, *case.examples[HEAD_ROLE].shape[1:]))
        got = head.run({"pooled": pooled})
        with torch.no_grad():
            want = case.modules[HEAD_ROLE](torch.from_numpy(pooled))
        assert got["cls_logits"].shape == (rois, want[0].shape[1])
        assert cosine(got["cls_logits"], want[0].numpy()) >= 0.9999


def test_single_graph_variant_is_skipped_and_said_so(tmp_path: Path) -> None:
    case = get_case("shufflenetv2-1.0")
    job = ExportJob(graphs={"single": case.graphs["model"]}, input_spec=case.spec)
    with pytest.raises(ExportError, match="no graph it can convert"):
        get_target("tflite-fp32").export(job, tmp_path)


def test_dynamic_batch_is_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="dynamic"):
        export("shufflenetv2-0.5", out=tmp_path / "b", target="tflite-fp32", dynamic_batch=True)


# ------------------------------------------------------------------ INT8

@pytest.fixture(scope="session")
def calib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgekit.data.synth import synthesize

    # Another seed than the held-out cls-val (1001) and the fixture's training set (2000).
    return synthesize("cls", 32, 4242, tmp_path_factory.mktemp("calib") / "cls")


def _classify(bundle: Path) -> np.ndarray:
    from edgekit.data import open_dataset
    from edgekit.runtimes import load

    classifier = load(bundle, backend="litert")
    return np.array([classifier.predict(s.image).class_ids[0] for s in open_dataset(CLS_VAL)])


@pytest.mark.skipif(not FIXTURE.is_file(), reason="needs the trained fixture edgekit/fixtures/shufflenetv2-1.0")
def test_int8_from_the_recipe_keeps_the_trained_classifiers_answers(calib_dir: Path, work: Path) -> None:
    """On the 60 held-out images the INT8 model agrees with fp32 on >= 57 and keeps top-1 >= 0.9.

    Measured here: 59/60 agree, top-1 0.967 (fp32 0.95). Every range comes from the recipe
    (concat inputs share one scale there), so the only QUANTIZE is the input's and the only
    DEQUANTIZE feeds the float classifier.
    """
    from edgekit.data import open_dataset

    b32 = export("shufflenetv2-1.0", out=work / "cls32", target="tflite-fp32", weights=FIXTURE).bundle
    b8 = export("shufflenetv2-1.0", out=work / "cls8", target="tflite-int8", weights=FIXTURE, calib_data=calib_dir,
                calib_samples=32).bundle
    fp32, int8 = _classify(b32), _classify(b8)
    labels = np.array([s.label for s in open_dataset(CLS_VAL)])
    agree, top1 = int((fp32 == int8).sum()), float((int8 == labels).mean())
    assert agree >= 57 and top1 >= 0.9, (agree, top1)
    info = json.loads((b8 / "tflite.json").read_text())["graphs"]["model"]
    assert info["int8"]["method"] == "recipe" and info["int8"]["tensors"]["calibrated"] == 0
    assert info["int8"]["int8_io"] == [] and info["int8"]["float_ops"] == ["FULLY_CONNECTED"]
    assert info["ops"]["QUANTIZE"] == info["ops"]["DEQUANTIZE"] == 1 and "TRANSPOSE" not in info["ops"]
    assert info["int8"]["cosine_vs_fp32"] >= 0.999
    assert (b8 / "recipe.json").is_file() and (b8 / "model.fp32.onnx").is_file()


def test_int8_without_a_recipe_calibrates_with_running_min_max(calib_dir: Path, work: Path) -> None:
    """ai-edge-quantizer on the samples alone: running min/max over all 32, float logits."""
    from edgekit.data import Preprocess, open_dataset
    from edgekit.onnx_to_torch import onnx_to_torch
    from edgekit.tflite_quant import quantize_int8, running_min_max

    merged = running_min_max({"min": np.array(-1.0), "max": np.array(2.0)},
                             {"min": np.array(-3.0), "max": np.array(1.0)})
    assert (float(merged["min"]), float(merged["max"])) == (-3.0, 2.0)
    from edgekit.tflite_convert import TensorLayout, TfliteGraph

    case = get_case("shufflenetv2-1.0")
    bundle, (model,) = exported("shufflenetv2-1.0", "tflite-fp32", work / "shufflenetv2-1.0-tflite-fp32")
    info = json.loads((bundle / "tflite.json").read_text())["graphs"]["model"]  # the file's layouts, read back
    graph = TfliteGraph((bundle / model.path).read_bytes(),
                        *(tuple(TensorLayout(t["name"], t["layout"], tuple(t["shape"])) for t in info[side])
                          for side in ("inputs", "outputs")))
    pre = Preprocess.from_input_spec(case.spec)
    feeds = ({"images": pre(s.image)[0]} for s in open_dataset(calib_dir))  # one-shot, as a generator
    result = quantize_int8(graph, onnx_to_torch(case.graphs["model"]), recipe=None, feeds=feeds)
    assert result.method == "calibration" and result.samples == 32 and result.from_recipe == 0
    assert tflite_op_counts(result.content)["FULLY_CONNECTED"] == 1
    assert result.float_ops == ("FULLY_CONNECTED",) and result.io == ()
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_content=result.content).get_signature_runner()
    images = [pre(s.image)[0] for s in list(open_dataset(CLS_VAL))[::6]]  # 10 held-out images, one per 6
    with torch.no_grad():
        want = [case.modules["model"](torch.from_numpy(x)).numpy() for x in images]
    got = [runner(args_0=x.transpose(0, 2, 3, 1))["output_0"] for x in images]
    bound = 0.99 if FIXTURE.is_file() else 0.95  # random weights: only a loose sanity bound
    assert min(cosine(g, w) for g, w in zip(got, want)) >= bound
    # The de-interleaved reads quantize to the same integers: their RESHAPE/TRANSPOSE/SLICE
    # outputs take their input's range, and every other tensor keeps its own.
    from edgekit.tflite_rewrite import deinterleave_channel_reads

    rewritten = TfliteGraph(deinterleave_channel_reads(graph.content)[0], graph.inputs, graph.outputs)
    feeds = ({"images": pre(s.image)[0]} for s in open_dataset(calib_dir))
    other = quantize_int8(rewritten, onnx_to_torch(case.graphs["model"]), recipe=None, feeds=feeds)
    assert "STRIDED_SLICE" not in tflite_op_counts(other.content) and _partitions(other.content) <= 2
    runner2 = Interpreter(model_content=other.content).get_signature_runner()
    for x, g in zip(images, got):
        np.testing.assert_array_equal(runner2(args_0=x.transpose(0, 2, 3, 1))["output_0"], g)
