"""Calibration samples and an evaluation split disjoint from them.

``split_data(calib, eval, n)``: the calibration samples are the first ``n`` images of a seeded
permutation of the calibration folder (class folders list images class by class, so the first
``n`` in folder order would miss classes). When the evaluation folder is the calibration folder,
the rest of the permutation is evaluated; any other folder must share no image with it (compared
by content: sizes first, SHA-256 where sizes agree), and neither folder may hold the other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.data import ImageDataset, open_dataset
from edgekit.data.image_io import list_images
from edgekit.errors import CalibrationDataError, EdgekitError

SPLIT_SEED = 0


class Subset:
    """The samples of ``dataset`` at ``indices``, in that order (one part of a split folder).

    Other attributes (``task``, ``class_names``, ``ignore_index``) are the dataset's own.
    """

    def __init__(self, dataset: ImageDataset, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = tuple(int(i) for i in indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[Any]:
        return (self.dataset[i] for i in self.indices)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.dataset, name)


@dataclass(frozen=True)
class EvalSpec:
    """Where the evaluation images come from: a folder, or what calibration left of its folder.

    Args:
        data: the evaluation folder (any layout ``open_dataset`` reads).
        same_as_calibration: ``data`` is the calibration folder: the evaluation split is its
            seeded permutation after the first ``calib_samples`` images.
        calib_samples: calibration images taken from the front of the permutation.
        seed: the permutation's seed.
    """

    data: str
    same_as_calibration: bool = False
    calib_samples: int = 0
    seed: int = SPLIT_SEED

    def open(self) -> ImageDataset | Subset:
        """The evaluation split as a sized iterable of samples."""
        dataset = open_dataset(self.data)
        if not self.same_as_calibration:
            return dataset
        order = np.random.default_rng(self.seed).permutation(len(dataset))
        return Subset(dataset, order[self.calib_samples:])

    @property
    def description(self) -> str:
        """The split in words, for the report."""
        if self.same_as_calibration:
            return (f"--eval-data is the calibration folder, split deterministically (permutation seed {self.seed}): "
                    f"the first {self.calib_samples} images calibrated, the rest are evaluated")
        return "a separate folder; no image in it equals a calibration image (checked by file content)"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {**asdict(self), "description": self.description}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(data=str(data["data"]), same_as_calibration=bool(data.get("same_as_calibration", False)),
                   calib_samples=int(data.get("calib_samples", 0)), seed=int(data.get("seed", SPLIT_SEED)))


@dataclass(frozen=True)
class DataSplit:
    """Calibration samples and an evaluation split disjoint from them.

    Args:
        calibration: the calibration samples (at most ``--calib-samples``).
        calib_root: the calibration folder.
        evaluation: where the evaluation images come from; None without ``--eval-data``.
        requested: ``--calib-samples``.
    """

    calibration: ImageDataset | Subset
    calib_root: Path
    evaluation: EvalSpec | None = None
    requested: int = 0


def split_data(calib_data: str | Path, eval_data: str | Path | None, samples: int, *,
               seed: int = SPLIT_SEED) -> DataSplit:
    """Open the calibration folder and an evaluation split disjoint from the calibration samples.

    The calibration samples are the first ``samples`` images of a seeded permutation of
    ``calib_data``. When ``eval_data`` is the same folder, the rest of the permutation is the
    evaluation split; any other folder must not share an image (by content) with ``calib_data``.

    Raises:
        CalibrationDataError: a missing or empty folder, nothing left to evaluate, or overlap.
    """
    if samples < 1:
        raise CalibrationDataError(f"--calib-samples must be at least 1, got {samples}.")
    calib_root = Path(calib_data).resolve()
    dataset = _open(calib_root, "--calib-data")
    order = np.random.default_rng(seed).permutation(len(dataset))
    calibration = Subset(dataset, order[:samples])
    if eval_data is None:
        return DataSplit(calibration, calib_root, requested=samples)
    eval_root = Path(eval_data).resolve()
    if eval_root.resolve() == calib_root.resolve():
        if len(dataset) <= samples:
            raise CalibrationDataError(
                f"--eval-data is the calibration folder '{calib_root}', which holds {len(dataset)} images: with "
                f"--calib-samples {samples} none is left to evaluate on. Lower --calib-samples or pass a separate "
                "--eval-data folder."
            )
        return DataSplit(calibration, calib_root, EvalSpec(str(eval_root), True, samples, seed), samples)
    _open(eval_root, "--eval-data")
    check_disjoint(calib_root, eval_root)
    return DataSplit(calibration, calib_root, EvalSpec(str(eval_root)), samples)


def recorded_split(eval_data: str | Path, calibration: Mapping[str, Any]) -> EvalSpec:
    """The evaluation split of ``eval_data`` for a bundle calibrated as ``calibration`` (its recipe.json record).

    The calibration folder itself is split as at export time; any other folder must not hold
    a calibration image (the record lists their sizes and SHA-256).

    Raises:
        CalibrationDataError: the folder does not exist, is nested with the calibration
            folder, or holds calibration images.
    """
    eval_root = Path(eval_data).resolve()
    _open(eval_root, "--eval-data")
    calib_root = Path(str(calibration.get("data", "")))
    if calib_root.is_absolute() and eval_root == calib_root.resolve():
        return EvalSpec(str(eval_root), True, int(calibration.get("requested_samples", calibration.get("samples", 0))),
                        int(calibration.get("seed", SPLIT_SEED)))
    if calib_root.is_absolute() and calib_root.exists():
        a = calib_root.resolve()
        if a.is_relative_to(eval_root) or eval_root.is_relative_to(a):
            raise CalibrationDataError(f"--eval-data '{eval_data}' and the calibration folder '{calib_root}' are "
                                       "nested; evaluate on images disjoint from calibration.")
    check_against_recorded(calibration.get("files", []), eval_root)
    return EvalSpec(str(eval_root))


def _open(path: Path, option: str) -> ImageDataset:
    try:
        return open_dataset(path)
    except EdgekitError as exc:
        raise CalibrationDataError(f"{option} '{path}': {exc}") from exc


@dataclass(frozen=True)
class FileEntry:
    """One calibration image: path relative to the calibration folder, size in bytes, SHA-256."""

    file: str
    size: int
    sha256: str

    @classmethod
    def of(cls, path: Path, root: Path) -> FileEntry:
        """Describe ``path`` (hashing it)."""
        return cls(_relative(path, root), path.stat().st_size, _sha256(path))


def check_disjoint(calib_root: Path, eval_root: Path) -> None:
    """Refuse evaluation data that holds calibration images (nested folders, or equal files).

    Files are compared by size first and hashed only where sizes agree, so a large folder
    costs little more than a directory listing.

    Raises:
        CalibrationDataError: the folders are nested or share an image.
    """
    a, b = calib_root.resolve(), eval_root.resolve()
    if a.is_relative_to(b) or b.is_relative_to(a):
        raise CalibrationDataError(
            f"--calib-data '{calib_root}' and --eval-data '{eval_root}' are nested folders: the report would score "
            "images that calibrated the model. Pass disjoint folders, or the same folder twice to split it."
        )
    shared = shared_images(_images(a), _images(b))
    if shared:
        raise CalibrationDataError(
            f"--eval-data '{eval_root}' holds {len(shared)} image(s) identical to calibration images in '{calib_root}' "
            f"(e.g. {shared[0][1].name} = {shared[0][0].name}); the accuracy-drop report needs an evaluation split "
            "disjoint from calibration. Remove them, or pass the same folder twice to split it."
        )


def check_against_recorded(entries: Sequence[Mapping[str, Any]], eval_root: Path) -> None:
    """Refuse evaluation data holding one of the calibration images recorded in ``recipe.json``."""
    by_size: dict[int, set[str]] = {}
    for entry in entries:
        by_size.setdefault(int(entry["size"]), set()).add(str(entry["sha256"]))
    shared = [p for p in _images(eval_root) if _sha256(p) in by_size.get(p.stat().st_size, ())]
    if shared:
        raise CalibrationDataError(
            f"--eval-data '{eval_root}' holds {len(shared)} of the images this bundle was calibrated on (e.g. "
            f"{shared[0].name}); evaluate on images disjoint from calibration."
        )


def shared_images(first: Sequence[Path], second: Sequence[Path]) -> list[tuple[Path, Path]]:
    """Pairs of files with equal content, one from each list (sizes compared first)."""
    by_size: dict[int, list[Path]] = {}
    for path in first:
        by_size.setdefault(path.stat().st_size, []).append(path)
    digests: dict[Path, str] = {}

    def digest(path: Path) -> str:
        if path not in digests:
            digests[path] = _sha256(path)
        return digests[path]

    return [(a, b) for b in second for a in by_size.get(b.stat().st_size, ()) if digest(a) == digest(b)]


def _images(root: Path) -> list[Path]:
    return [root] if root.is_file() else list_images(root)


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return Path(path).name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
