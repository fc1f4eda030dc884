"""HBONet (Li, Zhou, Yao, "HBONet: Harmonious Bottleneck on Two Orthogonal Dimensions", ICCV 2019).

A MobileNetV2 backbone whose middle bottlenecks are Harmonious Bottlenecks (HBO): the block
contracts space (stride-2 depthwise 5x5) while it expands channels (1x1), processes at the
low resolution, contracts channels back to half the output width, expands space again
(nearest 2x upsampling), adds part of the input and refines with a depthwise 5x5; the other
output half is the input passed through (paper Fig. 2, Sec. 3). Stage table, widths and the
pooling/slicing details follow the authors' code (github.com/d-li14/HBONet, the "2x" main
model), and module names follow that code's state-dict layout, so its released checkpoints
(``hbonet_1_0.pth`` ...) load with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from edgekit.models.layers import ConvBNAct, make_divisible
from edgekit.models.registry import register_model


def _conv_bn(in_ch: int, out_ch: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(out_ch)]


class InvertedResidual(nn.Module):
    """MobileNetV2 bottleneck in the authors' flat layout (``conv.0`` ... ``conv.7``)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = round(in_ch * expand_ratio)
        self.identity = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [*_conv_bn(in_ch, hidden, 1), nn.ReLU6(inplace=True)]
        layers += [*_conv_bn(hidden, hidden, 3, stride, hidden), nn.ReLU6(inplace=True)]
        layers += _conv_bn(hidden, out_ch, 1)  # linear projection
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block (plus the shortcut where the shapes allow it)."""
        return x + self.conv(x) if self.identity else self.conv(x)


class HarmoniousBottleneck(nn.Module):
    """The HBO block with 2x spatial contraction/expansion.

    ``conv``: depthwise 5x5 stride 2 (linear) -> 1x1 expand (ReLU6) -> depthwise 3x3 (ReLU6)
    -> 1x1 to ``out_ch // 2`` (linear), all at half resolution.

    Stride 1: the first ``out_ch // 2`` input channels plus the upsampled branch go through a
    linear depthwise 5x5 (``upconv``); the last ``out_ch - out_ch // 2`` input channels are
    concatenated in front unchanged. Stride 2: the branch is already at the output
    resolution, so there is no upsampling; the passed-through channels are 2x2 average pooled.
    The block needs ``in_ch >= out_ch - out_ch // 2`` (true for every stage of the table).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"HBO block stride must be 1 or 2, got {stride}")
        hidden = in_ch * expand_ratio
        self.stride = stride
        self.half = out_ch // 2
        # The passed-through channels are the input's last out_ch - out_ch // 2 (a fixed slice).
        self.skip_from = in_ch - (out_ch - out_ch // 2)
        if self.skip_from < 0:
            raise ValueError(f"HBO block needs in_ch >= out_ch - out_ch // 2, got {in_ch} -> {out_ch}")
        self.conv = nn.Sequential(
            *_conv_bn(in_ch, in_ch, 5, 2, in_ch),  # spatial contraction
            *_conv_bn(in_ch, hidden, 1), nn.ReLU6(inplace=True),  # channel expansion
            *_conv_bn(hidden, hidden, 3, 1, hidden), nn.ReLU6(inplace=True),
            *_conv_bn(hidden, self.half, 1),  # channel contraction
        )
        if stride == 1:
            self.upconv = nn.Sequential(*_conv_bn(self.half, self.half, 5, 1, self.half))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate the passed-through input channels and the HBO branch."""
        left = x[:, self.skip_from :]
        if self.stride == 2:
            return torch.cat((F.avg_pool2d(left, 2), self.conv(x)), dim=1)
        # Spatial expansion back to the input resolution: nearest 2x, as in the authors' code.
        up = F.interpolate(self.conv(x), scale_factor=2.0, mode="nearest")
        return torch.cat((left, self.upconv(x[:, : self.half] + up)), dim=1)


# Stages of the main (2x) HBONet: expansion t, channels c, repeats n, first stride s, block.
# "proj" is a linear 1x1 conv + BN between the HBO and the last MobileNetV2 stages. Widths are
# rounded to multiples of 8 (20 -> 24, 36 -> 40), as in the authors' code and checkpoints.
_STAGES: tuple[tuple[int, int, int, int, str], ...] = (
    (1, 20, 1, 1, "ir"),
    (2, 36, 1, 1, "hbo"),
    (2, 72, 3, 2, "hbo"),
    (2, 96, 4, 2, "hbo"),
    (2, 192, 4, 2, "hbo"),
    (2, 288, 1, 1, "hbo"),
    (0, 144, 1, 1, "proj"),
    (6, 200, 2, 2, "ir"),
    (6, 400, 1, 1, "ir"),
)


def _projection(in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> nn.Module:
    # Linear 1x1 conv + BN (stride and expansion unused: a plain channel projection).
    return ConvBNAct(in_ch, out_ch, 1, act=None)


_BLOCKS: dict[str, Callable[[int, int, int, int], nn.Module]] = {
    "ir": InvertedResidual,
    "hbo": HarmoniousBottleneck,
    "proj": _projection,
}
# The authors round widths to multiples of 8, except for these narrow multipliers.
_DIVISORS: dict[float, int] = {0.1: 4, 0.25: 2, 0.5: 2}


class HBONet(nn.Module):
    """HBONet classifier.

    Args:
        num_classes: size of the output logits.
        width_mult: channel multiplier (paper Table 2: 1.0, 0.8, 0.5, 0.35, 0.25, 0.1); the
            final 1x1 conv stays at 1600 channels unless the multiplier exceeds one.

    Inputs must have sides divisible by 32: the stride-1 HBO blocks upsample by exactly 2.
    """

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        div = _DIVISORS.get(width_mult, 8)
        in_ch = make_divisible(32 * width_mult, div)
        layers: list[nn.Module] = [ConvBNAct(3, in_ch, 3, 2, act=nn.ReLU6)]
        for t, c, n, s, kind in _STAGES:
            out_ch = make_divisible(c * width_mult, div)
            for i in range(n):
                layers.append(_BLOCKS[kind](in_ch, out_ch, s if i == 0 else 1, t))
                in_ch = out_ch
        self.features = nn.Sequential(*layers)
        last = make_divisible(1600 * width_mult, div) if width_mult > 1.0 else 1600
        self.conv = ConvBNAct(in_ch, last, 1, act=nn.ReLU6)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` for images ``[N, 3, H, W]``."""
        x = self.avgpool(self.conv(self.features(x)))
        return self.classifier(torch.flatten(x, 1))


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


@register_model(
    "hbonet",
    task="classify",
    input_size=(224, 224),
    num_classes=1000,
    source="Li et al. ICCV 2019, Table 2 (HBONet 1.0: 305 MFLOPs); params of the official "
    "hbonet_1_0 checkpoint, 4.54M (OpenVINO Open Model Zoo hbonet-1.0)",
    params_m=4.54,
    macs_g=0.305,
)
def hbonet(num_classes: int = 1000, width_mult: float = 1.0) -> nn.Module:
    """HBONet, width 1.0 by default (``width_mult`` as in the paper's Table 2).

    The paper's "FLOPs" are multiply-adds. Its tables give no parameter counts; the figure used
    is that of the authors' released width-1.0 model as listed by OpenVINO's Open Model Zoo.
    """
    return HBONet(num_classes=num_classes, width_mult=width_mult)
