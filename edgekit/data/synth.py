"""Deterministic synthetic shapes, written in the real dataset formats.

``synthesize("cls" | "det" | "seg", n, seed, out)`` writes a folder the ordinary loaders
read (:func:`edgekit.data.open_dataset`), so training, calibration and evaluation run on
data with exact ground truth without downloading anything:

- ``cls``: class folders ``<shape>/<index>.jpg``, one dominant shape (radius 28-42 % of the
  image) plus up to two small distractors of any class; classes cycle, so ``n = 60`` gives
  10 per class. Default 96x96 px: a 32x-stride backbone still ends on a 3x3 map.
- ``det``: ``images/<index>.jpg`` + ``annotations/instances_default.json`` (COCO; category
  id = class index + 1), 1-6 shapes of radius 5-20 % of the image, boxes tight around the
  visible pixels. Default 320x320 px (ThunderNet's input size).
- ``seg``: ``images/<index>.jpg`` + ``masks/<index>.png`` (palette PNG, 0 = background,
  class index + 1 for shapes) + ``classes.txt``. Default 256x256 px.

Six classes (:data:`SHAPES`). Image ``i`` depends only on ``(seed, i)``, so the same seed
gives byte-identical files (JPEG quality 90, PNG masks, JSON without timestamps). Output
is written to a temporary folder beside ``out`` and renamed into place.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from edgekit.data.errors import DatasetError
from edgekit.data.shapes import SHAPES, Scene, ShapeSpec, draw_scene

DEFAULT_IMGSZ = {"cls": 96, "det": 320, "seg": 256}
JPEG_QUALITY = 90
GENERATOR_VERSION = 1  # bump when a change alters the pixels a seed produces


def synthesize(task: str, n: int, seed: int, out: str | Path, *, imgsz: int | None = None,
               overwrite: bool = False) -> Path:
    """Write ``n`` synthetic samples for ``task`` (``cls``, ``det`` or ``seg``) into ``out``.

    Args:
        task: ``cls`` (class folders), ``det`` (COCO JSON) or ``seg`` (image/mask folders).
        n: number of images.
        seed: the same seed gives byte-identical files.
        out: destination folder; must not exist or be empty unless ``overwrite``.
        imgsz: square image side in pixels; default :data:`DEFAULT_IMGSZ` for the task.
        overwrite: replace an existing non-empty ``out``.

    Returns:
        ``out``.
    """
    if task not in _WRITERS:
        raise DatasetError(f"unknown synthetic task '{task}'; choose one of {sorted(_WRITERS)}")
    if n < 1:
        raise DatasetError(f"n={n}: ask for at least one image")
    size = imgsz or DEFAULT_IMGSZ[task]
    if size < 32:
        raise DatasetError(f"imgsz={size} is too small to draw shapes on; use 32 or more")
    out = Path(out)
    with _atomic_folder(out, overwrite) as tmp:
        _WRITERS[task](tmp, n, seed, size)
        meta = {"generator": "edgekit.data.synth", "version": GENERATOR_VERSION, "task": task,
                "n": n, "seed": seed, "imgsz": size, "classes": list(SHAPES)}
        (tmp / "synth.json").write_text(json.dumps(meta, indent=1) + "\n")
    return out


def synth_main(task: str, n: int, seed: int, out: Path, imgsz: int | None = None, *,
               overwrite: bool = False) -> Path:
    """The ``edgekit synth`` command's body: :func:`synthesize` with CLI argument order."""
    return synthesize(task, n, seed, out, imgsz=imgsz, overwrite=overwrite)


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator for image ``index`` of a set: independent of how many images are made."""
    return np.random.default_rng([seed, index])


def classification_scene(rng: np.random.Generator, label: int, size: int) -> Scene:
    """One dominant shape of class ``label`` near the centre, plus 0-2 small distractors.

    The dominant shape is painted first so it is always kept; distractors may overlap it,
    and draw_scene keeps at least half of it visible.
    """
    main = _random_spec(rng, size, (0.28, 0.42), label=label, centre_jitter=0.12)
    extra = [_random_spec(rng, size, (0.07, 0.12)) for _ in range(int(rng.integers(3)))]
    return draw_scene(rng, (size, size), [main, *extra])


def detection_scene(rng: np.random.Generator, size: int) -> Scene:
    """1-6 shapes of any class, radius 5-20 % of the image, partly overlapping."""
    count = int(rng.integers(1, 7))
    return draw_scene(rng, (size, size), [_random_spec(rng, size, (0.05, 0.2)) for _ in range(count)])


def _random_spec(rng: np.random.Generator, size: int, radius: tuple[float, float], *,
                 label: int | None = None, centre_jitter: float | None = None) -> ShapeSpec:
    label = int(rng.integers(len(SHAPES))) if label is None else label
    r = float(rng.uniform(*radius)) * size
    if centre_jitter is None:
        cx, cy = rng.uniform(r, size - r, 2)
    else:
        cx, cy = size / 2 + rng.uniform(-centre_jitter, centre_jitter, 2) * size
    aspect = float(rng.uniform(0.45, 0.65)) if SHAPES[label] == "ellipse" else 1.0
    return ShapeSpec(label, float(cx), float(cy), r, float(rng.uniform(0, 2 * np.pi)), aspect)


def _save_jpeg(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image).save(path, "JPEG", quality=JPEG_QUALITY)


def _write_cls(out: Path, n: int, seed: int, size: int) -> None:
    for name in SHAPES:
        (out / name).mkdir()
    for i in range(n):
        label = i % len(SHAPES)
        scene = classification_scene(scene_rng(seed, i), label, size)
        _save_jpeg(scene.image, out / SHAPES[label] / f"{i:06d}.jpg")


def _write_det(out: Path, n: int, seed: int, size: int) -> None:
    (out / "images").mkdir()
    (out / "annotations").mkdir()
    images, annotations = [], []
    for i in range(n):
        scene = detection_scene(scene_rng(seed, i), size)
        name = f"{i:06d}.jpg"
        _save_jpeg(scene.image, out / "images" / name)
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        for spec, box, area in zip(scene.shapes, scene.boxes.tolist(), scene.areas.tolist()):
            x1, y1, x2, y2 = box
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": spec.label + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(area), "iscrowd": 0})
    coco = {"info": {"description": "edgekit synthetic shapes", "version": str(GENERATOR_VERSION)},
            "images": images, "annotations": annotations,
            "categories": [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(SHAPES)]}
    (out / "annotations" / "instances_default.json").write_text(json.dumps(coco, separators=(",", ":")) + "\n")


def _write_seg(out: Path, n: int, seed: int, size: int) -> None:
    (out / "images").mkdir()
    (out / "masks").mkdir()
    (out / "classes.txt").write_text("\n".join(("background", *SHAPES)) + "\n")
    for i in range(n):
        scene = detection_scene(scene_rng(seed, i), size)
        _save_jpeg(scene.image, out / "images" / f"{i:06d}.jpg")
        mask = Image.fromarray(scene.labels)
        mask.putpalette(_PALETTE)
        mask.save(out / "masks" / f"{i:06d}.png")


# Palette so masks are viewable: class colours for 0..6, white for the ignore label 255.
_PALETTE = [0, 0, 0, 230, 25, 75, 60, 180, 75, 255, 225, 25, 0, 130, 200, 245, 130, 48, 145, 30, 180]
_PALETTE += [0, 0, 0] * (255 - len(_PALETTE) // 3) + [255, 255, 255]

_WRITERS: dict[str, Callable[[Path, int, int, int], None]] = {
    "cls": _write_cls, "det": _write_det, "seg": _write_seg,
}


@contextmanager
def _atomic_folder(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out`` in one rename."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise DatasetError(f"'{out}' already exists and is not empty; choose another folder or overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


SAMPLE_SETS = (("cls-val", "cls", 60, 1001), ("det-val", "det", 60, 1002), ("seg-val", "seg", 60, 1003))
SAMPLE_IMAGE_SEED = 1004


def write_samples(root: str | Path) -> Path:
    """Regenerate the small sets shipped in ``edgekit/data/samples`` (and ``sample.jpg``)."""
    root = Path(root)
    for name, task, n, seed in SAMPLE_SETS:
        synthesize(task, n, seed, root / name, overwrite=True)
    _save_jpeg(detection_scene(scene_rng(SAMPLE_IMAGE_SEED, 0), DEFAULT_IMGSZ["det"]).image, root / "sample.jpg")
    return root


def main(argv: list[str] | None = None) -> None:
    """``python -m edgekit.data``: write a synthetic set, or rebuild the shipped samples."""
    parser = argparse.ArgumentParser(prog="python -m edgekit.data", description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=[*_WRITERS, "samples"],
                        help="what to write; 'samples' rebuilds the shipped sets")
    parser.add_argument("out", type=Path)
    parser.add_argument("-n", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--imgsz", type=int, default=None)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if args.task == "samples":
        write_samples(args.out)
    else:
        synthesize(args.task, args.n, args.seed, args.out, imgsz=args.imgsz, overwrite=args.overwrite)
