"""Kill exports at random points and check that no half-written bundle is ever accepted.

Each trial starts ``edgekit.export`` of a small zoo model (``shufflenetv2-0.5`` at 32x32) in a
child process, to ``onnx-fp32`` or to ``onnx-int8`` (calibration on 8 synthetic images, the
accuracy report included), and sends it SIGINT or SIGKILL after a seeded random delay within
the export's measured duration. Half of the trials export over an existing bundle (the other
target's), so kills also land in the replacement of an old bundle. Afterwards:

- the destination is absent, the old bundle or the new one, file for file (``verify`` passes
  and predictions equal the reference export's); anything else counts as corrupted;
- ``edgekit.runtimes.load`` either accepts a complete bundle or raises an ``EdgekitError``;
- after SIGINT no temporary directory is left; after SIGKILL one may be;
- a rerun of the same export (a child process, not killed) succeeds, loads, predicts the
  reference's answer, and leaves no temporary directory, SIGKILL leftovers included.

tests/reliability/test_interrupts.py runs a handful of trials in CI through ``run_trials``.

    python tools/interrupt_trials.py                   # 40 trials -> docs/reliability/interrupts.json
    python tools/interrupt_trials.py --trials 8 --out /tmp/interrupts.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "reliability" / "interrupts.json"
MODEL = "shufflenetv2-0.5"
IMGSZ = 32
TARGETS = ("onnx-fp32", "onnx-int8")
SIGNALS = {"SIGINT": signal.SIGINT, "SIGKILL": signal.SIGKILL}

CHILD = f"""
import signal, sys, time
# A shell starts background jobs with SIGINT ignored and children inherit that: restore Ctrl-C as
# a terminal delivers it (KeyboardInterrupt), or the SIGINT trials would test nothing.
signal.signal(signal.SIGINT, signal.default_int_handler)
import torch, onnx, onnxruntime
import edgekit
target, dest, calib = sys.argv[1:4]
torch.manual_seed(0)  # the zoo model's random init: every export of a target is the same bundle
options = dict(calib_data=calib, calib_samples=8) if target == "onnx-int8" else {{}}
print("ready", flush=True)
start = time.perf_counter()
edgekit.export("{MODEL}", out=dest, target=target, imgsz=({IMGSZ}, {IMGSZ}), **options)
print(f"done {{time.perf_counter() - start:.3f}}", flush=True)
"""


@dataclass
class Reference:
    """A clean export of one target: where it is, how long it took, what it predicts."""

    bundle: Path
    export_s: float
    files: list[str]
    scores: list[float]


@dataclass
class Trial:
    """One kill and what it left."""

    index: int
    target: str
    signal: str
    over_existing: bool
    delay_s: float
    returncode: int | None = None
    finished_before_signal: bool = False
    state: str = ""  # absent | old | new | corrupt
    load: str = ""  # ok | refused: <EdgekitError> | UNEXPECTED: <exception>
    leftovers_after_kill: list[str] = field(default_factory=list)
    rerun_ok: bool | None = None
    rerun_leftovers: list[str] = field(default_factory=list)
    rerun_error: str = ""
    corrupted: bool = False


def _spawn(target: str, dest: Path, calib: Path, log: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as stderr:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-c", CHILD, target, str(dest), str(calib)], stdout=subprocess.PIPE,
                                stderr=stderr, text=True, env=env)


def _read_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    if not selector.select(timeout=timeout_s):
        proc.kill()
        raise TimeoutError(f"export child printed nothing for {timeout_s} s")
    return proc.stdout.readline().strip()


def export_in_child(target: str, dest: Path, calib: Path, timeout_s: float = 300) -> float:
    """Run one export in a child to the end; returns its duration (ready -> done) in seconds."""
    log = dest.parent / f"{dest.name}.export.log"
    dest.parent.mkdir(parents=True, exist_ok=True)
    proc = _spawn(target, dest, calib, log)
    assert _read_line(proc, timeout_s) == "ready"
    done = _read_line(proc, timeout_s)
    proc.wait(timeout=timeout_s)
    proc.stdout.close()
    if proc.returncode != 0 or not done.startswith("done "):
        tail = " | ".join(log.read_text().strip().splitlines()[-3:])
        raise RuntimeError(f"export of {target} to {dest} failed (exit {proc.returncode}): {tail}")
    return float(done.split()[1])


def predict_scores(bundle: Path) -> list[float]:
    """Scores of a fixed image, onnxruntime, one thread."""
    import numpy as np

    from edgekit.runtimes import load

    image = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    return [float(s) for s in load(bundle, backend="onnxruntime", threads=1).predict(image).scores]


def make_references(root: Path, calib: Path) -> dict[str, Reference]:
    """One clean export per target."""
    refs = {}
    for target in TARGETS:
        bundle = root / "reference" / target
        export_s = export_in_child(target, bundle, calib)
        refs[target] = Reference(bundle, export_s, sorted(p.name for p in bundle.iterdir()), predict_scores(bundle))
    return refs


def leftovers(dest: Path) -> list[str]:
    """Temporary siblings of ``dest`` (``.<name>.tmp-*``, ``.<name>.old-*``)."""
    if not dest.parent.exists():
        return []
    return sorted(p.name for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}."))


def classify(dest: Path, refs: dict[str, Reference]) -> str:
    """``absent``, the target of the reference ``dest`` equals file for file, or ``corrupt``."""
    from edgekit.bundle import verify
    from edgekit.errors import EdgekitError

    if not dest.exists():
        return "absent"
    try:
        manifest = verify(dest)
    except EdgekitError:
        return "corrupt"
    ref = refs.get(manifest.target)
    if ref is None or sorted(p.name for p in dest.iterdir()) != ref.files:
        return "corrupt"
    return manifest.target


def run_trial(trial: Trial, root: Path, calib: Path, refs: dict[str, Reference], *, rerun: bool = True) -> Trial:
    """Start the export, kill it after ``trial.delay_s``, inspect, rerun."""
    from edgekit.errors import EdgekitError

    dest = root / f"trial-{trial.index:03d}" / "bundle"
    dest.parent.mkdir(parents=True)
    old_target = next(t for t in TARGETS if t != trial.target)
    if trial.over_existing:
        shutil.copytree(refs[old_target].bundle, dest)
    proc = _spawn(trial.target, dest, calib, dest.parent / "killed.log")
    assert _read_line(proc, 300) == "ready"
    time.sleep(trial.delay_s)
    trial.finished_before_signal = proc.poll() is not None
    if not trial.finished_before_signal:
        proc.send_signal(SIGNALS[trial.signal])
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:  # a SIGINT that native code sat on for a minute
        proc.kill()
        proc.wait()
    proc.stdout.close()
    trial.returncode = proc.returncode
    trial.leftovers_after_kill = leftovers(dest)

    kind = classify(dest, refs)
    trial.state = {trial.target: "new", old_target: "old"}.get(kind, kind)
    try:
        scores = predict_scores(dest)
        trial.load = "ok"
        expected = refs[trial.target if trial.state == "new" else old_target].scores
        if trial.state not in ("new", "old") or scores != expected:
            trial.corrupted = True  # load accepted something that is not a complete bundle
    except EdgekitError as exc:
        trial.load = f"refused: {type(exc).__name__}"
    except Exception as exc:  # counted, never raised: the trial records it
        trial.load = f"UNEXPECTED: {type(exc).__name__}: {exc}"
        trial.corrupted = True
    trial.corrupted |= trial.state == "corrupt"
    if trial.signal == "SIGINT" and trial.leftovers_after_kill:
        trial.corrupted = True  # Ctrl-C must clean up after itself

    if rerun:
        try:
            export_in_child(trial.target, dest, calib)
        except RuntimeError as exc:
            trial.rerun_ok, trial.rerun_error = False, str(exc)
            return trial
        trial.rerun_leftovers = leftovers(dest)
        trial.rerun_ok = (classify(dest, refs) == trial.target and predict_scores(dest) == refs[trial.target].scores
                          and not trial.rerun_leftovers)
    return trial


def plan(count: int, seed: int, refs: dict[str, Reference]) -> list[Trial]:
    """``count`` trials cycling through target x signal x (new / over an existing bundle), seeded delays."""
    rng = random.Random(seed)
    combos = [(t, s, e) for t in TARGETS for s in SIGNALS for e in (False, True)]
    trials = []
    for index in range(count):
        target, sig, existing = combos[index % len(combos)]
        delay = round(rng.uniform(0.0, 1.1 * refs[target].export_s), 3)
        trials.append(Trial(index=index, target=target, signal=sig, over_existing=existing, delay_s=delay))
    return trials


def run_trials(count: int, seed: int, root: Path) -> tuple[list[Trial], dict[str, Reference]]:
    """Everything: calibration images, references, ``count`` trials with reruns."""
    from edgekit.data import synthesize

    calib = Path(synthesize("cls", 8, seed, root / "calib", imgsz=IMGSZ))
    refs = make_references(root, calib)
    return [run_trial(t, root, calib, refs) for t in plan(count, seed, refs)], refs


def summarise(trials: list[Trial], refs: dict[str, Reference]) -> dict[str, Any]:
    """Counts for docs/reliability.md."""
    def count(key: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in trials:
            out[str(getattr(t, key))] = out.get(str(getattr(t, key)), 0) + 1
        return dict(sorted(out.items()))

    return {
        "trials": len(trials),
        "corrupted": sum(t.corrupted for t in trials),
        "load_accepted_partial": sum(t.load == "ok" and t.state not in ("new", "old") for t in trials),
        "unexpected_exceptions": sum(t.load.startswith("UNEXPECTED") for t in trials),
        "reruns_ok": sum(bool(t.rerun_ok) for t in trials),
        "by_signal": count("signal"), "by_target": count("target"), "states": count("state"), "load": count("load"),
        "killed_before_finishing": sum(not t.finished_before_signal for t in trials),
        "interrupted": {sig: sum(t.returncode != 0 for t in trials if t.signal == sig) for sig in SIGNALS},
        "sigkill_leftovers_cleaned_by_rerun": sum(bool(t.leftovers_after_kill) and not t.rerun_leftovers
                                                  for t in trials if t.signal == "SIGKILL"),
        "export_s": {t: round(r.export_s, 2) for t, r in refs.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgekit-interrupts-") as tmp:
        trials, refs = run_trials(args.trials, args.seed, Path(tmp))
    body = {
        "what": f"tools/interrupt_trials.py: edgekit.export of {MODEL} ({IMGSZ}x{IMGSZ}) to {', '.join(TARGETS)} in a "
                "child process, killed with SIGINT or SIGKILL after a seeded random delay within the export's "
                "duration, half of them over an existing bundle; then runtimes.load, then a rerun",
        **summarise(trials, refs),
        "trial_records": [{k: v for k, v in asdict(t).items()} for t in trials],
        "seed": args.seed, "wall_s": round(time.perf_counter() - start, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "OMP_NUM_THREADS=1 python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(body, indent=1) + "\n")
    print(f"{body['trials']} trials: {body['corrupted']} corrupted, {body['reruns_ok']} reruns ok -> {args.out}")
    return 0 if body["corrupted"] == 0 and body["reruns_ok"] == body["trials"] else 1


if __name__ == "__main__":
    sys.exit(main())
