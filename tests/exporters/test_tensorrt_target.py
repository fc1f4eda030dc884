"""The ``trt-fp16`` / ``trt-int8`` targets on ThunderNet-SNet146: Q/DQ placement, cache, numerics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from edgekit.bundle import file_digest
from edgekit.calib.calibrate import calibrate
from edgekit.calib.recipe import Precision as RecipePrecision
from edgekit.calib.recipe import TensorKind
from edgekit.calib.trt_cache import cache_header, read_trt_cache
from edgekit.detector_export import HEAD_ROLE, STAGE1_OUTPUTS, STAGE1_ROLE, detector_to_onnx
from edgekit.engine import SOURCES_NAME, read_sources
from edgekit.errors import ExportError
from edgekit.exporters.openvino import cosine
from edgekit.exporters.registry import ExportJob, get_spec, get_target
from edgekit.inputspec import make_input_spec
from edgekit.models import get_spec as get_model_spec

IMGSZ = (160, 160)


def _feeds(graph: onnx.ModelProto, count: int, seed: int, rois: int = 4) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    (value,) = graph.graph.input
    shape = [d.dim_value or rois for d in value.type.tensor_type.shape.dim]
    return [{value.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(count)]


@pytest.fixture(scope="module")
def snet146() -> dict[str, onnx.ModelProto]:
    torch.manual_seed(0)
    graphs = detector_to_onnx(get_model_spec("thundernet-snet146").build().eval(), IMGSZ)
    return {STAGE1_ROLE: graphs.stage1, HEAD_ROLE: graphs.head}


@pytest.fixture(scope="module")
def int8_bundle(snet146: dict[str, onnx.ModelProto], tmp_path_factory: pytest.TempPathFactory) -> dict:
    recipes = {role: calibrate(g, _feeds(g, 4, seed=1), observer="minmax", profile="trt")
               for role, g in snet146.items()}
    out = tmp_path_factory.mktemp("trt-int8")
    job = ExportJob(graphs=snet146, input_spec=make_input_spec("detect", IMGSZ), recipes=recipes)
    files = get_target("trt-int8").export(job, out)
    return {"dir": out, "files": {f.role: f for f in files}, "recipes": recipes}


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def _init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def test_trt_targets_are_registered_without_needing_tensorrt_to_export() -> None:
    assert get_spec("trt-int8").quant_profile == "trt" and get_spec("trt-fp16").quant_profile is None
    assert "tensorrt" not in get_spec("trt-int8").requires + get_spec("trt-fp16").requires
    assert get_spec("trt-int8").available and get_spec("trt-fp16").available


def test_bundle_holds_qdq_onnx_cache_and_fp32_onnx_per_role(int8_bundle: dict) -> None:
    out = int8_bundle["dir"]
    names = {p.name for p in out.iterdir()}
    for role in (STAGE1_ROLE, HEAD_ROLE):
        assert {f"{role}.qdq.onnx", f"{role}.onnx", f"{role}.trt_cache"} <= names
        graph_file = int8_bundle["files"][role]
        assert (graph_file.path, graph_file.precision) == (f"{role}.qdq.onnx", "int8")
        assert (graph_file.sha256, graph_file.size_bytes) == file_digest(out / graph_file.path)
    assert "recipe.json" in names and not any(n.endswith(".engine") for n in names)  # engines are built on the board
    sources = read_sources(out)
    stage1 = sources[STAGE1_ROLE]
    assert (stage1.onnx, stage1.qdq, stage1.cache, stage1.precision) == (
        "stage1.onnx", "stage1.qdq.onnx", "stage1.trt_cache", "int8")
    recipe_hash = int8_bundle["recipes"][STAGE1_ROLE].content_hash()
    assert stage1.recipe_hash == recipe_hash
    qdq = onnx.load(out / "stage1.qdq.onnx")
    assert {p.key: p.value for p in qdq.metadata_props}["edgekit.recipe_hash"] == recipe_hash
    assert stage1.sha256 == {n: file_digest(out / n)[0] for n in ("stage1.onnx", "stage1.qdq.onnx", "stage1.trt_cache")}


def test_every_conv_input_is_quantized_symmetric_per_channel(int8_bundle: dict) -> None:
    qdq = onnx.load(int8_bundle["dir"] / "stage1.qdq.onnx")
    producers = _producers(qdq)
    convs = [n for n in qdq.graph.node if n.op_type == "Conv"]
    assert len(convs) == 63
    for conv in convs:
        act, weight = producers[conv.input[0]], producers[conv.input[1]]
        assert act.op_type == "DequantizeLinear" and producers[act.input[0]].op_type == "QuantizeLinear", conv.name
        assert weight.op_type == "DequantizeLinear" and weight.input[0] not in producers, conv.name
        codes, scale = _init(qdq, weight.input[0]), _init(qdq, weight.input[1])
        assert codes.dtype == np.int8 and codes.min() >= -127  # narrow range [-127, 127]
        out_channels = codes.shape[0]
        if out_channels > 1:  # per output channel, axis 0
            assert scale.shape == (out_channels,) and {a.name: a.i for a in weight.attribute}.get("axis", 1) == 0
    qdq_nodes = [n for n in qdq.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    zero_points = [_init(qdq, n.input[2]) for n in qdq_nodes]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)


def test_concat_inputs_share_one_scale(int8_bundle: dict) -> None:
    qdq = onnx.load(int8_bundle["dir"] / "stage1.qdq.onnx")
    producers = _producers(qdq)
    concats = [n for n in qdq.graph.node if n.op_type == "Concat"]
    assert concats
    for concat in concats:
        dqs = [producers.get(i) for i in concat.input]
        assert all(d is not None and d.op_type == "DequantizeLinear" for d in dqs), concat.name
        scales = {float(_init(qdq, d.input[1])) for d in dqs}
        assert len(scales) == 1, (concat.name, scales)


def test_glue_stays_float_graph_outputs_are_not_quantized(int8_bundle: dict) -> None:
    qdq = onnx.load(int8_bundle["dir"] / "stage1.qdq.onnx")
    producers = _producers(qdq)
    assert [o.name for o in qdq.graph.output] == list(STAGE1_OUTPUTS)
    for output in qdq.graph.output:
        assert output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert producers[output.name].op_type not in ("QuantizeLinear", "DequantizeLinear")


def test_calibration_cache_round_trips_the_recipe(int8_bundle: dict, snet146: dict[str, onnx.ModelProto]) -> None:
    header, scales = read_trt_cache(int8_bundle["dir"] / "stage1.trt_cache")
    assert header == cache_header("10.3.0") == "TRT-100300-EntropyCalibration2"
    recipe = int8_bundle["recipes"][STAGE1_ROLE]
    expected = {n: t.amax / 127.0 for n, t in recipe.tensors.items()
                if t.kind is TensorKind.ACTIVATION and t.precision is RecipePrecision.INT8}
    assert scales.keys() == expected.keys() and len(scales) > 60
    for name, scale in scales.items():
        assert scale == np.float32(expected[name]), name  # float32 bits, exactly
    # The names are tensors of the fp32 graph, which is what --implicit builds from.
    fp32_tensors = {v.name for v in snet146[STAGE1_ROLE].graph.input} | {
        o for n in snet146[STAGE1_ROLE].graph.node for o in n.output}
    assert set(scales) <= fp32_tensors


@pytest.mark.parametrize("role", [STAGE1_ROLE, HEAD_ROLE])
def test_qdq_numerics_in_onnxruntime_are_close_to_fp32(int8_bundle: dict, role: str) -> None:
    out = int8_bundle["dir"]
    fp32 = ort.InferenceSession(str(out / f"{role}.onnx"), providers=["CPUExecutionProvider"])
    qdq = ort.InferenceSession(str(out / f"{role}.qdq.onnx"), providers=["CPUExecutionProvider"])
    (feeds,) = _feeds(onnx.load(out / f"{role}.onnx"), 1, seed=7)
    for name, a, b in zip([o.name for o in fp32.get_outputs()], fp32.run(None, feeds), qdq.run(None, feeds)):
        assert cosine(a, b) >= 0.99, (role, name, cosine(a, b))


def test_fp16_bundle_is_the_fp32_onnx(snet146: dict[str, onnx.ModelProto], tmp_path: Path) -> None:
    job = ExportJob(graphs={STAGE1_ROLE: snet146[STAGE1_ROLE]}, input_spec=make_input_spec("detect", IMGSZ))
    (graph_file,) = get_target("trt-fp16").export(job, tmp_path)
    assert (graph_file.path, graph_file.precision) == ("stage1.onnx", "fp16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage1.onnx", SOURCES_NAME]
    source = read_sources(tmp_path)[STAGE1_ROLE]
    assert (source.qdq, source.cache, source.precision) == (None, None, "fp16")


def test_a_graph_without_recipe_stays_float(snet146: dict[str, onnx.ModelProto], int8_bundle: dict,
                                           tmp_path: Path) -> None:
    job = ExportJob(graphs=snet146, input_spec=make_input_spec("detect", IMGSZ),
                    recipes={STAGE1_ROLE: int8_bundle["recipes"][STAGE1_ROLE]})
    files = {f.role: f for f in get_target("trt-int8").export(job, tmp_path)}
    assert (files[HEAD_ROLE].path, files[HEAD_ROLE].precision) == ("head.onnx", "fp16")
    assert not (tmp_path / "head.trt_cache").exists()
    assert json.loads((tmp_path / SOURCES_NAME).read_text())["sources"][1]["qdq"] is None


def test_int8_needs_a_trt_recipe(snet146: dict[str, onnx.ModelProto], tmp_path: Path) -> None:
    graph = snet146[HEAD_ROLE]
    job = ExportJob(graphs={HEAD_ROLE: graph}, input_spec=make_input_spec("detect", IMGSZ))
    with pytest.raises(ExportError, match="needs a calibration recipe .profile 'trt'.; pass --calib-data"):
        get_target("trt-int8").export(job, tmp_path)
    other = calibrate(graph, _feeds(graph, 2, seed=1), observer="minmax", profile="openvino")
    with pytest.raises(ExportError, match="derived for profile 'openvino', not 'trt'"):
        get_target("trt-int8").export(ExportJob(graphs={HEAD_ROLE: graph}, input_spec=job.input_spec,
                                                recipes={HEAD_ROLE: other}), tmp_path)
