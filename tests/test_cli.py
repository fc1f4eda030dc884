"""The command line: tables from the registry, errors without tracebacks, help on every command."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from edgekit.cli import app, main
from edgekit.models import list_models


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgekit.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "250"})


def test_models_lists_every_registered_model_with_sizes() -> None:
    out = _run("models")
    assert out.returncode == 0, out.stderr
    for name in list_models():
        assert name in out.stdout
    assert f"({len(list_models())} models)" in out.stdout


def test_models_filter_by_task() -> None:
    out = _run("models", "--task", "detect")
    assert out.returncode == 0
    assert "thundernet-snet146" in out.stdout and "mobilenetv2" not in out.stdout


def test_info_prints_summary() -> None:
    out = _run("info", "--model", "shufflenetv2-1.0")
    assert out.returncode == 0, out.stderr
    assert "stage2" in out.stdout and "M params" in out.stdout and "G MACs" in out.stdout


def test_unknown_model_is_one_line_with_suggestion(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["info", "--model", "mobilenet-v2"])
    out = capsys.readouterr().out
    assert code == 1
    assert "UnknownModelError" in out and "Did you mean 'mobilenetv2'?" in out
    assert "Traceback" not in out


@pytest.mark.parametrize("command", [None, *[c.name for c in app.registered_commands]])
def test_help_explains_every_command(command: str | None) -> None:
    out = _run(*([command] if command else []), "--help")
    assert out.returncode == 0
    assert "Usage" in out.stdout and len(out.stdout.splitlines()) > 5


def test_usage_error_is_a_message_not_a_traceback() -> None:
    out = _run("info")
    assert out.returncode == 2
    assert "Missing option '--model'" in out.stderr and "Traceback" not in out.stderr
