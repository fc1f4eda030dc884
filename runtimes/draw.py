"""Pictures of results with Pillow: boxes with their labels, masks blended over the image, top classes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from edgekit.runtimes.results import ClassResult, Detections, SegmentationResult, palette


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont
               ) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return int(right - left), int(bottom - top)


def _ink(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads on ``colour`` (ITU-R BT.601 luma)."""
    r, g, b = colour
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def draw_detections(image: Image.Image, detections: Detections, *, line_width: int | None = None) -> Image.Image:
    """A copy of ``image`` with each box outlined in its class colour and labelled ``name score``."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    width = line_width or max(2, round(max(out.size) / 200))
    # Colour i + 1 of the palette: colour 0 is black, the background of masks.
    colours = palette(int(detections.class_ids.max(initial=0)) + 2)
    for box, score, cid, name in zip(detections.boxes.tolist(), detections.scores.tolist(),
                                     detections.class_ids.tolist(), detections.labels):
        r, g, b = (int(v) for v in colours[cid + 1])
        colour = (r, g, b)
        draw.rectangle(box, outline=colour, width=width)
        text = f"{name} {score:.2f}"
        tw, th = _text_size(draw, text, font)
        x, y = box[0], max(box[1] - th - 4, 0)
        draw.rectangle((x, y, x + tw + 4, y + th + 4), fill=colour)
        draw.text((x + 2, y + 1), text, fill=_ink(colour), font=font)
    return out


def overlay_mask(image: Image.Image, segmentation: SegmentationResult, *, alpha: float = 0.5,
                 colours: np.ndarray | None = None) -> Image.Image:
    """``image`` blended with the coloured mask (``alpha`` of mask colour); background pixels stay as they were."""
    base = np.asarray(image.convert("RGB"), np.float32)
    if base.shape[:2] != segmentation.mask.shape:
        raise ValueError(f"mask is {segmentation.mask.shape} but the image is {base.shape[:2]}; "
                         "draw on the image that was predicted.")
    colour = segmentation.colorize(colours).astype(np.float32)
    blend = np.where((segmentation.mask > 0)[..., None], (1 - alpha) * base + alpha * colour, base)
    return Image.fromarray(np.clip(np.rint(blend), 0, 255).astype(np.uint8))


def draw_classes(image: Image.Image, result: ClassResult) -> Image.Image:
    """A copy of ``image`` with the top classes written in its top-left corner."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    y = 2
    for name, score in zip(result.labels, result.scores.tolist()):
        text = f"{name} {score:.2f}"
        tw, th = _text_size(draw, text, font)
        draw.rectangle((2, y, tw + 6, y + th + 4), fill=(0, 0, 0))
        draw.text((4, y + 1), text, fill=(255, 255, 255), font=font)
        y += th + 6
    return out


RENDERERS: dict[type, Callable[[Image.Image, object], Image.Image]] = {
    Detections: draw_detections, SegmentationResult: overlay_mask, ClassResult: draw_classes,  # type: ignore[dict-item]
}


def render(image: Image.Image, result: ClassResult | Detections | SegmentationResult) -> Image.Image:
    """The picture of any task's result on the image it came from."""
    return RENDERERS[type(result)](image, result)
