"""The task metric of in-memory ONNX graphs on evaluation images: what the mixed-precision search optimises.

``GraphScorer`` runs candidate graphs (a QDQ variant per role) through the runtime SDK's own
task pipelines (:mod:`edgekit.runtimes.tasks`: the bundle's pre-processing, numpy glue and
post-processing) on onnxruntime sessions built from memory, and scores them:

- *labelled* evaluation data: the task's headline metric (top-1, mIoU, AP50) from
  :data:`edgekit.bundle_eval.EVALUATORS`, as the accuracy-drop report computes it;
- *label-free* data (a folder of photos): agreement with the fp32 reference graphs'
  predictions on the same images (:mod:`edgekit.precision.agreement`).

Either way the baseline is the fp32 references and ``drop`` is in points (100 x the difference
of two 0..1 values). Decoded images and their pre-processed tensors are cached, so each
candidate costs its graphs' inference only.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from edgekit.bundle import GraphFile, Manifest, PostProcess, TensorSpec
from edgekit.errors import EdgekitError
from edgekit.inputspec import InputSpec

LABELLED, LABEL_FREE = "labelled", "label-free"
MODE_DESCRIPTIONS: Mapping[str, str] = {
    LABELLED: "labelled mode: the budget applies to the task metric against the evaluation labels",
    LABEL_FREE: "label-free mode (the evaluation images have no labels): the budget applies to agreement with the "
                "fp32 model's predictions on the same images",
}


def is_labelled(dataset: Any) -> bool:
    """True for a dataset with ground truth (class folders, COCO/VOC, masks); False for bare images."""
    return bool(getattr(dataset, "task", ""))


class OrtGraph:
    """An onnxruntime session on an in-memory graph with the runtime backends' ``run`` and ``name``.

    Args:
        model: the graph.
        optimized: onnxruntime's full graph optimizations (the integer kernels the onnx-int8
            target runs) instead of basic ones (Q/DQ computed node by node, as the ONNX spec
            and the TensorRT/OpenVINO/TFLite toolchains define them).
        threads: intra-op threads.
    """

    name = "onnxruntime"

    def __init__(self, model: onnx.ModelProto, *, optimized: bool = False, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimized
                                            else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for one feed dict."""
        return dict(zip(self.outputs, self.session.run(self.outputs, dict(feeds))))


def pipeline_manifest(task: str, spec: InputSpec, postprocess: PostProcess, graphs: Mapping[str, onnx.ModelProto],
                      *, num_classes: int | None, labels: Sequence[str] = ()) -> Manifest:
    """A manifest for graphs held in memory, so the SDK's task pipelines can run them before a bundle exists."""
    from edgekit.exporters.onnx import tensor_specs

    files = tuple(GraphFile(role=role, path=f"{role}.onnx", sha256="", size_bytes=0,
                            inputs=tensor_specs(g.graph.input), outputs=tensor_specs(g.graph.output))
                  for role, g in graphs.items())
    last = files[-1].outputs if files else ()
    return Manifest(model="in-memory", task=task, target="in-memory", input=spec,
                    outputs=tuple(TensorSpec(t.name, t.shape, t.dtype) for t in last), graphs=files,
                    postprocess=postprocess, labels=tuple(labels), num_classes=num_classes)


@dataclass(frozen=True)
class Score:
    """One candidate's metrics: ``value`` is the headline in 0..1, ``metrics`` everything measured."""

    value: float
    metrics: dict[str, Any] = field(default_factory=dict)


class _CachedPreprocess:
    """The task's pre-processing, memoised per image object (the scorer's images live as long as it)."""

    def __init__(self, preprocess: Any) -> None:
        self.preprocess = preprocess
        self.cache: dict[int, Any] = {}

    def __call__(self, image: Any, **kwargs: Any) -> Any:
        key = id(image)
        if key not in self.cache:
            self.cache[key] = self.preprocess(image, **kwargs)
        return self.cache[key]


