"""The single-graph variant of a two-stage detector: stage 1, glue and head in one ONNX graph.

``images [1, 3, H, W] -> boxes [1, K, 4], scores [1, K], labels [1, K]`` from standard
opset-17 ops, for targets that hold RoiAlign and NonMaxSuppression (tested here with
onnxruntime and OpenVINO in f32; TensorRT's ONNX parser takes both ops, and every TopK has a
constant K, but it is not run here). The glue of :mod:`edgekit.runtimes.twostage`, op by op:

- proposals: the anchors are a constant (the grid is fixed by the input size); TopK of the
  objectness, Gather, box decode as arithmetic, clip (Min/Max), NonMaxSuppression;
- PSRoI align: one RoiAlign (``half_pixel`` is ``aligned=True``, ``avg``, the same sampling
  ratio) pools every bin rectangle of every RoI 1x1 from the ``ps`` channels of its bin (the
  channel map regrouped into ``p * p`` images), then a transpose puts the bins back in place;
- the head graph, then Softmax, decode, clip, NonMaxSuppression over all classes at once
  (boxes shared, one score row per class), GatherND of the scores, padding, TopK of K.

Differences from the numpy pipeline (detections agree to float rounding otherwise):

- ties: onnxruntime's NonMaxSuppression pops equal scores in heap order (not input order), and
  the final TopK breaks equal scores by class, then rank (the pipeline: by RoI, then class);
- ``max_output_boxes_per_class`` is ``post_nms_top_n`` for the RPN NMS (one class: the
  pipeline's ``max_keep``) and ``max_detections`` for the final NMS, which cannot change the
  overall top K; both NMS drop a box at IoU strictly above the threshold, as the pipeline does;
- the head sees the proposals actually kept (the pipeline does too; ``model(x)`` pads them);
- one image only: the batch is fixed at 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, compose, helper, numpy_helper

from edgekit.errors import ExportError
from edgekit.onnx_export import OPSET
from edgekit.runtimes.boxes import anchor_shapes, grid_anchors
from edgekit.runtimes.twostage import TwoStageParams

OUTPUTS = ("boxes", "scores", "labels")
_HEAD_PREFIX = "head/"


class _Builder:
    """Appends nodes and constants under unique ``glue/`` names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"glue/{hint}_{self._count}"

    def const(self, value: np.ndarray | Sequence[float] | Sequence[int], dtype: type = np.float32) -> str:
        """A constant initializer holding ``value``."""
        name = self._name("const")
        self.constants.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def ints(self, *values: int) -> str:
        """A 1-D int64 constant (axes, shapes, counts)."""
        return self.const(list(values), np.int64)

    def op(self, op_type: str, *inputs: str, name: str | None = None, **attrs: object) -> str:
        """Add a one-output node; returns the output's name (``name`` if given)."""
        return self.op_multi(op_type, *inputs, outputs=1, names=(name,) if name else None, **attrs)[0]

    def op_multi(self, op_type: str, *inputs: str, outputs: int, names: tuple[str, ...] | None = None,
                 **attrs: object) -> list[str]:
        """Add a node with ``outputs`` outputs; returns their names."""
        outs = list(names) if names else [self._name(op_type) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self._name(op_type), **attrs))
        return outs

    def cols(self, x: str, start: int, end: int) -> str:
        """``x[:, start:end]``."""
        return self.op("Slice", x, self.ints(start), self.ints(end), self.ints(1))

    def decode(self, deltas: str, reference: str, weights: Sequence[float], scale_clamp: float,
               image_size: tuple[int, int]) -> str:
        """Clipped ``[M, 4]`` boxes: Faster R-CNN decode as arithmetic, then Min/Max to the image."""
        ref_wh = self.op("Sub", self.cols(reference, 2, 4), self.cols(reference, 0, 2))
        ref_ctr = self.op("Add", self.cols(reference, 0, 2), self.op("Mul", ref_wh, self.const([0.5])))
        d_xy = self.op("Div", self.cols(deltas, 0, 2), self.const(weights[:2]))
        d_wh = self.op("Min", self.op("Div", self.cols(deltas, 2, 4), self.const(weights[2:])),
                       self.const([scale_clamp]))
        ctr = self.op("Add", self.op("Mul", d_xy, ref_wh), ref_ctr)
        half = self.op("Mul", self.op("Mul", self.op("Exp", d_wh), ref_wh), self.const([0.5]))
        boxes = self.op("Concat", self.op("Sub", ctr, half), self.op("Add", ctr, half), axis=1)
        h, w = image_size
        return self.op("Max", self.op("Min", boxes, self.const([w, h, w, h])), self.const([0.0]))

    def column(self, x: str, index: int) -> str:
        """``x[:, index]`` as a 1-D tensor."""
        return self.op("Gather", x, self.const(index, np.int64), axis=1)


