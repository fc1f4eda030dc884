"""Two-stage detectors to ONNX: the graphs of the pipeline and its post-processing block.

DESIGN.md ("Detection and segmentation on the board"): PSRoI align has no ONNX op and RoI /
NMS ops differ per target, so a ThunderNet or Light-Head R-CNN bundle is a pipeline::

    stage1.onnx   images [N, 3, H, W] -> rpn_logits [N, A, h, w], rpn_deltas [N, 4A, h, w],
                                         features [N, ps * p * p, h, w]
    (numpy glue)  proposals: top-k anchors, decode, clip, NMS; PSRoI align -> pooled
    head.onnx     pooled [rois, ps, p, p] -> cls_logits [rois, classes + 1], box_deltas [rois, 4]
    (numpy glue)  softmax, decode, clip, per-class NMS, top-k -> boxes, scores, labels

The glue is :mod:`edgekit.runtimes.twostage`; its parameters (:class:`TwoStageParams`) are
the manifest's ``postprocess.params``. Where the batch is 1, a single-graph variant
(``single.onnx``, :mod:`edgekit.detector_single_graph`) is written as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import onnx
import torch
from torch import Tensor, nn

from edgekit.errors import ExportError
from edgekit.models.detection import TwoStageDetector
from edgekit.onnx_export import OPSET, opset_of, torch_to_onnx
from edgekit.runtimes.twostage import POSTPROCESS_KIND, TwoStageParams

if TYPE_CHECKING:
    from edgekit.api import ExportOptions, GraphPlan, SourceModel
    from edgekit.inputspec import InputSpec

STAGE1_ROLE, HEAD_ROLE, SINGLE_ROLE = "stage1", "head", "single"
STAGE1_OUTPUTS = ("rpn_logits", "rpn_deltas", "features")
HEAD_INPUT = "pooled"
HEAD_OUTPUTS = ("cls_logits", "box_deltas")
ROI_DIM = "rois"
# The background column of TwoStageDetector's class logits (RCNNHead: "background, index 0").
BACKGROUND_INDEX = 0


class Stage1(nn.Module):
    """Images -> (rpn_logits, rpn_deltas, features): the detector's conv graph."""

    def __init__(self, detector: TwoStageDetector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``TwoStageDetector.stage1``."""
        return self.detector.stage1(images)


class Head(nn.Module):
    """Pooled RoIs -> (cls_logits, box_deltas): the R-CNN subnet."""

    def __init__(self, detector: TwoStageDetector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        """``TwoStageDetector.head``."""
        return self.detector.head(pooled)


@dataclass
class DetectorGraphs:
    """The optimized graphs of a two-stage detector and how to glue them.

    Args:
        stage1: images -> rpn_logits, rpn_deltas, features.
        head: pooled (dynamic ``rois`` axis) -> cls_logits, box_deltas.
        params: the numpy glue's parameters (the manifest's post-processing block).
        passes: role -> graph pass records.
        node_counts: role -> (nodes as exported, nodes after the passes).
        modules: role -> the eval-mode module each graph was traced from (``Stage1``, ``Head``).
        examples: role -> the example inputs it was traced with.
    """

    stage1: onnx.ModelProto
    head: onnx.ModelProto
    params: TwoStageParams
    passes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    node_counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    modules: dict[str, nn.Module] = field(default_factory=dict)
    examples: dict[str, tuple[Tensor, ...]] = field(default_factory=dict)


def twostage_params(detector: TwoStageDetector) -> TwoStageParams:
    """The glue's parameters, read from the detector's attributes and box coders."""
    return TwoStageParams(
        num_classes=detector.num_classes, background_index=BACKGROUND_INDEX,
        anchor_sizes=detector.anchor_sizes, anchor_ratios=detector.anchor_ratios, stride=detector.stride,
        pre_nms_top_n=detector.pre_nms_top_n, post_nms_top_n=detector.post_nms_top_n,
        rpn_nms_threshold=detector.rpn_nms_threshold, box_nms_threshold=detector.box_nms_threshold,
        score_threshold=detector.score_threshold, max_detections=detector.max_detections,
        pooled_size=detector.pooled_size, sampling_ratio=detector.sampling_ratio, ps_channels=detector.ps_channels,
        spatial_scale=1.0 / detector.stride, aligned=True,  # TwoStageDetector.pool: aligned=True
        rpn_box_weights=detector.rpn_coder.weights, rcnn_box_weights=detector.rcnn_coder.weights,
        scale_clamp=float(detector.rpn_coder.scale_clamp),
    )


def detector_to_onnx(detector: nn.Module, imgsz: tuple[int, int], *, batch: int = 1, dynamic_batch: bool = False,
                     input_name: str = "images") -> DetectorGraphs:
    """Export and optimize the two graphs of a two-stage detector.

    Args:
        detector: a :class:`TwoStageDetector` (ThunderNet, Light-Head R-CNN).
        imgsz: (height, width) of the stage-1 input.
        batch: fixed batch of stage 1 (the head's RoI axis is always dynamic).
        dynamic_batch: make stage 1's batch symbolic instead.
        input_name: name of the image input.

    Raises:
        ExportError: not a two-stage detector, a box coder the glue does not reproduce, an
            export failure, or a BatchNormalization left after the graph passes.
    """
    if not isinstance(detector, TwoStageDetector):
        raise ExportError(f"a detect model must be a TwoStageDetector (ThunderNet, Light-Head R-CNN), "
                          f"got {type(detector).__name__}; the detect pipeline needs its stage1/head split.")
    if detector.rpn_coder.scale_clamp != detector.rcnn_coder.scale_clamp:
        raise ExportError("the RPN and R-CNN box coders clamp dw/dh differently; the glue takes one scale_clamp.")
    detector = detector.eval()
    params = twostage_params(detector)
    # A dynamic batch is traced at 2 so no size-1 dimension gets folded into a constant.
    example = torch.randn(2 if dynamic_batch else batch, 3, *imgsz, generator=torch.Generator().manual_seed(0))
    modules = {STAGE1_ROLE: Stage1(detector).eval(), HEAD_ROLE: Head(detector).eval()}
    stage1_raw = torch_to_onnx(modules[STAGE1_ROLE], example, input_name=input_name,
                               output_names=STAGE1_OUTPUTS, dynamic_batch=dynamic_batch)
    p = detector.pooled_size
    pooled = torch.randn(2, detector.ps_channels, p, p, generator=torch.Generator().manual_seed(1))
    head_raw = torch_to_onnx(modules[HEAD_ROLE], pooled, input_name=HEAD_INPUT, output_names=HEAD_OUTPUTS,
                             dynamic_batch=True)
    optimized, passes, counts = {}, {}, {}
    for role, raw in ((STAGE1_ROLE, stage1_raw), (HEAD_ROLE, head_raw)):
        optimized[role], passes[role] = _optimize(raw, role)
        counts[role] = (len(raw.graph.node), len(optimized[role].graph.node))
    # torch_to_onnx calls a dynamic dimension 0 "batch"; for the head it counts RoIs.
    return DetectorGraphs(stage1=optimized[STAGE1_ROLE], head=_rename_dim(optimized[HEAD_ROLE], "batch", ROI_DIM),
                          params=params, passes=passes, node_counts=counts, modules=modules,
                          examples={STAGE1_ROLE: (example,), HEAD_ROLE: (pooled,)})


def _optimize(model: onnx.ModelProto, role: str) -> tuple[onnx.ModelProto, list[dict[str, Any]]]:
    from edgekit.graph import optimize

    optimized, records = optimize(model)
    left = sum(n.op_type == "BatchNormalization" for n in optimized.graph.node)
    if left:
        raise ExportError(f"{left} BatchNormalization node(s) remain in the '{role}' graph after the graph "
                          "passes; fold_batchnorm could not fold them (see passes.json).")
    if opset_of(optimized) != OPSET:
        raise ExportError(f"the '{role}' graph has opset {opset_of(optimized)} after the passes, not {OPSET}.")
    return optimized, [r.to_dict() for r in records]


def _rename_dim(model: onnx.ModelProto, old: str, new: str) -> onnx.ModelProto:
    """A copy of ``model`` whose symbolic dimension ``old`` is called ``new`` (inputs, outputs, value infos)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for value in (*out.graph.input, *out.graph.output, *out.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == old:
                dim.dim_param = new
    return out


def export_detector(source: SourceModel, spec: InputSpec, opts: ExportOptions) -> GraphPlan:
    """The ``detect`` task pipeline of ``edgekit.export``: stage1 + head graphs (+ single graph at batch 1)."""
    from edgekit.api import GraphPlan
    from edgekit.bundle import PostProcess, TensorSpec
    from edgekit.detector_single_graph import single_graph

    detector = source.module
    dynamic = spec.dynamic_batch
    graphs = detector_to_onnx(detector, spec.imgsz, batch=1 if dynamic else int(spec.shape[0]),
                              dynamic_batch=dynamic, input_name=spec.name)
    models = {STAGE1_ROLE: graphs.stage1, HEAD_ROLE: graphs.head}
    if not dynamic and spec.shape[0] == 1:
        # The single graph holds RoiAlign + NonMaxSuppression for one image; the pipeline
        # remains the contract for every target (the glue runs whatever the batch).
        models[SINGLE_ROLE] = single_graph(graphs.stage1, graphs.head, graphs.params)
        # Composed from the optimized graphs: no pass runs on it.
        graphs.node_counts[SINGLE_ROLE] = (len(models[SINGLE_ROLE].graph.node),) * 2
    n, k = spec.shape[0], graphs.params.max_detections
    outputs = (
        TensorSpec("boxes", (n, k, 4), "float32", "x1, y1, x2, y2 in input pixels, best first; padding rows 0"),
        TensorSpec("scores", (n, k), "float32", "class probability of each detection; padding 0"),
        TensorSpec("labels", (n, k), "int64", "0-based class index (background excluded); padding -1"),
    )
    return GraphPlan(graphs=models, passes=graphs.passes, outputs=outputs,
                     postprocess=PostProcess(POSTPROCESS_KIND, graphs.params.to_dict()),
                     num_classes=graphs.params.num_classes, node_counts=graphs.node_counts,
                     modules=graphs.modules, examples=graphs.examples)

