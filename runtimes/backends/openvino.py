"""OpenVINO adapter: an ``.xml`` IR or an ``.onnx`` graph compiled for the CPU.

fp32 graphs are compiled with ``INFERENCE_PRECISION_HINT=f32``. Without it the CPU plugin
runs bf16 on CPUs with AVX-512 BF16 / AMX (its default "performance" precision there), which
was seen reordering a detector's top proposals against onnxruntime and PyTorch; see
https://docs.openvino.ai/2025/openvino-workflow/running-inference/optimize-inference/precision-control.html

A compiled model is shared; an infer request holds per-inference state, so each calling
thread gets its own.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import openvino as ov

from edgekit.bundle import GraphFile
from edgekit.runtimes.backends.base import Backend

DEVICE = "CPU"
# Graph precision -> the execution precision that keeps its numbers; None: the plugin's default.
PRECISION_HINTS: dict[str, str | None] = {"fp32": "f32", "fp16": None, "int8": None}


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
        self._compiled = core.compile_model(core.read_model(str(path)), DEVICE, config)
        self._ports = {port.get_any_name(): port for port in self._compiled.outputs}
        self.check_names([p.get_any_name() for p in self._compiled.inputs], list(self._ports))
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
