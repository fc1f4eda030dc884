"""Inference backends: one adapter module per engine, registered in ``BACKENDS``.

Each row says which packages the engine needs (checked with ``importlib.util.find_spec``, no
import), which graph files it reads, and how to install it. The adapter module, and with it
the engine, is imported only when that backend is created: ``import edgekit.runtimes``
loads none of them.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from edgekit.bundle import GraphFile
from edgekit.errors import BundleError, EdgekitError, MissingDependencyError, suggest
from edgekit.runtimes.backends.base import Backend, FeedError, check_feeds, dims_match


class UnknownBackendError(EdgekitError, KeyError):
    """A backend name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class BackendEntry:
    """One row of the backend table.

    Args:
        name: the name users pass (``--backend``).
        module: the adapter module, imported on first use.
        cls: the adapter class in it.
        requires: package groups that must be importable; a group is satisfied by any one of
            its alternatives (``ai_edge_litert`` or ``tflite_runtime``).
        suffixes: graph file suffixes the engine reads.
        install: how to install the engine.
    """

    name: str
    module: str
    cls: str
    requires: tuple[tuple[str, ...], ...]
    suffixes: tuple[str, ...]
    install: str

    def missing(self) -> list[str]:
        """Package groups none of whose alternatives is installed, as ``a or b``."""
        return [" or ".join(group) for group in self.requires
                if not any(importlib.util.find_spec(p) is not None for p in group)]

    def reads(self, path: str) -> bool:
        """True when the engine reads a graph file named ``path``."""
        return Path(path).suffix.lower() in self.suffixes


_PKG = "edgekit.runtimes.backends"

BACKENDS: dict[str, BackendEntry] = {e.name: e for e in (
    BackendEntry("onnxruntime", f"{_PKG}.onnxruntime", "OnnxRuntimeBackend", (("onnxruntime",),), (".onnx",),
                 "pip install 'edgekit[onnxruntime]'"),
    BackendEntry("openvino", f"{_PKG}.openvino", "OpenVinoBackend", (("openvino",),), (".xml", ".onnx"),
                 "pip install 'edgekit[openvino]'"),
    BackendEntry("litert", f"{_PKG}.litert", "LiteRtBackend", (("ai_edge_litert", "tflite_runtime"),),
                 (".tflite",), "pip install 'edgekit[tflite]'"),
    BackendEntry("tensorrt", f"{_PKG}.tensorrt", "TensorRtBackend", (("tensorrt",), ("cuda",)),
                 (".engine", ".plan"),
                 "on a Jetson: sudo apt install python3-libnvinfer (JetPack 6) and pip install cuda-python"),
)}

# Short names people type; each maps to exactly one backend.
ALIASES: dict[str, str] = {"ort": "onnxruntime", "ov": "openvino", "tflite": "litert", "trt": "tensorrt"}


def get_entry(name: str) -> BackendEntry:
    """The table row of backend ``name`` (or an alias); an unknown name lists what exists."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in BACKENDS:
        names = sorted(BACKENDS)
        raise UnknownBackendError(f"backend '{name}' is not known. Available: auto, {', '.join(names)}."
                                  f"{suggest(name, names)}")
    return BACKENDS[key]


def installed_backends() -> frozenset[str]:
    """Names of the backends whose packages are installed here."""
    return frozenset(name for name, entry in BACKENDS.items() if not entry.missing())


def create_backend(name: str, path: str | Path, graph: GraphFile, *, threads: int | None = None,
                   toolchain: Mapping[str, str] | None = None) -> Backend:
    """Load ``path`` (described by ``graph``) with backend ``name``.

    Raises:
        UnknownBackendError: no such backend.
        BundleError: the backend does not read this kind of file.
        MissingDependencyError: the engine's packages are not installed.
    """
    entry = get_entry(name)
    if not entry.reads(str(path)):
        readers = [e.name for e in BACKENDS.values() if e.reads(str(path))]
        raise BundleError(f"backend '{entry.name}' reads {', '.join(entry.suffixes)} files, not "
                          f"'{Path(path).name}'. Backends for this bundle: {', '.join(readers) or 'none'}.")
    missing = entry.missing()
    if missing:
        names = f"{', '.join(missing[:-1])} and {missing[-1]}" if len(missing) > 1 else missing[0]
        verb = "are" if len(missing) > 1 else "is"
        raise MissingDependencyError(f"backend '{entry.name}' needs {names}, which {verb} not installed. "
                                     f"Install it: {entry.install}.")
    cls: type[Backend] = getattr(importlib.import_module(entry.module), entry.cls)
    return cls(Path(path), graph, threads=threads, toolchain=toolchain)


__all__ = ["ALIASES", "BACKENDS", "Backend", "BackendEntry", "FeedError", "UnknownBackendError", "check_feeds",
           "create_backend", "dims_match", "get_entry", "installed_backends"]
