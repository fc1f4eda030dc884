"""Light-Head R-CNN (Li et al., "Light-Head R-CNN: In Defense of Two-Stage Object Detector",
arXiv:1711.07264, 2017; reference code github.com/zengarden/light_head_rcnn).

The paper's small, fast head (its "Light-Head R-CNN: High Speed" experiment):

- RPN on C4: one 3x3 conv with 256 channels + ReLU, 15 anchors (sizes 32..512, ratios
  1:2, 1:1, 2:1).
- Thin feature map from C5 by a large separable conv: ``k x 1 -> 1 x k`` plus ``1 x k -> k x 1``
  branches, k = 15, C_mid = 64, C_out = 10 x 7 x 7 = 490, summed, ReLU.
- PSRoI align to 10 x 7 x 7, R-CNN subnet with one 2048-d FC.
- Test time: 6000 anchors before / 1000 proposals after the RPN NMS (IoU 0.7), detections
  NMS 0.5, at most 100 per image.

Backbone: **SNet146** at 320x320, not the paper's Xception-like network (which edgekit does
not have), so this configuration has no published size figures. The paper's fast model drops
atrous convolution, which leaves C5 at stride 32; the thin map is computed there (cheap) and
upsampled bilinearly x2 so that it shares the stride-16 PSRoI align (spatial scale 1/16) and
the pipeline contract of :class:`~edgekit.models.detection.TwoStageDetector` with ThunderNet.
Deviations from the reference code: box regression is class-agnostic (shared R-CNN head,
see :class:`~edgekit.models.detection.RCNNHead`), RPN objectness is one sigmoid logit per
anchor instead of a 2-way softmax, PSRoI align averages its samples, and detections need a
score above 0.05 (the reference keeps every score).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from edgekit.models.detection import RPNHead, TwoStageDetector
from edgekit.models.registry import register_model
from edgekit.models.zoo.snet import SNet, snet

PS_CHANNELS = 10
POOLED_SIZE = 7
KERNEL_SIZE = 15
MID_CHANNELS = 64
RPN_CHANNELS = 256
RCNN_HIDDEN = 2048
ANCHOR_SIZES = (32.0, 64.0, 128.0, 256.0, 512.0)
ANCHOR_RATIOS = (0.5, 1.0, 2.0)


class LargeSeparableConv(nn.Module):
    """Light-Head's large separable conv: ``conv_1xk(conv_kx1(x)) + conv_kx1(conv_1xk(x))``.

    No nonlinearity inside the branches (as in the reference code); biases on every conv.

    Args:
        in_channels: input channels (C5).
        mid_channels: C_mid (64 for the fast model, 256 for the ResNet-101 one).
        out_channels: C_out = ps_channels x 7 x 7.
        kernel_size: k (15).
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, kernel_size: int = KERNEL_SIZE) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.col = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, (kernel_size, 1), padding=(pad, 0)),
            nn.Conv2d(mid_channels, out_channels, (1, kernel_size), padding=(0, pad)),
        )
        self.row = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, (1, kernel_size), padding=(0, pad)),
            nn.Conv2d(mid_channels, out_channels, (kernel_size, 1), padding=(pad, 0)),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Sum of the two separable branches."""
        return self.col(x) + self.row(x)


def rpn_body(in_channels: int, out_channels: int = RPN_CHANNELS) -> nn.Sequential:
    """Light-Head's RPN conv: 3x3 conv (with bias) + ReLU."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True))


class LightHeadRCNN(TwoStageDetector):
    """Light-Head R-CNN, fast variant, on an SNet backbone.

    Args:
        backbone: an :class:`SNet` (its ``fc`` is unused).
        num_classes: object classes without background.
        input_size: (H, W).
        **opts: overrides of :class:`TwoStageDetector` settings (e.g. ``post_nms_top_n``).
    """

    def __init__(self, backbone: SNet, num_classes: int = 80, input_size: tuple[int, int] = (320, 320),
                 **opts: object) -> None:
        settings: dict[str, object] = dict(pre_nms_top_n=6000, post_nms_top_n=1000)
        settings.update(opts)
        super().__init__(num_classes=num_classes, input_size=input_size, anchor_sizes=ANCHOR_SIZES,
                         anchor_ratios=ANCHOR_RATIOS, stride=16, ps_channels=PS_CHANNELS,
                         rcnn_hidden=RCNN_HIDDEN, pooled_size=POOLED_SIZE, **settings)
        self.backbone = backbone
        c4_channels, c5_channels = backbone.out_channels
        self.rpn = RPNHead(rpn_body(c4_channels), RPN_CHANNELS, self.num_anchors)
        self.thin = LargeSeparableConv(c5_channels, MID_CHANNELS, PS_CHANNELS * POOLED_SIZE * POOLED_SIZE)

    def stage1(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(rpn_logits ``[N, 15, H/16, W/16]``, rpn_deltas ``[N, 60, ...]``, thin map ``[N, 490, ...]``)."""
        c4, c5 = self.backbone.forward_features(x)
        _, logits, deltas = self.rpn(c4)
        thin = F.relu(self.thin(c5))
        thin = F.interpolate(thin, size=c4.shape[-2:], mode="bilinear", align_corners=False)
        return logits, deltas, thin


@register_model("lighthead-rcnn", task="detect", input_size=(320, 320), num_classes=80,
                source="Light-Head R-CNN (Li et al., arXiv:1711.07264), 'High Speed' model head; "
                       "SNet146 backbone from ThunderNet (ICCV 2019)",
                params_m=None, macs_g=None)
def lighthead_rcnn(num_classes: int = 80, **opts: object) -> LightHeadRCNN:
    """Light-Head R-CNN fast head (k=15, C_mid=64, 10x7x7, FC 2048) on SNet146 at 320x320.

    No published params/MACs exist for this backbone/input combination (the paper's fast model
    uses an Xception-like backbone at 800px), so both figures are None.
    """
    return LightHeadRCNN(snet(146), num_classes=num_classes, **opts)
