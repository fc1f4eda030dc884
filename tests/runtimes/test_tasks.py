"""Task pipelines: one image gives the PyTorch pipeline's answer on every backend here, in the
original image's pixels; ``edgekit predict`` prints and draws it."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from runtime_cases import CPU_BACKENDS, SAMPLE, Case, match_detections
from PIL import Image

from edgekit.bundle import PostProcess, read_manifest, write_manifest
from edgekit.cli import main
from edgekit.errors import BundleError
from edgekit.runtimes import (
    BACKENDS,
    Classifier,
    Detector,
    PlatformInfo,
    Segmenter,
    UnknownBackendError,
    choose_backend,
    load,
)
from edgekit.runtimes.draw import draw_detections
from edgekit.runtimes.results import Detections, SegmentationResult, palette
from edgekit.runtimes.tasks import SINGLE_GRAPH_BACKENDS, GraphMode, SingleGraphDetector


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_classifier_top_k_equals_pytorch(classifier_case: Case, backend: str) -> None:
    model = load(classifier_case.bundle, backend=backend)
    assert isinstance(model, Classifier) and model.backend == backend
    ref, got = classifier_case.reference(classifier_case.image), model.predict(classifier_case.image)
    # The fixture is decisive: neighbouring top-k probabilities differ far beyond float rounding.
    assert np.min(-np.diff(ref.scores)) > 1e-4
    assert got.class_ids.tolist() == ref.class_ids.tolist() and got.labels == ref.labels
    np.testing.assert_allclose(got.scores, ref.scores, atol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_detections_match_pytorch(detector_case: Case, backend: str) -> None:
    model = load(detector_case.bundle, backend=backend)
    assert isinstance(model, Detector)
    ref, got = detector_case.reference(detector_case.image), model.predict(detector_case.image)
    assert len(ref) > 0, "the fixture must produce detections"
    worst_iou, worst_score = match_detections(ref, got)
    assert worst_iou >= 0.95 and worst_score <= 1e-3, (worst_iou, worst_score)
    # Boxes are in the 400x300 image's pixels, not the 320x320 letterboxed input's.
    w, h = detector_case.image.size
    assert got.boxes.min() >= 0 and got.boxes[:, [0, 2]].max() <= w and got.boxes[:, [1, 3]].max() <= h
    assert got.boxes[:, 3].max() > 240  # the letterbox scale 0.8 is undone (input content spans y 40..280)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_segmentation_masks_match_pytorch(segmenter_case: Case, backend: str) -> None:
    model = load(segmenter_case.bundle, backend=backend)
    assert isinstance(model, Segmenter)
    ref, got = segmenter_case.reference(segmenter_case.image), model.predict(segmenter_case.image)
    assert got.mask.shape == (segmenter_case.image.height, segmenter_case.image.width)
    assert len(ref.class_ids) >= 3, "the fixture must segment several classes"
    assert np.mean(got.mask == ref.mask) >= 0.999
    assert got.labels[0] == "background" and set(got.class_ids.tolist()) <= set(range(7))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_single_graph_gives_the_pipeline_detections(detector_case: Case, backend: str) -> None:
    pipeline = load(detector_case.bundle, backend=backend, graph="pipeline")
    single = load(detector_case.bundle, backend=backend, graph="single")
    assert isinstance(single, SingleGraphDetector) and type(pipeline) is Detector
    assert (pipeline.graph_mode, single.graph_mode) == ("pipeline", "single")
    assert list(single.backends) == ["single"] and single.backend == backend
    ref, got = pipeline.predict(detector_case.image), single.predict(detector_case.image)
    assert len(ref) > 0, "the fixture must produce detections"
    worst_iou, worst_score = match_detections(ref, got)
    assert worst_iou >= 0.99 and worst_score <= 1e-3, (worst_iou, worst_score)
    assert got.class_ids.dtype == np.int64 and sorted(got.labels) == sorted(ref.labels)


def test_graph_auto_follows_the_backend_table(detector_case: Case, classifier_case: Case) -> None:
    for backend in CPU_BACKENDS:
        model = load(detector_case.bundle, backend=backend)
        assert model.graph_mode == ("single" if SINGLE_GRAPH_BACKENDS[backend] else "pipeline")
    assert load(classifier_case.bundle, backend="onnxruntime", graph=GraphMode.AUTO).graph_mode == "model"


def test_graph_modes_it_cannot_honour_are_refused(detector_case: Case, classifier_case: Case,
                                                   tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="applies to detector bundles.*Drop the graph option"):
        load(classifier_case.bundle, backend="onnxruntime", graph="pipeline")
    with pytest.raises(BundleError, match="not a mode; modes: auto, pipeline, single. Did you mean 'single'"):
        load(detector_case.bundle, backend="onnxruntime", graph="singel")
    with pytest.raises(BundleError, match="backend 'litert' cannot run the single-graph detector"):
        load(detector_case.bundle, backend="litert", graph="single")
    # A bundle without single.onnx (as exported with a dynamic batch): single is refused, auto runs the pipeline.
    manifest = read_manifest(detector_case.bundle)
    copy = tmp_path / "pipeline-only"
    shutil.copytree(detector_case.bundle, copy)
    write_manifest(dataclasses.replace(manifest, graphs=tuple(g for g in manifest.graphs if g.role != "single")), copy)
    with pytest.raises(BundleError, match="has no single graph.*graph='pipeline'"):
        load(copy, backend="onnxruntime", graph="single")
    assert load(copy, backend="onnxruntime").graph_mode == "pipeline"


def test_cli_bench_records_the_graph_mode(detector_case: Case, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    code = main(["bench", str(detector_case.bundle), "--backend", "onnxruntime", "--graph", "single", "--runs", "2",
                 "--warmup", "0", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "2 runs after 0 warm-up, single graph" in printed
    record = json.loads(out.read_text())
    assert record["graph"] == "single" and list(record["backend_settings"]) == ["single"]


def test_image_inputs_are_equivalent(classifier_case: Case, tmp_path: Path) -> None:
    model = load(classifier_case.bundle, backend="onnxruntime")
    image = classifier_case.image
    path = tmp_path / "image.png"
    image.save(path)
    rgb = np.asarray(image)
    expected = model.predict(image)
    for got in (model.predict(path), model.predict(str(path)), model.predict(rgb),
                model.predict(np.ascontiguousarray(rgb[:, :, ::-1]), input_order="bgr")):
        assert got.class_ids.tolist() == expected.class_ids.tolist()
        np.testing.assert_array_equal(got.scores, expected.scores)


def test_auto_backend_follows_the_platform_table(classifier_case: Case) -> None:
    model = load(classifier_case.bundle)
    files = [g.path for g in read_manifest(classifier_case.bundle).graphs]
    assert model.backend == choose_backend(PlatformInfo.detect(), files)


def test_predict_timed_splits_the_time(detector_case: Case) -> None:
    model = load(detector_case.bundle, backend="onnxruntime")
    result, times = model.predict_timed(detector_case.image)
    assert len(result) == len(model.predict(detector_case.image))
    assert times.pre_ms > 0 and times.infer_ms > 0 and times.post_ms > 0
    assert times.total_ms == pytest.approx(times.pre_ms + times.infer_ms + times.post_ms)


# ---------------------------------------------------------------- errors

def test_load_refuses_what_it_cannot_run(classifier_case: Case, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="edgekit bundle"):
        load(tmp_path)
    with pytest.raises(UnknownBackendError, match="Did you mean 'openvino'"):
        load(classifier_case.bundle, backend="openvin")
    with pytest.raises(BundleError, match="reads .tflite files.*onnxruntime, openvino"):
        load(classifier_case.bundle, backend="litert")
    manifest = read_manifest(classifier_case.bundle)
    copy = tmp_path / "copy"
    shutil.copytree(classifier_case.bundle, copy)
    write_manifest(dataclasses.replace(manifest, postprocess=PostProcess("argmax")), copy)
    with pytest.raises(BundleError, match="needs 'topk' post-processing"):
        load(copy, backend="onnxruntime")
    (copy / manifest.graphs[0].path).write_bytes(b"not a model")
    with pytest.raises(BundleError, match="does not match its manifest"):
        load(copy, backend="onnxruntime")
    assert set(BACKENDS) == {"onnxruntime", "openvino", "litert", "tensorrt"}


# ---------------------------------------------------------------- results and drawing

def test_palette_is_voc_and_masks_colourise() -> None:
    colours = palette(256)
    assert colours[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert len({tuple(c) for c in colours.tolist()}) == 256
    mask = np.array([[0, 1], [2, 1]], np.uint8)
    seg = SegmentationResult(mask, np.array([0, 1, 2]), ("bg", "a", "b"), 3)
    assert seg.colorize()[1, 0].tolist() == [0, 128, 0]
    np.testing.assert_allclose(seg.fractions(), [0.25, 0.5, 0.25])
    assert seg.summary() == "a 50.0%, bg 25.0%, b 25.0%"


def test_draw_detections_outlines_each_box() -> None:
    image = Image.new("RGB", (120, 80), (40, 40, 40))
    dets = Detections(np.array([[10, 20, 60, 70], [70, 5, 110, 40]], np.float32), np.array([0.9, 0.6], np.float32),
                      np.array([0, 3]), ("circle", "square"))
    drawn = np.asarray(draw_detections(image, dets, line_width=2)).astype(int)
    before = np.asarray(image).astype(int)
    for x1, y1, x2, y2 in dets.boxes.astype(int).tolist():
        assert (drawn[y2 - 1, x1:x2] != before[y2 - 1, x1:x2]).any(axis=-1).all()  # bottom edge drawn
    assert (drawn[75:, :5] == before[75:, :5]).all()  # far from any box: untouched


def test_cli_predict_draws_detections_on_the_sample(detector_case: Case, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "drawn.png"
    code = main(["predict", str(detector_case.bundle), str(SAMPLE), "--backend", "onnxruntime", "--save", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    expected = load(detector_case.bundle, backend="onnxruntime").predict(SAMPLE)
    count = int(re.search(r"sample\.jpg: (\d+) detections", printed).group(1))
    assert count == len(expected) > 0
    assert len(re.findall(r"^\s+\S+ \d\.\d{3} \[", printed, flags=re.M)) == count
    original = Image.open(SAMPLE).convert("RGB")
    drawn = Image.open(out)
    assert drawn.size == original.size
    diff = (np.asarray(drawn.convert("RGB")).astype(int) != np.asarray(original).astype(int)).any(axis=-1)
    for x1, y1, x2, y2 in np.round(expected.boxes).astype(int).tolist():
        x2, y2 = min(x2, original.width - 1), min(y2, original.height - 1)
        assert diff[y2 - 1:y2 + 1, x1:x2 + 1].any() and diff[y1:y2 + 1, x1:x1 + 2].any()
    assert diff.mean() < 0.9


def test_cli_predict_a_folder_saves_one_picture_per_image(segmenter_case: Case, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        segmenter_case.image.rotate(90 * i).save(folder / f"im{i}.jpg")
    code = main(["predict", str(segmenter_case.bundle), str(folder), "--backend", "openvino", "--save",
                 str(tmp_path / "out"), "--threads", "1"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert printed.count("classes present") == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["im0.png", "im1.png"]
    assert Image.open(tmp_path / "out" / "im0.png").size == segmenter_case.image.size


NO_TORCH_PREDICT = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'onnx', 'onnxslim', 'onnxsim'):
            raise ImportError(name + ' is not installed on this board')
sys.meta_path.insert(0, Block())
import edgekit.runtimes
from edgekit.runtimes import load, benchmark, render
import edgekit.runtimes.backends.litert, edgekit.runtimes.backends.tensorrt
model = load(sys.argv[1], backend=sys.argv[2])
result = model.predict(sys.argv[3])
render(__import__('PIL.Image').Image.open(sys.argv[3]), result)
loaded = [m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx') or m.startswith(
    ('edgekit.graph', 'edgekit.calib', 'edgekit.models', 'edgekit.exporters', 'edgekit.api'))]
print(len(result), loaded)
"""


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_the_sdk_runs_without_torch_or_onnx(detector_case: Case, backend: str) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", NO_TORCH_PREDICT, str(detector_case.bundle), backend, str(SAMPLE)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    count, loaded = out.stdout.split(" ", 1)
    assert int(count) > 0 and loaded.strip() == "[]"
