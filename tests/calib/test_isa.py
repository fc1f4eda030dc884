"""CPU ISA detection from /proc/cpuinfo text and the platform's machine name."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from edgekit.calib.isa import CpuIsa, detect_isa, normalize_arch, parse_cpuinfo

# Trimmed from real /proc/cpuinfo files: a Skylake server (AVX-512, no VNNI), a Sapphire Rapids
# (VNNI, AMX), a Raspberry Pi 5 (Cortex-A76: dot product) and a Pi 3 (Cortex-A53: NEON only).
SKYLAKE = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 avx512f avx512dq avx512cd avx512bw avx512vl

processor\t: 1
flags\t\t: fpu sse avx512_vnni
"""
SAPPHIRE_RAPIDS = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu avx2 avx512f avx512_vnni avx_vnni amx_bf16 amx_tile amx_int8
"""
PI5 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
"""
PI3 = """processor\t: 0
Features\t: fp asimd evtstrm crc32 cpuid
"""


def _isa(tmp_path: Path, text: str, machine: str) -> CpuIsa:
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return detect_isa(path, machine=machine)


def test_x86_without_vnni(tmp_path: Path) -> None:
    isa = _isa(tmp_path, SKYLAKE, "x86_64")
    assert isa.is_x86 and not isa.is_arm64
    assert isa.has("avx2") and isa.has("avx512f")
    assert not isa.vnni  # only the first processor block counts, not processor 1's line
    assert isa.model_name.startswith("Intel(R) Xeon(R) Gold 6148")
    assert isa.describe() == "x86_64 [avx2, avx512f]"


def test_x86_with_vnni_and_amx(tmp_path: Path) -> None:
    isa = _isa(tmp_path, SAPPHIRE_RAPIDS, "AMD64")
    assert isa.arch == "x86_64" and isa.vnni
    assert isa.features == {"avx2": True, "avx512f": True, "avx512_vnni": True, "avx_vnni": True,
                            "amx_int8": True, "neon": False, "dotprod": False, "i8mm": False}


@pytest.mark.parametrize(("text", "dotprod"), [(PI5, True), (PI3, False)])
def test_arm64_features(tmp_path: Path, text: str, dotprod: bool) -> None:
    isa = _isa(tmp_path, text, "arm64")
    assert isa.arch == "aarch64" and isa.is_arm64 and not isa.vnni
    assert isa.has("neon") and isa.has("dotprod") is dotprod and not isa.has("i8mm")


def test_missing_cpuinfo_gives_architecture_only(tmp_path: Path) -> None:
    isa = detect_isa(tmp_path / "absent", machine="x86_64")
    assert isa == CpuIsa(arch="x86_64")
    assert not any(isa.features.values()) and isa.source == "platform"
    assert detect_isa(None, machine="aarch64").arch == "aarch64"


def test_parse_and_normalize() -> None:
    flags, model = parse_cpuinfo(SAPPHIRE_RAPIDS)
    assert "amx_int8" in flags and "fpu" in flags and model == "Intel(R) Xeon(R) Platinum 8480+"
    assert parse_cpuinfo("") == (frozenset(), "")
    assert [normalize_arch(m) for m in ("AMD64", "x86_64", "arm64", "aarch64", "armv7l")] == \
        ["x86_64", "x86_64", "aarch64", "aarch64", "armv7l"]


def test_this_machine() -> None:
    isa = detect_isa()
    assert isa.arch == normalize_arch(platform.machine())
    report = isa.to_dict()
    assert set(report) == {"arch", "model_name", "source", "features"}
    if Path("/proc/cpuinfo").is_file():
        assert isa.flags and isa.source == "/proc/cpuinfo"
