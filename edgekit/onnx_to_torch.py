"""``onnx_to_torch``: an optimized edgekit ONNX graph as an equivalent ``nn.Module``.

The TFLite targets convert with litert-torch, which reads PyTorch programs, while every
target is meant to start from the same optimized fp32 ONNX (DESIGN.md, "Canonical IR"):
BatchNorm folded, channel shuffles relabelled into conv weights and read back as strided
slices. Re-expressing that graph node by node in torch gives litert-torch exactly the graph
the other targets get, with no TensorFlow in between (onnx2tf needs it).

Only the ops edgekit's zoo graphs hold after the passes (plus a few neighbours) are covered;
an op outside ``OPS``, or an attribute setting a builder does not reproduce, raises
:class:`UnsupportedOnnxOpError` naming the node, before anything runs. Constant operands
(Slice bounds, Resize sizes, Reshape shapes) are read when the module is built, so the
traced program has static shapes apart from the graph's own symbolic dimensions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, cast

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgekit.errors import ExportError
from edgekit.graph.graph_view import GraphView, attr

Fn = Callable[..., Tensor | tuple[Tensor, ...]]


class UnsupportedOnnxOpError(ExportError):
    """An ONNX node ``onnx_to_torch`` cannot express (op type or attribute setting)."""


class Step(nn.Module):
    """One ONNX node bound to a torch function.

    A module of its own so that litert-torch names the TFLite tensors it produces after it
    (``...OnnxModule/...Step_<index>;``): :func:`edgekit.tflite_quant.steps_in_name` reads
    the index back.

    Args:
        op_type: the ONNX op, for messages.
        fn: called with the activation operands in ``inputs`` order.
        inputs: tensor names read from the environment (graph inputs, earlier outputs, or
            buffers holding initializers).
        outputs: tensor names the results are stored under.
    """

    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def __init__(self, op_type: str, fn: Fn, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> None:
        super().__init__()
        self.op_type = op_type
        self.fn = fn
        self.inputs = inputs
        self.outputs = outputs

    def forward(self, *operands: Tensor) -> Tensor | tuple[Tensor, ...]:
        """Apply the node's function."""
        return self.fn(*operands)


class Builder:
    """What a builder sees of one node: constants, shapes, attributes."""

    def __init__(self, view: GraphView, node: onnx.NodeProto) -> None:
        self.view = view
        self.node = node

    def attr(self, name: str, default: Any = None) -> Any:
        """The node's attribute ``name``, or ``default``."""
        return attr(self.node, name, default)

    def const(self, index: int) -> np.ndarray | None:
        """The constant value of input ``index`` (None when absent or not constant)."""
        if index >= len(self.node.input) or not self.node.input[index]:
            return None
        return self.view.const(self.node.input[index])

    def ints(self, index: int) -> list[int] | None:
        """Input ``index`` as a list of Python ints, if it is a constant."""
        value = self.const(index)
        return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]

    def refuse(self, why: str) -> UnsupportedOnnxOpError:
        """The error for a setting this converter does not reproduce."""
        return UnsupportedOnnxOpError(f"ONNX node '{self.node.name or self.node.output[0]}' ({self.node.op_type}): "
                                      f"{why}; the TFLite conversion cannot express it.")


