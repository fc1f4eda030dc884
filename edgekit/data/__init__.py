"""Datasets, synthetic shapes and the preprocessing every stage shares.

numpy and Pillow only: the board SDK imports :mod:`edgekit.data.transforms` through here,
so nothing in this package may import torch.

Loaders stream (one decoded image per step): :class:`ClassFolders` (ImageNet layout),
:class:`CocoDetection`, :class:`VocDetection`, :class:`MaskFolders`; :func:`open_dataset`
picks one from the folder layout. :func:`synthesize` writes shape datasets in those formats.
"""

from edgekit.data.base import ClassificationSample, DetectionSample, ImageDataset, SegmentationSample
from edgekit.data.class_folders import ClassFolders
from edgekit.data.coco import CocoDetection
from edgekit.data.errors import DatasetError, PreprocessError
from edgekit.data.image_io import IMAGE_EXTENSIONS, array_to_rgb, load_image, to_rgb
from edgekit.data.layouts import LAYOUTS, open_dataset
from edgekit.data.mask_folders import CITYSCAPES_CLASSES, CITYSCAPES_LABEL_MAP, MaskFolders, cityscapes, read_mask
from edgekit.data.shapes import SHAPES
from edgekit.data.synth import synth_main, synthesize
from edgekit.data.transforms import (
    ChannelOrder,
    ImageMeta,
    Preprocess,
    ResizeMode,
    boxes_to_input,
    boxes_to_original,
    mask_to_input,
    mask_to_original,
    scores_to_original,
)
from edgekit.data.voc import VOC_CLASSES, VocDetection

__all__ = [
    "CITYSCAPES_CLASSES", "CITYSCAPES_LABEL_MAP", "IMAGE_EXTENSIONS", "LAYOUTS", "SHAPES", "VOC_CLASSES",
    "ChannelOrder", "ClassFolders", "ClassificationSample", "CocoDetection", "DatasetError",
    "DetectionSample", "ImageDataset", "ImageMeta", "MaskFolders", "Preprocess", "PreprocessError",
    "ResizeMode", "SegmentationSample", "VocDetection", "array_to_rgb", "boxes_to_input",
    "boxes_to_original", "cityscapes", "load_image", "mask_to_input", "mask_to_original",
    "open_dataset", "read_mask", "scores_to_original", "synth_main", "synthesize", "to_rgb",
]
