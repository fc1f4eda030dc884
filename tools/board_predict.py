"""The board side of the Raspberry Pi check: run a set of bundles with ``backend="auto"`` and write JSON.

    python tools/board_predict.py predict BUNDLES --out results.json [--runs N] [--threads N]
    python tools/board_predict.py compare reference.json other.json [--out agreement.json]

``predict`` reads ``BUNDLES/bundles.json`` (``tools/make_board_bundles.py``), loads each
bundle with ``edgekit.runtimes.load(..., backend="auto")``, predicts on its sample images
(``edgekit/data/samples`` of the edgekit that runs: the wheel on the board) and writes the
results, the engine ``auto`` chose, the platform and per-image latency. The same script runs
on the host and, under qemu-user, on an arm64 Python (``tools/board_check_arm64.sh``), so it
imports the standard library, numpy and ``edgekit.runtimes`` only — never torch.

``compare`` checks one results file against another: the same classes in the same order
(classifiers), the same detections one to one by class with box IoU >= ``MIN_IOU``
(detectors), masks equal on >= ``MIN_MASK_EQUAL`` of the pixels (segmenters). It prints one
line per bundle and exits 1 when any bundle disagrees.
"""

from __future__ import annotations

import argparse
import base64
import json
import platform
import sys
import time
import zlib
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

import edgekit
from edgekit.runtimes import ClassResult, Detections, SegmentationResult, installed_backends, load
from edgekit.runtimes.boxes import box_iou
from edgekit.runtimes.cpuinfo import cpu_description
from edgekit.runtimes.select import PlatformInfo

RESULTS_VERSION = 1
MIN_IOU = 0.99
MIN_MASK_EQUAL = 0.999
PACKAGES = ("numpy", "pillow", "ai-edge-litert", "tflite-runtime", "onnxruntime", "openvino", "torch")


# ------------------------------------------------------------------------------------------- predict

def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """A class-id mask as JSON: shape, dtype and the zlib-compressed bytes in base64."""
    data = zlib.compress(np.ascontiguousarray(mask).tobytes(), 6)
    return {"shape": list(mask.shape), "dtype": str(mask.dtype), "zlib_b64": base64.b64encode(data).decode()}


def decode_mask(record: dict[str, Any]) -> np.ndarray:
    """The inverse of :func:`encode_mask`."""
    raw = zlib.decompress(base64.b64decode(record["zlib_b64"]))
    return np.frombuffer(raw, dtype=np.dtype(record["dtype"])).reshape(record["shape"])


def result_record(result: ClassResult | Detections | SegmentationResult) -> dict[str, Any]:
    """What one prediction returned, as JSON."""
    if isinstance(result, Detections):
        return {"boxes": result.boxes.astype(float).tolist(), "scores": result.scores.astype(float).tolist(),
                "class_ids": result.class_ids.tolist(), "labels": list(result.labels)}
    if isinstance(result, SegmentationResult):
        return {"mask": encode_mask(result.mask), "class_ids": result.class_ids.tolist(),
                "fractions": result.fractions().astype(float).round(5).tolist()}
    return {"class_ids": result.class_ids.tolist(), "scores": result.scores.astype(float).tolist(),
            "labels": list(result.labels)}


