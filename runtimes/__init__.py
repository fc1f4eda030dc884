"""edgekit.runtimes: the board SDK.

Imports numpy and, lazily, one backend package — never torch, never ``edgekit.graph`` or
``edgekit.calib`` — so ``pip install edgekit[tflite]`` on a Raspberry Pi pulls no torch.

    from edgekit.runtimes import load
    model = load("bundle/", backend="auto", threads=2)   # Classifier, Detector or Segmenter
    result = model.predict("photo.jpg")

Public names resolve on first use (PEP 562): importing a submodule such as
``edgekit.runtimes.twostage`` does not load the task pipelines or Pillow.
"""

from __future__ import annotations

from typing import Any

# Public name -> module that defines it.
_LAZY: dict[str, str] = {
    **dict.fromkeys(("load", "Classifier", "Detector", "Segmenter", "StageTimes", "TASKS"), "edgekit.runtimes.tasks"),
    **dict.fromkeys(("ClassResult", "Detections", "SegmentationResult", "palette"), "edgekit.runtimes.results"),
    **dict.fromkeys(("Backend", "BACKENDS", "FeedError", "UnknownBackendError", "create_backend",
                     "installed_backends"), "edgekit.runtimes.backends"),
    **dict.fromkeys(("PlatformInfo", "choose_backend"), "edgekit.runtimes.select"),
    **dict.fromkeys(("BenchResult", "benchmark"), "edgekit.runtimes.bench"),
    **dict.fromkeys(("draw_detections", "overlay_mask", "render"), "edgekit.runtimes.draw"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgekit.runtimes' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
