"""ThunderNet (Qin et al., "ThunderNet: Towards Real-time Generic Object Detection", ICCV 2019,
arXiv:1903.11752; reference code github.com/qinzheng93/ThunderNet).

A Light-Head R-CNN compressed for a 320x320 input and an SNet backbone:

- Context Enhancement Module (CEM): C4, C5 (upsampled x2) and the global average of C5
  (broadcast), each squeezed by a 1x1 conv to 245 = 5 x 7 x 7 channels, summed (stride 16).
- Compressed RPN on the CEM map: 5x5 depthwise + 1x1 conv to 256 channels, 25 anchors
  (sizes 32..512, ratios 1:2, 3:4, 1:1, 4:3, 2:1).
- Spatial Attention Module (SAM): ``F_SAM = F_CEM * sigmoid(BN(conv1x1(F_RPN)))``.
- PSRoI align of the SAM map to 5 x 7 x 7, R-CNN subnet with one 1024-d FC.

Test-time settings of the reference config (``config/ThunderNet.py``): 2000 anchors before
and 200 proposals after the RPN NMS (IoU 0.7), detections with score > 0.05, NMS 0.5, at
most 100. The reference uses soft-NMS for the final detections; we use hard NMS (the
contract of the numpy runtime). R-CNN box regression is class-agnostic, which is what
reproduces the published MFLOPs (see :class:`~edgekit.models.detection.RCNNHead`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgekit.models.detection import RPNHead, TwoStageDetector
from edgekit.models.registry import register_model
from edgekit.models.zoo.snet import SNet, snet

# CEM width: alpha * p * p with alpha = 5 channels per bin and p = 7 bins (the thin feature map).
PS_CHANNELS = 5
POOLED_SIZE = 7
CEM_CHANNELS = PS_CHANNELS * POOLED_SIZE * POOLED_SIZE
RPN_CHANNELS = 256
RCNN_HIDDEN = 1024
ANCHOR_SIZES = (32.0, 64.0, 128.0, 256.0, 512.0)
ANCHOR_RATIOS = (0.5, 0.75, 1.0, 4.0 / 3.0, 2.0)


class ContextEnhancement(nn.Module):
    """CEM: ``conv1x1(C4) + up2(conv1x1(C5)) + conv1x1(avgpool(C5))``, all with bias.

    Upsampling is nearest-neighbour to C4's size, as in the reference code.

    Args:
        c4_channels: channels of C4 (stride 16).
        c5_channels: channels of C5 (stride 32).
        out_channels: CEM width (245).
    """

    def __init__(self, c4_channels: int, c5_channels: int, out_channels: int = CEM_CHANNELS) -> None:
        super().__init__()
        self.c4 = nn.Conv2d(c4_channels, out_channels, 1)
        self.c5 = nn.Conv2d(c5_channels, out_channels, 1)
        self.glb = nn.Conv2d(c5_channels, out_channels, 1)

    def forward(self, c4: Tensor, c5: Tensor) -> Tensor:
        """Fused ``[N, out_channels, H/16, W/16]`` map."""
        x4 = self.c4(c4)
        x5 = F.interpolate(self.c5(c5), size=x4.shape[-2:], mode="nearest")
        return x4 + x5 + self.glb(c5.mean(dim=(2, 3), keepdim=True))


def compressed_rpn_body(channels: int, out_channels: int = RPN_CHANNELS) -> nn.Sequential:
    """ThunderNet's RPN conv: 5x5 depthwise + 1x1 conv (each BN + ReLU), replacing a 3x3 conv."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 5, padding=2, groups=channels, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SpatialAttention(nn.Module):
    """SAM: re-weights the CEM map with ``sigmoid(BN(conv1x1(F_RPN)))``.

    Args:
        rpn_channels: channels of the RPN's intermediate feature (256).
        out_channels: CEM width (245).
    """

    def __init__(self, rpn_channels: int = RPN_CHANNELS, out_channels: int = CEM_CHANNELS) -> None:
        super().__init__()
        self.conv = nn.Conv2d(rpn_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, cem: Tensor, rpn_feature: Tensor) -> Tensor:
        """``F_CEM * sigmoid(BN(conv(F_RPN)))``."""
        return cem * torch.sigmoid(self.bn(self.conv(rpn_feature)))