def package_versions() -> dict[str, str]:
    """Versions of the packages that matter on the board (absent ones left out)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def platform_record() -> dict[str, Any]:
    """The machine as the runtime sees it: what ``backend="auto"`` decides from, CPU, Python, packages."""
    info = PlatformInfo.detect()
    return {"machine": platform.machine(), "family": info.family, "installed_backends": sorted(installed_backends()),
            "python": platform.python_version(), "cpu": cpu_description(), "packages": package_versions(),
            "torch_imported": "torch" in sys.modules}


def predict_bundle(bundle: Path, entry: dict[str, Any], samples: Path, *, runs: int,
                   threads: int | None) -> dict[str, Any]:
    """Load one bundle with ``backend="auto"`` and predict on its images; latency per image in ms."""
    start = time.perf_counter()
    task = load(bundle, backend="auto", threads=threads)
    load_s = time.perf_counter() - start
    first = time.perf_counter()
    task.predict(samples / entry["images"][0])  # warm-up: engines plan and pack weights on the first call
    first_ms = (time.perf_counter() - first) * 1e3
    images = []
    for rel in entry["images"]:
        timed = [task.predict_timed(samples / rel) for _ in range(runs)]
        result, _ = timed[-1]
        images.append({"image": rel, "result": result_record(result),
                       "latency_ms": [round(t.total_ms, 2) for _, t in timed],
                       "infer_ms": [round(t.infer_ms, 2) for _, t in timed]})
    latencies = [v for image in images for v in image["latency_ms"]]
    return {"name": entry["name"], "task": task.manifest.task, "target": task.manifest.target,
            "backend": task.backend, "graph_mode": task.graph_mode, "load_s": round(load_s, 3),
            "first_ms": round(first_ms, 2), "latency_ms_median": round(float(np.median(latencies)), 2),
            "images": images}


def predict_set(bundles: Path, *, runs: int = 1, threads: int | None = 1, samples: Path | None = None,
                only: list[str] | None = None) -> dict[str, Any]:
    """Run every bundle listed in ``bundles/bundles.json``; returns the results document."""
    listing = json.loads((bundles / "bundles.json").read_text())
    samples = samples or Path(edgekit.__file__).resolve().parent / "data" / "samples"
    started = time.perf_counter()
    results = [predict_bundle(bundles / entry["path"], entry, samples, runs=runs, threads=threads)
               for entry in listing["bundles"] if not only or entry["name"] in only]
    return {"version": RESULTS_VERSION, "platform": platform_record(), "edgekit_version": edgekit.__version__,
            "edgekit_file": edgekit.__file__, "runs": runs, "threads": threads,
            "wall_s": round(time.perf_counter() - started, 2), "bundles": results}


# ------------------------------------------------------------------------------------------- compare

def match_detections(ref: dict[str, Any], got: dict[str, Any]) -> dict[str, Any]:
    """Pair each reference detection with the unpaired same-class detection it overlaps most.

    Returns counts, the smallest IoU and largest score difference over the pairs, and
    ``unmatched``: reference detections with no same-class partner left.
    """
    a, b = np.asarray(ref["boxes"], np.float32).reshape(-1, 4), np.asarray(got["boxes"], np.float32).reshape(-1, 4)
    ca, cb = np.asarray(ref["class_ids"]), np.asarray(got["class_ids"])
    iou = box_iou(a, b) if len(a) and len(b) else np.zeros((len(a), len(b)), np.float32)
    iou = np.where(ca[:, None] == cb[None, :], iou, -1.0)
    taken: set[int] = set()
    ious, score_diffs, unmatched = [], [], 0
    for i in range(len(a)):
        free = [j for j in range(len(b)) if j not in taken and iou[i, j] >= 0]
        if not free:
            unmatched += 1
            continue
        j = max(free, key=lambda k: iou[i, k])
        taken.add(j)
        ious.append(float(iou[i, j]))
        score_diffs.append(abs(float(ref["scores"][i]) - float(got["scores"][j])))
    return {"count": [len(a), len(b)], "unmatched": unmatched, "min_iou": min(ious, default=1.0),
            "max_score_diff": max(score_diffs, default=0.0)}


def compare_image(task: str, ref: dict[str, Any], got: dict[str, Any]) -> dict[str, Any]:
    """Agreement of one image's results; ``ok`` against the thresholds of the check."""
    if task == "detect":
        m = match_detections(ref, got)
        return {**m, "ok": m["count"][0] == m["count"][1] and m["unmatched"] == 0 and m["min_iou"] >= MIN_IOU}
    if task == "segment":
        a, b = decode_mask(ref["mask"]), decode_mask(got["mask"])
        equal = float((a == b).mean()) if a.shape == b.shape else 0.0
        return {"equal_fraction": equal, "ok": equal >= MIN_MASK_EQUAL}
    diff = max((abs(x - y) for x, y in zip(ref["scores"], got["scores"])), default=0.0)
    return {"class_ids": [ref["class_ids"], got["class_ids"]], "max_score_diff": diff,
            "ok": ref["class_ids"] == got["class_ids"]}