class GraphScorer:
    """Scores candidate graphs of one pipeline on cached evaluation samples.

    Args:
        manifest: the pipeline's manifest (a bundle's, or :func:`pipeline_manifest`).
        dataset: the evaluation samples (a dataset or split); decoded once and kept.
        references: role -> fp32 reference graph: the baseline, and the truth in label-free mode.
        mode: ``labelled`` or ``label-free``; None: labelled when the dataset has labels.
        optimized: run candidates with onnxruntime's full optimizations (see :class:`OrtGraph`).
        threads: onnxruntime threads.

    Raises:
        EdgekitError: an empty evaluation set, or ``labelled`` asked of unlabelled images.
    """

    def __init__(self, manifest: Manifest, dataset: Any, references: Mapping[str, onnx.ModelProto], *,
                 mode: str | None = None, optimized: bool = False, threads: int = 1) -> None:
        from edgekit.bundle_eval import HEADLINES
        from edgekit.precision.agreement import AGREEMENT

        self.manifest, self.dataset, self.optimized, self.threads = manifest, dataset, optimized, threads
        self.samples = list(dataset)
        if not self.samples:
            raise EdgekitError("the evaluation split is empty: the mixed-precision search needs images to score "
                               "candidates on. Pass --eval-data DIR, or lower --calib-samples.")
        self.mode = mode or (LABELLED if is_labelled(dataset) else LABEL_FREE)
        if self.mode == LABELLED and not is_labelled(dataset):
            raise EdgekitError("the evaluation images have no labels; score them label-free (agreement with fp32).")
        self.key = HEADLINES[manifest.task].key if self.mode == LABELLED else AGREEMENT[manifest.task][1]
        self._preprocess: _CachedPreprocess | None = None
        self._references = dict(references)
        self._reference_predictions = self._predict(references) if self.mode == LABEL_FREE else []
        self.baseline = self.score(references)

    def subset(self, count: int) -> GraphScorer:
        """A scorer over the first ``count`` samples (the same cache, references and mode)."""
        if count >= len(self.samples):
            return self
        out = copy.copy(self)
        out.samples = self.samples[:count]
        out._reference_predictions = self._reference_predictions[:count]
        out.baseline = out.score(self._references)
        return out

    @property
    def description(self) -> str:
        """The mode in words, for reports."""
        return MODE_DESCRIPTIONS[self.mode]

    def drop(self, score: Score) -> float:
        """Points lost against the fp32 baseline (positive: worse)."""
        return round(100.0 * (self.baseline.value - score.value), 4)

    def score(self, graphs: Mapping[str, onnx.ModelProto]) -> Score:
        """The headline metric (0..1) of ``graphs`` and everything the evaluator measured."""
        from edgekit.bundle_eval import EVALUATORS
        from edgekit.precision.agreement import AGREEMENT

        if self.mode == LABELLED:
            metrics = EVALUATORS[self.manifest.task](self._task(graphs), self.samples, self.dataset)
        else:
            metrics = AGREEMENT[self.manifest.task][0](self._predict(graphs), self._reference_predictions)
        value = metrics.get(self.key)
        return Score(float("nan") if value is None else float(value), dict(metrics))

    def _task(self, graphs: Mapping[str, onnx.ModelProto]) -> Any:
        from edgekit.runtimes.tasks import TASKS

        cls = TASKS[self.manifest.task]
        missing = [r for r in cls.roles if r not in graphs]
        if missing:
            raise EdgekitError(f"a {self.manifest.task} pipeline needs graphs {list(cls.roles)}; missing {missing}.")
        backends = {r: OrtGraph(graphs[r], optimized=self.optimized, threads=self.threads) for r in cls.roles}
        task = cls(self.manifest, backends)
        if self._preprocess is None:
            self._preprocess = _CachedPreprocess(task.preprocess)
        task.preprocess = self._preprocess
        return task

    def _predict(self, graphs: Mapping[str, onnx.ModelProto]) -> list[Any]:
        task = self._task(graphs)
        return [task.predict(sample.image) for sample in self.samples]
