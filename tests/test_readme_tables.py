"""README tables that a script generates stay what the script makes of its stored results."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def _module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_int8_drop_table_is_generated_from_the_stored_reports() -> None:
    bench = _module(ROOT / "benchmarks" / "calib_vs_peers.py")
    stored = json.loads((ROOT / "docs" / "benchmarks" / "calib_vs_peers.json").read_text())
    readme = (ROOT / "README.md").read_text()
    table = readme.split(bench.README_BEGIN, 1)[1].split(bench.README_END, 1)[0].strip()
    assert table == bench.readme_table(stored["results"], stored).strip()
    # One row per measured fixture, with the report's own fp32 and INT8 numbers.
    for result in stored["results"]:
        key = result["metric"]
        row = next(line for line in table.splitlines() if line.startswith(f"| `{result['model']}` |"))
        assert f"{100 * result['variants']['edgekit']['metrics'][key]:.2f}" in row


def test_peer_table_and_verdicts_follow_the_stored_timings() -> None:
    bench = _module(ROOT / "benchmarks" / "peers.py")
    stored = json.loads((ROOT / "docs" / "benchmarks" / "peers.json").read_text())
    readme = (ROOT / "README.md").read_text()
    table = readme.split(bench.README_BEGIN, 1)[1].split(bench.README_END, 1)[0].strip()
    assert table == bench.readme_table(stored).strip()
    assert stored["meta"]["cpu"] in table  # the machine it ran on
    for record in stored["models"]:
        for threads in bench.THREADS:
            verdict = record["verdict"][f"t{threads}"]
            assert verdict == bench.verdict(record, threads)
            ms = {k: e[f"t{threads}"]["p50_ms"] for k, e in record["paths"].items() if bench.usable(e, threads)}
            ours = min((k for k in ms if bench.BY_KEY[k].owner == "edgekit"), key=ms.__getitem__)
            assert verdict["edgekit_best"] == ours
            assert verdict["vs_eager"] == round(ms["pytorch-eager"] / ms[ours], 3)
            if verdict["met"]:
                assert ms["pytorch-eager"] >= 1.5 * ms[ours] - 1e-6
