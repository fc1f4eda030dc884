"""Parameter and MAC counts, with torch's own flop counter."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgekit.models.registry import ModelSpec


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int], channels: int = 3) -> int:
    """Multiply-accumulates of one forward pass at batch 1.

    ``torch.utils.flop_counter.FlopCounterMode`` counts 2 FLOPs per MAC of convolutions and
    matrix products (grouped and depthwise convs included) and nothing for element-wise ops,
    which is the convention of the papers' "FLOPs"/"MAdds" columns; we halve it.
    """
    return _count_macs_on(model, input_size, "cpu", channels)


def measure(spec: ModelSpec) -> tuple[int, int]:
    """(params, MACs) of a registered model at its registered input size and class count.

    Built on the meta device first (no memory, no compute: a 1024x2048 segmenter counts in
    milliseconds); models whose forward depends on tensor values (detectors' NMS) are
    counted on the CPU instead.
    """
    try:
        with torch.device("meta"):
            model = spec.build()
        return count_params(model), _count_macs_on(model, spec.input_size, "meta")
    except (NotImplementedError, RuntimeError):
        model = spec.build()
        return count_params(model), count_macs(model, spec.input_size)


@torch.no_grad()
def _count_macs_on(model: nn.Module, input_size: tuple[int, int], device: str, channels: int = 3) -> int:
    model = model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, channels, *input_size, device=device))
    return counter.get_total_flops() // 2
