"""TFLite targets: ``tflite-fp32``, ``tflite-fp16`` and ``tflite-int8`` (``<role>.tflite`` + ``tflite.json``).

Every graph starts from the optimized fp32 ONNX (DESIGN.md, "Canonical IR"), re-expressed in
torch and converted by litert-torch (:mod:`edgekit.tflite_convert`): BatchNorm stays folded and
ShuffleNet's channel shuffles stay relabelled into conv weights and strided slices, so no
TRANSPOSE or shuffle RESHAPE reaches the ``.tflite`` file. 4-D inputs and outputs that the
graph treats spatially are stored NHWC (no layout transposes either); the manifest keeps the
NCHW float32 contract every backend shares, and the LiteRT adapter transposes at the boundary.

- fp32: the conversion as is.
- fp16: conv / fully-connected weights stored float16 (half the file; CPUs compute in fp32).
- int8: full-integer with ai-edge-quantizer (:mod:`edgekit.tflite_quant`): the job's
  QuantRecipe ranges (profile ``tflite``) where each TFLite tensor maps onto an ONNX tensor,
  the same calibration samples with a running min/max where not. Inputs and outputs stay
  float32 and the ops that write outputs run float. ``recipe.json`` holds the recipes.

``tflite.json`` records, per graph: each input's and output's layout in the file, the op
counts, and for int8 which method set the ranges and any int8 boundary tensor's scale and
zero point. The single-graph detector variant (RoiAlign + NonMaxSuppression, no TFLite
builtins) is not written: TFLite bundles run the stage1 + head pipeline.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edgekit.errors import ExportError
from edgekit.exporters.onnx import tensor_specs
from edgekit.exporters.registry import ExportJob, Precision, Target, register_target

if TYPE_CHECKING:
    import onnx

    from edgekit.bundle import GraphFile

INFO_NAME = "tflite.json"
INFO_VERSION = 1
QUANT_PROFILE = "tflite"
CONVERTER = "ONNX -> edgekit.onnx_to_torch -> litert-torch"
_PACKAGES = ("litert-torch", "ai-edge-quantizer", "ai-edge-litert")
_REQUIRES = ("onnx", "torch", "litert_torch", "ai_edge_litert")
_REQUIRES_QUANTIZER = (*_REQUIRES, "ai_edge_quantizer")
# How the fused shuffles' even/odd channel reads are written (edgekit.tflite_convert): "strided"
# leaves no TRANSPOSE or RESHAPE in the file, but XNNPACK does not delegate the stride-2 slices
# (1.5x slower than a plain conversion here); "deinterleave" is delegated and beats the plain
# conversion, with one TRANSPOSE per unit. Measured in docs/benchmarks/tflite_shuffle.md.
CHANNEL_READS = "strided"
# Pipeline variants no TFLite builtin can hold, and why (recorded in tflite.json).
SKIPPED_ROLES: Mapping[str, str] = {
    "single": "the single-graph detector needs RoiAlign and NonMaxSuppression, which TFLite has no builtin op for; "
              "the bundle runs the stage1 + head pipeline with the SDK's numpy glue",
}


class TfliteTarget(Target):
    """Converts each graph of the job to ``<role>.tflite`` at ``precision``."""

    precision: ClassVar[Precision] = Precision.FP32

    def export(self, job: ExportJob, out_dir: Path) -> list[GraphFile]:
        """Convert, write and describe every graph; write ``tflite.json`` (and ``recipe.json`` for int8)."""
        from edgekit.bundle import GraphFile

        out_dir = Path(out_dir)
        self._check_job(job)
        files, graphs = [], {}
        for role, model in job.graphs.items():
            if role in SKIPPED_ROLES:
                continue
            content, info = self.convert(model, role, job)
            path = out_dir / f"{role}.tflite"
            path.write_bytes(content)
            info["ops"] = _op_counts(content)
            graphs[role] = {"file": path.name, "precision": self.precision.value, **info}
            files.append(GraphFile.from_file(out_dir, path.name, role, inputs=tensor_specs(model.graph.input),
                                             outputs=tensor_specs(model.graph.output),
                                             precision=self.precision.value))
        if not files:
            raise ExportError(f"target '{self.name}' found no graph it can convert (roles: {', '.join(job.graphs)}).")
        write_info(out_dir, graphs, {r: SKIPPED_ROLES[r] for r in job.graphs if r in SKIPPED_ROLES})
        return files

    def _check_job(self, job: ExportJob) -> None:
        if job.input_spec.dynamic_batch:
            raise ExportError(f"target '{self.name}' takes a fixed batch; drop --dynamic-batch.")

    def convert(self, model: onnx.ModelProto, role: str, job: ExportJob) -> tuple[bytes, dict[str, Any]]:
        """The ``.tflite`` bytes of one graph and what ``tflite.json`` says about it."""
        from edgekit.tflite_convert import onnx_to_tflite

        graph = onnx_to_tflite(model, channel_reads=CHANNEL_READS)
        return graph.content, _layouts(graph)


@register_target("tflite-fp32", precisions=(Precision.FP32,), dynamic_batch=False, requires=_REQUIRES,
                 extra="tflite-export", summary="TFLite fp32 from the optimized ONNX via litert-torch, NHWC image I/O")
class TfliteFp32(TfliteTarget):
    """TFLite with fp32 weights."""

    precision = Precision.FP32


@register_target("tflite-fp16", precisions=(Precision.FP16,), dynamic_batch=False, requires=_REQUIRES_QUANTIZER,
                 extra="tflite-export", summary="TFLite with fp16 weights (dequantized at load), NHWC image I/O")
class TfliteFp16(TfliteTarget):
    """TFLite with conv / fully-connected weights stored float16."""

    precision = Precision.FP16

    def convert(self, model: onnx.ModelProto, role: str, job: ExportJob) -> tuple[bytes, dict[str, Any]]:
        """The fp32 conversion with its weights cast to float16."""
        from edgekit.tflite_convert import cast_weights_fp16, onnx_to_tflite

        graph = onnx_to_tflite(model, channel_reads=CHANNEL_READS)
        return cast_weights_fp16(graph.content), _layouts(graph)


@register_target("tflite-int8", precisions=(Precision.INT8, Precision.FP32), dynamic_batch=False,
                 requires=_REQUIRES_QUANTIZER, extra="tflite-export", quant_profile=QUANT_PROFILE,
                 summary="full-integer TFLite (ai-edge-quantizer) from the recipe's ranges, float I/O; "
                         "needs --calib-data")
class TfliteInt8(TfliteTarget):
    """Full-integer TFLite; float inputs/outputs; the output-writing ops float."""

    precision = Precision.INT8

    def export(self, job: ExportJob, out_dir: Path) -> list[GraphFile]:
        """The TFLite files plus ``recipe.json`` with the recipes they were quantized from."""
        from edgekit.quantize import write_recipe_file

        if not job.recipes and job.calib_feeds is None:
            raise ExportError(f"target '{self.name}' needs calibration (profile '{QUANT_PROFILE}'); pass --calib-data "
                              "with images the model's preprocessing applies to.")
        files = super().export(job, out_dir)
        write_recipe_file(out_dir, {r: job.recipes[r] for r in job.graphs if r in job.recipes}, job.calibration)
        return files

    def convert(self, model: onnx.ModelProto, role: str, job: ExportJob) -> tuple[bytes, dict[str, Any]]:
        """Convert to float TFLite, then quantize with the recipe's ranges (or the samples)."""
        from edgekit.onnx_to_torch import onnx_to_torch
        from edgekit.tflite_convert import onnx_to_tflite
        from edgekit.tflite_quant import quantize_int8

        recipe = job.recipes.get(role)
        if recipe is not None and recipe.profile != QUANT_PROFILE:
            raise ExportError(f"the recipe for graph '{role}' was derived for profile '{recipe.profile}', not "
                              f"'{QUANT_PROFILE}'; calibrate with profile='{QUANT_PROFILE}' for {self.name}.")
        feeds = _feeds(job, role)
        graph = onnx_to_tflite(model, channel_reads=CHANNEL_READS)
        module = onnx_to_torch(model)
        quantized = quantize_int8(graph, module, recipe=recipe, feeds=feeds)
        info = {**_layouts(graph), "int8": quantized.to_dict()}
        if recipe is not None:
            info["int8"]["recipe_hash"] = recipe.content_hash()
            if recipe.layer_precision:  # mixed precision: these layers' TFLite ops run float (selective quantization)
                info["int8"]["layer_precision"] = {n: p.value for n, p in sorted(recipe.layer_precision.items())}
        info["int8"]["cosine_vs_fp32"] = _cosine_on_probe(quantized.content, graph, module, job, role)
        return quantized.content, info


