"""Which zoo model converts to which target: every registered model x every registered target.

For each cell it exports the model with seeded random weights (``torch.manual_seed(0)``, the
zoo's own initialisation, no training) through ``edgekit.export`` and records:

- converted: whether ``edgekit.export`` wrote the bundle;
- cosine: each graph the bundle's pipeline runs, loaded by the SDK backend that reads it
  (``.onnx``: onnxruntime, ``.xml``: OpenVINO CPU, ``.tflite``: LiteRT), against the fp32
  PyTorch module it was traced from, on the same fixed input; the cell shows the lowest cosine
  over all graph outputs. The input is one synthetic image (``edgekit.data.synthesize``, seed
  1, not a calibration image) through the bundle's own pre-processing. Classifiers and
  segmenters: the one ``model`` graph vs ``module(x)``. Two-stage detectors: ``stage1`` (rpn
  logits, rpn deltas, features) vs ``TwoStageDetector.stage1(x)``, and ``head`` (class logits,
  box deltas) vs ``TwoStageDetector.head(pooled)``, where ``pooled`` is the numpy glue's PSRoI
  align of PyTorch's own stage-1 proposals, so both see identical RoIs. The optional
  ``single`` graph (RoiAlign + NMS inside) is not compared: with random weights its top-k and
  NMS choices flip on tiny differences, which says nothing about the conversion;
- size: bytes on disk of the graph files the pipeline runs (the manifest's ``model``, or
  ``stage1`` + ``head``, with an OpenVINO ``.xml``'s ``.bin``); not a detector's ``single``
  graph (written by some targets only; its size is in the JSON) nor the ``*.fp32.onnx``
  references INT8 bundles carry;
- on failure: the stage (export, load or run), the exception class and message, and the op
  type the message (or an exception it wraps) names, else ``unknown``.

``trt-fp16`` and ``trt-int8`` bundles hold ONNX (fp32, and Q/DQ ONNX placed by TensorRT's
rules) from which the board builds its engine; TensorRT cannot run on this machine, so their
graphs run in onnxruntime here: ``trt-fp16``'s cosine is that of the fp32 graph (FP16 is
TensorRT's choice at build time), ``trt-int8``'s that of its Q/DQ graph on onnxruntime's CPU
kernels, not of a TensorRT engine.

INT8 targets calibrate on 8 synthetic images of the model's task (``synthesize(task, 8,
seed=0)``, ``calib_samples=8``): ranges from shapes on plain backgrounds, enough to show a
conversion works and how close the integer graph stays, not what accuracy a trained model keeps.

Input size: the model's registered ``input_size``, except above 512x512 pixels, where both
sides are halved until it fits (Cityscapes segmenters 1024x2048 -> 256x512, DFANet
1024x1024 -> 512x512): halving keeps every stride that divided the registered size. The size
used is in the table.

Each cell runs in its own subprocess with a timeout, so one crash or hang costs one cell; the
results go to ``docs/benchmarks/conversion_matrix.json`` after every cell (``--resume`` skips
the cells there) and the table to ``docs/targets.md``.

    nice -n 19 env OMP_NUM_THREADS=1 python benchmarks/conversion_matrix.py                # ~1-2 hours
    python benchmarks/conversion_matrix.py --models mobilenetv2 thundernet-snet49 --resume
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[1]
OUT_JSON = ROOT / "docs" / "benchmarks" / "conversion_matrix.json"
OUT_MD = ROOT / "docs" / "targets.md"
WORKDIR = Path("/tmp/edgekit-conversion-matrix")
SEED = 0
PROBE_SEED = 1
CALIB_SAMPLES = 8
MAX_PIXELS = 512 * 512
TIMEOUT_S = 300
LOW_COSINE = 0.99  # cells below it are listed with every output's cosine
PACKAGES = ("torch", "onnx", "onnxruntime", "openvino", "ai-edge-litert", "litert-torch", "ai-edge-quantizer", "numpy")
# Graph file suffix -> the SDK backend that runs it here (TensorRT's ONNX runs in onnxruntime).
BACKEND_BY_SUFFIX = {".onnx": "onnxruntime", ".xml": "openvino", ".tflite": "litert"}
# Files that belong to a graph file without being listed in the manifest.
SIDECARS = {".xml": (".bin",)}
# Model task -> edgekit.data.synthesize's task name.
SYNTH_TASK = {"classify": "cls", "detect": "det", "segment": "seg"}
# Roles compared against PyTorch and counted in the size; "single" (a detector with RoiAlign + NMS
# inside, written by some targets only) is not.
COMPARED_ROLES = ("model", "stage1", "head")


def export_size(registered: tuple[int, int]) -> tuple[int, int]:
    """The registered input size, halved on both sides until it has at most MAX_PIXELS pixels."""
    h, w = registered
    while h * w > MAX_PIXELS and h % 2 == 0 and w % 2 == 0:
        h, w = h // 2, w // 2
    return h, w


# --------------------------------------------------------------------------- one cell (child process)

def cosine(a: Any, b: Any) -> float:
    """Cosine similarity of two arrays, flattened in float64 (1.0 when both are all zero)."""
    import numpy as np

    x, y = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    norm = float(np.linalg.norm(x) * np.linalg.norm(y))
    if norm == 0.0:
        return 1.0 if not x.any() and not y.any() else 0.0
    return float(x @ y / norm)


def _onnx_op_types() -> frozenset[str]:
    import onnx

    return frozenset(s.name for s in onnx.defs.get_all_schemas_with_history())


# How messages name an op, most specific first: a torch or MLIR op (litert-torch lowering,
# ``aten.grid_sampler_2d``, ``tfl.resize_bilinear``), an op after the word op / operator /
# operation (ONNX types, TFLite builtins such as RESIZE_BILINEAR), an ONNX op type quoted or with
# its opset version (``'Einsum'``, ``ConvInteger(10)``). Node names (``'Resize_12'``) are not types.
DIALECT_OP = re.compile(r"\b((?:aten|prims|tfl|tf|stablehlo|mhlo|chlo)(?:::|\.)[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?)")
NAMED_OP = re.compile(r"\b(?:op|operator|operation|builtin(?: code)?)(?:[ _]?types?)?s?\b\s*[:=]?\s*"
                      r"['\"`(\[]?([A-Za-z][A-Za-z0-9_]*)", re.I)
MARKED_OP = re.compile(r"['\"`]([A-Z][A-Za-z0-9]*)['\"`]|\b([A-Z][A-Za-z0-9]*)\(\d+\)")
# Words NAMED_OP may catch that are not ops ("op type is ...", "node with name ...").
NOT_OPS = frozenset({"type", "types", "the", "a", "an", "is", "not", "in", "of", "for", "set", "version", "with",
                     "and", "name", "named", "that", "which", "at", "on", "to", "from", "was", "has", "kind"})


def exception_messages(exc: BaseException | None) -> list[str]:
    """``Class: message`` of ``exc`` and of the exceptions it wraps (cause / context), outermost first."""
    messages, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        messages.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return messages


def find_op(messages: list[str]) -> str:
    """The op type the messages name (a torch op, an ONNX op type, a TFLite builtin); else ``unknown``."""
    onnx_ops = _onnx_op_types()
    for text in messages:
        text = text.split(": ", 1)[-1]  # the exception class is not an op
        if match := DIALECT_OP.search(text):
            return match.group(1)
        for word in NAMED_OP.findall(text):
            if word.lower() not in NOT_OPS and (word in onnx_ops or word.isupper()):
                return word
        for quoted, versioned in MARKED_OP.findall(text):
            if (quoted or versioned) in onnx_ops:
                return quoted or versioned
        words = [w for w in re.findall(r"\b[A-Z][a-z]+[A-Z][A-Za-z]*\b", text) if w in onnx_ops]
        if words:  # CamelCase ONNX op types (GridSample, ConvTranspose): rarely plain English
            return words[0]
    return "unknown"


def failure(stage: str, exc: BaseException) -> dict[str, Any]:
    """A failed cell: stage, exception class and message, the op it names, the traceback's last frames."""
    messages = exception_messages(exc)
    return {"stage": stage, "error": type(exc).__name__, "message": " ".join(str(exc).split())[:2000],
            "causes": [" ".join(m.split())[:1000] for m in messages[1:]], "op": find_op(messages),
            "traceback": traceback.format_exception(exc)[-3:]}


