"""The board examples run as a user runs them, on a machine where torch cannot be imported."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from runtime_cases import Case

ROOT = Path(__file__).resolve().parents[2]

# A meta-path finder that refuses torch stands in for a board without it; then the script runs as __main__.
NO_TORCH = """
import runpy, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == 'torch' or name.startswith('torch.'):
            raise ImportError('torch is not installed on this board')
sys.meta_path.insert(0, Block())
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name='__main__')
"""


def run_example(name: str, *args: str) -> str:
    out = subprocess.run([sys.executable, "-c", NO_TORCH, str(ROOT / "examples" / name), *args],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_rpi_camera_falls_back_to_a_folder(detector_case: Case, tmp_path: Path) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(4):
        detector_case.image.rotate(90 * i, expand=True).save(folder / f"frame{i}.jpg")
    printed = run_example("rpi_camera.py", "--bundle", str(detector_case.bundle), "--backend", "onnxruntime",
                          "--source", "auto", "--folder", str(folder), "--max-frames", "3", "--save",
                          str(tmp_path / "out"), "--threads", "1")
    assert "frames from folder" in printed
    assert len(re.findall(r"^frame\d\.jpg: \d+ results in [\d.]+ ms", printed, flags=re.M)) == 3
    assert "3 frames, median" in printed
    saved = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert saved == ["frame0.jpg", "frame1.jpg", "frame2.jpg"]
    assert Image.open(tmp_path / "out" / "frame1.jpg").size == (300, 400)  # the rotated frame's size


def test_jetson_segmentation_on_the_sample_images(segmenter_case: Case, tmp_path: Path) -> None:
    printed = run_example("jetson_segmentation.py", "--bundle", str(segmenter_case.bundle), "--backend",
                          "onnxruntime", "--max-images", "2", "--save", str(tmp_path / "seg"))
    assert "256x128 input, 7 classes, on onnxruntime" in printed
    lines = re.findall(r"^(\d+\.jpg): [\d.]+ ms .*\| (.*)$", printed, flags=re.M)
    assert [name for name, _ in lines] == ["000000.jpg", "000001.jpg"]
    assert all("%" in summary for _, summary in lines)
    mask = Image.open(tmp_path / "seg" / "000000_mask.png")
    assert mask.size == (256, 256) and int(np.asarray(mask).max()) <= 6
    assert Image.open(tmp_path / "seg" / "000001_overlay.png").size == (256, 256)
