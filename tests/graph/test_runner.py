"""optimize: the declared pass order on a small ShuffleNetV2-like network exported from torch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx_cases import GraphBuilder, assert_matches_torch, export_torch, ops, reshape_ranks
from torch import nn

from edgekit.graph import PASSES, PassRecord, cleanup, fold_batchnorm, optimize
from edgekit.models.layers import ConvBNAct, channel_shuffle


def _depthwise(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False)


class _Unit(nn.Module):
    """A ShuffleNetV2 unit (stride 1: split in half; stride 2: two branches), BN everywhere."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        half = cout // 2
        self.stride = stride
        if stride == 2:
            self.branch1 = nn.Sequential(_depthwise(cin, 2), nn.BatchNorm2d(cin), ConvBNAct(cin, half, 1))
        self.branch2 = nn.Sequential(
            ConvBNAct(cin if stride == 2 else half, half, 1),
            _depthwise(half, stride), nn.BatchNorm2d(half),
            ConvBNAct(half, half, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            keep, work = x.chunk(2, dim=1)
            out = torch.cat((keep, self.branch2(work)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class _TinyShuffleNet(nn.Module):
    """Input BN (before a padded conv: stays as Mul/Add), stem, four units, BN after the last
    shuffle (folds into the head conv), classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.input_bn = nn.BatchNorm2d(3)
        self.stem = ConvBNAct(3, 16, 3, 2)
        self.units = nn.Sequential(_Unit(16, 28, 2), _Unit(28, 28, 1), _Unit(28, 28, 1), _Unit(28, 56, 2))
        self.head_bn = nn.BatchNorm2d(56)
        self.head = ConvBNAct(56, 64, 1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.head_bn(self.units(self.stem(self.input_bn(x)))))
        return self.fc(x.mean((2, 3)))


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    model = _TinyShuffleNet()
    for m in model.modules():  # statistics far from the identity, so folding errors would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.mark.parametrize("torch_folding", [True, False])
def test_tiny_shufflenet_ends_without_bn_transpose_or_shuffle_reshape(torch_folding: bool) -> None:
    model = _tiny()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    exported = export_torch(model, x, fold=torch_folding)
    assert ops(exported)["Transpose"] == 4
    optimized, records = optimize(exported)
    onnx.checker.check_model(optimized, full_check=True)
    counts = ops(optimized)
    assert counts["BatchNormalization"] == counts["Transpose"] == counts["Gather"] == 0
    assert 5 not in reshape_ranks(optimized)
    assert counts["Mul"] == counts["Add"] == 1  # only the input BN, in front of a padded conv
    with torch.no_grad():
        expected = model(x).numpy()
    assert_matches_torch(optimized, expected, x.numpy())
    assert [r.name for r in records] == [p.__name__ for p in PASSES]
    folded = records[0]
    assert folded.before.get("BatchNormalization", 0) == ops(exported)["BatchNormalization"]
    assert folded.after.get("BatchNormalization", 0) == 0
    if not torch_folding:  # torch folds conv+BN itself unless told not to
        assert f"removed {ops(exported)['BatchNormalization']} BatchNormalization" in folded.description
    shuffle = records[2]
    assert "4 Transpose" in shuffle.description and "8 Reshape" in shuffle.description


def test_pass_record_to_dict_is_json() -> None:
    g = GraphBuilder(1)
    x = g.input("x", [1, 3, 4, 4])
    model = g.model([g.bn(g.conv(x, 3, 4), 4)])
    out, records = optimize(model, passes=(fold_batchnorm, cleanup))
    assert ops(out) == {"Conv": 1}
    record = records[0]
    assert isinstance(record, PassRecord)
    data = json.loads(json.dumps(record.to_dict()))
    assert data["name"] == "fold_batchnorm"
    assert data["before"] == {"BatchNormalization": 1, "Conv": 1}
    assert data["after"] == {"Conv": 1}
    assert data["description"] == "removed 1 BatchNormalization"
    assert records[1].description == "no node added or removed"
    assert np.isfinite(data["elapsed_ms"])
