"""``edgekit.export`` / ``edgekit export``: zoo and user models to onnx-fp32 bundles that match PyTorch.

Parametrized over the registry: every classifier and segmenter is exported, checked
(``full_check``, opset 17, no BatchNormalization left) and run in onnxruntime against PyTorch
eager on the same input.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import edgekit
from edgekit.api import ExportOptions, export
from edgekit.bundle import PASSES_NAME, read_manifest, verify
from edgekit.cli import main
from edgekit.errors import ExportError, GraphPassError, UnknownTargetError
from edgekit.inputspec import ChannelOrder
from edgekit.models import get_spec, list_models
from edgekit.onnx_export import opset_of

# Exporting a 1024x2048 Cityscapes segmenter takes long on a 2-core CI box; those with more
# than this many input pixels are exported at a quarter of each side (same aspect ratio,
# multiple of 32). Export code paths do not depend on the size.
MAX_TEST_PIXELS = 512 * 512


def _test_size(name: str) -> tuple[int, int]:
    h, w = get_spec(name).input_size
    if h * w <= MAX_TEST_PIXELS:
        return h, w
    return max(32, h // 4 // 32 * 32), max(32, w // 4 // 32 * 32)


def _trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics, as after training, so folding them is really tested."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            c = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            if m.affine:
                m.weight.data.copy_(0.75 + 0.5 * torch.rand(c, generator=g))
                m.bias.data.copy_(0.1 * torch.randn(c, generator=g))
    return model.eval()


def _save(model: nn.Module, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _ort(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def _assert_agrees(got: np.ndarray, expected: np.ndarray) -> None:
    got, expected = got.astype(np.float64), expected.astype(np.float64)
    assert got.shape == expected.shape
    cosine = (got * expected).sum() / (np.linalg.norm(got) * np.linalg.norm(expected))
    max_abs = np.abs(got - expected).max()
    spread = expected.max() - expected.min()
    assert cosine >= 0.99999, cosine
    assert max_abs <= 1e-4 * spread, (max_abs, spread)


EXPORTABLE = list_models(task="classify") + list_models(task="segment")


@pytest.mark.parametrize("name", EXPORTABLE)
def test_zoo_model_exports_and_matches_pytorch(name: str, tmp_path: Path) -> None:
    spec = get_spec(name)
    torch.manual_seed(0)
    model = _trained_like(spec.build())
    size = _test_size(name)
    result = export(name, out=tmp_path / "bundle", weights=_save(model, tmp_path / "w.safetensors"), imgsz=size)

    graph = onnx.load(result.bundle / "model.onnx")
    onnx.checker.check_model(graph, full_check=True)
    assert opset_of(graph) == 17
    assert [n.name for n in graph.graph.node if n.op_type == "BatchNormalization"] == []
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).numpy()
    (got,) = _ort(result.bundle / "model.onnx", {"images": x.numpy()})
    _assert_agrees(got, expected)

    manifest = verify(result.bundle)
    assert manifest == result.manifest and manifest.model == name and manifest.task == spec.task.value
    assert manifest.input.shape == (1, 3, *size) and manifest.num_classes == spec.num_classes
    assert manifest.outputs[0].name == "logits" and manifest.outputs[0].shape == tuple(expected.shape)
    assert manifest.postprocess.kind == {"classify": "topk", "segment": "argmax"}[spec.task.value]


@pytest.mark.parametrize("name", list_models(task="detect"))
def test_detectors_export_as_pipelines(name: str) -> None:
    pytest.skip(f"{name} is a two-stage detector: it exports as a multi-graph pipeline, tested by the "
                "detector pipeline test (tests/test_detector_export.py), not by the single-graph path here")


def test_bundle_files_metadata_and_pass_log(tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"class {i}\n" for i in range(7)))
    result = export("shufflenetv2-0.5", out=tmp_path / "b", imgsz=(64, 64), num_classes=7, labels=labels)
    assert sorted(p.name for p in result.bundle.iterdir()) == ["manifest.json", "model.onnx", PASSES_NAME]
    manifest = read_manifest(result.bundle)
    assert manifest.labels == tuple(f"class {i}" for i in range(7)) and manifest.num_classes == 7
    assert manifest.postprocess.params == {"k": 5, "softmax": True}
    assert manifest.input.resize.value == "shorter-side-crop" and manifest.input.crop_fraction == 0.875
    assert manifest.input.mean == (123.675, 116.28, 103.53) and manifest.target == "onnx-fp32"
    assert {"torch", "onnx", "onnxruntime", "onnxslim"} <= set(manifest.toolchain)
    passes = json.loads((result.bundle / PASSES_NAME).read_text())
    assert list(passes) == ["model"] and passes["model"] == result.passes["model"]
    props = {p.key: p.value for p in onnx.load(result.bundle / "model.onnx").metadata_props}
    assert props["edgekit.model"] == "shufflenetv2-0.5" and json.loads(props["edgekit.labels"])[6] == "class 6"
    assert json.loads(props["edgekit.input"]) == manifest.input.to_dict()
    before, after = result.node_counts["model"]
    assert after < before


def test_preprocessing_overrides_reach_the_manifest(tmp_path: Path) -> None:
    options = ExportOptions(imgsz=(64, 96), mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0), channel_order="bgr",
                            resize="letterbox")
    manifest = export("snet49", out=tmp_path / "b", options=options, top_k=3).manifest
    assert manifest.input.imgsz == (64, 96) and manifest.input.shape == (1, 3, 64, 96)
    assert manifest.input.std == (255.0, 255.0, 255.0) and manifest.input.channel_order.value == "bgr"
    assert manifest.input.resize.value == "letterbox" and manifest.input.crop_fraction == 1.0
    assert manifest.postprocess.params["k"] == 3


def test_dynamic_batch_runs_at_batch_1_and_3(tmp_path: Path) -> None:
    model = _trained_like(get_spec("shufflenetv2-0.5").build())
    result = export(model, out=tmp_path / "b", imgsz=(96, 96), dynamic_batch=True, name="shufflenetv2-0.5-mine")
    assert result.manifest.input.shape == ("batch", 3, 96, 96) and result.manifest.model == "shufflenetv2-0.5-mine"
    assert result.manifest.graphs[0].outputs[0].shape == ("batch", 1000)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 96, 96, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = _ort(result.bundle / "model.onnx", {"images": x.numpy()})
        _assert_agrees(got, expected)


def test_cli_fixed_batch_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    model = _trained_like(get_spec("snet49").build(num_classes=10))
    weights = _save(model, tmp_path / "w.safetensors")
    out = tmp_path / "b"
    code = main(["export", "--model", "snet49", "--num-classes", "10", "--weights", str(weights),
                 "--imgsz", "64", "64", "--batch", "2", "--out", str(out)])
    assert code == 0, capsys.readouterr().out
    assert "model.onnx" in capsys.readouterr().out
    manifest = verify(out)
    assert manifest.input.shape == (2, 3, 64, 64) and manifest.outputs[0].shape == (2, 10)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(x).numpy()
    _assert_agrees(_ort(out / "model.onnx", {"images": x.numpy()})[0], expected)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.InvalidArgument):
        _ort(out / "model.onnx", {"images": x.numpy()[:1]})


USER_NET = """
from torch import nn


