"""``torch_to_onnx``: a PyTorch module to an opset-17 ONNX graph with named inputs and outputs.

Uses the TorchScript-based exporter (``dynamo=False``): torch 2.13's default dynamo exporter
writes opset 18 whatever ``opset_version`` says, and opset 17 is what JetPack 6 TensorRT
10.3, OpenVINO and onnx2tf all read (DESIGN.md, canonical IR). The written opset is checked.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Sequence

import onnx
import torch
from torch import nn

from edgekit.errors import ExportError

OPSET = 17
BATCH_DIM = "batch"

# Messages of the legacy exporter's deprecation notices: we use it on purpose (see above).
_QUIET = (r"You are using the legacy TorchScript-based ONNX export", r"The feature will be removed")
_OP_NAME = re.compile(r"([A-Za-z_]\w*::\w+(?:\.\w+)*)")


def torch_to_onnx(
    module: nn.Module,
    example: torch.Tensor,
    *,
    input_name: str = "images",
    output_names: Sequence[str],
    dynamic_batch: bool = False,
) -> onnx.ModelProto:
    """Export ``module`` (in eval mode) traced on ``example`` to an in-memory opset-17 ModelProto.

    Args:
        module: the network; it is put in eval mode.
        example: an input of the exported shape (its batch size is the fixed batch).
        input_name: name of the graph input.
        output_names: one name per output tensor, in the order ``forward`` returns them.
        dynamic_batch: make dimension 0 of the input and of every output symbolic (``batch``).

    Raises:
        ExportError: an op without an ONNX opset-17 conversion (naming the op and the module
            it is called from), a tracing failure, or an opset other than 17 written.
    """
    module = module.eval()
    names = [input_name, *output_names]
    if len(set(names)) != len(names):
        raise ExportError(f"input and output names must be unique, got {names}.")
    dynamic_axes = {n: {0: BATCH_DIM} for n in names} if dynamic_batch else None
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            for message in _QUIET:
                warnings.filterwarnings("ignore", message=message)
            torch.onnx.export(
                module, (example,), buffer, dynamo=False, opset_version=OPSET, do_constant_folding=True,
                input_names=[input_name], output_names=list(output_names), dynamic_axes=dynamic_axes,
            )
    except torch.onnx.errors.UnsupportedOperatorError as exc:
        raise ExportError(_unsupported_message(module, example, str(exc))) from exc
    except (torch.onnx.errors.OnnxExporterError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"torch.onnx.export failed: {first}") from exc
    model = onnx.load_from_string(buffer.getvalue())
    if len(model.graph.output) != len(output_names):
        raise ExportError(
            f"the model returns {len(model.graph.output)} output tensor(s) but {len(output_names)} output name(s) "
            f"were given ({', '.join(output_names)}); pass one name per output."
        )
    opset = opset_of(model)
    if opset != OPSET:
        raise ExportError(
            f"the exporter wrote opset {opset}, not {OPSET}; edgekit's targets need opset {OPSET}. "
            f"This torch ({torch.__version__}) may have dropped the TorchScript exporter (dynamo=False)."
        )
    return model


def opset_of(model: onnx.ModelProto) -> int | None:
    """The default-domain (``ai.onnx``) opset a model imports."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return None


def _unsupported_message(module: nn.Module, example: torch.Tensor, error: str) -> str:
    """Name the unsupported op and where it is called, from a TorchScript trace's scopes."""
    found = _OP_NAME.search(error)
    op = found.group(1) if found else "an operator"
    where = _find_op_scope(module, example, op) if found else None
    if where is None:
        location = "from a module that could not be located (the model does not trace)"
    elif where == "":
        location = f"in the forward of the top-level {type(module).__name__}"
    else:
        location = f"in module '{where}' ({type(module.get_submodule(where)).__name__})"
    return (
        f"'{op}' has no ONNX opset-{OPSET} conversion; it is called {location}. Replace it with "
        "exportable ops (or move it out of the model into pre/post-processing). "
        f"Exporter said: {error.strip().splitlines()[0]}"
    )


def _find_op_scope(module: nn.Module, example: torch.Tensor, op: str) -> str | None:
    # A trace records, for each node, the nesting of module calls that produced it
    # ("__module.head/__module.head.1"); the last segment is the module's qualified name.
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module, (example,), check_trace=False)
    except Exception:  # a model that cannot be traced at all: report without a location
        return None
    for node in traced.inlined_graph.nodes():
        if node.kind() == op:
            scope = node.scopeName().split("/")[-1]
            return scope.removeprefix("__module").removeprefix(".")
    return None
