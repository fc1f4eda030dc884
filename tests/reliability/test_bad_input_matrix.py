"""The bad-input matrix: each row is one mistake a user makes, and the exact error edgekit answers with.

Every row runs the real thing (export, calibration, ``runtimes.load``, ``predict`` on real files
and onnxruntime/OpenVINO) and asserts the message substring the user reads and, where
something is written, that nothing half-written is left (no bundle, no temporary sibling).
docs/reliability.md lists the rows.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import openvino as ov
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

import edgekit
from edgekit.bundle import MANIFEST_NAME, read_manifest
from edgekit.calib.calibrate import calibrate
from edgekit.cli import main
from edgekit.data import synthesize
from edgekit.errors import (
    BundleError,
    CalibrationDataError,
    ExportError,
    MissingDependencyError,
    UnknownModelError,
    UnknownTargetError,
    WeightsError,
)
from edgekit.data.errors import DatasetError, PreprocessError
from edgekit.runtimes import load
from edgekit.runtimes.backends.tensorrt import check_engine_version

FIXTURES = Path(edgekit.__file__).parent / "fixtures"
IMGSZ = (32, 32)
OV_VERSION = ov.get_version().split("-")[0]


class TinyNet(nn.Module):
    """A classifier small enough to export in a fraction of a second."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class LogNet(TinyNet):
    """log() of a conv output: NaN wherever the conv is negative, in a tensor no observer reads."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body[5](torch.log(self.body[0](x)).mean((2, 3)))


class OverflowNet(TinyNet):
    """A conv output scaled past float32: Inf in an observed activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body[5]((self.body[0](x) * 1e38 * 1e38).mean((2, 3)))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny onnx-fp32 bundle, a tiny openvino-fp32 bundle and 8 calibration images."""
    root = tmp_path_factory.mktemp("matrix")
    torch.manual_seed(0)
    model = TinyNet().eval()
    edgekit.export(model, out=root / "onnx", target="onnx-fp32", imgsz=IMGSZ)
    edgekit.export(model, out=root / "openvino", target="openvino-fp32", imgsz=IMGSZ)
    synthesize("cls", 8, 0, root / "calib", imgsz=32)
    return root


def _copy(work: Path, name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(work / name, tmp_path / name))


def _nothing_written(out: Path) -> None:
    """No bundle at ``out`` and no temporary sibling of it."""
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")] == []


def _rehash(bundle: Path) -> None:
    """Rewrite the manifest's hashes, as if the broken file had been exported that way."""
    raw = json.loads((bundle / MANIFEST_NAME).read_text())
    for graph in raw["graphs"]:
        data = (bundle / graph["path"]).read_bytes()
        graph["sha256"], graph["size_bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    (bundle / MANIFEST_NAME).write_text(json.dumps(raw))


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().out.strip()


# ---------------------------------------------------------------- names


def test_unknown_model_lists_the_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    with pytest.raises(UnknownModelError) as info:
        edgekit.export("shufflenet-9", out=out, target="onnx-fp32")
    message = str(info.value)
    assert "model 'shufflenet-9' is not registered." in message
    assert "Available: bisenet, " in message and "shufflenetv2-0.5, shufflenetv2-1.0" in message
    assert "For your own network pass 'path/to/file.py:factory'." in message
    _nothing_written(out)
    code, printed = _cli(["export", "--model", "shufflenet-9", "--out", str(out)], capsys)
    assert code == 1 and printed.startswith("UnknownModelError: model 'shufflenet-9' is not registered.")
    assert len(printed.splitlines()) == 1
    _nothing_written(out)


def test_unknown_target_lists_the_targets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    with pytest.raises(UnknownTargetError) as info:
        edgekit.export("shufflenetv2-0.5", out=out, target="onnx-in8")
    assert str(info.value).startswith("target 'onnx-in8' is not registered. Available: onnx-fp32, onnx-int8, "
                                      "openvino-fp16, openvino-fp32, openvino-int8, tflite-fp16")
    assert str(info.value).endswith("Did you mean 'onnx-int8'?")
    code, printed = _cli(["export", "--model", "shufflenetv2-0.5", "--out", str(out), "--target", "onnx-in8"], capsys)
    assert code == 1 and printed.startswith("UnknownTargetError: target 'onnx-in8' is not registered.")
    _nothing_written(out)


# ---------------------------------------------------------------- weights


def test_weights_of_another_architecture_list_missing_and_unexpected_keys(tmp_path: Path) -> None:
    weights = tmp_path / "mobilenetv2.safetensors"  # no card beside it: the keys must tell
    save_file(load_file(str(FIXTURES / "mobilenetv2.safetensors")), str(weights))
    out = tmp_path / "out"
    with pytest.raises(WeightsError) as info:
        edgekit.export("shufflenetv2-1.0", out=out, target="onnx-fp32", weights=weights)
    message = str(info.value)
    assert message.startswith(f"weights in '{weights}' do not fit this architecture:")
    assert "\n  missing in file (" in message and "\n    conv1.0.weight\n" in message
    assert "\n  unexpected in file (" in message and "\n    features.0.0.weight\n" in message
    assert message.endswith("Check that the weights were trained for this model name and num_classes.")
    _nothing_written(out)


def test_weights_whose_card_names_another_model(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=r"were trained for 'mobilenetv2' \(their card says so\), not "
                                          r"'shufflenetv2-1.0'; pass --model mobilenetv2\."):
        edgekit.export("shufflenetv2-1.0", out=out, target="onnx-fp32", weights=FIXTURES / "mobilenetv2.safetensors")
    _nothing_written(out)


class _Payload:
    """Unpickling this runs code: it creates the file named in its argument."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (self.marker,))


def test_pickled_weights_are_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    weights = tmp_path / "evil.pt"
    torch.save({"conv1.0.weight": torch.zeros(1), "extra": _Payload(marker)}, weights)
    out = tmp_path / "out"
    with pytest.raises(WeightsError) as info:
        edgekit.export("shufflenetv2-0.5", out=out, target="onnx-fp32", weights=weights)
    assert str(info.value).startswith(f"'{weights}' holds Python objects beyond tensors, which edgekit refuses to "
                                      "unpickle (torch.load weights_only=True). Re-save only the state dict:")
    assert not marker.exists()
    _nothing_written(out)


def test_truncated_safetensors(tmp_path: Path) -> None:
    weights = tmp_path / "cut.safetensors"
    weights.write_bytes((FIXTURES / "shufflenetv2-1.0.safetensors").read_bytes()[:1000])
    out = tmp_path / "out"
    with pytest.raises(WeightsError, match=r"is not a readable safetensors file: "):
        edgekit.export("shufflenetv2-1.0", out=out, target="onnx-fp32", weights=weights)
    _nothing_written(out)


# ---------------------------------------------------------------- ONNX files


def test_truncated_onnx_in_a_bundle_fails_its_hash(work: Path, tmp_path: Path) -> None:
    bundle = _copy(work, "onnx", tmp_path)
    raw = (bundle / "model.onnx").read_bytes()
    (bundle / "model.onnx").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(BundleError) as info:
        load(bundle)
    assert f"'model.onnx' in bundle '{bundle}' does not match its manifest entry (sha256 " in str(info.value)
    assert str(info.value).endswith("the file was changed or truncated after export. Re-export the bundle.")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_onnx_that_matches_its_manifest(work: Path, tmp_path: Path, damage: str) -> None:
    # As if the export itself had written a broken file: the hashes agree, the engines must refuse it.
    bundle = _copy(work, "onnx", tmp_path)
    raw = (bundle / "model.onnx").read_bytes()
    (bundle / "model.onnx").write_bytes(raw[: len(raw) // 2] if damage == "truncated" else b"\x08\x07junk" * 50)
    _rehash(bundle)
    with pytest.raises(BundleError) as info:
        load(bundle, backend="onnxruntime")
    assert str(info.value).startswith(f"onnxruntime {ort.__version__} could not load 'model.onnx' (graph 'model'): ")
    assert "The file is truncated or corrupt, or needs a newer onnxruntime" in str(info.value)
    with pytest.raises(BundleError, match=r"^'model.onnx' is not a valid ONNX graph \(.*\); it is corrupt or was "
                                          r"edited after export\. Re-export the bundle\.$"):
        load(bundle, backend="openvino")


def test_calibrating_a_truncated_onnx_file(work: Path, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    raw = (work / "onnx" / "model.onnx").read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ExportError, match=rf"^cannot read the ONNX model '{path}' \(DecodeError: .*\); the file is "
                                          r"missing, truncated or not an ONNX model\. Export it again\.$"):
        calibrate(path, [], profile="ort-cpu")


def test_onnx_whose_input_shape_is_not_the_manifests(work: Path, tmp_path: Path) -> None:
    bundle = _copy(work, "onnx", tmp_path)
    raw = json.loads((bundle / MANIFEST_NAME).read_text())
    raw["input"]["shape"], raw["input"]["imgsz"] = [1, 3, 64, 64], [64, 64]
    raw["graphs"][0]["inputs"][0]["shape"] = [1, 3, 64, 64]
    (bundle / MANIFEST_NAME).write_text(json.dumps(raw))
    for backend in ("onnxruntime", "openvino"):
        with pytest.raises(BundleError, match=r"^'model.onnx' takes input 'images' of shape \[1, 3, 32, 32\], but the "
                                              r"manifest says \[1, 3, 64, 64\]: the file does not belong to this "
                                              r"manifest\. Re-export the bundle\.$"):
            load(bundle, backend=backend)


# ---------------------------------------------------------------- calibration data


def _int8(out: Path, calib: Path, model: str | nn.Module = "shufflenetv2-0.5") -> None:
    edgekit.export(model, out=out, target="onnx-int8", imgsz=IMGSZ, calib_data=calib, calib_samples=8)


def test_empty_calibration_folder(tmp_path: Path) -> None:
    (tmp_path / "calib").mkdir()
    out = tmp_path / "out"
    with pytest.raises(CalibrationDataError, match=rf"^--calib-data '{tmp_path / 'calib'}': dataset folder "
                                                   rf"'{tmp_path / 'calib'}' is empty$"):
        _int8(out, tmp_path / "calib")
    _nothing_written(out)


def test_missing_calibration_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(CalibrationDataError, match=rf"dataset path '{tmp_path / 'nowhere'}' does not exist$"):
        _int8(out, tmp_path / "nowhere")
    _nothing_written(out)


def test_calibration_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "calib" / "cats").mkdir(parents=True)
    (tmp_path / "calib" / "cats" / "notes.txt").write_text("no pictures here")
    out = tmp_path / "out"
    with pytest.raises(CalibrationDataError) as info:
        _int8(out, tmp_path / "calib")
    assert "matches no dataset layout edgekit knows:\n  coco: " in str(info.value)
    assert "\n  class-folders: <class name>/<images> (ImageNet style)" in str(info.value)
    _nothing_written(out)


def test_calibration_folder_of_corrupt_jpegs(tmp_path: Path) -> None:
    (tmp_path / "calib" / "a").mkdir(parents=True)
    (tmp_path / "calib" / "a" / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 40)
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match=rf"^cannot decode image '{tmp_path / 'calib' / 'a' / 'x.jpg'}': .*The file "
                                           r"is truncated, corrupt or not an image; re-export it or remove it"):
        _int8(out, tmp_path / "calib")
    _nothing_written(out)


UNPRIVILEGED_EXPORT = """
import sys, edgekit
from pathlib import Path
from edgekit.errors import EdgekitError
try:
    edgekit.export("shufflenetv2-0.5", out=sys.argv[2], target="onnx-int8", imgsz=(32, 32), calib_data=sys.argv[1],
                   calib_samples=8)
    print("exported")
except EdgekitError as exc:
    print(f"{type(exc).__name__}: {exc}")
except Exception as exc:
    print(f"NOT AN EDGEKIT ERROR {type(exc).__name__}: {exc}")
"""


def _export_without_read_permission(calib: Path, out: Path) -> str:
    """Export in a child that cannot bypass file permissions (root drops CAP_DAC_OVERRIDE with setpriv)."""
    command = [sys.executable, "-c", UNPRIVILEGED_EXPORT, str(calib), str(out)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: read permission cannot be taken away")
        command = [setpriv, "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0 and "setpriv:" in done.stderr:
        pytest.skip(f"setpriv cannot drop capabilities here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_unreadable_image_in_the_calibration_folder(work: Path, tmp_path: Path) -> None:
    calib = Path(shutil.copytree(work / "calib", tmp_path / "calib"))
    locked = sorted(calib.rglob("*.jpg"))[0]
    locked.chmod(0)
    out = tmp_path / "out"
    printed = _export_without_read_permission(calib, out)
    assert printed == (f"DatasetError: cannot read image '{locked}': Permission denied. Check that it is a file this "
                       "user may read (ls -l).")
    _nothing_written(out)


def test_unreadable_calibration_folder(work: Path, tmp_path: Path) -> None:
    calib = Path(shutil.copytree(work / "calib", tmp_path / "calib"))
    calib.chmod(0)
    out = tmp_path / "out"
    try:
        printed = _export_without_read_permission(calib, out)
    finally:
        calib.chmod(0o755)
    assert printed.startswith(f"CalibrationDataError: --calib-data '{calib}': cannot read dataset folder")
    _nothing_written(out)


def test_calibration_path_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "calib.jpg").write_bytes(b"not a folder")
    out = tmp_path / "out"
    with pytest.raises(CalibrationDataError, match="is a file, not a folder"):
        _int8(out, tmp_path / "calib.jpg")
    _nothing_written(out)


def test_nan_in_an_activation_names_the_tensor(work: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    out = tmp_path / "out"
    with pytest.raises(CalibrationDataError) as info:
        _int8(out, work / "calib", LogNet().eval())
    message = str(info.value)
    assert message.startswith("activation '") and "' (output of Log node '" in message
    assert " NaN and 0 Inf value(s) among 4096 on calibration sample 0, and graph output 'output0' is not finite: " \
           "the fp32 model overflows or takes log/sqrt/division of invalid values on this input" in message
    _nothing_written(out)


def test_inf_in_an_activation_names_the_tensor(work: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    out = tmp_path / "out"
    with pytest.raises(CalibrationDataError, match=r"^activation '\S+' holds 0 NaN and 4096 Inf value\(s\) among 4096 "
                                                   r"on calibration sample 0: the fp32 model overflows"):
        _int8(out, work / "calib", OverflowNet().eval())
    _nothing_written(out)


# ---------------------------------------------------------------- images at predict time


@pytest.fixture(scope="module")
def classifier(work: Path) -> object:
    return load(work / "onnx", backend="onnxruntime", threads=1)


def test_corrupt_and_truncated_jpegs(classifier: object, tmp_path: Path) -> None:
    raw = (Path(edgekit.__file__).parent / "data" / "samples" / "sample.jpg").read_bytes()
    cases = {"truncated.jpg": raw[: len(raw) // 3], "empty.jpg": b"", "header-only.jpg": raw[:20]}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DatasetError, match=rf"^cannot decode image '{tmp_path / name}': .*\. The file is "
                                               r"truncated, corrupt or not an image; re-export it or remove it from "
                                               r"the dataset\.$"):
            classifier.predict(tmp_path / name)
    with pytest.raises(DatasetError, match=rf"^image '{tmp_path / 'nope.jpg'}' does not exist$"):
        classifier.predict(tmp_path / "nope.jpg")


def test_images_of_other_modes_are_read_as_their_rgb_rendering(classifier: object) -> None:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    grey = np.asarray(rgb.convert("L"))
    alpha = Image.fromarray(rng.integers(0, 256, (40, 50), dtype=np.uint8))
    white = Image.new("RGBA", rgb.size, (255, 255, 255, 255))
    rows = {  # the image in another mode -> the RGB picture it must be read as
        "L": (rgb.convert("L"), rgb.convert("L").convert("RGB")),
        "1": (rgb.convert("1"), rgb.convert("1").convert("RGB")),
        "P": (rgb.convert("P"), rgb.convert("P").convert("RGB")),
        "CMYK": (rgb.convert("CMYK"), rgb.convert("CMYK").convert("RGB")),
        "I;16": (Image.fromarray(grey.astype(np.uint16) * 257), rgb.convert("L").convert("RGB")),
        "RGBA": (Image.merge("RGBA", (*rgb.split(), alpha)),
                 Image.alpha_composite(white, Image.merge("RGBA", (*rgb.split(), alpha))).convert("RGB")),
    }
    for mode, (image, rendering) in rows.items():
        assert image.mode == mode
        got, expected = classifier.predict(image), classifier.predict(np.asarray(rendering))
        assert list(got.class_ids) == list(expected.class_ids), mode
        np.testing.assert_array_equal(got.scores, expected.scores, err_msg=mode)


def test_arrays_of_the_wrong_kind(classifier: object) -> None:
    rows = [
        (np.zeros((10, 10, 3), np.float32), "image array has dtype float32; expected uint8 (0..255) or uint16."),
        (np.zeros((10, 10, 2), np.uint8), "image array has shape (10, 10, 2); expected (H, W), (H, W, 1), (H, W, 3) "
                                          "or (H, W, 4)"),
        (np.zeros((0, 10, 3), np.uint8), "image array has shape (0, 10, 3); an image needs at least one pixel."),
        ([[1, 2], [3, 4]], "expected a Pillow image, a path or an HWC uint8 numpy array; got list."),
    ]
    for image, message in rows:
        with pytest.raises(DatasetError) as info:
            classifier.predict(image)
        assert str(info.value).startswith(message)
    with pytest.raises(PreprocessError, match=r"^input_order 'xyz' is not a channel order; use rgb or bgr"):
        classifier.predict(np.zeros((10, 10, 3), np.uint8), input_order="xyz")
    assert len(classifier.predict(np.zeros((1, 1, 3), np.uint8)).class_ids) == 3  # one pixel is an image


def test_an_image_too_large_to_decode_safely(classifier: object, tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    Image.new("L", (20000, 20000)).save(path)  # 400 MP of one colour: a few hundred KB on disk
    with pytest.raises(DatasetError, match=rf"^image '{path}' is too large to decode safely: Image size \(400000000 "
                                           r"pixels\) exceeds limit .* Downscale it, or raise "
                                           r"PIL\.Image\.MAX_IMAGE_PIXELS if you trust the file\.$"):
        classifier.predict(path)


# ---------------------------------------------------------------- bundles


def test_bundle_files_that_do_not_match_their_hashes(work: Path, tmp_path: Path) -> None:
    for name, graph in (("onnx", "model.onnx"), ("openvino", "model.xml")):
        bundle = _copy(work, name, tmp_path)
        data = bytearray((bundle / graph).read_bytes())
        data[len(data) // 2] ^= 0x01  # one bit
        (bundle / graph).write_bytes(bytes(data))
        with pytest.raises(BundleError, match=rf"^'{graph}' in bundle '{bundle}' does not match its manifest entry "
                                              r"\(sha256 [0-9a-f]{12}\.\.\., \d+ bytes; manifest says "
                                              r"[0-9a-f]{12}\.\.\., \d+ bytes\): the file was changed or truncated "
                                              r"after export\."):
            load(bundle)
        (bundle / graph).unlink()
        with pytest.raises(BundleError, match=rf"^bundle '{bundle}' lists '{graph}' \(role model\) but the file is "
                                              r"missing\.$"):
            load(bundle)


def test_manifest_paths_that_leave_the_bundle(work: Path, tmp_path: Path) -> None:
    bundle = _copy(work, "onnx", tmp_path)
    raw = json.loads((bundle / MANIFEST_NAME).read_text())
    for path in ("../onnx/model.onnx", "/etc/passwd", "C:\\model.onnx"):
        raw["graphs"][0]["path"] = path
        (bundle / MANIFEST_NAME).write_text(json.dumps(raw))
        with pytest.raises(BundleError) as info:
            load(bundle)
        assert str(info.value) == (f"manifest has a malformed field: graph 'model': file name '{path}' points outside "
                                   "the bundle directory; a bundle lists relative paths inside itself only (e.g. "
                                   "'model.onnx').")


def test_manifest_fields_of_the_wrong_type(work: Path, tmp_path: Path) -> None:
    bundle = _copy(work, "onnx", tmp_path)
    raw = json.loads((bundle / MANIFEST_NAME).read_text())
    raw["task"] = {"classify": True}
    (bundle / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=r"^manifest has a malformed field: task must be str, got dict "):
        load(bundle)


def test_postprocess_parameters_of_the_wrong_type(work: Path, tmp_path: Path) -> None:
    bundle = _copy(work, "onnx", tmp_path)
    raw = json.loads((bundle / MANIFEST_NAME).read_text())
    raw["postprocess"]["params"]["k"] = [5]
    (bundle / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=r"^post-processing parameter 'k' must be int, got list '\[5\]'\.$"):
        load(bundle)


def test_manifest_with_an_unknown_schema_version(work: Path, tmp_path: Path) -> None:
    bundle = _copy(work, "onnx", tmp_path)
    raw = json.loads((bundle / MANIFEST_NAME).read_text())
    raw["schema_version"] = 2
    (bundle / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(BundleError) as info:
        load(bundle)
    assert str(info.value) == ("manifest schema_version 2 is not supported; this edgekit reads version(s) 1. Re-export "
                               f"the bundle with this edgekit, or install the edgekit that wrote it "
                               f"({edgekit.__version__}).")


def test_bundle_from_a_newer_openvino(work: Path, tmp_path: Path) -> None:
    bundle = _copy(work, "openvino", tmp_path)
    xml = (bundle / "model.xml").read_text()
    assert f'<Runtime_version value="{ov.get_version()}"' in xml
    (bundle / "model.xml").write_text(xml.replace(f'<Runtime_version value="{ov.get_version()}"',
                                                  '<Runtime_version value="2099.1.0-1-abc"'))
    _rehash(bundle)  # written so by the newer release: hashes agree
    with pytest.raises(BundleError) as info:
        load(bundle, backend="openvino")
    assert str(info.value) == (f"'model.xml' was written by OpenVINO 2099.1.0-1-abc; this board has {OV_VERSION}, "
                               "which reads IRs from its own and earlier releases only. Upgrade it here (pip "
                               f"install -U 'openvino>=2099.1'), or re-export the bundle with OpenVINO {OV_VERSION}.")
    # The manifest's toolchain record wins over the IR's; an older release is read.
    raw = json.loads((bundle / MANIFEST_NAME).read_text())
    raw["toolchain"]["openvino"] = "2024.6.0"
    (bundle / MANIFEST_NAME).write_text(json.dumps(raw))
    assert load(bundle, backend="openvino").predict(np.zeros((8, 8, 3), np.uint8)).class_ids.shape == (3,)


def test_bundle_built_for_another_tensorrt(work: Path, tmp_path: Path) -> None:
    bundle = _copy(work, "onnx", tmp_path)
    (bundle / "model.engine").write_bytes(b"serialized on a Jetson")
    raw = json.loads((bundle / MANIFEST_NAME).read_text())
    raw["graphs"][0]["path"] = "model.engine"
    raw["toolchain"]["tensorrt"] = "10.3.0.30"
    (bundle / MANIFEST_NAME).write_text(json.dumps(raw))
    _rehash(bundle)
    manifest = read_manifest(bundle)
    engine = bundle / "model.engine"
    # What TensorRtBackend runs before deserializing, on a board with another TensorRT release:
    with pytest.raises(BundleError) as info:
        check_engine_version(manifest.toolchain["tensorrt"], "8.6.2", engine, manifest.graphs[0].precision)
    assert str(info.value) == (f"engine '{engine}' was built with TensorRT 10.3.0.30; this board has 8.6.2. Rebuild "
                               f"it here: edgekit build-engine {bundle} (or: trtexec --onnx={bundle / 'model.onnx'} "
                               f"--saveEngine={engine})")
    check_engine_version("10.3.0.30", "10.3.0", engine, "fp32")  # the same release: accepted
    if importlib.util.find_spec("tensorrt") is None:  # this machine: no TensorRT at all, said before anything is read
        with pytest.raises(MissingDependencyError, match=r"^backend 'tensorrt' needs tensorrt and cuda, which are not "
                                                         r"installed\. Install it: on a Jetson: sudo apt install "
                                                         r"python3-libnvinfer"):
            load(bundle, backend="tensorrt")


def test_loading_something_that_is_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=rf"^'{tmp_path / MANIFEST_NAME}' does not exist: is '{tmp_path}' an "
                                          r"edgekit bundle \(edgekit export --out\)\?$"):
        load(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{\"schema_version\": 1, ")
    with pytest.raises(BundleError, match=rf"^'{tmp_path / MANIFEST_NAME}' is not valid JSON: "):
        load(tmp_path)

