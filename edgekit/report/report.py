"""The accuracy-drop report of a quantized bundle: what INT8 cost in accuracy and gained in speed.

``make_report(bundle, options)`` measures, from the bundle alone (its INT8 graphs, its fp32
reference graphs ``<role>.fp32.onnx`` and ``recipe.json``):

- the task metric of both on the evaluation split (disjoint from calibration), and the drop
  in points against the budget: PASS / FAIL (NOT EVALUATED without evaluation data);
- per-layer errors (SQNR, cosine, max abs error) on a few images, worst first;
- latency of both, interleaved in one process, and the speed-up: on one backend where an
  installed one reads both (TFLite bundles: fp32 references on onnxruntime, INT8 on LiteRT,
  and the report says so);
- the CPU's ISA and the profile calibration chose for it, and how many convolutions
  onnxruntime runs as integer kernels;

then writes ``report.json``, ``report.html`` (self-contained) and ``report.png`` into the bundle.
"""

from __future__ import annotations

import json
import types
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgekit import __version__
from edgekit.bundle import Manifest, verify
from edgekit.errors import EdgekitError
from edgekit.splits import EvalSpec, Subset

REPORT_JSON, REPORT_HTML, REPORT_PNG = "report.json", "report.html", "report.png"
REPORT_VERSION = 1
PASS, FAIL, NOT_EVALUATED = "PASS", "FAIL", "NOT EVALUATED"
# Backends the report may run a bundle on, in order of preference (onnxruntime runs QDQ ONNX as is).
BACKEND_PREFERENCE = ("onnxruntime", "openvino", "litert", "tensorrt")


class AccuracyBudgetError(EdgekitError):
    """A quantized model whose accuracy drop exceeds ``--max-drop`` (raised with ``--strict``)."""


@dataclass(frozen=True)
class ReportOptions:
    """What the report measures and how.

    Args:
        evaluation: the evaluation split; None reports speed and per-layer error only.
        max_drop: budget in points of the headline metric (top-1, AP50, mIoU).
        threads: CPU threads per inference for evaluation and timing (None: the engine's).
        latency_runs: timed predictions per variant.
        layer_images: images the per-layer errors are measured on.
        progress: progress bars on the terminal.
    """

    evaluation: EvalSpec | None = None
    max_drop: float = 1.0
    threads: int | None = 1
    latency_runs: int = 20
    layer_images: int = 4
    progress: bool = False


