"""DFANet A and B (Li et al., "DFANet: Deep Feature Aggregation for Real-Time Semantic
Segmentation", CVPR 2019).

One lightweight modified Xception (paper Table 1) is run three times. Each pass ends in an
"FC attention": global pooling, the ImageNet fully-connected layer (1000 outputs) kept from
pre-training and a 1x1 conv back to the feature width, whose output re-weights the last
feature map channel by channel. Features are aggregated two ways:

- sub-network aggregation: the attended output of pass k, upsampled 4x, is the input of
  pass k+1 (passes 2 and 3 have no stem; they start at enc2);
- sub-stage aggregation: every stage of pass k+1 also takes, concatenated to its input, the
  output of pass k at the same resolution.

Each pass therefore works one octave deeper than the one before (pass 1: strides 4-16,
pass 2: 8-32, pass 3: 16-64). The decoder sums the enc2 outputs of the three passes
(1x1 conv-BN-ReLU to 32 channels, upsampled to stride 4), fuses them with a 3x3 conv-BN-ReLU,
adds the three attended outputs (same treatment), classifies with a 1x1 conv and upsamples
4x to the input size.

Table 1, per stage (output width c; each block is three separable convs c/4, c/4, c):

    backbone   conv1     enc2 (x4 blocks)   enc3 (x6)   enc4 (x4)   fc attention
    A          3x3, 8    48                 96          192         fc 1000, 1x1 conv 192
    B          3x3, 8    32                 64          128         fc 1000, 1x1 conv 128

What the paper leaves open we take from the common public reimplementation (SegmenTron,
``segmentron/models/dfanet.py``): blocks are pre-activation Xception blocks (ReLU, separable
conv, BN) with a 1x1-conv shortcut where the shape changes; decoder widths are 32. Our own
choices: the first block of a stage strides in its first depthwise conv; the decoder's fusion
conv is 3x3 (its figure says only "conv"); the attention gate is a sigmoid (the paper names no
non-linearity; a sigmoid keeps the re-weighting bounded, as in SE and BiSeNet's ARM). The
FLOPs pin the fusion conv down: the published A and B figures differ by what the two
backbones differ by, and share a remainder of one 3x3 32-channel conv at stride 4.

Size figures (paper Table 4, 1024x1024 input; A' is A at 512x1024, 1.7 GFLOPs):

- FLOPs are multiply-accumulates: A 3.4 G (ours 3.42 G), B 2.1 G (ours 2.06 G).
- The "Params" column (A 7.8M, B 4.8M) is not a parameter count: Table 1's layers cannot hold
  7.8 M parameters (ours: A 1.82 M, of which the three FC attentions hold 1.16 M; B 1.10 M).
  The same table copies BiSeNet's "5.8M", which is that model's fp32 size in MiB (see
  :mod:`edgekit.models.zoo.bisenet`); as fp32 sizes ours are A 7.3 MB / B 4.4 MB, 6-9% under
  the published values for reasons we cannot attribute, so no parameter figure is registered.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.models.layers import ConvBNAct
from edgekit.models.registry import register_model

STEM_CHANNELS = 8
STAGE_BLOCKS = (4, 6, 4)  # enc2, enc3, enc4
FC_UNITS = 1000  # the ImageNet classifier kept as the attention encoder
DECODER_CHANNELS = 32
NUM_PASSES = 3


@dataclass(frozen=True)
class DFANetConfig:
    """Stage widths (enc2, enc3, enc4) of one backbone variant (Table 1)."""

    widths: tuple[int, int, int]


CONFIGS: dict[str, DFANetConfig] = {
    "a": DFANetConfig(widths=(48, 96, 192)),
    "b": DFANetConfig(widths=(32, 64, 128)),
}


def _resize(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class SeparableConv(nn.Sequential):
    """ReLU, depthwise 3x3 (carries the stride), pointwise 1x1, BN."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.act = nn.ReLU()
        self.dw = nn.Conv2d(in_ch, in_ch, 3, stride, 1, groups=in_ch, bias=False)
        self.pw = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)


