"""LPS-Net S/M/L (Zhang et al., "Lightweight and Progressively-Scalable Networks for Semantic
Segmentation", CVPR 2022 / IJCV 2023, arXiv 2207.13600).

A multi-path network built from one unit only: 3x3 conv-BN-ReLU (the paper's finding: on
GPUs a dense 3x3 conv with a width of a large power of two is ~10x more FLOPs-efficient than
a depthwise-separable one). The input is resized to each path's scale r; every path is the
same 5-stage stack (stages 1-4 open with a stride-2 conv, so a path ends at 1/16 of its own
input) with its own weights. After stages 3 and 4 the paths exchange information by
"Bilateral-B" interaction: each path adds the others, bilinearly resized to its own size --
no conv, no attention. The last-stage outputs are resized to the largest path's map,
concatenated, classified by a 1x1 conv and upsampled bilinearly to the input size.

A network is N = {B, C, R}: blocks per stage, channels per stage, path scales (0 = no
path). The variants, grown greedily from a one-path tiny net, are those of the official
code (``YihengZhang-CV/LPS-Net``, ``lpsnet.py``), which measures latency at 1024x2048:

    variant  depth B            width C               resolution R
    S        1, 3, 3, 10, 10    8, 24, 48, 96, 96     3/4, 1/4
    M        1, 3, 3, 10, 10    8, 24, 48, 96, 96     1, 1/4
    L        1, 3, 3, 10, 10    8, 24, 64, 160, 160   1, 1/4

Resizes use ``align_corners=False`` (the official code uses True), per edgekit's contract.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.models.layers import ConvBNAct
from edgekit.models.registry import register_model

STAGE_STRIDES = (2, 2, 2, 2, 1)
# Bilateral interaction after these stages (0-based: stages 3 and 4 of the paper).
INTERACT_AFTER = (2, 3)


@dataclass(frozen=True)
class LPSNetConfig:
    """N = {B, C, R} of one LPS-Net.

    Args:
        depth: 3x3 conv-BN-ReLU blocks in each of the 5 stages.
        width: output channels of each stage.
        resolution: input scale of each path, largest first (paths with scale 0 dropped).
    """

    depth: tuple[int, int, int, int, int]
    width: tuple[int, int, int, int, int]
    resolution: tuple[float, ...]


CONFIGS: dict[str, LPSNetConfig] = {
    "s": LPSNetConfig((1, 3, 3, 10, 10), (8, 24, 48, 96, 96), (3 / 4, 1 / 4)),
    "m": LPSNetConfig((1, 3, 3, 10, 10), (8, 24, 48, 96, 96), (1.0, 1 / 4)),
    "l": LPSNetConfig((1, 3, 3, 10, 10), (8, 24, 64, 160, 160), (1.0, 1 / 4)),
}


def _resize(x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def make_path(depth: tuple[int, ...], width: tuple[int, ...]) -> nn.ModuleList:
    """The 5 stages of one path, each a Sequential of 3x3 conv-BN-ReLU blocks."""
    stages = []
    in_ch = 3
    for blocks, out_ch, stride in zip(depth, width, STAGE_STRIDES):
        layers = [ConvBNAct(in_ch, out_ch, 3, stride)]
        layers += [ConvBNAct(out_ch, out_ch, 3) for _ in range(blocks - 1)]
        stages.append(nn.Sequential(*layers))
        in_ch = out_ch
    return nn.ModuleList(stages)


def bilateral_interaction(feats: list[torch.Tensor]) -> list[torch.Tensor]:
    """Bilateral-B: every path adds every other path, resized to its own size."""
    return [
        sum((_resize(other, x.shape[-2:]) for j, other in enumerate(feats) if j != i), x)
        for i, x in enumerate(feats)
    ]


class LPSNet(nn.Module):
    """LPS-Net from an {B, C, R} configuration.

    Args:
        config: depth, width and path scales.
        num_classes: segmentation classes (19 for Cityscapes).

    ``forward`` returns logits ``[N, num_classes, H, W]`` in both modes (no auxiliary heads).
    """

    def __init__(self, config: LPSNetConfig, num_classes: int = 19) -> None:
        super().__init__()
        scales = tuple(r for r in config.resolution if r > 0)
        if not scales or list(scales) != sorted(scales, reverse=True):
            raise ValueError(
                f"path scales must be positive and descending, got {config.resolution}"
            )
        self.scales = scales
        self.paths = nn.ModuleList([make_path(config.depth, config.width) for _ in scales])
        self.head = nn.Conv2d(config.width[-1] * len(scales), num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at the input resolution."""
        h, w = x.shape[-2:]
        feats = [_resize(x, (int(h * r), int(w * r))) for r in self.scales]
        for idx in range(len(STAGE_STRIDES)):
            feats = [path[idx](f) for path, f in zip(self.paths, feats)]
            if len(feats) > 1 and idx in INTERACT_AFTER:
                feats = bilateral_interaction(feats)
        size = feats[0].shape[-2:]
        y = self.head(torch.cat([_resize(f, size) for f in feats], dim=1))
        return F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)


# Published size figures: none registered. The sources we could read (abstract, official code
# and README, PaddleSeg's port) give FPS and mIoU but no params/FLOPs for S/M/L, and the
# paper's tables were out of reach. Our counts at 1024x2048: S 3.38 M params / 10.4 G MACs,
# M 3.38 M / 17.7 G, L 9.16 M / 43.8 G (S has M's layers; its first path runs at 3/4 scale).
_SOURCE = ("Zhang et al., LPS-Net, CVPR 2022 (arXiv 2207.13600); N={B,C,R} from the official "
           "code (YihengZhang-CV/LPS-Net lpsnet.py); no published params/FLOPs found")


def _lpsnet(variant: str, num_classes: int) -> nn.Module:
    return LPSNet(CONFIGS[variant], num_classes)


@register_model("lpsnet-s", task="segment", input_size=(1024, 2048), num_classes=19, source=_SOURCE)
def lpsnet_s(num_classes: int = 19) -> nn.Module:
    """LPS-Net-S: two paths at 3/4 and 1/4 scale, widths up to 96 (no published size figure)."""
    return _lpsnet("s", num_classes)


@register_model("lpsnet-m", task="segment", input_size=(1024, 2048), num_classes=19, source=_SOURCE)
def lpsnet_m(num_classes: int = 19) -> nn.Module:
    """LPS-Net-M: two paths at full and 1/4 scale, widths up to 96 (no published size figure)."""
    return _lpsnet("m", num_classes)


@register_model("lpsnet-l", task="segment", input_size=(1024, 2048), num_classes=19, source=_SOURCE)
def lpsnet_l(num_classes: int = 19) -> nn.Module:
    """LPS-Net-L: two paths at full and 1/4 scale, widths up to 160 (no published size figure)."""
    return _lpsnet("l", num_classes)
