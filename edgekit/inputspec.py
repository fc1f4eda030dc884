"""The input contract of an exported model: tensor name, shape, layout and pre-processing.

The runtime SDK pre-processes an image from these fields alone, so the same photo gives the
same tensor on every backend. Standard library only: the numpy-only SDK reads it from the
bundle manifest.

Pixel values are in pixel units (0-255) in ``channel_order``; the network sees
``(pixel - mean) / std``, per channel, in NCHW layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from enum import Enum
from typing import Any

from edgekit.errors import ExportError


class ChannelOrder(str, Enum):
    """Order of the colour channels the network expects."""

    RGB = "rgb"
    BGR = "bgr"


class ResizeMode(str, Enum):
    """How an image of any size is brought to the model's ``imgsz``.

    ``stretch``: resize both sides to ``imgsz`` (aspect ratio not kept).
    ``letterbox``: scale to fit inside ``imgsz`` keeping the aspect ratio, pad the rest with
    ``pad_value``. ``shorter-side-crop``: scale the shorter side to ``size / crop_fraction``
    and take the centre ``imgsz`` crop (the ImageNet evaluation recipe: 256 -> 224 is 0.875).
    """

    STRETCH = "stretch"
    LETTERBOX = "letterbox"
    SHORTER_SIDE_CROP = "shorter-side-crop"


IMAGENET_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)  # 255 * (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)  # 255 * (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class TaskDefaults:
    """Pre-processing defaults of a task (one row of ``TASK_DEFAULTS``).

    ``edgekit.data.transforms.Preprocess`` executes these (``Preprocess.from_input_spec``).

    Args:
        mean: per-channel mean in pixel units, in ``channel_order``.
        std: per-channel standard deviation in pixel units.
        channel_order: colour order the network was trained on.
        resize: how an arbitrary image is brought to the input size.
        pad_value: for ``letterbox``, the pixel value of the padding.
    """

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: ChannelOrder = ChannelOrder.RGB
    resize: ResizeMode = ResizeMode.STRETCH
    pad_value: float = 114.0


# The ImageNet evaluation crop (resize to 256, crop 224) used by every published classifier.
CROP_FRACTION: float = 0.875

# The zoo trains every family on ImageNet-normalised RGB; tasks differ in how an image is
# fitted: classifiers use the ImageNet eval crop, segmenters see the whole frame (logits
# at input resolution), detectors keep the aspect ratio so boxes map back exactly.
TASK_DEFAULTS: dict[str, TaskDefaults] = {
    "classify": TaskDefaults(resize=ResizeMode.SHORTER_SIDE_CROP),
    "segment": TaskDefaults(resize=ResizeMode.STRETCH),
    "detect": TaskDefaults(resize=ResizeMode.LETTERBOX),
}


@dataclass(frozen=True)
class InputSpec:
    """The image input of a bundle: the tensor and how to fill it from a picture.

    Args:
        name: graph input name (``images`` for every edgekit export).
        shape: NCHW shape; the batch dimension is the string ``"batch"`` when dynamic.
        dtype: element type of the tensor (``float32``).
        layout: memory layout, always ``NCHW`` for the exported graph.
        imgsz: (height, width) the network runs at.
        mean, std, channel_order, resize, pad_value: see ``TaskDefaults``.
        crop_fraction: for ``shorter-side-crop``, the crop's share of the resized shorter
            side (``CROP_FRACTION``); 1.0 for the other modes.
    """

    name: str
    shape: tuple[int | str, ...]
    imgsz: tuple[int, int]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: ChannelOrder = ChannelOrder.RGB
    resize: ResizeMode = ResizeMode.STRETCH
    crop_fraction: float = 1.0
    pad_value: float = 114.0
    dtype: str = "float32"
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        h, w = self.imgsz
        if h <= 0 or w <= 0:
            raise ExportError(f"imgsz must be positive, got {h}x{w}.")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ExportError(f"mean and std take 3 values (one per channel), got {self.mean} and {self.std}.")
        if any(s <= 0 for s in self.std):
            raise ExportError(f"std must be positive (pixel units, e.g. 58.4), got {self.std}.")
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ExportError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}.")
        if len(self.shape) != 4 or tuple(self.shape[1:]) != (3, h, w):
            raise ExportError(f"input shape {self.shape} does not match NCHW 3x{h}x{w}.")

    @property
    def dynamic_batch(self) -> bool:
        """True when the batch dimension is symbolic."""
        return isinstance(self.shape[0], str)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (enums as their string values, tuples as lists)."""
        out = asdict(self)
        out["channel_order"] = self.channel_order.value
        out["resize"] = self.resize.value
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputSpec:
        """Inverse of ``to_dict``; unknown keys are refused."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ExportError(f"unknown input spec fields {unknown}; known: {sorted(known)}.")
        values = dict(data)
        for key in ("shape", "imgsz", "mean", "std"):
            if key in values:
                values[key] = tuple(values[key])
        if "channel_order" in values:
            values["channel_order"] = ChannelOrder(values["channel_order"])
        if "resize" in values:
            values["resize"] = ResizeMode(values["resize"])
        return cls(**values)


def make_input_spec(
    task: str,
    imgsz: tuple[int, int],
    *,
    batch: int = 1,
    dynamic_batch: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    channel_order: ChannelOrder | str | None = None,
    resize: ResizeMode | str | None = None,
    name: str = "images",
) -> InputSpec:
    """The input contract for ``task`` at ``imgsz``: task defaults with the given overrides."""
    if task not in TASK_DEFAULTS:
        raise ExportError(f"no input defaults for task '{task}'; known tasks: {', '.join(TASK_DEFAULTS)}.")
    if batch < 1:
        raise ExportError(f"batch must be >= 1, got {batch}.")
    defaults = TASK_DEFAULTS[task]
    overrides: dict[str, Any] = {}
    if mean is not None:
        overrides["mean"] = tuple(float(v) for v in mean)
    if std is not None:
        overrides["std"] = tuple(float(v) for v in std)
    if channel_order is not None:
        overrides["channel_order"] = parse_choice(ChannelOrder, channel_order, "channel order")
    if resize is not None:
        overrides["resize"] = parse_choice(ResizeMode, resize, "resize mode")
    pre = replace(defaults, **overrides)
    h, w = (int(v) for v in imgsz)
    return InputSpec(
        name=name,
        shape=("batch" if dynamic_batch else batch, 3, h, w),
        imgsz=(h, w),
        mean=pre.mean,
        std=pre.std,
        channel_order=pre.channel_order,
        resize=pre.resize,
        crop_fraction=CROP_FRACTION if pre.resize == ResizeMode.SHORTER_SIDE_CROP else 1.0,
        pad_value=pre.pad_value,
    )


def parse_choice(kind: type[Enum], value: Enum | str, what: str) -> Any:
    """``kind(value)``, or an ExportError listing the choices."""
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(m.value for m in kind)  # type: ignore[attr-defined]
        raise ExportError(f"unknown {what} '{value}'; choose one of: {choices}.") from None
