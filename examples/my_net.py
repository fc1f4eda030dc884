"""A small network of your own, to export with edgekit (see byom_export.py).

Nothing here imports edgekit: any ``nn.Module`` built by a function works. Two optional
attributes tell the exporter what the module alone cannot: ``input_size`` (height, width)
when you do not pass ``--imgsz``, and ``output_names`` for the graph outputs.

    edgekit export --model examples/my_net.py:build --num-classes 10 --out runs/my_net
"""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(in_ch: int, out_ch: int, kernel_size: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias: the BatchNorm has one) then BatchNorm."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    )


class ShuffleBlock(nn.Module):
    """Grouped 1x1 -> channel shuffle -> depthwise 3x3 -> grouped 1x1, with a residual add.

    The grouped convolutions only mix channels inside a group; the shuffle interleaves the
    groups so the next grouped conv sees channels from all of them (ShuffleNet v1).
    """

    def __init__(self, channels: int, groups: int = 2) -> None:
        super().__init__()
        self.groups = groups
        self.reduce = conv_bn(channels, channels, groups=groups)
        self.depthwise = conv_bn(channels, channels, 3, groups=channels)
        self.expand = conv_bn(channels, channels, groups=groups)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.reduce(x))
        n, c, h, w = y.shape
        y = y.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)
        y = self.expand(self.depthwise(y))
        return self.act(x + y)


class MyNet(nn.Module):
    """Stem, two shuffle blocks at each of two resolutions, global pooling, linear classifier."""

    input_size = (96, 96)
    output_names = ("scores",)

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, width, 3, stride=2), nn.ReLU())
        self.stage1 = nn.Sequential(ShuffleBlock(width), ShuffleBlock(width))
        self.down = nn.Sequential(conv_bn(width, 2 * width, 3, stride=2), nn.ReLU())
        self.stage2 = nn.Sequential(ShuffleBlock(2 * width, groups=4), ShuffleBlock(2 * width, groups=4))
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.fc(x.mean((2, 3)))


def build(num_classes: int = 10) -> MyNet:
    """The factory edgekit calls: ``examples/my_net.py:build``."""
    return MyNet(num_classes)
