"""README tables that a script generates stay what the script makes of its stored results."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def _module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
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
