"""Cases shared by the runtime tests: exported bundles with their PyTorch reference (session
fixtures, registered in ``conftest.py``), a hand-built ``.tflite`` writer (no converter is
installed here) and detection matching.

Bundles are exported once per session at small sizes. Trained fixture weights are used where
they ship (``edgekit/fixtures``); otherwise the model is seeded and its convs He-initialised
(and, for the detector, its predictors rescaled as in ``tests/test_detector_export.py``) so
that rankings are decided by real margins, not by float rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flatbuffers
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import edgekit
from edgekit.bundle import GraphFile, Manifest, PostProcess, TensorSpec, write_manifest
from edgekit.data import SHAPES
from edgekit.data.transforms import Preprocess, boxes_to_original, mask_to_original
from edgekit.inputspec import make_input_spec
from edgekit.models import get_spec
from edgekit.models.ops import rois_from_list
from edgekit.models.weights import load_weights
from edgekit.runtimes import installed_backends
from edgekit.runtimes.results import ClassResult, Detections, SegmentationResult
from edgekit.runtimes.twostage import softmax

PACKAGE = Path(edgekit.__file__).parent
SAMPLES = PACKAGE / "data" / "samples"
FIXTURES = PACKAGE / "fixtures"
SAMPLE = SAMPLES / "sample.jpg"
# Backends that run here on the CPU (TensorRT needs an NVIDIA GPU).
CPU_BACKENDS = [b for b in ("onnxruntime", "openvino") if b in installed_backends()]


@dataclass
class Case:
    """A bundle and the PyTorch pipeline it must agree with.

    Args:
        bundle: the exported bundle directory.
        image: the fixture image (original size).
        reference: image -> the result computed with the PyTorch model.
    """

    bundle: Path
    image: Image.Image
    reference: Callable[[Image.Image], Any]


def he_init(model: nn.Module, skip: tuple[nn.Module, ...] = ()) -> None:
    """He-initialise every Conv2d but ``skip``: PyTorch's default init leaves near-constant maps."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d) and module not in skip:
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")


def make_detector_decisive(model: nn.Module, x: torch.Tensor) -> None:
    """He init, then rescale the four predictors to a trained detector's output magnitudes."""
    he_init(model, skip=(model.rpn.cls, model.rpn.reg))
    with torch.no_grad():
        logits, deltas, _ = model.stage1(x)
        model.rpn.cls.weight.mul_(1.0 / logits.std())
        model.rpn.reg.weight.mul_(0.1 / deltas.std())
        logits, deltas, features = model.stage1(x)
        rois = rois_from_list(model.proposals(logits, deltas, tuple(x.shape[-2:])))
        cls_logits, box_deltas = model.head(model.pool(features, rois))
        model.rcnn.cls.weight.mul_(1.0 / cls_logits.std(dim=0).mean())
        model.rcnn.box.weight.mul_(0.5 / box_deltas.std())


def _bundle_preprocess(bundle: Path) -> Any:
    from edgekit.bundle import read_manifest

    return Preprocess.from_input_spec(read_manifest(bundle).input)


@pytest.fixture(scope="session")
def detector_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """thundernet-snet146 at 320x320; the image is the sample scene stretched to 400x300 so the letterbox matters."""
    torch.manual_seed(0)
    name, weights = "thundernet-snet146", FIXTURES / "thundernet-snet146.safetensors"
    out = tmp_path_factory.mktemp("det") / "bundle"
    image = Image.open(SAMPLE).convert("RGB").resize((400, 300), Image.BILINEAR)
    if weights.is_file():
        model = get_spec(name).build(num_classes=len(SHAPES)).eval()
        load_weights(model, weights)
        edgekit.export(name, out=out, weights=weights, num_classes=len(SHAPES), labels=list(SHAPES))
    else:
        model = get_spec(name).build().eval()
        pre = Preprocess.from_input_spec(make_input_spec("detect", (320, 320)))
        make_detector_decisive(model, torch.from_numpy(pre(image)[0]))
        edgekit.export(model, out=out, task="detect", imgsz=(320, 320), name=name)
    model.eval()
    pre, labels = _bundle_preprocess(out), list(SHAPES) if weights.is_file() else []

    def reference(img: Image.Image) -> Detections:
        x, meta = pre(img)
        with torch.no_grad():
            boxes, scores, ids = (t.numpy()[0] for t in model(torch.from_numpy(x)))
        mapped = boxes_to_original(boxes[ids >= 0], meta)
        inside = (mapped[:, 2] > mapped[:, 0]) & (mapped[:, 3] > mapped[:, 1])
        keep = np.flatnonzero(ids >= 0)[inside]
        names = tuple(labels[i] if labels else f"class_{i}" for i in ids[keep].tolist())
        return Detections(mapped[inside], scores[keep], ids[keep], names)

    return Case(out, image, reference)


