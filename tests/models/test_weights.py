"""Weights load safely (weights_only / safetensors) and mismatches read as a diff."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from edgekit.errors import WeightsError
from edgekit.models.weights import load_weights, read_state_dict


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))


def _small() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def test_pt_and_safetensors_round_trip(tmp_path: Path) -> None:
    src = _small()
    torch.nn.init.normal_(src[0].weight)
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "w.pt")
    save_file({k: v.half() if v.is_floating_point() else v for k, v in src.state_dict().items()},
              str(tmp_path / "w.safetensors"))
    for name, atol in (("w.pt", 0.0), ("w.safetensors", 1e-2)):
        dst = load_weights(_small(), tmp_path / name)
        assert dst[0].weight.dtype == torch.float32
        torch.testing.assert_close(dst[0].weight, src[0].weight, atol=atol, rtol=1e-3)


class _Payload:
    def __reduce__(self) -> tuple:
        return (print, ("pickled code ran",))


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    with path.open("wb") as f:
        pickle.dump({"weight": _Payload()}, f)
    with pytest.raises(WeightsError, match="weights_only=True"):
        read_state_dict(path)


def test_mismatch_is_a_readable_diff(tmp_path: Path) -> None:
    state = _small().state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["1.bias"]
    state["0.weight"] = torch.zeros(8, 3, 3, 3)
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(WeightsError) as info:
        load_weights(_small(), tmp_path / "w.pth")
    msg = str(info.value)
    assert "missing in file (1):\n    1.bias" in msg
    assert "unexpected in file (1):\n    extra.weight" in msg
    assert "0.weight: file (8, 3, 3, 3) vs model (4, 3, 3, 3)" in msg


def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    (tmp_path / "bad.pt").write_bytes(b"not a zip")
    for name in ("bad.safetensors", "bad.pt", "absent.pt"):
        with pytest.raises(WeightsError, match=name):
            read_state_dict(tmp_path / name)
