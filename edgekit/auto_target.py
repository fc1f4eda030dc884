"""``--target auto-int8``: export the float and INT8 candidates, measure them here, keep the fastest within budget.

INT8 is not always faster: onnxruntime on a CPU without VNNI, or a backend without fast INT8
kernels for some layers, can run the quantized graph as slowly as fp32 or slower (the
accuracy-drop report says so). ``auto-int8`` settles it on the machine at hand::

    candidates (default: the installed ones of DEFAULT_CANDIDATES)
      ──export──▶ one temporary bundle each (INT8: calibrated, with its accuracy-drop report)
      ──measure─▶ task metric on the INT8 reports' evaluation split, drop vs their fp32 metric;
                  end-to-end latency, all candidates interleaved on one image, each on its own backend
      ──choose──▶ the fastest candidate whose drop <= --max-drop; within TIE_FRACTION of the
                  fastest, the higher precision wins (fp32 > fp16 > int8: the safer numerics)

The chosen bundle becomes ``out`` (one atomic rename at the end: a failure or Ctrl-C leaves any
bundle already at ``out`` untouched) with ``selection.json`` beside its manifest: the CPU and its
ISA, the budget, and per candidate its latency, metric, drop, size and the reason it was or was
not chosen. When a float candidate wins, the fastest INT8 candidate's report is kept as
``int8_report.json``. The manifest lists graph files only (there is no entry for other files), so
``selection.json`` and ``int8_report.json`` sit unhashed beside it, as ``report.json`` does.

The fp32 reference metric is the first INT8 report's fp32 metric (its fp32 reference graphs on the
same evaluation split, on onnxruntime or the candidate's backend); every candidate's drop is taken
against that one number. fp32 candidates compute the same function as that reference (every
candidate exports one build of the network), so their drop is rounding noise, 0.00 pt in every
run here, and with one among the candidates something is within any budget >= 0. A list without
an fp32 target can leave nothing within budget: that raises ``AccuracyBudgetError`` and writes
nothing.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit import __version__
from edgekit.errors import ExportError, UnknownTargetError, suggest
from edgekit.exporters.registry import Precision
from edgekit.progress import step

if TYPE_CHECKING:
    from torch import nn

    from edgekit.api import ExportOptions, ExportResult, SourceModel
    from edgekit.exporters.registry import TargetSpec
    from edgekit.report import Report
    from edgekit.splits import EvalSpec

AUTO_TARGET = "auto-int8"
AUTO_TARGET_SUMMARY = "the fastest of the float and INT8 targets on this machine that meets --max-drop"
# Targets whose bundles the runtime SDK runs on this machine's CPU. TensorRT bundles are not among
# them: their engine is built on the board (`edgekit build-engine`), so they cannot be timed here.
CPU_CANDIDATES: tuple[str, ...] = ("onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-fp16", "openvino-int8",
                                   "tflite-fp32", "tflite-fp16", "tflite-int8")
# TFLite only when named: LiteRT's x86 kernels say little about its speed on an ARM board.
DEFAULT_CANDIDATES: tuple[str, ...] = CPU_CANDIDATES[:5]
# Latencies within this fraction of the fastest count as equal; the safer precision then wins.
TIE_FRACTION = 0.03
SAFER_FIRST: tuple[Precision, ...] = (Precision.FP32, Precision.FP16, Precision.INT8)
SELECTION_NAME = "selection.json"
INT8_REPORT_NAME = "int8_report.json"
_WORK_DIR = "candidates"  # inside the bundle's temporary directory, removed before the final rename


@dataclass(frozen=True)
class SelectionOptions:
    """How ``--target auto-int8`` chooses (the accuracy budget is ``ExportOptions.max_drop``).

    Args:
        candidates: targets to compare, a sequence or one comma-separated string; None: those of
            ``DEFAULT_CANDIDATES`` whose packages are installed. At least one must be INT8.
        runs: timed predictions per candidate; the medians are compared.
        warmup: untimed predictions per candidate first.
        threads: CPU threads per inference while timing; None: this machine's cores.
    """

    candidates: tuple[str, ...] | str | None = None
    runs: int = 20
    warmup: int = 3
    threads: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.candidates, str):
            names = tuple(n.strip() for n in self.candidates.split(",") if n.strip())
            object.__setattr__(self, "candidates", names)
        elif self.candidates is not None:
            object.__setattr__(self, "candidates", tuple(self.candidates))
        if self.runs < 1:
            raise ExportError(f"runs must be >= 1, got {self.runs}.")
        if self.warmup < 0:
            raise ExportError(f"warmup must be >= 0, got {self.warmup}.")
        if self.threads is not None and self.threads < 1:
            raise ExportError(f"threads must be >= 1, got {self.threads}.")


@dataclass(frozen=True)
class Candidate:
    """One measured candidate (a row of ``selection.json``).

    Args:
        target: the registered target it was exported with.
        backend: the runtime backend it ran on (the first installed one that reads its graphs).
        precision: its graphs' precision (``fp32``, ``fp16``, ``int8``).
        latency_ms: median end-to-end ``predict`` time (pre-processing, graphs, post-processing).
        infer_ms: median time inside the graphs.
        metric: its task metric on the evaluation split (0..1); None where undefined.
        drop_pt: reference metric minus ``metric``, in points; None where undefined.
        meets_budget: ``drop_pt <= max_drop``.
        size_bytes: the graph files the runtime runs, with an IR's ``.bin`` (an INT8 bundle's fp32
            references excluded).
        chosen: the candidate that became the bundle.
        reason: why it was or was not chosen, one line.
    """

    target: str
    backend: str
    precision: str
    latency_ms: float
    infer_ms: float
    metric: float | None
    drop_pt: float | None
    meets_budget: bool
    size_bytes: int
    chosen: bool = False
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; latencies as ``latency_ms: {"p50", "infer_p50"}``."""
        row = dataclasses.asdict(self)
        latency = {"p50": row.pop("latency_ms"), "infer_p50": row.pop("infer_ms")}
        head = {k: row.pop(k) for k in ("target", "backend", "precision")}
        return {**head, "latency_ms": latency, **row}


