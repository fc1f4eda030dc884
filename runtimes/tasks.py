"""Task pipelines on the board: image -> pre-processing -> backend(s) -> numpy post-processing -> result.

Everything between the image and the graph and between the graph and the result comes from
the manifest (input spec, post-processing block, labels), so one image gives one answer on
every backend. ``load`` reads a bundle and returns the task it holds:

    from edgekit.runtimes import load
    detector = load("bundles/thundernet", backend="auto")
    dets = detector.predict("street.jpg")      # Detections: boxes in the photo's pixels

A task keeps no per-call state: several threads may call ``predict`` on one task at once
(each backend serialises what its engine cannot share).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from time import perf_counter
from typing import ClassVar

import numpy as np
from PIL import Image

from edgekit.bundle import Manifest, read_manifest, require_type, verify
from edgekit.data.errors import PreprocessError
from edgekit.data.image_io import load_image
from edgekit.data.transforms import (ChannelOrder, ImageMeta, Preprocess, boxes_to_original, mask_to_original,
                                     resize_nearest)
from edgekit.errors import BundleError, suggest
from edgekit.runtimes.backends import Backend, BackendEntry, create_backend, get_entry
from edgekit.runtimes.results import ClassResult, Detections, SegmentationResult, label_names
from edgekit.runtimes.select import PlatformInfo, choose_backend
from edgekit.runtimes.twostage import POSTPROCESS_KIND, TwoStageParams, detect, softmax

ImageInput = Image.Image | str | Path | np.ndarray
# Channel orders a numpy image may come in (``predict(..., input_order=)``).
INPUT_ORDERS: tuple[str, ...] = tuple(c.value for c in ChannelOrder)
Result = ClassResult | Detections | SegmentationResult


class GraphMode(StrEnum):
    """Which graphs of a detector bundle run (``load(..., graph=)``, ``edgekit bench --graph``).

    ``pipeline``: stage 1 and head graphs with the numpy glue between them (every bundle and
    backend). ``single``: the whole detector in ``single.onnx`` (RoiAlign, TopK and
    NonMaxSuppression inside the engine; bundles exported at batch 1, backends in
    ``SINGLE_GRAPH_BACKENDS``). ``auto``: ``single`` where the bundle has it and the backend
    runs it faster than the pipeline (``SINGLE_GRAPH_BACKENDS``), else ``pipeline``.
    Classification and segmentation bundles have one graph: only ``auto`` applies.
    """

    AUTO = "auto"
    PIPELINE = "pipeline"
    SINGLE = "single"


# Backends that run the single-graph detector (opset-17 RoiAlign, NonMaxSuppression, TopK with
# data-dependent sizes) -> whether ``graph="auto"`` picks it there. onnxruntime and OpenVINO's
# CPU plugin run it (tests/runtimes/test_tasks.py checks both against the pipeline); LiteRT
# has no RoiAlign, and TensorRT engines are built from the stage graphs. ``auto`` picks it on
# both since its PSRoI pooling became one 1x1 RoiAlign per (bin, RoI) (it used to pool every
# channel over every bin, p * p times the work, and lost to the pipeline): thundernet-snet146,
# 320x320, 2 threads, interleaved p50 onnxruntime 35.3 vs 44.6 ms, OpenVINO 48.6 vs 57.2 ms,
# pre + post 2.9 % / 2.0 % of the latency (docs/benchmarks/runtime_split.json).
SINGLE_GRAPH_BACKENDS: dict[str, bool] = {"onnxruntime": True, "openvino": True}


@dataclass(frozen=True)
class StageTimes:
    """Where one ``predict`` spent its time, in milliseconds.

    Args:
        pre_ms: image -> input tensor (resize, normalise, layout).
        infer_ms: inside the backend(s).
        post_ms: everything else: numpy glue between graphs, decoding, mapping to the image.
    """

    pre_ms: float
    infer_ms: float
    post_ms: float

    @property
    def total_ms(self) -> float:
        """End to end."""
        return self.pre_ms + self.infer_ms + self.post_ms


class _Clock:
    """Adds up the time spent inside backends during one call (one per call: thread-safe)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def run(self, backend: Backend, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = perf_counter()
        out = backend.run(feeds)
        self.seconds += perf_counter() - start
        return out


class Task:
    """Base of the task pipelines: pre-processing, timing, batching; subclasses write ``_infer``.

    Args:
        manifest: the bundle's manifest.
        backends: role -> loaded graph, one per role in ``roles``.
    """

    task: ClassVar[str] = ""
    roles: ClassVar[tuple[str, ...]] = ("model",)
    postprocess_kind: ClassVar[str] = ""
    # Post-processing parameters the task reads from the manifest -> their JSON type.
    postprocess_types: ClassVar[Mapping[str, type]] = {}

    def __init__(self, manifest: Manifest, backends: Mapping[str, Backend]) -> None:
        if manifest.postprocess.kind != self.postprocess_kind:
            raise BundleError(f"a {self.task} bundle needs '{self.postprocess_kind}' post-processing; this one "
                              f"declares '{manifest.postprocess.kind}'. Re-export the bundle.")
        for key, kind in self.postprocess_types.items():
            if key in manifest.postprocess.params:
                require_type(manifest.postprocess.params[key], kind, f"post-processing parameter '{key}'")
        missing = [r for r in self.roles if r not in backends]
        if missing:
            raise BundleError(f"{type(self).__name__} needs graphs {list(self.roles)}; missing {missing}.")
        self.manifest = manifest
        self.backends = dict(backends)
        self.preprocess = Preprocess.from_input_spec(manifest.input)
        self._input = manifest.input.name

    @property
    def backend(self) -> str:
        """Name of the backend that runs the graphs."""
        return next(iter(self.backends.values())).name

    @property
    def graph_mode(self) -> str:
        """Which graphs run: ``pipeline`` or ``single`` for a detector, ``model`` for one-graph tasks."""
        return "model"

    def predict(self, image: ImageInput, *, input_order: str = "rgb") -> Result:
        """Run the model on one image (a path, a Pillow image, or an HWC uint8 array in ``input_order``)."""
        return self.predict_timed(image, input_order=input_order)[0]

    def predict_timed(self, image: ImageInput, *, input_order: str = "rgb") -> tuple[Result, StageTimes]:
        """``predict`` and where its time went."""
        start = perf_counter()
        if input_order not in INPUT_ORDERS:
            raise PreprocessError(f"input_order '{input_order}' is not a channel order; use "
                                  f"{' or '.join(INPUT_ORDERS)} (bgr for OpenCV frames).")
        x, meta = self.preprocess(open_image(image), input_order=input_order)
        x = self._fill_batch(x)
        prepared = perf_counter()
        clock = _Clock()
        result = self._infer(x, meta, clock)
        done = perf_counter()
        return result, StageTimes(pre_ms=(prepared - start) * 1e3, infer_ms=clock.seconds * 1e3,
                                  post_ms=(done - prepared - clock.seconds) * 1e3)

    def _fill_batch(self, x: np.ndarray) -> np.ndarray:
        # A graph exported with a fixed batch N > 1 takes N images: the rest are zeros and ignored.
        n = self.manifest.input.shape[0]
        if isinstance(n, int) and n > 1:
            x = np.concatenate((x, np.zeros((n - 1, *x.shape[1:]), x.dtype)))
        return x

    def _infer(self, x: np.ndarray, meta: ImageMeta, clock: _Clock) -> Result:
        raise NotImplementedError

    def _names(self, ids: np.ndarray) -> tuple[str, ...]:
        return label_names(ids, self.manifest.labels)


def open_image(image: ImageInput) -> Image.Image | np.ndarray:
    """A path is read with Pillow (any format it decodes); images and arrays pass through."""
    if isinstance(image, (str, Path)):
        return load_image(image)
    return image


class Classifier(Task):
    """Top-k classes: softmax over the logits (when the manifest asks for it), best ``k`` first."""

    task = "classify"
    postprocess_kind = "topk"
    postprocess_types: ClassVar[Mapping[str, type]] = {"k": int, "softmax": bool}

    def _infer(self, x: np.ndarray, meta: ImageMeta, clock: _Clock) -> ClassResult:
        graph = self.manifest.graph("model")
        logits = clock.run(self.backends["model"], {self._input: x})[graph.outputs[0].name][0]
        params = self.manifest.postprocess.params
        scores = softmax(logits) if params.get("softmax", True) else logits.astype(np.float32)
        ids = np.argsort(-scores, kind="stable")[: max(1, min(int(params.get("k", 5)), scores.size))]
        return ClassResult(class_ids=ids.astype(np.int64), scores=scores[ids], labels=self._names(ids))


class Segmenter(Task):
    """A class per pixel: argmax over the class axis at model resolution, then nearest back to the image.

    The argmax is taken before resizing (one plane instead of ``C``): the mask's edges are
    those of the model's grid, which is what the logits hold.
    """

    task = "segment"
    postprocess_kind = "argmax"

    def _infer(self, x: np.ndarray, meta: ImageMeta, clock: _Clock) -> SegmentationResult:
        graph = self.manifest.graph("model")
        logits = clock.run(self.backends["model"], {self._input: x})[graph.outputs[0].name][0]
        num_classes = int(logits.shape[0])
        mask = logits.argmax(axis=0).astype(np.uint8 if num_classes <= 256 else np.int32)
        if mask.shape != tuple(meta.input_size):
            mask = resize_nearest(mask, meta.input_size)
        mask = mask_to_original(mask, meta)
        ids = np.unique(mask).astype(np.int64)
        return SegmentationResult(mask=mask, class_ids=ids, labels=self._names(ids), num_classes=num_classes)


class Detector(Task):
    """Two-stage detection: stage-1 graph, numpy proposals and PSRoI align, head graph, numpy decode + NMS.

    Boxes come back in the original image's pixels (the letterbox undone, clipped to the
    image); detections that lie wholly in the letterbox border are dropped.
    """

    task = "detect"
    roles: ClassVar[tuple[str, ...]] = ("stage1", "head")
    postprocess_kind = POSTPROCESS_KIND

    def __init__(self, manifest: Manifest, backends: Mapping[str, Backend]) -> None:
        super().__init__(manifest, backends)
        self.params = TwoStageParams.from_dict(manifest.postprocess.params)
        stage1, head = manifest.graph("stage1"), manifest.graph("head")
        # Output order as exported: (rpn_logits, rpn_deltas, features) and (cls_logits, box_deltas).
        self._stage1_out = tuple(t.name for t in stage1.outputs)
        self._head_in = head.inputs[0].name
        self._head_out = tuple(t.name for t in head.outputs)

    def _infer(self, x: np.ndarray, meta: ImageMeta, clock: _Clock) -> Detections:
        stage1, head = self.backends["stage1"], self.backends["head"]

        def run_stage1(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            out = clock.run(stage1, {self._input: images})
            return out[self._stage1_out[0]], out[self._stage1_out[1]], out[self._stage1_out[2]]

        def run_head(pooled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            out = clock.run(head, {self._head_in: pooled})
            return out[self._head_out[0]], out[self._head_out[1]]

        boxes, scores, labels = detect(x, run_stage1, run_head, self.params)
        return self._detections(boxes[0], scores[0], labels[0], meta)

    @property
    def graph_mode(self) -> str:
        """``pipeline``: stage 1, numpy glue, head."""
        return GraphMode.PIPELINE.value

    def _detections(self, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, meta: ImageMeta) -> Detections:
        """One image's padded ``[K, 4]``, ``[K]``, ``[K]`` outputs -> detections in the original image."""
        keep = labels >= 0
        mapped = boxes_to_original(boxes[keep], meta)
        # A box wholly inside the letterbox border is empty once clipped to the image: no object there.
        inside = (mapped[:, 2] > mapped[:, 0]) & (mapped[:, 3] > mapped[:, 1])
        ids = labels[keep][inside].astype(np.int64, copy=False)
        return Detections(boxes=mapped[inside], scores=scores[keep][inside], class_ids=ids, labels=self._names(ids))


class SingleGraphDetector(Detector):
    """The same detector run as one graph (``single.onnx``): the engine does proposals, RoI pooling and NMS.

    Detections equal the pipeline's up to the engines' float rounding and the order of tied
    scores (see :mod:`edgekit.detector_single_graph`); only the mapping back to the image runs
    in numpy.
    """

    roles = ("single",)

    def __init__(self, manifest: Manifest, backends: Mapping[str, Backend]) -> None:
        Task.__init__(self, manifest, backends)  # not Detector's: there are no stage graphs to wire
        self.params = TwoStageParams.from_dict(manifest.postprocess.params)
        self._outputs = tuple(t.name for t in manifest.graph("single").outputs)  # boxes, scores, labels

    @property
    def graph_mode(self) -> str:
        """``single``: the whole detector in one graph."""
        return GraphMode.SINGLE.value

    def _infer(self, x: np.ndarray, meta: ImageMeta, clock: _Clock) -> Detections:
        out = clock.run(self.backends["single"], {self._input: x})
        boxes, scores, labels = (out[name][0] for name in self._outputs)
        return self._detections(boxes, scores, labels, meta)


TASKS: dict[str, type[Classifier | Detector | Segmenter]] = {cls.task: cls for cls in (Classifier, Detector, Segmenter)}


def load(bundle: str | Path, backend: str = "auto", threads: int | None = None, *,
         check_hashes: bool = True, graph: GraphMode | str = GraphMode.AUTO) -> Classifier | Detector | Segmenter:
    """Load a deploy bundle as the task it holds: a :class:`Classifier`, :class:`Detector` or :class:`Segmenter`.

    Args:
        bundle: the bundle directory (``edgekit export --out``).
        backend: ``auto`` (by platform, installed engines and the bundle's files; see
            :mod:`edgekit.runtimes.select`) or a backend name: ``onnxruntime``, ``openvino``,
            ``litert``, ``tensorrt``.
        threads: CPU threads per inference; None leaves the engine's default.
        check_hashes: re-hash the graph files against the manifest first.
        graph: for a detector, which graphs run (:class:`GraphMode`): ``pipeline``, ``single``
            (a :class:`SingleGraphDetector`) or ``auto``; the task's ``graph_mode`` says which
            one did. Other tasks take only ``auto``.

    Raises:
        BundleError: not a bundle, a changed file, a task or backend that cannot run it, a
            ``graph`` the bundle or backend cannot honour.
        MissingDependencyError: the chosen backend is not installed.
    """
    bundle = Path(bundle)
    mode = _graph_mode(graph)
    manifest = verify(bundle) if check_hashes else read_manifest(bundle)
    if manifest.task not in TASKS:
        raise BundleError(f"bundle task '{manifest.task}' has no runtime; tasks: {', '.join(TASKS)}.")
    cls = TASKS[manifest.task]
    if mode is not GraphMode.AUTO and cls is not Detector:
        raise BundleError(f"graph='{mode.value}' applies to detector bundles; this one is '{manifest.task}' "
                          "(one graph). Drop the graph option.")
    graphs = [manifest.graph(role) for role in cls.roles]
    if backend != "auto":
        name = get_entry(backend).name
    elif mode is GraphMode.SINGLE and "single" in {g.role for g in manifest.graphs}:
        info = PlatformInfo.detect()
        able = dataclasses.replace(info, installed=info.installed & set(SINGLE_GRAPH_BACKENDS))
        name = choose_backend(able, [manifest.graph("single").path])
    else:
        name = choose_backend(PlatformInfo.detect(), [g.path for g in graphs])
    if cls is Detector and _runs_single(manifest, get_entry(name), mode):
        cls, graphs = SingleGraphDetector, [manifest.graph("single")]
    backends = {g.role: create_backend(name, bundle / g.path, g, threads=threads, toolchain=manifest.toolchain)
                for g in graphs}
    return cls(manifest, backends)


def _graph_mode(graph: GraphMode | str) -> GraphMode:
    try:
        return GraphMode(graph)
    except ValueError:
        modes = [m.value for m in GraphMode]
        raise BundleError(f"graph '{graph}' is not a mode; modes: {', '.join(modes)}.{suggest(str(graph), modes)}"
                          ) from None


def _runs_single(manifest: Manifest, entry: BackendEntry, mode: GraphMode) -> bool:
    """Whether a detector bundle runs as its single graph on ``entry``; refuses a ``single`` it cannot honour.

    The backend is chosen first (``backend="auto"`` with ``graph="single"`` picks among
    ``SINGLE_GRAPH_BACKENDS``, otherwise by the pipeline's files), then the mode: ``auto``
    never changes the engine to get the single graph, and takes it only where the table
    says it is the faster one.
    """
    if mode is GraphMode.PIPELINE or (mode is GraphMode.AUTO and not SINGLE_GRAPH_BACKENDS.get(entry.name)):
        return False
    roles = [g.role for g in manifest.graphs]
    if "single" not in roles:
        if mode is GraphMode.SINGLE:
            raise BundleError(f"this bundle has no single graph (roles: {', '.join(roles)}); one is exported only "
                              "at a fixed batch of 1. Use graph='pipeline', or re-export with batch 1.")
        return False
    if entry.name not in SINGLE_GRAPH_BACKENDS or not entry.reads(manifest.graph("single").path):
        if mode is GraphMode.SINGLE:
            raise BundleError(f"backend '{entry.name}' cannot run the single-graph detector (it needs RoiAlign and "
                              f"NonMaxSuppression); backends that can: {', '.join(sorted(SINGLE_GRAPH_BACKENDS))}. "
                              "Use graph='pipeline' or one of those backends.")
        return False
    return True
