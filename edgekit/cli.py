"""The ``edgekit`` command line. Each command is a thin wrapper over the Python API."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from edgekit.cli_bundle import bundle_app
from edgekit.cli_experimental import experimental_app
from edgekit.errors import EdgekitError
from edgekit.inputspec import ChannelOrder, ResizeMode

if TYPE_CHECKING:
    from edgekit.auto_target import Selection
    from edgekit.report import Report

app = typer.Typer(
    name="edgekit",
    help="Take a PyTorch model to an edge board: export, quantize, report, run.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@app.command("models")
def models_command(
    pattern: Annotated[str, typer.Argument(help="Shell-style filter on names, e.g. 'thundernet-*'.")] = "*",
    task: Annotated[str | None, typer.Option(help="Only models of this task: classify, detect or segment.")] = None,
) -> None:
    """List the model zoo: name, task, input size, parameters and MACs.

    Parameters and MACs are counted on the model as built (torch's flop counter, batch 1, at
    the listed input size); the published figures they are tested against are in brackets.
    """
    from edgekit.models import get_spec, list_models
    from edgekit.models.counting import measure

    names = list_models(pattern, task=task)
    table = Table(title=f"edgekit model zoo ({len(names)} models)")
    for column in ("name", "task", "input (HxW)", "classes", "params M", "MACs G"):
        table.add_column(column, no_wrap=True,
                         justify="right" if column in ("params M", "MACs G", "classes") else "left")
    # The full citation is long; `edgekit info --model NAME` prints it whole.
    table.add_column("source", no_wrap=True, overflow="ellipsis", max_width=48)
    with console.status("counting parameters and MACs...") as status:
        for name in names:
            status.update(f"counting {name}...")
            spec = get_spec(name)
            params, macs = measure(spec)
            table.add_row(
                name,
                spec.task.value,
                "x".join(map(str, spec.input_size)),
                str(spec.num_classes),
                f"{params / 1e6:.2f} [{_fmt(spec.params_m, 2)}]",
                f"{macs / 1e9:.3f} [{_fmt(spec.macs_g, 3)}]",
                spec.source,
            )
    console.print(table)


@app.command("info")
def info_command(
    model: Annotated[str, typer.Option("--model", "-m", help="Registered model name (see `edgekit models`).")],
    depth: Annotated[int, typer.Option(help="How many levels of submodules to show.")] = 1,
) -> None:
    """Print a model's architecture summary: its submodules with their parameters and layer counts."""
    from edgekit.models import get_spec
    from edgekit.models.counting import measure
    from edgekit.models.summary import summarize

    spec = get_spec(model)
    params, macs = measure(spec)
    console.print(f"[bold]{spec.name}[/bold] — {spec.summary}")
    console.print(
        f"task {spec.task.value} · input 3x{spec.input_size[0]}x{spec.input_size[1]} · "
        f"{spec.num_classes} classes · {params / 1e6:.3f} M params · {macs / 1e9:.3f} G MACs"
    )
    console.print(
        f"published: {_fmt(spec.params_m, 2)} M params, {_fmt(spec.macs_g, 3)} G MACs "
        f"(±{spec.tolerance:.0%}) — {spec.source}"
    )
    table = Table()
    for column in ("module", "type", "params", "layers"):
        table.add_column(column, justify="right" if column == "params" else "left")
    for row in summarize(spec.build().eval(), depth=depth):
        table.add_row("  " * row.level + row.name, row.type_name, f"{row.params:,}", row.layers)
    console.print(table)


def _target_help() -> str:
    from edgekit.auto_target import AUTO_TARGET, AUTO_TARGET_SUMMARY
    from edgekit.exporters.registry import get_spec, list_targets

    targets = [f"{n} ({get_spec(n).summary})" for n in list_targets()]
    return "Export target: " + "; ".join([*targets, f"{AUTO_TARGET}: {AUTO_TARGET_SUMMARY}"]) + "."


