"""``onnx_to_torch``: the torch form of an ONNX graph computes what onnxruntime computes, or names what it cannot."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgekit.api import ExportOptions, get_pipeline, resolve_model
from edgekit.inputspec import make_input_spec
from edgekit.onnx_to_torch import UnsupportedOnnxOpError, onnx_to_torch


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _torch(model: onnx.ModelProto, *xs: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        out = onnx_to_torch(model)(*(torch.from_numpy(x) for x in xs))
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


# Zoo graphs that between them hold every op the optimized zoo graphs use (besides the
# shuffle nets the TFLite target tests cover): HardSwish/HardSigmoid/Gemm, Resize (linear
# and nearest), AveragePool, Clip, Slice/Concat, Unsqueeze, Sigmoid/Mul.
@pytest.mark.parametrize(("name", "imgsz"), [("mobilenetv3-small", (64, 64)), ("hbonet", (64, 64)),
                                             ("dfanet-b", (64, 64)), ("efficientnet-b0", (64, 64))])
def test_zoo_graphs_match_onnxruntime(name: str, imgsz: tuple[int, int]) -> None:
    torch.manual_seed(0)
    opts = ExportOptions(imgsz=imgsz)
    source = resolve_model(name, opts)
    plan = get_pipeline(source.task)(source, make_input_spec(source.task, imgsz), opts)
    graph = plan.graphs["model"]
    x = np.random.default_rng(0).standard_normal((1, 3, *imgsz)).astype(np.float32)
    (want,), (got,) = _ort(graph, {"images": x}), _torch(graph, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def _graph(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], x_shape: list[int],
           outputs: list[str]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_edge_settings_match_onnxruntime() -> None:
    """Asymmetric pads, ceil-mode pooling, nearest resize by scales, channel Gather, Split, reshapes, softmax."""
    rng = np.random.default_rng(1)
    inits = {
        "w": rng.standard_normal((6, 4, 3, 3)).astype(np.float32), "b": rng.standard_normal(6).astype(np.float32),
        "roi": np.zeros(0, np.float32), "scales": np.array([1, 1, 2, 2], np.float32),
        "idx": np.array([5, 0, 3, 1], np.int64), "split": np.array([1, 3], np.int64),
        "shape": np.array([0, -1], np.int64), "axes": np.array([1], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[0, 1, 2, 1], strides=[2, 1]),
        helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        helper.make_node("Resize", ["p", "roi", "scales"], ["r"], mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("Gather", ["r", "idx"], ["g"], axis=1),
        helper.make_node("Split", ["g", "split"], ["s0", "s1"], axis=1),
        helper.make_node("Transpose", ["s1"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["t", "shape"], ["f"]),
        helper.make_node("Softmax", ["f"], ["sm"], axis=1),
        helper.make_node("Unsqueeze", ["sm", "axes"], ["u"]),
        helper.make_node("Squeeze", ["u", "axes"], ["out1"]),
        helper.make_node("Flatten", ["s0"], ["out0"], axis=2),
    ]
    model = _graph(nodes, inits, [1, 4, 11, 9], ["out0", "out1"])
    x = rng.standard_normal((1, 4, 11, 9)).astype(np.float32)
    for got, want in zip(_torch(model, x), _ort(model, {"x": x})):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_unmapped_op_is_named_before_anything_runs() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Einsum", ["y", "y"], ["z"], equation="ij,ij->i")]
    with pytest.raises(UnsupportedOnnxOpError, match="Einsum"):
        onnx_to_torch(_graph(nodes, {}, [2, 3], ["z"]))


def test_unmapped_setting_is_named_with_its_node() -> None:
    inits = {"roi": np.zeros(0, np.float32), "scales": np.array([1, 1, 2, 2], np.float32)}
    nodes = [helper.make_node("Resize", ["x", "roi", "scales"], ["y"], name="up", mode="cubic")]
    with pytest.raises(UnsupportedOnnxOpError, match=r"'up' \(Resize\): mode=cubic"):
        onnx_to_torch(_graph(nodes, inits, [1, 2, 4, 4], ["y"]))