def cached_weights(name: str, workdir: Path) -> Path:
    """Seeded random weights of zoo model ``name`` as a state dict file (written once per workdir)."""
    import torch

    from edgekit.models import get_spec

    path = workdir / "weights" / f"{name}.pt"
    if not path.exists():
        torch.manual_seed(SEED)
        module = get_spec(name).build()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(module.state_dict(), tmp)
        tmp.replace(path)
    return path


def cached_images(task: str, n: int, seed: int, side: int, workdir: Path) -> Path:
    """A synthetic image set of ``task`` (written once per workdir)."""
    from edgekit.data import synthesize

    path = workdir / "data" / f"{SYNTH_TASK[task]}-n{n}-s{seed}-{side}"
    if not path.exists():
        synthesize(SYNTH_TASK[task], n, seed, path, imgsz=side)
    return path


def probe_input(manifest: Any, workdir: Path) -> Any:
    """The fixed input: one synthetic image (not a calibration image) through the bundle's pre-processing."""
    from edgekit.data import open_dataset
    from edgekit.data.transforms import Preprocess

    side = max(manifest.input.imgsz)
    dataset = open_dataset(cached_images(manifest.task, 1, PROBE_SEED, side, workdir))
    image = next(iter(dataset)).image
    x, _ = Preprocess.from_input_spec(manifest.input)(image)
    return x


