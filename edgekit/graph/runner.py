"""Run the graph passes in their declared order and record what each one did.

The order, and why:

1. ``fold_batchnorm`` first, on the graph as exported: every BatchNormalization goes into a
   conv (or becomes Mul/Add) under a pass that reports it, before any generic rewriting.
2. ``cleanup``: torch writes split points and reshape shapes as Shape/Gather/Div arithmetic;
   the channel passes below can only read them once they are folded into constants.
3. ``fuse_channel_shuffle``: shuffles become relabellings absorbed by conv weights; Splits
   become static (strided) slices.
4. ``remove_concat_split``: after the shuffles are gone, a Concat may meet a Split at its own
   boundaries; both cancel.
5. ``cleanup`` again: drops the constants and nodes the passes orphaned, re-infers shapes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import onnx

from edgekit.graph.cleanup import cleanup
from edgekit.graph.fold_batchnorm import fold_batchnorm
from edgekit.graph.fuse_channel_shuffle import fuse_channel_shuffle
from edgekit.graph.graph_view import op_counts
from edgekit.graph.remove_concat_split import remove_concat_split

GraphPass = Callable[[onnx.ModelProto], onnx.ModelProto]

PASSES: tuple[GraphPass, ...] = (fold_batchnorm, cleanup, fuse_channel_shuffle, remove_concat_split, cleanup)


@dataclass(frozen=True)
class PassRecord:
    """What one pass did to a graph.

    Args:
        name: the pass (its function name).
        before: node count per op type before the pass.
        after: node count per op type after it.
        description: the change in words, e.g. ``removed 16 Transpose, 32 Reshape``.
        elapsed_ms: wall time the pass took.
    """

    name: str
    before: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)
    description: str = ""
    elapsed_ms: float = 0.0

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict."""
        return asdict(self)


def optimize(model: onnx.ModelProto, passes: Sequence[GraphPass] = PASSES) -> tuple[onnx.ModelProto, list[PassRecord]]:
    """Run ``passes`` in order on a copy of ``model``; return the result and one record per pass.

    Raises:
        GraphPassError: a pass met a graph it cannot rewrite safely (the message says which).
    """
    records = []
    for graph_pass in passes:
        before = op_counts(model)
        start = time.perf_counter()
        model = graph_pass(model)
        elapsed_ms = (time.perf_counter() - start) * 1e3
        after = op_counts(model)
        records.append(PassRecord(graph_pass.__name__, before, after, describe_change(before, after), elapsed_ms))
    return model, records


def describe_change(before: dict[str, int], after: dict[str, int]) -> str:
    """The node-count difference in words: ``removed 52 BatchNormalization; added 2 Mul``."""
    ops = sorted(set(before) | set(after))
    removed = [f"{before.get(op, 0) - after.get(op, 0)} {op}" for op in ops if before.get(op, 0) > after.get(op, 0)]
    added = [f"{after.get(op, 0) - before.get(op, 0)} {op}" for op in ops if after.get(op, 0) > before.get(op, 0)]
    parts = ([f"removed {', '.join(removed)}"] if removed else []) + ([f"added {', '.join(added)}"] if added else [])
    return "; ".join(parts) or "no node added or removed"
