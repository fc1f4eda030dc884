"""Property tests (hypothesis) on what reads outside input: the manifest parser, image pre-processing,
and the detector glue (box decoding, NMS, post-processing).

Small example counts keep CI fast; tools/fuzz_loaders.py is the long run over whole bundles.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from edgekit.bundle import MANIFEST_NAME, GraphFile, Manifest, PostProcess, TensorSpec, read_manifest
from edgekit.data.errors import DatasetError
from edgekit.data.image_io import to_rgb
from edgekit.data.transforms import Preprocess, ResizeMode, boxes_to_input, boxes_to_original
from edgekit.errors import BundleError
from edgekit.inputspec import make_input_spec
from edgekit.runtimes.boxes import batched_nms, box_iou, clip_boxes, decode_boxes, nms
from edgekit.runtimes.twostage import TwoStageParams, postprocess

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOME = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- manifests

names = st.text(string.ascii_letters + string.digits + "-_.", min_size=1, max_size=12)
dims = st.integers(1, 4096) | st.sampled_from(["batch", "rois", "n"])
tensors = st.builds(TensorSpec, name=names, shape=st.lists(dims, max_size=4).map(tuple),
                    dtype=st.sampled_from(["float32", "float16", "int64", "uint8"]), meaning=st.text(max_size=20))
files = st.from_regex(r"[a-z][a-z0-9_]{0,8}(\.fp32)?\.(onnx|xml|tflite|engine)", fullmatch=True)
graphs = st.builds(GraphFile, role=names, path=files, sha256=st.text("0123456789abcdef", min_size=64, max_size=64),
                   size_bytes=st.integers(0, 2**40), inputs=st.lists(tensors, max_size=2).map(tuple),
                   outputs=st.lists(tensors, min_size=1, max_size=3).map(tuple),
                   precision=st.sampled_from(["fp32", "fp16", "int8"]))
json_scalars = st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.floats(allow_nan=False) | st.text(max_size=8)
params = st.dictionaries(names, json_scalars | st.lists(json_scalars, max_size=3), max_size=4)


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    task = draw(st.sampled_from(["classify", "segment", "detect"]))
    spec = make_input_spec(task, (draw(st.integers(1, 1024)), draw(st.integers(1, 1024))),
                           batch=draw(st.integers(1, 8)), dynamic_batch=draw(st.booleans()),
                           channel_order=draw(st.sampled_from(["rgb", "bgr"])))
    return Manifest(model=draw(names), task=task, target=draw(names), input=spec,
                    outputs=tuple(draw(st.lists(tensors, min_size=1, max_size=3))),
                    graphs=tuple(draw(st.lists(graphs, min_size=1, max_size=3))),
                    postprocess=PostProcess(draw(names), draw(params)), labels=tuple(draw(st.lists(names, max_size=5))),
                    num_classes=draw(st.none() | st.integers(1, 1000)), edgekit_version=draw(names),
                    toolchain=draw(st.dictionaries(names, names, max_size=4)), created=draw(names))


@FAST
@given(manifests())
def test_manifests_round_trip_through_json(manifest: Manifest) -> None:
    assert Manifest.from_dict(json.loads(json.dumps(manifest.to_dict()))) == manifest


json_values = st.recursive(json_scalars | st.floats(allow_nan=True, allow_infinity=True),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                       max_size=4), max_leaves=12)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _paths(item, (*prefix, index))
    return out


@FAST
@given(manifests(), st.data())
def test_a_manifest_with_any_field_replaced_parses_or_raises_bundle_error(manifest: Manifest, data: st.DataObject
                                                                          ) -> None:
    doc = manifest.to_dict()
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from([p for p in _paths(doc) if p]))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if data.draw(st.booleans()):
            parent[path[-1]] = data.draw(json_values)
        elif isinstance(parent, dict):
            del parent[path[-1]]
    try:
        parsed = Manifest.from_dict(doc)
    except BundleError:
        return
    assert isinstance(parsed, Manifest) and all(isinstance(g, GraphFile) for g in parsed.graphs)


@FAST
@given(json_values)
def test_any_json_document_parses_or_raises_bundle_error(doc: Any) -> None:
    if not isinstance(doc, dict):
        doc = {"schema_version": 1, "graphs": doc}
    doc.setdefault("schema_version", 1)
    try:
        Manifest.from_dict(doc)
    except BundleError:
        pass


@FAST
@given(st.binary(max_size=400) | manifests().map(lambda m: json.dumps(m.to_dict()).encode()[: len(m.graphs) * 97]))
def test_any_manifest_bytes_read_or_raise_bundle_error(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / MANIFEST_NAME).write_bytes(raw)
        try:
            read_manifest(tmp)
        except BundleError:
            pass


# ---------------------------------------------------------------- image pre-processing

preprocesses = st.builds(Preprocess, imgsz=st.tuples(st.integers(1, 48), st.integers(1, 48)),
                         resize=st.sampled_from(list(ResizeMode)), channel_order=st.sampled_from(["rgb", "bgr"]))


def _in_range(x: np.ndarray, pre: Preprocess) -> bool:
    """Every value is a pixel in 0..255 normalised (mean and std are in the tensor's channel order)."""
    mean, std = np.asarray(pre.mean)[:, None, None], np.asarray(pre.std)[:, None, None]
    lo, hi = (0 - mean) / std - 1e-4, (255 - mean) / std + 1e-4
    return bool(np.all((x[0] >= lo) & (x[0] <= hi)))


@FAST
@given(preprocesses, st.sampled_from([np.uint8, np.uint16, np.float32, np.int32, np.bool_]),
       st.integers(0, 40), st.integers(0, 40), st.sampled_from([None, 1, 2, 3, 4, 5]), st.data())
def test_preprocess_takes_any_array_or_refuses_it_with_dataset_error(pre: Preprocess, dtype: type, h: int, w: int,
                                                                     channels: int | None, data: st.DataObject
                                                                     ) -> None:
    shape = (h, w) if channels is None else (h, w, channels)
    image = data.draw(arrays(dtype, shape))
    valid = dtype in (np.uint8, np.uint16) and channels != 2 and channels != 5 and h > 0 and w > 0
    if not valid:
        with pytest.raises(DatasetError):
            pre(image)
        return
    x, meta = pre(image, input_order=data.draw(st.sampled_from(["rgb", "bgr"])))
    assert x.shape == (1, 3, *pre.imgsz) and x.dtype == np.float32
    assert np.isfinite(x).all() and _in_range(x, pre)
    assert meta.orig_size == (h, w) and meta.input_size == pre.imgsz


@SOME
@given(preprocesses, st.sampled_from(["L", "RGB", "RGBA", "P", "1", "CMYK", "I;16", "F", "LA", "YCbCr"]),
       st.integers(1, 30), st.integers(1, 30), st.integers(0, 2**32 - 1))
def test_preprocess_reads_every_mode_as_its_rgb_rendering(pre: Preprocess, mode: str, h: int, w: int, seed: int
                                                          ) -> None:
    rgb = Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))
    image = rgb.convert(mode)
    x, _ = pre(image)
    expected, _ = pre(np.asarray(to_rgb(image)))
    np.testing.assert_array_equal(x, expected)


