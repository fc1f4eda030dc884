"""Small ONNX graphs for the graph-pass tests, and running them in onnxruntime."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

if TYPE_CHECKING:
    import torch

OPSET = 17


class GraphBuilder:
    """Builds a float32 graph node by node with seeded random weights.

    Args:
        seed: seed of the weights and of ``feed()``.
    """

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.input_shapes: dict[str, tuple[int, ...]] = {}
        self._n = 0

    def name(self, stem: str) -> str:
        """A fresh tensor name."""
        self._n += 1
        return f"{stem}{self._n}"

    def input(self, name: str, shape: Sequence[int]) -> str:
        """Declare a float32 graph input."""
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        self.input_shapes[name] = tuple(shape)
        return name

    def const(self, value: np.ndarray, stem: str = "c") -> str:
        """Add an initializer."""
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def rand(self, *shape: int, low: float = -1.0, high: float = 1.0) -> str:
        """Add a random float32 initializer."""
        return self.const(self.rng.uniform(low, high, shape).astype(np.float32), "w")

    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, **attrs: object) -> str | list[str]:
        """Add a node; returns its output name (or names when ``n_out > 1``)."""
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.name(op_type), **attrs))
        return outs[0] if n_out == 1 else outs

    def conv(self, x: str, cin: int, cout: int, k: int = 1, group: int = 1, pad: int | None = None,
             bias: bool = True, stride: int = 1) -> str:
        """A Conv with random weights (and bias)."""
        pad = (k - 1) // 2 if pad is None else pad
        ins = [x, self.rand(cout, cin // group, k, k)] + ([self.rand(cout)] if bias else [])
        return self.op("Conv", ins, kernel_shape=[k, k], pads=[pad] * 4, group=group, strides=[stride] * 2)

    def bn(self, x: str, c: int) -> str:
        """A BatchNormalization with random statistics."""
        params = [self.rand(c, low=0.5, high=1.5), self.rand(c), self.rand(c),
                  self.rand(c, low=0.2, high=2.0)]
        return self.op("BatchNormalization", [x, *params], epsilon=1e-3)

    def shuffle(self, x: str, n: int, c: int, h: int, w: int, groups: int = 2) -> str:
        """ShuffleNet's channel shuffle as torch exports it: Reshape, Transpose, Reshape."""
        five = self.op("Reshape", [x, self.const(np.array([n, groups, c // groups, h, w], np.int64))])
        t = self.op("Transpose", [five], perm=[0, 2, 1, 3, 4])
        return self.op("Reshape", [t, self.const(np.array([n, c, h, w], np.int64))])

    def model(self, outputs: Sequence[str]) -> onnx.ModelProto:
        """The model with ``outputs`` as graph outputs (their shapes from ONNX shape inference)."""
        graph = helper.make_graph(self.nodes, "case", self.inputs, [], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = 8
        inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
        model.graph.output.extend(inferred[o] for o in outputs)
        onnx.checker.check_model(model, full_check=True)
        return model

    def feed(self) -> dict[str, np.ndarray]:
        """Random inputs for every graph input."""
        return {k: self.rng.standard_normal(s).astype(np.float32) for k, s in self.input_shapes.items()}


def run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of ``model`` on ``feed`` in onnxruntime, graph optimizations off (so ORT's own
    fusions do not hide what a pass did)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def assert_same_outputs(before: onnx.ModelProto, after: onnx.ModelProto, feed: dict[str, np.ndarray],
                        rtol: float = 1e-5) -> None:
    """Outputs agree to ``rtol`` of each output's range (an atol of 1e-5 scaled)."""
    onnx.checker.check_model(after, full_check=True)
    for a, b in zip(run(before, feed), run(after, feed), strict=True):
        assert a.shape == b.shape
        scale = max(1.0, float(np.abs(a).max()))
        np.testing.assert_allclose(b, a, rtol=0, atol=rtol * scale)


def ops(model: onnx.ModelProto) -> Counter[str]:
    """Node count per op type."""
    return Counter(n.op_type for n in model.graph.node)


def export_torch(module: torch.nn.Module, x: torch.Tensor, *, fold: bool = True) -> onnx.ModelProto:
    """Export ``module`` in eval mode with the TorchScript exporter at opset 17 (checked).

    torch 2.13's default (dynamo) exporter writes opset 18 whatever ``opset_version`` says.
    """
    import io
    import warnings

    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (x,), buffer, dynamo=False, opset_version=OPSET,
                          do_constant_folding=fold, input_names=["input"], output_names=["output"])
    model = onnx.load_from_string(buffer.getvalue())
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    return model


def assert_matches_torch(model: onnx.ModelProto, expected: np.ndarray, x: np.ndarray) -> None:
    """Cosine >= 0.99999 and max abs error <= 1e-4 of the output's range."""
    (got,) = run(model, {model.graph.input[0].name: x})
    a, b = expected.reshape(-1).astype(np.float64), got.reshape(-1).astype(np.float64)
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert cosine >= 0.99999, cosine
    assert np.abs(a - b).max() <= 1e-4 * (a.max() - a.min()), np.abs(a - b).max()


def reshape_ranks(model: onnx.ModelProto) -> list[int]:
    """Output ranks of the Reshape nodes (5 for a channel shuffle's first Reshape)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    rank = {v.name: len(v.type.tensor_type.shape.dim) for v in inferred.graph.value_info}
    return [rank.get(n.output[0], -1) for n in model.graph.node if n.op_type == "Reshape"]
