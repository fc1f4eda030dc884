"""Graphs, calibration and onnxruntime helpers shared by the placement and QDQ tests."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.calib.calibrate import calibrate
from edgekit.calib.recipe import QuantRecipe
from edgekit.graph import optimize
from edgekit.models.layers import ConvBNAct
from edgekit.onnx_export import torch_to_onnx

SMALL_SHAPE = (1, 3, 32, 32)


class SmallCNN(nn.Module):
    """Every placement case in a few layers: MaxPool, a two-branch Concat, a depthwise conv,
    a residual Add, a nearest Resize, a ConvTranspose and a Gemm head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = ConvBNAct(3, 16, 3, stride=2)
        self.left = ConvBNAct(16, 16, 1)
        self.right = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16),
                                   ConvBNAct(16, 16, 1))
        self.mix = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32))
        self.up = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.stem(x), 3, 2, 1)
        x = torch.cat([self.left(x), self.right(x)], 1)
        x = F.relu(x + self.mix(x))
        x = F.relu(self.up(F.interpolate(x, scale_factor=2.0, mode="nearest")))
        return self.fc(x.mean((2, 3)))


class Stage1(nn.Module):
    """A two-stage detector's first graph stage (backbone, CEM, RPN, SAM) as a module to export."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.detector.stage1(x)


def settle_batchnorm(module: nn.Module, shape: Sequence[int], seed: int = 0, batches: int = 3) -> nn.Module:
    """Give a randomly initialised net BatchNorm statistics of real activations (unit-scale features).

    With default running statistics an untrained deep net's features fade to ~0 and its logits
    are the classifier's bias: every quantization then "matches" fp32 and the test proves nothing.
    """
    generator = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
    module.train()
    with torch.no_grad():
        for _ in range(batches):
            module(torch.randn(4, *shape[1:], generator=generator))
    return module.eval()


def export_optimized(module: nn.Module, shape: Sequence[int],
                     output_names: Sequence[str] = ("logits",)) -> onnx.ModelProto:
    """Export ``module`` at ``shape`` and run edgekit's graph passes (BN folded, shuffles fused)."""
    example = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    exported = torch_to_onnx(module.eval(), example, output_names=output_names)
    return optimize(exported)[0]


def feeds(shape: Sequence[int], count: int, seed: int, name: str = "images") -> list[dict[str, np.ndarray]]:
    """``count`` seeded standard-normal feed dicts."""
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(count)]


def make_recipe(model: onnx.ModelProto, profile: str, calibration: list[dict[str, np.ndarray]]) -> QuantRecipe:
    """A min/max recipe for ``profile`` from edgekit's calibrator."""
    return calibrate(model, calibration, observer="minmax", profile=profile)


def run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """All outputs of ``model`` on ``feed`` in onnxruntime (CPU, 1 thread)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays, flattened."""
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def ort_default_qdq(model: onnx.ModelProto, calibration: list[dict[str, np.ndarray]],
                    **options: object) -> onnx.ModelProto:
    """onnxruntime's own ``quantize_static`` on ``model``: QDQ, s8s8, its defaults unless overridden."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "qdq.onnx"
        onnx.save(model, src)
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, **options)
        return onnx.load(dst)


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Tensor name -> the node that writes it."""
    return {o: n for n in model.graph.node for o in n.output}


def consumers(model: onnx.ModelProto, name: str) -> list[onnx.NodeProto]:
    """Nodes that read tensor ``name``."""
    return [n for n in model.graph.node if name in n.input]


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    """An initializer's value."""
    return next(onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)