@dataclass(frozen=True)
class Selection:
    """What ``auto-int8`` measured and chose (``selection.json``); metrics in 0..1, drops in points.

    Args:
        chosen: the target whose bundle was kept.
        cpu: machine, model, cores and ISA flags (avx2, avx512_vnni, avx512_bf16...) of this CPU.
        threads, runs, warmup: how the latencies were timed.
        max_drop: the budget in points.
        metric: ``key`` and ``label`` of the metric the budget applies to.
        reference: the fp32 reference ``metric`` every drop is taken against, and its ``source``.
        evaluation: the evaluation split (as the INT8 reports record it) and its image count.
        image: the image every candidate was timed on.
        candidates: every candidate, in the order given.
        int8_report: the file holding a losing INT8 candidate's report, None when INT8 won.
    """

    chosen: str
    cpu: dict[str, Any]
    threads: int
    runs: int
    warmup: int
    max_drop: float
    metric: dict[str, str]
    reference: dict[str, Any]
    evaluation: dict[str, Any]
    image: str
    candidates: list[Candidate]
    int8_report: str | None = None
    requested: str = AUTO_TARGET
    tie_fraction: float = TIE_FRACTION
    edgekit_version: str = __version__
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {**dataclasses.asdict(self), "candidates": [c.to_dict() for c in self.candidates]}


def resolve_candidates(names: Sequence[str] | None) -> list[TargetSpec]:
    """The candidates' target specs, checked before any work.

    Raises:
        UnknownTargetError: a name that is not a candidate (the message lists those there are).
        ExportError: an empty list, a name given twice, or no INT8 target among them.
        MissingDependencyError: a named candidate whose packages are not installed.
    """
    from edgekit.exporters.registry import get_spec, get_target, list_targets

    if names is None:
        specs = [s for s in map(get_spec, DEFAULT_CANDIDATES) if s.available]
    else:
        if not names:
            raise ExportError(f"--candidates is empty; name some of: {', '.join(CPU_CANDIDATES)}.")
        for name in names:
            if name not in CPU_CANDIDATES:
                why = (" is a target, but TensorRT bundles run only on an NVIDIA GPU once their engine is built "
                       "there, so it cannot be timed here." if name in list_targets() else " is not a target.")
                raise UnknownTargetError(f"candidate '{name}'{why} Candidates: {', '.join(CPU_CANDIDATES)}."
                                         f"{suggest(name, CPU_CANDIDATES)}")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ExportError(f"--candidates names {', '.join(twice)} more than once; list each target once.")
        for name in names:
            get_target(name).ensure_available()
        specs = [get_spec(n) for n in names]
    if not any(s.quant_profile is not None for s in specs):
        int8 = [n for n in CPU_CANDIDATES if get_spec(n).quant_profile is not None]
        given = ", ".join(s.name for s in specs) or "none installed"
        raise ExportError(f"auto-int8 weighs INT8 against float, but the candidates ({given}) hold no INT8 target. "
                          f"Add one of {', '.join(int8)} to --candidates, or export a float target directly with "
                          "--target.")
    return specs


