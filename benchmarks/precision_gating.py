"""Precision Gating (experimental) on a classification fixture, against uniform INT8 and INT4 activations.

The trained ShuffleNetV2-1.0 fixture (96x96, 6 shape classes), BatchNorm folded, INT8 per-channel
weights everywhere, the first conv and the classifier at uniform 8-bit activations. Variants
(:mod:`edgekit.precision.gating`): uniform INT8 and INT4 activations after calibration only;
INT4 after quantization-aware fine-tuning (weights), and Precision Gating (8-bit codes, the 4
MSBs always, a signed LSB correction where the MSB result passes a per-channel threshold) with
its thresholds fine-tuned (``pg-8/4``) or thresholds and weights (``pg-8/4-qat``), all with the
same budget of steps on synthetic shapes (seed 5101). Evaluated on 300 held-out synthetic images (seed 5102); the
gated model's ONNX simulation is run in onnxruntime on the same images. Writes
docs/benchmarks/precision_gating.json and .md.

    python benchmarks/precision_gating.py [--steps 150] [--batch 16]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "edgekit" / "fixtures" / "shufflenetv2-1.0.safetensors"
OUT = ROOT / "docs" / "benchmarks" / "precision_gating"


def run(steps: int, batch: int, penalty: float, work: Path) -> dict[str, Any]:
    from edgekit.data import synthesize
    from edgekit.inputspec import make_input_spec
    from edgekit.models import get_spec
    from edgekit.models.weights import load_weights
    from edgekit.precision import gating
    from edgekit.train.checkpoint import read_card

    torch.manual_seed(0)
    card = read_card(FIXTURE)
    pre = card.preprocessing()
    spec = make_input_spec("classify", tuple(card.imgsz), mean=pre.mean, std=pre.std,
                           channel_order=pre.channel_order.value, resize=pre.resize.value)
    model = get_spec("shufflenetv2-1.0").build(num_classes=card.num_classes)
    load_weights(model, FIXTURE)
    model.eval()
    train_x, train_y = gating.labelled_tensors(synthesize("cls", 600, 5101, work / "train", imgsz=96), spec)
    eval_x, eval_y = gating.labelled_tensors(synthesize("cls", 300, 5102, work / "eval", imgsz=96), spec)
    eval_batches = [(eval_x[k:k + 50], eval_y[k:k + 50]) for k in range(0, len(eval_x), 50)]
    stream = gating.batch_stream(train_x, train_y, batch)
    variants = {name: (gating.GatingConfig(c.bits, c.msb_bits, penalty=penalty) if c.msb_bits < c.bits else c, t)
                for name, (c, t) in gating.VARIANTS.items()}
    timings, results, models = {}, [gating.GatingResult("fp32", gating.evaluate(model, eval_batches)[0], 32.0)], {}
    feed = stream()
    calib = [next(feed)[0] for _ in range(4)]
    for name, (config, training) in variants.items():
        start = time.perf_counter()
        models[name] = quantized = gating.to_gated(model, config)
        gating.calibrate_ranges(quantized, calib)
        if training:
            gating.train(quantized, stream, steps=steps, weights=training == gating.TRAIN_ALL)
        top1, bits = gating.evaluate(quantized, eval_batches)
        results.append(gating.GatingResult(name, top1, round(bits, 3)))
        timings[name] = round(time.perf_counter() - start, 1)
    pg = models["pg-8/4"]
    top1, bits = next((r.top1, r.bits) for r in results if r.name == "pg-8/4")
    import onnxruntime as ort

    graph = gating.to_onnx(pg, eval_x[:1])
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    onnx_pred = np.concatenate([session.run(None, {name: eval_x[i:i + 1].numpy()})[0].argmax(1)
                                for i in range(len(eval_x))])
    with torch.no_grad():
        torch_pred = torch.cat([pg(x).argmax(1) for x, _ in eval_batches]).numpy()
    return {
        "meta": {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
                 "note": "2-core shared host, one thread; times are wall clock of one run each"},
        "case": {"model": "shufflenetv2-1.0 fixture, 96x96", "train": "600 synthetic shapes, seed 5101",
                 "eval": "300 synthetic shapes, seed 5102", "qat_steps": steps, "batch": batch,
                 "pg": {"bits": 8, "msb_bits": 4, "penalty": penalty, "msb": "rounded (LSB correction signed: "
                        "counted as 5 bits)", "training": {n: t or "none" for n, (_, t) in variants.items()}},
                 "weights": "INT8 per output channel (every variant)",
                 "uniform_layers": "first conv and classifier at 8-bit activations in every variant"},
        "results": [r.to_dict() for r in results],
        "seconds": timings,
        "onnx_simulation": {"top1_torch": top1, "bits": round(bits, 3), "ops": sorted({n.op_type for n in
                                                                                         graph.graph.node}),
                            "prediction_agreement": float(np.mean(onnx_pred == torch_pred))},
    }


def render(result: dict[str, Any]) -> str:
    """The markdown page of one run."""
    case = result["case"]
    rows = {r["name"]: r for r in result["results"]}
    int8 = rows["int8"]["top1"]
    pg = rows["pg-8/4"]
    within = abs(100 * (int8 - pg["top1"])) <= 1.0
    verdict = (f"Precision Gating averaged **{pg['bits']:.2f} bits** at top-1 {100 * pg['top1']:.2f} vs INT8 "
               f"{100 * int8:.2f}: " + ("below 8 bits within 1 pt of INT8." if within and pg["bits"] < 8 else
                                        "it did **not** reach 'below 8 bits within 1 pt of INT8' here."))
    lines = [
        "# Precision Gating (experimental) vs uniform INT8 / INT4",
        "",
        f"{case['model']}; {case['weights']}; {case['uniform_layers']}. Trained variants fine-tune {case['qat_steps']} "
        f"steps of batch {case['batch']} on {case['train']}; evaluation on {case['eval']}. Generated by "
        f"`benchmarks/precision_gating.py` ({result['meta']['date']}, torch {result['meta']['torch']}; "
        f"{result['meta']['note']}). No backend has kernels for Precision Gating: these are simulated numbers.",
        "",
        "| variant | activation bits (MAC-weighted mean) | top-1 | time (s) |",
        "|---|---:|---:|---:|",
    ]
    for r in result["results"]:
        lines.append(f"| {r['name']} | {r['bits']:.2f} | {100 * r['top1']:.2f} | "
                     f"{result['seconds'].get(r['name'], '')} |")
    sim = result["onnx_simulation"]
    pg_case = case["pg"]
    lines += ["", f"Precision Gating: {pg_case['bits']}-bit codes, {pg_case['msb_bits']} MSBs always; MSB part "
              f"{pg_case['msb']}; training per variant: "
              + ", ".join(f"{k}: {v}" for k, v in pg_case.get("training", {}).items()) + "."]
    lines += ["", verdict, "",
              f"ONNX simulation of the gated inference ({', '.join(sim['ops'])}): onnxruntime and PyTorch agree on "
              f"{100 * sim['prediction_agreement']:.1f} % of the 300 predictions (that run: top-1 "
              f"{100 * sim['top1_torch']:.2f}, {sim['bits']:.2f} bits)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--penalty", type=float, default=0.02)
    parser.add_argument("--render", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.render:
        result = json.loads(OUT.with_suffix(".json").read_text())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = run(args.steps, args.batch, args.penalty, Path(tmp))
        OUT.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    OUT.with_suffix(".md").write_text(render(result))
    print(render(result))


if __name__ == "__main__":
    main()
