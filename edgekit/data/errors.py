"""The data package's error: a dataset or image that cannot be read as asked."""

from __future__ import annotations

from edgekit.errors import EdgekitError


class DatasetError(EdgekitError):
    """A dataset folder, annotation file or image that is missing, empty or malformed."""


class PreprocessError(EdgekitError, ValueError):
    """Preprocessing options that are out of range or contradict each other."""