@dataclass(frozen=True)
class Report:
    """One accuracy-drop report (``report.json``); metric values in 0..1, the drop in points."""

    model: str
    task: str
    target: str
    bundle: str
    verdict: str
    max_drop: float
    headline: dict[str, str]
    metrics: dict[str, dict[str, Any]] | None
    drop: float | None
    evaluation: dict[str, Any] | None
    calibration: dict[str, Any]
    latency: dict[str, Any] | None
    integer_convs: dict[str, dict[str, Any]]
    layers: list[dict[str, Any]]
    layer_images: str
    graphs: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    # Mixed precision (edgekit.report.precision): the search's float layers and the bundle's sensitivity table.
    precision: dict[str, Any] = field(default_factory=dict)
    edgekit_version: str = __version__
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    version: int = REPORT_VERSION

    @property
    def passed(self) -> bool:
        """True when the drop is within the budget."""
        return self.verdict == PASS

    def summary(self) -> str:
        """One line: the headline metric, the drop against the budget, the speed-up."""
        text = f"{self.model} {self.target}: {self.verdict}"
        if self.metrics is not None and self.drop is not None:
            key = self.headline["key"]
            fp32, int8 = 100 * self.metrics["fp32"][key], 100 * self.metrics["int8"][key]
            text += f", {key} fp32 {fp32:.2f} -> int8 {int8:.2f} (drop {self.drop:+.2f} pt, budget {self.max_drop:.2f})"
        if self.latency:
            text += f", latency {self.latency['fp32_ms']:.2f} -> {self.latency['int8_ms']:.2f} ms " \
                    f"({self.latency['speedup']:.2f}x)"
        return text

    def enforce(self) -> None:
        """Raise AccuracyBudgetError when the verdict is FAIL."""
        if self.verdict == FAIL:
            raise AccuracyBudgetError(f"{self.summary()}: the drop exceeds --max-drop. "
                                      f"See {self.bundle}/{REPORT_HTML}.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def make_report(bundle: str | Path, options: ReportOptions, *, bundle_name: str | None = None) -> Report:
    """Measure a quantized bundle and write ``report.json``/``.html``/``.png`` into it."""
    report = build_report(bundle, options, bundle_name=bundle_name)
    write_report(report, bundle)
    return report


def build_report(bundle: str | Path, options: ReportOptions, *, bundle_name: str | None = None) -> Report:
    """Measure a quantized bundle (see the module docstring); nothing is written."""
    from edgekit.bundle_eval import HEADLINES, load_task
    from edgekit.quantize import read_recipe_file
    from edgekit.report.latency import compare_latency

    bundle = Path(bundle)
    manifest = verify(bundle)
    recipes, calibration = read_recipe_file(bundle)
    from edgekit.precision.observer_choice import choice_note
    from edgekit.precision.scoring import is_labelled

    dataset = options.evaluation.open() if options.evaluation is not None else None
    headline = asdict(HEADLINES[manifest.task])
    if dataset is not None and not is_labelled(dataset):
        from edgekit.precision.agreement import agreement_headline

        headline = agreement_headline(manifest.task)
    notes = [f"graph '{role}' is not quantized: {why}" for role, why in calibration.get("float_only_roles", {}).items()]
    backends = choose_backends(manifest)
    accuracy = _Accuracy()
    latency = None
    images, layer_source = _probe_images(dataset, calibration, options.layer_images)
    if None in backends.values():
        unread = [g.path for g in manifest.graphs]
        notes.insert(0, f"no installed backend here reads {', '.join(unread)}: accuracy and latency were not "
                        "measured. Run `edgekit report` where one is installed.")
    else:
        tasks = {"fp32": load_task(bundle, reference=True, backend=backends["fp32"], threads=options.threads),
                 "int8": load_task(bundle, backend=backends["int8"], threads=options.threads)}
        backend = _backend_label(backends)
        accuracy = _accuracy(tasks, dataset, manifest, headline["key"], options, backend)
        notes.insert(0, accuracy.note)
        latency = compare_latency(tasks, images[0].image if images else _blank(manifest), runs=options.latency_runs,
                                  backend=backend, threads=options.threads)
        if backends["fp32"] != backends["int8"]:
            notes.append(f"the fp32 reference graphs ran on {backends['fp32']} and the INT8 graphs on "
                         f"{backends['int8']} (no installed backend reads both): the speed-up compares engines "
                         "as well as precisions.")
    layers = _layers(bundle, manifest, recipes, images) if images else []
    if not images:
        notes.append("per-layer errors were not measured: no evaluation or calibration images are available.")
    elif not layers:
        notes.append("per-layer errors were not measured: they need the bundle's INT8 graphs as QDQ ONNX.")
    convs = _integer_convs(bundle, manifest, recipes)
    notes += _speed_notes(latency, calibration, convs)
    notes += choice_note(calibration)
    if accuracy.verdict == FAIL:
        notes.insert(0, _fail_note(accuracy.drop, options.max_drop, headline["key"], layers,
                                   list(recipes), calibration.get("observer", "")))
    from edgekit.report.precision import precision_summary

    precision = precision_summary(bundle, calibration, accuracy.drop)
    notes += precision.pop("notes", [])
    return Report(
        model=manifest.model, task=manifest.task, target=manifest.target, bundle=bundle_name or str(bundle),
        verdict=accuracy.verdict, max_drop=options.max_drop, headline=headline, metrics=accuracy.metrics,
        drop=accuracy.drop, evaluation=accuracy.evaluation, calibration=_calibration_summary(calibration, recipes),
        latency=latency.to_dict() if latency else None, integer_convs=convs,
        layers=[e.to_dict() for e in sorted(layers, key=lambda e: e.sqnr_db)], layer_images=layer_source,
        graphs=[_graph_row(g) for g in manifest.graphs], notes=notes, precision=precision,
    )


@dataclass(frozen=True)
class _Accuracy:
    metrics: dict[str, dict[str, Any]] | None = None
    drop: float | None = None
    verdict: str = NOT_EVALUATED
    evaluation: dict[str, Any] | None = None
    note: str = ""


def _accuracy(tasks: Mapping[str, Any], dataset: Any, manifest: Manifest, key: str, options: ReportOptions,
              backend: str) -> _Accuracy:
    """fp32 and INT8 metrics on the evaluation split, the drop in points and the verdict."""
    from edgekit.bundle_eval import evaluate_task

    if dataset is None or options.evaluation is None:
        return _Accuracy(note="no --eval-data: accuracy was not measured. Run `edgekit report BUNDLE --eval-data "
                              "DIR` with labelled images disjoint from the calibration images.")
    from edgekit.precision.scoring import LABEL_FREE, LABELLED, MODE_DESCRIPTIONS, is_labelled

    mode = LABELLED if is_labelled(dataset) else LABEL_FREE
    if mode == LABELLED:
        _check_classes(manifest, dataset)
        metrics = {v: evaluate_task(tasks[v], dataset, progress=options.progress, label=f"evaluating {v}")
                   for v in ("fp32", "int8")}
    else:
        from edgekit.precision.agreement import agreement_metrics

        metrics = agreement_metrics(tasks, dataset, progress=options.progress)
    evaluation = {**options.evaluation.to_dict(), "images": len(dataset), "backend": backend, "mode": mode}
    note = f"evaluation split: {options.evaluation.description}; {MODE_DESCRIPTIONS[mode]}"
    fp32, int8 = metrics["fp32"][key], metrics["int8"][key]
    if fp32 is None or int8 is None:
        return _Accuracy(metrics, None, NOT_EVALUATED, evaluation, note + f"; {key} is undefined on it")
    drop = round(100.0 * (fp32 - int8), 4)
    return _Accuracy(metrics, drop, PASS if drop <= options.max_drop + 1e-9 else FAIL, evaluation, note)


def regenerate(bundle: str | Path, *, eval_data: str | Path | None = None, max_drop: float | None = None,
               threads: int | None = 1, progress: bool = False) -> Report:
    """Measure a quantized bundle again and rewrite its report (``edgekit report BUNDLE``).

    Args:
        bundle: a bundle written by an INT8 target.
        eval_data: labelled evaluation images; default: the split the current report used.
            The calibration folder is split as at export time; another folder must not hold
            a calibration image (``recipe.json`` lists their hashes).
        max_drop: budget in points; default: the current report's, else 1.0.
        threads: CPU threads per inference.
        progress: progress bars on the terminal.
    """
    from edgekit.quantize import read_recipe_file
    from edgekit.splits import recorded_split

    _, calibration = read_recipe_file(bundle)
    previous = read_report(bundle) or {}
    if eval_data is not None:
        evaluation = recorded_split(eval_data, calibration)
    elif previous.get("evaluation"):
        evaluation = EvalSpec.from_dict(previous["evaluation"])
    else:
        evaluation = None
    budget = max_drop if max_drop is not None else float(previous.get("max_drop", 1.0))
    return make_report(bundle, ReportOptions(evaluation=evaluation, max_drop=budget, threads=threads,
                                             progress=progress))


def write_report(report: Report, bundle: str | Path) -> list[Path]:
    """Write ``report.json``, ``report.html`` and ``report.png`` into ``bundle``."""
    from edgekit.report.html import render_html
    from edgekit.report.plots import summary_png

    bundle = Path(bundle)
    paths = [bundle / REPORT_JSON, bundle / REPORT_HTML, bundle / REPORT_PNG]
    paths[0].write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    paths[1].write_text(render_html(report))
    paths[2].write_bytes(summary_png(report))
    return paths


def read_report(bundle: str | Path) -> dict[str, Any] | None:
    """The ``report.json`` of a bundle as a dict, or None when there is none."""
    path = Path(bundle) / REPORT_JSON
    return json.loads(path.read_text()) if path.is_file() else None


def choose_backends(manifest: Manifest) -> dict[str, str | None]:
    """Backend for the ``fp32`` reference graphs and for the ``int8`` graphs (None: none installed reads them).

    One backend for both where an installed one reads every file (onnxruntime first), so the
    speed-up compares precisions on one engine; otherwise each variant gets the first that reads
    its own files (a TFLite bundle: the ``.fp32.onnx`` references on onnxruntime, the
    ``.tflite`` graphs on LiteRT).
    """
    from edgekit.quantize import REFERENCE_SUFFIX
    from edgekit.runtimes.backends import BACKENDS, installed_backends

    installed = [name for name in BACKEND_PREFERENCE if name in installed_backends()]
    reference = [g.path for g in manifest.graphs if g.role.endswith(REFERENCE_SUFFIX)]
    quantized = [g.path for g in manifest.graphs if not g.role.endswith(REFERENCE_SUFFIX)]

    def first(files: list[str]) -> str | None:
        return next((name for name in installed if all(BACKENDS[name].reads(f) for f in files)), None)

    both = first(reference + quantized)
    return {"fp32": both or first(reference), "int8": both or first(quantized)}


def _backend_label(backends: Mapping[str, str | None]) -> str:
    """``onnxruntime``, or ``onnxruntime (fp32) / litert (int8)`` where the variants ran apart."""
    if backends["fp32"] == backends["int8"]:
        return str(backends["int8"])
    return f"{backends['fp32']} (fp32) / {backends['int8']} (int8)"


def _check_classes(manifest: Manifest, dataset: Any) -> None:
    # Class folders are numbered in sorted folder order: a folder count that differs from the
    # model's classes means the indices do not line up and the metric would be meaningless.
    n = getattr(dataset, "num_classes", 0)
    if manifest.task == "classify" and n and manifest.num_classes and n != manifest.num_classes:
        raise EdgekitError(f"the evaluation data has {n} class folders but the model has {manifest.num_classes} "
                           "classes; evaluate on data with the model's classes (one folder per class).")


def _probe_images(dataset: Any, calibration: Mapping[str, Any], count: int) -> tuple[list[Any], str]:
    """A few samples (``.image``, ``.path``) for per-layer errors and timing, and where they come from."""
    from edgekit.data import load_image

    if dataset is not None and len(dataset):
        subset = Subset(dataset, range(min(count, len(dataset)))) if not isinstance(dataset, Subset) \
            else Subset(dataset.dataset, dataset.indices[:count])
        return list(subset), f"the first {len(subset)} evaluation images"
    root = Path(calibration.get("data", ""))
    paths = [root / f["file"] if root.is_dir() else root for f in calibration.get("files", [])[:count]]
    paths = [p for p in paths if p.is_file()]
    samples = [types.SimpleNamespace(image=load_image(p), path=p) for p in paths]
    return samples, f"{len(samples)} calibration images (no evaluation data)" if samples else "none"


def _graph_row(graph: Any) -> dict[str, Any]:
    return {"role": graph.role, "path": graph.path, "precision": graph.precision, "size_bytes": graph.size_bytes,
            "sha256": graph.sha256}


def _blank(manifest: Manifest) -> Any:
    import numpy as np

    h, w = manifest.input.imgsz
    return np.full((h, w, 3), 128, np.uint8)


def _layers(bundle: Path, manifest: Manifest, recipes: Mapping[str, Any], images: Sequence[Any]) -> list[Any]:
    """Per-layer errors of every role whose INT8 graph is a QDQ ONNX file."""
    import onnx

    from edgekit.data import Preprocess
    from edgekit.quantize import ImageFeeds, reference_role, role_feeds
    from edgekit.report.layers import layer_errors

    spec = manifest.input
    batch = spec.shape[0] if isinstance(spec.shape[0], int) else 1
    feeds = ImageFeeds(images, Preprocess.from_input_spec(spec), spec.name, batch)
    references, errors = {}, []
    for role in recipes:
        quantized, ref = manifest.graph(role), manifest.graph(reference_role(role))
        references[role] = onnx.load(bundle / ref.path)
        if not quantized.path.endswith(".onnx"):
            continue
        model = onnx.load(bundle / quantized.path)
        errors += layer_errors(role, references[role], model,
                               role_feeds(role, model, feeds, references, manifest.postprocess))
    return errors


def _integer_convs(bundle: Path, manifest: Manifest, recipes: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per role: convolutions onnxruntime runs on integers vs in float (QDQ ONNX graphs only)."""
    import onnx

    from edgekit.calib.qdq import count_integer_convs

    out = {}
    for role in recipes:
        graph = manifest.graph(role)
        if graph.path.endswith(".onnx"):
            count = count_integer_convs(onnx.load(bundle / graph.path))
            out[role] = {"integer": count.integer, "float": count.float, "total": count.total}
    return out


def _speed_notes(latency: Any, calibration: Mapping[str, Any], convs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    notes = []
    cpu = calibration.get("cpu_description", "this CPU")
    if latency is not None and not latency.int8_faster:
        notes.append(f"INT8 is not faster than fp32 on this CPU ({cpu}) with {latency.backend}: "
                     f"{latency.int8_ms:.2f} ms vs {latency.fp32_ms:.2f} ms in the graphs ({latency.speedup:.2f}x). "
                     "Quantization still shrinks the files; expect a speed-up only where the backend has fast INT8 "
                     "kernels for these layers. `--target auto-int8` picks the fastest precision that meets the "
                     "budget.")
    for role, count in convs.items():
        if count["float"]:
            notes.append(f"{count['float']} of {count['total']} convolutions of '{role}' stay float in "
                         "onnxruntime's optimized graph.")
    return notes


def _fail_note(drop: float | None, budget: float, key: str, layers: Sequence[Any], roles: Sequence[str],
               observer: str) -> str:
    """What failed and where to look: the first layer in graph order whose SQNR is below 20 dB."""
    from edgekit.report.plots import SQNR_WARN_DB

    text = f"FAIL: the {key} drop of {drop:.2f} pt exceeds the {budget:.2f} pt budget."
    ordered = sorted(layers, key=lambda e: (roles.index(e.role) if e.role in roles else len(roles), e.index))
    first = next((e for e in ordered if e.sqnr_db < SQNR_WARN_DB), None)
    if first is not None:
        text += (f" The error starts at '{first.layer}' ({first.role}, {first.sqnr_db:.1f} dB), the first layer "
                 f"below {SQNR_WARN_DB:.0f} dB in graph order.")
    others = ", ".join(o for o in ("mse", "percentile", "minmax", "entropy") if o != observer)
    return text + f" Try another --observer ({others}) or more --calib-samples."


def _calibration_summary(calibration: Mapping[str, Any], recipes: Mapping[str, Any]) -> dict[str, Any]:
    summary = {k: v for k, v in calibration.items() if k != "files"}
    summary["files"] = len(calibration.get("files", []))
    summary["recipe_hashes"] = {role: recipe.content_hash() for role, recipe in recipes.items()}
    return summary