@app.command("export")
def export_command(
    model: Annotated[str, typer.Option("--model", "-m", help="Registered model name (see `edgekit models`) "
                                       "or your own network as 'path/to/file.py:factory'.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle directory to write (model file(s), "
                                      "manifest.json, passes.json); an existing bundle there is replaced.")],
    target: Annotated[str, typer.Option(help=_target_help())] = "onnx-fp32",
    weights: Annotated[Path | None, typer.Option(help="Weights to load: .safetensors, or a .pt/.pth state dict "
                                                 "(read with torch.load(weights_only=True)).")] = None,
    imgsz: Annotated[tuple[int, int] | None, typer.Option(metavar="H W", help="Input height and width; "
                                                          "default: the model's registered input size.")] = None,
    batch: Annotated[int, typer.Option(help="Fixed batch size of the exported graph.")] = 1,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch", help="Make the batch dimension symbolic "
                                                "instead of fixed (excludes --batch).")] = False,
    mean: Annotated[tuple[float, float, float] | None, typer.Option(metavar="R G B", help="Per-channel mean in "
                    "pixel units (0-255), in --channel-order; default: ImageNet (123.675 116.28 103.53).")] = None,
    std: Annotated[tuple[float, float, float] | None, typer.Option(metavar="R G B", help="Per-channel std in "
                   "pixel units; default: ImageNet (58.395 57.12 57.375).")] = None,
    channel_order: Annotated[str | None, typer.Option(help="Colour order the network expects: "
                                                      f"{' or '.join(c.value for c in ChannelOrder)}; "
                                                      "default rgb.")] = None,
    resize: Annotated[str | None, typer.Option(help="How the runtime fits an image to the input size: "
                                               f"{', '.join(m.value for m in ResizeMode)}; default: "
                                               "shorter-side-crop for classifiers, stretch for segmenters, "
                                               "letterbox for detectors.")] = None,
    num_classes: Annotated[int | None, typer.Option(help="Build the model with this many classes "
                                                    "(zoo models and file.py:factory).")] = None,
    labels: Annotated[Path | None, typer.Option(help="Text file of class names, one per line, "
                                                "stored in the manifest.")] = None,
    task: Annotated[str | None, typer.Option(help="classify or segment: what your own model's output means "
                                             "(default classify); zoo models know their task.")] = None,
    output_name: Annotated[list[str] | None, typer.Option(help="Graph output name for your own model, once per "
                                                          "output (default output0, output1, ...).")] = None,
    calib_data: Annotated[Path | None, typer.Option(help="INT8 targets: calibration images in any layout edgekit "
                                                    "reads (class folders, COCO, VOC, image/mask folders).")] = None,
    calib_samples: Annotated[int, typer.Option(min=1, help="Calibration images used: the first N of a seeded "
                                               "shuffle of --calib-data.")] = 300,
    observer: Annotated[str, typer.Option(help="Activation range observer: mse (least expected quantization error), "
                                          "entropy (TensorRT's KL method), minmax, percentile, or auto (calibrate with "
                                          "mse and entropy, keep the one with the smaller drop on --eval-data).")] = "mse",
    percentile: Annotated[float, typer.Option(help="Percentile of the percentile observer.")] = 99.99,
    eval_data: Annotated[Path | None, typer.Option(help="Labelled images for the accuracy-drop report, disjoint from "
                                                   "calibration; the --calib-data folder itself is split (first N "
                                                   "calibrate, the rest evaluate).")] = None,
    max_drop: Annotated[float, typer.Option(help="Accuracy budget in points of top-1 / AP50 / mIoU: the report "
                                            "says PASS or FAIL against it.")] = 1.0,
    strict: Annotated[bool, typer.Option("--strict", help="Exit non-zero when the report says FAIL (needs "
                                         "--eval-data).")] = False,
    repairs: Annotated[bool, typer.Option("--repairs/--no-repairs", help="Cross-layer equalization before "
                                          "calibration and bias correction after.")] = True,
    precision: Annotated[str, typer.Option(help="INT8 targets: int8 (every layer the target quantizes) or auto "
                                           "(keep the most sensitive layers float, FP16 where the target has it, "
                                           "until the drop on --eval-data is within --max-drop; unlabelled "
                                           "--eval-data: agreement with fp32).")] = "int8",
    candidates: Annotated[str | None, typer.Option(help="--target auto-int8: comma-separated targets to compare "
                                                   "(default: the installed ones of onnx-fp32, onnx-int8, "
                                                   "openvino-fp32, openvino-fp16, openvino-int8).")] = None,
    runs: Annotated[int | None, typer.Option(min=1, help="--target auto-int8: timed predictions per candidate "
                                             "(default 20; the medians are compared).")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="--target auto-int8: CPU threads per inference while "
                                                "timing (default: this machine's cores).")] = None,
) -> None:
    """Export a model to a deploy bundle: ONNX opset 17, graph passes, manifest with hashes.

    INT8 targets (onnx-int8) calibrate on --calib-data and write the accuracy-drop report
    (report.json, report.html, report.png) into the bundle. --target auto-int8 exports every
    candidate, times them here and keeps the fastest within --max-drop (selection.json says why).
    """
    import dataclasses

    from edgekit.api import ExportOptions, export
    from edgekit.auto_target import AUTO_TARGET, SELECTION_NAME, SelectionOptions

    options = ExportOptions(
        weights=weights, imgsz=imgsz, batch=batch, dynamic_batch=dynamic_batch, mean=mean, std=std,
        channel_order=channel_order, resize=resize, num_classes=num_classes, labels=labels, task=task,
        output_names=tuple(output_name) if output_name else None, calib_data=calib_data,
        calib_samples=calib_samples, observer=observer, percentile=percentile, eval_data=eval_data,
        max_drop=max_drop, strict=strict, repairs=repairs, precision=precision, progress=True,
    )
    given: dict[str, Any] = {k: v for k, v in (("candidates", candidates), ("runs", runs), ("threads", threads))
                             if v is not None}
    selection = SelectionOptions(**given) if given or target == AUTO_TARGET else None
    if calib_data is None:
        with console.status(f"exporting {model} to {target}..."):
            result = export(model, out=out, target=target, options=options, selection=selection)
    else:  # calibration and evaluation draw their own progress bars (one live display at a time)
        console.print(f"exporting {model} to {target}, calibrating on {calib_data}...", soft_wrap=True)
        # --strict is checked below, once the bundle and its report have been printed (auto-int8 refuses it)
        result = export(model, out=out, target=target, selection=selection,
                        options=options if target == AUTO_TARGET else dataclasses.replace(options, strict=False))
    if result.selection is not None:
        _print_selection(result.selection)
    chosen = f"{target} chose {result.manifest.target}, see {SELECTION_NAME}" if result.selection else target
    console.print(f"[bold]{result.manifest.model}[/bold] -> {result.bundle}/ ({chosen})", soft_wrap=True)
    for graph in result.manifest.graphs:
        line = f"  {graph.path}: {graph.size_bytes / 1e6:.2f} MB, sha256 {graph.sha256[:16]}…, {graph.precision}"
        if graph.role in result.node_counts:
            before, after = result.node_counts[graph.role]
            line += f", {before} -> {after} nodes after {len(result.passes.get(graph.role, []))} graph passes"
        else:  # an INT8 bundle's fp32 reference, the report's baseline
            line += ", reference for the accuracy-drop report"
        console.print(line, soft_wrap=True)
    if result.report is not None:
        _print_report(result.report)
        if strict:
            result.report.enforce()


