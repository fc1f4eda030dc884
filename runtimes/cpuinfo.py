"""The CPU a benchmark ran on: architecture, model name and the SIMD / matrix extensions that
decide inference speed, read from ``/proc/cpuinfo`` (``flags`` on x86, ``Features`` on ARM).

Standard library only. Where ``/proc/cpuinfo`` does not exist (macOS, Windows) only the
architecture is known.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

# Extensions worth recording next to a latency, in this order: x86 SIMD / VNNI / bf16 / AMX,
# then ARM NEON (asimd), dot product, int8 matrix multiply, bf16, SVE and fp16 arithmetic.
ISA_FLAGS: tuple[str, ...] = (
    "sse4_2", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16",
    "amx_int8", "asimd", "asimddp", "i8mm", "bf16", "sve", "asimdhp",
)
_FLAG_KEYS = ("flags", "features")
# The CPU's name, best first: x86 "model name"; a Raspberry Pi's board "Model"; older ARM "Hardware".
# (x86 "model" is a number, so it comes last.)
_MODEL_KEYS = ("model name", "hardware", "model")


def cpu_description(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """``{"machine", "model", "cores", "isa"}``: ``isa`` lists the ``ISA_FLAGS`` this CPU has."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())  # the first CPU's value
    flags = set(next((fields[k] for k in _FLAG_KEYS if k in fields), "").split())
    model = next((fields[k] for k in _MODEL_KEYS if fields.get(k)), "") or platform.processor()
    return {"machine": platform.machine(), "model": model, "cores": os.cpu_count(),
            "isa": [f for f in ISA_FLAGS if f in flags]}
