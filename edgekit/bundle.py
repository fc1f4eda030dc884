"""The deploy bundle: a directory of graph files plus ``manifest.json`` that describes them.

A bundle holds one graph (classifiers, segmenters) or a pipeline of graphs run in order with
numpy glue between them (two-stage detectors); each graph file is listed with its role, its
input and output tensors, its SHA-256 and size. ``verify`` re-hashes the files before a
runtime loads them.

Standard library only: the numpy-only runtime SDK reads bundles with this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgekit.errors import BundleError, EdgekitError
from edgekit.inputspec import InputSpec

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS: tuple[int, ...] = (1,)
MANIFEST_NAME = "manifest.json"
PASSES_NAME = "passes.json"


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor of a graph or of the pipeline's result.

    Args:
        name: tensor name in the graph.
        shape: dimensions; a string names a symbolic dimension (``"batch"``).
        dtype: numpy-style element type (``float32``, ``int64`` ...).
        meaning: what the values are, for people and for post-processing.
    """

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"
    meaning: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "meaning": self.meaning}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorSpec:
        """Inverse of ``to_dict``."""
        return cls(name=data["name"], shape=tuple(data["shape"]), dtype=data.get("dtype", "float32"),
                   meaning=data.get("meaning", ""))


@dataclass(frozen=True)
class GraphFile:
    """One model file of the bundle.

    Args:
        role: its place in the pipeline (``model`` for single-graph bundles; e.g.
            ``backbone_rpn`` and ``rcnn_head`` for a two-stage detector).
        path: file name relative to the bundle directory.
        sha256: hex digest of the file's bytes.
        size_bytes: file size.
        inputs: the graph's input tensors, in order.
        outputs: the graph's output tensors, in order.
        precision: numeric precision of the weights and compute (``fp32``, ``fp16``, ``int8``).
    """

    role: str
    path: str
    sha256: str
    size_bytes: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    precision: str = "fp32"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        out = asdict(self)
        out["inputs"] = [t.to_dict() for t in self.inputs]
        out["outputs"] = [t.to_dict() for t in self.outputs]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GraphFile:
        """Inverse of ``to_dict``."""
        values = dict(data)
        values["inputs"] = tuple(TensorSpec.from_dict(t) for t in data["inputs"])
        values["outputs"] = tuple(TensorSpec.from_dict(t) for t in data["outputs"])
        return cls(**values)

    @classmethod
    def from_file(cls, bundle_dir: str | Path, path: str, role: str, inputs: tuple[TensorSpec, ...],
                  outputs: tuple[TensorSpec, ...], precision: str = "fp32") -> GraphFile:
        """Describe a file already written into ``bundle_dir``, hashing it."""
        digest, size = file_digest(Path(bundle_dir) / path)
        return cls(role=role, path=path, sha256=digest, size_bytes=size, inputs=inputs, outputs=outputs,
                   precision=precision)


@dataclass(frozen=True)
class PostProcess:
    """How the SDK turns the graph outputs into a task result.

    Args:
        kind: ``topk`` (classify), ``argmax`` (segment), or a detector pipeline's decoder name.
        params: its parameters (``{"k": 5, "softmax": true}``, ``{"axis": 1}``, anchors, NMS
            thresholds ...), JSON values only.
    """

    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"kind": self.kind, "params": dict(self.params)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PostProcess:
        """Inverse of ``to_dict``."""
        return cls(kind=data["kind"], params=dict(data.get("params", {})))


