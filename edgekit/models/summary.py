"""A compact architecture summary: submodules, their parameters and what layers they hold."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from torch import nn

_COUNTED = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm2d)


@dataclass(frozen=True)
class SummaryRow:
    """One submodule in the summary."""

    name: str
    type_name: str
    level: int
    params: int
    layers: str


def _layer_counts(module: nn.Module) -> str:
    counts: Counter[str] = Counter()
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels:
            counts[f"DWConv{m.kernel_size[0]}x{m.kernel_size[1]}"] += 1
        elif isinstance(m, nn.Conv2d):
            counts[f"Conv{m.kernel_size[0]}x{m.kernel_size[1]}"] += 1
        elif isinstance(m, _COUNTED):
            counts[type(m).__name__] += 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))


def summarize(model: nn.Module, depth: int = 1) -> list[SummaryRow]:
    """Rows for the submodules of ``model`` down to ``depth`` levels."""
    rows: list[SummaryRow] = []

    def visit(module: nn.Module, prefix: str, level: int) -> None:
        for name, child in module.named_children():
            full = f"{prefix}.{name}" if prefix else name
            rows.append(
                SummaryRow(full, type(child).__name__, level,
                           sum(p.numel() for p in child.parameters()), _layer_counts(child))
            )
            if level + 1 < depth:
                visit(child, full, level + 1)

    visit(model, "", 0)
    return rows
