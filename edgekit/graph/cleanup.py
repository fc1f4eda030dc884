"""``cleanup``: constant folding and dead-node removal with onnxslim (pinned, 0.1.98).

torch's tracer writes the bounds of ``chunk``/``split`` and the shapes of reshapes as
Shape -> Gather -> Div arithmetic on the (static) input shape; folding them into constants is
what lets ``fuse_channel_shuffle`` and ``remove_concat_split`` read them, and after those
passes it removes the constants and nodes they orphaned.

onnxslim's own pattern fusions (conv+BN, Transpose elimination, ...) are switched off: each
structural change belongs to a named edgekit pass with its own test, and cleanup stays
cleanup. Its shape inference runs, so later passes see static shapes in ``value_info``.
(onnxslim sets onnxruntime's default logger severity to "error" when it runs.)
"""

from __future__ import annotations

import onnx

from edgekit.errors import GraphPassError, MissingDependencyError

# onnxslim optimisation names (onnxslim.core.optimization.OptimizationSettings) we skip.
_SKIPPED = ["graph_fusion"]


def cleanup(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constants, drop dead nodes, infer shapes; return a new model.

    The opset, graph input/output names and metadata properties are kept.

    Raises:
        MissingDependencyError: onnxslim is not installed.
        GraphPassError: onnxslim changed the opset or the graph's input/output names.
    """
    try:
        import onnxslim
    except ImportError as exc:
        raise MissingDependencyError(
            "the cleanup pass needs onnxslim; install it with: pip install 'edgekit[export]'"
        ) from exc
    work = onnx.ModelProto()
    work.CopyFrom(model)
    try:
        out = onnxslim.slim(work, skip_optimizations=_SKIPPED)
    except Exception as exc:  # onnxslim raises whatever its internals raise
        raise GraphPassError(
            f"onnxslim {onnxslim.__version__} failed on this graph ({type(exc).__name__}: {exc}). "
            "Run optimize() with a passes tuple without cleanup to skip it."
        ) from exc
    if out is None:
        raise GraphPassError("onnxslim returned no model; run optimize() without the cleanup pass.")
    _check_interface(model, out)
    # onnxslim rebuilds the model from its own graph IR; copy back what it does not carry.
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    for field in ("producer_name", "producer_version", "doc_string", "model_version", "domain"):
        setattr(out, field, getattr(model, field))
    return out


def _check_interface(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    opsets = {(o.domain or "ai.onnx"): o.version for o in before.opset_import}
    new_opsets = {(o.domain or "ai.onnx"): o.version for o in after.opset_import}
    if new_opsets.get("ai.onnx") != opsets.get("ai.onnx"):
        raise GraphPassError(
            f"onnxslim changed the opset from {opsets.get('ai.onnx')} to {new_opsets.get('ai.onnx')}; "
            "edgekit's targets need the exported opset. Check the pinned onnxslim version (0.1.98)."
        )
    for kind in ("input", "output"):
        old = [v.name for v in getattr(before.graph, kind) if v.name not in {t.name for t in before.graph.initializer}]
        new = [v.name for v in getattr(after.graph, kind)]
        if old != new:
            raise GraphPassError(
                f"onnxslim changed the graph {kind}s from {old} to {new}; downstream stages address "
                "tensors by these names. Check the pinned onnxslim version (0.1.98)."
            )
