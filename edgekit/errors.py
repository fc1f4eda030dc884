"""One error hierarchy: the library raises these, the CLI prints them without a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class EdgekitError(Exception):
    """Base of every error edgekit raises on purpose."""


class UnknownModelError(EdgekitError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class UnknownTargetError(EdgekitError, KeyError):
    """A target name that is not in the registry."""

    def __str__(self) -> str:
        return str(self.args[0])


class WeightsError(EdgekitError):
    """Weights that cannot be read or do not fit the architecture."""


class CalibrationDataError(EdgekitError):
    """Calibration data that is missing, empty or unreadable."""


class GraphPassError(EdgekitError):
    """A graph pass met a graph it cannot rewrite safely."""


class ExportError(EdgekitError):
    """An export that cannot be completed (unsupported op, bad options)."""


class BundleError(EdgekitError):
    """A deploy bundle that is missing, corrupt or from another toolchain."""


class MissingDependencyError(EdgekitError, ImportError):
    """An optional package that is needed for the requested work is not installed."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean 'x'?' for the closest choice, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""
