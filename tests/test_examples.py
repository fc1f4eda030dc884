"""The runnable examples run in the suite, as a user would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edgekit.bundle import verify

ROOT = Path(__file__).resolve().parents[1]


def test_byom_export(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "byom_export.py"), "--out", str(tmp_path / "byom")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "agreement OK" in out.stdout and "cosine 1.0000" in out.stdout
    manifest = verify(tmp_path / "byom")
    assert manifest.model == "my_net:build" and manifest.outputs[0].name == "scores"
    assert manifest.input.shape == ("batch", 3, 96, 96) and manifest.labels[9] == "class_9"
