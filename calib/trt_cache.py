"""TensorRT's INT8 calibration cache, written from a QuantRecipe and read back.

The format TensorRT's ``IInt8EntropyCalibrator2`` writes and reads (implicit quantization,
the path JetPack's TensorRT 10.x still takes for a plain fp32 ONNX with ``--int8 --calib``)::

    TRT-100300-EntropyCalibration2
    images: 3c010204
    /stage2/conv/Conv_output_0: 3d0f5c29

The header carries TensorRT's integer version: ``major * 10000 + minor * 100 + patch`` from
10.0 on (``NV_TENSORRT_VERSION_INT`` in TensorRT 10's ``NvInferRuntimeBase.h``; NVIDIA's
TrafficCamNet cache for TensorRT 10.3 starts ``TRT-100300-EntropyCalibration2``), and
``major * 1000 + minor * 100 + patch`` before (``TRT-8601-...`` for 8.6.1, as NVIDIA TAO's
exporters compute it). TensorRT refuses a cache whose header does not match its own version
and algorithm and recalibrates (with no data, the build fails), so the header is written for
the TensorRT that will build the engine. Each line is ``tensor: hex`` where ``hex`` is the
IEEE-754 float32 bit pattern of ``scale = amax / 127`` (big-endian, as onnxruntime's
TensorRT provider decodes it in ``ReadDynamicRange``).

Only activations are written; TensorRT computes weight scales itself. A tensor without an
entry runs at higher precision.
"""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path

from edgekit.calib.recipe import Precision, QuantRecipe, TensorKind
from edgekit.errors import BundleError

ALGORITHM = "EntropyCalibration2"
JETPACK6_TRT = "10.3.0"


def trt_version_number(version: str) -> int:
    """TensorRT's integer version as its cache header prints it: ``10.3.0`` -> 100300, ``8.6.1`` -> 8601."""
    parts = version.strip().split(".")
    try:
        major, minor, patch = (int(p) for p in (parts + ["0", "0"])[:3])
    except ValueError:
        raise ValueError(f"TensorRT version must look like '10.3.0', got '{version}'") from None
    return major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch


def cache_header(version: str = JETPACK6_TRT, algorithm: str = ALGORITHM) -> str:
    """``TRT-<int version>-<algorithm>``, e.g. ``TRT-100300-EntropyCalibration2``."""
    return f"TRT-{trt_version_number(version)}-{algorithm}"


def scale_to_hex(scale: float) -> str:
    """The 8 hex digits of ``scale`` as a big-endian float32."""
    return struct.pack(">f", scale).hex()


def hex_to_scale(text: str) -> float:
    """Inverse of ``scale_to_hex`` (TensorRT may drop leading zeros: they are restored)."""
    return struct.unpack(">f", bytes.fromhex(text.strip().rjust(8, "0")))[0]


def format_trt_cache(recipe: QuantRecipe, trt_version: str = JETPACK6_TRT) -> str:
    """The cache text: the header, then ``name: hex(amax / 127)`` per INT8 activation."""
    lines = [cache_header(trt_version)]
    for name, tq in sorted(recipe.tensors.items()):
        if tq.kind is not TensorKind.ACTIVATION or tq.precision is not Precision.INT8:
            continue
        if "\n" in name or name != name.strip():
            raise ValueError(f"tensor name {name!r} cannot be written to a TensorRT cache line")
        # an all-zero tensor has amax 0; the recipe's own (positive) scale keeps TensorRT valid
        scale = tq.amax / 127.0 if tq.amax > 0 else tq.scale[0]
        lines.append(f"{name}: {scale_to_hex(scale)}")
    return "\n".join(lines) + "\n"


def write_trt_cache(recipe: QuantRecipe, path: str | Path, *, trt_version: str = JETPACK6_TRT) -> Path:
    """Write the cache for ``trt_version`` atomically (a temporary file, then a rename)."""
    path = Path(path)
    text = format_trt_cache(recipe, trt_version)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="\n") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_trt_cache(path: str | Path) -> tuple[str, dict[str, float]]:
    """Parse a TensorRT calibration cache into ``(header, {tensor name: scale})``.

    Raises:
        BundleError: the file does not start with a ``TRT-`` header or has a malformed line.
    """
    lines = Path(path).read_text().splitlines()
    if not lines or not lines[0].startswith("TRT-"):
        raise BundleError(f"'{path}' is not a TensorRT calibration cache: the first line must start with 'TRT-'.")
    scales = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, value = line.rpartition(":")  # names may hold ':' (e.g. 'x:0'); the hex never does
        try:
            scales[name] = hex_to_scale(value)
        except (ValueError, struct.error):
            sep = ""
        if not sep or not name:
            raise BundleError(f"'{path}' line {number}: expected 'tensor: <hex float32>', got {line!r}.")
    return lines[0], scales
