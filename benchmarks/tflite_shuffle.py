"""TFLite conversions of the shuffle nets: edgekit's (from the optimized ONNX) vs plain litert-torch.

For ``shufflenetv2-1.0`` and ``snet146`` at 224x224 (seeded weights; latency does not depend
on their values) it converts three ways and reports op counts, the cosine of each against
PyTorch, and LiteRT interpreter latency (XNNPACK, the default CPU delegate):

- ``plain``: ``litert_torch.convert`` on the zoo module as written (``channel_shuffle`` as
  reshape / transpose / reshape, ``torch.split``; NCHW input).
- ``edgekit``: what the ``tflite-fp32`` target writes: the optimized ONNX graph (BN folded,
  shuffles relabelled into weights and even/odd channel reads) through
  :func:`edgekit.tflite_convert.onnx_to_tflite`, image input stored NHWC. No TRANSPOSE or
  RESHAPE; the reads are stride-2 STRIDED_SLICEs, which XNNPACK does not delegate.
- ``edgekit-deinterleave``: the same with ``channel_reads="deinterleave"``: each unit's two
  reads become RESHAPE -> TRANSPOSE -> RESHAPE + two SLICEs, all delegated.

For context it also times both edgekit forms quantized to INT8 (``edgekit.tflite_quant``,
running min/max over 8 seeded noise images: the ranges are meaningless, the kernels are not).

Besides latency it counts XNNPACK delegate partitions (``DELEGATE`` nodes after delegation):
an op the delegate does not take runs on LiteRT's own kernels and splits the graph.

Latency: 1 and 2 interpreter threads, one invoke of each variant in turn (interleaved, so load
from other processes hits all alike), median of ``--runs`` after 20 warm-up rounds. Writes
``docs/benchmarks/tflite_shuffle.json`` and ``.md`` with the load average before and after.

    python benchmarks/tflite_shuffle.py            # ~3 minutes on 2 busy cores
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekit.api import ExportOptions, get_pipeline, resolve_model
from edgekit.inputspec import make_input_spec
from edgekit.onnx_to_torch import onnx_to_torch
from edgekit.runtimes.cpuinfo import cpu_description
from edgekit.tflite_convert import DEINTERLEAVED_READS, onnx_to_tflite, quiet_converters, tflite_op_counts
from edgekit.tflite_quant import quantize_int8

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("shufflenetv2-1.0", "snet146")
SIZE = (224, 224)
VARIANTS = ("plain", "edgekit", "edgekit-deinterleave", "edgekit-int8", "edgekit-deinterleave-int8")
FLOAT_VARIANTS = VARIANTS[:3]
THREADS = (1, 2)
WARMUP = 20


def convert_all(name: str) -> tuple[dict[str, bytes], dict[str, bool], torch.nn.Module, np.ndarray]:
    """The three conversions of one model, which of them take NHWC, the torch module, and an input."""
    import litert_torch

    torch.manual_seed(0)
    opts = ExportOptions(imgsz=SIZE)
    source = resolve_model(name, opts)
    plan = get_pipeline(source.task)(source, make_input_spec(source.task, SIZE), opts)
    x = np.random.default_rng(0).standard_normal((1, 3, *SIZE)).astype(np.float32)
    with quiet_converters(), torch.no_grad():
        plain = litert_torch.convert(source.module.eval(), (torch.from_numpy(x),)).model_content()
    strided = onnx_to_tflite(plan.graphs["model"])
    deinterleaved = onnx_to_tflite(plan.graphs["model"], channel_reads=DEINTERLEAVED_READS)
    module = onnx_to_torch(plan.graphs["model"])
    noise = [{"images": np.random.default_rng(i).standard_normal((1, 3, *SIZE)).astype(np.float32)} for i in range(8)]
    models = {"plain": plain, "edgekit": strided.content, "edgekit-deinterleave": deinterleaved.content,
              "edgekit-int8": quantize_int8(strided, module, recipe=None, feeds=noise).content,
              "edgekit-deinterleave-int8": quantize_int8(deinterleaved, module, recipe=None, feeds=noise).content}
    return models, {v: v != "plain" for v in VARIANTS}, source.module, x


def make_runner(content: bytes, threads: int, x: np.ndarray) -> Any:
    """An interpreter with its input set: ``invoke()`` is all a timed call does."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=threads)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    return interpreter


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity, flattened in float64."""
    x, y = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def measure(name: str, runs: int) -> dict[str, Any]:
    """Op counts, cosines and interleaved latency of the three conversions of ``name``."""
    models, nhwc, module, x = convert_all(name)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    inputs = {v: np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if nhwc[v] else x for v in VARIANTS}
    row: dict[str, Any] = {"model": name, "input": [1, 3, *SIZE], "ops": {}, "cosine": {}, "size_bytes": {},
                           "xnnpack_partitions": {}, "latency_ms": {}}
    for v in VARIANTS:
        row["ops"][v] = tflite_op_counts(models[v])
        row["size_bytes"][v] = len(models[v])
        runner = make_runner(models[v], 1, inputs[v])
        row["xnnpack_partitions"][v] = sum(op["op_name"] == "DELEGATE" for op in runner._get_ops_details())
        runner.invoke()
        if v in FLOAT_VARIANTS:
            row["cosine"][v] = round(cosine(runner.get_tensor(runner.get_output_details()[0]["index"]), expected), 7)
    for threads in THREADS:
        runners = {v: make_runner(models[v], threads, inputs[v]) for v in VARIANTS}
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for i in range(WARMUP + runs):
            for v in VARIANTS:
                start = time.perf_counter()
                runners[v].invoke()
                if i >= WARMUP:
                    times[v].append((time.perf_counter() - start) * 1e3)
        row["latency_ms"][str(threads)] = {v: round(statistics.median(t), 3) for v, t in times.items()}
    return row


def shuffle_ops(ops: dict[str, int]) -> str:
    """The ops a channel shuffle / split turns into, as ``TRANSPOSE 50, RESHAPE 32, SLICE 26``."""
    keys = ("TRANSPOSE", "RESHAPE", "SLICE", "STRIDED_SLICE", "GATHER")
    return ", ".join(f"{k} {ops[k]}" for k in keys if ops.get(k)) or "none"


def write_markdown(report: dict[str, Any], path: Path) -> None:
    """The report as a table for people."""
    cpu = report["cpu"]
    lines = [
        "# TFLite: edgekit's conversion vs plain litert-torch (shuffle nets)", "",
        f"Generated by `benchmarks/tflite_shuffle.py` on {report['created']}. CPU: {cpu['model']} "
        f"({cpu['cores']} logical CPUs). LiteRT interpreter (ai-edge-litert {report['toolchain']['ai-edge-litert']}, "
        f"XNNPACK), litert-torch {report['toolchain']['litert-torch']}; batch 1, 224x224, seeded weights; median of "
        f"{report['runs']} invokes after {WARMUP} warm-up rounds, the variants interleaved call by call. The machine "
        f"was shared (1-minute load average {report['load_average']['before'][0]} before, "
        f"{report['load_average']['after'][0]} after, on {cpu['cores']} CPUs): compare columns of one row.", "",
        "`plain`: litert-torch on the PyTorch module as written (NCHW input). `edgekit`: what `tflite-fp32` "
        "writes: the optimized ONNX (BN folded, shuffles relabelled into weights and even/odd channel reads), "
        "image input NHWC; the reads are stride-2 STRIDED_SLICEs, which XNNPACK does not delegate. "
        "`edgekit-deinterleave`: the same with `channel_reads=\"deinterleave\"` (one RESHAPE -> TRANSPOSE -> "
        "RESHAPE per unit, then contiguous SLICEs; all delegated). The `int8` columns are both edgekit forms "
        "quantized (running min/max over 8 noise images: for latency only).", "",
        "| model | threads | plain ms | edgekit ms | edgekit-deinterleave ms | edgekit / plain | "
        "deinterleave / plain | edgekit int8 ms | deinterleave int8 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["results"]:
        for threads, ms in row["latency_ms"].items():
            lines.append(f"| {row['model']} | {threads} | {ms['plain']:.2f} | {ms['edgekit']:.2f} | "
                         f"{ms['edgekit-deinterleave']:.2f} | {ms['edgekit'] / ms['plain']:.3f} | "
                         f"{ms['edgekit-deinterleave'] / ms['plain']:.3f} | {ms['edgekit-int8']:.2f} | "
                         f"{ms['edgekit-deinterleave-int8']:.2f} |")
    lines += ["", "| model | variant | ops (total) | shuffle-related ops | XNNPACK partitions | cosine vs PyTorch | "
              "size MB |", "|---|---|---:|---|---:|---:|---:|"]
    for row in report["results"]:
        for v in VARIANTS:
            ops = row["ops"][v]
            cos = f"{row['cosine'][v]:.7f}" if v in row["cosine"] else "-"
            lines.append(f"| {row['model']} | {v} | {sum(ops.values())} | {shuffle_ops(ops)} | "
                         f"{row['xnnpack_partitions'][v]} | {cos} | {row['size_bytes'][v] / 1e6:.2f} |")
    lines.append("")
    path.write_text("\n".join(lines))


def main() -> None:
    """Measure, then write the JSON and Markdown reports."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "tflite_shuffle.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    results = [measure(name, args.runs) for name in MODELS]
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_description(), "runs": args.runs, "warmup": WARMUP,
        "toolchain": {p: metadata.version(p) for p in ("litert-torch", "ai-edge-litert", "torch")},
        "load_average": {"before": [round(v, 2) for v in load_before],
                         "after": [round(v, 2) for v in os.getloadavg()], "cores": os.cpu_count()},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    write_markdown(report, args.out.with_suffix(".md"))


if __name__ == "__main__":
    main()
