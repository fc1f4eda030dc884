"""LiteRT (TensorFlow Lite) adapter: a ``.tflite`` model in the interpreter of ``ai_edge_litert``
or, on older boards, ``tflite_runtime`` (whichever imports).

The manifest speaks NCHW float32, as every other backend does; the ``.tflite`` file may not:

- layout: converters that go through TensorFlow (onnx2tf) make image tensors NHWC, while
  litert-torch keeps NCHW (DESIGN.md). Each 4-D tensor is compared with its manifest shape
  and transposed at the boundary only when it is stored NHWC.
- quantized I/O: a static INT8 model (ai-edge-quantizer's default recipe) has int8 input
  and output tensors. Inputs are quantized and outputs dequantized here with the scale and
  zero point stored on the tensor, ``q = clamp(round(x / scale) + zp)`` with TFLite's
  rounding (half away from zero, ``TfLiteRound``), per tensor or per axis.

The interpreter holds its tensors between ``set_tensor`` and ``get_tensor``, so calls are
serialised with a lock; load one task per thread to run several inferences at once.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.bundle import GraphFile, TensorSpec
from edgekit.errors import BundleError, MissingDependencyError
from edgekit.runtimes.backends.base import Backend

INTERPRETER_MODULES: tuple[str, ...] = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")
NCHW_TO_NHWC: tuple[int, int, int, int] = (0, 2, 3, 1)
NHWC_TO_NCHW: tuple[int, int, int, int] = (0, 3, 1, 2)


def interpreter_class() -> tuple[type, str]:
    """The ``Interpreter`` class of the first LiteRT package that imports, and its module name."""
    for module in INTERPRETER_MODULES:
        try:
            return importlib.import_module(module).Interpreter, module
        except ImportError:
            continue
    raise MissingDependencyError("backend 'litert' needs ai_edge_litert or tflite_runtime, and neither imports. "
                                 "Install it: pip install 'edgekit[tflite]'.")


@dataclass(frozen=True)
class Boundary:
    """How one manifest tensor maps onto a ``.tflite`` tensor.

    Args:
        spec: the manifest's tensor (NCHW, the dtype the SDK exchanges).
        index: the interpreter's tensor index.
        dtype: the ``.tflite`` tensor's element type.
        to_file: axis order from the manifest's layout to the file's (None: the same).
        scales, zero_points, axis: quantization of an integer tensor exchanged as float
            (empty scales: none).
    """

    spec: TensorSpec
    index: int
    dtype: np.dtype
    to_file: tuple[int, ...] | None
    scales: np.ndarray
    zero_points: np.ndarray
    axis: int

    @property
    def quantized(self) -> bool:
        """True when values cross as float on one side and integer on the other."""
        return np.dtype(self.spec.dtype) != self.dtype

    def _broadcast(self, values: np.ndarray, rank: int) -> np.ndarray:
        shape = [1] * rank
        if values.size > 1:
            shape[self.axis] = values.size
        return values.reshape(shape)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Float -> the file's integer type."""
        scale = self._broadcast(self.scales.astype(np.float32), x.ndim)
        zp = self._broadcast(self.zero_points.astype(np.float32), x.ndim)
        v = x.astype(np.float32) / scale
        q = np.sign(v) * np.floor(np.abs(v) + np.float32(0.5)) + zp
        info = np.iinfo(self.dtype)
        out: np.ndarray = np.clip(q, info.min, info.max).astype(self.dtype)
        return out

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        """The file's integer type -> float32."""
        scale = self._broadcast(self.scales.astype(np.float32), q.ndim)
        zp = self._broadcast(self.zero_points.astype(np.float32), q.ndim)
        out: np.ndarray = ((q.astype(np.float32) - zp) * scale).astype(np.float32)
        return out


def file_layout(spec: TensorSpec, signature: tuple[int, ...]) -> tuple[int, ...] | None:
    """None when the file stores ``spec`` as is, ``NCHW_TO_NHWC`` when it stores it channels-last."""

    def fits(dims: tuple[int, ...]) -> bool:
        return len(dims) == len(spec.shape) and all(isinstance(s, str) or d in (-1, s)
                                                     for d, s in zip(dims, spec.shape))

    if fits(signature):
        return None
    if len(signature) == 4 and fits(tuple(signature[i] for i in NHWC_TO_NCHW)):
        return NCHW_TO_NHWC
    raise BundleError(f"tensor '{spec.name}' is {list(signature)} in the .tflite file; the manifest says "
                      f"{list(spec.shape)} (NCHW), and it is neither that nor its NHWC form. Re-export the bundle.")


