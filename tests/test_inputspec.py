"""The input contract: task defaults, overrides, validation, JSON round trip."""

from __future__ import annotations

import pytest

from edgekit.errors import ExportError
from edgekit.inputspec import (
    CROP_FRACTION,
    IMAGENET_MEAN,
    TASK_DEFAULTS,
    ChannelOrder,
    InputSpec,
    ResizeMode,
    make_input_spec,
)


def test_task_defaults() -> None:
    classify = make_input_spec("classify", (224, 224))
    assert classify.shape == (1, 3, 224, 224) and classify.name == "images" and classify.layout == "NCHW"
    assert classify.mean == IMAGENET_MEAN == (123.675, 116.28, 103.53) and classify.std == (58.395, 57.12, 57.375)
    assert classify.resize is ResizeMode.SHORTER_SIDE_CROP and classify.crop_fraction == CROP_FRACTION == 0.875
    assert make_input_spec("segment", (512, 1024)).resize is ResizeMode.STRETCH
    detect = make_input_spec("detect", (320, 320))
    assert detect.resize is ResizeMode.LETTERBOX and detect.crop_fraction == 1.0
    assert set(TASK_DEFAULTS) == {"classify", "segment", "detect"}


def test_overrides_and_dynamic_batch() -> None:
    spec = make_input_spec("classify", (160, 128), dynamic_batch=True, mean=(0, 0, 0), std=(1, 1, 1),
                           channel_order="bgr", resize="stretch")
    assert spec.shape == ("batch", 3, 160, 128) and spec.dynamic_batch and spec.imgsz == (160, 128)
    assert spec.mean == (0.0, 0.0, 0.0) and spec.channel_order is ChannelOrder.BGR
    assert spec.resize is ResizeMode.STRETCH and spec.crop_fraction == 1.0  # the crop belongs to shorter-side-crop
    assert make_input_spec("segment", (64, 64), resize="shorter-side-crop", batch=4).crop_fraction == CROP_FRACTION
    assert make_input_spec("segment", (64, 64), batch=4).shape[0] == 4


def test_round_trip() -> None:
    spec = make_input_spec("detect", (320, 480), dynamic_batch=True, channel_order="bgr")
    data = spec.to_dict()
    assert data["resize"] == "letterbox" and data["shape"] == ["batch", 3, 320, 480]
    assert InputSpec.from_dict(data) == spec
    with pytest.raises(ExportError, match=r"unknown input spec fields \['colour'\]"):
        InputSpec.from_dict({**data, "colour": "rgb"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"std": (58.0, 0.0, 57.0)}, "std must be positive"),
        ({"mean": (1.0, 2.0)}, "mean and std take 3 values"),
        ({"resize": "squash"}, "unknown resize mode 'squash'; choose one of: stretch, letterbox, shorter-side-crop"),
        ({"channel_order": "rbg"}, "unknown channel order 'rbg'; choose one of: rgb, bgr"),
        ({"batch": 0}, "batch must be >= 1"),
    ],
)
def test_invalid_values_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ExportError, match=message):
        make_input_spec("classify", (224, 224), **kwargs)  # type: ignore[arg-type]


def test_unknown_task_and_bad_shapes() -> None:
    with pytest.raises(ExportError, match="no input defaults for task 'pose'"):
        make_input_spec("pose", (224, 224))
    with pytest.raises(ExportError, match="imgsz must be positive"):
        make_input_spec("classify", (0, 224))
    with pytest.raises(ExportError, match=r"does not match NCHW 3x224x224"):
        InputSpec(name="images", shape=(1, 224, 224, 3), imgsz=(224, 224))
