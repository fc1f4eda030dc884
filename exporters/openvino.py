"""OpenVINO targets: ``openvino-fp32``, ``openvino-fp16`` and ``openvino-int8`` IR (``.xml`` + ``.bin``).

Every target starts from the optimized fp32 ONNX (DESIGN.md, "Canonical IR"), converted with
``openvino.convert_model`` and written with ``openvino.save_model``:

- fp32 keeps fp32 weights (``compress_to_fp16=False``). The graph entry says ``fp32`` so the
  runtime compiles it with ``INFERENCE_PRECISION_HINT=f32``: the CPU plugin otherwise runs
  bf16 on CPUs with AVX-512 BF16 / AMX.
- fp16 stores the weights as fp16 (``compress_to_fp16=True``); they are decompressed at load.
- int8 is the QDQ ONNX the job's recipe describes (profile ``openvino``: NNCF's placement),
  which OpenVINO's ONNX frontend reads as FakeQuantize on activations and int8 weight
  constants; the CPU plugin's low-precision transformations then run those convolutions on
  integers. The IR is checked against onnxruntime running the same QDQ ONNX on one input,
  and the cosine is stored in the IR (``rt_info``: ``edgekit/ort_qdq_cosine``); layers the recipe
  keeps float (mixed precision) get no FakeQuantize, and their map is ``edgekit/layer_precision``. A graph the
  job has no recipe for (a detector head calibrated by no one) is written fp32 and says so.

The ONNX metadata (``edgekit.*`` props: model, task, input spec, labels) is copied into the
IR's ``rt_info`` under ``edgekit``, so an IR copied out of its bundle still says what it is.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from edgekit.errors import ExportError
from edgekit.exporters.onnx import tensor_specs
from edgekit.exporters.registry import ExportJob, Precision, Target, register_target

if TYPE_CHECKING:
    import onnx
    import openvino as ov

    from edgekit.bundle import GraphFile
    from edgekit.calib.recipe import QuantRecipe

DEVICE = "CPU"
QUANT_PROFILE = "openvino"
# Lowest cosine between the int8 IR and onnxruntime on the same QDQ ONNX that always passes export;
# both quantize identically, so what is left is rounding order (OpenVINO's integer kernels vs
# onnxruntime's float Q/DQ). Where INT8 itself moves the outputs far, rounding differences grow
# with it through the network: a BiSeNet whose simulated INT8 is at cosine 0.988 to fp32 had
# OpenVINO and onnxruntime at 0.988 to each other. So the IR also passes when it is as close to
# fp32 as the simulated INT8 is, within QDQ_ERROR_SHARE of INT8's own error (1 - cosine): a misread
# Q/DQ pair (wrong axis, scale or zero point) takes the IR away from fp32, rounding does not.
MIN_QDQ_COSINE = 0.99
QDQ_ERROR_SHARE = 0.25
# Symbolic dimensions are fed at this size when the IR is checked (batch, RoIs).
_CHECK_DIM = 1


def onnx_to_openvino(model: onnx.ModelProto) -> ov.Model:
    """Convert an ONNX graph to an OpenVINO model (through a temporary file, as the frontend reads files).

    Channel halves taken with a stride (ShuffleNet's even/odd split after edgekit's
    ``fuse_channel_shuffle``) are handed over as a channel shuffle + split first
    (:func:`strided_halves_to_shuffle`).
    """
    import onnx
    import openvino as ov

    model = strided_halves_to_shuffle(model)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save_model(model, path, save_as_external_data=False)
        try:
            return ov.convert_model(str(path))
        except Exception as exc:  # the frontend raises its own OpConversionFailure / RuntimeError
            raise ExportError(f"OpenVINO {ov.get_version()} cannot convert the graph: {exc}") from exc


def strided_halves_to_shuffle(model: onnx.ModelProto) -> onnx.ModelProto:
    """``x[:, 0::2]`` and ``x[:, 1::2]`` of one 4-D tensor -> Reshape, Transpose, Reshape, Split (same outputs).

    edgekit's ``fuse_channel_shuffle`` leaves ShuffleNet's channel split as two strided Slices,
    which onnxruntime runs well. OpenVINO's CPU plugin runs a channel-strided StridedSlice on its
    blocked (nChw16c) layouts as a gather: on shufflenetv2-1.0 the INT8 IR took 2.4x the time of
    the same network with OpenVINO's own ShuffleChannels + Split, which its ONNX frontend makes
    of exactly this Reshape/Transpose/Reshape pattern. Pairs whose channel count or spatial size
    is unknown are left alone; the result is the same function (the export compares the IR with
    onnxruntime on the graph before this rewrite).
    """
    from collections import defaultdict

    import onnx
    from onnx import helper, numpy_helper

    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    halves: dict[str, dict[int, onnx.NodeProto]] = defaultdict(dict)
    for node in model.graph.node:
        if node.op_type != "Slice" or len(node.input) != 5 or any(n not in consts for n in node.input[1:]):
            continue
        starts, _, axes, steps = (consts[n].tolist() for n in node.input[1:])
        if axes == [1] and steps == [2] and starts in ([0], [1]):
            halves[node.input[0]][starts[0]] = node
    pairs = {x: p for x, p in halves.items() if set(p) == {0, 1}}
    if not pairs:
        return model
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in (*inferred.graph.value_info, *inferred.graph.input)}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    position = {n.output[0]: i for i, n in enumerate(model.graph.node) if n.output}
    emit: dict[str, list[onnx.NodeProto]] = {}  # first Slice of a pair -> the nodes that replace both
    for x, pair in pairs.items():
        shape = shapes.get(x)
        if shape is None or len(shape) != 4 or None in shape[1:] or shape[1] % 2:
            continue
        _, c, h, w = shape
        if any(len(range(k, min(int(consts[pair[k].input[2]][0]), c), 2)) != c // 2 for k in (0, 1)):
            continue  # not the whole even / odd half
        tag = f"{x}/edgekit_halves"
        for name, value in ((f"{tag}/grouped", [0, c // 2, 2, h * w]), (f"{tag}/flat", [0, c, h, w]),
                            (f"{tag}/sizes", [c // 2, c // 2])):
            out.graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.int64), name))
        even, odd = pair[0].output[0], pair[1].output[0]
        first, second = sorted((even, odd), key=position.__getitem__)
        emit[first] = [
            helper.make_node("Reshape", [x, f"{tag}/grouped"], [f"{tag}/g"], name=f"{tag}/Reshape"),
            helper.make_node("Transpose", [f"{tag}/g"], [f"{tag}/t"], name=f"{tag}/Transpose", perm=[0, 2, 1, 3]),
            helper.make_node("Reshape", [f"{tag}/t", f"{tag}/flat"], [f"{tag}/s"], name=f"{tag}/Reshape_back"),
            helper.make_node("Split", [f"{tag}/s", f"{tag}/sizes"], [even, odd], name=f"{tag}/Split", axis=1),
        ]
        emit[second] = []
    for node in model.graph.node:
        key = node.output[0] if node.output else ""
        out.graph.node.extend(emit[key] if key in emit else [node])
    used = {name for node in out.graph.node for name in node.input}
    kept = [i for i in out.graph.initializer if i.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    return out


def save_ir(model: ov.Model, source: onnx.ModelProto, out_dir: Path, role: str, *, compress_to_fp16: bool,
            precision: Precision, rt_info: Mapping[str, str] | None = None) -> GraphFile:
    """Write ``<role>.xml`` / ``<role>.bin`` and describe them (tensor names and shapes from the ONNX)."""
    import openvino as ov

    from edgekit.bundle import GraphFile

    props = {p.key.removeprefix("edgekit."): p.value for p in source.metadata_props if p.key.startswith("edgekit.")}
    for key, value in {**props, **(rt_info or {})}.items():
        model.set_rt_info(value, ["edgekit", key])
    path = Path(out_dir) / f"{role}.xml"
    ov.save_model(model, path, compress_to_fp16=compress_to_fp16)
    return GraphFile.from_file(out_dir, path.name, role, inputs=tensor_specs(source.graph.input),
                               outputs=tensor_specs(source.graph.output), precision=precision.value)


class OpenVinoTarget(Target):
    """Float IR: the optimized ONNX converted as is, weights stored at ``weight_precision``."""

    weight_precision: ClassVar[Precision] = Precision.FP32

    def export(self, job: ExportJob, out_dir: Path) -> list[GraphFile]:
        """Convert each graph and save it as ``<role>.xml`` + ``<role>.bin``."""
        compress = self.weight_precision is Precision.FP16
        return [save_ir(onnx_to_openvino(graph), graph, out_dir, role, compress_to_fp16=compress,
                        precision=self.weight_precision) for role, graph in job.graphs.items()]


@register_target("openvino-fp32", precisions=(Precision.FP32,), dynamic_batch=True, requires=("openvino",),
                 extra="openvino", summary="OpenVINO IR, fp32 weights, run at f32 by the CPU plugin")
class OpenVinoFp32(OpenVinoTarget):
    """OpenVINO IR with fp32 weights."""

    weight_precision = Precision.FP32


@register_target("openvino-fp16", precisions=(Precision.FP16,), dynamic_batch=True, requires=("openvino",),
                 extra="openvino", summary="OpenVINO IR with fp16-compressed weights")
class OpenVinoFp16(OpenVinoTarget):
    """OpenVINO IR with fp16-compressed weights."""

    weight_precision = Precision.FP16


@register_target("openvino-int8", precisions=(Precision.INT8, Precision.FP32), dynamic_batch=True,
                 requires=("openvino", "onnxruntime"), extra="openvino", quant_profile=QUANT_PROFILE,
                 summary="OpenVINO IR from the recipe's QDQ ONNX (NNCF placement), FakeQuantize on the CPU plugin")
class OpenVinoInt8(Target):
    """INT8 IR: the recipe's QDQ ONNX converted, checked against onnxruntime on the same graph."""

    def export(self, job: ExportJob, out_dir: Path) -> list[GraphFile]:
        """Quantize each graph with its recipe, convert, check and save it; graphs without a recipe stay fp32."""
        from edgekit.calib.qdq import quantize_model

        if not job.recipes:
            raise ExportError(f"target '{self.name}' needs a calibration recipe (profile '{QUANT_PROFILE}'); "
                              "pass --calib-data with images the model's preprocessing applies to.")
        files = []
        for role, graph in job.graphs.items():
            recipe = job.recipes.get(role)
            if recipe is None:
                files.append(save_ir(onnx_to_openvino(graph), graph, out_dir, role, compress_to_fp16=False,
                                     precision=Precision.FP32))
                continue
            _check_profile(recipe, role)
            qdq = quantize_model(graph, recipe)
            model = onnx_to_openvino(qdq)
            feeds = check_feeds(job, role, graph)
            # The check is whether OpenVINO reads every Q/DQ pair as onnxruntime does, so the float parts
            # run at f32 here: on CPUs with AVX-512 BF16/AMX the plugin's default bf16 alone moved a BiSeNet's
            # logits to cosine 0.988. What bf16 costs at run time is the accuracy-drop report's to measure
            # (the runtime compiles INT8 IRs with the plugin's default, f32 where mixed precision keeps fp32).
            cos = compare_with_onnxruntime(model, qdq, feeds, {"INFERENCE_PRECISION_HINT": "f32"}, reference=graph)
            cosine, int8_cosine = cos["ir_vs_qdq"], cos["qdq_vs_fp32"]
            faithful = cos["ir_vs_fp32"] >= int8_cosine - QDQ_ERROR_SHARE * (1.0 - int8_cosine)
            if cosine < MIN_QDQ_COSINE and not faithful:
                raise ExportError(f"the int8 IR of graph '{role}' disagrees with onnxruntime on the same QDQ ONNX "
                                  f"(cosine {cosine:.4f} < {MIN_QDQ_COSINE}) and is farther from fp32 than the "
                                  f"QDQ ONNX (cosine {cos['ir_vs_fp32']:.4f} vs {int8_cosine:.4f}); OpenVINO "
                                  f"{_ov_version()} read some Q/DQ pair differently. Export openvino-fp32, or "
                                  "onnx-int8 to run it in onnxruntime.")
            info = {"ort_qdq_cosine": f"{cosine:.6f}", "int8_fp32_cosine": f"{int8_cosine:.6f}",
                    "ir_fp32_cosine": f"{cos['ir_vs_fp32']:.6f}",
                    "recipe_hash": recipe.content_hash(),
                    "quant_profile": recipe.profile}
            if recipe.layer_precision:  # mixed precision: these layers have no FakeQuantize in the IR
                info["layer_precision"] = json.dumps({n: p.value for n, p in sorted(recipe.layer_precision.items())})
            files.append(save_ir(model, qdq, out_dir, role, compress_to_fp16=False, precision=Precision.INT8,
                                 rt_info=info))
        from edgekit.quantize import write_recipe_file

        write_recipe_file(out_dir, {r: job.recipes[r] for r in job.graphs if r in job.recipes}, job.calibration)
        return files


