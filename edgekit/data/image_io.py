"""Reading images: any file or array Pillow understands becomes an 8-bit RGB image.

Numpy and Pillow only (the board SDK imports this). A file that cannot be decoded raises
:class:`DatasetError` naming it, instead of Pillow's bare ``OSError`` deep in a loop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgekit.data.errors import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# Pillow's 16-bit and 32-bit integer grey modes; convert("L") would clip them at 255
# instead of scaling, so they are rescaled by hand.
_WIDE_INT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def is_image_file(path: Path) -> bool:
    """True for a visible file with one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: Path, *, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` in sorted path order (hidden files skipped)."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and is_image_file(p))


def load_image(path: str | Path, *, exif_transpose: bool = False) -> Image.Image:
    """Decode an image file fully and return it as 8-bit RGB.

    Args:
        path: the image file.
        exif_transpose: apply the EXIF orientation tag. Off by default because dataset
            annotations (COCO, VOC, masks) are drawn on the stored pixel grid; turn it on for
            photos from a phone or camera at prediction time.

    Raises:
        DatasetError: the file is missing, truncated, corrupt or not an image.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so a truncated file fails here and not later
            if exif_transpose:
                image = ImageOps.exif_transpose(image)
            return to_rgb(image)
    except FileNotFoundError as exc:
        raise DatasetError(f"image '{path}' does not exist") from exc
    except (PermissionError, IsADirectoryError) as exc:
        raise DatasetError(f"cannot read image '{path}': {exc.strerror}. Check that it is a file this user may "
                           "read (ls -l).") from exc
    except Image.DecompressionBombError as exc:
        raise DatasetError(
            f"image '{path}' is too large to decode safely: {exc} Downscale it, or raise "
            "PIL.Image.MAX_IMAGE_PIXELS if you trust the file."
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(
            f"cannot decode image '{path}': {exc}. The file is truncated, corrupt or not an "
            f"image; re-export it or remove it from the dataset."
        ) from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert an image of any Pillow mode to 8-bit RGB.

    Transparent pixels are composited over white (what a viewer shows), 16-bit grey is
    scaled to 8 bits (65535 -> 255), palette, CMYK, YCbCr, L and 1-bit images go through
    Pillow's own conversion.
    """
    if not isinstance(image, Image.Image):
        raise DatasetError(f"expected a Pillow image, a path or an HWC uint8 numpy array; got {type(image).__name__}.")
    if image.width < 1 or image.height < 1:
        raise DatasetError(f"image is {image.width}x{image.height} pixels; an image needs at least one pixel.")
    if image.mode == "RGB":
        return image
    if image.mode in _WIDE_INT_MODES:
        return _grey_to_rgb(np.asarray(image).astype(np.float64) / 257.0)
    if image.mode == "F":
        return _grey_to_rgb(np.asarray(image, dtype=np.float64))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def array_to_rgb(array: np.ndarray) -> Image.Image:
    """Wrap an HWC (or HW) uint8/uint16 array, in RGB order, as an 8-bit RGB image.

    Raises:
        DatasetError: a float or other dtype (whose range would be a guess), or a shape that
            is not HW, HW1, HW3 or HW4.
    """
    if not isinstance(array, np.ndarray):
        raise DatasetError(f"expected an HWC uint8 numpy array, got {type(array).__name__}.")
    if array.ndim in (2, 3) and 0 in array.shape[:2]:
        raise DatasetError(f"image array has shape {array.shape}; an image needs at least one pixel.")
    if array.dtype == np.uint16:
        array = np.round(array.astype(np.float64) / 257.0).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise DatasetError(
            f"image array has dtype {array.dtype}; expected uint8 (0..255) or uint16. Convert "
            f"it first, e.g. (x * 255).round().astype(np.uint8) for floats in 0..1."
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")
    if array.ndim == 3 and array.shape[2] == 3:
        return Image.fromarray(np.ascontiguousarray(array))
    if array.ndim == 3 and array.shape[2] == 4:
        return to_rgb(Image.fromarray(np.ascontiguousarray(array)))
    raise DatasetError(f"image array has shape {array.shape}; expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    eight_bit = np.clip(np.round(grey), 0, 255).astype(np.uint8)
    return Image.fromarray(eight_bit).convert("RGB")