def build(num_classes=3):
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, num_classes, 1))
    m.output_names = ("mask_logits",)
    return m


def build_unpadded(num_classes=3):
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, num_classes, 1))
"""


def test_user_model_from_file(tmp_path: Path) -> None:
    from edgekit.usermodel import load_user_model

    net = tmp_path / "tiny.py"
    net.write_text(USER_NET)
    with pytest.raises(ExportError, match=r"shape \[1, 4, 32, 32\]; a classify model returns rank 2. If it is a "
                                          r"segment model, pass --task segment"):
        export(f"{net}:build", out=tmp_path / "b", imgsz=(32, 32), num_classes=4)
    with pytest.raises(ExportError, match="at 30x30; a segment model returns them at the input resolution 32x32"):
        export(f"{net}:build_unpadded", out=tmp_path / "b", imgsz=(32, 32), num_classes=4, task="segment")
    assert list(tmp_path.iterdir()) == [net]

    torch.manual_seed(0)
    reference = _trained_like(load_user_model(f"{net}:build", num_classes=4))
    result = export(f"{net}:build", out=tmp_path / "b", imgsz=(32, 32), num_classes=4, task="segment",
                    weights=_save(reference, tmp_path / "w.safetensors"))
    assert result.manifest.model == "tiny:build" and result.manifest.outputs[0].name == "mask_logits"
    assert result.manifest.postprocess.kind == "argmax" and result.manifest.input.resize.value == "stretch"
    assert result.manifest.outputs[0].shape == (1, 4, 32, 32)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = reference(x).numpy()
    _assert_agrees(_ort(result.bundle / "model.onnx", {"images": x.numpy()})[0], expected)


def test_user_module_without_names_gets_output0(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ExportError, match="no registered input size; pass --imgsz"):
        export(model, out=tmp_path / "b")
    result = export(model, out=tmp_path / "b", imgsz=(16, 16))
    assert result.manifest.outputs[0].name == "output0" and result.manifest.model == "Sequential"
    assert model.training  # the caller's module is not put in eval mode


class _Eigen(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean((2, 3)).reshape(-1, 2, 2)
        return torch.linalg.eigh(m @ m.transpose(1, 2))[0]


def test_unsupported_op_names_the_op_and_the_module(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), _Eigen()))
    with pytest.raises(ExportError) as info:
        export(model, out=tmp_path / "b", imgsz=(16, 16))
    message = str(info.value)
    assert "'aten::linalg_eigh' has no ONNX opset-17 conversion" in message
    assert "in module '1.1' (_Eigen)" in message
    assert list(tmp_path.iterdir()) == []


@torch.library.custom_op("edgekit_test::twice", mutates_args=())
def _twice(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@_twice.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class _CustomOp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _twice(self.fc(x.mean((2, 3))))


def test_custom_op_in_the_top_level_forward(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"'edgekit_test::twice' has no ONNX opset-17 conversion; it is called "
                                          r"in the forward of the top-level _CustomOp"):
        export(_CustomOp(), out=tmp_path / "b", imgsz=(8, 8))


def test_a_failing_pass_leaves_nothing_and_keeps_the_old_bundle(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import edgekit.graph
    from edgekit.graph import runner

    out = tmp_path / "b"
    export("shufflenetv2-0.5", out=out, imgsz=(64, 64))
    old = (out / "manifest.json").read_text()

    ran: list[str] = []

    def broken_pass(model: onnx.ModelProto) -> onnx.ModelProto:
        ran.append("broken_pass")
        raise GraphPassError("fuse_channel_shuffle: cannot rewrite this graph")

    def logged(graph_pass: runner.GraphPass) -> runner.GraphPass:
        def run(model: onnx.ModelProto) -> onnx.ModelProto:
            ran.append(graph_pass.__name__)
            return graph_pass(model)
        run.__name__ = graph_pass.__name__
        return run

    # The real pass order with the third pass failing: two passes have run when it raises.
    passes = (*map(logged, runner.PASSES[:2]), broken_pass, *runner.PASSES[3:])
    monkeypatch.setattr(edgekit.graph, "optimize", lambda model: runner.optimize(model, passes))
    with pytest.raises(GraphPassError, match="cannot rewrite"):
        export("shufflenetv2-0.5", out=out, imgsz=(32, 32))
    assert ran == [runner.PASSES[0].__name__, runner.PASSES[1].__name__, "broken_pass"]
    assert (out / "manifest.json").read_text() == old
    verify(out)
    with pytest.raises(GraphPassError):
        export("shufflenetv2-0.5", out=tmp_path / "new", imgsz=(32, 32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no new bundle, no temporary directory


def test_option_errors(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="--batch 2 and --dynamic-batch exclude each other"):
        ExportOptions(batch=2, dynamic_batch=True)
    with pytest.raises(ExportError, match="unknown resize mode 'squash'; choose one of: stretch, letterbox, "
                                          "shorter-side-crop"):
        ExportOptions(resize="squash")
    assert ExportOptions(channel_order="bgr").channel_order is ChannelOrder.BGR
    with pytest.raises(ExportError, match="unknown export option 'imgsize'. Did you mean 'imgsz'?"):
        export("snet49", out=tmp_path / "b", imgsize=(64, 64))
    with pytest.raises(UnknownTargetError, match="Did you mean 'onnx-fp32'"):
        export("snet49", out=tmp_path / "b", target="onnx-fp23")
    with pytest.raises(ExportError, match="3 labels given but the model outputs 1000 classes"):
        export("snet49", out=tmp_path / "b", imgsz=(32, 32), labels=["a", "b", "c"])
    with pytest.raises(ExportError, match="'snet49' is a classify model; drop --task segment"):
        export("snet49", out=tmp_path / "b", task="segment")
    assert list(tmp_path.iterdir()) == []


def test_cli_errors_are_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["export", "--model", "snet49", "--target", "onnx-fp23", "--out", str(tmp_path / "b")])
    out = capsys.readouterr().out
    assert code == 1 and "UnknownTargetError" in out and "Did you mean 'onnx-fp32'?" in out
    assert "Traceback" not in out
    code = main(["export", "--model", "snet49", "--resize", "squash", "--out", str(tmp_path / "b")])
    out = capsys.readouterr().out
    assert code == 1 and "unknown resize mode 'squash'; choose one of: stretch, letterbox, shorter-side-crop" in out
    assert not (tmp_path / "b").exists()


def test_export_is_public_and_import_stays_light() -> None:
    assert edgekit.export is export and edgekit.ExportOptions is ExportOptions
    code = "import sys, edgekit\nprint('torch' in sys.modules, callable(edgekit.export))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
