"""The ``onnx-fp32`` target: the optimized fp32 ONNX graph(s), one self-contained file per role.

The canonical IR itself (DESIGN.md): opset 17, no external-data sidecar (models < 2 GB),
checked with ``onnx.checker.check_model(full_check=True)`` as written on disk.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from edgekit.errors import ExportError
from edgekit.exporters.registry import ExportJob, Precision, Target, register_target

if TYPE_CHECKING:
    import onnx

    from edgekit.bundle import GraphFile, TensorSpec

# protobuf cannot serialise a message of 2 GiB or more in one piece.
_MAX_SINGLE_FILE_BYTES = 2**31 - 1


@register_target("onnx-fp32", precisions=(Precision.FP32,), dynamic_batch=True,
                 requires=("onnx", "onnxruntime"), extra="export",
                 summary="optimized fp32 ONNX at opset 17, read by onnxruntime, OpenVINO and TensorRT")
class OnnxFp32(Target):
    """Writes ``<role>.onnx`` per graph (``model.onnx`` for a single-graph bundle)."""

    def export(self, job: ExportJob, out_dir: Path) -> list[GraphFile]:
        """Save each graph as one file, check it, and describe it for the manifest."""
        return write_graphs(job.graphs, out_dir, Precision.FP32)


def write_graphs(graphs: Mapping[str, onnx.ModelProto], out_dir: Path, precision: Precision) -> list[GraphFile]:
    """Save each graph as ``<role>.onnx`` (one file, no external data), check it, describe it."""
    import onnx

    from edgekit.bundle import GraphFile

    files = []
    for role, model in graphs.items():
        if model.ByteSize() > _MAX_SINGLE_FILE_BYTES:
            raise ExportError(f"graph '{role}' is {model.ByteSize() / 2**30:.1f} GiB; ONNX files past "
                              "2 GiB need external data, which edgekit bundles do not use.")
        path = Path(out_dir) / f"{role}.onnx"
        onnx.save_model(model, path, save_as_external_data=False)
        try:
            onnx.checker.check_model(str(path), full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise ExportError(f"graph '{role}' fails onnx.checker (full_check): {exc}") from exc
        files.append(GraphFile.from_file(out_dir, path.name, role, inputs=tensor_specs(model.graph.input),
                                         outputs=tensor_specs(model.graph.output),
                                         precision=precision.value))
    return files


def tensor_specs(values: Sequence[onnx.ValueInfoProto]) -> tuple[TensorSpec, ...]:
    """Name, shape (symbolic dimensions as strings) and dtype of graph inputs or outputs."""
    from onnx.helper import tensor_dtype_to_np_dtype

    from edgekit.bundle import TensorSpec

    specs = []
    for value in values:
        tensor = value.type.tensor_type
        shape = tuple(d.dim_param or d.dim_value for d in tensor.shape.dim)
        specs.append(TensorSpec(name=value.name, shape=shape, dtype=str(tensor_dtype_to_np_dtype(tensor.elem_type))))
    return tuple(specs)
