"""Two-stage detectors exported as a pipeline (stage1.onnx + numpy glue + head.onnx + glue) and
as one graph: the pipeline gives the PyTorch model's detections, the single graph the pipeline's.

The detectors are untrained (random init, fixed seed). Two adjustments, applied by
:func:`make_decisive`, make the comparison meaningful rather than a comparison of ties:

1. every Conv2d except the RPN predictors is redrawn with He init: PyTorch's default init
   shrinks activations ~1e5x through the backbone, so untrained feature maps are almost
   constant and every ranking (top-k anchors, NMS order, scores) is decided at float-
   rounding level, where onnxruntime and PyTorch legitimately differ;
2. the four prediction layers are rescaled to a trained detector's output magnitudes,
   measured on the fixture image: RPN logits std 1, RPN deltas std 0.1, class logits spread
   1 across RoIs, R-CNN deltas std 0.5. With class logits spread like that, some class
   probabilities pass the default score threshold (0.05): this is what makes detections
   non-empty (the threshold itself is left at its default).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torch import nn

import edgekit
from edgekit.bundle import verify
from edgekit.data.transforms import Preprocess
from edgekit.detector_export import HEAD_OUTPUTS, STAGE1_OUTPUTS, DetectorGraphs, detector_to_onnx
from edgekit.detector_single_graph import single_graph
from edgekit.errors import ExportError
from edgekit.models.detection import TwoStageDetector
from edgekit.models.ops import rois_from_list
from edgekit.models.registry import get_spec
from edgekit.runtimes.boxes import box_iou
from edgekit.runtimes.twostage import TwoStageParams, detect

SAMPLE = Path(edgekit.__file__).parent / "data" / "samples" / "sample.jpg"
SIZE = (320, 320)
MODELS = [
    pytest.param("thundernet-snet146"),
    pytest.param("thundernet-snet49", marks=pytest.mark.slow),
    pytest.param("lighthead-rcnn", marks=pytest.mark.slow),
]
PARAM_KEYS = {
    "num_classes", "background_index", "anchor_sizes", "anchor_ratios", "stride", "pre_nms_top_n",
    "post_nms_top_n", "rpn_nms_threshold", "box_nms_threshold", "score_threshold", "max_detections",
    "pooled_size", "sampling_ratio", "ps_channels", "spatial_scale", "aligned", "rpn_box_weights",
    "rcnn_box_weights", "scale_clamp",
}


def make_decisive(model: TwoStageDetector, x: torch.Tensor) -> None:
    """He-init the convs and rescale the prediction layers (see the module docstring)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d) and module not in (model.rpn.cls, model.rpn.reg):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        logits, deltas, _ = model.stage1(x)
        model.rpn.cls.weight.mul_(1.0 / logits.std())
        model.rpn.reg.weight.mul_(0.1 / deltas.std())
        logits, deltas, features = model.stage1(x)
        rois = rois_from_list(model.proposals(logits, deltas, tuple(x.shape[-2:])))
        cls_logits, box_deltas = model.head(model.pool(features, rois))
        model.rcnn.cls.weight.mul_(1.0 / cls_logits.std(dim=0).mean())
        model.rcnn.box.weight.mul_(0.5 / box_deltas.std())


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@dataclass
class Case:
    """One detector exported, and its detections from PyTorch, the pipeline and the single graph."""

    name: str
    model: TwoStageDetector
    graphs: DetectorGraphs
    image: np.ndarray
    torch_out: tuple[np.ndarray, np.ndarray, np.ndarray]
    pipeline_out: tuple[np.ndarray, np.ndarray, np.ndarray]
    single: onnx.ModelProto
    single_out: tuple[np.ndarray, np.ndarray, np.ndarray]


@pytest.fixture(scope="module", params=MODELS)
def case(request: pytest.FixtureRequest) -> Case:
    torch.manual_seed(0)
    model = get_spec(request.param).build().eval()
    image, _ = Preprocess(imgsz=SIZE, resize="letterbox")(Image.open(SAMPLE))
    make_decisive(model, torch.from_numpy(image))
    with torch.no_grad():
        torch_out = tuple(t.numpy() for t in model(torch.from_numpy(image)))
    graphs = detector_to_onnx(model, SIZE)
    stage1, head = session(graphs.stage1), session(graphs.head)
    pipeline_out = detect(image, lambda x: tuple(stage1.run(None, {"images": x})),
                          lambda p: tuple(head.run(None, {"pooled": p})), graphs.params)
    single = single_graph(graphs.stage1, graphs.head, graphs.params)
    single_out = tuple(session(single).run(None, {"images": image}))
    return Case(request.param, model, graphs, image, torch_out, pipeline_out, single, single_out)


