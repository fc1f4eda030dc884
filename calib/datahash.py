"""Provenance hashes of calibration data: over the files, or over the feeds as they stream."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

_CHUNK = 1 << 20


def hash_files(paths: Iterable[str | Path], root: str | Path | None = None) -> str:
    """sha256 over the files' names (relative to ``root`` when given) and contents, in order."""
    digest = hashlib.sha256()
    for path in map(Path, paths):
        name = path.relative_to(root).as_posix() if root is not None else path.name
        digest.update(name.encode() + b"\0")
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


class FeedHash:
    """sha256 over a stream of feed dicts (input names, dtypes, shapes and bytes), in order.

    ``wrap(data)`` passes the feeds through unchanged while hashing them, so the statistics
    pass and the provenance hash read the data once.
    """

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    def update(self, feed: Mapping[str, np.ndarray]) -> None:
        """Hash one feed dict (keys sorted)."""
        for name in sorted(feed):
            array = np.ascontiguousarray(feed[name])
            self._digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
            self._digest.update(array.data)

    def wrap(self, data: Iterable[Mapping[str, np.ndarray]]) -> Iterator[Mapping[str, np.ndarray]]:
        """Yield the feeds of ``data`` unchanged, hashing each one on the way."""
        for feed in data:
            if isinstance(feed, Mapping):
                self.update(feed)
            yield feed

    def hexdigest(self) -> str:
        return self._digest.hexdigest()
