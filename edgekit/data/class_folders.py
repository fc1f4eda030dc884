"""ImageNet-style classification folders: ``root/<class name>/**/<image>``.

Class indices follow the sorted folder names (torchvision's ``ImageFolder`` order), so a
``val`` folder and a ``train`` folder with the same class folders agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edgekit.data.base import ClassificationSample, ImageDataset
from edgekit.data.errors import DatasetError
from edgekit.data.image_io import list_images, load_image


class ClassFolders(ImageDataset[tuple[Path, int], ClassificationSample]):
    """Images in one sub-folder per class.

    Args:
        root: folder holding one sub-folder per class (searched recursively for images).
        classes: class names in index order; default: the sorted sub-folder names. Pass the
            training set's list when this split lacks some classes.
        limit: iterate over at most this many images.
    """

    task = "classify"

    def __init__(self, root: str | Path, *, classes: Sequence[str] | None = None,
                 limit: int | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"class folder root '{root}' is not a directory")
        folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        names = list(classes) if classes is not None else folders
        missing = sorted(set(folders) - set(names))
        if missing:
            raise DatasetError(f"'{root}' has class folders {missing} that are not in classes={names}")
        records = [(path, index) for index, name in enumerate(names) if (root / name).is_dir()
                   for path in list_images(root / name)]
        if not records:
            raise DatasetError(
                f"no images under the class folders of '{root}' (looked for "
                f".jpg/.jpeg/.png/.bmp/.webp in {folders or 'no sub-folders'})"
            )
        super().__init__(records, limit=limit)
        self.root = root
        self.class_names = names

    def _load(self, record: tuple[Path, int]) -> ClassificationSample:
        path, label = record
        return ClassificationSample(image=load_image(path), label=label, path=path)