def _spatial_padding(b: Builder, rank: int) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """ONNX ``pads`` as torch's symmetric ``padding``, plus an explicit F.pad tuple when asymmetric."""
    if b.attr("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise b.refuse("auto_pad is not NOTSET")
    pads = list(b.attr("pads") or [0] * (2 * rank))
    begin, end = pads[:rank], pads[rank:]
    if begin == end:
        return tuple(begin), None
    # F.pad takes (last-axis begin, last-axis end, previous axis begin, ...).
    explicit = tuple(v for i in reversed(range(rank)) for v in (begin[i], end[i]))
    return (0,) * rank, explicit


def build_conv(b: Builder) -> Fn:
    """Conv (2-D): ``F.conv2d``, asymmetric pads through ``F.pad``."""
    kernel = b.attr("kernel_shape") or (b.view.shape(b.node.input[1]) or ())[2:]
    if len(kernel) != 2:
        raise b.refuse(f"{len(kernel)}-D convolution (only 2-D is mapped)")
    padding, explicit = _spatial_padding(b, 2)
    stride, dilation = tuple(b.attr("strides") or (1, 1)), tuple(b.attr("dilations") or (1, 1))
    groups = int(b.attr("group", 1))

    def conv(x: Tensor, w: Tensor, bias: Tensor | None = None) -> Tensor:
        if explicit is not None:
            x = F.pad(x, explicit)
        return F.conv2d(x, w, bias, stride, padding, dilation, groups)

    return conv


def _pool_args(b: Builder) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...] | None, bool]:
    kernel = tuple(b.attr("kernel_shape"))
    if len(kernel) != 2:
        raise b.refuse(f"{len(kernel)}-D pooling (only 2-D is mapped)")
    padding, explicit = _spatial_padding(b, 2)
    return kernel, tuple(b.attr("strides") or (1, 1)), padding, explicit, bool(b.attr("ceil_mode", 0))


def build_max_pool(b: Builder) -> Fn:
    """MaxPool (2-D): ``F.max_pool2d``; asymmetric pads with -inf."""
    if len(b.node.output) > 1 and b.node.output[1]:
        raise b.refuse("the Indices output is used")
    kernel, stride, padding, explicit, ceil = _pool_args(b)
    dilation = tuple(b.attr("dilations") or (1, 1))

    def max_pool(x: Tensor) -> Tensor:
        if explicit is not None:
            x = F.pad(x, explicit, value=-math.inf)
        return F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode=ceil)

    return max_pool


def build_average_pool(b: Builder) -> Fn:
    """AveragePool (2-D): ``F.avg_pool2d``."""
    kernel, stride, padding, explicit, ceil = _pool_args(b)
    include_pad = bool(b.attr("count_include_pad", 0))
    if explicit is not None:
        raise b.refuse("asymmetric pads")

    def average_pool(x: Tensor) -> Tensor:
        return F.avg_pool2d(x, kernel, stride, padding, ceil_mode=ceil, count_include_pad=include_pad)

    return average_pool


def build_gemm(b: Builder) -> Fn:
    """Gemm with constant B (and C): ``F.linear``, scaled by ``alpha`` / ``beta`` where they are not 1."""
    if b.attr("transA", 0):
        raise b.refuse("transA=1")
    alpha, beta, trans_b = float(b.attr("alpha", 1.0)), float(b.attr("beta", 1.0)), int(b.attr("transB", 0))
    if b.const(1) is None:
        raise b.refuse("B is not a constant")

    def gemm(x: Tensor, w: Tensor, bias: Tensor | None = None) -> Tensor:
        w = w if trans_b else w.t()
        if alpha != 1.0:
            w = w * alpha
        if bias is not None and beta != 1.0:
            bias = bias * beta
        return F.linear(x, w, bias)

    return gemm


def build_clip(b: Builder) -> Fn:
    """Clip with constant bounds: ReLU6 where it is one, else ``clamp``."""
    lo, hi = b.const(1), b.const(2)
    if (len(b.node.input) > 1 and b.node.input[1] and lo is None) or (len(b.node.input) > 2 and b.node.input[2]
                                                                       and hi is None):
        raise b.refuse("bounds are not constants")
    low = None if lo is None else float(lo)
    high = None if hi is None else float(hi)
    if (low, high) == (0.0, 6.0):
        return F.relu6
    return lambda x: torch.clamp(x, low, high)


def build_hard_sigmoid(b: Builder) -> Fn:
    """HardSigmoid: ``clamp(alpha * x + beta, 0, 1)`` (torch's hardsigmoid when alpha=1/6, beta=0.5)."""
    alpha, beta = float(b.attr("alpha", 0.2)), float(b.attr("beta", 0.5))
    if math.isclose(alpha, 1 / 6, rel_tol=1e-6) and beta == 0.5:
        return F.hardsigmoid
    return lambda x: torch.clamp(x * alpha + beta, 0.0, 1.0)


