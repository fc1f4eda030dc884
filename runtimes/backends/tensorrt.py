"""TensorRT adapter: a serialized engine (``.engine`` / ``.plan``) run on the GPU with TensorRT
10's tensor-address API and cuda-python for memory and streams.

An engine only deserializes in the TensorRT release that built it, and on another one it may
fail deep in native code instead of with a message, so the version recorded in the
manifest's ``toolchain`` is compared with the installed one first; a mismatch is refused with
the ``trtexec`` command that rebuilds the engine on this board. See
https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/advanced.html#version-compatibility

``tensorrt`` and cuda-python are imported when an engine is loaded, not with this module,
so the version check and the missing-package path work (and are tested) without a GPU.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edgekit.bundle import GraphFile
from edgekit.errors import BundleError, EdgekitError, MissingDependencyError
from edgekit.runtimes.backends.base import Backend

INSTALL = "on a Jetson: sudo apt install python3-libnvinfer (JetPack 6) and pip install cuda-python"

# Engine precision -> (ONNX file beside the engine, trtexec flags), as `edgekit build-engine`
# lays a trt-* bundle out (edgekit/engine.py): INT8 engines come from the QDQ graph.
TRTEXEC_SOURCES: dict[str, tuple[str, str]] = {"fp32": (".onnx", ""), "fp16": (".onnx", " --fp16"),
                                               "int8": (".qdq.onnx", " --int8 --fp16")}


class CudaError(EdgekitError):
    """A CUDA runtime call that failed."""


def release(version: str) -> tuple[int, ...]:
    """``major.minor.patch`` of a TensorRT version string as integers (``10.3.0.30`` -> (10, 3, 0))."""
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def rebuild_command(engine: Path, precision: str) -> str:
    """How to rebuild ``engine`` on this board: ``edgekit build-engine`` (which also updates the
    manifest's hashes), or the equivalent ``trtexec`` command on the ONNX graph beside it."""
    suffix, flags = TRTEXEC_SOURCES.get(precision, (".onnx", ""))
    onnx_path = engine.with_name(engine.name.split(".")[0] + suffix)
    return (f"edgekit build-engine {engine.parent} (or: trtexec --onnx={onnx_path}{flags} "
            f"--saveEngine={engine})")


def check_engine_version(built: str | None, installed: str, engine: Path, precision: str) -> None:
    """Raise BundleError unless the engine was built by this TensorRT release."""
    if built is None:
        raise BundleError(f"the manifest does not say which TensorRT built '{engine.name}', so it cannot be "
                          f"loaded safely with TensorRT {installed}. Rebuild it here: "
                          f"{rebuild_command(engine, precision)}")
    if release(built) != release(installed):
        raise BundleError(f"engine '{engine}' was built with TensorRT {built}; this board has {installed}. "
                          f"Rebuild it here: {rebuild_command(engine, precision)}")


def import_libraries() -> tuple[ModuleType, ModuleType]:
    """``tensorrt`` and cuda-python's runtime bindings, or MissingDependencyError saying how to install them."""
    try:
        import tensorrt
    except ImportError as exc:
        raise MissingDependencyError(f"backend 'tensorrt' needs the tensorrt package ({exc}). Install it: "
                                     f"{INSTALL}.") from exc
    try:  # cuda-python >= 12.6 moved the runtime bindings to cuda.bindings
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError as exc:
            raise MissingDependencyError(f"backend 'tensorrt' needs cuda-python ({exc}). Install it: "
                                         "pip install cuda-python.") from exc
    return tensorrt, runtime


class TensorRtBackend(Backend):
    """A serialized TensorRT engine on the default GPU."""

    name = "tensorrt"

    def __init__(self, path: Path, graph: GraphFile, *, threads: int | None = None,
                 toolchain: Mapping[str, str] | None = None) -> None:
        super().__init__(path, graph, threads=threads, toolchain=toolchain)
        if threads is not None:
            raise BundleError("TensorRT runs the graph on the GPU; CPU threads do not apply. Drop --threads.")
        _, self._cudart = import_libraries()  # a clear MissingDependencyError first
        import tensorrt as trt

        check_engine_version(self.toolchain.get("tensorrt"), trt.__version__, self.path, graph.precision)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise BundleError(f"TensorRT {trt.__version__} could not deserialize '{self.path}' (built for another "
                              f"GPU or TensorRT build?). Rebuild it here: {rebuild_command(self.path, graph.precision)}")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.check_names([n for n in names if is_input[n]], [n for n in names if not is_input[n]])
        # TensorRT element type -> numpy (trt.nptype without its untyped signature).
        numpy_types = {trt.DataType.FLOAT: np.float32, trt.DataType.HALF: np.float16, trt.DataType.INT8: np.int8,
                       trt.DataType.INT32: np.int32, trt.DataType.INT64: np.int64, trt.DataType.BOOL: np.bool_,
                       trt.DataType.UINT8: np.uint8}
        self._dtypes = {n: np.dtype(numpy_types[self._engine.get_tensor_dtype(n)]) for n in names}
        self._stream = self._check(self._cudart.cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)
        self._lock = threading.Lock()
        self.settings = {"tensorrt": trt.__version__, "built_with": self.toolchain.get("tensorrt")}

    def _check(self, result: Any) -> Any:
        """Unwrap a cuda-python ``(error, *values)`` tuple, raising CudaError on failure."""
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self._cudart.cudaError_t.cudaSuccess:
            raise CudaError(f"CUDA call failed: {self._cudart.cudaGetErrorString(err)[1]!r}")
        return values[0] if len(values) == 1 else values

    def _device(self, name: str, nbytes: int) -> int:
        ptr, capacity = self._buffers.get(name, (0, 0))
        if nbytes > capacity:
            if ptr:
                self._check(self._cudart.cudaFree(ptr))
            ptr, capacity = int(self._check(self._cudart.cudaMalloc(max(nbytes, 1)))), max(nbytes, 1)
            self._buffers[name] = (ptr, capacity)
            self._context.set_tensor_address(name, ptr)
        return ptr

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        with self._lock:
            hosts = {}  # keep the converted inputs alive until the stream has copied them
            for spec in self.inputs:
                x = np.ascontiguousarray(feeds[spec.name], dtype=self._dtypes[spec.name])
                hosts[spec.name] = x
                self._context.set_input_shape(spec.name, x.shape)
                ptr = self._device(spec.name, x.nbytes)
                self._check(cudart.cudaMemcpyAsync(ptr, x.ctypes.data, x.nbytes, h2d, self._stream))
            outputs = {}
            for spec in self.outputs:
                dims = self._context.get_tensor_shape(spec.name)
                shape = tuple(int(dims[i]) for i in range(len(dims)))
                outputs[spec.name] = np.empty(shape, dtype=self._dtypes[spec.name])
                self._device(spec.name, outputs[spec.name].nbytes)
            if not self._context.execute_async_v3(int(self._stream)):
                raise CudaError(f"TensorRT could not run '{self.path.name}' (execute_async_v3 returned False).")
            for name, y in outputs.items():
                self._check(cudart.cudaMemcpyAsync(y.ctypes.data, self._buffers[name][0], y.nbytes, d2h, self._stream))
            self._check(cudart.cudaStreamSynchronize(self._stream))
        return {s.name: outputs[s.name].astype(s.dtype, copy=False) for s in self.outputs}

    def __del__(self) -> None:
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        for ptr, _ in getattr(self, "_buffers", {}).values():
            cudart.cudaFree(ptr)
        if getattr(self, "_stream", None) is not None:
            cudart.cudaStreamDestroy(self._stream)
