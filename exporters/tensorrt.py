"""TensorRT targets: ``trt-fp16`` and ``trt-int8`` bundles from which the board builds its engine.

An engine is specific to the GPU and the TensorRT release that build it, so export writes no
engine: ``edgekit build-engine BUNDLE`` (:mod:`edgekit.engine`) builds it on the device, or
prints the equivalent ``trtexec`` command. Per graph role the bundle holds:

- ``trt-fp16``: ``<role>.onnx``, the optimized fp32 graph (TensorRT picks FP16 kernels).
- ``trt-int8``: ``<role>.qdq.onnx``, the graph with Q/DQ placed by TensorRT's rules from the
  job's recipe (profile ``trt``: symmetric int8, zero point 0, per-channel weights, every
  conv input quantized, Concat inputs sharing one scale, dedicated Q/DQ pairs per consumer;
  see :mod:`edgekit.calib.profiles`) for explicit quantization, the manifest's graph;
  ``<role>.trt_cache``, TensorRT's calibration cache written from the same recipe (the
  implicit-quantization path, ``build-engine --implicit``); and ``<role>.onnx``, the fp32
  graph that path and fp16 engines start from. A graph the job has no recipe for (a
  detector head when only stage 1 was calibrated) gets the fp32 ONNX only and runs FP16.

``tensorrt.json`` says which file is which, with their hashes and the recipe hash, and the layers
mixed precision keeps float (``layer_precision``: no Q/DQ around them in the QDQ ONNX, and
``build-engine`` pins them with TensorRT layer-precision constraints). The glue
of a two-stage detector stays numpy in the SDK, so its graph outputs stay float: quantization
stops at the conv stages. The QDQ ONNX runs in onnxruntime too, which is how its numerics are
checked on machines without a GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from edgekit.errors import ExportError
from edgekit.exporters.onnx import write_graphs
from edgekit.exporters.registry import ExportJob, Precision, Target, register_target

if TYPE_CHECKING:
    import onnx

    from edgekit.bundle import GraphFile
    from edgekit.calib.recipe import QuantRecipe
    from edgekit.engine import EngineSource

QUANT_PROFILE = "trt"
QDQ_SUFFIX = ".qdq.onnx"
CACHE_SUFFIX = ".trt_cache"


class _TensorRtTarget(Target):
    """Shared by both targets: fp32 ONNX per role plus ``tensorrt.json``."""

    quantized: ClassVar[bool] = False

    def export(self, job: ExportJob, out_dir: Path) -> list[GraphFile]:
        """Write each role's files and ``tensorrt.json``; the manifest lists the graph build-engine starts from."""
        from edgekit.engine import write_sources

        if self.quantized and not job.recipes:
            raise ExportError(f"target '{self.name}' needs a calibration recipe (profile '{QUANT_PROFILE}'); "
                              "pass --calib-data with images the model's preprocessing applies to.")
        files, sources = [], []
        for role, graph in job.graphs.items():
            recipe = job.recipes.get(role) if self.quantized else None
            (fp32,) = write_graphs({role: graph}, out_dir, Precision.FP16)
            if recipe is None:
                files.append(fp32)
                sources.append(_source(out_dir, role, fp32.path, Precision.FP16))
                continue
            qdq_file, cache, recipe_hash = write_int8(graph, recipe, out_dir, role)
            files.append(qdq_file)
            sources.append(_source(out_dir, role, fp32.path, Precision.INT8, qdq=qdq_file.path, cache=cache,
                                   recipe_hash=recipe_hash,
                                   layer_precision={n: p.value for n, p in recipe.layer_precision.items()}))
        write_sources(out_dir, sources)
        if job.recipes:
            from edgekit.quantize import write_recipe_file

            write_recipe_file(out_dir, {r: job.recipes[r] for r in job.graphs if r in job.recipes}, job.calibration)
        return files


def _source(out_dir: Path, role: str, onnx: str, precision: Precision, **int8: Any) -> EngineSource:
    from edgekit.engine import EngineSource

    return EngineSource.describe(out_dir, role, onnx, precision.value, **int8)


def write_int8(graph: onnx.ModelProto, recipe: QuantRecipe, out_dir: Path, role: str) -> tuple[GraphFile, str, str]:
    """Write ``<role>.qdq.onnx`` and ``<role>.trt_cache`` from ``recipe``; returns (QDQ file, cache name, hash)."""
    import onnx

    from edgekit.bundle import GraphFile
    from edgekit.calib.qdq import quantize_model
    from edgekit.calib.trt_cache import write_trt_cache
    from edgekit.exporters.onnx import tensor_specs

    if recipe.profile != QUANT_PROFILE:
        raise ExportError(f"the recipe for graph '{role}' was derived for profile '{recipe.profile}', not "
                          f"'{QUANT_PROFILE}'; calibrate with profile='{QUANT_PROFILE}' for trt-int8.")
    qdq = quantize_model(graph, recipe)
    path = Path(out_dir) / f"{role}{QDQ_SUFFIX}"
    onnx.save_model(qdq, path, save_as_external_data=False)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the QDQ graph '{role}' fails onnx.checker (full_check): {exc}") from exc
    cache = write_trt_cache(recipe, Path(out_dir) / f"{role}{CACHE_SUFFIX}")
    qdq_file = GraphFile.from_file(out_dir, path.name, role, inputs=tensor_specs(qdq.graph.input),
                                   outputs=tensor_specs(qdq.graph.output), precision=Precision.INT8.value)
    return qdq_file, cache.name, recipe.content_hash()


@register_target("trt-fp16", precisions=(Precision.FP16,), dynamic_batch=True, requires=("onnx",), extra="export",
                 summary="fp32 ONNX for a TensorRT FP16 engine built on the device (edgekit build-engine)")
class TensorRtFp16(_TensorRtTarget):
    """The optimized fp32 ONNX per role; ``build-engine`` makes an FP16 engine of it."""


@register_target("trt-int8", precisions=(Precision.INT8, Precision.FP16), dynamic_batch=True,
                 requires=("onnx", "onnxruntime"), extra="export", quant_profile=QUANT_PROFILE,
                 summary="QDQ ONNX placed by TensorRT's rules + calibration cache; engine built on the device")
class TensorRtInt8(_TensorRtTarget):
    """QDQ ONNX, calibration cache and fp32 ONNX per role; ``build-engine`` makes an INT8 engine."""

    quantized = True