def _static_shape(value: onnx.ValueInfoProto) -> tuple[int, ...]:
    dims = value.type.tensor_type.shape.dim
    if not dims or any(not d.HasField("dim_value") for d in dims):
        raise ExportError(f"'{value.name}' needs a static shape for the single-graph variant "
                          f"(got {[d.dim_param or d.dim_value for d in dims]}); export with a fixed batch of 1.")
    return tuple(d.dim_value for d in dims)


def _proposals(b: _Builder, params: TwoStageParams, grid_hw: tuple[int, int], image_size: tuple[int, int]) -> str:
    """rpn_logits, rpn_deltas -> ``[P, 4]`` proposals (TopK, decode, clip, NMS)."""
    fh, fw = grid_hw
    a = params.num_anchors
    anchors = grid_anchors(anchor_shapes(params.anchor_sizes, params.anchor_ratios), params.stride, grid_hw)
    scores = b.op("Reshape", b.op("Transpose", "rpn_logits", perm=[0, 2, 3, 1]), b.ints(-1))
    deltas = b.op("Reshape", "rpn_deltas", b.ints(1, a, 4, fh, fw))
    deltas = b.op("Reshape", b.op("Transpose", deltas, perm=[0, 3, 4, 1, 2]), b.ints(-1, 4))
    k = min(params.pre_nms_top_n, anchors.shape[0])
    # ONNX TopK breaks ties by the lower index, as the reference's stable sort does.
    top_scores, top_idx = b.op_multi("TopK", scores, b.ints(k), outputs=2, axis=0, largest=1, sorted=1)
    boxes = b.decode(b.op("Gather", deltas, top_idx, axis=0), b.op("Gather", b.const(anchors), top_idx, axis=0),
                     params.rpn_box_weights, params.scale_clamp, image_size)
    selected = b.op("NonMaxSuppression", b.op("Unsqueeze", boxes, b.ints(0)),
                    b.op("Unsqueeze", top_scores, b.ints(0, 1)),
                    b.ints(params.post_nms_top_n), b.const([params.rpn_nms_threshold]))
    return b.op("Gather", boxes, b.column(selected, 2), axis=0)


def _ps_roi_align(b: _Builder, proposals: str, params: TwoStageParams) -> str:
    """``[P, 4]`` proposals -> pooled ``[P, ps, p, p]``: one RoiAlign over every (bin, RoI) pair.

    Bin ``(i, j)`` of a RoI reads only the ``ps`` channels ``c * p * p + i * p + j``, so the
    feature map is regrouped into ``p * p`` images of ``ps`` channels (one per bin) and each
    RoI is cut into its ``p * p`` bin rectangles, each pooled 1x1 from its bin's image. A 1x1
    RoiAlign over a bin rectangle takes the samples of that bin in the whole-RoI RoiAlign (same
    start, same bin size, same sampling ratio), so only float rounding of the bin corners
    differs; it computes ``p * p`` times fewer values than pooling the whole RoI on every channel.
    """
    p, c = params.pooled_size, params.ps_channels
    bins = p * p
    # features [1, c * bins, H, W] -> [bins, c, H, W]: image k holds channels c * bins + k.
    grouped = b.op("Transpose", b.op("Reshape", "features", b.ints(c, bins, 0, 0)), perm=[1, 0, 2, 3])
    # Bin rectangles [bins, P, 4]: x1 + j * w / p ... in input pixels (RoiAlign scales them).
    x1, y1, x2, y2 = (b.op("Unsqueeze", b.column(proposals, k), b.ints(0)) for k in range(4))  # [1, P]
    step_x = b.op("Div", b.op("Sub", x2, x1), b.const([float(p)]))
    step_y = b.op("Div", b.op("Sub", y2, y1), b.const([float(p)]))
    cols = b.const(np.tile(np.arange(p, dtype=np.float32), p).reshape(bins, 1))  # j of bin k
    rows = b.const(np.repeat(np.arange(p, dtype=np.float32), p).reshape(bins, 1))  # i of bin k
    left, top = b.op("Add", x1, b.op("Mul", cols, step_x)), b.op("Add", y1, b.op("Mul", rows, step_y))
    rects = b.op("Concat", *(b.op("Unsqueeze", t, b.ints(2)) for t in
                             (left, top, b.op("Add", left, step_x), b.op("Add", top, step_y))), axis=2)
    count = b.op("Shape", proposals, start=0, end=1)
    image_of = b.op("Expand", b.const(np.arange(bins).reshape(bins, 1), np.int64),
                    b.op("Concat", b.ints(bins), count, axis=0))  # [bins, P]: bin k reads image k
    mode = "half_pixel" if params.aligned else "output_half_pixel"
    pooled = b.op("RoiAlign", grouped, b.op("Reshape", rects, b.ints(-1, 4)), b.op("Reshape", image_of, b.ints(-1)),
                  mode="avg", output_height=1, output_width=1, sampling_ratio=params.sampling_ratio,
                  spatial_scale=params.spatial_scale, coordinate_transformation_mode=mode)  # [bins * P, c, 1, 1]
    # [bins, P, c] -> [P, c, bins] -> [P, c, p, p]
    per_roi = b.op("Transpose", b.op("Reshape", pooled, b.op("Concat", b.ints(bins), count, b.ints(c), axis=0)),
                   perm=[1, 2, 0])
    return b.op("Reshape", per_roi, b.ints(-1, c, p, p), name=_HEAD_PREFIX + "pooled")