def export_auto(model: str | nn.Module, *, out: str | Path, options: ExportOptions,
                selection: SelectionOptions | None = None) -> ExportResult:
    """Export every candidate, measure them on this machine and keep the fastest within ``options.max_drop``.

    Args:
        model: as for :func:`edgekit.export`.
        out: bundle directory; written atomically (an existing bundle there is replaced only on success).
        options: export options; INT8 candidates are exported with them as given (they need
            ``calib_data``), float candidates without the calibration options. Without
            ``eval_data`` the calibration folder itself is split (the first ``calib_samples``
            images of its seeded permutation calibrate, the rest evaluate).
        selection: candidates and timing; None: ``SelectionOptions()``.

    Returns:
        The chosen candidate's result, with ``bundle`` = ``out`` and ``selection`` set.

    Raises:
        AccuracyBudgetError: no candidate is within ``max_drop`` (nothing is written).
    """
    from edgekit.api import resolve_model, with_card_defaults
    from edgekit.bundle import atomic_bundle, write_json
    from edgekit.quantize import calibration_split
    from edgekit.runtimes.cpuinfo import cpu_description

    sel = selection or SelectionOptions()
    if options.strict:
        raise ExportError("--strict has nothing to enforce with --target auto-int8: it keeps only a candidate "
                          "within --max-drop and fails when none is. Drop --strict.")
    specs = resolve_candidates(sel.candidates)
    opts = dataclasses.replace(options, eval_data=options.eval_data or options.calib_data)
    int8_spec = next(s for s in specs if s.quant_profile is not None)
    split = calibration_split(int8_spec, opts)  # the INT8 targets' own errors: no --calib-data, overlap, too few
    assert split is not None and split.evaluation is not None  # an INT8 spec with eval_data set gives both
    threads = sel.threads or os.cpu_count() or 1
    opts = with_card_defaults(model, opts)
    source = resolve_model(model, opts)  # once: every candidate exports the same network
    with atomic_bundle(out) as tmp:
        work = tmp / _WORK_DIR
        results = {}
        for i, spec in enumerate(specs, 1):
            kind = "calibrating, with its accuracy-drop report" if spec.quant_profile else "float"
            step(f"auto-int8 [{i}/{len(specs)}] exporting {spec.name} ({kind})", enabled=opts.progress)
            results[spec.name] = _export_candidate(source, spec, opts, work)
        measured = _measure(results, specs, work, split.evaluation, sel, threads, opts)
        rows = decide(measured.candidates, opts.max_drop)
        chosen = next(r for r in rows if r.chosen)
        report, kept = _keep(chosen.target, rows, results, work, tmp, out)
        record = Selection(chosen=chosen.target, cpu=cpu_description(), threads=threads, runs=sel.runs,
                           warmup=sel.warmup, max_drop=opts.max_drop, metric=measured.metric,
                           reference=measured.reference, evaluation=measured.evaluation, image=measured.image,
                           candidates=rows, int8_report=kept)
        write_json(record.to_dict(), tmp / SELECTION_NAME)
    return dataclasses.replace(results[chosen.target], bundle=Path(out), report=report, selection=record)


def _export_candidate(source: SourceModel, spec: TargetSpec, opts: ExportOptions, work: Path) -> ExportResult:
    """One candidate into ``work/<target>``: INT8 with the options as given, float without calibration options."""
    from edgekit.api import export

    if spec.quant_profile is None:
        opts = dataclasses.replace(opts, calib_data=None, eval_data=None, precision="int8")
    return export(source, out=work / spec.name, target=spec.name, options=opts)


@dataclass(frozen=True)
class _Measured:
    """The candidates before the choice, and what they were measured against (``Selection``'s fields)."""

    candidates: list[Candidate]
    metric: dict[str, str]
    reference: dict[str, Any]
    evaluation: dict[str, Any]
    image: str


