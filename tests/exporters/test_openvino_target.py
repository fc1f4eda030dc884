"""The OpenVINO targets: IR numerics vs PyTorch (fp32, fp16) and vs onnxruntime on the same QDQ ONNX (int8)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import openvino as ov
import pytest
import torch
from torch import nn

from edgekit.api import ExportOptions, get_pipeline, resolve_model
from edgekit.bundle import GraphFile
from edgekit.calib.calibrate import calibrate
from edgekit.detector_export import STAGE1_ROLE, Stage1, detector_to_onnx
from edgekit.errors import ExportError
from edgekit.exporters.openvino import cosine
from edgekit.exporters.registry import ExportJob, get_spec, get_target
from edgekit.inputspec import InputSpec, make_input_spec
from edgekit.models import get_spec as get_model_spec
from edgekit.runtimes.backends import create_backend
from lively import lively

F32 = {"INFERENCE_PRECISION_HINT": "f32"}
# Ops a quantizer passes through on NNCF's producer side (profile "openvino").
COMMUTING = frozenset({"MaxPool", "Concat", "Reshape", "StridedSlice", "Slice", "Split", "VariadicSplit", "Transpose",
                       "ShuffleChannels"})


@dataclass
class Case:
    """An optimized fp32 graph, the torch module it came from, and an input."""

    role: str
    graph: onnx.ModelProto
    module: nn.Module
    example: np.ndarray
    spec: InputSpec


def _single_graph_case(name: str, imgsz: tuple[int, int]) -> Case:
    torch.manual_seed(0)
    opts = ExportOptions(imgsz=imgsz)
    source = resolve_model(name, opts)
    lively(source.module)
    spec = make_input_spec(source.task, imgsz)
    plan = get_pipeline(source.task)(source, spec, opts)
    onnx.helper.set_model_props(plan.graphs["model"], {"edgekit.model": name, "edgekit.role": "model"})
    return Case("model", plan.graphs["model"], source.module, plan.examples["model"][0].numpy(), spec)


def _stage1_case(name: str, imgsz: tuple[int, int]) -> Case:
    torch.manual_seed(0)
    detector = lively(get_model_spec(name).build())
    example = np.random.default_rng(0).standard_normal((1, 3, *imgsz)).astype(np.float32)
    return Case(STAGE1_ROLE, detector_to_onnx(detector, imgsz).stage1, Stage1(detector).eval(), example,
                make_input_spec("detect", imgsz))


CASES = {
    "classifier": lambda: _single_graph_case("shufflenetv2-1.0", (64, 64)),
    "segmenter": lambda: _single_graph_case("lpsnet-s", (64, 128)),
    "detector-stage1": lambda: _stage1_case("thundernet-snet49", (160, 160)),
}


@functools.cache
def get_case(name: str) -> Case:
    """Each case is traced and optimized once per test session."""
    return CASES[name]()


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return get_case(request.param)


def _torch_outputs(case: Case) -> list[np.ndarray]:
    with torch.no_grad():
        out = case.module(torch.from_numpy(case.example))
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def _export(case: Case, target: str, out: Path, recipes: dict | None = None) -> tuple[Path, GraphFile]:
    job = ExportJob(graphs={case.role: case.graph}, input_spec=case.spec, recipes=recipes or {})
    (graph_file,) = get_target(target).export(job, out)
    assert graph_file.path == f"{case.role}.xml" and (out / f"{case.role}.bin").is_file()
    return out / graph_file.path, graph_file


def test_openvino_targets_are_registered() -> None:
    assert [get_spec(f"openvino-{p}").precisions[0].value for p in ("fp32", "fp16", "int8")] == ["fp32", "fp16", "int8"]
    assert get_spec("openvino-int8").quant_profile == "openvino"
    assert get_spec("openvino-fp32").extra == "openvino" and get_spec("openvino-fp32").available


def test_fp32_ir_matches_pytorch(case: Case, tmp_path: Path) -> None:
    xml, _ = _export(case, "openvino-fp32", tmp_path)
    compiled = ov.Core().compile_model(str(xml), "CPU", F32)
    result = compiled({case.graph.graph.input[0].name: case.example})
    expected = _torch_outputs(case)
    for port, want in zip(compiled.outputs, expected):
        assert cosine(result[port], want) >= 0.9999, (port.get_any_name(), cosine(result[port], want))
    # fp32 weights stay fp32 in the .bin
    assert {c.get_element_type().get_type_name() for c in ov.Core().read_model(str(xml)).get_ops()
            if c.get_type_name() == "Constant" and c.get_element_type().is_real()} == {"f32"}


def test_fp32_ir_through_the_runtime_runs_at_f32(case: Case, tmp_path: Path) -> None:
    """The manifest's precision makes the runtime set INFERENCE_PRECISION_HINT=f32 (bf16 on AMX CPUs otherwise)."""
    xml, graph_file = _export(case, "openvino-fp32", tmp_path)
    assert graph_file.precision == "fp32"
    backend = create_backend("openvino", xml, graph_file)
    assert backend.settings["inference_precision"] == "<Type: 'float32'>"
    got = backend.run({case.graph.graph.input[0].name: case.example})
    for tensor, want in zip(graph_file.outputs, _torch_outputs(case)):
        assert cosine(got[tensor.name], want) >= 0.9999