def _check_profile(recipe: QuantRecipe, role: str) -> None:
    if recipe.profile != QUANT_PROFILE:
        raise ExportError(f"the recipe for graph '{role}' was derived for profile '{recipe.profile}', not "
                          f"'{QUANT_PROFILE}'; calibrate with profile='{QUANT_PROFILE}' for openvino-int8.")


def _ov_version() -> str:
    import openvino as ov

    return str(ov.get_version())


def check_feeds(job: ExportJob, role: str, graph: onnx.ModelProto) -> dict[str, np.ndarray]:
    """One input for the onnxruntime comparison: the first calibration sample, else seeded noise."""
    if job.calib_feeds is not None:
        for feeds in job.calib_feeds(role):
            return {name: np.asarray(value) for name, value in feeds.items()}
    from onnx.helper import tensor_dtype_to_np_dtype

    rng = np.random.default_rng(0)
    feeds = {}
    for value in graph.graph.input:
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else _CHECK_DIM for d in tensor.shape.dim]
        feeds[value.name] = rng.standard_normal(shape).astype(tensor_dtype_to_np_dtype(tensor.elem_type))
    return feeds


def compare_with_onnxruntime(model: ov.Model, qdq: onnx.ModelProto, feeds: Mapping[str, np.ndarray],
                             config: Mapping[str, str] | None = None, *,
                             reference: onnx.ModelProto | None = None) -> dict[str, float]:
    """Lowest cosines over the outputs: ``model`` on the CPU plugin (``config``) vs onnxruntime running ``qdq``
    (``ir_vs_qdq``), and, with the fp32 ``reference`` run in onnxruntime, ``qdq_vs_fp32`` and ``ir_vs_fp32``."""
    import onnxruntime as ort
    import openvino as ov

    # Without graph optimizations onnxruntime runs each Q/DQ node as the ONNX spec defines it. Its
    # optimizer would fold float conv biases into int32 at input scale x weight scale, which
    # overflows where a calibrated range is tiny (seen on ThunderNet's CEM global branch, whose
    # ReduceMean output spans ~1e-6) and would make the reference, not the IR, wrong.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    names = [o.name for o in qdq.graph.output]

    def run(graph: onnx.ModelProto) -> dict[str, np.ndarray]:
        session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return dict(zip(names, session.run(names, dict(feeds))))

    def lowest(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
        return min(cosine(a[name], b[name]) for name in names)

    expected = run(qdq)
    compiled = ov.Core().compile_model(model, DEVICE, dict(config or {}))
    got = {port.get_any_name(): value for port, value in compiled(dict(feeds)).items()}
    out = {"ir_vs_qdq": lowest(got, expected)}
    if reference is not None:
        fp32 = run(reference)
        out.update(qdq_vs_fp32=lowest(expected, fp32), ir_vs_fp32=lowest(got, fp32))
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays, flattened in float64 (1.0 when both are all zeros)."""
    x, y = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    norm = float(np.linalg.norm(x) * np.linalg.norm(y))
    return 1.0 if norm == 0.0 and not x.any() and not y.any() else float(x @ y) / max(norm, 1e-300)