def test_stage_graphs_are_opset_17_without_batchnorm(case: Case) -> None:
    for graph in (case.graphs.stage1, case.graphs.head):
        onnx.checker.check_model(graph, full_check=True)
        assert [o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")] == [17]
        assert not [n for n in graph.graph.node if n.op_type == "BatchNormalization"]
    assert [o.name for o in case.graphs.stage1.graph.output] == list(STAGE1_OUTPUTS)
    assert [o.name for o in case.graphs.head.graph.output] == list(HEAD_OUTPUTS)
    pooled = case.graphs.head.graph.input[0]
    assert pooled.name == "pooled" and pooled.type.tensor_type.shape.dim[0].dim_param == "rois"
    # The RoI axis is dynamic: the head runs on any number of RoIs, each row independently.
    p, c = case.model.pooled_size, case.model.ps_channels
    rois = np.random.default_rng(0).normal(size=(3, c, p, p)).astype(np.float32)
    head = session(case.graphs.head)
    three, one = head.run(None, {"pooled": rois}), head.run(None, {"pooled": rois[1:2]})
    with torch.no_grad():
        expected = [t.numpy() for t in case.model.head(torch.from_numpy(rois))]
    assert three[0].shape == (3, case.model.num_classes + 1) and three[1].shape == (3, 4)
    for ours, theirs, single in zip(three, expected, one):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
        np.testing.assert_allclose(single[0], ours[1], atol=1e-6)


def test_postprocess_params_come_from_the_model(case: Case) -> None:
    params, model = case.graphs.params, case.model
    assert set(params.to_dict()) == PARAM_KEYS
    assert (params.anchor_sizes, params.anchor_ratios) == (model.anchor_sizes, model.anchor_ratios)
    assert (params.pre_nms_top_n, params.post_nms_top_n) == (model.pre_nms_top_n, model.post_nms_top_n)
    assert (params.ps_channels, params.pooled_size, params.spatial_scale) == (model.ps_channels, 7, 1 / 16)
    assert (params.background_index, params.rcnn_box_weights) == (0, (10.0, 10.0, 5.0, 5.0))


def test_pipeline_gives_the_pytorch_detections(case: Case) -> None:
    (tb, ts, tl), (pb, ps, pl) = case.torch_out, case.pipeline_out
    count = int((tl >= 0).sum())
    assert count > 0, "the fixture must produce detections"
    assert int((pl >= 0).sum()) == count
    assert np.array_equal(pl, tl)
    assert np.abs(pb - tb).max() <= 1e-3
    assert np.abs(ps - ts).max() <= 1e-4


def test_single_graph_uses_standard_ops_and_gives_the_pipeline_detections(case: Case) -> None:
    onnx.checker.check_model(case.single, full_check=True)
    ops = [n.op_type for n in case.single.graph.node]
    assert {n.domain for n in case.single.graph.node} <= {"", "ai.onnx"}
    assert (ops.count("RoiAlign"), ops.count("NonMaxSuppression"), ops.count("TopK")) == (1, 2, 2)
    roi_align = next(n for n in case.single.graph.node if n.op_type == "RoiAlign")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in roi_align.attribute}
    assert attrs["coordinate_transformation_mode"] == b"half_pixel" and attrs["mode"] == b"avg"
    (pb, ps, pl), (sb, ss, sl) = case.pipeline_out, case.single_out
    assert sb.shape == pb.shape and ss.shape == ps.shape and sl.dtype == np.int64
    assert int((sl >= 0).sum()) == int((pl >= 0).sum())
    # Match each pipeline detection to an unused single-graph one of the same class (ties may
    # order differently, see edgekit.detector_single_graph).
    unused = set(np.flatnonzero(sl[0] >= 0).tolist())
    for i in np.flatnonzero(pl[0] >= 0):
        same = [j for j in unused if sl[0, j] == pl[0, i]]
        assert same, f"no single-graph detection of class {pl[0, i]}"
        iou = box_iou(pb[0, i:i + 1], sb[0, same])[0]
        j = same[int(iou.argmax())]
        assert iou.max() >= 0.99 and abs(ss[0, j] - ps[0, i]) <= 1e-3
        unused.remove(j)


def test_single_graph_pads_when_nothing_passes_the_threshold(case: Case) -> None:
    params = dataclasses.replace(case.graphs.params, score_threshold=0.999)
    boxes, scores, labels = session(single_graph(case.graphs.stage1, case.graphs.head, params)).run(
        None, {"images": case.image})
    k = params.max_detections
    assert boxes.shape == (1, k, 4) and (labels == -1).all() and (scores == 0).all() and (boxes == 0).all()


def test_single_graph_refuses_a_dynamic_batch(case: Case) -> None:
    stage1 = onnx.ModelProto()
    stage1.CopyFrom(case.graphs.stage1)
    stage1.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    with pytest.raises(ExportError, match="static shape"):
        single_graph(stage1, case.graphs.head, case.graphs.params)


