"""Task metrics: top-k accuracy, COCO box mAP (pycocotools, imported on first use), mIoU.

numpy only at import time, so the board SDK can score predictions without torch.
"""

from edgekit.metrics.classification import TopKAccuracy, topk_accuracy, topk_correct
from edgekit.metrics.detection import DetectionMetrics, Detections, coco_map
from edgekit.metrics.errors import MetricInputError
from edgekit.metrics.segmentation import ConfusionMatrix

__all__ = [
    "ConfusionMatrix",
    "DetectionMetrics",
    "Detections",
    "MetricInputError",
    "TopKAccuracy",
    "coco_map",
    "topk_accuracy",
    "topk_correct",
]