def _feeds(job: ExportJob, role: str) -> Iterable[Mapping[str, np.ndarray]] | None:
    """The calibration feeds of ``role``, or None where the job has none for it."""
    if job.calib_feeds is None:
        return None
    try:
        return job.calib_feeds(role)
    except KeyError:
        return None


def _layouts(graph: Any) -> dict[str, Any]:
    return {"signature": graph.signature, "converter": CONVERTER, "channel_reads": graph.channel_reads,
            "inputs": [t.to_dict() for t in graph.inputs], "outputs": [t.to_dict() for t in graph.outputs]}


def _op_counts(content: bytes) -> dict[str, int]:
    from edgekit.tflite_convert import tflite_op_counts

    return tflite_op_counts(content)


def _cosine_on_probe(content: bytes, graph: Any, module: Any, job: ExportJob, role: str) -> float:
    """Lowest output cosine of the INT8 model vs the fp32 ONNX graph on the first calibration sample."""
    import torch
    from ai_edge_litert.interpreter import Interpreter

    from edgekit.tflite_convert import NHWC, TO_NHWC

    feeds = _feeds(job, role)
    feed = next(iter(feeds), None) if feeds is not None else None
    rng = np.random.default_rng(0)
    xs = [np.asarray(feed[t.name], np.float32) if feed is not None else
          rng.standard_normal([d if isinstance(d, int) else 1 for d in t.shape], dtype=np.float32)
          for t in graph.inputs]
    with torch.no_grad():
        expected = module(*(torch.from_numpy(np.ascontiguousarray(x)) for x in xs))
    expected = expected if isinstance(expected, tuple) else (expected,)
    runner = Interpreter(model_content=content).get_signature_runner()
    got = runner(**{f"args_{i}": np.ascontiguousarray(x.transpose(TO_NHWC) if t.layout == NHWC else x)
                    for i, (x, t) in enumerate(zip(xs, graph.inputs))})
    cosines = []
    for i, (e, t) in enumerate(zip(expected, graph.outputs)):
        y = got[f"output_{i}"]
        y = y.transpose(0, 3, 1, 2) if t.layout == NHWC else y
        a, b = np.asarray(y, np.float64).ravel(), e.numpy().astype(np.float64).ravel()
        cosines.append(float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300)))
    return round(min(cosines), 6)


def write_info(out_dir: Path, graphs: Mapping[str, Any], skipped: Mapping[str, str]) -> Path:
    """Write ``tflite.json``: converter versions, per-graph layouts, op counts and INT8 method."""
    versions = {}
    for package in _PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    body = {"version": INFO_VERSION, "converter": CONVERTER, "toolchain": versions, "graphs": dict(graphs),
            "skipped_roles": dict(skipped)}
    path = Path(out_dir) / INFO_NAME
    path.write_text(json.dumps(body, indent=1) + "\n")
    return path
