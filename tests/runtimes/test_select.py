"""``backend="auto"`` against recorded platform descriptions (never the machine running the tests)."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from edgekit.errors import BundleError
from edgekit.runtimes import PlatformInfo, choose_backend, installed_backends
from edgekit.runtimes.select import is_jetson

ONNX = ["stage1.onnx", "head.onnx"]
TFLITE = ["model.tflite"]
ENGINE = ["stage1.engine", "head.engine"]
IR = ["model.xml"]

# What the boards report: platform.machine(), the L4T / device-tree markers, installed engines.
JETSON_ORIN = PlatformInfo("aarch64", True, frozenset({"tensorrt", "onnxruntime"}))
JETSON_NO_TRT_PYTHON = PlatformInfo("aarch64", True, frozenset({"onnxruntime"}))
PI5_LITERT = PlatformInfo("aarch64", False, frozenset({"litert"}))
PI4_LITERT_OPENVINO = PlatformInfo("aarch64", False, frozenset({"litert", "openvino", "onnxruntime"}))
PI_32BIT = PlatformInfo("armv7l", False, frozenset({"onnxruntime", "litert"}))
X86_DEV = PlatformInfo("x86_64", False, frozenset({"onnxruntime", "openvino", "litert"}))
X86_ORT_ONLY = PlatformInfo("x86_64", False, frozenset({"onnxruntime"}))
WINDOWS = PlatformInfo("AMD64", False, frozenset({"onnxruntime", "openvino"}))
MAC_M1 = PlatformInfo("arm64", False, frozenset({"onnxruntime"}))
RISCV = PlatformInfo("riscv64", False, frozenset({"onnxruntime", "openvino"}))


@pytest.mark.parametrize("info, files, expected", [
    (JETSON_ORIN, ENGINE, "tensorrt"),
    (JETSON_ORIN, ONNX, "onnxruntime"),  # TensorRT reads engines, not ONNX
    (JETSON_NO_TRT_PYTHON, ONNX, "onnxruntime"),
    (PI5_LITERT, TFLITE, "litert"),
    (PI4_LITERT_OPENVINO, TFLITE, "litert"),
    (PI4_LITERT_OPENVINO, ONNX, "openvino"),
    (PI4_LITERT_OPENVINO, IR, "openvino"),
    (PI_32BIT, ONNX, "onnxruntime"),
    (X86_DEV, ONNX, "openvino"),
    (X86_DEV, TFLITE, "litert"),
    (X86_ORT_ONLY, ONNX, "onnxruntime"),
    (WINDOWS, ONNX, "openvino"),
    (MAC_M1, ONNX, "onnxruntime"),
    (RISCV, ONNX, "onnxruntime"),  # unknown architecture: the generic order
])
def test_choice_by_platform_installed_and_files(info: PlatformInfo, files: list[str], expected: str) -> None:
    assert choose_backend(info, files) == expected


@pytest.mark.parametrize("info, family", [(JETSON_ORIN, "jetson"), (PI5_LITERT, "arm"), (PI_32BIT, "arm"),
                                          (MAC_M1, "arm"), (X86_DEV, "x86"), (WINDOWS, "x86"), (RISCV, "other")])
def test_platform_family(info: PlatformInfo, family: str) -> None:
    assert info.family == family


def test_nothing_installed_reads_the_bundle() -> None:
    with pytest.raises(BundleError, match=r"no installed backend reads stage1.engine.*sudo apt install "
                                          r"python3-libnvinfer"):
        choose_backend(JETSON_NO_TRT_PYTHON, ENGINE)
    with pytest.raises(BundleError, match=r"installed: litert\).*onnxruntime: pip install 'edgekit\[onnxruntime\]'"):
        choose_backend(PI5_LITERT, ONNX)
    with pytest.raises(BundleError, match="no backend reads model.tflite, head.onnx"):
        choose_backend(X86_DEV, ["model.tflite", "head.onnx"])


@pytest.mark.parametrize("files, model, expected", [
    ({"etc/nv_tegra_release": "# R36 (release), REVISION: 3.0"}, None, True),
    ({}, b"NVIDIA Jetson Orin Nano Developer Kit\x00", True),
    ({}, b"Raspberry Pi 5 Model B Rev 1.0\x00", False),
    ({}, None, False),
])
def test_jetson_detection_from_board_files(tmp_path: Path, files: dict[str, str], model: bytes | None,
                                           expected: bool) -> None:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    if model is not None:
        (tmp_path / "proc" / "device-tree").mkdir(parents=True)
        (tmp_path / "proc" / "device-tree" / "model").write_bytes(model)
    assert is_jetson(tmp_path) is expected


def test_detect_describes_this_machine(tmp_path: Path) -> None:
    info = PlatformInfo.detect(root=tmp_path)
    assert info.machine == platform.machine() and info.is_jetson is False
    assert info.installed == installed_backends()
