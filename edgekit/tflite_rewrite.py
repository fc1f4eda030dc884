"""Small rewrites of a converted ``.tflite`` flatbuffer (ai-edge-litert's schema object API).

- ``relax_leading_dim``: litert-torch 0.10 cannot convert a reshape with a symbolic dimension,
  so a graph with a symbolic leading dimension (a detector head's RoIs) is converted at a fixed,
  distinctive size and relaxed afterwards: ``-1`` in the shape signatures and RESHAPE targets.
- ``deinterleave_channel_reads``: the optimized ONNX reads ShuffleNet's channel halves as even
  and odd channels (``x[:, 0::2]``, ``x[:, 1::2]``), which convert to STRIDED_SLICE with stride
  2 on the NHWC channel axis. XNNPACK (LiteRT's CPU delegate) does not take a stride other than
  1, so each such read runs outside the delegate and splits its graph (15 partitions for
  ShuffleNetV2), and the file runs 1.3-1.5x slower than a plain litert-torch conversion here
  (docs/benchmarks/tflite_shuffle.md). The rewrite reads each tensor's two halves through one
  ``RESHAPE [.., C/2, 2] -> TRANSPOSE -> RESHAPE [.., C]`` (channels de-interleaved) and two
  contiguous SLICEs, all delegated: one TRANSPOSE per ShuffleNet unit instead of the three a
  plain conversion has. Opt-in (``onnx_to_tflite(channel_reads=...)``): it puts TRANSPOSE and
  RESHAPE ops back into the graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _schema() -> Any:
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def _load(content: bytes) -> Any:
    """The model as objects; buffers stored after the flatbuffer (``offset``/``size``, as
    ai-edge-quantizer writes them) are read in, since packing again drops that tail."""
    model = _schema().ModelT.InitFromPackedBuf(content, 0)
    for buffer in model.buffers:
        if buffer.offset and buffer.offset > 1:
            buffer.data = np.frombuffer(content[buffer.offset:buffer.offset + buffer.size], np.uint8)
            buffer.offset, buffer.size = 0, 0
    return model


def _save(model: Any, size_hint: int) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(size_hint + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _opcode(model: Any, builtin: int) -> int:
    """Index of ``builtin`` in the model's operator codes, added when absent."""
    for i, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return i
    code = _schema().OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _int32(model: Any, graph: Any, value: np.ndarray, name: str) -> int:
    """A new constant int32 tensor holding ``value``; returns its index."""
    schema = _schema()
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(np.asarray(value, np.int32).tobytes(), np.uint8)
    model.buffers.append(buffer)
    tensor = schema.TensorT()
    tensor.shape, tensor.type = np.array(np.shape(value), np.int32), schema.TensorType.INT32
    tensor.buffer, tensor.name = len(model.buffers) - 1, name.encode()
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def _activation(model: Any, graph: Any, shape: list[int], like: Any, name: str) -> int:
    """A new tensor of ``shape`` with ``like``'s type and quantization; returns its index."""
    schema = _schema()
    model.buffers.append(schema.BufferT())
    tensor = schema.TensorT()
    tensor.shape, tensor.type, tensor.quantization = np.array(shape, np.int32), like.type, like.quantization
    tensor.buffer, tensor.name = len(model.buffers) - 1, name.encode()
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def _op(code: int, inputs: list[int], outputs: list[int], options_type: int = 0, options: Any = None) -> Any:
    op = _schema().OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = code, np.array(inputs, np.int32), np.array(outputs, np.int32)
    if options is not None:
        op.builtinOptionsType, op.builtinOptions = options_type, options
    return op


def _reshape_options(shape: list[int]) -> Any:
    options = _schema().ReshapeOptionsT()
    options.newShape = list(shape)
    return options


def relax_leading_dim(content: bytes, traced: int) -> bytes:
    """Make a model converted at leading dimension ``traced`` accept any leading dimension.

    Every tensor whose leading dimension is ``traced`` gets ``-1`` there in its shape
    signature, and every RESHAPE target that starts with it gets ``-1`` (inferred at run
    time); the interpreter re-plans shapes after ``resize_tensor_input``. The caller checks
    the result at other sizes.
    """
    schema = _schema()
    model = _load(content)
    reshape = _opcode(model, schema.BuiltinOperator.RESHAPE)
    for graph in model.subgraphs:
        for tensor in graph.tensors:
            if tensor.shape is not None and len(tensor.shape) and tensor.shape[0] == traced:
                tensor.shapeSignature = np.array([-1, *tensor.shape[1:]], np.int32)
        for op in graph.operators:
            if op.opcodeIndex != reshape or len(op.inputs) < 2:
                continue
            buffer = model.buffers[graph.tensors[op.inputs[1]].buffer]
            target = np.frombuffer(bytes(buffer.data if buffer.data is not None else b""), np.int32).copy()
            if target.size and target[0] == traced:
                target[0] = -1
                buffer.data = np.frombuffer(target.tobytes(), np.uint8)
            shape = getattr(op.builtinOptions, "newShape", None)
            if shape is not None and len(shape) and shape[0] == traced:
                op.builtinOptions.newShape = [-1, *list(shape)[1:]]
    return _save(model, len(content))