def _cpu_line(cpu: dict[str, Any]) -> str:
    """``CPU: model (machine, N cores) ISA: flags`` from ``cpu_description()``."""
    return f"CPU: {cpu['model']} ({cpu['machine']}, {cpu['cores']} cores) ISA: {' '.join(cpu['isa']) or '-'}"


def _percent(value: float | None) -> str:
    return _fmt(None if value is None else 100 * value, 2)


def _print_selection(selection: Selection) -> None:
    key = selection.metric["key"]
    table = Table(title=f"auto-int8: p50 ms end to end ({selection.runs} runs, {selection.threads} threads), "
                        f"{key} %, drop pt (budget {selection.max_drop:.2f}), graph MB")
    numeric = ("ms", key, "drop", "MB")
    for column in ("target", "backend", *numeric, "reason"):
        table.add_column(column, no_wrap=column != "reason", justify="right" if column in numeric else "left")
    for c in selection.candidates:
        table.add_row(c.target, c.backend, f"{c.latency_ms:.2f}", _percent(c.metric), _fmt(c.drop_pt, 2),
                      f"{c.size_bytes / 1e6:.2f}", ("chosen: " if c.chosen else "") + c.reason,
                      style="bold green" if c.chosen else None if c.meets_budget else "red")
    console.print(table)
    reference = selection.reference
    console.print(f"  {_cpu_line(selection.cpu)}", soft_wrap=True, highlight=False)
    console.print(f"  drops against fp32 {key} {_percent(reference['metric'])}: {reference['source']}",
                  soft_wrap=True, highlight=False)
    if selection.int8_report:
        console.print(f"  INT8 was not chosen; its accuracy-drop report is kept as {selection.int8_report}",
                      soft_wrap=True, highlight=False)


