"""The statistics pass: run the fp32 ONNX in onnxruntime over calibration feeds, feed the observers.

Every tensor that needs a range becomes an extra graph output of one session, so a single
pass over the data feeds all observers. The data is a plain iterable of feed dicts,
consumed once and never stored: the pass holds one sample's activations at a time (fewer
with ``max_outputs_per_run``), and observers keep fixed-size state, so memory does not grow
with the number of samples.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import onnx

from edgekit.calib.observers import NonFiniteValuesError, Observer, finite_extrema
from edgekit.errors import CalibrationDataError, ExportError, suggest

if TYPE_CHECKING:
    import onnxruntime as ort


def collect_statistics(
    model: onnx.ModelProto,
    data: Iterable[Mapping[str, np.ndarray]],
    observers: Mapping[str, Observer],
    *,
    samples: int | None = None,
    progress: bool = False,
    max_outputs_per_run: int | None = None,
) -> int:
    """Run ``model`` on each feed of ``data`` and update ``observers[name]`` with tensor ``name``.

    Args:
        model: the fp32 graph; it is not modified.
        data: feed dicts ``{input_name: array}``, one per sample, read once in order. Keys
            that are not graph inputs are ignored.
        observers: tensor name (a graph input or any node output) -> its observer.
        samples: stop after this many feeds; None reads them all.
        progress: show a progress bar on the terminal.
        max_outputs_per_run: fetch at most this many observed tensors per onnxruntime run
            (the sample is run again for the next group): bounds the memory one sample's
            activations take on large graphs, at the cost of repeated runs. None: one run.

    Returns:
        The number of samples read.

    Raises:
        CalibrationDataError: no samples, a feed without a graph input, a feed onnxruntime
            cannot run, or NaN/Inf in an observed tensor or a graph output (naming the tensor
            where it first appears and the sample index).
    """
    if samples is not None and samples < 1:
        raise CalibrationDataError(f"samples must be at least 1, got {samples}.")
    inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    produced = {out for node in model.graph.node for out in node.output if out}
    unknown = [name for name in observers if name not in produced and name not in inputs]
    if unknown:
        raise ValueError(f"tensor '{unknown[0]}' is neither a graph input nor a node output of the model."
                         f"{suggest(unknown[0], produced | set(inputs))}")
    fetched = [name for name in observers if name not in inputs]
    session = _session(_with_outputs(model, fetched))
    step = max_outputs_per_run or max(len(fetched), 1)
    groups = [fetched[k:k + step] for k in range(0, len(fetched), step)] or [[]]
    # Graph outputs no observer reads are checked for NaN/Inf too: a non-finite value in a tensor
    # that is not quantized (a Log before a float Gemm) still breaks the exported model.
    groups[-1] = groups[-1] + [o.name for o in model.graph.output if o.name not in observers]
    total = samples if samples is not None else (len(data) if isinstance(data, Sized) else None)

    count = 0
    with _progress_bar(progress, total) as advance:
        # islice: never pull (load, decode) a feed past the last one used
        for index, feed in enumerate(itertools.islice(data, samples)):
            feed = _model_feed(feed, inputs, index)
            for name in inputs:
                if name in observers:
                    _observe(observers[name], name, feed[name], index, is_input=True)
            for group in groups:
                for name, value in zip(group, _run(session, group, feed, index)):
                    if name in observers:
                        _observe(observers[name], name, value, index, is_input=False)
                    else:
                        _check_finite(model, feed, name, value, index)
            count += 1
            advance()
    if count == 0:
        raise CalibrationDataError(
            "no calibration samples were read: the data iterable was empty. Check that the calibration "
            "folder (--calib-data) holds images in a layout the loaders read (ImageNet-style class folders, "
            "COCO JSON, VOC XML or image/mask folders) and that --calib-samples is at least 1."
        )
    return count


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs ``names`` (types from shape inference)."""
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    existing = {o.name for o in augmented.graph.output}
    missing = [n for n in names if n not in existing]
    if not missing:
        return augmented
    try:
        inferred = onnx.shape_inference.infer_shapes(augmented)
        types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    except Exception:  # inference is only a source of element types; fall back to float
        types = {}
    for name in missing:
        elem = types.get(name) or onnx.TensorProto.FLOAT
        augmented.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    return augmented


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # basic optimisations only: fusions never hide a fetched tensor, and the values are the
    # plain fp32 graph's
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own pybind types (InvalidGraph, Fail, ...)
        reason = " ".join(str(exc).split())[:400] or type(exc).__name__
        raise ExportError(f"onnxruntime {ort.__version__} cannot load the model to calibrate it: {reason}") from exc