def torch_references(model: str, weights: Path, manifest: Any, x: Any) -> dict[str, tuple[dict[str, Any], list[Any]]]:
    """Role -> (feeds, PyTorch outputs in the graph's output order) for every compared role of the bundle."""
    import numpy as np
    import torch

    from edgekit.detector_export import Head, Stage1
    from edgekit.models.detection import TwoStageDetector
    from edgekit.models import get_spec
    from edgekit.models.weights import load_weights
    from edgekit.runtimes.twostage import TwoStageParams, proposals, ps_roi_align

    module = load_weights(get_spec(model).build(), weights).eval()
    roles = {g.role for g in manifest.graphs}
    image = manifest.input.name
    with torch.no_grad():
        if "model" in roles:
            return {"model": ({image: x}, [module(torch.from_numpy(x)).numpy()])}
        detector = cast(TwoStageDetector, module)  # a bundle without a "model" graph is a two-stage detector's
        stage1 = [t.numpy() for t in Stage1(detector)(torch.from_numpy(x))]
        params = TwoStageParams.from_dict(manifest.postprocess.params)
        (rois,) = proposals(stage1[0], stage1[1], params, (x.shape[2], x.shape[3]))
        rois = np.concatenate((np.zeros((len(rois), 1), np.float32), rois), axis=1)
        head_input = manifest.graph("head").inputs[0]
        if isinstance(head_input.shape[0], int):  # a fixed RoI count: repeat or cut the RoIs to it
            rois = np.resize(rois, (head_input.shape[0], 5))
        pooled = ps_roi_align(stage1[2], rois, params.pooled_size, params.spatial_scale, params.sampling_ratio,
                              params.aligned).astype(np.float32)
        head = [t.numpy() for t in Head(detector)(torch.from_numpy(pooled))]
    return {"stage1": ({image: x}, stage1), "head": ({head_input.name: pooled}, head)}


def deployed_files(bundle: Path, manifest: Any) -> dict[str, dict[str, int]]:
    """Role -> graph file -> bytes, for the graphs the bundle deploys (fp32 references excluded) and their sidecars."""
    from edgekit.quantize import REFERENCE_SUFFIX

    files: dict[str, dict[str, int]] = {}
    for g in manifest.graphs:
        if g.role.endswith(REFERENCE_SUFFIX):
            continue
        path = bundle / g.path
        for p in (path, *(path.with_suffix(s) for s in SIDECARS.get(path.suffix, ()))):
            if p.exists():
                files.setdefault(g.role, {})[p.name] = p.stat().st_size
    return files


