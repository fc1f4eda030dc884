"""fp32 vs INT8 latency of one bundle on one backend: same process, same image, runs interleaved.

Each round runs every variant once, alternating which goes first, so a slow patch of the
machine (another process, frequency scaling) hits both alike. The medians are reported:
the time inside the graphs (``infer_ms``) and end to end (pre-processing and glue too).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class LatencyComparison:
    """Median latencies of the fp32 reference and the INT8 graphs.

    Args:
        backend: the runtime backend both ran on.
        threads: CPU threads per inference (None: the engine's default).
        runs: timed predictions per variant.
        warmup: untimed predictions per variant first.
        fp32_ms, int8_ms: median time inside the graphs per image.
        fp32_total_ms, int8_total_ms: median end-to-end time per image.
    """

    backend: str
    threads: int | None
    runs: int
    warmup: int
    fp32_ms: float
    int8_ms: float
    fp32_total_ms: float
    int8_total_ms: float

    @property
    def speedup(self) -> float:
        """fp32 time over INT8 time in the graphs (> 1: INT8 is faster)."""
        return self.fp32_ms / self.int8_ms if self.int8_ms > 0 else float("nan")

    @property
    def int8_faster(self) -> bool:
        """True when INT8 beats fp32 by more than timing noise (2 %)."""
        return self.speedup > 1.02

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, with the speed-up."""
        return {**asdict(self), "speedup": round(self.speedup, 3), "int8_faster": self.int8_faster}


def compare_latency(tasks: Mapping[str, Any], image: Any, *, runs: int = 20, warmup: int = 3,
                    backend: str = "onnxruntime", threads: int | None = None) -> LatencyComparison:
    """Time the ``fp32`` and ``int8`` task pipelines of ``tasks`` on ``image``, interleaved."""
    order = ("fp32", "int8")
    for _ in range(warmup):
        for name in order:
            tasks[name].predict(image)
    infer: dict[str, list[float]] = {name: [] for name in order}
    total: dict[str, list[float]] = {name: [] for name in order}
    for i in range(runs):
        for name in order if i % 2 == 0 else order[::-1]:
            _, times = tasks[name].predict_timed(image)
            infer[name].append(times.infer_ms)
            total[name].append(times.total_ms)
    med = {name: statistics.median(values) for name, values in infer.items()}
    med_total = {name: statistics.median(values) for name, values in total.items()}
    return LatencyComparison(backend=backend, threads=threads, runs=runs, warmup=warmup,
                             fp32_ms=round(med["fp32"], 4), int8_ms=round(med["int8"], 4),
                             fp32_total_ms=round(med_total["fp32"], 4), int8_total_ms=round(med_total["int8"], 4))
