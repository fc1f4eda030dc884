"""The CPU a benchmark ran on: architecture, model name and the SIMD / matrix extensions that
decide inference speed, read from ``/proc/cpuinfo`` (``flags`` on x86, ``Features`` on ARM).

Standard library only, and the one parser of ``/proc/cpuinfo`` in edgekit: the calibration
profiles (:mod:`edgekit.calib.isa`) build on it. Where ``/proc/cpuinfo`` does not exist (macOS,
Windows) only the architecture is known.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")

# Extensions worth recording next to a latency, in this order: x86 SIMD / VNNI / bf16 / AMX,
# then ARM NEON (asimd), dot product, int8 matrix multiply, bf16, SVE and fp16 arithmetic.
ISA_FLAGS: tuple[str, ...] = (
    "sse4_2", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16",
    "amx_int8", "asimd", "asimddp", "i8mm", "bf16", "sve", "asimdhp",
)
FLAG_KEYS: tuple[str, ...] = ("flags", "features")
# The CPU's name, best first: x86 "model name"; MIPS "cpu model"; older ARM "Hardware"; a
# Raspberry Pi's board "Model". (x86 "model" is a number, so it comes last.)
MODEL_KEYS: tuple[str, ...] = ("model name", "cpu model", "hardware", "model")
# platform.machine() spellings -> one name per architecture.
ARCH_ALIASES: dict[str, str] = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}


def read_cpuinfo(path: Path = CPUINFO) -> str:
    """The text of ``path``; empty where it cannot be read (no ``/proc`` on macOS or Windows)."""
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def cpuinfo_fields(text: str) -> dict[str, str]:
    """Lower-cased key -> value of a ``/proc/cpuinfo`` text, first occurrence wins (the first CPU's)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def cpu_flags(fields: dict[str, str]) -> frozenset[str]:
    """Every extension flag the first CPU lists (x86 ``flags``, ARM ``Features``)."""
    return frozenset(next((fields[k] for k in FLAG_KEYS if k in fields), "").split())


def cpu_model(fields: dict[str, str]) -> str:
    """The CPU's (or board's) name by ``MODEL_KEYS``; empty when none is there."""
    return next((fields[k] for k in MODEL_KEYS if fields.get(k)), "")


def normalize_arch(machine: str) -> str:
    """``AMD64`` -> ``x86_64``, ``arm64`` -> ``aarch64``; other names lower-cased."""
    name = machine.strip().lower()
    return ARCH_ALIASES.get(name, name)


def cpu_description(cpuinfo: Path = CPUINFO) -> dict[str, Any]:
    """``{"machine", "model", "cores", "isa"}``: ``isa`` lists the ``ISA_FLAGS`` this CPU has."""
    fields = cpuinfo_fields(read_cpuinfo(cpuinfo))
    flags = cpu_flags(fields)
    return {"machine": platform.machine(), "model": cpu_model(fields) or platform.processor(),
            "cores": os.cpu_count(), "isa": [f for f in ISA_FLAGS if f in flags]}
