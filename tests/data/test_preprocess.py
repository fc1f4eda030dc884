"""Preprocess: geometry of each resize mode, channel order, normalisation, mapping back."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from edgekit.data import (
    ImageMeta,
    Preprocess,
    PreprocessError,
    boxes_to_input,
    boxes_to_original,
    mask_to_input,
    mask_to_original,
    scores_to_original,
)
from edgekit.data.transforms import plan_geometry, resize_nearest

PLAIN = {"mean": (0, 0, 0), "std": (1, 1, 1)}  # tensor values = pixel values


def test_stretch_output_contract() -> None:
    x, meta = Preprocess(imgsz=(48, 64), **PLAIN)(Image.new("RGB", (100, 50), (1, 2, 3)))
    assert x.shape == (1, 3, 48, 64) and x.dtype == np.float32 and x.flags.c_contiguous
    assert meta == ImageMeta(orig_size=(50, 100), input_size=(48, 64), resized=(48, 64),
                             scale=(48 / 50, 64 / 100), pad=(0, 0))
    np.testing.assert_array_equal(x[0, :, 10, 10], [1, 2, 3])


def test_letterbox_geometry_and_pad_value() -> None:
    pre = Preprocess(imgsz=(64, 64), resize="letterbox", pad_value=7, **PLAIN)
    x, meta = pre(Image.new("RGB", (200, 100), (200, 100, 50)))  # 2:1 landscape
    assert meta.resized == (32, 64) and meta.pad == (16, 0) and meta.scale == (0.32, 0.32)
    np.testing.assert_array_equal(x[0, :, :16], 7)  # top border
    np.testing.assert_array_equal(x[0, :, 48:], 7)  # bottom border
    inside = np.broadcast_to(np.array([200, 100, 50])[:, None, None], (3, 32, 64))
    np.testing.assert_array_equal(x[0, :, 16:48, :], inside)


def test_letterbox_round_trip_of_boxes() -> None:
    pre = Preprocess(imgsz=(320, 320), resize="letterbox")
    _, meta = pre(Image.new("RGB", (640, 427)))
    boxes = np.array([[10, 20, 110, 60], [0, 0, 640, 427], [300.5, 200.25, 301.5, 201.75]], np.float32)
    to_input = boxes_to_input(boxes, meta)
    # The whole image maps onto the centred band between the borders.
    np.testing.assert_allclose(to_input[1], [0, meta.pad[0], 320, meta.pad[0] + meta.resized[0]], atol=1e-4)
    np.testing.assert_allclose(boxes_to_original(to_input, meta), boxes, atol=1e-3)


def test_shorter_side_crop_takes_the_centre() -> None:
    # 300x200 image: thirds red | green | blue. Shorter side 200 -> 100, so 150 wide, crop 25..125.
    pixels = np.zeros((200, 300, 3), np.uint8)
    pixels[:, :100, 0] = pixels[:, 100:200, 1] = pixels[:, 200:, 2] = 255
    pre = Preprocess(imgsz=(100, 100), resize="shorter-side-crop", **PLAIN)
    x, meta = pre(Image.fromarray(pixels))
    assert meta.resized == (100, 150) and meta.pad == (0, -25)
    assert x[0, :, 50, 5].argmax() == 0 and x[0, :, 50, 50].argmax() == 1 and x[0, :, 50, 95].argmax() == 2
    assert x[0, 0, 50, 20] == 255 and x[0, 1, 50, 30] == 255  # red ends at 50 - 25 = 25
    # A box over the blue third maps into the crop and is clipped at its right edge.
    np.testing.assert_allclose(boxes_to_input(np.array([[200, 0, 300, 200]]), meta), [[75, 0, 100, 100]])


def test_crop_pct_is_resize_256_crop_224() -> None:
    meta = plan_geometry("shorter-side-crop", (375, 500), (224, 224), crop_pct=0.875)
    assert meta.resized == (256, 341) and meta.pad == (-16, -58)
    with pytest.raises(PreprocessError, match="crop_pct"):
        Preprocess(resize="letterbox", crop_pct=0.875)


def test_bgr_channel_order_and_mean_std_in_tensor_order() -> None:
    red = Image.new("RGB", (8, 8), (255, 0, 0))
    x, _ = Preprocess(imgsz=(8, 8), channel_order="bgr", **PLAIN)(red)
    np.testing.assert_array_equal(x[0, :, 0, 0], [0, 0, 255])
    pre = Preprocess(imgsz=(8, 8), mean=(10, 20, 30), std=(2, 4, 5), channel_order="bgr")
    x, _ = pre(Image.new("RGB", (8, 8), (100, 50, 200)))  # tensor order b, g, r = 200, 50, 100
    np.testing.assert_allclose(x[0, :, 3, 3], [(200 - 10) / 2, (50 - 20) / 4, (100 - 30) / 5])


def test_default_mean_std_are_imagenet_in_pixel_units() -> None:
    x, _ = Preprocess(imgsz=(4, 4))(Image.new("RGB", (4, 4), (124, 116, 104)))
    np.testing.assert_allclose(x[0, :, 0, 0], [(124 - 123.675) / 58.395, (116 - 116.28) / 57.12,
                                               (104 - 103.53) / 57.375], rtol=1e-5)


def test_numpy_bgr_frame_matches_pil_rgb() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    pre = Preprocess(imgsz=(16, 16), resize="letterbox")
    a, meta_a = pre(Image.fromarray(rgb))
    b, meta_b = pre(rgb[:, :, ::-1].copy(), input_order="bgr")
    np.testing.assert_array_equal(a, b)
    assert meta_a == meta_b


def test_dict_round_trip_through_json() -> None:
    pre = Preprocess(imgsz=(256, 512), mean=(1, 2, 3), std=(4, 5, 6), channel_order="bgr",
                     resize="shorter-side-crop", pad_value=(1, 2, 3), crop_pct=0.9)
    back = Preprocess.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert back == pre and back.resize.value == "shorter-side-crop"
    assert json.loads(json.dumps(pre.to_dict()))["imgsz"] == [256, 512]


@pytest.mark.parametrize("bad, match", [
    ({"resize": "fit"}, "letterbox"),
    ({"std": (0.229, 0, 1)}, "std"),
    ({"imgsz": (0, 10)}, "imgsz"),
    ({"pad_value": 300}, "pad_value"),
    ({"mean": (1, 2)}, "mean"),
])
def test_bad_options_are_refused(bad: dict, match: str) -> None:
    with pytest.raises(PreprocessError, match=match):
        Preprocess(**bad)


def test_from_dict_refuses_unknown_keys() -> None:
    with pytest.raises(PreprocessError, match="unknown preprocessing keys"):
        Preprocess.from_dict({"imgsz": [8, 8], "scale": 1 / 255})


def test_mask_round_trip_through_letterbox() -> None:
    mask = np.random.default_rng(1).integers(0, 5, (20, 40), dtype=np.uint8)
    meta = plan_geometry("letterbox", (20, 40), (80, 80))  # exact 2x, border 20 rows top and bottom
    at_input = mask_to_input(mask, meta)
    assert at_input.shape == (80, 80)
    assert (at_input[:20] == 255).all() and (at_input[60:] == 255).all()
    np.testing.assert_array_equal(mask_to_original(at_input, meta), mask)


def test_mask_back_from_centre_crop_fills_unseen_pixels() -> None:
    meta = plan_geometry("shorter-side-crop", (10, 20), (10, 10))  # keeps columns 5..15
    back = mask_to_original(np.full((10, 10), 3, np.uint8), meta, fill=0)
    assert (back[:, 5:15] == 3).all() and (back[:, :5] == 0).all() and (back[:, 15:] == 0).all()


def test_scores_to_original_agrees_with_argmax_mask() -> None:
    scores = np.zeros((2, 8, 8), np.float32)
    scores[1, :, 4:] = 5.0  # right half class 1
    meta = plan_geometry("stretch", (16, 32), (8, 8))
    up = scores_to_original(scores, meta)
    assert up.shape == (2, 16, 32)
    np.testing.assert_array_equal(up.argmax(0)[:, [0, 10, 20, 31]], np.tile([0, 0, 1, 1], (16, 1)))
    np.testing.assert_array_equal(mask_to_original(scores.argmax(0), meta)[:, [0, 10, 20, 31]],
                                  np.tile([0, 0, 1, 1], (16, 1)))


def test_resize_nearest_samples_pixel_centres() -> None:
    a = np.arange(4).reshape(1, 4)
    np.testing.assert_array_equal(resize_nearest(a, (1, 8)), [[0, 0, 1, 1, 2, 2, 3, 3]])
    np.testing.assert_array_equal(resize_nearest(a, (1, 2)), [[1, 3]])