@FAST
@given(st.tuples(st.integers(1, 400), st.integers(1, 400)), st.tuples(st.integers(8, 400), st.integers(8, 400)),
       st.sampled_from([ResizeMode.LETTERBOX, ResizeMode.STRETCH]), st.data())
def test_boxes_map_to_the_input_and_back(orig: tuple[int, int], size: tuple[int, int], mode: ResizeMode,
                                         data: st.DataObject) -> None:
    pre = Preprocess(imgsz=size, resize=mode)
    _, meta = pre.resize_image(np.zeros((*orig, 3), np.uint8))
    h, w = orig
    corners = data.draw(arrays(np.float32, (5, 2, 2), elements=st.floats(0, 1, width=32)))
    xs, ys = np.sort(corners[:, 0], axis=1) * w, np.sort(corners[:, 1], axis=1) * h
    boxes = np.stack((xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]), axis=1)
    inside = boxes_to_input(boxes, meta)
    assert (inside >= 0).all() and (inside[:, [0, 2]] <= size[1]).all() and (inside[:, [1, 3]] <= size[0]).all()
    np.testing.assert_allclose(boxes_to_original(inside, meta), boxes, atol=1e-3 * max(orig) + 1e-3)


# ---------------------------------------------------------------- detector glue


@st.composite
def box_sets(draw: st.DrawFn, max_n: int = 80) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(0, max_n))
    coords = draw(arrays(np.float32, (n, 4), elements=st.floats(0, 100, width=32)))
    boxes = np.concatenate((coords[:, :2], coords[:, :2] + coords[:, 2:] / 3), axis=1)  # widths 0..33
    scores = draw(arrays(np.float32, (n,), elements=st.sampled_from([0.1, 0.5, 0.9]) | st.floats(0, 1, width=32)))
    return boxes, scores


def _greedy(boxes: np.ndarray, scores: np.ndarray, threshold: float, groups: np.ndarray | None = None) -> list[int]:
    """Textbook greedy NMS on the same IoU matrix: visit by score (ties by index), keep what no kept box overlaps."""
    iou = box_iou(boxes, boxes)
    keep: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        if all(iou[i, j] <= threshold or (groups is not None and groups[i] != groups[j]) for j in keep):
            keep.append(int(i))
    return keep


@FAST
@given(box_sets(), st.floats(0, 1))
def test_nms_is_textbook_greedy_nms(data: tuple[np.ndarray, np.ndarray], threshold: float) -> None:
    boxes, scores = data
    keep = nms(boxes, scores, threshold)
    assert keep.dtype == np.int64 and list(keep) == _greedy(boxes, scores, threshold)
    iou = box_iou(boxes[keep], boxes[keep])
    assert (iou[~np.eye(len(keep), dtype=bool)] <= threshold).all()
    for k in range(len(keep) + 1):
        assert list(nms(boxes, scores, threshold, max_keep=k)) == list(keep[:k])


