"""The target registry: ``@register_target`` on a Target class, ``get_target(name)`` to use one.

A target declares what it can do (precisions, dynamic batch, the packages it needs) in a
``TargetSpec``; requests it cannot honour are refused before any work starts, and a target
whose packages are missing is listed as unavailable and fails on use naming the extra to
install. Importing this module imports no toolchain: each target module imports its
backend inside its methods.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.errors import ExportError, MissingDependencyError, UnknownTargetError, suggest

if TYPE_CHECKING:
    import numpy as np
    import onnx
    from torch import nn

    from edgekit.bundle import GraphFile
    from edgekit.calib.recipe import QuantRecipe
    from edgekit.inputspec import InputSpec

# Modules whose import registers targets; a target family is one module.
_TARGET_MODULES: tuple[str, ...] = (
    "edgekit.exporters.onnx",
    "edgekit.exporters.onnx_int8",
    "edgekit.exporters.openvino",
    "edgekit.exporters.tensorrt",
    "edgekit.exporters.tflite",
)


class Precision(str, Enum):
    """Numeric precision of a target's graph."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


@dataclass(frozen=True)
class TargetSpec:
    """What a target supports: one row of the capability table.

    Args:
        name: kebab-case target name, family-precision (``onnx-fp32``, ``trt-int8``).
        precisions: precisions its graphs may hold.
        dynamic_batch: whether it can export a symbolic batch dimension.
        requires: importable packages it needs at export time.
        extra: the ``pip install edgekit[extra]`` that provides them.
        summary: one line for ``--help`` and listings.
        quant_profile: the calibration profile (``edgekit.calib.profiles``) an INT8 target's
            recipe is derived for; None for float targets, which need no calibration.
    """

    name: str
    precisions: tuple[Precision, ...]
    dynamic_batch: bool
    requires: tuple[str, ...]
    extra: str
    summary: str = ""
    quant_profile: str | None = None

    def missing(self) -> list[str]:
        """Required packages that are not installed."""
        return [p for p in self.requires if importlib.util.find_spec(p) is None]

    @property
    def available(self) -> bool:
        """True when every required package is installed."""
        return not self.missing()


class Target:
    """Base class of export targets: writes graph files into a bundle directory.

    Subclasses implement ``export``; the base class checks requests against the spec.
    """

    def __init__(self, spec: TargetSpec) -> None:
        self.spec = spec

    @property
    def name(self) -> str:
        """The registered target name."""
        return self.spec.name

    def ensure_available(self) -> None:
        """Raise MissingDependencyError naming the extra when a required package is missing."""
        missing = self.spec.missing()
        if missing:
            raise MissingDependencyError(
                f"target '{self.name}' needs {', '.join(missing)}, which is not installed. "
                f"Install it with: pip install 'edgekit[{self.spec.extra}]'"
            )

    def check_request(self, *, dynamic_batch: bool = False, precision: Precision | str = Precision.FP32) -> None:
        """Refuse, before any work, what this target cannot do."""
        if dynamic_batch and not self.spec.dynamic_batch:
            raise ExportError(
                f"target '{self.name}' does not support a dynamic batch; drop --dynamic-batch "
                "and export a fixed --batch."
            )
        if Precision(precision) not in self.spec.precisions:
            have = ", ".join(p.value for p in self.spec.precisions)
            raise ExportError(f"target '{self.name}' holds {have} graphs, not {Precision(precision).value}.")

    def export(self, job: ExportJob, out_dir: Path) -> list[GraphFile]:
        """Write the job's graphs into ``out_dir`` in this target's format; describe the files."""
        raise NotImplementedError


@dataclass(frozen=True)
class ExportJob:
    """Everything a target may use to write its files; every target starts from the same job.

    Args:
        graphs: role -> optimized fp32 ``onnx.ModelProto``, in the order the pipeline runs them.
        input_spec: the bundle's image input contract.
        modules: role -> the eval-mode torch module each graph was traced from, for
            converters that start from PyTorch (litert-torch); empty when not kept.
        examples: role -> example inputs the module was traced with.
        recipes: role -> QuantRecipe for the target's ``quant_profile`` (INT8 targets).
        calib_feeds: role -> a fresh streaming iterable of feed dicts, for toolchains that
            must see calibration data themselves; None when no calibration data was given.
        calibration: JSON-ready record of how the recipes were made (data, files and hash,
            observer, repairs, the profile chosen for this CPU and why); INT8 targets store it
            beside the recipes.
    """

    graphs: Mapping[str, onnx.ModelProto]
    input_spec: InputSpec
    modules: Mapping[str, nn.Module] = field(default_factory=dict)
    examples: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    recipes: Mapping[str, QuantRecipe] = field(default_factory=dict)
    calib_feeds: Callable[[str], Iterable[dict[str, np.ndarray]]] | None = None
    calibration: Mapping[str, Any] = field(default_factory=dict)


_TARGETS: dict[str, tuple[TargetSpec, type[Target]]] = {}


def register_target(
    name: str,
    *,
    precisions: tuple[Precision | str, ...],
    dynamic_batch: bool,
    requires: tuple[str, ...] = (),
    extra: str = "export",
    summary: str = "",
    quant_profile: str | None = None,
) -> Callable[[type[Target]], type[Target]]:
    """Register a Target class under ``name`` with its capabilities (class decorator)."""

    def wrap(cls: type[Target]) -> type[Target]:
        if name in _TARGETS:
            raise ValueError(f"target '{name}' is registered twice")
        spec = TargetSpec(name=name, precisions=tuple(Precision(p) for p in precisions),
                          dynamic_batch=dynamic_batch, requires=requires, extra=extra, summary=summary,
                          quant_profile=quant_profile)
        _TARGETS[name] = (spec, cls)
        return cls

    return wrap


def _load_targets() -> None:
    for module in _TARGET_MODULES:
        importlib.import_module(module)


def list_targets() -> list[str]:
    """Registered target names, sorted."""
    _load_targets()
    return sorted(_TARGETS)


def get_spec(name: str) -> TargetSpec:
    """The capability row of a registered target; an unknown name lists what exists."""
    _load_targets()
    if name not in _TARGETS:
        names = sorted(_TARGETS)
        raise UnknownTargetError(
            f"target '{name}' is not registered. Available: {', '.join(names)}.{suggest(name, names)}"
        )
    return _TARGETS[name][0]


def get_target(name: str) -> Target:
    """An instance of the registered target ``name``."""
    spec = get_spec(name)
    return _TARGETS[name][1](spec)
