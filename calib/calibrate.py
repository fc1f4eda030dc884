"""``calibrate``: the fp32 ONNX plus calibration feeds in, a QuantRecipe out.

The backend profile decides which activations need a range (``profiles.quantizable_tensors``);
one streaming pass over the data collects them all; the profile then turns ranges into scales
and zero points, unifies the ranges of tensors that must share a scale, and quantizes the
weights per output channel (``profiles.tensor_quants``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from edgekit import __version__
from edgekit.calib.collect import collect_statistics
from edgekit.calib.datahash import FeedHash
from edgekit.calib.observers import make_observer
from edgekit.calib.profiles import quantizable_tensors, resolve_profile, tensor_quants
from edgekit.calib.recipe import Provenance, QuantRecipe, TensorKind
from edgekit.errors import ExportError


def calibrate(
    model_path_or_proto: str | Path | onnx.ModelProto,
    data: Iterable[Mapping[str, np.ndarray]],
    *,
    observer: str = "entropy",
    percentile: float = 99.99,
    profile: str = "trt",
    samples: int | None = None,
    data_hash: str = "",
    progress: bool = False,
) -> QuantRecipe:
    """Calibrate the optimized fp32 ONNX on ``data`` and return its QuantRecipe for ``profile``.

    Args:
        model_path_or_proto: the fp32 ONNX file, or the model itself.
        data: feed dicts ``{input_name: array}`` with the model's own preprocessing, one per
            sample, read once (a generator is fine; nothing is kept).
        observer: ``entropy`` (TensorRT's KL method), ``minmax``, ``percentile`` or ``mse``.
        percentile: the percentile of the ``percentile`` observer.
        profile: backend profile (``trt``, ``ort-cpu``, ``openvino``, ``tflite``...); a
            CPU-dependent name resolves for this machine and the recipe records the concrete one.
        samples: read at most this many feeds; None reads them all.
        data_hash: provenance hash of the calibration files; empty: a sha256 over the feeds
            themselves (names, dtypes, shapes, bytes) is computed as they stream.
        progress: show a progress bar on the terminal.

    Raises:
        ExportError: ``model_path_or_proto`` is a file that is not a readable ONNX model.
        CalibrationDataError: no samples, feeds that do not fit the model, or NaN/Inf in an
            activation (naming the tensor and the sample).
        UnknownProfileError, EdgekitError: an unknown profile or observer name.
    """
    model, model_sha256 = _load(model_path_or_proto)
    resolved = resolve_profile(profile)
    make_observer(observer, percentile=percentile)  # refuse a bad name before any work
    names = [name for name, kind in quantizable_tensors(model, resolved) if kind is TensorKind.ACTIVATION]
    hasher = FeedHash()
    feeds = data if data_hash else hasher.wrap(data)
    ranges, count = calibrate_ranges(model, feeds, names, observer=observer, percentile=percentile,
                                     samples=samples, progress=progress)
    provenance = Provenance(
        model_sha256=model_sha256, observer=observer, samples=count, data_hash=data_hash or hasher.hexdigest(),
        percentile=percentile if observer == "percentile" else None, edgekit_version=__version__,
    )
    return QuantRecipe(profile=resolved.name, tensors=tensor_quants(model, ranges, resolved), provenance=provenance)


def calibrate_ranges(
    model: onnx.ModelProto,
    data: Iterable[Mapping[str, np.ndarray]],
    tensors: Sequence[str],
    *,
    observer: str = "entropy",
    percentile: float = 99.99,
    samples: int | None = None,
    progress: bool = False,
) -> tuple[dict[str, tuple[float, float]], int]:
    """Calibrated ``(rmin, rmax)`` of each of ``tensors`` over ``data``, and the sample count.

    For any set of tensors, e.g. every activation of the graph for a TensorRT cache that
    covers each layer.
    """
    observers = {name: make_observer(observer, percentile=percentile) for name in tensors}
    count = collect_statistics(model, data, observers, samples=samples, progress=progress)
    return {name: obs.compute_range() for name, obs in observers.items()}, count


def _load(source: str | Path | onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    if isinstance(source, onnx.ModelProto):
        return source, hashlib.sha256(source.SerializeToString()).hexdigest()
    try:
        raw = Path(source).read_bytes()
        model = onnx.load_from_string(raw)
    except (OSError, DecodeError) as exc:
        raise ExportError(f"cannot read the ONNX model '{source}' ({type(exc).__name__}: {exc}); the file is missing, "
                          "truncated or not an ONNX model. Export it again.") from exc
    if not model.graph.node:
        raise ExportError(f"'{source}' holds no ONNX graph (no nodes); the file is truncated or not an ONNX model. "
                          "Export it again.")
    return model, hashlib.sha256(raw).hexdigest()
