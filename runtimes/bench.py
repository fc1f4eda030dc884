"""Latency of a loaded task, end to end and split into pre-processing, inference and post-processing.

Each run is one ``predict_timed`` on an image already decoded (file reading and JPEG
decoding are the camera's or the disk's cost, not the model's). Latency percentiles are
over the timed runs; FPS is one stream's, ``1000 / mean``; peak memory is the process's
peak resident set size (``getrusage``), libraries and model loading included.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtimes.cpuinfo import cpu_description
from edgekit.runtimes.tasks import Classifier, Detector, ImageInput, Segmenter, StageTimes, open_image


@dataclass(frozen=True)
class BenchResult:
    """One benchmark of one bundle on one backend.

    Args:
        model, task, target: from the manifest.
        backend: the engine that ran it; backend_settings: what was set on it (per graph role).
        threads: the CPU threads asked for (None: the engine's default).
        runs, warmup: timed and untimed predictions.
        input_size: (height, width) of the model input.
        latency_ms: p50, p90, p99, mean, min and max of end-to-end latency.
        fps: frames per second of one stream (1000 / mean latency).
        split_ms: mean pre / infer / post time per prediction.
        pre_post_share: (pre + post) / end to end, from the means.
        peak_rss_mb: the process's peak resident memory (None where the OS does not say).
        results: detections, classes or segment classes in the last prediction.
        cpu: machine, CPU model, core count and ISA extensions (:mod:`edgekit.runtimes.cpuinfo`).
    """

    model: str
    task: str
    target: str
    backend: str
    threads: int | None
    runs: int
    warmup: int
    input_size: tuple[int, int]
    latency_ms: dict[str, float]
    fps: float
    split_ms: dict[str, float]
    pre_post_share: float
    peak_rss_mb: float | None
    results: int
    cpu: dict[str, Any] = field(default_factory=dict)
    backend_settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        out = asdict(self)
        out["input_size"] = list(self.input_size)
        return out


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process in MiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def benchmark(task: Classifier | Detector | Segmenter, image: ImageInput, *, runs: int = 50,
          warmup: int = 5) -> BenchResult:
    """Time ``runs`` predictions of ``image`` after ``warmup`` untimed ones."""
    if runs < 1 or warmup < 0:
        raise EdgekitError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}.")
    picture = open_image(image)
    for _ in range(warmup):
        task.predict_timed(picture)
    times: list[StageTimes] = []
    result: Any = None
    for _ in range(runs):
        result, t = task.predict_timed(picture)
        times.append(t)
    total = np.array([t.total_ms for t in times])
    split = {k: float(np.mean([getattr(t, f"{k}_ms") for t in times])) for k in ("pre", "infer", "post")}
    p50, p90, p99 = (float(v) for v in np.percentile(total, [50, 90, 99]))
    manifest = task.manifest
    first = next(iter(task.backends.values()))
    height, width = manifest.input.imgsz
    return BenchResult(
        model=manifest.model, task=manifest.task, target=manifest.target, backend=task.backend,
        threads=first.threads, runs=runs, warmup=warmup, input_size=(int(height), int(width)),
        latency_ms={"p50": p50, "p90": p90, "p99": p99, "mean": float(total.mean()), "min": float(total.min()),
                    "max": float(total.max())},
        fps=1000.0 / float(total.mean()), split_ms=split,
        pre_post_share=(split["pre"] + split["post"]) / float(total.mean()),
        peak_rss_mb=peak_rss_mb(), results=len(result), cpu=cpu_description(),
        backend_settings={role: b.settings for role, b in task.backends.items()},
    )
