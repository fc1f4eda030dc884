"""Where a ThunderNet-SNet146 prediction spends its time on the board SDK: pre / infer / post.

Exports thundernet-snet146 at 320x320 (the trained fixture weights when
``edgekit/fixtures/thundernet-snet146.safetensors`` exists, else the untrained model), then
runs ``edgekit.runtimes.benchmark`` on the bundled sample scene with onnxruntime and OpenVINO
(CPU, ``--threads`` intra-op threads), and times the numpy glue piece by piece (RPN proposals,
PSRoI align, final decode + NMS, mapping to the image). For comparison it also times the
bundle's single-graph variant (``single.onnx``: RoiAlign and NonMaxSuppression inside the
engine). The issue's target is pre + post <= 15% of end-to-end latency. Writes
docs/benchmarks/runtime_split.json.

    python benchmarks/runtime_split.py            # ~1-2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

import edgekit
from edgekit.data import SHAPES
from edgekit.data.image_io import load_image
from edgekit.data.transforms import boxes_to_original
from edgekit.bundle import read_manifest
from edgekit.runtimes import Detector, benchmark, create_backend, load
from edgekit.runtimes.cpuinfo import cpu_description
from edgekit.runtimes.twostage import postprocess, proposals, ps_roi_align

ROOT = Path(__file__).resolve().parents[1]
MODEL = "thundernet-snet146"
WEIGHTS = ROOT / "edgekit" / "fixtures" / f"{MODEL}.safetensors"
SAMPLE = ROOT / "edgekit" / "data" / "samples" / "sample.jpg"
BACKENDS = ("onnxruntime", "openvino")
TARGET_SHARE = 0.15


def median_ms(fn: Callable[[], Any], runs: int) -> float:
    """Median wall time of ``fn`` in milliseconds."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def glue_breakdown(model: Detector, image: Any, runs: int) -> dict[str, float]:
    """Median time of each numpy step between and after the two graphs."""
    x, meta = model.preprocess(image)
    params, size = model.params, tuple(model.manifest.input.imgsz)
    stage1 = model.backends["stage1"].run({model.manifest.input.name: x})
    logits, deltas, features = (stage1[n] for n in ("rpn_logits", "rpn_deltas", "features"))
    props = proposals(logits, deltas, params, size)[0]
    rois = np.concatenate((np.zeros((len(props), 1), np.float32), props), axis=1)
    pooled = ps_roi_align(features, rois, params.pooled_size, params.spatial_scale, params.sampling_ratio,
                          params.aligned)
    head = model.backends["head"].run({"pooled": pooled})
    boxes, _, _ = postprocess(props, head["cls_logits"], head["box_deltas"], params, size)
    return {
        "proposals": median_ms(lambda: proposals(logits, deltas, params, size), runs),
        "ps_roi_align": median_ms(lambda: ps_roi_align(features, rois, params.pooled_size, params.spatial_scale,
                                                       params.sampling_ratio, params.aligned), runs),
        "decode_nms": median_ms(lambda: postprocess(props, head["cls_logits"], head["box_deltas"], params, size),
                                runs),
        "to_original": median_ms(lambda: boxes_to_original(boxes, meta), runs),
        "proposals_kept": len(props),
        "detections": len(boxes),
    }


def single_graph_ms(bundle: Path, backend: str, threads: int, image: Any, model: Detector, runs: int) -> float | None:
    """Median inference time of the bundle's single-graph variant (RoiAlign + NMS inside), if it has one."""
    graphs = {g.role: g for g in read_manifest(bundle).graphs}
    if "single" not in graphs:
        return None
    engine = create_backend(backend, bundle / graphs["single"].path, graphs["single"], threads=threads)
    x, _ = model.preprocess(image)
    engine.run({model.manifest.input.name: x})
    return median_ms(lambda: engine.run({model.manifest.input.name: x}), runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "runtime_split.json")
    args = parser.parse_args()

    trained = WEIGHTS.is_file()
    image = load_image(SAMPLE)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        if trained:
            edgekit.export(MODEL, out=bundle, weights=WEIGHTS, num_classes=len(SHAPES), labels=list(SHAPES))
        else:
            edgekit.export(MODEL, out=bundle)
        for backend in BACKENDS:
            model = load(bundle, backend=backend, threads=args.threads)
            assert isinstance(model, Detector)
            record = benchmark(model, image, runs=args.runs, warmup=args.warmup).to_dict()
            record["glue_ms"] = glue_breakdown(model, image, args.runs)
            # For comparison: the same detector as one graph, glue inside the engine (not what load() runs).
            record["single_graph_infer_ms"] = single_graph_ms(bundle, backend, args.threads, image, model, args.runs)
            results[backend] = record
            split = record["split_ms"]
            print(f"{backend}: p50 {record['latency_ms']['p50']:.1f} ms, pre {split['pre']:.2f} / infer "
                  f"{split['infer']:.2f} / post {split['post']:.2f} ms -> pre+post "
                  f"{100 * record['pre_post_share']:.1f}% (target <= {100 * TARGET_SHARE:.0f}%); glue "
                  + ", ".join(f"{k} {v:.2f}" for k, v in record["glue_ms"].items())
                  + f"; single graph {record['single_graph_infer_ms'] or float('nan'):.1f} ms")
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": MODEL, "input_size": [320, 320], "image": str(SAMPLE.relative_to(ROOT)),
        "weights": str(WEIGHTS.relative_to(ROOT)) if trained else "untrained (default init, 80 classes)",
        "threads": args.threads, "runs": args.runs, "warmup": args.warmup, "cpu": cpu_description(),
        "target_pre_post_share": TARGET_SHARE,
        "meets_target": {b: r["pre_post_share"] <= TARGET_SHARE for b, r in results.items()},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