def boundaries(specs: tuple[TensorSpec, ...], details: list[dict[str, Any]], what: str) -> list[Boundary]:
    """Pair manifest tensors with interpreter tensors: by name, else in order.

    Converters often rename I/O tensors (``serving_default_images:0``); their order follows
    the exported signature, which is the manifest's order.
    """
    by_name = {d["name"]: d for d in details}
    if all(s.name in by_name for s in specs):
        chosen = [by_name[s.name] for s in specs]
    elif len(details) == len(specs):
        chosen = list(details)
    else:
        raise BundleError(f"the .tflite file has {len(details)} {what} ({', '.join(by_name)}); the manifest lists "
                          f"{len(specs)} ({', '.join(s.name for s in specs)}). Re-export the bundle.")
    out = []
    for spec, d in zip(specs, chosen):
        q = d.get("quantization_parameters", {})
        b = Boundary(spec=spec, index=int(d["index"]), dtype=np.dtype(d["dtype"]),
                     to_file=file_layout(spec, tuple(int(v) for v in d.get("shape_signature", d["shape"]))),
                     scales=np.asarray(q.get("scales", []), np.float32),
                     zero_points=np.asarray(q.get("zero_points", []), np.int64),
                     axis=int(q.get("quantized_dimension", 0)))
        if b.quantized and (not np.issubdtype(b.dtype, np.integer) or b.scales.size == 0):
            raise BundleError(f"tensor '{spec.name}' is {b.dtype} in the .tflite file and {spec.dtype} in the "
                              "manifest, with no quantization parameters to convert between them.")
        out.append(b)
    return out


class LiteRtBackend(Backend):
    """A ``.tflite`` model run by the LiteRT interpreter on the CPU."""

    name = "litert"

    def __init__(self, path: Path, graph: GraphFile, *, threads: int | None = None,
                 toolchain: Mapping[str, str] | None = None) -> None:
        super().__init__(path, graph, threads=threads, toolchain=toolchain)
        interpreter, module = interpreter_class()
        self._interpreter = interpreter(model_path=str(path), num_threads=threads)
        self._interpreter.allocate_tensors()
        self._inputs = boundaries(self.inputs, self._interpreter.get_input_details(), "inputs")
        self._outputs = boundaries(self.outputs, self._interpreter.get_output_details(), "outputs")
        self._shapes = {int(d["index"]): tuple(int(v) for v in d["shape"])
                        for d in self._interpreter.get_input_details()}
        self._lock = threading.Lock()
        self.settings = {
            "interpreter": module, "num_threads": threads or 0,
            "nhwc": [b.spec.name for b in (*self._inputs, *self._outputs) if b.to_file is not None],
            "quantized_io": [b.spec.name for b in (*self._inputs, *self._outputs) if b.quantized],
        }

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        prepared = []
        for b in self._inputs:  # layout and quantization outside the lock: only the interpreter is shared
            x = feeds[b.spec.name]
            if b.to_file is not None:
                x = x.transpose(b.to_file)
            prepared.append((b, np.ascontiguousarray(b.quantize(x) if b.quantized else x)))
        with self._lock:
            for b, x in prepared:
                self._fit_shape(b, x.shape)
                self._interpreter.set_tensor(b.index, x)
            self._interpreter.invoke()
            raw = [(b, self._interpreter.get_tensor(b.index)) for b in self._outputs]
        out = {}
        for b, y in raw:
            if b.quantized:
                y = b.dequantize(y)
            if b.to_file is not None:
                y = y.transpose(NHWC_TO_NCHW)
            out[b.spec.name] = np.ascontiguousarray(y)
        return out

    def _fit_shape(self, b: Boundary, shape: tuple[int, ...]) -> None:
        # Named (dynamic) dimensions: resize the input and re-plan the tensors when they change.
        if self._shapes[b.index] != shape:
            self._interpreter.resize_tensor_input(b.index, list(shape))
            self._interpreter.allocate_tensors()
            self._shapes[b.index] = shape