@dataclass(frozen=True)
class Manifest:
    """Everything a runtime needs to run a bundle, and what built it.

    Args:
        model: registry name, or ``file:factory`` / class name for a user's model.
        task: ``classify``, ``detect`` or ``segment``.
        target: the export target (``onnx-fp32`` ...).
        input: the image input and its pre-processing.
        outputs: the pipeline's final outputs, with their meaning.
        graphs: the model files, in the order a pipeline runs them.
        postprocess: how outputs become a task result.
        labels: class names (index -> name); empty when none were given.
        num_classes: number of classes the outputs cover.
        edgekit_version: version that wrote the bundle.
        toolchain: package -> version of the tools that built it (torch, onnx, ...).
        created: UTC time of writing, ISO 8601.
        schema_version: version of this manifest layout.
    """

    model: str
    task: str
    target: str
    input: InputSpec
    outputs: tuple[TensorSpec, ...]
    graphs: tuple[GraphFile, ...]
    postprocess: PostProcess
    labels: tuple[str, ...] = ()
    num_classes: int | None = None
    edgekit_version: str = ""
    toolchain: dict[str, str] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    schema_version: int = SCHEMA_VERSION

    def graph(self, role: str) -> GraphFile:
        """The graph file with ``role``; an unknown role lists the roles there are."""
        for g in self.graphs:
            if g.role == role:
                return g
        raise BundleError(f"bundle of '{self.model}' has no graph with role '{role}'; "
                          f"roles: {', '.join(g.role for g in self.graphs)}.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "schema_version": self.schema_version,
            "edgekit_version": self.edgekit_version,
            "model": self.model,
            "task": self.task,
            "target": self.target,
            "num_classes": self.num_classes,
            "input": self.input.to_dict(),
            "outputs": [t.to_dict() for t in self.outputs],
            "labels": list(self.labels),
            "postprocess": self.postprocess.to_dict(),
            "graphs": [g.to_dict() for g in self.graphs],
            "toolchain": dict(self.toolchain),
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        """Inverse of ``to_dict``; an unsupported schema version or a broken field raises BundleError."""
        version = data.get("schema_version")
        if version not in SUPPORTED_SCHEMA_VERSIONS:
            supported = ", ".join(map(str, SUPPORTED_SCHEMA_VERSIONS))
            raise BundleError(
                f"manifest schema_version {version!r} is not supported; this edgekit reads version(s) "
                f"{supported}. Re-export the bundle with this edgekit, or install the edgekit that wrote it "
                f"({data.get('edgekit_version', 'unknown version')})."
            )
        try:
            return cls(
                schema_version=version,
                edgekit_version=data["edgekit_version"],
                model=data["model"],
                task=data["task"],
                target=data["target"],
                num_classes=data.get("num_classes"),
                input=InputSpec.from_dict(data["input"]),
                outputs=tuple(TensorSpec.from_dict(t) for t in data["outputs"]),
                labels=tuple(data.get("labels", ())),
                postprocess=PostProcess.from_dict(data["postprocess"]),
                graphs=tuple(GraphFile.from_dict(g) for g in data["graphs"]),
                toolchain=dict(data.get("toolchain", {})),
                created=data["created"],
            )
        except KeyError as exc:
            raise BundleError(f"manifest is missing the field {exc}.") from exc
        except (TypeError, ValueError, EdgekitError) as exc:
            raise BundleError(f"manifest has a malformed field: {exc}") from exc


def file_digest(path: str | Path) -> tuple[str, int]:
    """SHA-256 hex digest and size in bytes of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def write_manifest(manifest: Manifest, bundle_dir: str | Path) -> Path:
    """Write ``manifest.json`` into ``bundle_dir``; returns its path."""
    path = Path(bundle_dir) / MANIFEST_NAME
    path.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    return path


def read_manifest(bundle: str | Path) -> Manifest:
    """Read the manifest of a bundle directory (or a ``manifest.json`` path) without hashing."""
    path = Path(bundle)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(f"'{path}' does not exist: is '{bundle}' an edgekit bundle (edgekit export --out)?")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"'{path}' is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BundleError(f"'{path}' does not hold a manifest object.")
    return Manifest.from_dict(data)


def verify(bundle_dir: str | Path) -> Manifest:
    """Read the manifest and check every graph file's size and SHA-256; returns the manifest."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    for graph in manifest.graphs:
        path = bundle_dir / graph.path
        if not path.is_file():
            raise BundleError(f"bundle '{bundle_dir}' lists '{graph.path}' (role {graph.role}) "
                              "but the file is missing.")
        digest, size = file_digest(path)
        if (digest, size) != (graph.sha256, graph.size_bytes):
            raise BundleError(
                f"'{graph.path}' in bundle '{bundle_dir}' does not match its manifest entry "
                f"(sha256 {digest[:12]}..., {size} bytes; manifest says {graph.sha256[:12]}..., "
                f"{graph.size_bytes} bytes): the file was changed or truncated after export. Re-export the bundle."
            )
    return manifest


def write_json(data: Any, path: str | Path) -> Path:
    """Write ``data`` as indented JSON; returns the path."""
    path = Path(path)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


@contextmanager
def atomic_bundle(dest: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``dest``; on success it replaces ``dest``.

    Everything is written into the temporary directory and renamed into place at the end, so
    an existing bundle at ``dest`` survives a failed export and a failure leaves nothing
    behind. An existing ``dest`` is replaced only if it is empty or an edgekit bundle (has a
    manifest), never an arbitrary directory.
    """
    dest = Path(dest).absolute()
    if dest.exists() and not _replaceable(dest):
        raise BundleError(
            f"'{dest}' exists and is not an edgekit bundle (no {MANIFEST_NAME}); refusing to replace it. "
            "Choose a new --out directory or remove it first."
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    tmp.chmod(0o755)  # mkdtemp makes it owner-only; a bundle is meant to be copied and shared
    try:
        yield tmp
        _swap_into_place(tmp, dest)
    finally:
        # Reached with tmp still present only on failure (after a swap it has been renamed).
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _replaceable(dest: Path) -> bool:
    return dest.is_dir() and (not any(dest.iterdir()) or (dest / MANIFEST_NAME).is_file())


def _swap_into_place(tmp: Path, dest: Path) -> None:
    if not dest.exists():
        os.replace(tmp, dest)
        return
    # Two renames: a directory cannot replace a non-empty one in one os.replace.
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    os.replace(dest, old / dest.name)
    try:
        os.replace(tmp, dest)
    except OSError:
        os.replace(old / dest.name, dest)
        old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)