def _print_report(report: Report) -> None:
    colour = {"PASS": "green", "FAIL": "red"}.get(report.verdict, "yellow")
    console.print(f"[bold {colour}]{report.summary()}[/bold {colour}]", soft_wrap=True, highlight=False)
    for note in report.notes:
        console.print(f"  {note}", soft_wrap=True, highlight=False)
    console.print(f"  report: {report.bundle}/report.html (+ report.json, report.png)", soft_wrap=True,
                  highlight=False)


@app.command("report")
def report_command(
    bundle: Annotated[Path, typer.Argument(help="A quantized bundle (written by an INT8 target such as onnx-int8).")],
    eval_data: Annotated[Path | None, typer.Option(help="Labelled images disjoint from calibration; default: the "
                                                   "split the bundle's report used.")] = None,
    max_drop: Annotated[float | None, typer.Option(help="Accuracy budget in points; default: the report's "
                                                   "(1.0).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Exit non-zero when the report says FAIL.")] = False,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads per inference for evaluation and timing.")] = 1,
) -> None:
    """Re-measure a quantized bundle (fp32 vs INT8 metric, per-layer error, latency) and rewrite its report."""
    from edgekit.report import regenerate

    report = regenerate(bundle, eval_data=eval_data, max_drop=max_drop, threads=threads, progress=True)
    _print_report(report)
    if strict:
        if report.verdict == "NOT EVALUATED":
            raise EdgekitError("--strict needs an evaluation: pass --eval-data DIR.")
        report.enforce()


