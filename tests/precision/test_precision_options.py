"""``--precision``: refused where it cannot apply, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

import edgekit
from edgekit.api import ExportOptions
from edgekit.errors import ExportError


def test_auto_needs_evaluation_images() -> None:
    with pytest.raises(ExportError, match="--precision auto .* pass --eval-data DIR"):
        ExportOptions(precision="auto", calib_data="d")


def test_unknown_precision_lists_the_choices() -> None:
    with pytest.raises(ExportError, match="unknown precision 'fp8'; choose one of: int8, auto"):
        ExportOptions(precision="fp8")


def test_float_targets_refuse_it(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"target 'onnx-fp32' is not quantized: .*--precision auto"):
        edgekit.export("shufflenetv2-0.5", out=tmp_path / "b", target="onnx-fp32", eval_data=tmp_path,
                       precision="auto")
    assert not (tmp_path / "b").exists()
