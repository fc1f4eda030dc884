"""Trained weights on disk: fp16 safetensors plus a JSON card that states their contract.

``W.safetensors`` holds the state dict in fp16 (integer buffers unchanged); ``W.json``
(:class:`WeightsCard`) says which model and classes it is, the input size and preprocessing
it was trained with, the command that made it and its held-out metric. Both are written to
a temporary file beside the target and renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from edgekit import __version__
from edgekit.data import Preprocess
from edgekit.errors import WeightsError

CARD_VERSION = 1


@dataclass
class WeightsCard:
    """What a weights file is and how it was made: the JSON written beside every checkpoint.

    The input size and preprocessing are part of the weights' contract: evaluation and export
    must feed the network the way it was trained.

    Args:
        model: registered model name.
        task: ``classify``, ``detect`` or ``segment``.
        num_classes: classes the head was built with.
        class_names: names in index order (from the training dataset).
        imgsz: (height, width) trained at.
        preprocess: :meth:`edgekit.data.Preprocess.to_dict` of the training preprocessing.
        train: the :class:`TrainConfig` fields (paths as strings).
        command: the command line that made the file.
        epochs_done: epochs finished when the file was written.
        wall_s: training wall time so far.
        losses: mean loss terms per finished epoch.
        metric: held-out evaluation (``val``), if any.
    """

    model: str
    task: str
    num_classes: int
    class_names: list[str]
    imgsz: tuple[int, int]
    preprocess: dict[str, Any]
    train: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    epochs_done: int = 0
    wall_s: float = 0.0
    losses: list[dict[str, float]] = field(default_factory=list)
    metric: dict[str, Any] | None = None
    edgekit_version: str = __version__
    card_version: int = CARD_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        out = asdict(self)
        out["imgsz"] = list(self.imgsz)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WeightsCard:
        """Inverse of :meth:`to_dict`; unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise WeightsError(f"unknown weights-card keys {unknown}; known: {sorted(known)}")
        card = cls(**data)
        card.imgsz = tuple(int(v) for v in card.imgsz)  # type: ignore[assignment]
        return card

    def preprocessing(self) -> Preprocess:
        """The :class:`Preprocess` the weights were trained with."""
        return Preprocess.from_dict(self.preprocess)


def card_path(weights: str | Path) -> Path:
    """Where the card of a weights file lives: ``W.safetensors`` -> ``W.json``."""
    return Path(weights).with_suffix(".json")


def read_card(weights: str | Path) -> WeightsCard | None:
    """The card beside ``weights``, or None when there is none."""
    path = card_path(weights)
    if not path.is_file():
        return None
    try:
        return WeightsCard.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise WeightsError(f"weights card '{path}' is not valid: {exc}") from exc


def write_card(card: WeightsCard, weights: str | Path) -> Path:
    """Write ``card`` beside ``weights`` atomically."""
    path = card_path(weights)
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(card.to_dict(), indent=1) + "\n"))
    return path




def save_weights(state: dict[str, Tensor], path: str | Path, *, metadata: dict[str, str] | None = None) -> Path:
    """Write ``state`` as fp16 safetensors (integer buffers kept), via a temporary file and a rename.

    Raises:
        WeightsError: a weight overflows fp16 (the file would hold inf).
    """
    from safetensors.torch import save_file

    half = {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous().cpu()
            for k, v in state.items()}
    bad = [k for k, v in half.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise WeightsError(f"weights {bad[:5]} do not fit in fp16 (|x| > 65504); they cannot ship as fp16")
    atomic_write(Path(path), lambda tmp: save_file(half, str(tmp), metadata={"format": "pt", **(metadata or {})}))
    return Path(path)


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