@FAST
@given(box_sets(), st.floats(0, 1), st.data())
def test_batched_nms_never_suppresses_across_classes(data: tuple[np.ndarray, np.ndarray], threshold: float,
                                                     draw: st.DataObject) -> None:
    boxes, scores = data
    groups = draw.draw(arrays(np.int64, (len(boxes),), elements=st.integers(0, 3)))
    assert list(batched_nms(boxes, scores, groups, threshold)) == _greedy(boxes, scores, threshold, groups)


@FAST
@given(box_sets(max_n=30), st.tuples(*[st.floats(0.5, 20) for _ in range(4)]), st.floats(0.5, 8))
def test_decoding_zero_deltas_gives_the_reference_and_clipping_bounds(data: tuple[np.ndarray, np.ndarray],
                                                                      weights: tuple[float, ...], clamp: float
                                                                      ) -> None:
    reference, _ = data
    decoded = decode_boxes(np.zeros_like(reference), reference, weights, clamp)
    np.testing.assert_allclose(decoded, reference, atol=1e-4)
    deltas = np.random.default_rng(0).normal(0, 3, reference.shape).astype(np.float32)
    clipped = clip_boxes(decode_boxes(deltas, reference, weights, clamp), (60, 80))
    assert np.isfinite(clipped).all() and (clipped >= 0).all()
    assert (clipped[:, [0, 2]] <= 80).all() and (clipped[:, [1, 3]] <= 60).all()


TWO_STAGE = dict(num_classes=3, background_index=0, anchor_sizes=[32.0, 64.0], anchor_ratios=[0.5, 1.0], stride=16,
                 pre_nms_top_n=100, post_nms_top_n=50, rpn_nms_threshold=0.7, box_nms_threshold=0.5,
                 score_threshold=0.05, max_detections=10, pooled_size=7, sampling_ratio=2, ps_channels=5,
                 spatial_scale=0.0625, aligned=True, rpn_box_weights=[1.0, 1.0, 1.0, 1.0],
                 rcnn_box_weights=[10.0, 10.0, 5.0, 5.0], scale_clamp=4.135)


@FAST
@given(st.dictionaries(st.sampled_from(sorted(TWO_STAGE)), json_values, min_size=1, max_size=3))
def test_detector_parameters_from_a_manifest_parse_or_raise_bundle_error(changes: dict[str, Any]) -> None:
    try:
        params = TwoStageParams.from_dict({**TWO_STAGE, **changes})
    except BundleError:
        return
    assert params.num_anchors >= 1 and isinstance(params.stride, int)


@FAST
@given(st.integers(1, 40), st.integers(1, 5), st.integers(0, 2**32 - 1), st.floats(0, 0.9), st.floats(0.1, 0.9),
       st.integers(1, 20))
def test_postprocess_returns_valid_detections(rois_n: int, classes: int, seed: int, score_threshold: float,
                                              nms_threshold: float, max_detections: int) -> None:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 50, (rois_n, 2)).astype(np.float32)
    rois = np.concatenate((xy, xy + rng.uniform(0, 30, (rois_n, 2)).astype(np.float32)), axis=1)
    cls_logits = rng.normal(0, 3, (rois_n, classes + 1)).astype(np.float32)
    deltas = rng.normal(0, 1, (rois_n, 4)).astype(np.float32)
    p = TwoStageParams(num_classes=classes, background_index=0, anchor_sizes=(32.0,), anchor_ratios=(1.0,), stride=16,
                       pre_nms_top_n=100, post_nms_top_n=50, rpn_nms_threshold=0.7, box_nms_threshold=nms_threshold,
                       score_threshold=score_threshold, max_detections=max_detections, pooled_size=7,
                       sampling_ratio=2, ps_channels=5, spatial_scale=1 / 16, aligned=True,
                       rpn_box_weights=(1.0, 1.0, 1.0, 1.0), rcnn_box_weights=(10.0, 10.0, 5.0, 5.0),
                       scale_clamp=4.135)
    boxes, scores, labels = postprocess(rois, cls_logits, deltas, p, (64, 72))
    assert len(boxes) == len(scores) == len(labels) <= max_detections
    assert (scores > score_threshold).all() and (scores <= 1).all() and (np.diff(scores) <= 0).all()
    assert ((labels >= 0) & (labels < classes)).all() and labels.dtype == np.int64
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert (boxes[:, [0, 2]] <= 72).all() and (boxes[:, [1, 3]] <= 64).all() and (boxes >= 0).all()
    iou = box_iou(boxes, boxes)
    same = (labels[:, None] == labels[None, :]) & ~np.eye(len(labels), dtype=bool)
    assert (iou[same] <= nms_threshold).all()
