"""What edgekit's graph passes buy: node counts and CPU latency of three graphs per model.

(a) the raw ``torch.onnx.export`` graph (opset 17, constant folding on), (b) the same graph
after onnxsim alone, (c) after ``edgekit.graph.optimize``. Each graph runs on onnxruntime
CPU (2 intra-op threads) and on OpenVINO CPU (2 threads, ``INFERENCE_PRECISION_HINT=f32`` so
no bf16 on CPUs that have it); the six (graph, runtime) pairs are timed in the same run,
interleaved call by call, so machine load hits them alike. Writes docs/benchmarks/graph_passes.json
and graph_passes.md.

    python benchmarks/graph_passes.py            # ~3-5 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
import torch
from onnxsim import simplify
from torch import nn

from edgekit.api import toolchain_versions
from edgekit.graph import optimize
from edgekit.models import get_model, get_spec
from edgekit.onnx_export import torch_to_onnx

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks"
THREADS = 2
OV_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": THREADS, "PERFORMANCE_HINT": "LATENCY"}
SHOWN_OPS = ("Conv", "BatchNormalization", "Constant", "Transpose", "Reshape", "Split", "Slice", "Concat", "Gather")
# OpenVINO CPU layers that show how a channel shuffle was compiled (runtime model layer types).
OV_LAYERS = ("ShuffleChannels", "StridedSlice", "Split", "Transpose", "Reshape", "Reorder")
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile")


class Stage1(nn.Module):
    """A detector's first stage (backbone, CEM, RPN, SAM) as a module of its own."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.detector.stage1(x)


def _cases() -> list[tuple[str, nn.Module, tuple[int, int], tuple[str, ...]]]:
    cases = [(n, get_model(n), get_spec(n).input_size, ("logits",))
             for n in ("shufflenetv2-1.0", "snet146", "mobilenetv2")]
    detector = get_model("thundernet-snet146")
    if hasattr(detector, "stage1"):
        cases.append(("thundernet-snet146 stage 1", Stage1(detector).eval(), get_spec("thundernet-snet146").input_size,
                      ("rpn_logits", "rpn_deltas", "sam")))
    return cases