def compare(reference: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Bundle by bundle, image by image agreement of ``other`` with ``reference`` (missing bundles fail)."""
    theirs = {b["name"]: b for b in other["bundles"]}
    bundles = {}
    for bundle in reference["bundles"]:
        got = theirs.get(bundle["name"])
        if got is None:
            bundles[bundle["name"]] = {"ok": False, "error": "missing from the other results"}
            continue
        mine = {i["image"]: i["result"] for i in got["images"]}
        images = {i["image"]: (compare_image(bundle["task"], i["result"], mine[i["image"]]) if i["image"] in mine
                               else {"ok": False, "error": "image missing"}) for i in bundle["images"]}
        bundles[bundle["name"]] = {"task": bundle["task"], "backends": [bundle["backend"], got["backend"]],
                                   "images": images, "ok": all(i["ok"] for i in images.values())}
    return {"machines": [reference["platform"]["machine"], other["platform"]["machine"]],
            "thresholds": {"min_iou": MIN_IOU, "min_mask_equal": MIN_MASK_EQUAL}, "bundles": bundles,
            "ok": bool(bundles) and all(b["ok"] for b in bundles.values())}


def summary_line(name: str, verdict: dict[str, Any]) -> str:
    """One line per bundle: the worst number of its images."""
    images = verdict.get("images", {}).values()
    if verdict.get("task") == "detect":
        worst = f"min IoU {min(i.get('min_iou', 0.0) for i in images):.4f}, detections " + \
                ", ".join(f"{i['count'][0]}/{i['count'][1]}" for i in images if "count" in i)
    elif verdict.get("task") == "segment":
        worst = f"masks equal on {100 * min(i.get('equal_fraction', 0.0) for i in images):.3f}% of pixels"
    else:
        worst = f"same classes: {all(i['ok'] for i in images)}, max score diff " \
                f"{max(i.get('max_score_diff', 0.0) for i in images):.2e}"
    return f"{'ok  ' if verdict['ok'] else 'FAIL'} {name}: {worst} ({' vs '.join(verdict.get('backends', []))})"


# ------------------------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="run the bundles of BUNDLES/bundles.json and write results JSON")
    p.add_argument("bundles", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--runs", type=int, default=1, help="timed predictions per image (after one warm-up)")
    p.add_argument("--threads", type=int, default=1, help="engine threads per inference")
    p.add_argument("--samples", type=Path, help="sample images (default: edgekit/data/samples of this edgekit)")
    p.add_argument("--only", nargs="*", help="bundle names to run (default: all)")
    c = sub.add_parser("compare", help="compare two results files; exit 1 when they disagree")
    c.add_argument("reference", type=Path)
    c.add_argument("other", type=Path)
    c.add_argument("--out", type=Path, help="write the agreement JSON here")
    args = parser.parse_args(argv)
    if args.command == "predict":
        doc = predict_set(args.bundles, runs=args.runs, threads=args.threads, samples=args.samples, only=args.only)
        args.out.write_text(json.dumps(doc) + "\n")
        info = doc["platform"]
        print(f"{info['machine']} (python {info['python']}): {len(doc['bundles'])} bundles in {doc['wall_s']} s")
        for b in doc["bundles"]:
            print(f"  {b['name']}: backend {b['backend']}, median {b['latency_ms_median']} ms/image, "
                  f"first {b['first_ms']} ms, load {b['load_s']} s")
        return 0
    verdict = compare(json.loads(args.reference.read_text()), json.loads(args.other.read_text()))
    if args.out:
        args.out.write_text(json.dumps(verdict, indent=1) + "\n")
    print(" vs ".join(verdict["machines"]))
    for name, bundle in verdict["bundles"].items():
        print("  " + summary_line(name, bundle))
    return 0 if verdict["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
