"""A small quantized bundle for the report tests: a tiny classifier, calibrated and evaluated on synthetic shapes."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import edgekit
from edgekit.api import ExportResult
from edgekit.data import synthesize
from edgekit.models.layers import ConvBNAct


class TinyNet(nn.Module):
    """Four convs and a linear head, 32x32 input, 6 classes."""

    def __init__(self, num_classes: int = 6) -> None:
        super().__init__()
        self.features = nn.Sequential(ConvBNAct(3, 8, 3, stride=2), ConvBNAct(8, 16, 3, stride=2),
                                      ConvBNAct(16, 16, 3, groups=16), ConvBNAct(16, 24, 1))
        self.fc = nn.Linear(24, num_classes)
        self.input_size = (32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


def tiny_int8_bundle(root: Path) -> ExportResult:
    """TinyNet to onnx-int8 in ``root/bundle``: 10 of 24 synthetic images calibrate, 14 evaluate."""
    data = synthesize("cls", 24, 4201, root / "data", imgsz=48)
    torch.manual_seed(0)
    return edgekit.export(TinyNet(), out=root / "bundle", target="onnx-int8", calib_data=data, calib_samples=10,
                          eval_data=data)