@pytest.fixture(scope="session")
def classifier_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """The trained shufflenetv2-1.0 fixture (6 shapes, 96x96, stretch) when it ships, else a seeded one."""
    torch.manual_seed(0)
    name, weights = "shufflenetv2-1.0", FIXTURES / "shufflenetv2-1.0.safetensors"
    out = tmp_path_factory.mktemp("cls") / "bundle"
    model = get_spec(name).build(num_classes=len(SHAPES)).eval()
    if weights.is_file():
        load_weights(model, weights)
    else:
        he_init(model)
    edgekit.export(model, out=out, imgsz=(96, 96), resize="stretch", labels=list(SHAPES), name=name)
    pre = _bundle_preprocess(out)

    def reference(img: Image.Image) -> ClassResult:
        x, _ = pre(img)
        with torch.no_grad():
            scores = softmax(model(torch.from_numpy(x)).numpy()[0])
        ids = np.argsort(-scores, kind="stable")[:5]
        return ClassResult(ids, scores[ids], tuple(SHAPES[i] for i in ids))

    image = Image.open(SAMPLES / "cls-val" / "star" / sorted((SAMPLES / "cls-val" / "star").iterdir())[0].name)
    return Case(out, image.convert("RGB"), reference)


@pytest.fixture(scope="session")
def segmenter_case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    """lpsnet-s, 7 classes (background + shapes) at 128x256 stretched from a 256x256 sample."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("seg") / "bundle"
    model = get_spec("lpsnet-s").build(num_classes=len(SHAPES) + 1).eval()
    he_init(model)
    labels = ["background", *SHAPES]
    edgekit.export(model, out=out, task="segment", imgsz=(128, 256), labels=labels, name="lpsnet-s")
    pre = _bundle_preprocess(out)

    def reference(img: Image.Image) -> SegmentationResult:
        x, meta = pre(img)
        with torch.no_grad():
            logits = model(torch.from_numpy(x)).numpy()[0]
        mask = mask_to_original(logits.argmax(axis=0).astype(np.uint8), meta)
        ids = np.unique(mask).astype(np.int64)
        return SegmentationResult(mask, ids, tuple(labels[i] for i in ids), len(labels))

    image = Image.open(SAMPLES / "seg-val" / "images" / "000000.jpg").convert("RGB")
    return Case(out, image, reference)


# ---------------------------------------------------------------- hand-built .tflite models

def tflite_linear_classifier(weight: np.ndarray, bias: np.ndarray, size: tuple[int, int], *, nhwc: bool = True,
                             quant: tuple[tuple[float, int], tuple[float, int]] | None = None) -> bytes:
    """A ``.tflite`` classifier: mean over the image, then ``logits = pooled @ weight.T + bias``.

    ``nhwc`` stores the image channels-last (onnx2tf style) or NCHW (litert-torch style).
    ``quant`` = ((input scale, zp), (output scale, zp)) makes the input and output int8 with a
    DEQUANTIZE / QUANTIZE at the ends, as a static INT8 model has.
    """
    from ai_edge_litert import schema_py_generated as tfl

    h, w = size
    buffers: list[Any] = [tfl.BufferT()]  # buffer 0 is the empty sentinel
    tensors: list[Any] = []
    codes: list[int] = []
    operators: list[Any] = []

    def buffer(array: np.ndarray) -> int:
        b = tfl.BufferT()
        b.data = list(np.ascontiguousarray(array).tobytes())
        buffers.append(b)
        return len(buffers) - 1

    def tensor(name: str, shape: tuple[int, ...], kind: int, data: int = 0,
               q: tuple[float, int] | None = None) -> int:
        t = tfl.TensorT()
        t.name, t.shape, t.type, t.buffer = name, list(shape), kind, data
        if q is not None:
            t.quantization = tfl.QuantizationParametersT()
            t.quantization.scale, t.quantization.zeroPoint = [float(q[0])], [int(q[1])]
        tensors.append(t)
        return len(tensors) - 1

    def op(code: int, inputs: list[int], outputs: list[int], options_type: int = 0, options: Any = None) -> None:
        if code not in codes:
            codes.append(code)
        o = tfl.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = codes.index(code), inputs, outputs
        o.builtinOptionsType, o.builtinOptions = options_type, options
        operators.append(o)

    f32, i8, i32 = tfl.TensorType.FLOAT32, tfl.TensorType.INT8, tfl.TensorType.INT32
    shape = (1, h, w, 3) if nhwc else (1, 3, h, w)
    image = tensor("images", shape, i8 if quant else f32, q=quant[0] if quant else None)
    x = image
    if quant:
        x = tensor("images_float", shape, f32)
        op(tfl.BuiltinOperator.DEQUANTIZE, [image], [x])
    axes = tensor("axes", (2,), i32, buffer(np.array([1, 2] if nhwc else [2, 3], np.int32)))
    pooled = tensor("pooled", (1, 3), f32)
    reducer = tfl.ReducerOptionsT()
    reducer.keepDims = False
    op(tfl.BuiltinOperator.MEAN, [x, axes], [pooled], tfl.BuiltinOptions.ReducerOptions, reducer)
    wt = tensor("weight", weight.shape, f32, buffer(weight.astype(np.float32)))
    bt = tensor("bias", bias.shape, f32, buffer(bias.astype(np.float32)))
    logits = tensor("logits_float" if quant else "logits", (1, weight.shape[0]), f32)
    op(tfl.BuiltinOperator.FULLY_CONNECTED, [pooled, wt, bt], [logits], tfl.BuiltinOptions.FullyConnectedOptions,
       tfl.FullyConnectedOptionsT())
    output = logits
    if quant:
        output = tensor("logits", (1, weight.shape[0]), i8, q=quant[1])
        op(tfl.BuiltinOperator.QUANTIZE, [logits], [output])
    graph = tfl.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.operators, graph.name = tensors, [image], [output], operators, "main"
    model = tfl.ModelT()
    model.version, model.buffers, model.subgraphs, model.description = 3, buffers, [graph], "edgekit test model"
    model.operatorCodes = []
    for code in codes:
        oc = tfl.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
        model.operatorCodes.append(oc)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def onnx_linear_classifier(weight: np.ndarray, bias: np.ndarray, size: tuple[int, int]) -> bytes:
    """The same classifier as ONNX (NCHW): GlobalAveragePool, Flatten, Gemm."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    h, w = size
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["images"], ["gap"]),
         helper.make_node("Flatten", ["gap"], ["pooled"]),
         helper.make_node("Gemm", ["pooled", "weight", "bias"], ["logits"], transB=1)],
        "linear", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, h, w])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, weight.shape[0]])],
        [numpy_helper.from_array(weight.astype(np.float32), "weight"),
         numpy_helper.from_array(bias.astype(np.float32), "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def write_classifier_bundle(out: Path, filename: str, data: bytes, size: tuple[int, int], num_classes: int, *,
                            target: str = "onnx-fp32", precision: str = "fp32") -> Path:
    """A classify bundle around one graph file written by hand (labels ``c0..``, top-3, stretch)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / filename).write_bytes(data)
    spec = make_input_spec("classify", size, resize="stretch")
    graph = GraphFile.from_file(out, filename, "model", inputs=(TensorSpec("images", spec.shape),),
                                outputs=(TensorSpec("logits", (1, num_classes)),), precision=precision)
    manifest = Manifest(model="linear", task="classify", target=target, input=spec, outputs=graph.outputs,
                        graphs=(graph,), postprocess=PostProcess("topk", {"k": 3, "softmax": True}),
                        labels=tuple(f"c{i}" for i in range(num_classes)), num_classes=num_classes,
                        edgekit_version=edgekit.__version__)
    write_manifest(manifest, out)
    return out


def match_detections(reference: Detections, got: Detections) -> tuple[float, float]:
    """Pair each reference detection with the same-class detection it overlaps most (one to one).

    Returns (smallest IoU of a pair, largest score difference of a pair); fails the test when
    the counts differ or a reference detection finds no partner of its class.
    """
    from edgekit.runtimes.boxes import box_iou

    assert len(got) == len(reference), (len(got), len(reference))
    iou = box_iou(reference.boxes, got.boxes)
    iou[reference.class_ids[:, None] != got.class_ids[None, :]] = -1.0
    taken: set[int] = set()
    worst_iou, worst_score = 1.0, 0.0
    for i in range(len(reference)):
        j = int(np.argmax(np.where([k in taken for k in range(len(got))], -2.0, iou[i])))
        assert iou[i, j] >= 0, f"reference detection {i} ({reference.labels[i]}) has no partner of its class"
        taken.add(j)
        worst_iou = min(worst_iou, float(iou[i, j]))
        worst_score = max(worst_score, abs(float(reference.scores[i]) - float(got.scores[j])))
    return worst_iou, worst_score
