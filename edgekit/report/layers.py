"""Per-layer quantization error: each quantized layer's output in the QDQ graph against the fp32 reference.

A *quantized layer* is a Conv / ConvTranspose / Gemm / MatMul that reads a DequantizeLinear.
Its output is followed through an activation the integer kernel fuses (Relu, Clip,
LeakyRelu) to the tensor the next layer reads; where the QDQ graph re-quantizes it, the value
compared is the DequantizeLinear after that QuantizeLinear (the integers the next layer sees),
else the float output itself. Errors accumulate from the input onwards, as on the board::

    SQNR dB = 10 log10(sum x^2 / sum (x - x_q)^2)      cosine = <x, x_q> / (|x| |x_q|)

Both graphs run in onnxruntime with basic optimizations, which keeps every named tensor (the
integer fusions would hide them) and computes Q/DQ exactly as the ONNX operators define.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

LAYER_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
FUSED_ACTIVATIONS = frozenset({"Relu", "Clip", "LeakyRelu"})
_EPS = 1e-30


@dataclass(frozen=True)
class LayerError:
    """How far one quantized layer's output is from fp32.

    Args:
        role: the graph (``model``, ``stage1``, ``head``).
        index: the layer's number among the graph's weighted layers (execution order).
        layer: node name (or its output name).
        op_type: Conv, Gemm...
        tensor: the compared tensor in the fp32 graph.
        sqnr_db: signal-to-quantization-noise ratio in dB (higher is better).
        cosine: cosine similarity of the flattened outputs.
        max_abs_err: largest absolute difference.
        requantized: True where the output is re-quantized (compared after Q/DQ).
    """

    role: str
    index: int
    layer: str
    op_type: str
    tensor: str
    sqnr_db: float
    cosine: float
    max_abs_err: float
    requantized: bool = True

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict."""
        return asdict(self)


@dataclass
class _Stats:
    signal: float = 0.0
    noise: float = 0.0
    dot: float = 0.0
    quant: float = 0.0
    max_abs: float = 0.0

    def update(self, x: np.ndarray, y: np.ndarray) -> None:
        x, y = x.astype(np.float64).ravel(), y.astype(np.float64).ravel()
        d = x - y
        self.signal += float(x @ x)
        self.noise += float(d @ d)
        self.dot += float(x @ y)
        self.quant += float(y @ y)
        self.max_abs = max(self.max_abs, float(np.abs(d).max(initial=0.0)))

    def sqnr_db(self) -> float:
        return 10.0 * math.log10(max(self.signal, _EPS) / max(self.noise, _EPS))

    def cosine(self) -> float:
        if self.signal <= _EPS and self.quant <= _EPS:
            return 1.0
        return self.dot / max(math.sqrt(self.signal * self.quant), _EPS)


@dataclass(frozen=True)
class _Probe:
    layer: str
    op_type: str
    index: int
    reference: str  # tensor in the fp32 graph
    quantized: str  # tensor in the QDQ graph
    requantized: bool = field(default=True)


def find_layers(reference: onnx.ModelProto, quantized: onnx.ModelProto) -> list[_Probe]:
    """The quantized layers of ``quantized`` and the tensor pair to compare for each."""
    producer = {o: n for n in quantized.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in quantized.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    known = {o for n in reference.graph.node for o in n.output}
    probes = []
    for index, node in enumerate(n for n in quantized.graph.node if n.op_type in LAYER_OPS):
        if not any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in node.input):
            continue
        tensor = node.output[0]
        users = consumers.get(tensor, [])
        if len(users) == 1 and users[0].op_type in FUSED_ACTIVATIONS:
            tensor = users[0].output[0]
        if tensor not in known:
            continue
        dq = [d for q in consumers.get(tensor, []) if q.op_type == "QuantizeLinear"
              for d in consumers.get(q.output[0], []) if d.op_type == "DequantizeLinear"]
        probes.append(_Probe(node.name or node.output[0], node.op_type, index, tensor,
                             dq[0].output[0] if dq else tensor, bool(dq)))
    return probes


def layer_errors(role: str, reference: onnx.ModelProto, quantized: onnx.ModelProto,
                 feeds: Iterable[Mapping[str, np.ndarray]]) -> list[LayerError]:
    """Per-layer errors of ``quantized`` against ``reference`` over ``feeds``, in graph order."""
    probes = find_layers(reference, quantized)
    if not probes:
        return []
    run_ref = _runner(reference, [p.reference for p in probes])
    run_q = _runner(quantized, [p.quantized for p in probes])
    stats = [_Stats() for _ in probes]
    for feed in feeds:
        for s, x, y in zip(stats, run_ref(feed), run_q(feed)):
            s.update(x, y)
    return [LayerError(role, p.index, p.layer, p.op_type, p.reference, round(s.sqnr_db(), 3), round(s.cosine(), 6),
                       float(np.float32(s.max_abs)), p.requantized) for p, s in zip(probes, stats)]


def _runner(model: onnx.ModelProto, names: list[str]) -> Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]:
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                              for n in dict.fromkeys(names) if n not in have)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in session.get_inputs()]
    return lambda feed: session.run(names, {k: feed[k] for k in inputs})
