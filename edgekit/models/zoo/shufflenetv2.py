"""ShuffleNetV2 (Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN
Architecture Design", ECCV 2018).

Module names follow torchvision's ``shufflenet_v2_x*_*`` state-dict layout (``conv1.0``,
``stage2.0.branch1.0``, ``conv5.1``, ``fc`` ...), so its published ImageNet checkpoints load
with ``load_state_dict(strict=True)``. The unit takes a depthwise kernel size so that SNet
(ThunderNet, 5x5 depthwise) reuses it with the same key names.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from edgekit.models.layers import channel_shuffle
from edgekit.models.registry import register_model

# Units per stage (stage2, stage3, stage4), the first of each with stride 2: paper Table 5.
STAGE_REPEATS: tuple[int, int, int] = (4, 8, 4)

# Output channels of conv1, stage2..4, conv5 per width multiplier: paper Table 5.
WIDTHS: dict[str, tuple[int, int, int, int, int]] = {
    "0.5": (24, 48, 96, 192, 1024),
    "1.0": (24, 116, 232, 464, 1024),
    "1.5": (24, 176, 352, 704, 1024),
    "2.0": (24, 244, 488, 976, 2048),
}


def _depthwise(channels: int, kernel_size: int, stride: int) -> nn.Conv2d:
    """A bias-free depthwise conv with 'same' padding."""
    return nn.Conv2d(channels, channels, kernel_size, stride, (kernel_size - 1) // 2,
                     groups=channels, bias=False)


class InvertedResidual(nn.Module):
    """The ShuffleNetV2 unit (paper Fig. 3c/3d), torchvision key layout.

    Stride 1: split the channels in half, pass one half through, transform the other
    (1x1 -> depthwise kxk -> 1x1), concat, shuffle. Stride 2: both branches see the full
    input (``branch1``: depthwise kxk -> 1x1; ``branch2`` as above), doubling the channels
    while halving the resolution.

    Args:
        in_ch: input channels.
        out_ch: output channels (even; each branch produces half).
        stride: 1 or 2.
        kernel_size: depthwise kernel size (3 for ShuffleNetV2, 5 for SNet).
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, kernel_size: int = 3) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if out_ch % 2:
            raise ValueError(f"out_ch must be even (two branches of out_ch/2), got {out_ch}")
        if stride == 1 and in_ch != out_ch:
            raise ValueError(f"a stride-1 unit keeps its width: in_ch {in_ch} != out_ch {out_ch}")
        self.stride = stride
        half = out_ch // 2
        # A Python int, so the split exports as one ONNX Split with constant sizes rather
        # than Shape/Gather/Div arithmetic (what ``x.chunk`` traces to).
        self.split = half
        if stride == 2:
            self.branch1 = nn.Sequential(
                _depthwise(in_ch, kernel_size, stride),
                nn.BatchNorm2d(in_ch),
                nn.Conv2d(in_ch, half, 1, bias=False),
                nn.BatchNorm2d(half),
                nn.ReLU(inplace=True),
            )
        else:
            # Present but empty so the attribute set matches torchvision's module.
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(in_ch if stride == 2 else half, half, 1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
            _depthwise(half, kernel_size, stride),
            nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the unit; output has ``out_ch`` channels."""
        if self.stride == 1:
            keep, work = torch.split(x, [self.split, self.split], dim=1)
            out = torch.cat((keep, self.branch2(work)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


def make_stage(in_ch: int, out_ch: int, repeats: int, kernel_size: int = 3) -> nn.Sequential:
    """One stride-2 unit followed by ``repeats - 1`` stride-1 units."""
    units = [InvertedResidual(in_ch, out_ch, 2, kernel_size)]
    units += [InvertedResidual(out_ch, out_ch, 1, kernel_size) for _ in range(repeats - 1)]
    return nn.Sequential(*units)


def conv_bn_relu(in_ch: int, out_ch: int, kernel_size: int, stride: int) -> nn.Sequential:
    """Conv (no bias) -> BN -> ReLU as a Sequential with keys 0/1/2 (torchvision layout)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size, stride, (kernel_size - 1) // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 classifier: conv1, maxpool, stage2-4, conv5, global pool, fc.

    Args:
        widths: output channels of conv1, stage2, stage3, stage4 and conv5.
        num_classes: classifier outputs.
        repeats: units per stage.
    """

    def __init__(
        self,
        widths: Sequence[int],
        num_classes: int = 1000,
        repeats: Sequence[int] = STAGE_REPEATS,
    ) -> None:
        super().__init__()
        if len(widths) != 5 or len(repeats) != 3:
            raise ValueError(f"need 5 widths and 3 repeats, got {list(widths)} and {list(repeats)}")
        c1, c2, c3, c4, c5 = widths
        self.conv1 = conv_bn_relu(3, c1, 3, 2)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.stage2 = make_stage(c1, c2, repeats[0])
        self.stage3 = make_stage(c2, c3, repeats[1])
        self.stage4 = make_stage(c3, c4, repeats[2])
        self.conv5 = conv_bn_relu(c4, c5, 1, 1)
        self.fc = nn.Linear(c5, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` for images ``[N, 3, H, W]``."""
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(x.mean((2, 3)))


_SOURCE = "ShuffleNet V2 (Ma et al., ECCV 2018), Table 5"


@register_model("shufflenetv2-0.5", task="classify", input_size=(224, 224), num_classes=1000,
                source=_SOURCE, params_m=1.4, macs_g=0.041)
def shufflenetv2_0_5(num_classes: int = 1000) -> ShuffleNetV2:
    """ShuffleNetV2 0.5x (41M FLOPs, 1.4M params at 224x224)."""
    return ShuffleNetV2(WIDTHS["0.5"], num_classes)


@register_model("shufflenetv2-1.0", task="classify", input_size=(224, 224), num_classes=1000,
                source=_SOURCE, params_m=2.3, macs_g=0.146)
def shufflenetv2_1_0(num_classes: int = 1000) -> ShuffleNetV2:
    """ShuffleNetV2 1.0x (146M FLOPs, 2.3M params at 224x224)."""
    return ShuffleNetV2(WIDTHS["1.0"], num_classes)


@register_model("shufflenetv2-1.5", task="classify", input_size=(224, 224), num_classes=1000,
                source=_SOURCE, params_m=3.5, macs_g=0.299)
def shufflenetv2_1_5(num_classes: int = 1000) -> ShuffleNetV2:
    """ShuffleNetV2 1.5x (299M FLOPs, 3.5M params at 224x224)."""
    return ShuffleNetV2(WIDTHS["1.5"], num_classes)


@register_model("shufflenetv2-2.0", task="classify", input_size=(224, 224), num_classes=1000,
                source=_SOURCE, params_m=7.4, macs_g=0.591)
def shufflenetv2_2_0(num_classes: int = 1000) -> ShuffleNetV2:
    """ShuffleNetV2 2.0x (591M FLOPs, 7.4M params at 224x224)."""
    return ShuffleNetV2(WIDTHS["2.0"], num_classes)
