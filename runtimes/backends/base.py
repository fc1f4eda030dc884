"""The one protocol every inference backend fits: named numpy tensors in, named numpy tensors out.

``Backend.run`` checks the feeds against the graph's input specs (names, dtypes, shapes; a
string dimension such as ``"batch"`` or ``"rois"`` takes any size) and then calls the
adapter's ``_run``; an adapter writes only its constructor and ``_run``. The specs are the
manifest's (``GraphFile.inputs`` / ``outputs``), so a feed that does not fit is refused with
the bundle's own words before it reaches a native library, where it would crash or be
silently broadcast.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgekit.bundle import GraphFile, TensorSpec
from edgekit.errors import BundleError, EdgekitError


class FeedError(EdgekitError, ValueError):
    """Input tensors that do not fit the graph: a wrong or missing name, dtype or shape."""


class Backend(ABC):
    """A graph file loaded by one inference engine.

    Args:
        path: the graph file (``.onnx``, ``.xml``, ``.tflite``, ``.engine``).
        graph: its manifest entry: role, input and output specs, precision.
        threads: CPU threads the engine may use for one inference; None lets it decide.
        toolchain: the manifest's ``toolchain`` (package -> version that built the bundle).
    """

    name: ClassVar[str] = ""

    def __init__(self, path: Path, graph: GraphFile, *, threads: int | None = None,
                 toolchain: Mapping[str, str] | None = None) -> None:
        if threads is not None and threads < 1:
            raise FeedError(f"threads must be >= 1 (or None for the engine's default), got {threads}.")
        for spec in (*graph.inputs, *graph.outputs):
            try:
                np.dtype(spec.dtype)
            except TypeError:
                raise BundleError(f"the manifest gives tensor '{spec.name}' of graph '{graph.role}' the dtype "
                                  f"'{spec.dtype}', which is not a numpy type. Re-export the bundle.") from None
        self.path = Path(path)
        self.graph = graph
        self.threads = threads
        self.toolchain = dict(toolchain or {})
        # What the adapter set on the engine (precision hints, thread counts ...), for reports.
        self.settings: dict[str, Any] = {}

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """The graph's inputs, as the manifest lists them."""
        return self.graph.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """The graph's outputs, as the manifest lists them."""
        return self.graph.outputs

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one inference: feeds by input name -> outputs by name (every listed output)."""
        check_feeds(feeds, self.inputs, self._where())
        try:
            outputs = self._run({k: np.ascontiguousarray(v) for k, v in feeds.items()})
        except EdgekitError:
            raise
        except Exception as exc:  # the engine's own exception types; the feeds were checked above
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise BundleError(f"{self._where()} failed on feeds that match the manifest: {reason}. The graph file "
                              "is broken or does not match its manifest; re-export the bundle.") from exc
        missing = [t.name for t in self.outputs if t.name not in outputs]
        if missing:
            raise BundleError(f"{self._where()} returned no {', '.join(missing)}; the manifest lists outputs "
                              f"{', '.join(t.name for t in self.outputs)}. Re-export the bundle.")
        return {t.name: outputs[t.name] for t in self.outputs}

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Engine-specific inference on feeds already checked against the specs."""

    def check_names(self, inputs: list[str], outputs: list[str],
                    input_shapes: Mapping[str, tuple[int | str, ...] | None] | None = None) -> None:
        """Refuse a graph file whose tensor names (or input shapes) are not the manifest's (the adapter reads them).

        ``input_shapes``: input name -> the engine's shape (a string or None marks a dynamic
        dimension or rank). A fixed dimension that differs from the manifest's would otherwise
        fail inside the engine on the first ``run``, after pre-processing sized for the manifest.
        """
        want_in, want_out = [t.name for t in self.inputs], [t.name for t in self.outputs]
        if sorted(inputs) != sorted(want_in) or not set(want_out) <= set(outputs):
            raise BundleError(
                f"'{self.path.name}' has inputs {inputs} and outputs {outputs}, but the manifest lists inputs "
                f"{want_in} and outputs {want_out}: the file does not belong to this manifest. Re-export the bundle."
            )
        for spec in self.inputs:
            shape = (input_shapes or {}).get(spec.name)
            if shape is not None and not _shapes_agree(shape, spec.shape):
                raise BundleError(
                    f"'{self.path.name}' takes input '{spec.name}' of shape {list(shape)}, but the manifest says "
                    f"{list(spec.shape)}: the file does not belong to this manifest. Re-export the bundle."
                )

    def _where(self) -> str:
        return f"graph '{self.graph.role}' ({self.path.name}) on {self.name}"

    def load_error(self, exc: BaseException, engine_version: str) -> BundleError:
        """The BundleError for a graph file the engine refused to read (its own exception in ``exc``)."""
        built = ", ".join(f"{k} {v}" for k, v in sorted(self.toolchain.items()) if k != "python") or "unknown tools"
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        return BundleError(
            f"{self.name} {engine_version} could not load '{self.path.name}' (graph '{self.graph.role}'): {reason}. "
            f"The file is truncated or corrupt, or needs a newer {self.name} (the bundle was built with {built}). "
            "Re-export the bundle, or upgrade the engine."
        )


def _shapes_agree(engine: tuple[int | str, ...], manifest: tuple[int | str, ...]) -> bool:
    """Same rank, and equal wherever both dimensions are fixed."""
    return len(engine) == len(manifest) and all(
        not (isinstance(a, int) and isinstance(b, int)) or a == b for a, b in zip(engine, manifest))


def dims_match(shape: tuple[int, ...], spec: tuple[int | str, ...]) -> bool:
    """True when ``shape`` fits ``spec``: same rank, equal fixed dimensions (strings match any size)."""
    return len(shape) == len(spec) and all(isinstance(d, str) or d == s for d, s in zip(spec, shape))


def check_feeds(feeds: Mapping[str, np.ndarray], specs: tuple[TensorSpec, ...], where: str) -> None:
    """Raise FeedError unless ``feeds`` holds exactly the ``specs`` by name, dtype and shape."""
    names = [t.name for t in specs]
    missing, unexpected = [n for n in names if n not in feeds], sorted(set(feeds) - set(names))
    if missing or unexpected:
        raise FeedError(f"{where} takes inputs {names}; got {sorted(feeds)} "
                        f"(missing {missing}, unexpected {unexpected}).")
    for spec in specs:
        value = feeds[spec.name]
        if not isinstance(value, np.ndarray):
            raise FeedError(f"input '{spec.name}' of {where} must be a numpy array, got {type(value).__name__}.")
        if value.dtype != np.dtype(spec.dtype):
            raise FeedError(f"input '{spec.name}' of {where} is {value.dtype}; the graph takes {spec.dtype}. "
                            f"Convert it with .astype(np.{spec.dtype}).")
        if not dims_match(value.shape, spec.shape):
            raise FeedError(f"input '{spec.name}' of {where} has shape {list(value.shape)}; the graph takes "
                            f"{list(spec.shape)} (named dimensions take any size).")