@app.command("sensitivity")
def sensitivity_command(
    bundle: Annotated[Path, typer.Argument(help="A quantized bundle (written by an INT8 target).")],
    calib_data: Annotated[Path, typer.Option(help="The calibration folder the bundle was exported with (bias "
                                             "correction is redone on the same samples).")],
    eval_data: Annotated[Path, typer.Option(help="Evaluation images disjoint from calibration: labelled, or plain "
                                            "photos (effects are then agreement with fp32).")],
    images: Annotated[int | None, typer.Option(min=1, help="Score metric effects on at most this many evaluation "
                                               "images.")] = None,
    top: Annotated[int, typer.Option(min=1, help="Rows to print.")] = 15,
) -> None:
    """Per-layer sensitivity: each layer and tensor INT8 alone and float alone, ranked; into the bundle's report."""
    from edgekit.precision.bundle_sensitivity import analyze_bundle

    with console.status(f"measuring every layer of {bundle} on its own..."):
        result = analyze_bundle(bundle, calib_data, eval_data, images=images)
    console.print(f"{bundle}: {len(result.rows)} units, {result.mode} ({result.metric}), drop of the bundle's "
                  f"recipes {result.drop_int8:.2f} pt, {result.seconds:.1f} s", soft_wrap=True, highlight=False)
    console.print("most sensitive first: rank, graph, kind, name (op): metric won back float alone / lost INT8 "
                  "alone (pt), output SQNR INT8 alone (dB), INT8 steps per channel", highlight=False)
    for r in result.rows[:top]:
        console.print(f"  {r['rank']:>3} {r['role']} {r['kind']:<6} {r['name']} ({r['op_type']}): "
                      f"{_fmt(r['float_only_gain'], 2)} / {_fmt(r['int8_only_drop'], 2)} pt, "
                      f"{r['output_sqnr_db']:.1f} dB, steps {'-' if r['steps'] is None else r['steps']}",
                      soft_wrap=True, highlight=False)
    console.print(f"  written: {bundle}/sensitivity.json, sensitivity.png; report: {bundle}/report.html",
                  soft_wrap=True, highlight=False)


@app.command("train")
def train_command(
    model: Annotated[str, typer.Option("--model", "-m", help="Registered model name (see `edgekit models`).")],
    data: Annotated[Path, typer.Option(help="Training data in any layout edgekit reads (class folders, COCO, "
                                       "image/mask folders); the class count comes from it.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Weights to write (.safetensors, fp16); a JSON card "
                                      "with the input size, preprocessing and command goes beside it.")],
    epochs: Annotated[int, typer.Option(help="Passes over the data.")] = 10,
    imgsz: Annotated[int | None, typer.Option(help="Square input side; default per task (96 classify, "
                                              "256 segment).")] = None,
    batch: Annotated[int | None, typer.Option(help="Images per step; default per task.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate; default per task.")] = None,
    optimizer: Annotated[str | None, typer.Option(help="adamw or sgd; default per task.")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="On conv/linear weights; default per task.")] = None,
    warmup_epochs: Annotated[float | None, typer.Option(help="Linear warm-up length; default per task.")] = None,
    seed: Annotated[int, typer.Option(help="Seeds init, data order and augmentation.")] = 0,
    num_classes: Annotated[int | None, typer.Option(help="Head size; default: the dataset's classes.")] = None,
    limit: Annotated[int | None, typer.Option(help="Train on a seeded random subset of this many images.")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads for the run.")] = None,
    val: Annotated[Path | None, typer.Option(help="Held-out data scored after training; the metric goes "
                                             "into the card.")] = None,
    init: Annotated[Path | None, typer.Option(help="Start from these weights (a shipped fixture or an earlier "
                                              "run) to fine-tune or continue, instead of a fresh init.")] = None,
) -> None:
    """Train a zoo model (classify, segment or detect) and write fp16 safetensors weights."""
    from edgekit.train import TrainConfig, train

    result = train(TrainConfig(model=model, data=data, out=out, epochs=epochs, imgsz=imgsz, batch=batch, lr=lr,
                               optimizer=optimizer, weight_decay=weight_decay, warmup_epochs=warmup_epochs,
                               seed=seed, num_classes=num_classes, limit=limit, threads=threads, val=val,
                               init=init))
    last = " ".join(f"{k} {v:.4f}" for k, v in result.losses[-1].items())
    console.print(f"[bold]{model}[/bold] -> {result.weights} ({result.wall_s:.0f} s; last epoch {last})")
    if result.metric is not None:
        console.print_json(data=result.metric)


