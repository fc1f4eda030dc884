"""The QuantRecipe: the one calibration result every target reads.

A recipe is computed once, on the optimized fp32 ONNX, and holds for every quantized tensor
its calibrated range (what the observer saw) and the integer parameters derived from that
range for one backend profile (``trt``, ``ort-cpu``, ``openvino``, ``tflite``).
The ranges are kept beside the derived parameters so another profile's parameters can be
re-derived from the same statistics (``edgekit.calib.profiles.tensor_quants``) where its
placement covers the same tensors.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


class Precision(str, Enum):
    """Precision of a tensor or layer."""

    INT8 = "int8"
    FP16 = "fp16"
    FP32 = "fp32"


class TensorKind(str, Enum):
    """What a quantized tensor is."""

    ACTIVATION = "activation"
    WEIGHT = "weight"


@dataclass(frozen=True)
class TensorQuant:
    """Quantization of one ONNX tensor.

    Args:
        name: the tensor's name in the optimized fp32 ONNX.
        kind: activation or weight (initializer).
        rmin, rmax: calibrated real range, one value (per-tensor) or one per channel.
        scale, zero_point: integer parameters for the recipe's profile, same length as rmin.
        axis: channel axis for per-channel parameters, None for per-tensor.
        dtype: ``int8`` or ``uint8``.
        precision: INT8, or FP16/FP32 where mixed precision keeps the tensor float.
    """

    name: str
    kind: TensorKind
    rmin: tuple[float, ...]
    rmax: tuple[float, ...]
    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None
    dtype: str = "int8"
    precision: Precision = Precision.INT8

    def __post_init__(self) -> None:
        n = len(self.rmin)
        if not (n == len(self.rmax) == len(self.scale) == len(self.zero_point)) or n == 0:
            raise ValueError(f"tensor '{self.name}': rmin/rmax/scale/zero_point lengths differ")
        if (n > 1) != (self.axis is not None):
            raise ValueError(f"tensor '{self.name}': per-channel parameters need an axis (and only they)")
        if any(not (s > 0) for s in self.scale):
            raise ValueError(f"tensor '{self.name}': scales must be positive and finite, got {self.scale[:4]}")
        if self.dtype not in ("int8", "uint8"):
            raise ValueError(f"tensor '{self.name}': dtype must be int8 or uint8, got {self.dtype}")

    @property
    def amax(self) -> float:
        """Largest magnitude of the calibrated range (TensorRT's per-tensor ``amax``)."""
        return max(max(abs(a), abs(b)) for a, b in zip(self.rmin, self.rmax))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind.value
        data["precision"] = self.precision.value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorQuant:
        return cls(
            name=data["name"],
            kind=TensorKind(data["kind"]),
            rmin=tuple(float(v) for v in data["rmin"]),
            rmax=tuple(float(v) for v in data["rmax"]),
            scale=tuple(float(v) for v in data["scale"]),
            zero_point=tuple(int(v) for v in data["zero_point"]),
            axis=data.get("axis"),
            dtype=data.get("dtype", "int8"),
            precision=Precision(data.get("precision", "int8")),
        )


@dataclass(frozen=True)
class Provenance:
    """Where a recipe came from.

    Args:
        model_sha256: sha256 of the fp32 ONNX file the statistics were collected on.
        observer: ``minmax``, ``percentile``, ``entropy`` or ``mse``.
        percentile: the percentile for the ``percentile`` observer, else None.
        samples: number of calibration images seen.
        data_hash: sha256 over the calibration file names and contents, in order.
        repairs: accuracy-repair passes applied (``cross_layer_equalization``, ``bias_correction``).
        edgekit_version: the version that computed the recipe.
    """

    model_sha256: str
    observer: str
    samples: int
    data_hash: str
    percentile: float | None = None
    repairs: tuple[str, ...] = ()
    edgekit_version: str = ""


@dataclass(frozen=True)
class QuantRecipe:
    """Per-tensor quantization of one model for one backend profile, plus provenance.

    Args:
        profile: backend profile the integer parameters were derived for.
        tensors: tensor name -> its quantization.
        layer_precision: node name -> precision, for layers mixed precision keeps float
            (absent nodes are INT8 where their inputs are quantized).
        provenance: how the statistics were collected.
    """

    profile: str
    tensors: Mapping[str, TensorQuant]
    provenance: Provenance
    layer_precision: Mapping[str, Precision] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "profile": self.profile,
            "provenance": {**asdict(self.provenance), "repairs": list(self.provenance.repairs)},
            "layer_precision": {k: v.value for k, v in sorted(self.layer_precision.items())},
            "tensors": [t.to_dict() for _, t in sorted(self.tensors.items())],
            "content_hash": self.content_hash(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuantRecipe:
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"recipe schema_version {data.get('schema_version')!r} is not supported "
                f"(this edgekit reads {SCHEMA_VERSION}); recalibrate with this version."
            )
        prov = dict(data["provenance"])
        prov["repairs"] = tuple(prov.get("repairs", ()))
        recipe = cls(
            profile=data["profile"],
            tensors={t["name"]: TensorQuant.from_dict(t) for t in data["tensors"]},
            provenance=Provenance(**prov),
            layer_precision={k: Precision(v) for k, v in data.get("layer_precision", {}).items()},
        )
        stored = data.get("content_hash")
        if stored is not None and stored != recipe.content_hash():
            raise ValueError("recipe content_hash does not match its contents: the file was edited or corrupted.")
        return recipe

    def content_hash(self) -> str:
        """sha256 over everything but the hash itself (sorted keys, so order-independent)."""
        body = {
            "schema_version": self.schema_version,
            "profile": self.profile,
            "provenance": {**asdict(self.provenance), "repairs": list(self.provenance.repairs)},
            "layer_precision": {k: v.value for k, v in sorted(self.layer_precision.items())},
            "tensors": [t.to_dict() for _, t in sorted(self.tensors.items())],
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> QuantRecipe:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def replace(self, **changes: Any) -> QuantRecipe:
        return replace(self, **changes)
