"""SqueezeNet 1.0 (Iandola et al., "SqueezeNet: AlexNet-level accuracy with 50x fewer parameters
and <0.5MB model size", arXiv:1602.07360, 2016).

Fire modules: a 1x1 "squeeze" conv feeds a 1x1 and a 3x3 "expand" conv whose outputs are
concatenated (paper Sec. 3.2, Fig. 1); layer widths from Table 1. There is no BatchNorm
(the network predates its use here): every conv has a bias and a ReLU, and the classifier is
a 1x1 conv to the classes followed by global average pooling. Module names follow
torchvision's ``squeezenet1_0`` (``features.N.squeeze`` / ``expand1x1`` / ``expand3x3``,
``classifier.1``), so its checkpoints load with ``strict=True``.
"""

from __future__ import annotations

import torch
from torch import nn

from edgekit.models.registry import register_model


class Fire(nn.Module):
    """Fire module: squeeze 1x1 (s1x1) -> concat(expand 1x1 (e1x1), expand 3x3 (e3x3)), all ReLU."""

    def __init__(self, in_ch: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_ch, squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Squeeze, then concatenate both expand branches on the channel axis."""
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat(
            (self.expand1x1_activation(self.expand1x1(x)), self.expand3x3_activation(self.expand3x3(x))), 1
        )


# Table 1: (s1x1, e1x1, e3x3) of fire2 ... fire9; "M" = 3x3/2 max pool.
_LAYOUT: tuple[tuple[int, int, int] | str, ...] = (
    "M",
    (16, 64, 64), (16, 64, 64), (32, 128, 128),
    "M",
    (32, 128, 128), (48, 192, 192), (48, 192, 192), (64, 256, 256),
    "M",
    (64, 256, 256),
)


class SqueezeNet(nn.Module):
    """SqueezeNet 1.0 classifier.

    Args:
        num_classes: size of the output logits (channels of conv10).
        dropout: dropout after fire9 (paper Sec. 3.3: 50%).
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 96, 7, stride=2), nn.ReLU(inplace=True)]
        in_ch = 96
        for item in _LAYOUT:
            if item == "M":
                # ceil_mode reproduces the original Caffe pooling arithmetic (and its checkpoints).
                layers.append(nn.MaxPool2d(3, stride=2, ceil_mode=True))
            else:
                s, e1, e3 = item
                layers.append(Fire(in_ch, s, e1, e3))
                in_ch = e1 + e3
        self.features = nn.Sequential(*layers)
        final_conv = nn.Conv2d(in_ch, num_classes, 1)  # conv10
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), final_conv, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # The reference: small Gaussian for conv10 so early logits stay near zero.
                if m is final_conv:
                    nn.init.normal_(m.weight, 0.0, 0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N, num_classes]`` for images ``[N, 3, H, W]``."""
        return torch.flatten(self.classifier(self.features(x)), 1)


@register_model(
    "squeezenet",
    task="classify",
    input_size=(224, 224),
    num_classes=1000,
    source="Iandola et al. 2016, Table 1 (SqueezeNet 1.0: 1,248,424 params); MACs at 224: "
    "torchvision SqueezeNet1_0_Weights, 0.819 GFLOPS (multiply-adds)",
    params_m=1.248,
    macs_g=0.819,
)
def squeezenet(num_classes: int = 1000, dropout: float = 0.5) -> nn.Module:
    """SqueezeNet 1.0, the paper's network (1.1 is a later, cheaper revision of the official repo).

    The paper gives no multiply-add count; the figure used is torchvision's documented one for
    this exact architecture at 224x224 (its "GFLOPS" column counts multiply-adds: 0.301 for
    MobileNetV2, the paper's 300M MAdds).
    """
    return SqueezeNet(num_classes=num_classes, dropout=dropout)