def run_cell(model: str, target: str, imgsz: tuple[int, int], workdir: Path) -> dict[str, Any]:
    """Export ``model`` for ``target`` at ``imgsz``, run its graphs, compare with PyTorch."""
    import edgekit
    from edgekit.bundle import read_manifest
    from edgekit.exporters.registry import get_spec as target_spec
    from edgekit.models import get_spec
    from edgekit.runtimes.backends import create_backend

    task = get_spec(model).task.value
    bundle = workdir / "bundles" / f"{model}__{target}"
    cell: dict[str, Any] = {"model": model, "target": target, "imgsz": list(imgsz), "converted": False}
    start = time.perf_counter()
    try:
        weights = cached_weights(model, workdir)
        options: dict[str, Any] = {}
        if target_spec(target).quant_profile is not None:
            options = {"calib_data": str(cached_images(task, CALIB_SAMPLES, SEED, max(imgsz), workdir)),
                       "calib_samples": CALIB_SAMPLES}
        edgekit.export(model, out=bundle, target=target, weights=weights, imgsz=imgsz, **options)
    except Exception as exc:
        cell["failure"] = failure("export", exc)
        cell["export_s"] = cell["total_s"] = round(time.perf_counter() - start, 1)
        return cell
    cell["converted"] = True
    cell["export_s"] = round(time.perf_counter() - start, 1)
    manifest = read_manifest(bundle)
    cell["files"] = deployed_files(bundle, manifest)
    cell["size_bytes"] = sum(n for role in COMPARED_ROLES for n in cell["files"].get(role, {}).values())
    cell["roles"] = [g.role for g in manifest.graphs]
    stage = "reference"
    try:
        x = probe_input(manifest, workdir)
        references = torch_references(model, weights, manifest, x)
        cosines, backends = {}, {}
        for role, (feeds, expected) in references.items():
            graph = manifest.graph(role)
            backend_name = BACKEND_BY_SUFFIX[Path(graph.path).suffix]
            stage = f"load {role}"
            backend = create_backend(backend_name, bundle / graph.path, graph, threads=1,
                                     toolchain=manifest.toolchain)
            stage = f"run {role}"
            outputs = backend.run(feeds)
            backends[role] = f"{backend_name} ({graph.path}, {graph.precision})"
            for spec, want in zip(graph.outputs, expected):
                cosines[f"{role}/{spec.name}"] = round(cosine(outputs[spec.name], want), 7)
                if not outputs[spec.name].any():
                    cell.setdefault("zero_outputs", []).append(f"{role}/{spec.name}")
        cell["backends"] = backends
        cell["cosines"] = cosines
        cell["cosine"] = min(cosines.values())
    except Exception as exc:
        cell["failure"] = failure(stage, exc)
    finally:
        shutil.rmtree(bundle, ignore_errors=True)
    cell["total_s"] = round(time.perf_counter() - start, 1)
    return cell


# --------------------------------------------------------------------------- the matrix (parent process)

def spawn_cell(model: str, target: str, imgsz: tuple[int, int], workdir: Path, timeout_s: float) -> dict[str, Any]:
    """Run one cell in a child process; a timeout or a crash becomes a failed cell."""
    result = workdir / "cell.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--cell", model, target, "--imgsz", *map(str, imgsz),
           "--workdir", str(workdir)]
    start = time.perf_counter()
    # Own session: a timeout kills the child and anything it started (converters), and only those.
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, text=True)
    try:
        _, stderr = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        return {"model": model, "target": target, "imgsz": list(imgsz), "converted": False,
                "failure": {"stage": "timeout", "error": "Timeout", "op": "unknown",
                            "message": f"no result after {timeout_s:.0f} s; the child process was killed"},
                "total_s": round(time.perf_counter() - start, 1)}
    if result.exists():
        return json.loads(result.read_text())
    tail = " ".join(stderr.strip().splitlines()[-5:])[-1500:]
    cause = f"killed by signal {-child.returncode}" if child.returncode < 0 else f"exit status {child.returncode}"
    return {"model": model, "target": target, "imgsz": list(imgsz), "converted": False,
            "failure": {"stage": "crash", "error": "ProcessDied", "op": find_op([tail]),
                        "message": f"the cell's process died ({cause}) without a result; stderr: {tail}"},
            "total_s": round(time.perf_counter() - start, 1)}


def describe_setup(models: list[str], targets: list[str], timeout_s: float) -> dict[str, Any]:
    """Machine, versions, and the models and targets of the run."""
    from edgekit import __version__
    from edgekit.exporters.registry import get_spec as target_spec
    from edgekit.models import get_spec
    from edgekit.runtimes.cpuinfo import cpu_description

    versions = {"python": sys.version.split()[0], "edgekit": __version__}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {
        "cpu": cpu_description(), "toolchain": versions,
        "settings": {"seed": SEED, "calib_samples": CALIB_SAMPLES, "probe_seed": PROBE_SEED, "timeout_s": timeout_s,
                     "max_pixels": MAX_PIXELS},
        "models": {m: {"task": get_spec(m).task.value, "registered_imgsz": list(get_spec(m).input_size),
                       "imgsz": list(export_size(get_spec(m).input_size))} for m in models},
        "targets": {t: {"precision": target_spec(t).precisions[0].value, "summary": target_spec(t).summary}
                    for t in targets},
    }