def build_reduce_mean(b: Builder) -> Fn:
    """ReduceMean over constant axes (attribute up to opset 17, input from 18)."""
    axes = b.attr("axes")
    axes = list(axes) if axes is not None else b.ints(1)
    if axes is None:
        raise b.refuse("axes are not constant")
    keep = bool(b.attr("keepdims", 1))
    if keep:
        return lambda x: x.mean(tuple(axes), keepdim=True)
    if sorted(a % 4 for a in axes) == [2, 3] and b.view.rank(b.node.input[0]) == 4:
        # A global pool to [N, C]: kept 4-D and flattened, litert-torch writes MEAN alone;
        # a 2-D MEAN of the NHWC tensor gets a layout TRANSPOSE in front of it.
        return lambda x: x.mean((2, 3), keepdim=True).flatten(1)
    return lambda x: x.mean(tuple(axes), keepdim=False)


def build_flatten(b: Builder) -> Fn:
    """Flatten at ``axis`` (1 keeps a symbolic batch symbolic)."""
    axis = int(b.attr("axis", 1))
    if axis == 0:
        return lambda x: x.reshape(1, -1)
    return lambda x: x.flatten(axis).flatten(0, axis - 1)


def build_concat(b: Builder) -> Fn:
    """Concat along ``axis``."""
    axis = int(b.attr("axis"))
    return lambda *xs: torch.cat(xs, axis)


def build_slice(b: Builder) -> Fn:
    """Slice with constant starts/ends/axes/steps, as Python indexing (strided slices stay strided)."""
    starts, ends, axes, steps = b.ints(1), b.ints(2), b.ints(3), b.ints(4)
    if starts is None or ends is None or (len(b.node.input) > 3 and b.node.input[3] and axes is None) or (
            len(b.node.input) > 4 and b.node.input[4] and steps is None):
        raise b.refuse("starts/ends/axes/steps are not constants")
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    if any(s < 1 for s in steps):
        raise b.refuse("a negative step")
    limit = np.iinfo(np.int64).max

    def slice_(x: Tensor) -> Tensor:
        index: list[slice] = [slice(None)] * x.dim()
        for start, end, axis, step in zip(starts, ends, axes, steps):
            index[axis % x.dim()] = slice(start, None if end >= limit // 2 else end, step)
        return x[tuple(index)]

    return slice_


def build_split(b: Builder) -> Fn:
    """Split along ``axis`` into constant sizes (or equal parts)."""
    axis = int(b.attr("axis", 0))
    sizes = b.ints(1) or (list(b.attr("split")) if b.attr("split") is not None else None)
    parts = len(b.node.output)
    if sizes is None:
        shape = b.view.shape(b.node.input[0])
        total = shape[axis] if shape is not None else None
        if not isinstance(total, int):
            raise b.refuse("equal split of a symbolic axis")
        sizes = [total // parts] * parts
    return lambda x: tuple(torch.split(x, sizes, axis))


def build_gather(b: Builder) -> Fn:
    """Gather with constant indices: ``index_select`` (what the shuffle pass falls back to)."""
    indices = b.const(1)
    if indices is None:
        raise b.refuse("indices are not constant")
    axis = int(b.attr("axis", 0))
    if indices.ndim == 0:
        i = int(indices)
        return lambda x, idx: x.select(axis, i)
    if indices.ndim != 1:
        raise b.refuse(f"{indices.ndim}-D indices")

    def gather(x: Tensor, idx: Tensor) -> Tensor:
        return torch.index_select(x, axis, idx.to(torch.int64))

    return gather


def build_unsqueeze(b: Builder) -> Fn:
    """Unsqueeze at constant axes (input from opset 13)."""
    axes = b.ints(1) or list(b.attr("axes") or [])
    if not axes:
        raise b.refuse("axes are not constant")

    def unsqueeze(x: Tensor) -> Tensor:
        rank = x.dim() + len(axes)
        for axis in sorted(a % rank for a in axes):
            x = x.unsqueeze(axis)
        return x

    return unsqueeze


def build_squeeze(b: Builder) -> Fn:
    """Squeeze at constant axes."""
    axes = b.ints(1) or list(b.attr("axes") or [])
    if not axes:
        raise b.refuse("axes are not constant")
    return lambda x: x.squeeze(tuple(a % x.dim() for a in axes))


def build_reshape(b: Builder) -> Fn:
    """Reshape to a constant shape (0 copies the input's dimension)."""
    shape = b.ints(1)
    if shape is None or b.attr("allowzero", 0):
        raise b.refuse("the shape is not a constant (or allowzero=1)")
    return lambda x: x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(shape)])


