"""EfficientNet-B0, EfficientNet-Lite0 and EfficientNetV2-B0: MBConv and Fused-MBConv networks.

- EfficientNet-B0: Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
  Networks", ICML 2019, Table 1 (the baseline found by NAS): MBConv blocks with
  squeeze-and-excite and swish.
- EfficientNet-Lite0: the same stages with SE removed and ReLU6 instead of swish
  (tensorflow/tpu models/official/efficientnet/lite/README.md), for integer accelerators.
- EfficientNetV2-B0: Tan & Le, "EfficientNetV2: Smaller Models and Faster Training", ICML 2021:
  Fused-MBConv (the expansion 1x1 and the depthwise conv fused into one regular kxk conv,
  no SE) in the first three stages, MBConv+SE after; stage table ``v2_base_block`` of
  google/automl efficientnetv2/effnetv2_configs.py.

Module names follow torchvision's ``efficientnet_*`` (``features.N.M.block``, SE ``fc1``/``fc2``,
``classifier.1``), so ``efficientnet-b0`` matches torchvision's ``efficientnet_b0`` key for key.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from edgekit.models.layers import ConvBNAct
from edgekit.models.registry import register_model


@dataclass(frozen=True)
class Stage:
    """One row of a stage table: ``repeats`` blocks of one kind.

    Args:
        block: "mb" (MBConv: 1x1 expand, depthwise kxk, SE, 1x1 project) or "fused" (Fused-MBConv).
        expand: expansion ratio of the hidden width over the block input.
        kernel: kernel size of the depthwise (MBConv) or fused (Fused-MBConv) conv.
        stride: stride of the stage's first block.
        in_ch: input channels of the stage's first block.
        out_ch: output channels of every block of the stage.
        repeats: number of blocks.
        se: whether the blocks have squeeze-and-excite (ratio 0.25 of the block input).
    """

    block: str
    expand: int
    kernel: int
    stride: int
    in_ch: int
    out_ch: int
    repeats: int
    se: bool


# EfficientNet paper Table 1: MBConv1 k3x3 16 (x1), MBConv6 k3x3 24 (x2), ... 320 (x1).
B0 = (
    Stage("mb", 1, 3, 1, 32, 16, 1, True),
    Stage("mb", 6, 3, 2, 16, 24, 2, True),
    Stage("mb", 6, 5, 2, 24, 40, 2, True),
    Stage("mb", 6, 3, 2, 40, 80, 3, True),
    Stage("mb", 6, 5, 1, 80, 112, 3, True),
    Stage("mb", 6, 5, 2, 112, 192, 4, True),
    Stage("mb", 6, 3, 1, 192, 320, 1, True),
)
LITE0 = tuple(replace(s, se=False) for s in B0)
# EfficientNetV2 "v2_base_block" (B0 = width 1.0, depth 1.0); the first three stages are fused.
V2_B0 = (
    Stage("fused", 1, 3, 1, 32, 16, 1, False),
    Stage("fused", 4, 3, 2, 16, 32, 2, False),
    Stage("fused", 4, 3, 2, 32, 48, 2, False),
    Stage("mb", 4, 3, 2, 48, 96, 3, True),
    Stage("mb", 6, 3, 1, 96, 112, 5, True),
    Stage("mb", 6, 3, 2, 112, 192, 8, True),
)


class DropPath(nn.Module):
    """Stochastic depth on a residual branch: drops whole samples while training, identity in eval."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Zero the branch for a random ``p`` of the batch and rescale the rest (training only)."""
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        return x * x.new_empty(x.shape[0], 1, 1, 1).bernoulli_(keep) / keep


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excite: global pool, 1x1 reduce (activation), 1x1 expand, sigmoid gate."""

    def __init__(self, channels: int, squeeze: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = act()
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale each channel of ``x`` by its gate."""
        return x * self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))


