"""Peak memory of calibration with 100 vs 1000 samples: it must not grow with the sample count.

Each run is a fresh Python process (so one run's peak cannot hide another's) that calibrates
the optimized fp32 ONNX of a small zoo model with the ``entropy`` observer over a stream of
synthetic shape scenes (drawn on the fly, preprocessed with the model's ImageNet
normalisation, never stored). One child reports its peak resident set size
(``VmHWM``: onnxruntime's arena and numpy together), a second
the peak of Python-tracked allocations (``tracemalloc``, which sees numpy's buffers; its own
bookkeeping would inflate the first child's RSS, so it runs apart). Writes
docs/benchmarks/calib_memory.json. The issue's bar: peak(1000) <= 1.3 x peak(100).

    python benchmarks/calib_memory.py              # ~3 minutes on 2 busy cores
    python benchmarks/calib_memory.py --samples 50 500 --model mobilenetv2 --imgsz 128
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks" / "calib_memory.json"
LIMIT_RATIO = 1.3


def scenes(count: int, imgsz: int, seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """``count`` preprocessed synthetic classification scenes, generated one at a time."""
    from edgekit.data.synth import classification_scene, scene_rng
    from edgekit.data.transforms import Preprocess

    preprocess = Preprocess(imgsz=(imgsz, imgsz))
    for index in range(count):
        scene = classification_scene(scene_rng(seed, index), label=index % 5, size=imgsz)
        yield {"images": preprocess(scene.image)[0]}


def child(model_path: Path, samples: int, imgsz: int, traced: bool) -> dict[str, float]:
    """Calibrate once in this process and measure it (peak RSS, or with ``traced`` the tracemalloc peak)."""
    from edgekit.calib.calibrate import calibrate

    if traced:
        tracemalloc.start()
    start = time.perf_counter()
    recipe = calibrate(model_path, scenes(samples, imgsz), observer="entropy")
    elapsed = time.perf_counter() - start
    result = {"samples": recipe.provenance.samples, "tensors": len(recipe.tensors), "elapsed_s": round(elapsed, 2)}
    if traced:
        result["tracemalloc_peak_mib"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 2)
    else:
        result["peak_rss_mib"] = round(peak_rss_kib() / 1024, 1)
    return result


def peak_rss_kib() -> int:
    """This process's peak RSS. ``VmHWM`` on Linux: ``ru_maxrss`` survives fork + exec, so a child
    would report its parent's (torch-sized) peak."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS


def export(model: str, imgsz: int, path: Path) -> None:
    """The optimized fp32 ONNX of a zoo model (random init: statistics, not accuracy, matter here)."""
    import onnx
    import torch

    from edgekit.graph import optimize
    from edgekit.models import get_model
    from edgekit.onnx_export import torch_to_onnx

    torch.manual_seed(0)
    graph, _ = optimize(torch_to_onnx(get_model(model), torch.randn(1, 3, imgsz, imgsz), output_names=["logits"]))
    onnx.save(graph, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shufflenetv2-0.5")
    parser.add_argument("--imgsz", type=int, default=96)
    parser.add_argument("--samples", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # internal: run one measurement
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.samples[0], args.imgsz, args.traced)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / "model.onnx"
        export(args.model, args.imgsz, model_path)
        runs = []
        for samples in args.samples:
            run = {}
            for traced in (False, True):  # tracemalloc's own bookkeeping would inflate the RSS
                cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(model_path),
                       "--samples", str(samples), "--imgsz", str(args.imgsz), *(["--traced"] if traced else [])]
                done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
                measured = json.loads(done.stdout.strip().splitlines()[-1])
                run.update({k: v for k, v in measured.items() if not (traced and k == "elapsed_s")})
            runs.append(run)
            print(f"{samples:>6} samples: peak RSS {run['peak_rss_mib']} MiB, "
                  f"tracemalloc peak {run['tracemalloc_peak_mib']} MiB, {run['elapsed_s']} s")
    small, large = runs[0], runs[-1]
    ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
    result = {
        "what": "peak memory of calibrate(observer='entropy') vs calibration sample count, one process per "
                "measurement (peak RSS untraced; tracemalloc peak in a second, traced run)",
        "model": args.model, "imgsz": args.imgsz, "observer": "entropy", "runs": runs,
        "rss_ratio": round(ratio, 3),
        "tracemalloc_ratio": round(large["tracemalloc_peak_mib"] / small["tracemalloc_peak_mib"], 3),
        "limit_ratio": LIMIT_RATIO, "pass": ratio <= LIMIT_RATIO,
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine()},
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"peak RSS ratio {large['samples']}/{small['samples']} samples: {ratio:.3f} "
          f"({'PASS' if result['pass'] else 'FAIL'}, limit {LIMIT_RATIO}); wrote {args.out}")


if __name__ == "__main__":
    main()
