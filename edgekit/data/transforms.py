"""Preprocessing shared by training, calibration and the runtime SDK: numpy and Pillow only.

An image goes through three steps, in this order:

1. geometry (``resize``): ``stretch`` to the input size; ``letterbox`` (keep the aspect
   ratio, centre, pad the border with ``pad_value``); or ``shorter-side-crop`` (scale so the
   image covers the input size divided by ``crop_pct``, then take the centre crop);
2. channel order: the tensor's channels are ``rgb`` or ``bgr``;
3. normalisation ``(x - mean) / std`` with mean and std in pixel units (0..255), listed in
   the tensor's channel order, then HWC uint8 -> NCHW float32 with batch 1.

Every geometry is an axis-aligned affine map, ``input = original * scale + pad``, recorded
in :class:`ImageMeta` so boxes and masks predicted at the input size map back to the image.
The board SDK imports this module: it must never import torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from PIL import Image

from edgekit.data.errors import PreprocessError
# One definition of the pre-processing vocabulary: the manifest's input spec (standard
# library only, so bundles read anywhere) owns it; Preprocess executes it.
from edgekit.data.image_io import array_to_rgb, to_rgb
from edgekit.inputspec import IMAGENET_MEAN, IMAGENET_STD, ChannelOrder, InputSpec, ResizeMode

@dataclass(frozen=True)
class ImageMeta:
    """Where an original image's pixels landed in the model input.

    ``input_y = original_y * scale[0] + pad[0]`` and ``input_x = original_x * scale[1] + pad[1]``
    in continuous pixel coordinates (0 at the top-left edge). ``pad`` is the letterbox
    border (>= 0) or minus the crop offset (<= 0); ``resized`` is the size the whole image
    was scaled to before padding or cropping.

    Args:
        orig_size: (height, width) of the original image.
        input_size: (height, width) of the model input.
        resized: (height, width) of the scaled image before padding or cropping.
        scale: (y, x) scale factors, resized / orig.
        pad: (top, left) offset of the scaled image inside the input.
    """

    orig_size: tuple[int, int]
    input_size: tuple[int, int]
    resized: tuple[int, int]
    scale: tuple[float, float]
    pad: tuple[int, int]


@dataclass(frozen=True)
class Preprocess:
    """Image -> ``[1, 3, H, W]`` float32 tensor, as the model was trained to see it.

    Args:
        imgsz: model input (height, width).
        mean: subtracted per channel, pixel units (0..255), in the tensor's channel order.
        std: divides per channel after the mean, pixel units, in the tensor's channel order.
        channel_order: ``rgb`` or ``bgr`` channel order of the tensor.
        resize: ``stretch``, ``letterbox`` or ``shorter-side-crop``.
        pad_value: letterbox border colour, RGB, 0..255 (before normalisation).
        crop_pct: for ``shorter-side-crop``, the fraction of the scaled image kept: 0.875
            is the classic ImageNet "resize 256, crop 224". Must be 1.0 for other modes.
    """

    imgsz: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: ChannelOrder = ChannelOrder.RGB
    resize: ResizeMode = ResizeMode.STRETCH
    pad_value: tuple[int, int, int] = (114, 114, 114)
    crop_pct: float = 1.0

    def __post_init__(self) -> None:
        # JSON gives lists and strings; normalise them so equal configs compare equal.
        try:
            object.__setattr__(self, "channel_order", ChannelOrder(self.channel_order))
            object.__setattr__(self, "resize", ResizeMode(self.resize))
        except ValueError as exc:
            raise PreprocessError(
                f"{exc}. channel_order is one of {[c.value for c in ChannelOrder]}, "
                f"resize one of {[r.value for r in ResizeMode]}"
            ) from None
        pad = self.pad_value
        pad = (pad, pad, pad) if isinstance(pad, (int, np.integer)) else pad
        object.__setattr__(self, "imgsz", tuple(int(v) for v in self.imgsz))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "pad_value", tuple(int(v) for v in pad))
        object.__setattr__(self, "crop_pct", float(self.crop_pct))
        self._check()

    def _check(self) -> None:
        if len(self.imgsz) != 2 or min(self.imgsz) < 1:
            raise PreprocessError(f"imgsz {self.imgsz} must be (height, width) with both >= 1")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise PreprocessError(f"mean {self.mean} and std {self.std} need one value per channel (3)")
        if min(self.std) <= 0:
            raise PreprocessError(f"std {self.std} must be > 0 (pixel units, e.g. 58.395, not 0.229)")
        if len(self.pad_value) != 3 or not all(0 <= v <= 255 for v in self.pad_value):
            raise PreprocessError(f"pad_value {self.pad_value} must be one or three integers in 0..255")
        if not 0.0 < self.crop_pct <= 1.0:
            raise PreprocessError(f"crop_pct {self.crop_pct} must be in (0, 1]")
        if self.crop_pct != 1.0 and self.resize is not ResizeMode.SHORTER_SIDE_CROP:
            raise PreprocessError(
                f"crop_pct {self.crop_pct} only applies to resize='shorter-side-crop', not "
                f"'{self.resize.value}'; drop crop_pct or change resize"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (enums as strings, tuples as lists)."""
        out = asdict(self)
        out["channel_order"] = self.channel_order.value
        out["resize"] = self.resize.value
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_input_spec(cls, spec: InputSpec) -> Preprocess:
        """The pre-processing a bundle's manifest declares for its image input."""
        return cls(imgsz=spec.imgsz, mean=spec.mean, std=spec.std, channel_order=spec.channel_order,
                   resize=spec.resize, pad_value=int(round(spec.pad_value)), crop_pct=spec.crop_fraction)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        """Inverse of :meth:`to_dict`; missing keys take the defaults, unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PreprocessError(f"unknown preprocessing keys {unknown}; known: {sorted(known)}")
        return cls(**data)

    def __call__(self, image: Image.Image | np.ndarray, *, input_order: ChannelOrder | str = "rgb"
                 ) -> tuple[np.ndarray, ImageMeta]:
        """Preprocess one image into a ``[1, 3, H, W]`` float32 tensor and its :class:`ImageMeta`.

        Args:
            image: a Pillow image of any mode, or an HWC/HW uint8 (or uint16) array.
            input_order: channel order of a numpy ``image`` (``bgr`` for OpenCV frames).
        """
        pixels, meta = self.resize_image(image, input_order=input_order)
        return self.normalize(pixels), meta

    def resize_image(self, image: Image.Image | np.ndarray, *, input_order: ChannelOrder | str = "rgb"
                     ) -> tuple[np.ndarray, ImageMeta]:
        """Only the geometry: an RGB HWC uint8 array of the input size, and its meta."""
        if isinstance(image, np.ndarray):
            if ChannelOrder(input_order) is ChannelOrder.BGR and image.ndim == 3 and image.shape[2] >= 3:
                image = np.concatenate([image[:, :, 2::-1], image[:, :, 3:]], axis=2)
            image = array_to_rgb(image)
        else:
            image = to_rgb(image)
        meta = plan_geometry(self.resize, (image.height, image.width), self.imgsz, self.crop_pct)
        (rh, rw), (top, left), (h, w) = meta.resized, meta.pad, meta.input_size
        resized = image if (rh, rw) == (image.height, image.width) else image.resize((rw, rh), Image.BILINEAR)
        canvas = Image.new("RGB", (w, h), self.pad_value)
        canvas.paste(resized, (left, top))  # Pillow clips a paste at a negative offset: the centre crop
        return np.asarray(canvas), meta

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """RGB HWC uint8 array -> ``[1, 3, H, W]`` float32, in the tensor's channel order."""
        # Channels-first copy first, then normalise in place: same values, ~8x faster than
        # normalising HWC and transposing (the strided copy dominated pre-processing).
        x = np.ascontiguousarray(pixels.transpose(2, 0, 1)).astype(np.float32)
        if self.channel_order is ChannelOrder.BGR:
            x = np.ascontiguousarray(x[::-1])
        x -= np.asarray(self.mean, np.float32)[:, None, None]
        x /= np.asarray(self.std, np.float32)[:, None, None]
        return x[None]


