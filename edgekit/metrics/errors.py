"""The metrics package's error."""

from __future__ import annotations

from edgekit.errors import EdgekitError


class MetricInputError(EdgekitError, ValueError):
    """Predictions and ground truth whose shapes or values do not fit together."""
