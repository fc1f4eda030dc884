"""The ``onnx-int8`` target: QDQ ONNX graphs for onnxruntime's CPU integer kernels, plus ``recipe.json``.

Each role's graph is quantized with its QuantRecipe (:func:`edgekit.calib.qdq.quantize_model`)
for the ``ort-cpu`` profile, which picks the integer form by the CPU's ISA (u8s8 with VNNI,
7-bit weights without it, s8s8 on ARM64; :mod:`edgekit.calib.profiles`). onnxruntime fuses
the ``DequantizeLinear -> op -> QuantizeLinear`` groups into QLinearConv and friends when it
loads the file. The recipes and the calibration record go to ``recipe.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edgekit.errors import ExportError
from edgekit.exporters.onnx import write_graphs
from edgekit.exporters.registry import ExportJob, Precision, Target, register_target

if TYPE_CHECKING:
    from edgekit.bundle import GraphFile


@register_target("onnx-int8", precisions=(Precision.INT8, Precision.FP32), dynamic_batch=True,
                 requires=("onnx", "onnxruntime"), extra="export", quant_profile="ort-cpu",
                 summary="INT8 QDQ ONNX for onnxruntime's CPU kernels, calibrated (needs --calib-data); "
                         "fp32 reference graphs and the accuracy-drop report beside it")
class OnnxInt8(Target):
    """Writes ``<role>.onnx`` (QDQ) per calibrated graph and ``recipe.json``."""

    def export(self, job: ExportJob, out_dir: Path) -> list[GraphFile]:
        """Quantize each graph with its recipe, save and check it; write the recipes."""
        from edgekit.calib.qdq import quantize_model
        from edgekit.quantize import write_recipe_file

        missing = [role for role in job.graphs if role not in job.recipes]
        if missing:
            raise ExportError(f"target '{self.name}' needs a QuantRecipe for every graph; none for "
                              f"{', '.join(missing)}. Calibrate first: pass --calib-data DIR.")
        quantized = {role: quantize_model(graph, job.recipes[role]) for role, graph in job.graphs.items()}
        files = write_graphs(quantized, Path(out_dir), Precision.INT8)
        write_recipe_file(out_dir, {role: job.recipes[role] for role in job.graphs}, job.calibration)
        return files
