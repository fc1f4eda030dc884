"""Soak: the runtime SDK predicts 10,000 images in one process; memory must not grow, answers must not drift.

The shipped classifier fixture (``edgekit/fixtures/shufflenetv2-1.0.safetensors``, trained on
synthetic shapes) is exported to an onnx-fp32 bundle and loaded once with
``edgekit.runtimes.load``. It then predicts synthetic shape scenes generated in memory, one
per seed index (sizes 64-160 px, so the resize path varies), never written to disk. The
resident set size is read from ``/proc/self/statm`` every ``--every`` images; the
least-squares slope of RSS against images after a warm-up is reported in KiB per 1000
images. At the end the first ``--recheck`` images are regenerated and predicted again: class
ids and scores must be bit-identical to the first time. Writes docs/reliability/soak.json.

    python benchmarks/soak.py                        # ~3 minutes on one busy core
    python benchmarks/soak.py --images 2000 --out /tmp/soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "reliability" / "soak.json"
MODEL = "shufflenetv2-1.0"
WEIGHTS = ROOT / "edgekit" / "fixtures" / "shufflenetv2-1.0.safetensors"
SIZES = (64, 80, 96, 112, 128, 160)
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def rss_kib() -> int:
    """Resident set size of this process (``/proc/self/statm``, second field, in pages)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE_KIB


def image(seed: int, index: int) -> tuple[np.ndarray, int]:
    """The ``index``-th soak image and its class: a shape scene of a size picked by the seed."""
    from edgekit.data.synth import classification_scene, scene_rng

    rng = scene_rng(seed, index)
    label = index % 6
    return classification_scene(rng, label=label, size=SIZES[int(rng.integers(len(SIZES)))]).image, label


def slope_kib_per_1000(points: list[tuple[int, int]]) -> float:
    """Least-squares slope of RSS (KiB) against images, per 1000 images."""
    x = np.array([p[0] for p in points], np.float64)
    y = np.array([p[1] for p in points], np.float64)
    return float(np.polyfit(x, y, 1)[0] * 1000) if len(points) >= 2 else 0.0


def fingerprint(result: object) -> bytes:
    """Class ids and scores, bit for bit."""
    return np.asarray(result.class_ids).tobytes() + np.asarray(result.scores).tobytes()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, default=100, help="images between RSS samples")
    parser.add_argument("--warmup", type=int, default=1000, help="images before the slope is fitted")
    parser.add_argument("--recheck", type=int, default=200, help="first images predicted again at the end")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    import edgekit
    from edgekit.runtimes import load

    with tempfile.TemporaryDirectory(prefix="edgekit-soak-") as tmp:
        bundle = Path(tmp) / "bundle"
        edgekit.export(MODEL, out=bundle, target="onnx-fp32", weights=WEIGHTS)
        model = load(bundle, backend=args.backend, threads=args.threads)
        first: list[bytes] = []
        samples: list[tuple[int, int]] = [(0, rss_kib())]
        correct = 0
        start = time.perf_counter()
        for index in range(args.images):
            picture, label = image(args.seed, index)
            result = model.predict(picture)
            correct += int(result.class_ids[0] == label)
            if index < args.recheck:
                first.append(fingerprint(result))
            if (index + 1) % args.every == 0:
                samples.append((index + 1, rss_kib()))
        elapsed = time.perf_counter() - start
        again = [fingerprint(model.predict(image(args.seed, i)[0])) for i in range(min(args.recheck, args.images))]

    after = [p for p in samples if p[0] >= args.warmup]
    mismatches = sum(a != b for a, b in zip(first, again))
    body = {
        "what": f"benchmarks/soak.py: {MODEL} fixture, onnx-fp32 bundle, runtimes.load(backend={args.backend!r}, "
                f"threads={args.threads}), {args.images} predictions on in-memory synthetic shape scenes "
                f"({min(SIZES)}-{max(SIZES)} px, seed {args.seed}) in one process",
        "images": args.images,
        "rss_slope_kib_per_1000_images": round(slope_kib_per_1000(after), 2),
        "rss_slope_fitted_from_image": args.warmup,
        "rss_slope_kib_per_1000_images_all": round(slope_kib_per_1000(samples), 2),
        "rss_kib": {"start": samples[0][1], "after_warmup": after[0][1] if after else None, "end": samples[-1][1],
                    "max_after_warmup": max((p[1] for p in after), default=None),
                    "min_after_warmup": min((p[1] for p in after), default=None)},
        "rechecked_images": len(again), "identical_results": mismatches == 0, "mismatches": mismatches,
        "top1_on_soak_images": round(correct / args.images, 4),
        "wall_s": round(elapsed, 1), "ms_per_image": round(1e3 * elapsed / args.images, 2),
        "rss_samples": samples,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "OMP_NUM_THREADS=1 python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(body, indent=1) + "\n")
    print(f"{args.images} images in {elapsed:.0f} s: RSS slope {body['rss_slope_kib_per_1000_images']} KiB/1000 images "
          f"after {args.warmup}, {mismatches} mismatches in {len(again)} rechecked -> {args.out}")
    return 0 if mismatches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
