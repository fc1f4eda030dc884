"""OpenVINO INT8 vs FP32 on this CPU: the ``openvino-int8`` and ``openvino-fp32`` IRs of one graph.

For mobilenetv2, shufflenetv2-1.0 (224x224) and thundernet-snet146's stage 1 (320x320) the
optimized fp32 ONNX is exported by the two targets (int8: the QDQ ONNX of an ``openvino``
profile recipe, read as FakeQuantize) and both IRs run on the CPU plugin, batch 1, 1 and 2
threads, latency hint. The variants are timed in the same run, interleaved call by call, and
the median is reported:

- ``fp32``: fp32 IR with ``INFERENCE_PRECISION_HINT=f32`` (what the runtime sets for fp32);
- ``int8``: int8 IR with the runtime's config for int8 (no hint: the float parts of the graph
  run at the plugin's default precision, bf16 on CPUs with AVX-512 BF16 / AMX);
- for context: ``int8-f32`` (float parts at f32) and ``fp32-default`` (the fp32 IR at the
  plugin's default precision, which is not what edgekit runs).

The recipe is calibrated on 8 seeded random inputs with the minmax observer: latency does not
depend on the scale values. Writes docs/benchmarks/openvino_int8.json and openvino_int8.md.

    python benchmarks/openvino_int8.py            # ~3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import openvino as ov
import torch

from edgekit.api import ExportOptions, get_pipeline, resolve_model, toolchain_versions
from edgekit.calib.calibrate import calibrate
from edgekit.detector_export import detector_to_onnx
from edgekit.exporters.registry import ExportJob, get_target
from edgekit.inputspec import InputSpec, make_input_spec
from edgekit.models import get_spec
from edgekit.runtimes.cpuinfo import cpu_description

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks"
# variant -> (IR, compile config beyond threads and the latency hint)
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "fp32": ("openvino-fp32", {"INFERENCE_PRECISION_HINT": "f32"}),
    "int8": ("openvino-int8", {}),
    "int8-f32": ("openvino-int8", {"INFERENCE_PRECISION_HINT": "f32"}),
    "fp32-default": ("openvino-fp32", {}),
}
CONV_LAYERS = ("Convolution",)


def _graph(name: str) -> tuple[str, onnx.ModelProto, InputSpec]:
    """(role, optimized fp32 graph, input spec) of a classifier or of a detector's stage 1."""
    torch.manual_seed(0)
    spec = get_spec(name)
    if spec.task.value == "detect":
        graphs = detector_to_onnx(spec.build().eval(), spec.input_size)
        return "stage1", graphs.stage1, make_input_spec("detect", spec.input_size)
    opts = ExportOptions()
    source = resolve_model(name, opts)
    input_spec = make_input_spec(source.task, spec.input_size)
    return "model", get_pipeline(source.task)(source, input_spec, opts).graphs["model"], input_spec


