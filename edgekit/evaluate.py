"""PyTorch evaluation of weights on a labelled dataset: top-1/top-5, or mIoU with per-class IoU.

    from edgekit.evaluate import evaluate
    evaluate("mobilenetv2", "edgekit/fixtures/mobilenetv2.safetensors", "edgekit/data/samples/cls-val")

The network sees each image exactly as it was trained to: the preprocessing (input size,
resize mode, normalisation) comes from the weights' card (``W.json`` beside ``W.safetensors``,
written by :mod:`edgekit.train`), else from the task defaults at the model's registered size.

One evaluator per task, in a table keyed by :class:`~edgekit.models.registry.Task`. A task
module registers its own; detection does so from ``edgekit/train/detection.py`` (imported by
:func:`edgekit.train.core.load_task_modules`)::

    from edgekit.evaluate import iterate_batches, register_evaluator

    @register_evaluator(Task.DETECT)
    def evaluate_detection(model: nn.Module, dataset: ImageDataset, preprocess: Preprocess, *,
                           batch_size: int, progress: bool) -> dict[str, Any]:
        for x, samples, metas in iterate_batches(dataset, preprocess, batch_size=batch_size,
                                                 progress=progress):
            ...  # model(x) in eval mode; samples hold the ground truth, metas map back to the image
        return {"map": ..., "map50": ...}

An evaluator returns JSON-ready metrics (floats, None for undefined); :func:`evaluate` adds
the model, weights, data, image count and input size.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from edgekit.data import ImageDataset, ImageMeta, Preprocess, open_dataset, scores_to_original
from edgekit.errors import EdgekitError
from edgekit.inputspec import CROP_FRACTION, TASK_DEFAULTS, ResizeMode
from edgekit.metrics import ConfusionMatrix, TopKAccuracy
from edgekit.models.registry import Task, get_spec
from edgekit.models.weights import load_weights

TOP_K = (1, 5)


class Evaluator(Protocol):
    """Scores a model (in eval mode) on a dataset; returns JSON-ready metrics."""

    def __call__(self, model: nn.Module, dataset: ImageDataset, preprocess: Preprocess, *,
                 batch_size: int, progress: bool) -> dict[str, Any]: ...


E = TypeVar("E", bound=Evaluator)
_EVALUATORS: dict[Task, Evaluator] = {}


def register_evaluator(task: Task | str) -> Callable[[E], E]:
    """Register the evaluator of ``task`` (decorator)."""

    def wrap(fn: E) -> E:
        _EVALUATORS[Task(task)] = fn
        return fn

    return wrap


def get_evaluator(task: Task | str) -> Evaluator:
    """The evaluator registered for ``task`` (task modules are imported first)."""
    from edgekit.train.core import load_task_modules

    load_task_modules()
    key = Task(task)
    if key not in _EVALUATORS:
        have = ", ".join(sorted(t.value for t in _EVALUATORS))
        raise EdgekitError(f"no evaluator is registered for task '{key.value}' (evaluators exist for: {have})")
    return _EVALUATORS[key]


def evaluate(model_name: str, weights: str | Path | None, data_dir: str | Path, *, limit: int | None = None,
             imgsz: tuple[int, int] | None = None, batch_size: int = 16, progress: bool = False) -> dict[str, Any]:
    """Evaluate ``model_name`` with ``weights`` on the dataset at ``data_dir``.

    Args:
        model_name: registered model name.
        weights: ``.safetensors``/``.pt`` state dict, loaded strictly; None scores the random init.
        data_dir: any layout :func:`edgekit.data.open_dataset` reads.
        limit: score only the first ``limit`` images.
        imgsz: input (height, width); default: the card's, else the model's registered size.
        batch_size: images per forward pass.
        progress: show a progress bar on stderr.

    Returns:
        ``{"model", "task", "weights", "data", "images", "imgsz", "preprocessing", ...metrics}``:
        ``preprocessing`` says where the input size and normalisation came from (``card``, or
        ``registered defaults`` for weights without a card beside them); classifiers add
        ``top1``/``top5``; segmenters ``miou``, ``pixel_accuracy``, ``per_class_iou``.
    """
    from edgekit.train.checkpoint import read_card

    spec = get_spec(model_name)
    card = read_card(weights) if weights is not None else None
    if card is not None and card.model != spec.name:
        raise EdgekitError(f"weights '{weights}' were trained for '{card.model}', not '{spec.name}'; "
                           f"pass --model {card.model}")
    dataset = open_dataset(data_dir, limit=limit)
    num_classes = card.num_classes if card else (dataset.num_classes or spec.num_classes)
    preprocess = card.preprocessing() if card else default_preprocess(spec.task, spec.input_size)
    if imgsz is not None:
        preprocess = dataclasses.replace(preprocess, imgsz=tuple(imgsz))
    model = spec.build(num_classes=num_classes)
    if weights is not None:
        load_weights(model, weights)
    metrics = evaluate_model(model, spec.task, dataset, preprocess, batch_size=batch_size, progress=progress)
    source = "card" if card else "registered defaults"
    head = {"model": spec.name, "task": spec.task.value, "weights": str(weights) if weights else None,
            "data": str(data_dir), "images": len(dataset), "imgsz": list(preprocess.imgsz),
            "preprocessing": f"{source}, --imgsz" if imgsz is not None else source}
    return {**head, **metrics}


def evaluate_model(model: nn.Module, task: Task | str, dataset: ImageDataset, preprocess: Preprocess, *,
                   batch_size: int = 16, progress: bool = False) -> dict[str, Any]:
    """Score an in-memory ``model`` (put in eval mode) with the evaluator of ``task``."""
    if dataset.task != Task(task).value:
        raise EdgekitError(f"the dataset is a {dataset.task or 'unlabelled'} dataset but the model is a "
                           f"{Task(task).value} model; pick data of the model's task")
    model.eval()
    with torch.inference_mode():
        return get_evaluator(task)(model, dataset, preprocess, batch_size=batch_size, progress=progress)


def default_preprocess(task: Task | str, imgsz: tuple[int, int]) -> Preprocess:
    """The task's export defaults (:data:`edgekit.inputspec.TASK_DEFAULTS`) at ``imgsz``."""
    d = TASK_DEFAULTS[Task(task).value]
    crop = CROP_FRACTION if d.resize is ResizeMode.SHORTER_SIDE_CROP else 1.0
    return Preprocess(imgsz=imgsz, mean=d.mean, std=d.std, channel_order=d.channel_order.value,
                      resize=d.resize.value, pad_value=int(d.pad_value), crop_pct=crop)