def build_transpose(b: Builder) -> Fn:
    """Transpose by ``perm``."""
    perm = list(b.attr("perm"))
    return lambda x: x.permute(perm)


def build_softmax(b: Builder) -> Fn:
    """Softmax along ``axis`` (opset 13+ semantics)."""
    axis = int(b.attr("axis", -1))
    return lambda x: torch.softmax(x, axis)


# (mode, coordinate_transformation_mode, nearest_mode) -> F.interpolate arguments. Torch's
# bilinear with align_corners=False is ONNX's half_pixel; its "nearest" is asymmetric + floor.
_RESIZE_MODES: Mapping[tuple[str, str, str], tuple[str, bool | None]] = {
    ("linear", "half_pixel", ""): ("bilinear", False),
    ("linear", "pytorch_half_pixel", ""): ("bilinear", False),
    ("linear", "align_corners", ""): ("bilinear", True),
    ("nearest", "asymmetric", "floor"): ("nearest", None),
}


def build_resize(b: Builder) -> Fn:
    """Resize (4-D, spatial axes only) as ``F.interpolate`` to a constant size or scale."""
    text = (lambda v: v.decode() if isinstance(v, bytes) else str(v))
    mode = text(b.attr("mode", b"nearest"))
    ctm = text(b.attr("coordinate_transformation_mode", b"half_pixel"))
    nearest = text(b.attr("nearest_mode", b"round_prefer_floor")) if mode == "nearest" else ""
    if (mode, ctm, nearest) not in _RESIZE_MODES:
        raise b.refuse(f"mode={mode}, coordinate_transformation_mode={ctm}, nearest_mode={nearest or '-'}")
    torch_mode, align = _RESIZE_MODES[(mode, ctm, nearest)]
    sizes, scales = b.const(3), b.const(2)
    if sizes is not None and sizes.size:
        size = [int(v) for v in sizes.reshape(-1)]
        out_size: Callable[[Tensor], list[int]] = lambda x: size[2:]  # noqa: E731
    elif scales is not None and scales.size:
        factors = [float(v) for v in scales.reshape(-1)]
        out_size = lambda x: [int(math.floor(d * f)) for d, f in zip(x.shape[2:], factors[2:])]  # noqa: E731
        if factors[:2] != [1.0, 1.0]:
            raise b.refuse("resizes the batch or channel axis")
    else:
        raise b.refuse("neither sizes nor scales are constants")

    def resize(x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise UnsupportedOnnxOpError(f"Resize of a {x.dim()}-D tensor (only 4-D is mapped)")
        return F.interpolate(x, size=out_size(x), mode=torch_mode, align_corners=align)

    return resize


def _fixed(fn: Fn) -> Callable[[Builder], Fn]:
    return lambda b: fn


# ONNX op type -> builder; a builder reads the node's constants and returns the torch function.
OPS: Mapping[str, Callable[[Builder], Fn]] = {
    "Conv": build_conv,
    "Relu": _fixed(F.relu),
    "Clip": build_clip,
    "Sigmoid": _fixed(torch.sigmoid),
    "HardSwish": _fixed(F.hardswish),
    "HardSigmoid": build_hard_sigmoid,
    "Add": _fixed(torch.add),
    "Sub": _fixed(torch.sub),
    "Mul": _fixed(torch.mul),
    "Div": _fixed(torch.div),
    "GlobalAveragePool": _fixed(lambda x: x.mean((2, 3), keepdim=True)),
    "ReduceMean": build_reduce_mean,
    "MaxPool": build_max_pool,
    "AveragePool": build_average_pool,
    "Gemm": build_gemm,
    "MatMul": _fixed(torch.matmul),
    "Flatten": build_flatten,
    "Concat": build_concat,
    "Slice": build_slice,
    "Split": build_split,
    "Gather": build_gather,
    "Unsqueeze": build_unsqueeze,
    "Squeeze": build_squeeze,
    "Reshape": build_reshape,
    "Transpose": build_transpose,
    "Softmax": build_softmax,
    "Resize": build_resize,
    "Identity": _fixed(lambda x: x),
}

# Inputs that are read at build time, not at run time (op type -> input indices).
_STATIC_INPUTS: Mapping[str, frozenset[int]] = {
    "Clip": frozenset({1, 2}), "ReduceMean": frozenset({1}), "Slice": frozenset({1, 2, 3, 4}),
    "Split": frozenset({1}), "Unsqueeze": frozenset({1}), "Squeeze": frozenset({1}),
    "Reshape": frozenset({1}), "Resize": frozenset({1, 2, 3}),
}


class OnnxModule(nn.Module):
    """An ONNX graph run step by step with torch functions; initializers are buffers.

    Args:
        model: the ONNX model (opset 17, static constants as edgekit's passes leave them).

    Attributes:
        input_names, output_names: the graph's inputs and outputs, in order.
        node_names: the ONNX node (name, else first output) of each step, in step order.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__()
        view = GraphView(model)
        self.input_names = tuple(v.name for v in model.graph.input if v.name not in view.initializers)
        self.output_names = tuple(v.name for v in model.graph.output)
        self._buffers_by_tensor: dict[str, str] = {}
        self.steps = nn.ModuleList()
        nodes = [n for n in model.graph.node if n.op_type != "Constant"]  # read through view.const
        self.node_names = tuple(n.name or n.output[0] for n in nodes)
        unsupported = sorted({n.op_type for n in nodes if n.op_type not in OPS})
        if unsupported:
            raise UnsupportedOnnxOpError(f"the graph holds ONNX op(s) {', '.join(unsupported)}, which the TFLite "
                                         f"conversion does not map (it maps {', '.join(sorted(OPS))}).")
        for node in nodes:
            static = _STATIC_INPUTS.get(node.op_type, frozenset())
            inputs = tuple(name for i, name in enumerate(node.input) if name and i not in static)
            for name in inputs:
                value = view.const(name)
                if value is not None:
                    self._add_buffer(name, value)
            self.steps.append(Step(node.op_type, OPS[node.op_type](Builder(view, node)), inputs,
                                   tuple(node.output)))

    def _add_buffer(self, tensor: str, value: np.ndarray) -> None:
        if tensor in self._buffers_by_tensor:
            return
        name = f"const_{len(self._buffers_by_tensor)}"
        array = np.array(value)  # a writable copy: torch refuses read-only numpy memory
        self.register_buffer(name, torch.from_numpy(array))
        self._buffers_by_tensor[tensor] = name

    def step_list(self) -> list[Step]:
        """The steps, in graph order (typed: ``self.steps`` is a ModuleList)."""
        return [cast(Step, step) for step in self.steps]

    def run_all(self, *inputs: Tensor) -> dict[str, Tensor]:
        """Every tensor of the graph (inputs, initializers, node outputs) by its ONNX name."""
        env: dict[str, Tensor] = dict(zip(self.input_names, inputs))
        for tensor, buffer in self._buffers_by_tensor.items():
            env[tensor] = getattr(self, buffer)
        for step in self.step_list():
            result = step(*(env[name] for name in step.inputs))
            if isinstance(result, tuple):
                env.update(zip(step.outputs, result))
            else:
                env[step.outputs[0]] = result
        return env

    def forward(self, *inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        """Run the graph; one tensor for a single-output graph, else a tuple in output order."""
        env = self.run_all(*inputs)
        outputs = tuple(env[name] for name in self.output_names)
        return outputs[0] if len(outputs) == 1 else outputs


def onnx_to_torch(model: onnx.ModelProto) -> OnnxModule:
    """The ONNX graph as an eval-mode torch module computing the same function.

    Raises:
        UnsupportedOnnxOpError: an op type, or an attribute setting, that is not mapped.
    """
    return OnnxModule(model).eval()
