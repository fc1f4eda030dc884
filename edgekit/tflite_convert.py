"""``onnx_to_tflite``: an optimized edgekit ONNX graph to a float TFLite flatbuffer with litert-torch.

The graph is re-expressed in torch (:func:`edgekit.onnx_to_torch.onnx_to_torch`) and
converted by litert-torch, so the ``.tflite`` file carries exactly the BatchNorm folding and
channel-shuffle fusion of the ONNX graph every other target starts from (and, for INT8, the
equalized weights the recipe was calibrated on). No TensorFlow is involved.

Layout: TFLite kernels are channels-last. litert-torch keeps a PyTorch program's NCHW
tensors NCHW at the graph boundary and inserts layout TRANSPOSEs there, so 4-D inputs and
outputs are stored NHWC in the file instead (``CHANNELS_LAST``): the graph holds no layout
transpose at all, and the SDK transposes at the boundary (one numpy transpose of the image,
where the network itself would spend a TRANSPOSE op). Tensors of other ranks, and 4-D tensors a
Flatten reads (``spatial_io``), keep their order. ``TfliteGraph.inputs`` / ``outputs`` say, per
tensor, what the file holds.

fp16 (``cast_weights_fp16``): conv and fully-connected weights stored as float16 with
DEQUANTIZE ops in front, the standard TFLite fp16 form (ai-edge-quantizer's float casting).
CPU kernels compute in fp32 (XNNPACK may run fp16 where the CPU has it); the file halves.

Channel reads: the optimized ONNX graph reads ShuffleNet's halves as even and odd channels,
which litert-torch converts to STRIDED_SLICE with stride 2 and nothing else (no TRANSPOSE, no
RESHAPE). LiteRT's XNNPACK delegate does not take such a slice, though: it runs outside the
delegate and the file is slower than a plain conversion on this CPU. ``channel_reads=
"deinterleave"`` trades one TRANSPOSE per unit for a fully delegated graph (measured in
docs/benchmarks/tflite_shuffle.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import onnx
import torch
from torch import Tensor, nn

from edgekit.errors import ExportError
from edgekit.onnx_to_torch import onnx_to_torch
from edgekit.tflite_rewrite import deinterleave_channel_reads, relax_leading_dim

NCHW, NHWC = "NCHW", "NHWC"
TO_NHWC: tuple[int, int, int, int] = (0, 2, 3, 1)
TO_NCHW: tuple[int, int, int, int] = (0, 3, 1, 2)
CHANNELS_LAST = True
# Leading size a graph with a symbolic leading dimension is converted at, then relaxed to -1:
# distinctive, so it is not mistaken for a real dimension of the same size.
LEADING_TRACE_SIZE = 97
# Ops that read axis 1 of a 4-D tensor as channels: inputs read only by these, and outputs
# written by one, can be stored NHWC without a layout TRANSPOSE.
SPATIAL_OPS = frozenset({
    "Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "Relu", "Clip", "Sigmoid", "HardSwish", "HardSigmoid",
    "Add", "Sub", "Mul", "Div", "Resize", "Concat", "Slice", "Split", "ReduceMean", "Identity",
})
# The last few conversions, by ONNX bytes: the fp32, fp16 and int8 targets (and the
# conversion matrix) convert the same graph; litert-torch takes 10-20 s each time.
_CACHE_SIZE = 4
_CONVERTED: dict[tuple[str, bool, str], TfliteGraph] = {}
# How the ONNX graph's even/odd channel reads (the fused ShuffleNet shuffles) reach the file.
STRIDED_READS, DEINTERLEAVED_READS = "strided", "deinterleave"
CHANNEL_READS: tuple[str, ...] = (STRIDED_READS, DEINTERLEAVED_READS)
# Environment switches that silence the converters' progress bars while we call them.
_QUIET_ENV: Mapping[str, str] = {"LITERT_TORCH_SHOW_PROGRESS": "n", "TQDM_DISABLE": "1"}


@dataclass(frozen=True)
class TensorLayout:
    """How one graph input or output sits in the ``.tflite`` file.

    Args:
        name: the ONNX tensor name (the manifest's name).
        layout: ``NHWC`` when the file stores a 4-D NCHW tensor channels-last, else ``NCHW``
            (the ONNX order, whatever the rank).
        shape: the ONNX shape (NCHW; symbolic dimensions as strings).
    """

    name: str
    layout: str
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict."""
        return {"name": self.name, "layout": self.layout, "shape": list(self.shape)}


@dataclass(frozen=True)
class TfliteGraph:
    """A converted graph: the flatbuffer and how its boundary relates to the ONNX graph.

    Args:
        content: the ``.tflite`` flatbuffer.
        inputs, outputs: per ONNX input/output, in order, its layout in the file.
        signature: the TFLite signature key (``serving_default``).
        channel_reads: ``strided`` or ``deinterleave`` (see ``CHANNEL_READS``).
    """

    content: bytes
    inputs: tuple[TensorLayout, ...]
    outputs: tuple[TensorLayout, ...]
    signature: str = "serving_default"
    channel_reads: str = "strided"


class ChannelsLastIO(nn.Module):
    """Wraps a module so chosen inputs arrive NHWC and chosen outputs leave NHWC.

    Inputs stay positional: litert-torch names them ``args_<i>`` in the signature (keyword
    inputs with symbolic dimensions do not pass torch.export), so the ONNX order is the contract.
    """

    def __init__(self, module: nn.Module, nhwc_inputs: Sequence[bool], nhwc_outputs: Sequence[bool]) -> None:
        super().__init__()
        self.module = module
        self.nhwc_inputs = tuple(nhwc_inputs)
        self.nhwc_outputs = tuple(nhwc_outputs)

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        """Run the wrapped module on NCHW views of the inputs; return outputs in the file layout."""
        args = [x.permute(TO_NCHW) if last else x for x, last in zip(inputs, self.nhwc_inputs)]
        out = self.module(*args)
        outs = out if isinstance(out, tuple) else (out,)
        outs = tuple(o.permute(TO_NHWC) if last else o for o, last in zip(outs, self.nhwc_outputs))
        return outs if isinstance(out, tuple) else outs[0]


@contextlib.contextmanager
def quiet_converters() -> Iterator[None]:
    """Silence litert-torch's and ai-edge-quantizer's progress output (restores the environment)."""
    saved = {k: os.environ.get(k) for k in _QUIET_ENV}
    os.environ.update(_QUIET_ENV)
    try:
        # tqdm bars (ai-edge-quantizer) write to the sys.stderr of the moment they are made.
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def graph_shapes(values: Sequence[onnx.ValueInfoProto]) -> list[tuple[str, tuple[int | str, ...]]]:
    """(name, shape) of ONNX graph inputs or outputs; symbolic dimensions as strings."""
    out = []
    for v in values:
        dims = v.type.tensor_type.shape.dim
        out.append((v.name, tuple(d.dim_param or d.dim_value or "?" for d in dims)))
    return out


def torch_to_tflite(module: nn.Module, examples: Sequence[Tensor]) -> bytes:
    """Convert a module called with positional tensors to a ``.tflite`` flatbuffer (litert-torch).

    Shapes are static: litert-torch 0.10 lowers a reshape with a symbolic dimension to code
    XNNPACK cannot run (``onnx_to_tflite`` relaxes the leading dimension afterwards instead).

    Raises:
        ExportError: litert-torch fails (the message names the torch op where it says).
    """
    import litert_torch

    try:
        with quiet_converters(), torch.no_grad():
            return litert_torch.convert(module.eval(), tuple(examples)).model_content()
    except Exception as exc:  # litert-torch raises many types (torch.export, MLIR lowering)
        raise ExportError(f"litert-torch could not convert the graph: {type(exc).__name__}: {exc}") from exc


def onnx_to_tflite(model: onnx.ModelProto, *, channels_last: bool = CHANNELS_LAST,
                   channel_reads: str = STRIDED_READS) -> TfliteGraph:
    """Convert an optimized ONNX graph to a float32 ``.tflite`` flatbuffer.

    Args:
        model: the optimized fp32 ONNX graph; static shapes except, at most, a symbolic
            leading dimension shared by every input and output (a detector head's ``rois``).
        channels_last: store 4-D inputs and outputs NHWC where the graph treats them
            spatially (see ``spatial_io``), so no layout transpose remains in the graph.
        channel_reads: ``strided`` keeps the ONNX graph's even/odd channel reads as
            STRIDED_SLICE (no TRANSPOSE or RESHAPE in the file); ``deinterleave`` rewrites them
            into ops LiteRT's XNNPACK delegate runs (:mod:`edgekit.tflite_rewrite`).

    Raises:
        UnsupportedOnnxOpError: an op :mod:`edgekit.onnx_to_torch` does not map.
        ExportError: litert-torch fails, or the graph has symbolic dimensions past axis 0.
    """
    if channel_reads not in CHANNEL_READS:
        raise ExportError(f"channel_reads must be one of {', '.join(CHANNEL_READS)}, not '{channel_reads}'.")
    key = (hashlib.sha256(model.SerializeToString()).hexdigest(), channels_last, channel_reads)
    if key in _CONVERTED:
        return _CONVERTED[key]
    module = onnx_to_torch(model)
    init = {t.name for t in model.graph.initializer}
    inputs = [(n, s) for n, s in graph_shapes(model.graph.input) if n not in init]
    outputs = graph_shapes(model.graph.output)
    symbolic = {d for _, s in (*inputs, *outputs) for d in s if not isinstance(d, int)}
    if any(not isinstance(d, int) for _, s in (*inputs, *outputs) for d in s[1:]):
        raise ExportError("the TFLite targets take static shapes, with at most a symbolic leading dimension; "
                          f"this graph has {sorted(map(str, symbolic))} elsewhere.")
    spatial_in, spatial_out = spatial_io(model)
    last_in = [channels_last and len(s) == 4 and n in spatial_in for n, s in inputs]
    last_out = [channels_last and len(s) == 4 and n in spatial_out for n, s in outputs]
    wrapped = ChannelsLastIO(module, last_in, last_out).eval()
    examples = [_example(shape, last, LEADING_TRACE_SIZE) for (_, shape), last in zip(inputs, last_in)]
    content = torch_to_tflite(wrapped, examples)
    if channel_reads == DEINTERLEAVED_READS:
        content, _ = deinterleave_channel_reads(content)
    if symbolic:
        content = relax_leading_dim(content, LEADING_TRACE_SIZE)
        _check_relaxed(content, wrapped, [(s, last) for (_, s), last in zip(inputs, last_in)])

    def layouts(pairs: list[tuple[str, tuple[int | str, ...]]], last: list[bool]) -> tuple[TensorLayout, ...]:
        return tuple(TensorLayout(n, NHWC if c else NCHW, s) for (n, s), c in zip(pairs, last))

    graph = TfliteGraph(content, layouts(inputs, last_in), layouts(outputs, last_out), channel_reads=channel_reads)
    _CONVERTED[key] = graph
    while len(_CONVERTED) > _CACHE_SIZE:
        _CONVERTED.pop(next(iter(_CONVERTED)))
    return graph


def spatial_io(model: onnx.ModelProto) -> tuple[set[str], set[str]]:
    """Graph inputs read, and outputs written, only by ops that treat axis 1 as channels.

    Those may sit NHWC in the file at no cost. A tensor that a Flatten, Reshape or Gemm reads
    (a detector head's pooled RoIs) keeps the ONNX order: channels-last would put a layout
    TRANSPOSE in front of the flatten instead of removing one.
    """
    readers: dict[str, set[str]] = {}
    writers: dict[str, str] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
        for name in node.output:
            writers[name] = node.op_type
    inputs = {v.name for v in model.graph.input if readers.get(v.name) and readers[v.name] <= SPATIAL_OPS}
    outputs = {v.name for v in model.graph.output if writers.get(v.name) in SPATIAL_OPS}
    return inputs, outputs


def _example(shape: tuple[int | str, ...], channels_last: bool, leading: int) -> Tensor:
    dims = [d if isinstance(d, int) else leading for d in shape]
    if channels_last:
        dims = [dims[i] for i in TO_NHWC]
    return torch.randn(*dims, generator=torch.Generator().manual_seed(0))


def _check_relaxed(content: bytes, module: nn.Module, inputs: list[tuple[tuple[int | str, ...], bool]]) -> None:
    """Run the relaxed model at two leading sizes against the torch module; raise if they differ."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    for size in (1, 3):
        xs = [_example(shape, last, size) for shape, last in inputs]
        with torch.no_grad():
            expected = module(*xs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        interpreter = Interpreter(model_content=content)
        runner = interpreter.get_signature_runner()
        got = runner(**{f"args_{i}": x.numpy() for i, x in enumerate(xs)})
        got_list = [got[f"output_{i}"] for i in range(len(got))]
        for g, e in zip(got_list, expected):
            if g.shape != tuple(e.shape) or not np.allclose(g, e.numpy(), rtol=1e-3, atol=1e-4):
                raise ExportError(f"the TFLite graph gives wrong results once its leading dimension is {size} "
                                  "(it was converted at a fixed size and relaxed); export it with a fixed batch.")


def cast_weights_fp16(content: bytes) -> bytes:
    """The model with conv / fully-connected weights stored float16 (DEQUANTIZE at load time)."""
    from ai_edge_quantizer import quantizer
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.qtyping import QuantGranularity, TFLOperationName

    qt = quantizer.Quantizer(content)
    for op in (TFLOperationName.CONV_2D, TFLOperationName.DEPTHWISE_CONV_2D, TFLOperationName.FULLY_CONNECTED,
               TFLOperationName.CONV_2D_TRANSPOSE):
        qt.add_weight_only_config(".*", op, 16, QuantGranularity.TENSORWISE, algorithm_key=AlgorithmName.FLOAT_CASTING)
    with quiet_converters():
        return bytes(qt.quantize(enable_progress_report=False).quantized_model)


def tflite_op_counts(content: bytes) -> dict[str, int]:
    """Operators per type in a ``.tflite`` model (builtin kernels, no delegate partitioning)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_content=content,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    counts: dict[str, int] = {}
    for op in interpreter._get_ops_details():  # the only op listing the interpreter offers
        counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
    return dict(sorted(counts.items()))

