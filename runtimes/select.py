"""``backend="auto"``: pick the engine for this board from a table, by platform, by what is
installed and by which files the bundle holds.

The choice is a pure function of a :class:`PlatformInfo`, so it is tested on recorded
descriptions of a Jetson, a Raspberry Pi and x86 boxes rather than on whatever runs the tests;
``PlatformInfo.detect()`` fills one in for the machine at hand.
"""

from __future__ import annotations

import platform as _platform
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import BundleError
from edgekit.runtimes.backends import BACKENDS, installed_backends

# platform.machine() spellings -> one name per architecture.
MACHINE_ALIASES: dict[str, str] = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}
ARCH_FAMILIES: dict[str, str] = {"x86_64": "x86", "i686": "x86", "i386": "x86", "aarch64": "arm", "armv7l": "arm"}

# Platform family -> backends in order of preference (DESIGN.md, "Runtimes"): TensorRT on a
# Jetson's GPU; LiteRT (XNNPACK) then OpenVINO's ARM plugin on a Pi; OpenVINO then
# onnxruntime on x86. The tails let any bundle run wherever an engine that reads it exists.
PREFERENCES: dict[str, tuple[str, ...]] = {
    "jetson": ("tensorrt", "onnxruntime", "openvino", "litert"),
    "arm": ("litert", "openvino", "onnxruntime", "tensorrt"),
    "x86": ("openvino", "onnxruntime", "litert", "tensorrt"),
    "other": ("onnxruntime", "openvino", "litert", "tensorrt"),
}


@dataclass(frozen=True)
class PlatformInfo:
    """What the backend choice needs to know about a machine.

    Args:
        machine: ``platform.machine()``, e.g. ``x86_64`` or ``aarch64``.
        is_jetson: an NVIDIA Jetson (L4T: ``/etc/nv_tegra_release`` or a device-tree model
            naming NVIDIA Jetson).
        installed: names of the backends whose packages are installed.
    """

    machine: str
    is_jetson: bool
    installed: frozenset[str]

    @property
    def family(self) -> str:
        """``jetson``, ``arm``, ``x86`` or ``other``: the row of ``PREFERENCES`` that applies."""
        if self.is_jetson:
            return "jetson"
        machine = MACHINE_ALIASES.get(self.machine.lower(), self.machine.lower())
        return ARCH_FAMILIES.get(machine, "other")

    @classmethod
    def detect(cls, root: Path = Path("/")) -> PlatformInfo:
        """Describe this machine; ``root`` relocates the files read (for tests)."""
        return cls(machine=_platform.machine(), is_jetson=is_jetson(root), installed=installed_backends())


def is_jetson(root: Path = Path("/")) -> bool:
    """True on NVIDIA Jetson boards (L4T writes ``/etc/nv_tegra_release``; the device tree names the board)."""
    if (root / "etc" / "nv_tegra_release").is_file():
        return True
    model = root / "proc" / "device-tree" / "model"
    try:
        text = model.read_bytes().rstrip(b"\x00").decode(errors="replace").lower()
    except OSError:
        return False
    return "jetson" in text or "nvidia" in text


def choose_backend(info: PlatformInfo, files: Iterable[str]) -> str:
    """The first backend in the platform's preference that is installed and reads every one of ``files``.

    Raises:
        BundleError: no installed backend reads the bundle's files; the message says which
            backends would and how to install them.
    """
    files = list(files)
    order = PREFERENCES[info.family]
    readers = [name for name in order if all(BACKENDS[name].reads(f) for f in files)]
    for name in readers:
        if name in info.installed:
            return name
    if not readers:
        raise BundleError(f"no backend reads {', '.join(files)}.")
    hints = "; ".join(f"{name}: {BACKENDS[name].install}" for name in readers)
    raise BundleError(f"no installed backend reads {', '.join(files)} (installed: "
                      f"{', '.join(sorted(info.installed)) or 'none'}). Install one of them — {hints}.")
