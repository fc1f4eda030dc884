"""Score a deploy bundle on a labelled dataset with the runtime SDK: what the board would get.

    from edgekit.bundle_eval import evaluate_bundle
    evaluate_bundle("bundles/mnv2-int8", "edgekit/data/samples/cls-val")            # the INT8 graphs
    evaluate_bundle("bundles/mnv2-int8", "edgekit/data/samples/cls-val", reference=True)  # fp32 reference

Images go through the bundle's own pre-processing (:class:`edgekit.runtimes.Task`), the graphs
run in onnxruntime, and the metric is the task's: top-1/top-5 (classify), COCO mAP and AP50 of
the SDK's detections in original-image pixels (detect), mIoU of the logits mapped back to each
mask's resolution before the argmax (segment, as :mod:`edgekit.evaluate` scores PyTorch).
A quantized bundle also holds its fp32 reference graphs (``<role>.fp32.onnx``); ``reference=True``
runs those through the same pipeline, so fp32 and INT8 differ in the graphs only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.bundle import verify
from edgekit.data import ImageDataset, ImageMeta, scores_to_original
from edgekit.errors import BundleError, EdgekitError
from edgekit.progress import track

DEFAULT_BACKEND = "onnxruntime"


@dataclass(frozen=True)
class Headline:
    """The metric a task's accuracy budget is checked on.

    Args:
        key: key in the evaluator's result (``top1``, ``map50``, ``miou``).
        label: how people call it.
    """

    key: str
    label: str


HEADLINES: dict[str, Headline] = {
    "classify": Headline("top1", "top-1 accuracy"),
    "detect": Headline("map50", "AP50 (COCO box AP at IoU 0.50)"),
    "segment": Headline("miou", "mIoU"),
}


def load_task(bundle: str | Path, *, reference: bool = False, backend: str = DEFAULT_BACKEND,
              threads: int | None = None, files: Mapping[str, str | Path] | None = None) -> Any:
    """The bundle's task pipeline (Classifier, Detector, Segmenter) on its graphs or its fp32 references.

    Args:
        bundle: the bundle directory (hashes are checked).
        reference: run the fp32 reference graphs (``<role>.fp32``) instead of the bundle's graphs.
        backend: runtime backend name.
        threads: CPU threads per inference; None: the engine's default.
        files: role -> another graph file to run for that role (e.g. a peer quantizer's output);
            its inputs and outputs must match the manifest's.
    """
    from edgekit.quantize import reference_role
    from edgekit.runtimes import TASKS, create_backend

    bundle = Path(bundle)
    manifest = verify(bundle)
    if manifest.task not in TASKS:
        raise BundleError(f"bundle task '{manifest.task}' has no runtime; tasks: {', '.join(TASKS)}.")
    cls = TASKS[manifest.task]
    graphs, backends = [], {}
    for role in cls.roles:
        graph = manifest.graph(reference_role(role) if reference else role)
        path = Path(files[role]) if files and role in files else bundle / graph.path
        graph = dataclasses.replace(graph, role=role)
        graphs.append(graph)
        backends[role] = create_backend(backend, path, graph, threads=threads, toolchain=manifest.toolchain)
    return cls(dataclasses.replace(manifest, graphs=tuple(graphs)), backends)


Evaluator = Callable[[Any, Iterable[Any], bool], dict[str, Any]]


def evaluate_task(task: Any, dataset: ImageDataset | Iterable[Any], *, progress: bool = False,
                  label: str = "evaluating") -> dict[str, Any]:
    """Score a loaded task pipeline on ``dataset`` (samples of the same task); JSON-ready metrics in 0..1."""
    if getattr(dataset, "task", task.manifest.task) != task.manifest.task:
        raise EdgekitError(f"the dataset is a {dataset.task} dataset but the bundle is a {task.manifest.task} "
                           "model; pick data of the model's task.")
    samples = track(dataset, label, enabled=progress)
    metrics = EVALUATORS[task.manifest.task](task, samples, dataset)
    return {**metrics, "images": len(dataset) if hasattr(dataset, "__len__") else None}


def evaluate_bundle(bundle: str | Path, data: str | Path | ImageDataset, *, reference: bool = False,
                    backend: str = DEFAULT_BACKEND, threads: int | None = None,
                    progress: bool = False) -> dict[str, Any]:
    """Load ``bundle`` (or its fp32 references) and score it on ``data`` (a folder or a dataset)."""
    from edgekit.data import open_dataset

    dataset = open_dataset(data) if isinstance(data, (str, Path)) else data
    task = load_task(bundle, reference=reference, backend=backend, threads=threads)
    return evaluate_task(task, dataset, progress=progress)


def _logits(task: Any, image: Any) -> tuple[np.ndarray, ImageMeta]:
    """The single graph's first output for one image, and the image's geometry."""
    x, meta = task.preprocess(image)
    n = task.manifest.input.shape[0]
    if isinstance(n, int) and n > 1:  # a fixed batch N: the other N-1 rows are zeros, ignored
        x = np.concatenate((x, np.zeros((n - 1, *x.shape[1:]), x.dtype)))
    name = task.manifest.graph("model").outputs[0].name
    return task.backends["model"].run({task.manifest.input.name: x})[name][0], meta


def _classify(task: Any, samples: Iterable[Any], dataset: Any) -> dict[str, Any]:
    from edgekit.metrics import TopKAccuracy

    ks = (1, min(5, task.manifest.num_classes or 5))
    meter = TopKAccuracy(ks)
    for sample in samples:
        logits, _ = _logits(task, sample.image)
        meter.update(logits[None], np.array([sample.label]))
    result = meter.compute()
    return {"top1": _json(result[1]), "top5": _json(result[ks[1]])}


def _segment(task: Any, samples: Iterable[Any], dataset: Any) -> dict[str, Any]:
    from edgekit.metrics import ConfusionMatrix

    cm = None
    for sample in samples:
        scores, meta = _logits(task, sample.image)
        cm = cm or ConfusionMatrix(dataset.num_classes or scores.shape[0], getattr(dataset, "ignore_index", 255))
        if meta.orig_size != meta.input_size or meta.pad != (0, 0):
            scores = scores_to_original(scores, meta)
        cm.update(scores.argmax(axis=0), sample.mask)
    if cm is None:
        raise EdgekitError("the evaluation dataset is empty; nothing to evaluate.")
    return {"miou": _json(cm.miou()), "pixel_accuracy": _json(cm.pixel_accuracy())}


def _detect(task: Any, samples: Iterable[Any], dataset: Any) -> dict[str, Any]:
    from edgekit.metrics import Detections, coco_map

    predictions, truths = [], []
    for sample in samples:
        result = task.predict(sample.image)
        predictions.append(Detections(boxes=result.boxes, scores=result.scores, labels=result.class_ids))
        truths.append(sample)
    if not truths:
        raise EdgekitError("the evaluation dataset is empty; nothing to evaluate.")
    metrics = coco_map(predictions, truths)
    return {"map": _json(metrics.map), "map50": _json(metrics.map50), "map75": _json(metrics.map75)}


EVALUATORS: dict[str, Callable[[Any, Iterable[Any], Any], dict[str, Any]]] = {
    "classify": _classify, "segment": _segment, "detect": _detect,
}


def _json(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)