@app.command("eval")
def eval_command(
    data: Annotated[Path, typer.Option(help="Labelled data in any layout edgekit reads.")],
    bundle: Annotated[Path | None, typer.Argument(help="A bundle directory: score it with the runtime SDK "
                                                  "(no torch). Leave out and give --model to score "
                                                  "PyTorch weights.")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Registered model name (see `edgekit "
                                              "models`): score it in PyTorch.")] = None,
    weights: Annotated[Path | None, typer.Option(help="With --model: weights (.safetensors or .pt state dict); "
                                                 "the card beside them sets input size and "
                                                 "preprocessing.")] = None,
    backend: Annotated[str, typer.Option(help="With BUNDLE: onnxruntime, openvino, litert or tensorrt.")]
    = "onnxruntime",
    reference: Annotated[bool, typer.Option(help="With BUNDLE: score its fp32 reference graphs instead of "
                                            "the quantized ones.")] = False,
    threads: Annotated[int | None, typer.Option(min=1, help="With BUNDLE: CPU threads per inference.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the metrics to this file.")] = None,
    limit: Annotated[int | None, typer.Option(help="With --model: score only the first N images.")] = None,
    batch: Annotated[int, typer.Option(help="With --model: images per forward pass.")] = 16,
    imgsz: Annotated[tuple[int, int] | None, typer.Option(metavar="H W", help="With --model: input height and "
                                                          "width; default: the weights' card, else the model's "
                                                          "registered size.")] = None,
) -> None:
    """Score a bundle (runtime SDK) or PyTorch weights on labelled data: top-1/top-5, COCO mAP/AP50 or mIoU as JSON."""
    import json

    if (bundle is None) == (model is None):
        raise EdgekitError("give either a BUNDLE directory (runtime evaluation) or --model NAME (PyTorch "
                           "evaluation), not both and not neither.")
    if bundle is not None:
        from edgekit.bundle_eval import evaluate_bundle

        metrics = evaluate_bundle(bundle, data, reference=reference, backend=backend, threads=threads,
                                  progress=True)
        metrics = {"bundle": str(bundle), "backend": backend, "graphs": "fp32 reference" if reference else
                   "bundle", **metrics}
    else:
        from edgekit.evaluate import evaluate
        from edgekit.train.checkpoint import card_path

        assert model is not None
        metrics = evaluate(model, weights, data, limit=limit, imgsz=imgsz, batch_size=batch, progress=True)
        if weights is not None and metrics["preprocessing"] == "registered defaults":
            # Weights trained by `edgekit train` carry a card with their input size; without it the
            # registered size (e.g. 1024x2048 for a segmenter) can score good weights near zero.
            typer.echo(f"warning: no card beside '{weights}' (expected {card_path(weights).name}): scoring at "
                       f"the registered input size {metrics['imgsz'][0]}x{metrics['imgsz'][1]} with the task's "
                       "default normalisation. Copy the card next to the weights, or pass --imgsz H W.", err=True)
    text = json.dumps(metrics, indent=1)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(text + "\n")
    typer.echo(text)


_BACKEND_HELP = "Inference engine: auto (by board and installed packages), onnxruntime, openvino, litert or tensorrt."
_GRAPH_HELP = ("Detector bundles: pipeline (stage graphs + numpy glue), single (single.onnx; onnxruntime and "
               "openvino) or auto (single only where it is the faster on that backend).")
# What predict counts per task, for the printed summary line.
_RESULT_NOUNS = {"classify": "classes", "detect": "detections", "segment": "classes present"}


@app.command("predict")
def predict_command(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory (written by `edgekit export --out`).")],
    images: Annotated[Path, typer.Argument(help="An image file, or a folder of images (searched recursively).")],
    backend: Annotated[str, typer.Option(help=_BACKEND_HELP)] = "auto",
    save: Annotated[Path | None, typer.Option(help="Draw boxes, masks or classes on the images: a folder "
                                              "(one <name>.png per image) or, for one image, a .png/.jpg "
                                              "file.")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads per inference; default: the "
                                                "engine's.")] = None,
    graph: Annotated[str, typer.Option(help=_GRAPH_HELP)] = "auto",
) -> None:
    """Run a deploy bundle on images with the numpy runtime SDK (no torch) and print the results."""
    from edgekit.data.image_io import is_image_file, list_images, load_image
    from edgekit.errors import BundleError
    from edgekit.runtimes import load, render

    paths = [images] if images.is_file() else list_images(images) if images.is_dir() else []
    if not paths:
        raise BundleError(f"'{images}' is neither an image file nor a folder with images.")
    single_file = save is not None and is_image_file(save)
    if single_file and len(paths) > 1:
        raise BundleError(f"--save {save} names one picture but '{images}' holds {len(paths)} images; "
                          "give a folder to --save.")
    model = load(bundle, backend=backend, threads=threads, graph=graph)
    if save is not None and not single_file:
        save.mkdir(parents=True, exist_ok=True)
    noun = _RESULT_NOUNS[model.manifest.task]
    mode = f", {model.graph_mode} graph" if model.manifest.task == "detect" else ""
    console.print(f"{model.manifest.model} ({model.manifest.task}) on {model.backend}{mode}", soft_wrap=True)
    for path in paths:
        image = load_image(path)
        result = model.predict(image)
        console.print(f"{path.name}: {len(result)} {noun}", highlight=False, soft_wrap=True)
        for line in result.summary().splitlines():
            console.print(f"  {line}", highlight=False, soft_wrap=True)
        if save is not None:
            out = save if single_file else save / f"{path.stem}.png"
            render(image, result).save(out)
            console.print(f"  drawn -> {out}", highlight=False, soft_wrap=True)


