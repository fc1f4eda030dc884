"""The CPU's instruction sets that decide which INT8 form runs fast (and exactly) on it.

onnxruntime's x86 INT8 kernels multiply uint8 activations by int8 weights. Without VNNI they
use ``vpmaddubsw``, which adds each pair of u8 x s8 products into a *saturating* int16 lane
(255 * 127 * 2 = 64770 > 32767), so full-range weights can silently clip; VNNI's ``vpdpbusd``
(AVX512-VNNI, AVX-VNNI) accumulates into int32 and cannot. ARM64 kernels are s8s8
(``sdot``/``smmla`` where the dot-product / i8mm extensions exist). The ``ort-cpu`` profile
reads this module to pick u8s8, u8s8 with 7-bit weights, or s8s8, and reports record it.

Detection reads the ``flags`` (x86) or ``Features`` (ARM) lines of ``/proc/cpuinfo`` with the
SDK's parser (:mod:`edgekit.runtimes.cpuinfo`, standard library only, so the board and the
calibration read a CPU the same way); on systems without it (macOS, Windows) only the
architecture is known and every flag is False.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.runtimes.cpuinfo import CPUINFO, cpu_flags, cpu_model, cpuinfo_fields, normalize_arch, read_cpuinfo

__all__ = ["CPUINFO", "FEATURE_FLAGS", "CpuIsa", "detect_isa", "normalize_arch", "parse_cpuinfo"]

# Feature name -> the /proc/cpuinfo flag spellings that mean it (x86 "flags", ARM "Features").
FEATURE_FLAGS: Mapping[str, tuple[str, ...]] = {
    "avx2": ("avx2",),
    "avx512f": ("avx512f",),
    "avx512_vnni": ("avx512_vnni", "avx512vnni"),
    "avx_vnni": ("avx_vnni",),
    "amx_int8": ("amx_int8",),
    "neon": ("asimd", "neon"),
    "dotprod": ("asimddp",),
    "i8mm": ("i8mm",),
}

_X86 = frozenset({"x86_64", "i386", "i686"})
_ARM64 = frozenset({"aarch64"})


@dataclass(frozen=True)
class CpuIsa:
    """What one CPU can do for INT8 inference.

    Args:
        arch: normalized architecture (``x86_64``, ``aarch64``, ``armv7l``...).
        flags: every flag /proc/cpuinfo lists for the first CPU (empty when unknown).
        model_name: the CPU's marketing name where known.
        source: where the flags came from (``/proc/cpuinfo`` or ``platform`` only).
    """

    arch: str
    flags: frozenset[str] = frozenset()
    model_name: str = ""
    source: str = "platform"

    def has(self, feature: str) -> bool:
        """True when the CPU lists ``feature`` (a key of ``FEATURE_FLAGS``)."""
        return any(flag in self.flags for flag in FEATURE_FLAGS[feature])

    @property
    def features(self) -> dict[str, bool]:
        """Every feature of ``FEATURE_FLAGS`` with whether this CPU has it."""
        return {name: self.has(name) for name in FEATURE_FLAGS}

    @property
    def is_x86(self) -> bool:
        return self.arch in _X86

    @property
    def is_arm64(self) -> bool:
        return self.arch in _ARM64

    @property
    def vnni(self) -> bool:
        """x86 VNNI in any form (AVX512-VNNI, AVX-VNNI; AMX-capable parts have both)."""
        return self.is_x86 and (self.has("avx512_vnni") or self.has("avx_vnni") or self.has("amx_int8"))

    def describe(self) -> str:
        """One line for reports: ``x86_64 [avx2, avx512f, avx512_vnni]``."""
        present = [name for name, on in self.features.items() if on]
        return f"{self.arch} [{', '.join(present) or 'no INT8 extensions detected'}]"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (the INT8-relevant features, not the whole flag list)."""
        return {"arch": self.arch, "model_name": self.model_name, "source": self.source,
                "features": self.features}


def parse_cpuinfo(text: str) -> tuple[frozenset[str], str]:
    """The flags and model name of the first processor block of a /proc/cpuinfo text."""
    fields = cpuinfo_fields(text)
    return cpu_flags(fields), cpu_model(fields)


def detect_isa(cpuinfo: Path | str | None = CPUINFO, machine: str | None = None) -> CpuIsa:
    """Detect this machine's CPU (or describe another one from its cpuinfo text and machine).

    Args:
        cpuinfo: path of a cpuinfo file; None (or a missing file) gives architecture only.
        machine: ``platform.machine()`` value to use instead of this machine's.
    """
    arch = normalize_arch(machine if machine is not None else platform.machine())
    path = Path(cpuinfo) if cpuinfo is not None else None
    if path is None or not path.is_file():
        return CpuIsa(arch=arch)
    flags, model = parse_cpuinfo(read_cpuinfo(path))
    return CpuIsa(arch=arch, flags=flags, model_name=model, source=str(path))