def _measure(results: dict[str, ExportResult], specs: Sequence[TargetSpec], work: Path, evaluation: EvalSpec,
             sel: SelectionOptions, threads: int, opts: ExportOptions) -> _Measured:
    """Every candidate's metric, drop and latency (not yet chosen), and what they were measured against."""
    from edgekit.bundle_eval import load_task
    from edgekit.report.latency import interleaved_latency
    from edgekit.report.report import choose_backends

    reports = {s.name: results[s.name].report for s in specs if s.quant_profile is not None}
    first = next(r for r in reports.values() if r is not None)  # INT8 exports always write a report
    key = first.headline["key"]
    ref_name = next((n for n, r in reports.items() if _report_metric(r, "fp32", key) is not None), next(iter(reports)))
    reference = _report_metric(reports[ref_name], "fp32", key)
    # The bundle's own graphs, not an INT8 bundle's fp32 references ("int8" is choose_backends' name for them).
    backends = {name: str(choose_backends(r.manifest)["int8"]) for name, r in results.items()}
    tasks = {name: load_task(work / name, backend=backends[name], threads=threads) for name in results}
    dataset = evaluation.open()
    scores = {name: _report_metric(r, "int8", key) for name, r in reports.items()}
    for name in (s.name for s in specs if s.name not in reports):
        step(f"auto-int8: evaluating {name} on {len(dataset)} images", enabled=opts.progress)
        scores[name] = _score(tasks[name], dataset, key, work / ref_name, backends[ref_name], opts.progress)
    step(f"auto-int8: timing {len(tasks)} candidates, {sel.runs} runs each, {threads} threads",
         enabled=opts.progress)
    sample = next(iter(dataset))
    latency = interleaved_latency(tasks, sample.image, runs=sel.runs, warmup=sel.warmup)
    rows = []
    for spec in specs:
        metric = scores[spec.name]
        drop = None if metric is None or reference is None else round(100.0 * (reference - metric), 4)
        rows.append(Candidate(
            target=spec.name, backend=backends[spec.name], precision=spec.precisions[0].value,
            latency_ms=latency[spec.name].total_ms, infer_ms=latency[spec.name].infer_ms, metric=metric,
            drop_pt=drop, meets_budget=drop is not None and drop <= opts.max_drop + 1e-9,
            size_bytes=_graph_bytes(work / spec.name, results[spec.name])))
    backend = ((reports[ref_name] or first).evaluation or {}).get("backend", backends[ref_name])
    source = f"the accuracy-drop report of {ref_name}: its fp32 reference graphs on {backend}"
    return _Measured(candidates=rows, metric=dict(first.headline), reference={"metric": reference, "source": source},
                     evaluation={k: v for k, v in (first.evaluation or {}).items() if k != "backend"},
                     image=str(sample.path))


def _report_metric(report: Report | None, variant: str, key: str) -> float | None:
    """``report.metrics[variant][key]``, None where the report has no such value."""
    return ((report.metrics or {}).get(variant) or {}).get(key) if report is not None else None


def _score(task: Any, dataset: Any, key: str, reference_bundle: Path, reference_backend: str,
           progress: bool) -> float | None:
    """A float candidate's metric as the INT8 reports score it: against labels, else agreement with fp32."""
    from edgekit.bundle_eval import evaluate_task, load_task
    from edgekit.precision.scoring import is_labelled

    if is_labelled(dataset):
        return evaluate_task(task, dataset, progress=progress, label=f"evaluating {task.manifest.target}")[key]
    from edgekit.precision.agreement import agreement_metrics

    reference = load_task(reference_bundle, reference=True, backend=reference_backend)
    return agreement_metrics({"fp32": reference, "int8": task}, dataset, progress=progress)["int8"][key]


def _graph_bytes(bundle: Path, result: ExportResult) -> int:
    """Bytes of the graphs the runtime runs, with the files that share their stem (an IR's ``.bin`` weights).

    An INT8 bundle's fp32 reference graphs (``<role>.fp32.onnx``) are not deployed and not counted.
    """
    from edgekit.quantize import REFERENCE_SUFFIX

    stems = {Path(g.path).stem for g in result.manifest.graphs if not g.role.endswith(REFERENCE_SUFFIX)}
    return sum(p.stat().st_size for p in bundle.iterdir() if p.is_file() and p.stem in stems)


