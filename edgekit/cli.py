"""The ``edgekit`` command line. Each command is a thin wrapper over the Python API."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from edgekit.errors import EdgekitError
from edgekit.inputspec import ChannelOrder, ResizeMode

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
    from edgekit.exporters.registry import get_spec, list_targets

    return "Export target: " + "; ".join(f"{n} ({get_spec(n).summary})" for n in list_targets()) + "."


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
    channel_order: Annotated[ChannelOrder | None, typer.Option(help="Colour order the network expects; "
                                                               "default rgb.")] = None,
    resize: Annotated[ResizeMode | None, typer.Option(help="How the runtime fits an image to the input size; "
                                                      "default: shorter-side-crop for classifiers, stretch for "
                                                      "segmenters, letterbox for detectors.")] = None,
    num_classes: Annotated[int | None, typer.Option(help="Build the model with this many classes "
                                                    "(zoo models and file.py:factory).")] = None,
    labels: Annotated[Path | None, typer.Option(help="Text file of class names, one per line, "
                                                "stored in the manifest.")] = None,
    task: Annotated[str | None, typer.Option(help="classify or segment: what your own model's output means "
                                             "(default classify); zoo models know their task.")] = None,
    output_name: Annotated[list[str] | None, typer.Option(help="Graph output name for your own model, once per "
                                                          "output (default output0, output1, ...).")] = None,
) -> None:
    """Export a model to a deploy bundle: ONNX opset 17, graph passes, manifest with hashes."""
    from edgekit.api import ExportOptions, export

    options = ExportOptions(
        weights=weights, imgsz=imgsz, batch=batch, dynamic_batch=dynamic_batch, mean=mean, std=std,
        channel_order=channel_order, resize=resize, num_classes=num_classes, labels=labels, task=task,
        output_names=tuple(output_name) if output_name else None,
    )
    with console.status(f"exporting {model} to {target}..."):
        result = export(model, out=out, target=target, options=options)
    console.print(f"[bold]{result.manifest.model}[/bold] -> {result.bundle}/ ({target})")
    for graph in result.manifest.graphs:
        before, after = result.node_counts.get(graph.role, (0, 0))
        console.print(
            f"  {graph.path}: {graph.size_bytes / 1e6:.2f} MB, sha256 {graph.sha256[:16]}…, "
            f"{before} -> {after} nodes after {len(result.passes.get(graph.role, []))} graph passes"
        )


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


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app; edgekit's own errors print as one message, exit code 1."""
    try:
        app(args=argv, standalone_mode=False)
    except EdgekitError as exc:
        console.print(f"[bold red]{type(exc).__name__}:[/bold red] {exc}", highlight=False, soft_wrap=True)
        return 1
    except (typer.Exit, SystemExit) as exc:  # --help, typer.Exit(code)
        return int(getattr(exc, "exit_code", getattr(exc, "code", 0)) or 0)
    except typer.Abort:
        console.print("aborted")
        return 130
    except Exception as exc:  # click usage errors arrive as ClickException
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