def _model_feed(feed: Mapping[str, np.ndarray], inputs: list[str], index: int) -> dict[str, np.ndarray]:
    if not isinstance(feed, Mapping):
        raise CalibrationDataError(
            f"calibration sample {index} is a {type(feed).__name__}, not a dict of input name -> array; "
            f"the model's inputs are: {', '.join(inputs)}."
        )
    missing = [name for name in inputs if name not in feed]
    if missing:
        raise CalibrationDataError(
            f"calibration sample {index} has no value for graph input '{missing[0]}' (it has: "
            f"{', '.join(map(str, feed)) or 'nothing'}); the model's inputs are: {', '.join(inputs)}."
        )
    return {name: np.asarray(feed[name]) for name in inputs}


def _run(session: ort.InferenceSession, names: list[str], feed: dict[str, np.ndarray], index: int) -> list[np.ndarray]:
    try:
        return session.run(names, feed) if names else []
    except Exception as exc:  # onnxruntime raises its own pybind exception types
        shapes = ", ".join(f"{k}: {v.dtype}{list(v.shape)}" for k, v in feed.items())
        raise CalibrationDataError(
            f"onnxruntime could not run the model on calibration sample {index} ({shapes}): "
            f"{' '.join(str(exc).split())[:400] or type(exc).__name__} Check that the "
            f"preprocessing makes inputs of the exported shape and dtype."
        ) from exc


def _observe(observer: Observer, name: str, value: np.ndarray, index: int, *, is_input: bool) -> None:
    try:
        observer.update(value)
    except NonFiniteValuesError as exc:
        if is_input:
            message = (f"graph input '{name}' of calibration sample {index} holds {exc}: check the image and its "
                       f"preprocessing (mean/std, a division by zero).")
        else:
            message = (f"activation '{name}' holds {exc} on calibration sample {index}: the fp32 model overflows "
                       f"or takes log/sqrt/division of invalid values on this input; check the sample and the weights.")
        raise CalibrationDataError(message) from exc


def _check_finite(model: onnx.ModelProto, feed: dict[str, np.ndarray], output: str, value: np.ndarray,
                  index: int) -> None:
    """Raise CalibrationDataError naming the first node output with NaN/Inf when graph output ``output`` has any."""
    if not np.issubdtype(value.dtype, np.floating) or np.isfinite(value).all():
        return
    name, op_type, bad = _first_non_finite(model, feed) or (output, "graph output", value)
    try:
        finite_extrema(bad)
    except NonFiniteValuesError as exc:
        raise CalibrationDataError(
            f"activation '{name}' ({op_type}) holds {exc} on calibration sample {index}, and graph output "
            f"'{output}' is not finite: the fp32 model overflows or takes log/sqrt/division of invalid values on "
            "this input; check the sample and the weights."
        ) from exc


def _first_non_finite(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> tuple[str, str, np.ndarray] | None:
    """The first node output, in graph (topological) order, holding NaN or Inf on ``feed``: its origin.

    Runs only after a non-finite graph output was seen, so fetching every tensor once is cheap.
    """
    names = [out for node in model.graph.node for out in node.output if out]
    producers = {out: f"output of {node.op_type} node '{node.name}'"
                 for node in model.graph.node for out in node.output}
    values = _session(_with_outputs(model, names)).run(names, feed)
    for name, value in zip(names, values):
        array = np.asarray(value)
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            return name, producers[name], array
    return None


@contextmanager
def _progress_bar(enabled: bool, total: int | None) -> Iterator[Callable[[], None]]:
    if not enabled:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("calibrating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task("calibrating", total=total)
        yield lambda: bar.advance(task)
