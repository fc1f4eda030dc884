"""Exports killed with SIGINT and SIGKILL at random points never leave a bundle that ``load`` accepts half-written.

Real child processes, real signals (tools/interrupt_trials.py; the long run writes
docs/reliability/interrupts.json). Four trials here: each target (onnx-fp32, onnx-int8 with
calibration) killed once with each signal, two of them over an existing bundle; each SIGKILL is
followed by a rerun.
Also: ``atomic_bundle`` puts the old bundle back after a kill between the two renames of a
swap, and removes the temporary directories of dead processes only.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from edgekit.bundle import MANIFEST_NAME, atomic_bundle, remove_stale_siblings

TOOL = Path(__file__).resolve().parents[2] / "tools" / "interrupt_trials.py"


def _tool() -> ModuleType:
    """tools/interrupt_trials.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("interrupt_trials", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules["interrupt_trials"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_killed_exports_leave_the_old_bundle_the_new_one_or_nothing(tmp_path: Path) -> None:
    tool = _tool()
    from edgekit.data import synthesize

    calib = Path(synthesize("cls", 8, 3, tmp_path / "calib", imgsz=tool.IMGSZ))
    refs = tool.make_references(tmp_path, calib)
    trials = [tool.Trial(index=i, target=target, signal=sig, over_existing=existing,
                         delay_s=round(fraction * refs[target].export_s, 3))
              for i, (target, sig, existing, fraction) in enumerate([
                  ("onnx-fp32", "SIGKILL", True, 0.6), ("onnx-fp32", "SIGINT", False, 0.4),
                  ("onnx-int8", "SIGINT", True, 0.7), ("onnx-int8", "SIGKILL", False, 0.5)])]
    for trial in trials:
        # A rerun after each SIGKILL (which may leave a temporary directory); SIGINT cleans up after itself, and
        # tools/interrupt_trials.py reruns after every trial.
        tool.run_trial(trial, tmp_path, calib, refs, rerun=trial.signal == "SIGKILL")
        where = f"trial {trial}"
        assert not trial.corrupted, where
        assert trial.state in ("absent", "old", "new"), where
        assert trial.load == "ok" or trial.load.startswith("refused: "), where
        if trial.state == "absent":
            assert trial.load == "refused: BundleError", where
        if trial.signal == "SIGINT":
            assert trial.leftovers_after_kill == [], where
        else:
            assert trial.rerun_ok and trial.rerun_leftovers == [], where
    summary = tool.summarise(trials, refs)
    assert summary["corrupted"] == 0 and summary["reruns_ok"] == 2
    # The signals really stopped exports midway (else the trials above would test nothing).
    assert summary["interrupted"]["SIGINT"] >= 1 and summary["interrupted"]["SIGKILL"] >= 1


def test_a_kill_between_the_two_renames_of_a_swap_is_repaired(tmp_path: Path) -> None:
    dest = tmp_path / "bundle"
    dest.mkdir()
    (dest / MANIFEST_NAME).write_text('{"old": 1}')
    # What a SIGKILL right after `os.replace(dest, old / dest.name)` leaves, from a process that is gone:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    old = tmp_path / f".bundle.old-{pid}-abc123"
    old.mkdir()
    os.replace(dest, old / "bundle")
    half = tmp_path / f".bundle.tmp-{pid}-def456"
    half.mkdir()
    (half / "model.onnx").write_bytes(b"half")
    assert not dest.exists()
    assert sorted(p.name for p in remove_stale_siblings(dest)) == sorted([old.name, half.name])
    assert (dest / MANIFEST_NAME).read_text() == '{"old": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_stale_cleanup_leaves_live_processes_alone(tmp_path: Path) -> None:
    dest = tmp_path / "bundle"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".bundle.tmp-{sleeper.pid}-xyz789"
        live.mkdir()
        with atomic_bundle(dest) as tmp:  # another export of the same bundle running at the same time
            (tmp / MANIFEST_NAME).write_text("{}")
            assert live.exists() and tmp.name.startswith(f".bundle.tmp-{os.getpid()}-")
        assert live.exists() and (dest / MANIFEST_NAME).is_file()
    finally:
        sleeper.send_signal(signal.SIGKILL)
        sleeper.wait()
    assert remove_stale_siblings(dest) == [live] and not live.exists()


def test_ctrl_c_during_the_swap_waits_for_it(tmp_path: Path) -> None:
    # SIGINT arriving while the bundle is being swapped in is held until the swap is done.
    code = f"""
import os, signal
from pathlib import Path
import edgekit.bundle as b
# A shell starts background jobs (nohup ... &) with SIGINT ignored and children inherit it:
# restore Ctrl-C as a terminal delivers it, or there is nothing to hold.
signal.signal(signal.SIGINT, signal.default_int_handler)
dest = Path({str(tmp_path / 'bundle')!r})
dest.mkdir(); (dest / "manifest.json").write_text("old")
real = os.replace
def replace(src, dst):
    if Path(dst).name == "bundle" and Path(src).parent == dest.parent and ".tmp-" in Path(src).name:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C exactly between the two renames
    return real(src, dst)
b.os.replace = replace
try:
    with b.atomic_bundle(dest) as tmp:
        (tmp / "manifest.json").write_text("new")
except KeyboardInterrupt:
    print("interrupted after the swap")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "interrupted after the swap", done.stderr
    assert (tmp_path / "bundle" / MANIFEST_NAME).read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