class ThunderNet(TwoStageDetector):
    """ThunderNet detector on an SNet backbone.

    Args:
        backbone: an :class:`SNet` (its ``fc`` is kept for ImageNet checkpoints but unused).
        num_classes: object classes without background.
        input_size: (H, W), 320x320 in the paper.
        **opts: overrides of :class:`TwoStageDetector` settings (e.g. ``post_nms_top_n``).
    """

    def __init__(self, backbone: SNet, num_classes: int = 80, input_size: tuple[int, int] = (320, 320),
                 **opts: object) -> None:
        settings: dict[str, object] = dict(pre_nms_top_n=2000, post_nms_top_n=200)
        settings.update(opts)
        super().__init__(num_classes=num_classes, input_size=input_size, anchor_sizes=ANCHOR_SIZES,
                         anchor_ratios=ANCHOR_RATIOS, stride=16, ps_channels=PS_CHANNELS,
                         rcnn_hidden=RCNN_HIDDEN, pooled_size=POOLED_SIZE, **settings)
        self.backbone = backbone
        c4_channels, c5_channels = backbone.out_channels
        self.cem = ContextEnhancement(c4_channels, c5_channels)
        self.rpn = RPNHead(compressed_rpn_body(CEM_CHANNELS), RPN_CHANNELS, self.num_anchors)
        self.sam = SpatialAttention()

    def stage1(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(rpn_logits ``[N, 25, H/16, W/16]``, rpn_deltas ``[N, 100, ...]``, SAM map ``[N, 245, ...]``)."""
        c4, c5 = self.backbone.forward_features(x)
        cem = self.cem(c4, c5)
        rpn_feature, logits, deltas = self.rpn(cem)
        return logits, deltas, self.sam(cem, rpn_feature)


# The paper's COCO test-dev comparison (320x320 input, 80 classes) lists 262 MFLOPs, 473 MFLOPs
# and 1.3 GFLOPs: multiply-adds of the whole detector, R-CNN head on 200 RoIs included.
_SOURCE = "ThunderNet (Qin et al., ICCV 2019, arXiv:1903.11752), COCO test-dev results table (MFLOPs)"


@register_model("thundernet-snet49", task="detect", input_size=(320, 320), num_classes=80,
                source=_SOURCE, params_m=None, macs_g=0.262, tolerance=0.10)
def thundernet_snet49(num_classes: int = 80, **opts: object) -> ThunderNet:
    """ThunderNet with SNet49 (262 MFLOPs at 320x320 on COCO); the paper gives no parameter count."""
    return ThunderNet(snet(49), num_classes=num_classes, **opts)


@register_model("thundernet-snet146", task="detect", input_size=(320, 320), num_classes=80,
                source=_SOURCE, params_m=None, macs_g=0.473, tolerance=0.10)
def thundernet_snet146(num_classes: int = 80, **opts: object) -> ThunderNet:
    """ThunderNet with SNet146 (473 MFLOPs at 320x320 on COCO); the paper gives no parameter count."""
    return ThunderNet(snet(146), num_classes=num_classes, **opts)


@register_model("thundernet-snet535", task="detect", input_size=(320, 320), num_classes=80,
                source=_SOURCE, params_m=None, macs_g=1.3, tolerance=0.10)
def thundernet_snet535(num_classes: int = 80, **opts: object) -> ThunderNet:
    """ThunderNet with SNet535 (1.3 GFLOPs at 320x320 on COCO); the paper gives no parameter count."""
    return ThunderNet(snet(535), num_classes=num_classes, **opts)