def decide(candidates: Sequence[Candidate], max_drop: float) -> list[Candidate]:
    """The candidates with ``chosen`` and ``reason`` filled in.

    The fastest candidate within budget wins; candidates within ``TIE_FRACTION`` of its latency
    count as equally fast, and among those the safest precision (``SAFER_FIRST``), then the
    fastest, is chosen.

    Raises:
        AccuracyBudgetError: no candidate meets the budget.
    """
    within = [c for c in candidates if c.meets_budget]
    if not within:
        from edgekit.report import AccuracyBudgetError

        drops = ", ".join(f"{c.target} {_drop(c.drop_pt)}" for c in candidates)
        raise AccuracyBudgetError(f"no candidate is within --max-drop {max_drop:.2f} pt ({drops}); nothing was "
                                  "written. Raise --max-drop, or add onnx-fp32 to --candidates.")
    fastest = min(within, key=lambda c: c.latency_ms)
    tied = [c for c in within if c.latency_ms <= fastest.latency_ms * (1 + TIE_FRACTION)]
    best = min(tied, key=lambda c: (SAFER_FIRST.index(Precision(c.precision)), c.latency_ms))
    return [dataclasses.replace(c, chosen=c is best, reason=_reason(c, best, fastest, candidates, max_drop))
            for c in candidates]


def _reason(c: Candidate, best: Candidate, fastest: Candidate, candidates: Sequence[Candidate],
            max_drop: float) -> str:
    """One line: why ``c`` was (not) chosen."""
    if c is best:
        if c is fastest:
            return "fastest within budget"
        return (f"within {TIE_FRACTION:.0%} of the fastest ({fastest.target}, {c.latency_ms / fastest.latency_ms:.2f}x "
                f"its latency) and a safer precision")
    if not c.meets_budget:
        return f"drop {_drop(c.drop_pt)} > {max_drop:.2f} budget"
    if c.precision == Precision.INT8.value:
        base = _fp32_baseline(c, candidates)
        if base is not None and base.latency_ms <= c.latency_ms * (1 + TIE_FRACTION):
            return f"INT8 not faster than fp32 here: {base.latency_ms / c.latency_ms:.2f}x"
    if c.latency_ms <= best.latency_ms:
        return f"within {TIE_FRACTION:.0%} of {best.target}, which has the safer precision"
    return f"{c.latency_ms / best.latency_ms:.2f}x the latency of {best.target}"


def _fp32_baseline(c: Candidate, candidates: Sequence[Candidate]) -> Candidate | None:
    """The fp32 candidate to compare an INT8 one with: on the same backend, else the fastest fp32 one."""
    fp32 = [x for x in candidates if x.precision == Precision.FP32.value]
    same = [x for x in fp32 if x.backend == c.backend]
    return min(same or fp32, key=lambda x: x.latency_ms, default=None)


def _drop(drop_pt: float | None) -> str:
    return "not measured" if drop_pt is None else f"{drop_pt:.2f} pt"


def _keep(chosen: str, rows: Sequence[Candidate], results: dict[str, ExportResult], work: Path, tmp: Path,
          out: str | Path) -> tuple[Report | None, str | None]:
    """Move the chosen bundle into ``tmp``, keep the INT8 report that explains the choice, drop the rest.

    Returns the chosen bundle's report (named after ``out``) and the ``int8_report.json`` name if one was kept.
    """
    from edgekit.bundle import write_json
    from edgekit.report import write_report

    for entry in (work / chosen).iterdir():
        entry.rename(tmp / entry.name)
    report, kept = results[chosen].report, None
    if report is not None:  # an INT8 winner: its report now describes `out`, not the temporary directory
        report = dataclasses.replace(report, bundle=str(out))
        write_report(report, tmp)
    else:
        loser = min((r for r in rows if r.precision == Precision.INT8.value), key=lambda r: r.latency_ms)
        lost = results[loser.target].report
        assert lost is not None  # INT8 candidates always write a report
        note = f"{out} (auto-int8 candidate {loser.target}, not kept: {loser.reason})"
        write_json(dataclasses.replace(lost, bundle=note).to_dict(), tmp / INT8_REPORT_NAME)
        kept = INT8_REPORT_NAME
    shutil.rmtree(work)
    return report, kept


def read_selection(bundle: str | Path) -> dict[str, Any] | None:
    """The ``selection.json`` of a bundle written by ``auto-int8`` as a dict, or None when there is none."""
    import json

    path = Path(bundle) / SELECTION_NAME
    return json.loads(path.read_text()) if path.is_file() else None