class XceptionBlock(nn.Module):
    """Three separable convs (c/4, c/4, c) plus an identity or 1x1-conv-BN shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        mid = out_ch // 4
        self.branch = nn.Sequential(
            SeparableConv(in_ch, mid, stride), SeparableConv(mid, mid), SeparableConv(mid, out_ch)
        )
        self.shortcut: nn.Module = (
            ConvBNAct(in_ch, out_ch, 1, stride, act=None)
            if stride != 1 or in_ch != out_ch
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(x) + self.shortcut(x)


def make_stage(in_ch: int, out_ch: int, blocks: int) -> nn.Sequential:
    """One encoder stage: a stride-2 block, then ``blocks - 1`` stride-1 blocks."""
    layers = [XceptionBlock(in_ch, out_ch, 2)]
    layers += [XceptionBlock(out_ch, out_ch, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class FCAttention(nn.Module):
    """Global pool, fc to 1000, 1x1 conv back to ``channels``, sigmoid; re-weights the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, FC_UNITS)
        self.conv = nn.Conv2d(FC_UNITS, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.fc(torch.flatten(self.pool(x), 1))
        return x * torch.sigmoid(self.conv(v[:, :, None, None]))


class Encoder(nn.Module):
    """One backbone pass: enc2, enc3, enc4 and the FC attention.

    Args:
        in_channels: input width of enc2 (the stem's 8 for pass 1; for later passes the
            previous pass's attended output plus its enc2 output, concatenated).
        widths: output widths of enc2, enc3, enc4.
        aggregate: whether enc3 and enc4 also take the previous pass's stage outputs.
    """

    def __init__(self, in_channels: int, widths: tuple[int, int, int], aggregate: bool) -> None:
        super().__init__()
        extra = widths if aggregate else (0, 0, 0)
        c2, c3, c4 = widths
        self.enc2 = make_stage(in_channels, c2, STAGE_BLOCKS[0])
        self.enc3 = make_stage(c2 + extra[1], c3, STAGE_BLOCKS[1])
        self.enc4 = make_stage(c3 + extra[2], c4, STAGE_BLOCKS[2])
        self.fca = FCAttention(c4)

    def forward(
        self, x: torch.Tensor, previous: list[torch.Tensor] | None = None
    ) -> list[torch.Tensor]:
        """[enc2, enc3, enc4, attended] outputs; ``previous`` is the last pass's list."""
        e2 = self.enc2(x)
        e3 = self.enc3(e2 if previous is None else torch.cat([e2, previous[1]], 1))
        e4 = self.enc4(e3 if previous is None else torch.cat([e3, previous[2]], 1))
        return [e2, e3, e4, self.fca(e4)]


class DFANet(nn.Module):
    """DFANet: three aggregated passes of a modified Xception and a light decoder.

    Args:
        variant: ``"a"`` or ``"b"`` (backbone widths, Table 1).
        num_classes: segmentation classes (19 for Cityscapes).

    ``forward`` returns logits ``[N, num_classes, H, W]`` in both modes (the paper trains
    with the main loss only).
    """

    def __init__(self, variant: str = "a", num_classes: int = 19) -> None:
        super().__init__()
        if variant not in CONFIGS:
            raise ValueError(
                f"DFANet variant '{variant}' does not exist; choose one of {sorted(CONFIGS)}"
            )
        widths = CONFIGS[variant].widths
        c2, _, c4 = widths
        self.conv1 = ConvBNAct(3, STEM_CHANNELS, 3, 2)
        # Pass 2 and 3 take [upsampled attended output of the last pass, its enc2 output].
        self.passes = nn.ModuleList(
            [Encoder(STEM_CHANNELS, widths, aggregate=False)]
            + [Encoder(c4 + c2, widths, aggregate=True) for _ in range(NUM_PASSES - 1)]
        )
        d = DECODER_CHANNELS
        self.low_reduce = nn.ModuleList([ConvBNAct(c2, d, 1) for _ in range(NUM_PASSES)])
        self.high_reduce = nn.ModuleList([ConvBNAct(c4, d, 1) for _ in range(NUM_PASSES)])
        self.fuse = ConvBNAct(d, d, 3)
        self.classifier = nn.Conv2d(d, num_classes, 1)

    def forward_features(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """[enc2, enc3, enc4, attended] of each of the three passes."""
        outs = [self.passes[0](self.conv1(x))]
        for encoder in self.passes[1:]:
            prev = outs[-1]
            # Sub-network aggregation: the attended output, upsampled 4x to the resolution
            # of the last pass's enc2, becomes this pass's input (with enc2 concatenated).
            x = torch.cat([_resize(prev[3], prev[0]), prev[0]], 1)
            outs.append(encoder(x, prev))
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the input resolution."""
        outs = self.forward_features(x)
        ref = outs[0][0]  # stride-4 map every decoder input is resized to
        low = sum(_resize(r(o[0]), ref) for r, o in zip(self.low_reduce, outs))
        high = sum(_resize(r(o[3]), ref) for r, o in zip(self.high_reduce, outs))
        y = self.classifier(self.fuse(low) + high)
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


@register_model(
    "dfanet-a",
    task="segment",
    input_size=(1024, 1024),
    num_classes=19,
    source="Li et al., DFANet, CVPR 2019, Table 4 (DFANet A at 1024x1024: 3.4 GFLOPs)",
    macs_g=3.4,
)
def dfanet_a(num_classes: int = 19) -> nn.Module:
    """DFANet A: backbone A (enc widths 48/96/192), Cityscapes classes.

    Only the FLOPs are registered; the paper's "7.8M" parameters is a file size, not a count
    (see the module docstring).
    """
    return DFANet("a", num_classes)


@register_model(
    "dfanet-b",
    task="segment",
    input_size=(1024, 1024),
    num_classes=19,
    source="Li et al., DFANet, CVPR 2019, Table 4 (DFANet B at 1024x1024: 2.1 GFLOPs)",
    macs_g=2.1,
)
def dfanet_b(num_classes: int = 19) -> nn.Module:
    """DFANet B: backbone B (enc widths 32/64/128), Cityscapes classes.

    Only the FLOPs are registered; the paper's "4.8M" parameters is a file size, not a count
    (see the module docstring).
    """
    return DFANet("b", num_classes)
