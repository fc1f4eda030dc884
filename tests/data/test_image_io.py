"""Images of every mode become 8-bit RGB; unreadable files raise DatasetError naming them."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgekit.data import DatasetError, Preprocess, array_to_rgb, load_image, to_rgb


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_truncated_jpeg_raises_dataset_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.jpg"
    path.write_bytes(_jpeg_bytes()[:600])
    with pytest.raises(DatasetError, match="cut.jpg.*truncated"):
        load_image(path)


def test_not_an_image_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"this is text, not a PNG")
    with pytest.raises(DatasetError, match="x.png"):
        load_image(tmp_path / "x.png")
    with pytest.raises(DatasetError, match="does not exist"):
        load_image(tmp_path / "nope.jpg")


@pytest.mark.parametrize("image, expected", [
    (Image.new("L", (4, 4), 77), (77, 77, 77)),
    (Image.new("1", (4, 4), 1), (255, 255, 255)),
    (Image.new("RGBA", (4, 4), (10, 20, 30, 0)), (255, 255, 255)),  # fully transparent: white
    (Image.new("RGBA", (4, 4), (10, 20, 30, 255)), (10, 20, 30)),
    (Image.new("CMYK", (4, 4), (0, 0, 0, 0)), (255, 255, 255)),
    (Image.new("I;16", (4, 4), 65535), (255, 255, 255)),
    (Image.new("I;16", (4, 4), 257 * 100), (100, 100, 100)),
    (Image.new("F", (4, 4), 12.4), (12, 12, 12)),
])
def test_modes_convert_to_rgb(image: Image.Image, expected: tuple[int, int, int]) -> None:
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.getpixel((1, 1)) == expected


def test_palette_png_from_disk(tmp_path: Path) -> None:
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 9, 99, 199] + [0] * 762)
    p.save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").getpixel((0, 0)) == (9, 99, 199)


def test_16bit_grey_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 4), 32896, np.uint16)).save(tmp_path / "g16.png")  # 128 * 257
    assert load_image(tmp_path / "g16.png").getpixel((0, 0)) == (128, 128, 128)


def test_arrays() -> None:
    assert array_to_rgb(np.full((3, 5), 9, np.uint8)).getpixel((0, 0)) == (9, 9, 9)
    assert array_to_rgb(np.full((3, 5, 3), 257 * 3, np.uint16)).getpixel((0, 0)) == (3, 3, 3)
    with pytest.raises(DatasetError, match="dtype float32"):
        array_to_rgb(np.zeros((3, 5, 3), np.float32))
    with pytest.raises(DatasetError, match="shape"):
        array_to_rgb(np.zeros((3, 5, 2), np.uint8))


def test_preprocess_accepts_grey_and_rgba() -> None:
    pre = Preprocess(imgsz=(8, 8), mean=(0, 0, 0), std=(1, 1, 1))
    grey, _ = pre(Image.new("L", (8, 8), 50))
    rgba, _ = pre(Image.new("RGBA", (8, 8), (50, 50, 50, 255)))
    np.testing.assert_array_equal(grey, np.full((1, 3, 8, 8), 50, np.float32))
    np.testing.assert_array_equal(grey, rgba)
