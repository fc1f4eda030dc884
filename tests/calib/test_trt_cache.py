"""TensorRT calibration cache: header, hex scales, round trip through the parser."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgekit.calib.recipe import Precision, Provenance, QuantRecipe, TensorKind, TensorQuant
from edgekit.calib.trt_cache import (
    cache_header,
    format_trt_cache,
    read_trt_cache,
    scale_to_hex,
    trt_version_number,
    write_trt_cache,
)
from edgekit.errors import BundleError


def ieee754(bits: int) -> float:
    """Decode float32 bits by sign/exponent/mantissa, as onnxruntime's TensorRT provider does."""
    sign = -1.0 if bits >> 31 else 1.0
    exponent = ((bits >> 23) & 0xFF) - 127
    mantissa = 1.0 + sum(((bits >> (22 - k)) & 1) * 2.0 ** -(k + 1) for k in range(23))
    return sign * 2.0**exponent * mantissa


def act(name: str, rmin: float, rmax: float, precision: Precision = Precision.INT8) -> TensorQuant:
    amax = max(abs(rmin), abs(rmax))
    return TensorQuant(name, TensorKind.ACTIVATION, (rmin,), (rmax,), (amax / 127 or 1.0,), (0,), precision=precision)


def recipe() -> QuantRecipe:
    tensors = [
        act("images", -2.1, 2.64),
        act("/stage2/stage2.0/Relu_output_0", 0.0, 6.0),
        act("x:0", -0.5, 0.25),
        act("zeros", 0.0, 0.0),
        act("kept_fp16", -1.0, 1.0, Precision.FP16),
        TensorQuant("conv.weight", TensorKind.WEIGHT, (-1.0, -2.0), (1.0, 0.5), (1 / 127, 2 / 127), (0, 0), axis=0),
    ]
    return QuantRecipe("trt", {t.name: t for t in tensors}, Provenance("0" * 64, "entropy", 8, "d"))


@pytest.mark.parametrize(("version", "number"), [("10.3.0", 100300), ("10.7", 100700), ("8.6.1", 8601),
                                                  ("8.5.2", 8502), ("7.1.3", 7103)])
def test_version_numbers_as_tensorrt_prints_them(version: str, number: int) -> None:
    assert trt_version_number(version) == number


def test_round_trip(tmp_path: Path) -> None:
    path = write_trt_cache(recipe(), tmp_path / "calib.cache")
    header, scales = read_trt_cache(path)
    assert header == "TRT-100300-EntropyCalibration2"
    # activations only, INT8 only; weights are TensorRT's own business
    assert set(scales) == {"images", "/stage2/stage2.0/Relu_output_0", "x:0", "zeros"}
    assert scales["images"] == np.float32(2.64 / 127)
    assert scales["/stage2/stage2.0/Relu_output_0"] == np.float32(6.0 / 127)
    assert scales["x:0"] == np.float32(0.5 / 127)
    assert scales["zeros"] == 1.0  # an all-zero tensor keeps the recipe's positive scale
    assert [p.name for p in tmp_path.iterdir()] == ["calib.cache"]  # no temporary left behind


def test_lines_are_name_colon_eight_hex_digits() -> None:
    text = format_trt_cache(recipe(), trt_version="8.6.1")
    lines = text.splitlines()
    assert lines[0] == cache_header("8.6.1") == "TRT-8601-EntropyCalibration2"
    assert "images: " + scale_to_hex(2.64 / 127) in lines
    for line in lines[1:]:
        digits = line.rsplit(": ", 1)[1]
        assert len(digits) == 8 and int(digits, 16) >= 0
    assert scale_to_hex(1.0) == "3f800000" and scale_to_hex(2.0) == "40000000"
    assert text.endswith("\n")


def test_reads_a_cache_written_by_tensorrt(tmp_path: Path) -> None:
    # the layout TensorRT 7.2 wrote for an MNIST network (NVDLA loadable tutorial), with a
    # TensorRT-named layer output and a leading-zero-stripped value
    snippet = ("TRT-7202-EntropyCalibration2\n"
               "data: 3c008912\n"
               "conv1: 3c60dd38\n"
               "(Unnamed Layer* 4) [Fully Connected]_output: 3d65992f\n"
               "ip2: 3e11094c\n"
               "tiny: 800000\n")
    path = tmp_path / "mnist.cache"
    path.write_text(snippet)
    header, scales = read_trt_cache(path)
    assert header == "TRT-7202-EntropyCalibration2"
    assert list(scales) == ["data", "conv1", "(Unnamed Layer* 4) [Fully Connected]_output", "ip2", "tiny"]
    for name, bits in [("data", 0x3C008912), ("conv1", 0x3C60DD38), ("ip2", 0x3E11094C), ("tiny", 0x00800000)]:
        assert scales[name] == pytest.approx(ieee754(bits), rel=1e-7)
    assert scales["data"] * 127 == pytest.approx(0.99, abs=0.01)  # MNIST pixels in [0, 1]


def test_malformed_caches_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.cache"
    path.write_text("images: 3c010204\n")
    with pytest.raises(BundleError, match="must start with 'TRT-'"):
        read_trt_cache(path)
    path.write_text("TRT-100300-EntropyCalibration2\nimages 3c010204\n")
    with pytest.raises(BundleError, match="line 2"):
        read_trt_cache(path)
    path.write_text("TRT-100300-EntropyCalibration2\nimages: 3c01020400\n")
    with pytest.raises(BundleError, match="line 2"):
        read_trt_cache(path)


def test_overwrites_atomically(tmp_path: Path) -> None:
    path = tmp_path / "calib.cache"
    path.write_text("old")
    write_trt_cache(recipe(), path, trt_version="10.3.0")
    assert path.read_text().startswith("TRT-100300-EntropyCalibration2\n")
