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
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import PurePosixPath, PureWindowsPath
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

    def __post_init__(self) -> None:
        for key in ("name", "dtype", "meaning"):
            require_type(getattr(self, key), str, f"tensor {key}")
        for dim in self.shape:
            require_type(dim, (int, str), f"dimension of tensor '{self.name}'")

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

    def __post_init__(self) -> None:
        for key in ("role", "sha256", "precision"):
            require_type(getattr(self, key), str, f"graph {key}")
        require_type(self.size_bytes, int, f"size_bytes of graph '{self.role}'")
        check_member_path(self.path, f"graph '{self.role}'")

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

    def __post_init__(self) -> None:
        require_type(self.kind, str, "postprocess kind")

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

    def __post_init__(self) -> None:
        for key in ("model", "task", "target", "edgekit_version", "created"):
            require_type(getattr(self, key), str, key)
        for label in self.labels:
            require_type(label, str, "label")
        if self.num_classes is not None:
            require_type(self.num_classes, int, "num_classes")
        for package, version in self.toolchain.items():
            require_type(version, str, f"toolchain version of '{package}'")
        # InputSpec checks ranges; the types of what the runtime's pre-processing computes with are checked here.
        require_type(self.input.name, str, "input name")
        for value in (*self.input.mean, *self.input.std, self.input.pad_value, self.input.crop_fraction):
            require_type(value, (int, float), "input mean, std, pad_value and crop_fraction")
        for dim in (*self.input.imgsz, *self.input.shape[1:]):
            require_type(dim, int, "input imgsz and shape")

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


def require_type(value: object, kind: type | tuple[type, ...], what: str) -> None:
    """Raise BundleError unless ``value`` is a ``kind`` (a bool is not an int here): a manifest is outside input."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise BundleError(f"{what} must be {names}, got {type(value).__name__} {str(value)[:40]!r}.")


def check_member_path(path: object, what: str) -> None:
    """Refuse a file name that could leave the bundle directory: absolute, ``..``, a drive or a backslash.

    A manifest (or an archive) from someone else must not make the runtime hash or load a
    file outside the bundle (``/etc/passwd``, ``../../model.onnx``).
    """
    if not isinstance(path, str) or not path or "\x00" in path:
        raise BundleError(f"{what}: file name {path!r} is not a non-empty string.")
    posix, windows = PurePosixPath(path), PureWindowsPath(path)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or "\\" in path or ".." in posix.parts:
        raise BundleError(f"{what}: file name '{path}' points outside the bundle directory; a bundle lists "
                          "relative paths inside itself only (e.g. 'model.onnx').")


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

    A process killed outright (SIGKILL, power loss) cannot clean up: its temporary
    directories carry its process id, and the next ``atomic_bundle`` on the same ``dest``
    removes those of processes that no longer run (restoring the old bundle if the kill fell
    between the two renames of the swap). SIGINT and SIGTERM are held back during the swap,
    so Ctrl-C leaves either the old bundle or the new one in place.
    """
    dest = Path(dest).absolute()
    if dest.exists() and not _replaceable(dest):
        raise BundleError(
            f"'{dest}' exists and is not an edgekit bundle (no {MANIFEST_NAME}); refusing to replace it. "
            "Choose a new --out directory or remove it first."
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(dest)
    tmp: Path | None = None
    try:
        with signals_held():  # a Ctrl-C between mkdtemp and the assignment would leak the directory
            tmp = Path(tempfile.mkdtemp(prefix=sibling_prefix(dest, "tmp"), dir=dest.parent))
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; a bundle is meant to be copied and shared
        yield tmp
        _swap_into_place(tmp, dest)
    finally:
        # Reached with tmp still present only on failure (after a swap it has been renamed).
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sibling_prefix(dest: Path, kind: str) -> str:
    """Name prefix of this process's temporary sibling of ``dest`` (``kind``: ``tmp`` or ``old``)."""
    return f".{dest.name}.{kind}-{os.getpid()}-"


def remove_stale_siblings(dest: str | Path) -> list[Path]:
    """Remove the temporary siblings of ``dest`` left by killed processes; returns what was removed.

    Only ``.<name>.tmp-<pid>-*`` and ``.<name>.old-<pid>-*`` entries (directories, or files
    such as a half-written archive) whose process is no longer running are touched. If
    ``dest`` is missing and a stale ``old`` directory holds the previous bundle (a kill
    between the two renames of a swap), that bundle is put back.
    """
    dest = Path(dest).absolute()
    pattern = re.compile(rf"^\.{re.escape(dest.name)}\.(tmp|old)-(\d+)-")
    try:
        siblings = sorted(dest.parent.iterdir())
    except OSError:
        return []
    removed = []
    for path in siblings:
        match = pattern.match(path.name)
        if not match or path.is_symlink() or _process_alive(int(match.group(2))):
            continue
        if not path.is_dir():
            path.unlink(missing_ok=True)
            removed.append(path)
            continue
        kept = path / dest.name
        if match.group(1) == "old" and not dest.exists() and (kept / MANIFEST_NAME).is_file():
            os.replace(kept, dest)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    # On Windows os.kill(pid, 0) would terminate the process: never treat anything there as stale.
    if pid == os.getpid() or os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # exists but belongs to another user, or cannot be asked
        return True
    return True


def _replaceable(dest: Path) -> bool:
    return dest.is_dir() and (not any(dest.iterdir()) or (dest / MANIFEST_NAME).is_file())


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back (delivered on exit) where the platform allows it, in the main thread."""
    held = {signal.SIGINT, signal.SIGTERM}
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    except (AttributeError, ValueError, OSError):  # Windows, or no signal support here
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _swap_into_place(tmp: Path, dest: Path) -> None:
    with signals_held():
        if not dest.exists():
            os.replace(tmp, dest)
            return
        # Two renames: a directory cannot replace a non-empty one in one os.replace.
        old = Path(tempfile.mkdtemp(prefix=sibling_prefix(dest, "old"), dir=dest.parent))
        os.replace(dest, old / dest.name)
        try:
            os.replace(tmp, dest)
        except OSError:
            os.replace(old / dest.name, dest)
            old.rmdir()
            raise
        shutil.rmtree(old, ignore_errors=True)
