"""MobileNetV3-Large and -Small (Howard et al., "Searching for MobileNetV3", ICCV 2019).

Layer tables are the paper's Tables 1 and 2; SE blocks squeeze to 1/4 of the expansion width
(Sec. 5.3) and gate with hard-sigmoid, hard-swish replaces ReLU in the second half (Sec. 5.2),
the last 1x1 conv is moved past the pooling (Sec. 5.1). Module names follow torchvision's
``mobilenet_v3_*`` (``features.N.block``, ``fc1``/``fc2``, ``classifier.0``/``.3``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from edgekit.models.layers import ConvBNAct, make_divisible
from edgekit.models.registry import register_model

# "RE" / "HS" in the paper's NL column.
_ACTS: dict[str, type[nn.Module]] = {"RE": nn.ReLU, "HS": nn.Hardswish}


@dataclass(frozen=True)
class Bneck:
    """One row of the paper's layer table: a bottleneck block.

    Args:
        kernel: depthwise kernel size.
        expanded: "exp size", channels after the 1x1 expansion.
        out: output channels.
        se: whether the block has squeeze-and-excite.
        act: "RE" (ReLU) or "HS" (hard-swish).
        stride: depthwise stride.
    """

    kernel: int
    expanded: int
    out: int
    se: bool
    act: str
    stride: int


def _table(*rows: tuple[int, int, int, bool, str, int]) -> tuple[Bneck, ...]:
    return tuple(Bneck(*row) for row in rows)


# Table 1 (Large) and Table 2 (Small): kernel, exp size, #out, SE, NL, s.
LARGE = _table(
    (3, 16, 16, False, "RE", 1), (3, 64, 24, False, "RE", 2), (3, 72, 24, False, "RE", 1),
    (5, 72, 40, True, "RE", 2), (5, 120, 40, True, "RE", 1), (5, 120, 40, True, "RE", 1),
    (3, 240, 80, False, "HS", 2), (3, 200, 80, False, "HS", 1), (3, 184, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1), (3, 480, 112, True, "HS", 1), (3, 672, 112, True, "HS", 1),
    (5, 672, 160, True, "HS", 2), (5, 960, 160, True, "HS", 1), (5, 960, 160, True, "HS", 1),
)
SMALL = _table(
    (3, 16, 16, True, "RE", 2), (3, 72, 24, False, "RE", 2), (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2), (5, 240, 40, True, "HS", 1), (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1), (5, 144, 48, True, "HS", 1), (5, 288, 96, True, "HS", 2),
    (5, 576, 96, True, "HS", 1), (5, 576, 96, True, "HS", 1),
)


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excite with a hard-sigmoid gate, squeezing to 1/4 of ``channels`` (rounded to 8)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        squeeze = make_divisible(channels // 4, 8)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale each channel of ``x`` by its gate."""
        scale = self.fc2(self.relu(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        return x * F.hardsigmoid(scale)


class InvertedResidual(nn.Module):
    """MobileNetV3 bneck: [1x1 expand] -> depthwise kxk -> [SE] -> linear 1x1 project (+ shortcut)."""

    def __init__(self, in_ch: int, spec: Bneck, width_mult: float = 1.0) -> None:
        super().__init__()
        expanded = make_divisible(spec.expanded * width_mult)
        out_ch = make_divisible(spec.out * width_mult)
        act = _ACTS[spec.act]
        self.use_res_connect = spec.stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expanded != in_ch:
            layers.append(ConvBNAct(in_ch, expanded, 1, act=act))
        layers.append(ConvBNAct(expanded, expanded, spec.kernel, spec.stride, groups=expanded, act=act))
        if spec.se:
            layers.append(SqueezeExcitation(expanded))
        layers.append(ConvBNAct(expanded, out_ch, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block (plus the shortcut where the shapes allow it)."""
        out = self.block(x)
        return x + out if self.use_res_connect else out


class MobileNetV3(nn.Module):
    """MobileNetV3 classifier built from a bneck table.

    Args:
        blocks: the bneck rows (``LARGE`` or ``SMALL``).
        last_channel: width of the 1x1 "NBN" conv after pooling (1280 Large, 1024 Small).
        num_classes: size of the output logits.
        width_mult: channel multiplier (paper Table 3 reports 1.0 and 0.75).
        dropout: dropout before the classifier.
    """

    def __init__(
        self,
        blocks: tuple[Bneck, ...],
        last_channel: int,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        in_ch = make_divisible(16 * width_mult)
        layers: list[nn.Module] = [ConvBNAct(3, in_ch, 3, 2, act=nn.Hardswish)]
        for spec in blocks:
            layers.append(InvertedResidual(in_ch, spec, width_mult))
            in_ch = layers[-1].out_channels
        head = 6 * in_ch  # 960 (Large) / 576 (Small): 6x the last bneck's output
        layers.append(ConvBNAct(in_ch, head, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        last_channel = make_divisible(last_channel * width_mult)
        # The paper's "conv2d 1x1, NBN" layers on a 1x1 map are linear layers.
        self.classifier = nn.Sequential(
            nn.Linear(head, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(last_channel, num_classes),
        )
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` for images ``[N, 3, H, W]``."""
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            # The reference TF training used BN decay 0.99 and epsilon 1e-3 (paper Sec. 6.1).
            m.eps, m.momentum = 1e-3, 0.01
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


@register_model(
    "mobilenetv3-large",
    task="classify",
    input_size=(224, 224),
    num_classes=1000,
    source="Howard et al. 2019, Table 3 (V3-Large 1.0: 219M MAdds, 5.4M params)",
    params_m=5.4,
    macs_g=0.219,
)
def mobilenetv3_large(num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2) -> nn.Module:
    """MobileNetV3-Large (paper Table 1)."""
    return MobileNetV3(LARGE, 1280, num_classes, width_mult, dropout)


@register_model(
    "mobilenetv3-small",
    task="classify",
    input_size=(224, 224),
    num_classes=1000,
    source="Howard et al. 2019 (arXiv v5), Table 3 (V3-Small 1.0: 56M MAdds, 2.5M params)",
    params_m=2.5,
    macs_g=0.056,
)
def mobilenetv3_small(num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2) -> nn.Module:
    """MobileNetV3-Small (paper Table 2).

    Table 2 marks an SE on the final 1x1 conv (576); the reference TF code and torchvision have
    none there, and the published 2.5M params only fit without it, so we follow the code.
    Earlier arXiv versions listed 66M MAdds / 2.9M params for a previous Small; v5 is used.
    """
    return MobileNetV3(SMALL, 1024, num_classes, width_mult, dropout)