def test_fp16_ir_compresses_weights_and_stays_close(case: Case, tmp_path: Path) -> None:
    xml, graph_file = _export(case, "openvino-fp16", tmp_path)
    assert graph_file.precision == "fp16"
    assert "f16" in {c.get_element_type().get_type_name() for c in ov.Core().read_model(str(xml)).get_ops()
                     if c.get_type_name() == "Constant"}
    assert (xml.with_suffix(".bin").stat().st_size <
            sum(t.ByteSize() for t in case.graph.graph.initializer) * 0.6)
    compiled = ov.Core().compile_model(str(xml), "CPU")  # the runtime's config for fp16: the plugin's default
    result = compiled({case.graph.graph.input[0].name: case.example})
    for port, want in zip(compiled.outputs, _torch_outputs(case)):
        assert cosine(result[port], want) >= 0.999, (port.get_any_name(), cosine(result[port], want))


def _traces_to_fake_quantize(output: ov.Output) -> bool:
    node = output.get_node()
    if node.get_type_name() == "FakeQuantize":
        return True
    if node.get_type_name() not in COMMUTING:
        return False
    data = range(node.get_input_size()) if node.get_type_name() == "Concat" else range(1)
    return all(_traces_to_fake_quantize(node.input_value(i)) for i in data)


@pytest.mark.parametrize("name", ["classifier", "detector-stage1"])
def test_int8_ir_has_fake_quantize_on_every_conv_and_agrees_with_onnxruntime(name: str, tmp_path: Path) -> None:
    case = get_case(name)
    rng = np.random.default_rng(1)
    feeds = [{case.graph.graph.input[0].name: rng.standard_normal(case.example.shape).astype(np.float32)}
             for _ in range(4)]
    recipe = calibrate(case.graph, feeds, observer="minmax", profile="openvino")
    xml, graph_file = _export(case, "openvino-int8", tmp_path, recipes={case.role: recipe})
    assert graph_file.precision == "int8"
    model = ov.Core().read_model(str(xml))
    convs = [n for n in model.get_ordered_ops() if n.get_type_name() in ("Convolution", "GroupConvolution")]
    assert len(convs) == sum(n.op_type == "Conv" for n in case.graph.graph.node)
    for conv in convs:
        assert _traces_to_fake_quantize(conv.input_value(0)), conv.get_friendly_name()
        weight = conv.input_value(1).get_node()
        while weight.get_type_name() != "Constant":  # int8 codes -> Convert -> Multiply (scales) [-> Reshape]
            weight = weight.input_value(0).get_node()
        assert weight.get_element_type().get_type_name() == "i8", conv.get_friendly_name()
    cos = float(model.get_rt_info(["edgekit", "ort_qdq_cosine"]).astype(str))
    assert cos >= 0.99
    assert model.get_rt_info(["edgekit", "recipe_hash"]).astype(str) == recipe.content_hash()
    assert (tmp_path / "recipe.json").is_file()


def test_ir_carries_the_onnx_metadata(tmp_path: Path) -> None:
    case = get_case("classifier")
    model = ov.Core().read_model(str(_export(case, "openvino-fp32", tmp_path)[0]))
    assert model.get_rt_info(["edgekit", "model"]).astype(str) == "shufflenetv2-1.0"


def test_int8_refuses_a_missing_or_foreign_recipe(tmp_path: Path) -> None:
    case = get_case("classifier")
    job = ExportJob(graphs={case.role: case.graph}, input_spec=case.spec)
    with pytest.raises(ExportError, match="needs a calibration recipe .profile 'openvino'.; pass --calib-data"):
        get_target("openvino-int8").export(job, tmp_path)
    feeds = [{case.graph.graph.input[0].name: case.example}]
    trt = calibrate(case.graph, feeds, observer="minmax", profile="trt")
    with pytest.raises(ExportError, match="derived for profile 'trt', not 'openvino'"):
        get_target("openvino-int8").export(ExportJob(graphs={case.role: case.graph}, input_spec=case.spec,
                                                     recipes={case.role: trt}), tmp_path)


def test_strided_channel_halves_reach_openvino_as_a_shuffle(tmp_path: Path) -> None:
    """fuse_channel_shuffle's even/odd Slices become Reshape/Transpose/Reshape + Split: the same numbers, and
    OpenVINO's ShuffleChannels + VariadicSplit instead of channel-strided StridedSlices (2.4x slower INT8 IR)."""
    import onnxruntime as ort

    from edgekit.exporters.openvino import onnx_to_openvino, strided_halves_to_shuffle

    graph = get_case("classifier").graph
    slices = sum(n.op_type == "Slice" for n in graph.graph.node)
    rewritten = strided_halves_to_shuffle(graph)
    onnx.checker.check_model(rewritten)
    assert slices > 0 and not any(n.op_type == "Slice" for n in rewritten.graph.node)
    assert sum(n.op_type == "Split" for n in rewritten.graph.node) == slices // 2
    x = {graph.graph.input[0].name: np.random.default_rng(0).standard_normal(
        [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]).astype(np.float32)}
    before = ort.InferenceSession(graph.SerializeToString()).run(None, x)
    after = ort.InferenceSession(rewritten.SerializeToString()).run(None, x)
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    ops = {n.get_type_name() for n in onnx_to_openvino(graph).get_ops()}
    assert "ShuffleChannels" in ops and "StridedSlice" not in ops and "Slice" not in ops