@app.command("bench")
def bench_command(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory (written by `edgekit export --out`).")],
    backend: Annotated[str, typer.Option(help=_BACKEND_HELP)] = "auto",
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads per inference; default: the "
                                                "engine's.")] = None,
    runs: Annotated[int, typer.Option(min=1, help="Timed predictions.")] = 50,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed predictions first.")] = 5,
    image: Annotated[Path | None, typer.Option(help="Image to predict; default: the bundled sample "
                                               "scene.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the full result to this "
                                                  "JSON file.")] = None,
    graph: Annotated[str, typer.Option(help=_GRAPH_HELP)] = "auto",
) -> None:
    """Time a bundle end to end: latency p50/p90/p99, FPS, peak memory and the pre / infer / post split."""
    import json

    from edgekit.runtimes import benchmark, load

    model = load(bundle, backend=backend, threads=threads, graph=graph)
    picture = image or Path(__file__).parent / "data" / "samples" / "sample.jpg"
    with console.status(f"timing {runs} predictions on {model.backend}..."):
        r = benchmark(model, picture, runs=runs, warmup=warmup)
    lat, split, total = r.latency_ms, r.split_ms, r.latency_ms["mean"]
    lines = [
        f"{r.model} ({r.task}, {r.target}) on {r.backend}, threads {r.threads or 'default'}, "
        f"{r.input_size[0]}x{r.input_size[1]}, {r.runs} runs after {r.warmup} warm-up, {model.graph_mode} graph",
        f"latency ms: p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}  mean {total:.2f}",
        f"FPS {r.fps:.1f}  peak memory " + ("-" if r.peak_rss_mb is None else f"{r.peak_rss_mb:.0f} MiB"),
        "split ms: " + "  ".join(f"{k} {v:.2f} ({100 * v / total:.1f}%)" for k, v in split.items())
        + f"  -> pre+post {100 * r.pre_post_share:.1f}%",
        _cpu_line(r.cpu),
    ]
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({**r.to_dict(), "graph": model.graph_mode}, indent=1) + "\n")