def cell_text(cell: dict[str, Any] | None) -> str:
    """One table cell: ``✓ 0.99999 / 4.6 MB``, ``✗ op`` or ``·`` (not run)."""
    if cell is None:
        return "·"
    if not cell["converted"]:
        return f"✗ {cell['failure']['op']}"
    size = f"{cell['size_bytes'] / 1e6:.1f} MB"
    if "failure" in cell:
        return f"✓ ✗ {cell['failure']['stage']}: {cell['failure']['op']} / {size}"
    return f"✓ {cell['cosine']:.5f} / {size}"


def summary_lines(report: dict[str, Any]) -> list[str]:
    """Counts and the lowest cosine per precision."""
    cells = [c for row in report["cells"].values() for c in row.values()]
    total = len(report["models"]) * len(report["targets"])
    converted = sum(c["converted"] for c in cells)
    compared = [c for c in cells if "cosine" in c]
    lines = [f"{converted} of {len(cells)} cells run converted ({total - len(cells)} not run); "
             f"{len(compared)} ran and were compared with PyTorch.", ""]
    by_precision: dict[str, list[dict[str, Any]]] = {}
    for c in compared:
        by_precision.setdefault(report["targets"][c["target"]]["precision"], []).append(c)
    for precision, group in sorted(by_precision.items()):
        worst = min(group, key=lambda c: c["cosine"])
        lines.append(f"- {precision}: lowest cosine {worst['cosine']:.5f} ({worst['model']} on {worst['target']}), "
                     f"over {len(group)} cells.")
    return lines


def write_markdown(report: dict[str, Any], path: Path) -> None:
    """``docs/targets.md``: setup, input sizes, the matrix, then every failure explained."""
    models, targets, cells = sorted(report["models"]), sorted(report["targets"]), report["cells"]
    cpu, tools = report["cpu"], report["toolchain"]
    lines = [
        "# Conversion matrix: zoo models x targets", "",
        f"Generated by `benchmarks/conversion_matrix.py` (last cell {report['updated']}). CPU: {cpu['model']} "
        f"({cpu['cores']} logical CPUs). " + ", ".join(f"{k} {v}" for k, v in tools.items()) + ".", "",
        f"Each model is exported with seeded random weights (`torch.manual_seed({SEED})`, no training). A cell is "
        "`✓ cosine / size` where the export wrote a bundle, `✗ op` where it failed (the op type the error names; "
        "details under Failures), `·` where the cell was not run. **cosine**: the lowest over all outputs of the "
        "graphs the bundle's pipeline runs, each loaded by the SDK backend for its file (ONNX: onnxruntime, "
        "OpenVINO IR: OpenVINO CPU, TFLite: LiteRT), against the fp32 PyTorch module on one fixed synthetic "
        "image through the bundle's pre-processing. Detectors: the `stage1` graph (rpn logits, rpn deltas, "
        "features) and the `head` graph (class logits, box deltas, on the PSRoI-pooled PyTorch proposals); "
        "the `single` graph (RoiAlign + NMS inside) is not compared. **size**: the graph files the pipeline "
        "runs (an OpenVINO `.xml` with its `.bin`), not a detector's `single` graph (written by some targets "
        "only; its size is in the JSON) nor the `*.fp32.onnx` references INT8 bundles carry.", "",
        f"INT8 targets calibrate on {CALIB_SAMPLES} synthetic images of the task (shapes on plain backgrounds): "
        "enough to show the conversion works, not the accuracy a trained model keeps. **TensorRT cannot run on "
        "this machine**: `trt-fp16` and `trt-int8` bundles hold the ONNX the board builds its engine from, run "
        "here in onnxruntime (`trt-fp16`: the fp32 graph, FP16 is chosen by TensorRT at build time; `trt-int8`: "
        "the Q/DQ graph on onnxruntime's CPU kernels).", "",
        "Random weights are not trained weights: with the zoo's default initialisation the activations of some "
        "deep nets shrink to 1e-9 and below in their last layers, where INT8 ranges become degenerate and "
        "converters' corner cases (range floors, int32 bias overflow, rewrites with absolute tolerances) decide "
        f"the result. Cells below {LOW_COSINE} are listed with every output's cosine under their own heading.", "",
        "## Summary", "", *summary_lines(report), "",
        "## Input sizes", "",
        f"The registered size, halved on both sides while above {MAX_PIXELS} pixels (halving keeps every "
        "stride that divided the registered size).", "",
        "| model | task | registered | exported at |", "|---|---|---|---|",
    ]
    for m in models:
        info = report["models"][m]
        lines.append(f"| {m} | {info['task']} | {'x'.join(map(str, info['registered_imgsz']))} | "
                     f"{'x'.join(map(str, info['imgsz']))} |")
    lines += ["", "## Matrix", "", "| model (size) | " + " | ".join(targets) + " |",
              "|---|" + "---|" * len(targets)]
    for m in models:
        size = "x".join(map(str, report["models"][m]["imgsz"]))
        lines.append(f"| {m} ({size}) | " + " | ".join(cell_text(cells.get(m, {}).get(t)) for t in targets) + " |")
    low = [cells[m][t] for m in models for t in targets if cells.get(m, {}).get(t, {}).get("cosine", 1.0) < LOW_COSINE]
    lines += ["", f"## Cosine below {LOW_COSINE}", ""]
    if not low:
        lines.append("None.")
    for c in low:
        zero = f"; all-zero outputs: {', '.join(c['zero_outputs'])}" if c.get("zero_outputs") else ""
        lines.append(f"- **{c['model']} -> {c['target']}**: " + ", ".join(f"{k} {v:.5f}" for k, v in c["cosines"].items())
                     + zero)
    failed = [cells[m][t] for m in models for t in targets if t in cells.get(m, {}) and "failure" in cells[m][t]]
    lines += ["", "## Failures", ""]
    if not failed:
        lines.append("None.")
    for c in failed:
        f = c["failure"]
        lines.append(f"- **{c['model']} -> {c['target']}** ({f['stage']}, op `{f['op']}`): `{f['error']}`: "
                     f"{f['message']}")
        lines += [f"  - caused by: {cause}" for cause in f.get("causes", [])[:2]]
    lines.append("")
    path.write_text("\n".join(lines))


