"""``report.html`` renders in a real browser: headless Chromium screenshots the page, and it is not blank.

Needs Debian's ``chromium`` package (``apt-get install -y chromium``); skipped, saying so, without it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from report_cases import tiny_int8_bundle

import edgekit
from edgekit.data import synthesize
from edgekit.report.plots import FP32_COLOUR, INT8_COLOUR

WINDOW = (1280, 2000)
ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "edgekit" / "fixtures" / "shufflenetv2-1.0.safetensors"
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _bundle(root: Path) -> Path:
    """The shufflenetv2-1.0 fixture quantized (a real report), else the tiny test classifier."""
    if not FIXTURE.is_file():
        return tiny_int8_bundle(root).bundle
    calib = synthesize("cls", 32, 4301, root / "calib")
    result = edgekit.export("shufflenetv2-1.0", out=root / "bundle", target="onnx-int8", weights=FIXTURE,
                            calib_data=calib, calib_samples=32, eval_data=ROOT / "edgekit/data/samples/cls-val")
    return result.bundle


def _screenshot(html: Path, png: Path, profile: Path) -> None:
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
            html.resolve().as_uri()]
    subprocess.run(args, check=True, capture_output=True, timeout=120)


def _near(pixels: np.ndarray, colour: str, tolerance: int = 24) -> int:
    rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels.astype(int) - rgb).max(axis=-1) <= tolerance).sum())


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install -y chromium)")
def test_report_html_renders_with_its_plots(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    png = tmp_path / "screenshot.png"
    _screenshot(bundle / "report.html", png, tmp_path / "chromium-profile")
    assert png.is_file()
    image = Image.open(png).convert("RGB")
    assert image.size == WINDOW
    pixels = np.asarray(image)
    assert pixels.std() > 20  # not a blank page
    # The plots are only in the embedded PNGs: their bar colours on screen prove they rendered.
    assert _near(pixels, FP32_COLOUR) > 2000 and _near(pixels, INT8_COLOUR) > 2000
    non_white = (pixels < 235).any(axis=-1)
    rows = np.nonzero(non_white.mean(axis=1) > 0.02)[0]
    assert rows.size and rows.max() > WINDOW[1] // 2  # content fills the page, not only a header
