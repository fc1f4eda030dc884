"""onnxruntime adapter: an ``.onnx`` graph in an ``InferenceSession``.

``InferenceSession.run`` may be called from several threads at once (onnxruntime documents
sessions as thread-safe for ``run``), so one session serves every thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgekit.bundle import GraphFile
from edgekit.runtimes.backends.base import Backend

# Used in this order where the installed onnxruntime has them (onnxruntime-gpu on a Jetson
# lists CUDA); CPU is always there.
PROVIDERS: tuple[str, ...] = ("CUDAExecutionProvider", "CPUExecutionProvider")
SPINNING_KEY = "session.intra_op.allow_spinning"


class OnnxRuntimeBackend(Backend):
    """An ONNX graph run by onnxruntime."""

    name = "onnxruntime"

    def __init__(self, path: Path, graph: GraphFile, *, threads: int | None = None,
                 toolchain: Mapping[str, str] | None = None) -> None:
        super().__init__(path, graph, threads=threads, toolchain=toolchain)
        options = ort.SessionOptions()
        # Idle intra-op threads busy-wait for the next op by default; between a detector's graphs
        # the numpy glue then competes with them for the cores. Measured on 2 cores
        # (thundernet-snet146, 2 threads): 183 -> 90 ms end to end with spinning off. See
        # https://onnxruntime.ai/docs/performance/tune-performance/threading.html
        options.add_session_config_entry(SPINNING_KEY, "0")
        if threads is not None:
            options.intra_op_num_threads = threads
            # One graph runs op after op: extra inter-op threads would only add more spinning threads.
            options.inter_op_num_threads = 1
        available = ort.get_available_providers()
        providers = [p for p in PROVIDERS if p in available]
        try:
            self._session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own pybind types (InvalidProtobuf, Fail, ...)
            raise self.load_error(exc, ort.__version__) from exc
        inputs = self._session.get_inputs()
        self.check_names([i.name for i in inputs], [o.name for o in self._session.get_outputs()],
                         {i.name: tuple(d if isinstance(d, int) else "?" for d in i.shape) for i in inputs})
        self._output_names = [t.name for t in self.outputs]
        self.settings = {"onnxruntime": ort.__version__, "providers": self._session.get_providers(),
                         "intra_op_num_threads": threads or 0, SPINNING_KEY: "0"}

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._session.run(self._output_names, feeds)
        return dict(zip(self._output_names, values))
