"""Latency of task pipelines timed against each other: same process, same image, runs interleaved.

Each round runs every variant once, alternating the order (forward, then reversed), so a slow
patch of the machine (another process, frequency scaling) hits them alike. The medians are
reported: the time inside the graphs (``infer_ms``) and end to end (pre-processing and glue
too). ``interleaved_latency`` times any number of variants (``--target auto-int8`` times every
candidate bundle); ``compare_latency`` is the report's fp32 vs INT8 pair.
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


@dataclass(frozen=True)
class VariantLatency:
    """Median latency of one variant.

    Args:
        infer_ms: median time inside the graphs per image.
        total_ms: median end-to-end time per image (pre-processing, graphs, glue, post-processing).
    """

    infer_ms: float
    total_ms: float


def interleaved_latency(tasks: Mapping[str, Any], image: Any, *, runs: int = 20,
                        warmup: int = 3) -> dict[str, VariantLatency]:
    """Median latency of each task pipeline in ``tasks`` on ``image``, the variants run round by round.

    Args:
        tasks: name -> a loaded task pipeline (``predict`` and ``predict_timed``).
        image: what every variant predicts.
        runs: timed predictions per variant.
        warmup: untimed predictions per variant first.
    """
    order = list(tasks)
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
    return {name: VariantLatency(infer_ms=round(statistics.median(infer[name]), 4),
                                 total_ms=round(statistics.median(total[name]), 4)) for name in order}


def compare_latency(tasks: Mapping[str, Any], image: Any, *, runs: int = 20, warmup: int = 3,
                    backend: str = "onnxruntime", threads: int | None = None) -> LatencyComparison:
    """Time the ``fp32`` and ``int8`` task pipelines of ``tasks`` on ``image``, interleaved."""
    med = interleaved_latency({name: tasks[name] for name in ("fp32", "int8")}, image, runs=runs, warmup=warmup)
    return LatencyComparison(backend=backend, threads=threads, runs=runs, warmup=warmup,
                             fp32_ms=med["fp32"].infer_ms, int8_ms=med["int8"].infer_ms,
                             fp32_total_ms=med["fp32"].total_ms, int8_total_ms=med["int8"].total_ms)
