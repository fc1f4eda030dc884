"""The Raspberry Pi check (tools/board_check_arm64.sh): real bundles on an emulated arm64 Debian.

The check runs end to end here, once per session: an arm64 Python 3.11 root unpacked from
Debian 12's packages, the aarch64 wheels of ``edgekit[tflite,onnxruntime]`` resolved by pip,
the bundles of ``tools/make_board_bundles.py`` exported on this host, and
``tools/board_predict.py`` run under ``qemu-aarch64-static -cpu cortex-a72`` and natively.
The tests compare the two result files: same classes, detections one to one with box IoU
>= 0.99, masks equal on >= 99.9 % of pixels, and ``backend="auto"`` picked LiteRT on aarch64.

Downloads are cached in ``build/board-arm64`` (a second run skips them). The check is skipped
only where it cannot run at all (not x86-64 Linux, no apt-get / dpkg-deb); a failed download,
a crash under emulation or a disagreement fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "board_check_arm64.sh"
CACHE = ROOT / "build" / "board-arm64"
# Generous: a cold run (downloads, exports, emulation) took 2.5 min on a busy 2-core box.
TIMEOUT_S = 1500
FORBIDDEN = ("torch", "onnx", "onnxscript", "onnxslim", "litert_torch", "ai_edge_quantizer", "jax", "jaxlib")


def _cannot_run() -> str | None:
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return f"the arm64 board check runs on x86-64 Linux (Debian's qemu-user-static); this is {sys.platform} " \
               f"{platform.machine()}"
    missing = [tool for tool in ("apt-get", "dpkg-deb", "flock") if shutil.which(tool) is None]
    if missing:
        return f"the arm64 board check fetches Debian packages with {', '.join(missing)}, which this machine lacks"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_cannot_run() is not None, reason=str(_cannot_run()))]


def _board_predict() -> ModuleType:
    spec = importlib.util.spec_from_file_location("board_predict", ROOT / "tools" / "board_predict.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def check(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the whole check once; its result files, parsed."""
    out = tmp_path_factory.mktemp("board-arm64")
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(SCRIPT), "--cache", str(CACHE), "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    # 0: agreement, 1: a disagreement the tests below name; anything else: a step failed.
    assert proc.returncode in (0, 1), f"board check failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n" \
                                      f"{proc.stderr[-4000:]}"
    print(proc.stdout)  # the timings and agreement lines, shown with -rP
    files = {name: json.loads((out / f"{name}.json").read_text())
             for name in ("arm64", "x86", "agreement", "timings")}
    files["resolved"] = Path(files["timings"]["resolved"]).read_text().split()
    files["bundles"] = json.loads((out / "bundles" / "bundles.json").read_text())
    return files


def _by_name(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {b["name"]: b for b in results["bundles"]}


def test_auto_picks_litert_on_the_emulated_arm64_board(check: dict[str, Any]) -> None:
    board = check["arm64"]["platform"]
    assert (board["machine"], board["family"]) == ("aarch64", "arm")
    assert board["installed_backends"] == ["litert", "onnxruntime"]
    assert "torch" not in board["packages"] and not board["torch_imported"]
    assert check["x86"]["platform"]["machine"] == "x86_64"
    expected = {b["name"]: "litert" if b["target"].startswith("tflite") else "onnxruntime"
                for b in check["bundles"]["bundles"]}
    assert {name: b["backend"] for name, b in _by_name(check["arm64"]).items()} == expected
    # The board ran the wheel built from this checkout, not the host's editable install.
    assert Path(check["arm64"]["edgekit_file"]).is_relative_to(CACHE / "edgekit")


def test_board_install_resolves_without_torch(check: dict[str, Any]) -> None:
    resolved = set(check["resolved"])
    assert {"numpy", "pillow", "ai_edge_litert", "onnxruntime"} <= resolved
    assert not resolved & set(FORBIDDEN), resolved & set(FORBIDDEN)


def test_every_bundle_ran_on_both_machines(check: dict[str, Any]) -> None:
    listed = {b["name"]: b for b in check["bundles"]["bundles"]}
    assert {(b["model"], b["target"]) for b in listed.values()} >= {
        (model, target) for model in ("thundernet-snet146", "lpsnet-s", "shufflenetv2-1.0")
        for target in ("tflite-fp32", "tflite-int8")}
    for side in ("arm64", "x86"):
        ran = _by_name(check[side])
        assert set(ran) == set(listed), side
        for name, bundle in ran.items():
            assert [i["image"] for i in bundle["images"]] == listed[name]["images"], (side, name)


def test_detections_agree(check: dict[str, Any]) -> None:
    board_predict = _board_predict()
    x86, arm = _by_name(check["x86"]), _by_name(check["arm64"])
    detectors = [name for name, b in x86.items() if b["task"] == "detect"]
    assert len(detectors) == 2
    found = 0
    for name in detectors:
        for ref, got in zip(x86[name]["images"], arm[name]["images"]):
            a, b = ref["result"], got["result"]
            assert sorted(a["class_ids"]) == sorted(b["class_ids"]), (name, ref["image"])
            match = board_predict.match_detections(a, b)
            assert match["unmatched"] == 0 and match["min_iou"] >= 0.99, (name, ref["image"], match)
            found += len(a["class_ids"])
    assert found > 0, "no detector found anything on its sample images: the comparison would be empty"


def test_masks_agree(check: dict[str, Any]) -> None:
    board_predict = _board_predict()
    x86, arm = _by_name(check["x86"]), _by_name(check["arm64"])
    segmenters = [name for name, b in x86.items() if b["task"] == "segment"]
    assert len(segmenters) == 2
    for name in segmenters:
        for ref, got in zip(x86[name]["images"], arm[name]["images"]):
            a, b = (board_predict.decode_mask(r["result"]["mask"]) for r in (ref, got))
            assert a.shape == b.shape and len(np.unique(a)) >= 2, (name, ref["image"])
            assert float((a == b).mean()) >= 0.999, (name, ref["image"], float((a == b).mean()))


def test_classes_agree(check: dict[str, Any]) -> None:
    x86, arm = _by_name(check["x86"]), _by_name(check["arm64"])
    classifiers = [name for name, b in x86.items() if b["task"] == "classify"]
    assert len(classifiers) == 3
    for name in classifiers:
        for ref, got in zip(x86[name]["images"], arm[name]["images"]):
            assert ref["result"]["class_ids"] == got["result"]["class_ids"], (name, ref["image"])
            np.testing.assert_allclose(got["result"]["scores"], ref["result"]["scores"], atol=1e-3)


def test_script_verdict_matches(check: dict[str, Any]) -> None:
    """The script's own comparison (what `make board-check` reports) agrees with the tests above."""
    verdict = check["agreement"]
    assert verdict["machines"] == ["x86_64", "aarch64"]
    assert verdict["ok"], {name: b for name, b in verdict["bundles"].items() if not b["ok"]}