def iterate_batches(dataset: ImageDataset, preprocess: Preprocess, *, batch_size: int, progress: bool,
                    description: str = "eval") -> Iterator[tuple[Tensor, list[Any], list[ImageMeta]]]:
    """Preprocessed ``[B, 3, H, W]`` batches with their samples and metas, in dataset order."""
    from edgekit.train.core import progress_bar

    with progress_bar(progress) as bar:
        task_id = bar.add_task(description, total=len(dataset), losses="")
        samples: list[Any] = []
        tensors: list[np.ndarray] = []
        metas: list[ImageMeta] = []
        for sample in dataset:
            x, meta = preprocess(sample.image)
            samples.append(sample)
            tensors.append(x)
            metas.append(meta)
            if len(samples) == batch_size:
                yield torch.from_numpy(np.concatenate(tensors)), samples, metas
                bar.update(task_id, advance=len(samples))
                samples, tensors, metas = [], [], []
        if samples:
            yield torch.from_numpy(np.concatenate(tensors)), samples, metas
            bar.update(task_id, advance=len(samples))


@register_evaluator(Task.CLASSIFY)
def evaluate_classification(model: nn.Module, dataset: ImageDataset, preprocess: Preprocess, *,
                            batch_size: int, progress: bool) -> dict[str, Any]:
    """Top-1 and top-5 accuracy."""
    meter = TopKAccuracy(TOP_K)
    for x, samples, _ in iterate_batches(dataset, preprocess, batch_size=batch_size, progress=progress):
        meter.update(model(x).float().numpy(), np.array([s.label for s in samples]))
    return {f"top{k}": _json_float(v) for k, v in meter.compute().items()}


@register_evaluator(Task.SEGMENT)
def evaluate_segmentation(model: nn.Module, dataset: ImageDataset, preprocess: Preprocess, *,
                          batch_size: int, progress: bool) -> dict[str, Any]:
    """mIoU, pixel accuracy and per-class IoU, scored at each mask's own resolution.

    Logits are mapped back to the original image (bilinear, through the preprocessing's
    geometry) before the argmax, so the score does not depend on the input size chosen.
    """
    num_classes = dataset.num_classes
    cm: ConfusionMatrix | None = None
    for x, samples, metas in iterate_batches(dataset, preprocess, batch_size=batch_size, progress=progress):
        logits = model(x).float().numpy()
        cm = cm or ConfusionMatrix(num_classes or logits.shape[1], getattr(dataset, "ignore_index", 255))
        for scores, sample, meta in zip(logits, samples, metas):
            cm.update(_prediction(scores, meta), sample.mask)
    if cm is None:
        raise EdgekitError("the dataset is empty; nothing to evaluate")
    names = list(dataset.class_names) or [str(c) for c in range(cm.num_classes)]
    return {"miou": _json_float(cm.miou()), "pixel_accuracy": _json_float(cm.pixel_accuracy()),
            "per_class_iou": {n: _json_float(v) for n, v in zip(names, cm.iou().tolist())}}


def _prediction(scores: np.ndarray, meta: ImageMeta) -> np.ndarray:
    """Argmax class ids at the original image size."""
    if meta.orig_size != meta.input_size or meta.pad != (0, 0):
        scores = scores_to_original(scores, meta)
    return scores.argmax(axis=0)


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)