def write_reports(report: dict[str, Any], out: Path, md: Path) -> None:
    """The JSON (atomically, so an interrupted run leaves a readable file) and the Markdown."""
    report["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    tmp.replace(out)
    write_markdown(report, md)


def run_matrix(args: argparse.Namespace) -> None:
    """Every requested cell not already in the JSON (with ``--resume``), in a subprocess each."""
    from edgekit.exporters.registry import list_targets
    from edgekit.models import list_models

    models = args.models or list_models()
    targets = args.targets or list_targets()
    report = json.loads(args.out.read_text()) if args.resume and args.out.exists() else {"cells": {}}
    # The setup of this run; earlier models and targets stay listed so their cells stay in the table.
    setup = describe_setup(models, targets, args.timeout)
    for key in ("models", "targets"):
        setup[key] = {**report.get(key, {}), **setup[key]}
    report.update(setup)
    report.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    for model in models:
        imgsz = tuple(report["models"][model]["imgsz"])
        for target in targets:
            if args.resume and target in report["cells"].get(model, {}):
                continue
            cell = spawn_cell(model, target, imgsz, args.workdir, args.timeout)
            report["cells"].setdefault(model, {})[target] = cell
            write_reports(report, args.out, args.md)
            print(f"{model:22s} {target:14s} {cell_text(cell)}  ({cell.get('total_s', '?')} s)", flush=True)
    write_reports(report, args.out, args.md)  # also after a --resume with nothing left: the Markdown follows the code


def main() -> None:
    """Run the matrix, or (``--cell``, internal) one cell."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", help="zoo models (default: every registered model)")
    parser.add_argument("--targets", nargs="+", help="targets (default: every registered target)")
    parser.add_argument("--resume", action="store_true", help="keep the cells already in --out and skip them")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per cell before it is killed")
    parser.add_argument("--out", type=Path, default=OUT_JSON)
    parser.add_argument("--md", type=Path, default=OUT_MD)
    parser.add_argument("--workdir", type=Path, default=WORKDIR, help="weights, synthetic images, bundles")
    parser.add_argument("--cell", nargs=2, metavar=("MODEL", "TARGET"), help=argparse.SUPPRESS)
    parser.add_argument("--imgsz", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        (model, target), (h, w) = args.cell, args.imgsz
        cell = run_cell(model, target, (h, w), args.workdir)
        (args.workdir / "cell.json").write_text(json.dumps(cell, ensure_ascii=False))
        return
    from edgekit.exporters.registry import get_spec as target_spec
    from edgekit.models import get_spec

    for m in args.models or ():
        get_spec(m)  # an unknown name fails here, listing what exists
    for t in args.targets or ():
        target_spec(t)
    run_matrix(args)


if __name__ == "__main__":
    main()