class _Residual(nn.Module):
    """A ``block`` Sequential with a stochastic-depth shortcut where input and output shapes match."""

    def __init__(self, layers: list[nn.Module], use_res_connect: bool, drop_path: float, out_ch: int) -> None:
        super().__init__()
        self.block = nn.Sequential(*layers)
        self.use_res_connect = use_res_connect
        self.stochastic_depth = DropPath(drop_path)
        self.out_channels = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block (plus the shortcut where the shapes allow it)."""
        out = self.block(x)
        return x + self.stochastic_depth(out) if self.use_res_connect else out


class MBConv(_Residual):
    """Mobile inverted bottleneck: [1x1 expand] -> depthwise kxk -> [SE] -> linear 1x1 project."""

    def __init__(self, in_ch: int, s: Stage, stride: int, act: type[nn.Module], drop_path: float) -> None:
        hidden = in_ch * s.expand
        layers: list[nn.Module] = []
        if hidden != in_ch:
            layers.append(ConvBNAct(in_ch, hidden, 1, act=act))
        layers.append(ConvBNAct(hidden, hidden, s.kernel, stride, groups=hidden, act=act))
        if s.se:
            layers.append(SqueezeExcitation(hidden, max(1, in_ch // 4), act))
        layers.append(ConvBNAct(hidden, s.out_ch, 1, act=None))
        super().__init__(layers, stride == 1 and in_ch == s.out_ch, drop_path, s.out_ch)


class FusedMBConv(_Residual):
    """Fused-MBConv: one regular kxk conv replaces 1x1 expand + depthwise, then a linear 1x1 project.

    With expansion 1 the block is that kxk conv alone (with activation), as in the reference code.
    """

    def __init__(self, in_ch: int, s: Stage, stride: int, act: type[nn.Module], drop_path: float) -> None:
        hidden = in_ch * s.expand
        if hidden == in_ch:
            layers: list[nn.Module] = [ConvBNAct(in_ch, s.out_ch, s.kernel, stride, act=act)]
        else:
            layers = [
                ConvBNAct(in_ch, hidden, s.kernel, stride, act=act),  # fused expansion
                ConvBNAct(hidden, s.out_ch, 1, act=None),  # linear projection
            ]
        super().__init__(layers, stride == 1 and in_ch == s.out_ch, drop_path, s.out_ch)


_BLOCKS: dict[str, type[_Residual]] = {"mb": MBConv, "fused": FusedMBConv}


class EfficientNet(nn.Module):
    """An EfficientNet-style classifier built from a stage table.

    Args:
        stages: the stage table (``B0``, ``LITE0``, ``V2_B0``).
        act: activation of every conv and SE (``nn.SiLU`` = swish, ``nn.ReLU6`` for Lite).
        num_classes: size of the output logits.
        head_ch: width of the final 1x1 conv.
        dropout: dropout before the classifier.
        drop_path: stochastic-depth rate of the last block, linearly smaller for earlier blocks.
        bn_eps: BatchNorm epsilon: 1e-3 as in the reference TF code (Lite, V2); B0 keeps PyTorch's
            1e-5 like torchvision's ``efficientnet_b0``, whose checkpoints it loads.
    """

    def __init__(
        self,
        stages: tuple[Stage, ...],
        act: type[nn.Module],
        num_classes: int = 1000,
        head_ch: int = 1280,
        dropout: float = 0.2,
        drop_path: float = 0.2,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvBNAct(3, stages[0].in_ch, 3, 2, act=act)]
        total, idx = sum(s.repeats for s in stages), 0
        for s in stages:
            blocks: list[nn.Module] = []
            for i in range(s.repeats):
                in_ch, stride = (s.in_ch, s.stride) if i == 0 else (s.out_ch, 1)
                blocks.append(_BLOCKS[s.block](in_ch, s, stride, act, drop_path * idx / total))
                idx += 1
            layers.append(nn.Sequential(*blocks))
        layers.append(ConvBNAct(stages[-1].out_ch, head_ch, 1, act=act))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(head_ch, num_classes))
        _init_weights(self, bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` for images ``[N, 3, H, W]``."""
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _init_weights(model: nn.Module, bn_eps: float) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            m.eps = bn_eps
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            bound = m.out_features**-0.5
            nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)


@register_model(
    "efficientnet-b0",
    task="classify",
    input_size=(224, 224),
    num_classes=1000,
    source="Tan & Le 2019, Table 2 (EfficientNet-B0: 5.3M params, 0.39B FLOPs)",
    params_m=5.3,
    macs_g=0.39,
)
def efficientnet_b0(num_classes: int = 1000, dropout: float = 0.2, drop_path: float = 0.2) -> nn.Module:
    """EfficientNet-B0: MBConv + SE, swish (paper Table 1)."""
    return EfficientNet(B0, nn.SiLU, num_classes, dropout=dropout, drop_path=drop_path)


@register_model(
    "efficientnet-lite0",
    task="classify",
    input_size=(224, 224),
    num_classes=1000,
    source="tensorflow/tpu models/official/efficientnet/lite/README.md (lite0: 4.7M params, 407M MAdds)",
    params_m=4.7,
    macs_g=0.407,
    tolerance=0.10,
)
def efficientnet_lite0(num_classes: int = 1000, dropout: float = 0.2, drop_path: float = 0.2) -> nn.Module:
    """EfficientNet-Lite0: B0's stages without SE, ReLU6 instead of swish.

    Tolerance 0.10: the README's 407M MAdds is 5.4% above the conv+matmul count (385M) of the
    network its code builds (lite/efficientnet_lite_builder.py: B0's block strings with
    ``use_se=False``, ``relu_fn=relu6``, fixed stem/head), which is also what independent ports
    report (d-li14/efficientnet-lite.pytorch: 0.385 G); the paper's B0 figure (0.39B) shows no
    such gap, so the difference lies in how the Lite figures were counted, not in the layers.
    """
    return EfficientNet(LITE0, nn.ReLU6, num_classes, dropout=dropout, drop_path=drop_path, bn_eps=1e-3)


@register_model(
    "efficientnetv2-b0",
    task="classify",
    input_size=(224, 224),
    num_classes=1000,
    source="google/automl efficientnetv2/README.md (EffNetV2-B0: 7.1M params, 0.72B FLOPs at 224)",
    params_m=7.1,
    macs_g=0.72,
)
def efficientnetv2_b0(num_classes: int = 1000, dropout: float = 0.2, drop_path: float = 0.2) -> nn.Module:
    """EfficientNetV2-B0: Fused-MBConv in stages 1-3, MBConv + SE in stages 4-6, swish.

    Chosen over V2-S because it is the V2 variant at edge scale (224 input, 0.72B MACs vs 8.4B
    at 384), it was trained with V1's scaling and preprocessing for a like-for-like comparison
    with B0, and its figures come from the official README.
    """
    return EfficientNet(V2_B0, nn.SiLU, num_classes, dropout=dropout, drop_path=drop_path, bn_eps=1e-3)