# One end-to-end bundle is enough: every detector takes the same code path.
@pytest.mark.parametrize("case", ["thundernet-snet146"], indirect=True)
def test_export_writes_a_bundle_that_runs_from_its_manifest(case: Case, tmp_path: Path) -> None:
    weights = tmp_path / "decisive.pt"
    torch.save(case.model.state_dict(), weights)
    result = edgekit.export(case.name, out=tmp_path / "bundle", weights=weights)
    manifest = verify(result.bundle)
    assert [g.role for g in manifest.graphs] == ["stage1", "head", "single"]
    assert manifest.postprocess.kind == "twostage" and set(manifest.postprocess.params) == PARAM_KEYS
    assert [(o.name, o.shape, o.dtype) for o in manifest.outputs] == [
        ("boxes", (1, 100, 4), "float32"), ("scores", (1, 100), "float32"), ("labels", (1, 100), "int64")]
    # The board's view: graph files and the manifest's parameters only.
    params = TwoStageParams.from_dict(manifest.postprocess.params)
    stage1, head, single = (ort.InferenceSession(str(result.bundle / manifest.graph(role).path),
                                                 providers=["CPUExecutionProvider"])
                            for role in ("stage1", "head", "single"))
    out = detect(case.image, lambda x: tuple(stage1.run(None, {"images": x})),
                 lambda p: tuple(head.run(None, {"pooled": p})), params)
    for ours, expected in zip((*out, *single.run(None, {"images": case.image})),
                              (*case.pipeline_out, *case.single_out)):
        np.testing.assert_array_equal(ours, expected)


@pytest.mark.slow
def test_dynamic_batch_exports_the_pipeline_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    result = edgekit.export("thundernet-snet49", out=tmp_path / "bundle", dynamic_batch=True, num_classes=3)
    assert [g.role for g in result.manifest.graphs] == ["stage1", "head"]
    assert result.manifest.graph("stage1").inputs[0].shape == ("batch", 3, 320, 320)
    assert result.manifest.outputs[0].shape == ("batch", 100, 4)
    params = TwoStageParams.from_dict(result.manifest.postprocess.params)
    stage1 = ort.InferenceSession(str(result.bundle / "stage1.onnx"), providers=["CPUExecutionProvider"])
    head = ort.InferenceSession(str(result.bundle / "head.onnx"), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).normal(size=(2, 3, 320, 320)).astype(np.float32)
    boxes, scores, labels = detect(images, lambda x: tuple(stage1.run(None, {"images": x})),
                                   lambda p: tuple(head.run(None, {"pooled": p})), params)
    assert boxes.shape == (2, 100, 4) and labels.shape == (2, 100)
    # Untrained, 3 classes: every probability is near 1/4, above the 0.05 threshold.
    assert ((labels >= 0).sum(axis=1) > 0).all() and labels.max() < 3


def test_single_graph_runs_in_openvino(case: Case, tmp_path: Path) -> None:
    ov = pytest.importorskip("openvino")
    path = tmp_path / "single.onnx"
    onnx.save(case.single, path)
    # OpenVINO's CPU plugin computes in bf16 where the CPU has it (AMX, AVX512-BF16) unless told
    # otherwise; that moves logits by ~5e-2 and changes the ranking, so ask for f32.
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled({"images": case.image})
    boxes, scores, labels = (result[compiled.output(name)] for name in ("boxes", "scores", "labels"))
    (pb, ps, pl) = case.pipeline_out
    assert np.array_equal(labels, pl)
    assert np.abs(boxes - pb).max() <= 1e-2 and np.abs(scores - ps).max() <= 1e-3


def test_single_graph_pooling_equals_the_numpy_ps_roi_align() -> None:
    # The per-bin RoiAlign of the single graph against the runtime's PSRoI align, on random
    # features and RoIs that reach past the map's edges.
    from edgekit.detector_single_graph import _Builder, _ps_roi_align
    from edgekit.runtimes.twostage import TwoStageParams, ps_roi_align

    rng = np.random.default_rng(3)
    c, p, h, w = 5, 7, 20, 20
    features = rng.normal(size=(1, c * p * p, h, w)).astype(np.float32)
    corners = rng.uniform(-40, 360, size=(37, 2, 2)).astype(np.float32)
    proposals = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
    params = TwoStageParams(num_classes=6, background_index=0, anchor_sizes=(32.0,), anchor_ratios=(1.0,),
                            stride=16, pre_nms_top_n=100, post_nms_top_n=37, rpn_nms_threshold=0.7,
                            box_nms_threshold=0.5, score_threshold=0.05, max_detections=10, pooled_size=p,
                            sampling_ratio=2, ps_channels=c, spatial_scale=1 / 16, aligned=True,
                            rpn_box_weights=(1.0, 1.0, 1.0, 1.0), rcnn_box_weights=(10.0, 10.0, 5.0, 5.0),
                            scale_clamp=4.0)
    b = _Builder()
    _ps_roi_align(b, "proposals", params)
    graph = onnx.helper.make_graph(
        b.nodes, "pool",
        [onnx.helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, list(features.shape)),
         onnx.helper.make_tensor_value_info("proposals", onnx.TensorProto.FLOAT, ["P", 4])],
        [onnx.helper.make_tensor_value_info("head/pooled", onnx.TensorProto.FLOAT, None)], initializer=b.constants)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    (ours,) = session(model).run(None, {"features": features, "proposals": proposals})
    rois = np.concatenate([np.zeros((len(proposals), 1), np.float32), proposals], axis=1)
    expected = ps_roi_align(features, rois, p, params.spatial_scale, params.sampling_ratio, aligned=True)
    assert ours.shape == expected.shape == (37, c, p, p)
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=1e-5)
