"""The Python API behind ``edgekit export``: a model (zoo name, ``file.py:factory`` or an
``nn.Module``) to a deploy bundle for one target.

    import edgekit
    edgekit.export("shufflenetv2-1.0", out="bundles/shufflenet", weights="w.safetensors")

The CLI builds the same ``ExportOptions`` the API takes. Heavy packages (torch, onnx) are
imported inside the functions, so ``import edgekit`` stays light.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit import __version__
from edgekit.bundle import PASSES_NAME, Manifest, PostProcess, TensorSpec, atomic_bundle, write_json, write_manifest
from edgekit.errors import ExportError, suggest
from edgekit.inputspec import TASK_DEFAULTS, ChannelOrder, InputSpec, ResizeMode, make_input_spec, parse_choice

if TYPE_CHECKING:
    import onnx
    import torch
    from torch import nn

    from edgekit.auto_target import Selection, SelectionOptions
    from edgekit.report import Report

TOOLCHAIN_PACKAGES: tuple[str, ...] = ("torch", "onnx", "onnxruntime", "onnxslim")
# ExportOptions.precision: full INT8, or the mixed-precision search under --max-drop.
PRECISION_MODES: tuple[str, ...] = ("int8", "auto")


@dataclass(frozen=True)
class ExportOptions:
    """How to export a model; one object serves the CLI and the Python API.

    Args:
        weights: ``.safetensors`` / ``.pt`` state dict to load (strict); None keeps the
            model's own initialisation.
        imgsz: (height, width) to export at; None uses the zoo's input size (user models
            must give it, or define ``input_size`` on the module).
        batch: fixed batch size of the graph.
        dynamic_batch: make the batch dimension symbolic instead (excludes ``batch`` != 1).
        mean, std: per-channel normalisation in pixel units (0-255); None keeps the task default.
        channel_order: ``rgb`` or ``bgr``; None keeps the task default.
        resize: ``stretch``, ``letterbox`` or ``shorter-side-crop``; None keeps the task default.
        num_classes: classes to build the model with (zoo and ``file.py:factory`` models).
        labels: class names, or a text file with one name per line.
        task: ``classify`` or ``segment`` for a user's model (default ``classify``); a zoo
            model's task is fixed.
        output_names: graph output names for a user's model; default: the module's
            ``output_names`` attribute, else ``output0..N-1``.
        name: model name recorded in the manifest; default: registry name, ``file:factory``
            or the module's class name.
        top_k: how many classes a classifier's post-processing reports (at most num_classes).
        calib_data: calibration images (any layout ``edgekit.data.open_dataset`` reads); INT8
            targets require it, float targets refuse it.
        calib_samples: calibration images used: the first N of a seeded permutation.
        observer: activation range observer: ``mse`` (the clipping threshold with the least
            expected quantization error), ``entropy`` (TensorRT's KL method), ``minmax`` or
            ``percentile``; or ``auto``: calibrate with ``mse`` and ``entropy`` and keep the one
            with the smaller drop on ``eval_data`` (:mod:`edgekit.precision.observer_choice`).
            ``mse`` is the default: on the trained fixtures ``entropy`` cost MobileNetV2 5 top-1
            points (its KL argmin clipped a ReLU6 output at 0.79 with a tenth of the values above
            it), while ``mse`` cost BiSeNet 2.5 mIoU points where ``entropy`` cost 0.6
            (docs/benchmarks/calib_vs_peers.md).
        percentile: the ``percentile`` observer's percentile.
        eval_data: labelled images for the accuracy-drop report, disjoint from the calibration
            samples; the calibration folder itself is split (first N calibrate, the rest evaluate).
        max_drop: accuracy budget in points of the task metric (top-1, AP50, mIoU; agreement with
            fp32 where ``eval_data`` has no labels).
        precision: ``int8``: every layer the target's profile quantizes is INT8; ``auto``: the
            mixed-precision search keeps the most sensitive layers float (FP16 where the target
            has it, else FP32) until the drop on ``eval_data`` is within ``max_drop``, using as
            few float layers as it can (:mod:`edgekit.precision.workflow`); needs ``eval_data``.
        repairs: cross-layer equalization before calibration and bias correction after.
        strict: raise ``AccuracyBudgetError`` (CLI: exit non-zero) when the drop exceeds
            ``max_drop``; needs ``eval_data``.
        progress: progress bars on the terminal while calibrating and evaluating.
    """

    weights: str | Path | None = None
    imgsz: tuple[int, int] | None = None
    batch: int = 1
    dynamic_batch: bool = False
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    channel_order: ChannelOrder | str | None = None
    resize: ResizeMode | str | None = None
    num_classes: int | None = None
    labels: str | Path | Sequence[str] | None = None
    task: str | None = None
    output_names: tuple[str, ...] | None = None
    name: str | None = None
    top_k: int = 5
    calib_data: str | Path | None = None
    calib_samples: int = 300
    observer: str = "mse"
    percentile: float = 99.99
    eval_data: str | Path | None = None
    max_drop: float = 1.0
    precision: str = "int8"
    repairs: bool = True
    strict: bool = False
    progress: bool = False

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ExportError(f"batch must be >= 1, got {self.batch}.")
        if self.dynamic_batch and self.batch != 1:
            raise ExportError(f"--batch {self.batch} and --dynamic-batch exclude each other; drop one of them.")
        if self.imgsz is not None and (len(self.imgsz) != 2 or min(self.imgsz) < 1):
            raise ExportError(f"imgsz takes two positive values (height width), got {self.imgsz}.")
        if self.num_classes is not None and self.num_classes < 1:
            raise ExportError(f"num_classes must be >= 1, got {self.num_classes}.")
        if self.top_k < 1:
            raise ExportError(f"top_k must be >= 1, got {self.top_k}.")
        self._check_calibration()
        if self.task is not None and self.task not in TASK_DEFAULTS:
            raise ExportError(f"unknown task '{self.task}'; choose one of: {', '.join(TASK_DEFAULTS)}.")
        # Refuse a bad choice here, before any model is built; store the enum either way.
        if self.channel_order is not None:
            object.__setattr__(self, "channel_order", parse_choice(ChannelOrder, self.channel_order, "channel order"))
        if self.resize is not None:
            object.__setattr__(self, "resize", parse_choice(ResizeMode, self.resize, "resize mode"))

    def _check_calibration(self) -> None:
        from edgekit.calib.observers import OBSERVERS

        if self.calib_samples < 1:
            raise ExportError(f"calib_samples must be >= 1, got {self.calib_samples}.")
        from edgekit.precision.observer_choice import AUTO_OBSERVER, NEEDS_EVALUATION

        choices = (*OBSERVERS, AUTO_OBSERVER)
        if self.observer not in choices:
            raise ExportError(f"unknown observer '{self.observer}'; choose one of: {', '.join(choices)}."
                              f"{suggest(self.observer, choices)}")
        if self.observer == AUTO_OBSERVER and self.eval_data is None:
            raise ExportError(NEEDS_EVALUATION)
        if not 0.0 < self.percentile <= 100.0:
            raise ExportError(f"percentile must be in (0, 100], got {self.percentile}.")
        if not self.max_drop >= 0.0:
            raise ExportError(f"max_drop is a budget in metric points and must be >= 0, got {self.max_drop}.")
        if self.precision not in PRECISION_MODES:
            raise ExportError(f"unknown precision '{self.precision}'; choose one of: {', '.join(PRECISION_MODES)}."
                              f"{suggest(self.precision, PRECISION_MODES)}")
        if self.precision == "auto" and self.eval_data is None:
            raise ExportError("--precision auto searches for the float layers that bring the drop within --max-drop "
                              "on evaluation images; pass --eval-data DIR (labelled, or plain photos for agreement "
                              "with fp32; the --calib-data folder itself is split when it is the same folder).")
        if self.strict and self.eval_data is None:
            raise ExportError("--strict checks the accuracy drop on --eval-data; pass --eval-data DIR (or drop "
                              "--strict).")


@dataclass(frozen=True)
class SourceModel:
    """The network to export and what is known about it before tracing."""

    module: nn.Module
    name: str
    task: str
    imgsz: tuple[int, int]
    output_names: tuple[str, ...] | None
    from_zoo: bool


@dataclass
class GraphPlan:
    """What a task pipeline produced: optimized graphs and how to read their outputs.

    Args:
        graphs: role -> optimized fp32 graph, in the order the pipeline runs them.
        passes: role -> graph pass records (``PassRecord.to_dict()``).
        outputs: the pipeline's final outputs with their meaning.
        postprocess: how the SDK turns outputs into a result.
        num_classes: number of classes the outputs cover.
        node_counts: role -> (nodes as exported, nodes after the passes).
        modules: role -> eval-mode torch module each graph was traced from.
        examples: role -> the example inputs it was traced with.
    """

    graphs: dict[str, onnx.ModelProto]
    passes: dict[str, list[dict[str, Any]]]
    outputs: tuple[TensorSpec, ...]
    postprocess: PostProcess
    num_classes: int
    node_counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    modules: dict[str, nn.Module] = field(default_factory=dict)
    examples: dict[str, tuple[Any, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportResult:
    """A written bundle: where it is, its manifest, what the graph passes did, its report and (auto-int8) selection."""

    bundle: Path
    manifest: Manifest
    passes: dict[str, list[dict[str, Any]]]
    node_counts: dict[str, tuple[int, int]]
    report: Report | None = None
    selection: Selection | None = None


Pipeline = Callable[[SourceModel, InputSpec, ExportOptions], GraphPlan]

# Task -> "module:function" of the pipeline that turns a model of that task into graphs.
# Imported on first use: the detector pipeline pulls in the detection code and its glue.
PIPELINES: dict[str, str] = {
    "classify": "edgekit.api:export_single_graph",
    "segment": "edgekit.api:export_single_graph",
    "detect": "edgekit.detector_export:export_detector",
}


def get_pipeline(task: str) -> Pipeline:
    """The export pipeline of ``task``."""
    import importlib

    if task not in PIPELINES:
        raise ExportError(f"no export pipeline for task '{task}'; tasks that export: {', '.join(PIPELINES)}.")
    module, _, function = PIPELINES[task].partition(":")
    return getattr(importlib.import_module(module), function)


def export(
    model: str | nn.Module | SourceModel,
    *,
    out: str | Path,
    target: str = "onnx-fp32",
    options: ExportOptions | None = None,
    selection: SelectionOptions | None = None,
    **overrides: Any,
) -> ExportResult:
    """Export ``model`` to a deploy bundle directory ``out`` for ``target``.

    Args:
        model: a registry name (``edgekit models``), ``path/to/file.py:factory``, an
            ``nn.Module`` (copied, not modified), or a ``SourceModel`` from ``resolve_model``
            (copied; its weights are loaded already).
        out: bundle directory; written atomically, an existing bundle there is replaced.
        target: registered target name (``edgekit.exporters.registry.list_targets()``), or
            ``auto-int8``: the fastest float or INT8 target on this machine within ``max_drop``
            (:mod:`edgekit.auto_target`).
        options: export options; keyword ``overrides`` replace its fields
            (``edgekit.export(m, out=d, imgsz=(160, 160))``).
        selection: ``auto-int8`` only: candidates and timing (``SelectionOptions``).

    Returns:
        The bundle path, its manifest, the graph pass log and node counts (``auto-int8``: the
        chosen candidate's, with ``selection``).
    """
    from edgekit.auto_target import AUTO_TARGET
    from edgekit.exporters.registry import ExportJob, get_target
    from edgekit.quantize import calibration_split

    opts = _merge(options or ExportOptions(), overrides)
    if target == AUTO_TARGET:
        from edgekit.auto_target import export_auto

        return export_auto(model, out=out, options=opts, selection=selection)
    if selection is not None:
        raise ExportError(f"--candidates, --runs and --threads choose among targets for --target {AUTO_TARGET}; "
                          f"drop them for --target {target}.")
    tgt = get_target(target)
    tgt.ensure_available()
    tgt.check_request(dynamic_batch=opts.dynamic_batch, precision=tgt.spec.precisions[0])
    split = calibration_split(tgt.spec, opts)  # refuses missing or misplaced calibration data, before any work
    opts = with_card_defaults(model, opts)
    source = resolve_model(model, opts)
    pipeline = get_pipeline(source.task)
    spec = make_input_spec(source.task, opts.imgsz or source.imgsz, batch=opts.batch,
                           dynamic_batch=opts.dynamic_batch, mean=opts.mean, std=opts.std,
                           channel_order=opts.channel_order, resize=opts.resize)
    labels = read_labels(opts.labels)
    report = None
    with atomic_bundle(out) as tmp:
        plan = pipeline(source, spec, opts)
        if labels and len(labels) != plan.num_classes:
            raise ExportError(f"{len(labels)} labels given but the model outputs {plan.num_classes} classes.")
        for role, graph in plan.graphs.items():
            _stamp_metadata(graph, source, spec, labels, role)
        job = ExportJob(graphs=plan.graphs, input_spec=spec, modules=plan.modules, examples=plan.examples)
        quantized = None
        if split is not None:
            from edgekit.quantize import CalibrationSettings, quantize_graphs, write_references

            settings = CalibrationSettings(profile=str(tgt.spec.quant_profile), observer=opts.observer,
                                           percentile=opts.percentile, repairs=opts.repairs, progress=opts.progress)
            from edgekit.precision.observer_choice import AUTO_OBSERVER, quantize_best_observer

            if opts.observer == AUTO_OBSERVER:
                quantized = quantize_best_observer(plan, spec, split, settings, source.task, labels)
            else:
                quantized = quantize_graphs(plan.graphs, spec, plan.postprocess, split, settings)
            if opts.precision == "auto":
                from edgekit.precision.workflow import search_export

                search_export(quantized, source.task, plan, spec, tgt.spec, split.evaluation, opts.max_drop, labels)
            job = dataclasses.replace(job, graphs=quantized.graphs, recipes=quantized.recipes,
                                      calib_feeds=quantized.feeds.__getitem__, calibration=quantized.calibration)
        files = tgt.export(job, tmp)
        if quantized is not None:
            files += write_references(quantized.references, tmp)
        write_json(plan.passes, tmp / PASSES_NAME)
        manifest = Manifest(model=source.name, task=source.task, target=target, input=spec, outputs=plan.outputs,
                            graphs=tuple(files), postprocess=plan.postprocess, labels=tuple(labels),
                            num_classes=plan.num_classes, edgekit_version=__version__, toolchain=toolchain_versions())
        write_manifest(manifest, tmp)
        if split is not None:
            from edgekit.report import ReportOptions, make_report

            report = make_report(tmp, ReportOptions(evaluation=split.evaluation, max_drop=opts.max_drop,
                                                    progress=opts.progress), bundle_name=str(out))
    result = ExportResult(bundle=Path(out), manifest=manifest, passes=plan.passes, node_counts=plan.node_counts,
                          report=report)
    if report is not None and opts.strict:
        report.enforce()
    return result


def with_card_defaults(model: str | nn.Module | SourceModel, opts: ExportOptions) -> ExportOptions:
    """Options the weights' card fills in (classes, input size, preprocessing) where the user gave none.

    ``edgekit train`` writes ``W.json`` beside ``W.safetensors``: the network must be exported
    with the input size and preprocessing it was trained with. Options set explicitly win.
    """
    if opts.weights is None or not isinstance(model, str):
        return opts
    from edgekit.train.checkpoint import read_card

    card = read_card(opts.weights)
    if card is None:
        return opts
    if card.model != model:
        raise ExportError(f"weights '{opts.weights}' were trained for '{card.model}' (their card says so), not "
                          f"'{model}'; pass --model {card.model}.")
    pre = card.preprocessing()
    defaults = {"num_classes": card.num_classes, "imgsz": tuple(card.imgsz), "mean": pre.mean, "std": pre.std,
                "channel_order": pre.channel_order.value, "resize": pre.resize.value}
    filled = {k: v for k, v in defaults.items() if getattr(opts, k) is None}
    if opts.labels is None and card.class_names:
        filled["labels"] = tuple(card.class_names)
    return dataclasses.replace(opts, **filled)


def _merge(options: ExportOptions, overrides: dict[str, Any]) -> ExportOptions:
    fields = [f.name for f in dataclasses.fields(ExportOptions)]
    for key in overrides:
        if key not in fields:
            raise ExportError(f"unknown export option '{key}'.{suggest(key, fields)} Options: {', '.join(fields)}.")
    return dataclasses.replace(options, **overrides) if overrides else options


def resolve_model(model: str | nn.Module | SourceModel, opts: ExportOptions) -> SourceModel:
    """Build (zoo, ``file.py:factory``) or copy (``nn.Module``, ``SourceModel``) the network and load weights.

    A ``SourceModel`` was resolved before, weights and all: ``--target auto-int8`` builds the
    network once for every candidate, since each fresh build of a model without weights would be
    initialised differently.
    """
    from torch import nn

    if isinstance(model, SourceModel):
        return dataclasses.replace(model, module=copy.deepcopy(model.module))

    from edgekit.models import get_spec
    from edgekit.models.weights import load_weights
    from edgekit.usermodel import is_user_model_ref, load_user_model, parse_user_model_ref

    if isinstance(model, nn.Module):
        if opts.num_classes is not None:
            raise ExportError("num_classes applies to zoo names and file.py:factory references; build your "
                              "module with the classes you want and drop num_classes.")
        module, name, task, size = copy.deepcopy(model), type(model).__name__, opts.task or "classify", None
        from_zoo = False
    elif isinstance(model, str) and is_user_model_ref(model):
        module = load_user_model(model, opts.num_classes)
        name, task, size = parse_user_model_ref(model).name, opts.task or "classify", None
        from_zoo = False
    elif isinstance(model, str):
        spec = get_spec(model)
        if opts.task is not None and opts.task != spec.task.value:
            raise ExportError(f"'{model}' is a {spec.task.value} model; drop --task {opts.task}.")
        classes = opts.num_classes or (classes_in_weights(spec, opts.weights) if opts.weights else None)
        module = spec.build(num_classes=classes or spec.num_classes)
        name, task, size, from_zoo = spec.name, spec.task.value, spec.input_size, True
    else:
        raise ExportError("model must be a registry name, 'file.py:factory' or an nn.Module, "
                          f"got {type(model).__name__}.")
    if opts.weights is not None:
        load_weights(module, opts.weights)
    size = size or getattr(module, "input_size", None)
    if opts.imgsz is None and size is None:
        raise ExportError(f"'{name}' has no registered input size; pass --imgsz H W "
                          "(or define input_size on the module).")
    names = opts.output_names or getattr(module, "output_names", None)
    return SourceModel(module=module.eval(), name=opts.name or name, task=task, imgsz=tuple(size or opts.imgsz),
                       output_names=tuple(names) if names else None, from_zoo=from_zoo)


def classes_in_weights(spec: Any, weights: str | Path) -> int | None:
    """The class count a zoo model's weights were trained for, read from the head's shapes.

    The model is built with its default classes; where the weights differ from it only in the
    leading dimension of some tensors, and by the same amount in each (a classifier's
    ``[C, F]`` and ``[C]``, a detector's ``C + 1`` logits, a segmenter's ``[C, F, 1, 1]``
    heads), that amount is the change in classes. Anything else gives None, and loading the
    weights then reports the mismatch.
    """
    from edgekit.models.weights import read_state_dict

    state = read_state_dict(weights)
    own = spec.build(num_classes=spec.num_classes).state_dict()
    changed = [(tuple(state[k].shape), tuple(own[k].shape)) for k in own.keys() & state.keys()
               if tuple(state[k].shape) != tuple(own[k].shape)]
    if not changed or any(len(a) != len(b) or not a or a[1:] != b[1:] for a, b in changed):
        return None
    deltas = {a[0] - b[0] for a, b in changed}
    classes = spec.num_classes + deltas.pop() if len(deltas) == 1 else 0
    return classes if classes >= 1 else None


def read_labels(labels: str | Path | Sequence[str] | None) -> list[str]:
    """Class names from a list or a text file (one per line, blank lines skipped)."""
    if labels is None:
        return []
    if isinstance(labels, (str, Path)):
        path = Path(labels)
        if not path.is_file():
            raise ExportError(f"labels file '{path}' does not exist.")
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [str(label) for label in labels]


def toolchain_versions() -> dict[str, str]:
    """Installed versions of the packages that build a bundle."""
    import platform

    versions = {"python": platform.python_version()}
    for package in TOOLCHAIN_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def optimize_graph(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[dict[str, Any]]]:
    """Run edgekit's graph passes; returns the optimized graph and the pass log."""
    from edgekit.graph import optimize

    optimized, records = optimize(model)
    return optimized, [r.to_dict() for r in records]


def _stamp_metadata(graph: onnx.ModelProto, source: SourceModel, spec: InputSpec, labels: list[str],
                    role: str) -> None:
    # The DESIGN's canonical IR carries its own description, so a graph copied out of its
    # bundle still says what it is and how to feed it.
    import onnx

    props = {"edgekit.version": __version__, "edgekit.model": source.name, "edgekit.task": source.task,
             "edgekit.role": role, "edgekit.input": json.dumps(spec.to_dict()), "edgekit.labels": json.dumps(labels)}
    onnx.helper.set_model_props(graph, {**{p.key: p.value for p in graph.metadata_props}, **props})


@dataclass(frozen=True)
class TaskOutput:
    """The single-graph output contract of a task (the zoo's contract, see edgekit.models).

    Args:
        name: graph output name for zoo models.
        meaning: what the values are, recorded in the manifest.
        rank: rank of the output tensor.
        postprocess: builds the SDK's post-processing from (num_classes, options).
    """

    name: str
    meaning: str
    rank: int
    postprocess: Callable[[int, ExportOptions], PostProcess]


TASK_OUTPUTS: dict[str, TaskOutput] = {
    "classify": TaskOutput("logits", "class scores before softmax, [N, num_classes]", 2,
                           lambda n, opts: PostProcess("topk", {"k": min(opts.top_k, n), "softmax": True})),
    "segment": TaskOutput("logits", "per-pixel class scores before softmax at input resolution, "
                          "[N, num_classes, H, W]", 4, lambda n, opts: PostProcess("argmax", {"axis": 1})),
}


def export_single_graph(source: SourceModel, spec: InputSpec, opts: ExportOptions) -> GraphPlan:
    """Classifiers and segmenters: one graph, role ``model``, traced, exported and optimized."""
    import torch

    from edgekit.onnx_export import torch_to_onnx

    contract = TASK_OUTPUTS[source.task]
    # A dynamic batch is traced at 2 so no size-1 dimension gets folded into a constant.
    batch = 2 if spec.dynamic_batch else int(spec.shape[0])
    example = torch.randn(batch, 3, *spec.imgsz, generator=torch.Generator().manual_seed(0))
    output_names = source.output_names or ((contract.name,) if source.from_zoo else ("output0",))
    if len(output_names) != 1:
        raise ExportError(f"a {source.task} model has one output; got {len(output_names)} output names "
                          f"({', '.join(output_names)}).")
    raw = torch_to_onnx(source.module, example, input_name=spec.name, output_names=output_names,
                        dynamic_batch=spec.dynamic_batch)
    shape = _output_shape(raw, source.module, example)
    _check_output(source, spec, shape, contract.rank)
    optimized, records = optimize_graph(raw)
    num_classes = int(shape[1])
    shape = ("batch" if spec.dynamic_batch else batch, *shape[1:])
    return GraphPlan(
        graphs={"model": optimized},
        passes={"model": records},
        outputs=(TensorSpec(name=output_names[0], shape=tuple(shape), meaning=contract.meaning),),
        postprocess=contract.postprocess(num_classes, opts),
        num_classes=num_classes,
        node_counts={"model": (len(raw.graph.node), len(optimized.graph.node))},
        modules={"model": source.module},
        examples={"model": (example,)},
    )


def _output_shape(graph: onnx.ModelProto, module: nn.Module, example: torch.Tensor) -> tuple[int, ...]:
    """Shape of the single output at the traced batch: from the graph, else from a forward pass."""
    dims = graph.graph.output[0].type.tensor_type.shape.dim
    if dims and all(d.HasField("dim_value") for d in dims[1:]):
        return (example.shape[0], *(d.dim_value for d in dims[1:]))
    import torch

    with torch.no_grad():
        out = module(example)
    if not isinstance(out, torch.Tensor):
        raise ExportError(f"a single-graph model must return one tensor in eval mode, got {type(out).__name__}.")
    return tuple(out.shape)


def _check_output(source: SourceModel, spec: InputSpec, shape: tuple[int, ...], rank: int) -> None:
    if len(shape) != rank:
        other = next((t for t, c in TASK_OUTPUTS.items() if c.rank == len(shape)), None)
        hint = f" If it is a {other} model, pass --task {other}." if other else ""
        raise ExportError(f"'{source.name}' returns a tensor of shape {list(shape)}; a {source.task} model "
                          f"returns rank {rank}.{hint}")
    if source.task == "segment" and tuple(shape[2:]) != spec.imgsz:
        raise ExportError(f"'{source.name}' returns logits at {shape[2]}x{shape[3]}; a segment model returns them "
                          f"at the input resolution {spec.imgsz[0]}x{spec.imgsz[1]} (upsample inside the model).")