def plan_geometry(resize: ResizeMode | str, orig_size: tuple[int, int], input_size: tuple[int, int],
                  crop_pct: float = 1.0) -> ImageMeta:
    """Compute where an image of ``orig_size`` lands in ``input_size`` under ``resize``."""
    (h0, w0), (h, w) = orig_size, input_size
    mode = ResizeMode(resize)
    if mode is ResizeMode.STRETCH:
        rh, rw = h, w
    elif mode is ResizeMode.LETTERBOX:
        s = min(h / h0, w / w0)
        rh, rw = min(h, max(1, round(h0 * s))), min(w, max(1, round(w0 * s)))
    else:
        s = max(h / h0, w / w0) / crop_pct
        rh, rw = max(h, round(h0 * s)), max(w, round(w0 * s))
    top, left = (h - rh) // 2, (w - rw) // 2  # floor: a crop offset is -ceil(excess / 2)
    if mode is ResizeMode.SHORTER_SIDE_CROP:
        top, left = -((rh - h) // 2), -((rw - w) // 2)
    return ImageMeta(orig_size=(h0, w0), input_size=(h, w), resized=(rh, rw),
                     scale=(rh / h0, rw / w0), pad=(top, left))


def boxes_to_original(boxes: np.ndarray, meta: ImageMeta, *, clip: bool = True) -> np.ndarray:
    """Map ``[N, 4]`` xyxy boxes from model-input pixels back to original-image pixels."""
    (sy, sx), (top, left) = meta.scale, meta.pad
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    out = (b - np.array([left, top, left, top], np.float32)) / np.array([sx, sy, sx, sy], np.float32)
    return _clip(out, meta.orig_size) if clip else out


def boxes_to_input(boxes: np.ndarray, meta: ImageMeta, *, clip: bool = True) -> np.ndarray:
    """Map ``[N, 4]`` xyxy boxes from original-image pixels to model-input pixels.

    With ``shorter-side-crop`` a box outside the crop comes back with zero width or height;
    drop those before training.
    """
    (sy, sx), (top, left) = meta.scale, meta.pad
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    out = b * np.array([sx, sy, sx, sy], np.float32) + np.array([left, top, left, top], np.float32)
    return _clip(out, meta.input_size) if clip else out


def mask_to_original(mask: np.ndarray, meta: ImageMeta, *, fill: int = 0) -> np.ndarray:
    """Resize an ``[H, W]`` class-id mask at the input size back to the original image (nearest).

    The letterbox border is cut away; pixels the model never saw (outside a centre crop)
    get ``fill``.
    """
    scaled = _place(np.asarray(mask), (-meta.pad[0], -meta.pad[1]), meta.resized, fill)
    return resize_nearest(scaled, meta.orig_size)


def mask_to_input(mask: np.ndarray, meta: ImageMeta, *, fill: int = 255) -> np.ndarray:
    """Resize an original-size ``[H, W]`` class-id mask to the model input (nearest).

    The letterbox border gets ``fill`` (the ignore label by default) so it is not scored.
    """
    return _place(resize_nearest(np.asarray(mask), meta.resized), meta.pad, meta.input_size, fill)


def scores_to_original(scores: np.ndarray, meta: ImageMeta, *, fill: float = 0.0) -> np.ndarray:
    """Resize ``[C, H, W]`` float scores (logits) at the input size to the original image, bilinear.

    Upsampling scores and taking the argmax afterwards gives smoother edges than upsampling
    an argmax mask.
    """
    h0, w0 = meta.orig_size
    out = np.empty((scores.shape[0], h0, w0), np.float32)
    for c, plane in enumerate(np.asarray(scores, np.float32)):
        scaled = _place(plane, (-meta.pad[0], -meta.pad[1]), meta.resized, fill)
        out[c] = np.asarray(Image.fromarray(scaled).resize((w0, h0), Image.BILINEAR))
    return out


def resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of the first two axes to ``size`` = (height, width).

    Samples at pixel centres, as Pillow's NEAREST does, for any dtype.
    """
    h, w = size
    rows = np.minimum(((np.arange(h) + 0.5) * array.shape[0] / h).astype(np.int64), array.shape[0] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * array.shape[1] / w).astype(np.int64), array.shape[1] - 1)
    return array[rows[:, None], cols[None, :]]


def _place(array: np.ndarray, offset: tuple[int, int], size: tuple[int, int], fill: float) -> np.ndarray:
    """Put ``array`` at (top, left) ``offset`` on a ``size`` canvas of ``fill``, clipping at the edges."""
    out = np.full(size + array.shape[2:], fill, dtype=array.dtype)
    top, left = offset
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + array.shape[0], size[0]), min(left + array.shape[1], size[1])
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = array[y0 - top:y1 - top, x0 - left:x1 - left]
    return out


def _clip(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    return np.clip(boxes, 0, np.array([w, h, w, h], np.float32))
