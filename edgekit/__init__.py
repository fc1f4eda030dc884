"""edgekit: PyTorch models to edge boards — export, INT8 calibration, reports, runtime SDK.

``edgekit.runtimes`` is the board SDK and imports numpy only; everything else (the zoo,
graph passes, calibration, exporters) needs the ``export`` extra (torch, onnx).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# Public names resolved on first use (PEP 562), so `import edgekit` pulls in no torch.
_LAZY: dict[str, str] = {"export": "edgekit.api", "ExportOptions": "edgekit.api", "ExportResult": "edgekit.api"}

__all__ = ["ExportOptions", "ExportResult", "__version__", "export"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgekit' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