def _detections(b: _Builder, proposals: str, params: TwoStageParams, image_size: tuple[int, int]) -> None:
    """Head outputs -> padded ``boxes``, ``scores``, ``labels`` graph outputs."""
    k = params.max_detections
    columns = [i for i in range(params.num_classes + 1) if i != params.background_index]
    probs = b.op("Gather", b.op("Softmax", _HEAD_PREFIX + "cls_logits", axis=1), b.ints(*columns), axis=1)
    boxes = b.decode(_HEAD_PREFIX + "box_deltas", proposals, params.rcnn_box_weights, params.scale_clamp,
                     image_size)
    nonempty = b.op("And", b.op("Greater", b.column(boxes, 2), b.column(boxes, 0)),
                    b.op("Greater", b.column(boxes, 3), b.column(boxes, 1)))
    # Empty boxes get -inf, which no score_threshold lets through (the reference drops them).
    probs = b.op("Where", b.op("Unsqueeze", nonempty, b.ints(1)), probs, b.const([-np.inf]))
    selected = b.op("NonMaxSuppression", b.op("Unsqueeze", boxes, b.ints(0)),
                    b.op("Unsqueeze", b.op("Transpose", probs, perm=[1, 0]), b.ints(0)),
                    b.ints(k), b.const([params.box_nms_threshold]), b.const([params.score_threshold]))
    labels, rois = b.column(selected, 1), b.column(selected, 2)
    scores = b.op("GatherND", probs, b.op("Concat", b.op("Unsqueeze", rois, b.ints(1)),
                                          b.op("Unsqueeze", labels, b.ints(1)), axis=1))
    # Pad to K before ranking, so TopK's K is a constant (TensorRT takes no other); padding
    # scores -1 rank below every probability and come out as 0.
    padded = {"boxes": b.op("Concat", b.op("Gather", boxes, rois, axis=0), b.const(np.zeros((k, 4))), axis=0),
              "labels": b.op("Concat", labels, b.const(np.full(k, -1), np.int64), axis=0)}
    top_scores, order = b.op_multi("TopK", b.op("Concat", scores, b.const(np.full(k, -1.0)), axis=0), b.ints(k),
                                   outputs=2, axis=0, largest=1, sorted=1)
    ranked = {"boxes": b.op("Gather", padded["boxes"], order, axis=0), "scores": b.op("Max", top_scores, b.const(0.0)),
              "labels": b.op("Gather", padded["labels"], order, axis=0)}
    for name in OUTPUTS:
        b.op("Unsqueeze", ranked[name], b.ints(0), name=name)


def single_graph(stage1: onnx.ModelProto, head: onnx.ModelProto, params: TwoStageParams) -> onnx.ModelProto:
    """One opset-17 graph ``images -> boxes, scores, labels`` from the pipeline's two graphs.

    Args:
        stage1: images ``[1, 3, H, W]`` -> rpn_logits, rpn_deltas, features (static shapes).
        head: pooled -> cls_logits, box_deltas (dynamic RoI axis).
        params: the pipeline's post-processing parameters.

    Raises:
        ExportError: stage 1 without static shapes (dynamic batch, or batch > 1).
    """
    shapes = {v.name: _static_shape(v) for v in (*stage1.graph.input, *stage1.graph.output)}
    image = _static_shape(stage1.graph.input[0])
    if image[0] != 1:
        raise ExportError(f"the single-graph variant runs one image; stage 1 has batch {image[0]}.")
    image_size = (image[2], image[3])
    grid_hw = shapes["rpn_logits"][2:]
    b = _Builder()
    proposals = _proposals(b, params, grid_hw, image_size)
    _ps_roi_align(b, proposals, params)
    glue_before_head = len(b.nodes)
    _detections(b, proposals, params, image_size)
    head_graph = compose.add_prefix(head, _HEAD_PREFIX).graph
    nodes = [*stage1.graph.node, *b.nodes[:glue_before_head], *head_graph.node, *b.nodes[glue_before_head:]]
    k = params.max_detections
    outputs = [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, k, 4]),
               helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, k]),
               helper.make_tensor_value_info("labels", TensorProto.INT64, [1, k])]
    graph = helper.make_graph(
        nodes, f"{stage1.graph.name}_single",
        list(stage1.graph.input), outputs,
        initializer=[*stage1.graph.initializer, *b.constants, *head_graph.initializer])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="edgekit", ir_version=stage1.ir_version)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model
