"""OpenVINO adapter: an ``.xml`` IR or an ``.onnx`` graph compiled for the CPU.

fp32 graphs are compiled with ``INFERENCE_PRECISION_HINT=f32``. Without it the CPU plugin
runs bf16 on CPUs with AVX-512 BF16 / AMX (its default "performance" precision there), which
was seen reordering a detector's top proposals against onnxruntime and PyTorch; see
https://docs.openvino.ai/2025/openvino-workflow/running-inference/optimize-inference/precision-control.html

A compiled model is shared; an infer request holds per-inference state, so each calling
thread gets its own.

OpenVINO reads IRs written by its own and earlier releases, not later ones (a newer IR may use
opsets or element types this runtime does not know). The release that wrote an IR is the
manifest's ``toolchain["openvino"]`` or else the IR's own ``rt_info`` ``Runtime_version``; a
bundle from a newer release is refused before the IR reaches the native reader. See
https://docs.openvino.ai/2025/documentation/openvino-ir-format.html

OpenVINO's ONNX reader crashed (SIGSEGV) or spun without end on some malformed graphs that
tools/fuzz_loaders.py wrote (a Conv left with one input; an opset version of 2**40), where
``onnx.checker`` refuses them with a message. So an ``.onnx`` graph is checked first where the
``onnx`` package is installed (hosts; the board SDK does not need it, and boards without it
rely on the manifest hashes).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import openvino as ov

from edgekit.bundle import GraphFile
from edgekit.errors import BundleError
from edgekit.runtimes.backends.base import Backend

DEVICE = "CPU"
# Graph precision -> the execution precision that keeps its numbers; None: the plugin's default.
PRECISION_HINTS: dict[str, str | None] = {"fp32": "f32", "fp16": None, "int8": None}
_RUNTIME_VERSION = re.compile(rb'<Runtime_version\s+value="([^"]*)"')


def release(version: str) -> tuple[int, int]:
    """``(year, minor)`` of an OpenVINO version string (``2026.4.1-22982-e213a147257`` -> (2026, 4))."""
    parts = [int(m) for m in re.findall(r"\d+", str(version).split("-")[0])[:2]] + [0, 0]
    return parts[0], parts[1]


def ir_version(path: Path) -> str | None:
    """The OpenVINO release recorded in an IR ``.xml``'s ``rt_info``, or None (not an IR, none recorded)."""
    if path.suffix.lower() != ".xml":
        return None
    match = _RUNTIME_VERSION.search(path.read_bytes())
    return match.group(1).decode("ascii", "replace") if match else None


def check_ir_version(built: str | None, installed: str, path: Path) -> None:
    """Raise BundleError when ``path`` was written by a newer OpenVINO release than ``installed``."""
    if built is None or release(built) <= release(installed):
        return
    year, minor = release(built)
    here = installed.split("-")[0]
    raise BundleError(
        f"'{path.name}' was written by OpenVINO {built}; this board has {here}, which reads IRs from its own and "
        f"earlier releases only. Upgrade it here (pip install -U 'openvino>={year}.{minor}'), or re-export the "
        f"bundle with OpenVINO {here}."
    )


def check_onnx_graph(path: Path) -> None:
    """Raise BundleError when ``onnx.checker`` (full check) refuses an ``.onnx`` graph; skipped without onnx."""
    if path.suffix.lower() != ".onnx":
        return
    try:
        import onnx
    except ImportError:
        return
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:  # ValidationError, InferenceError, protobuf's DecodeError ...
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise BundleError(f"'{path.name}' is not a valid ONNX graph ({reason}); it is corrupt or was edited after "
                          "export. Re-export the bundle.") from exc


def keeps_fp32_layers(model: ov.Model) -> bool:
    """True for an IR whose ``edgekit/layer_precision`` (mixed precision) keeps a layer fp32."""
    try:
        value = model.get_rt_info(["edgekit", "layer_precision"]).astype(str)
    except Exception:  # no such key: OpenVINO raises its own RuntimeError subclass
        return False
    return '"fp32"' in value


class OpenVinoBackend(Backend):
    """An OpenVINO IR or ONNX graph run by the OpenVINO CPU plugin."""

    name = "openvino"

    def __init__(self, path: Path, graph: GraphFile, *, threads: int | None = None,
                 toolchain: Mapping[str, str] | None = None) -> None:
        super().__init__(path, graph, threads=threads, toolchain=toolchain)
        core = ov.Core()
        config: dict[str, str | int] = {"PERFORMANCE_HINT": "LATENCY"}
        hint = PRECISION_HINTS.get(graph.precision)
        if hint is not None:
            config["INFERENCE_PRECISION_HINT"] = hint
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        installed = ov.get_version()
        check_ir_version(self.toolchain.get("openvino") or ir_version(self.path), installed, self.path)
        check_onnx_graph(self.path)
        weights = self.path.with_suffix(".bin")
        # The reader aborts the process (std::filesystem_error) on a .bin that is a symlink loop.
        if self.path.suffix.lower() == ".xml" and (weights.exists() or weights.is_symlink()) and not weights.is_file():
            raise BundleError(f"'{weights.name}', the weights of '{self.path.name}', is not a regular file (a folder "
                              "or a broken link). Re-export the bundle.")
        try:
            model = core.read_model(str(path))
            if keeps_fp32_layers(model):
                # Mixed precision kept these layers fp32 because INT8 (and bf16) lose them.
                config["INFERENCE_PRECISION_HINT"] = "f32"
            self._compiled = core.compile_model(model, DEVICE, config)
        except Exception as exc:  # RuntimeError("Exception from src/..."), UnicodeDecodeError of its message
            raise self.load_error(exc, installed.split("-")[0]) from exc
        self._ports = {port.get_any_name(): port for port in self._compiled.outputs}
        self.check_names([p.get_any_name() for p in self._compiled.inputs], list(self._ports),
                         {p.get_any_name(): _dims(p.get_partial_shape()) for p in self._compiled.inputs})
        self._local = threading.local()
        self.settings = {
            "openvino": ov.get_version(), "device": DEVICE, "config": dict(config),
            # What the plugin actually runs at, read back: the record that the hint took.
            "inference_precision": str(self._compiled.get_property("INFERENCE_PRECISION_HINT")),
            "num_threads": int(self._compiled.get_property("INFERENCE_NUM_THREADS")),
        }

    def _request(self) -> ov.InferRequest:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        return request

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # share_outputs=False (the default) copies: the request's buffers are reused by the next call.
        result = self._request().infer(feeds)
        return {t.name: result[self._ports[t.name]] for t in self.outputs}


def _dims(shape: ov.PartialShape) -> tuple[int | str, ...] | None:
    """A partial shape as ints, with ``"?"`` for dynamic dimensions; None for a dynamic rank."""
    if shape.rank.is_dynamic:
        return None
    return tuple(d.get_length() if d.is_static else "?" for d in shape)