def _even_odd_read(model: Any, graph: Any, op: Any, strided: int) -> tuple[int, int] | None:
    """(source tensor, 0 or 1) when ``op`` is ``x[..., r::2]`` on the last axis of a 4-D tensor."""
    if op.opcodeIndex != strided or len(op.inputs) != 4:
        return None
    source = graph.tensors[op.inputs[0]]
    if source.shape is None or len(source.shape) != 4 or source.shape[3] % 2:
        return None
    consts = []
    for index in op.inputs[1:]:
        data = model.buffers[graph.tensors[index].buffer].data
        if data is None:
            return None
        consts.append(np.frombuffer(bytes(data), np.int32))
    begin, end, strides = consts
    options = op.builtinOptions
    masks = (getattr(options, name, 0) for name in ("ellipsisMask", "newAxisMask", "shrinkAxisMask"))
    if list(strides) != [1, 1, 1, 2] or list(begin[:3]) != [0, 0, 0] or begin[3] not in (0, 1) or any(masks):
        return None
    n, h, w, c = (int(d) for d in source.shape)
    # The even read may end at C - 1 (torch writes x[:, 0::2] that way); what matters is that
    # the read covers every other channel from the parity on.
    picked = len(range(int(begin[3]), int(end[3]), 2))
    if getattr(options, "endMask", 0) or list(end[:3]) != [n, h, w] or picked != c // 2:
        return None
    return int(op.inputs[0]), int(begin[3])


def deinterleave_channel_reads(content: bytes) -> tuple[bytes, int]:
    """Rewrite even/odd channel STRIDED_SLICEs into delegated ops; returns the model and the reads rewritten."""
    schema = _schema()
    ops = schema.BuiltinOperator
    model = _load(content)
    graph = model.subgraphs[0]
    strided = _opcode(model, ops.STRIDED_SLICE)
    reshape, transpose, slice_ = _opcode(model, ops.RESHAPE), _opcode(model, ops.TRANSPOSE), _opcode(model, ops.SLICE)
    deinterleaved: dict[int, int] = {}
    new_ops, count = [], 0
    for op in graph.operators:
        read = _even_odd_read(model, graph, op, strided)
        if read is None:
            new_ops.append(op)
            continue
        source, parity = read
        like = graph.tensors[source]
        n, h, w, c = (int(d) for d in like.shape)
        half = c // 2
        if source not in deinterleaved:  # one de-interleave per source, before its first read
            tag = f"edgekit/deinterleave_{len(deinterleaved)}"
            pairs = _activation(model, graph, [n, h, w, half, 2], like, f"{tag}/pairs")
            swapped = _activation(model, graph, [n, h, w, 2, half], like, f"{tag}/swapped")
            flat = _activation(model, graph, [n, h, w, c], like, tag)
            new_ops += [
                _op(reshape, [source, _int32(model, graph, np.array([n, h, w, half, 2]), f"{tag}/shape5")], [pairs],
                    schema.BuiltinOptions.ReshapeOptions, _reshape_options([n, h, w, half, 2])),
                _op(transpose, [pairs, _int32(model, graph, np.array([0, 1, 2, 4, 3]), f"{tag}/perm")], [swapped],
                    schema.BuiltinOptions.TransposeOptions, schema.TransposeOptionsT()),
                _op(reshape, [swapped, _int32(model, graph, np.array([n, h, w, c]), f"{tag}/shape4")], [flat],
                    schema.BuiltinOptions.ReshapeOptions, _reshape_options([n, h, w, c])),
            ]
            deinterleaved[source] = flat
        begin = _int32(model, graph, np.array([0, 0, 0, parity * half]), f"edgekit/read_{count}/begin")
        size = _int32(model, graph, np.array([n, h, w, half]), f"edgekit/read_{count}/size")
        new_ops.append(_op(slice_, [deinterleaved[source], begin, size], [int(i) for i in op.outputs],
                           schema.BuiltinOptions.SliceOptions, schema.SliceOptionsT()))
        count += 1
    graph.operators = new_ops
    return (_save(model, len(content)) if count else content), count
