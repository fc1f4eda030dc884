"""MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018).

Module names and the state-dict layout follow torchvision's ``mobilenet_v2`` key for key
(``features.N``, ``InvertedResidual.conv``, ``classifier.1``), so its published ImageNet
checkpoints load with ``strict=True``; ``tests/models/data/torchvision_mobilenet_v2_keys.json``
holds the reference layout.
"""

from __future__ import annotations

import torch
from torch import nn

from edgekit.models.layers import ConvBNAct, make_divisible
from edgekit.models.registry import register_model

# Paper Table 2: expansion t, output channels c, repeats n, first stride s.
_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise 3x3 -> linear 1x1 projection, with identity shortcut when shapes match.

    The expansion conv is absent when ``expand_ratio == 1`` (first block), exactly as in
    torchvision, so ``conv`` indices shift there too.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(in_ch * expand_ratio))
        self.use_res_connect = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_ch, hidden, 1, act=nn.ReLU6))
        layers += [
            ConvBNAct(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            # Linear bottleneck: no activation after the projection (paper Sec. 3.2).
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block (plus the shortcut where the shapes allow it)."""
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 classifier.

    Args:
        num_classes: size of the output logits.
        width_mult: channel multiplier; every layer but the last 1x1 conv is scaled, which stays
            at 1280 for multipliers below one (paper Sec. 6.1).
        dropout: dropout before the final linear layer.
    """

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        in_ch = make_divisible(32 * width_mult)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvBNAct(3, in_ch, 3, 2, act=nn.ReLU6)]
        for t, c, n, s in _STAGES:
            out_ch = make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                in_ch = out_ch
        layers.append(ConvBNAct(in_ch, self.last_channel, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.last_channel, num_classes))
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` for images ``[N, 3, H, W]``."""
        x = self.features(x)
        x = torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x)


def _init_weights(model: nn.Module) -> None:
    # The reference initialisation (He fan-out for convs, small normal for the classifier).
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


@register_model(
    "mobilenetv2",
    task="classify",
    input_size=(224, 224),
    num_classes=1000,
    source="Sandler et al. 2018, Table 4 (width 1.0: 3.4M params, 300M MAdds)",
    params_m=3.4,
    macs_g=0.300,
)
def mobilenetv2(num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2) -> nn.Module:
    """MobileNetV2 (width 1.0 by default; ``width_mult=0.75/0.5/...`` for the narrower nets).

    The registered figures are for width 1.0. The narrower widths' published figures
    (0.75: 209M MACs / 2.61M params, 0.5: 97M / 1.95M) are in the official checkpoint table,
    tensorflow/models research/slim/nets/mobilenet/README.md.
    """
    return MobileNetV2(num_classes=num_classes, width_mult=width_mult, dropout=dropout)