def cpu_info() -> dict[str, object]:
    """CPU model and the ISA extensions that change int8/fp32 kernels, from /proc/cpuinfo."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                 platform.processor())
    flags = next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")), set())
    return {"model": model, "logical_cpus": text.count("processor\t:"), "isa": {f: f in flags for f in ISA_FLAGS}}


Runner = Callable[[np.ndarray], list[np.ndarray]]


def _ort_runner(model: onnx.ModelProto, name: str) -> Runner:
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {name: x})


def _ov_runner(model: onnx.ModelProto, path: Path) -> tuple[Runner, str, dict[str, int]]:
    onnx.save_model(model, path)
    compiled = ov.Core().compile_model(str(path), "CPU", OV_CONFIG)
    request = compiled.create_infer_request()
    hint = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # read back: what OpenVINO will use
    layers = Counter(op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ops())

    def run(x: np.ndarray) -> list[np.ndarray]:
        result = request.infer({0: x})
        return [result[o] for o in compiled.outputs]

    return run, hint, {layer: layers.get(layer, 0) for layer in OV_LAYERS}


def _ops(model: onnx.ModelProto) -> dict[str, int]:
    counts = Counter(n.op_type for n in model.graph.node)
    return {op: counts.get(op, 0) for op in SHOWN_OPS}


def bench_model(name: str, module: nn.Module, size: tuple[int, int], outputs: tuple[str, ...], runs: int,
                workdir: Path) -> dict[str, object]:
    """Export, simplify, optimize one model, then time the three graphs interleaved."""
    example = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    raw = torch_to_onnx(module, example, output_names=outputs)
    t0 = time.perf_counter()
    sim, ok = simplify(raw)
    sim_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours, records = optimize(raw)
    ours_s = time.perf_counter() - t0
    graphs = {"raw": raw, "onnxsim": sim, "edgekit": ours}
    x = example.numpy()
    runners: dict[tuple[str, str], Runner] = {}
    hint = ""
    ov_layers = {}
    for variant, graph in graphs.items():
        runners[(variant, "onnxruntime")] = _ort_runner(graph, "images")
        runners[(variant, "openvino")], hint, ov_layers[variant] = _ov_runner(graph, workdir / f"{variant}.onnx")
    reference = runners[("raw", "onnxruntime")](x)
    max_err = {f"{v}/{rt}": max(float(np.abs(a - b).max()) for a, b in zip(run(x), reference, strict=True))
               for (v, rt), run in runners.items()}
    times: dict[tuple[str, str], list[float]] = {key: [] for key in runners}
    for run in runners.values():  # warm-up
        for _ in range(3):
            run(x)
    # Round robin, one run of each graph in turn, so a burst of load from other jobs on a
    # shared machine lands on all six alike instead of on one block.
    for _ in range(runs):
        for key, run in runners.items():
            t0 = time.perf_counter()
            run(x)
            times[key].append((time.perf_counter() - t0) * 1e3)
    variants = {}
    for variant, graph in graphs.items():
        variants[variant] = {
            "nodes": len(graph.graph.node),
            "ops": _ops(graph),
            "openvino_layers": ov_layers[variant],
            "latency_ms": {rt: round(statistics.median(times[(variant, rt)]), 4) for rt in ("onnxruntime", "openvino")},
            "p90_ms": {rt: round(float(np.percentile(times[(variant, rt)], 90)), 4)
                       for rt in ("onnxruntime", "openvino")},
        }
    ratio = {
        "nodes": round(variants["edgekit"]["nodes"] / variants["onnxsim"]["nodes"], 4),
        **{f"latency_{rt}": round(variants["edgekit"]["latency_ms"][rt] / variants["onnxsim"]["latency_ms"][rt], 4)
           for rt in ("onnxruntime", "openvino")},
    }
    return {"model": name, "input": [1, 3, *size], "variants": variants, "edgekit_over_onnxsim": ratio,
            "onnxsim_ok": bool(ok), "transform_s": {"onnxsim": round(sim_s, 3), "edgekit": round(ours_s, 3)},
            "max_abs_err_vs_raw_ort": max_err, "openvino_precision_hint": hint,
            "edgekit_passes": [r.to_dict() for r in records]}


def to_markdown(report: dict[str, object]) -> str:
    """The human-readable table of a report."""
    cpu = report["cpu"]
    isa = ", ".join(f for f, on in cpu["isa"].items() if on) or "none of " + ", ".join(ISA_FLAGS)
    lines = [
        "# Graph passes: raw export vs onnxsim vs edgekit",
        "",
        f"Generated by `benchmarks/graph_passes.py` on {report['created']}. CPU: {cpu['model']} "
        f"({cpu['logical_cpus']} logical CPUs; {isa}). Median latency of batch 1, {THREADS} threads: onnxruntime "
        f"CPU EP (intra-op {THREADS}), OpenVINO CPU (`INFERENCE_PRECISION_HINT={report['openvino_precision_hint']}`, "
        f"{THREADS} threads, latency hint); {report['runs']} runs per graph and runtime, "
        "interleaved call by call. The machine was shared with other jobs: compare rows of one table, not runs.",
        "",
        "The TorchScript exporter already folds a BatchNormalization that follows a Conv in eval mode, so the raw "
        "graphs have none; `fold_batchnorm` handles the rest (BN after Concat, BN without a conv). Node counts "
        "include Constant nodes, which onnxsim and edgekit's cleanup both fold into initializers. \"OpenVINO layers\" "
        "are layer types of OpenVINO's compiled CPU model: how it executed the channel shuffles.",
        "",
        f"Toolchain: {', '.join(f'{k} {v}' for k, v in report['toolchain'].items())}.",
        "",
    ]
    for row in report["models"]:
        lines += [f"## {row['model']} ({'x'.join(map(str, row['input']))})", "",
                  "| graph | nodes | " + " | ".join(SHOWN_OPS) + " | onnxruntime ms | OpenVINO ms | OpenVINO layers |",
                  "|---|" + "---:|" * (len(SHOWN_OPS) + 3) + "---|"]
        for variant, v in row["variants"].items():
            ops = " | ".join(str(v["ops"][op]) for op in SHOWN_OPS)
            layers = ", ".join(f"{n} {k}" for k, n in v["openvino_layers"].items() if n) or "-"
            lines.append(f"| {variant} | {v['nodes']} | {ops} | {v['latency_ms']['onnxruntime']:.3f} | "
                         f"{v['latency_ms']['openvino']:.3f} | {layers} |")
        r = row["edgekit_over_onnxsim"]
        lines += ["", f"edgekit / onnxsim: nodes {r['nodes']:.3f}, onnxruntime latency {r['latency_onnxruntime']:.3f}, "
                  f"OpenVINO latency {r['latency_openvino']:.3f}. Largest output difference vs the raw graph on "
                  f"onnxruntime: {max(row['max_abs_err_vs_raw_ort'].values()):.2e}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=150, help="timed runs per graph and runtime (interleaved)")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for graph_passes.json and .md")
    args = parser.parse_args()
    torch.manual_seed(0)
    workdir = args.out / ".graph_passes_tmp"
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for name, module, size, outputs in _cases():
            rows.append(bench_model(name, module, size, outputs, args.runs, workdir))
            print(f"{name}: edgekit/onnxsim {rows[-1]['edgekit_over_onnxsim']}", flush=True)
    finally:
        for f in workdir.iterdir():
            f.unlink()
        workdir.rmdir()
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_info(), "threads": THREADS, "runs": args.runs,
        "openvino_config": OV_CONFIG, "openvino_precision_hint": rows[0]["openvino_precision_hint"],
        "toolchain": {**toolchain_versions(), "openvino": ov.__version__, "onnxsim": _onnxsim_version()},
        "models": rows,
    }
    (args.out / "graph_passes.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "graph_passes.md").write_text(to_markdown(report) + "\n")


def _onnxsim_version() -> str:
    from importlib.metadata import version

    return version("onnxsim")


if __name__ == "__main__":
    main()