def _export(name: str, work: Path) -> tuple[dict[str, Path], np.ndarray, str]:
    role, graph, spec = _graph(name)
    value = graph.graph.input[0]
    shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    feeds = [{value.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(8)]
    recipe = calibrate(graph, feeds, observer="minmax", profile="openvino")
    irs = {}
    for target in ("openvino-fp32", "openvino-int8"):
        out = work / name / target
        out.mkdir(parents=True)
        job = ExportJob(graphs={role: graph}, input_spec=spec, recipes={role: recipe})
        (graph_file,) = get_target(target).export(job, out)
        irs[target] = out / graph_file.path
    return irs, feeds[0][value.name], value.name


def _conv_precisions(compiled: ov.CompiledModel) -> dict[str, int]:
    """Convolution layers of the compiled CPU model by the precision they execute in."""
    counts: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in CONV_LAYERS:
            counts[info["runtimePrecision"].astype(str)] += 1
    return dict(sorted(counts.items()))


def bench_model(name: str, work: Path, threads: int, runs: int, warmup: int) -> dict[str, Any]:
    """Median latency of every variant of ``name`` at ``threads``, interleaved call by call."""
    irs, x, input_name = _export(name, work / str(threads))
    core = ov.Core()
    requests, precisions = {}, {}
    for variant, (target, config) in VARIANTS.items():
        compiled = core.compile_model(str(irs[target]), "CPU", {**config, "INFERENCE_NUM_THREADS": threads,
                                                                "PERFORMANCE_HINT": "LATENCY"})
        precisions[variant] = _conv_precisions(compiled)
        requests[variant] = compiled.create_infer_request()
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for i in range(warmup + runs):
        for variant, request in requests.items():
            start = time.perf_counter()
            request.infer({input_name: x})
            if i >= warmup:
                times[variant].append((time.perf_counter() - start) * 1e3)
    latency = {v: round(statistics.median(t), 3) for v, t in times.items()}
    return {"model": name, "input": list(x.shape), "threads": threads, "latency_ms": latency,
            "int8_over_fp32": round(latency["int8"] / latency["fp32"], 3), "conv_precisions": precisions}


def write_markdown(report: dict[str, Any], path: Path) -> None:
    """The tables of ``report`` as Markdown."""
    cpu = report["cpu"]
    lines = [
        "# OpenVINO INT8 vs FP32",
        "",
        f"Generated by `benchmarks/openvino_int8.py` on {report['generated']}. CPU: {cpu['model']} "
        f"({cpu['cores']} logical CPUs; {', '.join(cpu['isa'])}). OpenVINO {report['toolchain'].get('openvino')}, "
        f"CPU plugin, batch 1, latency hint; median of {report['runs']} runs after {report['warmup']} warm-up, the "
        "variants interleaved call by call. The machine was shared with other jobs (1-minute load average "
        f"{report['load_average_1min'][0]} before, {report['load_average_1min'][1]} after, on "
        f"{cpu['cores']} CPUs): compare the columns of one row, not rows or runs.",
        "",
        "`fp32`: fp32 IR at `INFERENCE_PRECISION_HINT=f32` (the runtime's setting for fp32). `int8`: the "
        "openvino-int8 IR (recipe QDQ ONNX read as FakeQuantize) with the runtime's int8 config (no hint; the float "
        "parts run at the plugin default). `int8-f32` and `fp32-default` are for context: the int8 IR with its float "
        "parts at f32, and the fp32 IR at the plugin's default precision (bf16 on this CPU), which edgekit does "
        "not use.",
        "",
        "| model | input | threads | fp32 ms | int8 ms | int8 / fp32 | int8-f32 ms | fp32-default ms | "
        "convs (fp32) | convs (int8) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in report["results"]:
        lat, conv = r["latency_ms"], r["conv_precisions"]
        lines.append(
            f"| {r['model']} | {'x'.join(map(str, r['input']))} | {r['threads']} | {lat['fp32']:.2f} | "
            f"{lat['int8']:.2f} | {r['int8_over_fp32']:.3f} | {lat['int8-f32']:.2f} | {lat['fp32-default']:.2f} | "
            f"{_fmt(conv['fp32'])} | {_fmt(conv['int8'])} |")
    faster = all(r["int8_over_fp32"] < 1.0 for r in report["results"])
    lines += ["", f"INT8 faster than FP32 for every model and thread count: **{'yes' if faster else 'no'}** "
              f"(int8 / fp32 from {min(r['int8_over_fp32'] for r in report['results']):.3f} to "
              f"{max(r['int8_over_fp32'] for r in report['results']):.3f}).", ""]
    path.write_text("\n".join(lines))


def _fmt(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {p}" for p, n in counts.items())


def main() -> None:
    """Run the benchmark and write the JSON and Markdown reports."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mobilenetv2", "shufflenetv2-1.0", "thundernet-snet146"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        results = [bench_model(name, Path(tmp), threads, args.runs, args.warmup)
                   for name in args.models for threads in args.threads]
    report = {"generated": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_description(),
              "toolchain": {**toolchain_versions(), "openvino": ov.get_version()}, "runs": args.runs,
              "warmup": args.warmup, "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
              "variants": {v: {"ir": t, "config": c} for v, (t, c) in VARIANTS.items()},
              "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "openvino_int8.json").write_text(json.dumps(report, indent=1) + "\n")
    write_markdown(report, args.out / "openvino_int8.md")


if __name__ == "__main__":
    main()
