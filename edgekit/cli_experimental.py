"""``edgekit experimental``: modes with no backend kernels yet, measured in simulation only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from edgekit.errors import EdgekitError

experimental_app = typer.Typer(
    help="EXPERIMENTAL: training-time modes no backend (TensorRT, OpenVINO, TFLite, onnxruntime) can run yet.",
    no_args_is_help=True,
)


@experimental_app.command("precision-gating")
def precision_gating_command(
    model: Annotated[str, typer.Option("--model", "-m", help="A zoo classifier (see `edgekit models`).")],
    weights: Annotated[Path, typer.Option(help="Its trained weights (with their card: input size, preprocessing).")],
    train_data: Annotated[Path, typer.Option(help="Class folders to fine-tune on.")],
    eval_data: Annotated[Path, typer.Option(help="Class folders to evaluate on.")],
    steps: Annotated[int, typer.Option(min=1, help="Quantization-aware fine-tuning steps per QAT variant.")] = 150,
    batch: Annotated[int, typer.Option(min=1, help="Images per step.")] = 16,
    msb_bits: Annotated[int, typer.Option(min=1, max=8, help="Bits of the pass that always runs.")] = 4,
    penalty: Annotated[float, typer.Option(help="Weight of the gate-rate term in the loss.")] = 0.02,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the results to this file.")] = None,
) -> None:
    """EXPERIMENTAL Precision Gating: 8-bit activation codes, MSBs always, LSBs where the MSB result is large.

    Fine-tunes the gates' thresholds (PyTorch) and prints top-1 and the effective
    activation bit-width next to uniform INT8 and INT4 with the same budget. There are no
    backend kernels for the data-dependent second pass: nothing here can be exported to a
    bundle (edgekit.precision.gating.to_onnx writes an ONNX simulation only).
    """
    import torch

    from edgekit.inputspec import make_input_spec
    from edgekit.models import get_spec
    from edgekit.models.weights import load_weights
    from edgekit.precision import gating
    from edgekit.train.checkpoint import read_card

    typer.echo(gating.EXPERIMENTAL)
    card = read_card(weights)
    if card is None:
        raise EdgekitError(f"'{weights}' has no card beside it (the input size and preprocessing it was trained "
                           "with); train it with `edgekit train`, which writes one.")
    net = get_spec(model).build(num_classes=card.num_classes)
    load_weights(net, weights)
    pre = card.preprocessing()
    spec = make_input_spec("classify", (int(card.imgsz[0]), int(card.imgsz[1])), mean=pre.mean, std=pre.std,
                           channel_order=pre.channel_order.value, resize=pre.resize.value)
    train_x, train_y = gating.labelled_tensors(train_data, spec)
    eval_x, eval_y = gating.labelled_tensors(eval_data, spec)
    variants = {name: v for name, v in gating.VARIANTS.items() if not name.startswith("pg-")}
    variants[f"pg-8/{msb_bits}"] = (gating.GatingConfig(8, msb_bits, penalty=penalty), gating.TRAIN_THRESHOLDS)
    torch.manual_seed(0)
    results = gating.compare_variants(net.eval(), gating.batch_stream(train_x, train_y, batch),
                                      [(eval_x[k:k + 50], eval_y[k:k + 50]) for k in range(0, len(eval_x), 50)],
                                      steps=steps, variants=variants)
    for r in results:
        typer.echo(f"  {r.name:<9} top-1 {100 * r.top1:6.2f}  activation bits {r.bits:5.2f}")
    if json_out is not None:
        json_out.write_text(json.dumps([r.to_dict() for r in results], indent=1) + "\n")