data_app = typer.Typer(help="Datasets: synthetic shapes for every task.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("synth")
def synth_command(
    task: Annotated[str, typer.Option(help="cls (class folders), det (COCO JSON) or seg (image/mask folders).")],
    out: Annotated[Path, typer.Option(help="Folder to write; must not exist unless --overwrite.")],
    n: Annotated[int, typer.Option(help="Number of images.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed writes byte-identical files.")] = 0,
    imgsz: Annotated[int | None, typer.Option(help="Square image size in pixels (default: 96 cls, 320 det, 256 seg).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder at --out.")] = False,
) -> None:
    """Write a deterministic synthetic shapes dataset (6 shape classes) in a real on-disk format.

    The same loaders that read ImageNet folders, COCO JSON and mask folders read the result, so
    it serves training, calibration and evaluation with ground truth.
    """
    from edgekit.data import synth_main

    path = synth_main(task, n, seed, out, imgsz, overwrite=overwrite)
    console.print(f"wrote {n} {task} images to {path}")


@app.command("build-engine")
def build_engine_command(
    bundle: Annotated[Path, typer.Argument(help="A trt-int8 or trt-fp16 bundle (edgekit export --target trt-*).")],
    fp16: Annotated[bool, typer.Option("--fp16", help="Allow FP16 kernels. Neither --fp16 nor --int8: the "
                                       "bundle's precision (trt-int8: INT8 + FP16).")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Allow INT8 kernels (graphs the export calibrated).")] = False,
    dla: Annotated[int | None, typer.Option("--dla", metavar="N", help="Build for DLA core N with GPU fallback "
                                            "(Jetson AGX Orin / Orin NX).")] = None,
    workspace: Annotated[int, typer.Option("--workspace", metavar="MB", help="TensorRT workspace memory pool "
                                           "limit in MiB.")] = 1024,
    implicit: Annotated[bool, typer.Option("--implicit", help="INT8 from the calibration cache on the fp32 ONNX "
                                           "(implicit quantization) instead of the QDQ ONNX.")] = False,
    out: Annotated[Path | None, typer.Option("--out", metavar="FILE", help="Engine file to write (single-graph "
                                             "bundles); default <bundle>/<role>.engine, recorded in the "
                                             "manifest.")] = None,
    max_batch: Annotated[int, typer.Option("--max-batch", help="Largest batch of a --dynamic-batch "
                                           "bundle's engine.")] = 1,
) -> None:
    """Build the TensorRT engine of a bundle on this device, or print the equivalent trtexec command."""
    from edgekit.engine import EngineOptions, build_engine

    options = EngineOptions(fp16=fp16, int8=int8, dla_core=dla, workspace_mb=workspace, implicit=implicit, out=out,
                            max_batch=max_batch)
    with console.status(f"building TensorRT engine(s) for {bundle}..."):
        records = build_engine(bundle, options)
    for r in records:
        console.print(f"{r.role}: {r.engine} ({r.precision}, {r.mode}, {r.size_bytes / 1e6:.2f} MB) "
                      f"TensorRT {r.tensorrt} on {r.device}", highlight=False, soft_wrap=True)


app.add_typer(bundle_app, name="bundle", help="Pack a bundle into a tar archive; unpack an archive safely.")
app.add_typer(experimental_app, name="experimental",
              help="EXPERIMENTAL modes with no backend kernels (Precision Gating), measured in simulation.")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app; edgekit's own errors print as one message, exit code 1."""
    try:
        app(args=argv, standalone_mode=False)
    except EdgekitError as exc:
        console.print(f"[bold red]{type(exc).__name__}:[/bold red] {exc}", highlight=False, soft_wrap=True)
        return 1
    except typer.TyperException as exc:  # usage errors: missing option, bad value (typer's click)
        exc.show()
        return exc.exit_code
    except typer.Abort:
        console.print("aborted")
        return 130
    except (typer.Exit, SystemExit) as exc:  # --help, typer.Exit(code)
        return int(getattr(exc, "exit_code", getattr(exc, "code", 0)) or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
