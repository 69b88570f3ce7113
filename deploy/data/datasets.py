"""Where evaluation and calibration images come from, streamed in batches (memory bounded).

``open_data(spec)`` recognises:

* an image folder in the ImageFolder layout: one sub-folder per class (sorted names are the
  class indices, unless a classes file says otherwise), JPEG/PNG/WebP files in them;
* a flat folder of images (no labels: predictions and agreement only);
* an ``.npz`` file with ``x`` (N, C, H, W) float32, already preprocessed, and optional ``y``;
* ``digits``: the bundled digits' test split (``digits:train`` the training split).

Files are listed, never all decoded: ``batches`` decodes one batch at a time with Pillow and
the recipe (``deploy.data.preprocess``). Symbolic links that lead outside the folder are
not followed. A file that cannot be decoded is one ``BadInputError`` naming it (exit 2), or is
skipped and counted with ``skip_bad``. ``subset`` keeps the first N items (``limit``) or a seeded
random N (``sample``). Each item's identity for overlap checks is the sha256 of its bytes
(``content_hashes``).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from deploy.core.errors import BadInputError
from deploy.data.preprocess import Recipe
from deploy.models.digits import load_digits

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclass(frozen=True)
class Item:
    """One image: its file (or its row of an array source) and its label (None: unlabelled)."""

    name: str
    label: int | None
    path: Path | None = None
    row: int | None = None


@dataclass
class Batch:
    """Model inputs of a few items, and which items they are (skipped files left out)."""

    x: np.ndarray
    items: list[Item]

    @property
    def labels(self) -> np.ndarray | None:
        if any(i.label is None for i in self.items):
            return None
        return np.asarray([i.label for i in self.items], dtype=np.int64)


@dataclass
class DataSource:
    """A listed data set: its items, class names and, for arrays, the already preprocessed inputs."""

    description: str
    items: list[Item]
    classes: list[str] | None = None  # None: unlabelled or numeric labels
    arrays: np.ndarray | None = None  # (N, C, H, W) for .npz and digits: no decoding, no recipe
    skipped: list[str] = field(default_factory=list)  # files skipped as unreadable (with skip_bad)

    @property
    def labelled(self) -> bool:
        return bool(self.items) and all(i.label is not None for i in self.items)

    def subset(self, limit: int | None = None, sample: int | None = None, seed: int = 0) -> "DataSource":
        """The first ``limit`` items, or ``sample`` items drawn at random (seeded), order kept."""
        for name, n in (("limit", limit), ("sample", sample)):
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
                raise BadInputError(f"`{name}` must be a positive integer, got {n!r}")
        items = self.items
        if sample is not None and sample < len(items):
            keep = np.sort(np.random.default_rng(seed).choice(len(items), size=sample, replace=False))
            items = [items[i] for i in keep]
        if limit is not None:
            items = items[:limit]
        return DataSource(self.description, items, self.classes, self.arrays)

    def content_hashes(self) -> dict[str, str]:
        """sha256 of each item's bytes (its file, or its array row) -> item name."""
        out: dict[str, str] = {}
        for item in self.items:
            if item.path is not None:
                digest = hashlib.sha256(item.path.read_bytes()).hexdigest()
            else:
                assert self.arrays is not None and item.row is not None
                digest = hashlib.sha256(np.ascontiguousarray(self.arrays[item.row]).tobytes()).hexdigest()
            out.setdefault(digest, item.name)
        return out


def _images_in(folder: Path, root: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted; links that resolve outside ``root`` are left out."""
    found = []
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        real = p.resolve()
        if not real.is_relative_to(root.resolve()) or not real.is_file():
            continue
        found.append(p)
    return found


def read_classes(path: Path) -> list[str]:
    """A classes file: one class name per line, in the model's output order."""
    try:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path}: cannot read the classes file ({exc}): one class name per line") from None
    if len(set(names)) != len(names) or not names:
        raise BadInputError(f"{path}: the classes file must list each class once, one per line")
    return names


def _image_folder(root: Path, classes: Sequence[str] | None) -> DataSource:
    dirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    names = list(classes) if classes is not None else dirs
    unknown = sorted(set(dirs) - set(names))
    if unknown:
        raise BadInputError(f"{root} has class folders {unknown[:5]} that the classes file does not list: add them "
                            "or remove the folders")
    items: list[Item] = []
    for index, name in enumerate(names):
        if name not in dirs:
            continue  # a class of the model with no folder here: evaluated on the others
        images = _images_in(root / name, root)
        if not images:
            raise BadInputError(f"{root / name} holds no images ({', '.join(IMAGE_SUFFIXES)}): remove the empty "
                                "class folder or add its images")
        items += [Item(f"{name}/{p.name}", index, p) for p in images]
    return DataSource(f"image folder {root} ({len(dirs)} classes, {len(items)} images)", items, names)


def _npz(path: Path) -> DataSource:
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data:
                raise BadInputError(f"{path} has no array 'x' (N, C, H, W): save it with np.savez(path, x=…, y=…)")
            x = np.asarray(data["x"], dtype=np.float32)
            y = np.asarray(data["y"]) if "y" in data else None
    except (OSError, ValueError) as exc:
        raise BadInputError(f"{path} is not a readable .npz ({exc}): save it with np.savez") from None
    if x.ndim != 4 or (y is not None and (y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer))):
        raise BadInputError(f"{path}: x must be (N, C, H, W) and y (N,) integers, got x {x.shape}"
                            + (f", y {y.shape} {y.dtype}" if y is not None else ""))
    labels = [None] * len(x) if y is None else [int(v) for v in y]
    items = [Item(f"{path.name}[{i}]", label, row=i) for i, label in enumerate(labels)]
    return DataSource(f"arrays {path} ({len(x)} inputs{'' if y is not None else ', unlabelled'})", items, None, x)


def _digits(split: str) -> DataSource:
    train, test = load_digits()
    data = test if split == "test" else train
    x = data.x.numpy()
    items = [Item(f"digits-{split}[{i}]", int(v), row=i) for i, v in enumerate(data.y.tolist())]
    return DataSource(f"the bundled digits' {split} split ({len(items)} images)", items, [str(i) for i in range(10)], x)


def open_data(spec: str | os.PathLike[str], classes: Path | None = None) -> DataSource:
    """The data set ``spec`` names (module docstring); BadInputError saying what it expected otherwise."""
    text = str(spec)
    if text in ("digits", "digits:test", "digits:train"):
        return _digits("train" if text.endswith("train") else "test")
    path = Path(text)
    if not path.exists():
        raise BadInputError(f"{path}: no such data: give an image folder, an .npz file or digits")
    names = read_classes(classes) if classes is not None else None
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise BadInputError(f"{path}: data files must be .npz (x, optional y); give a folder for images")
        return _npz(path)
    if any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir()):
        return _image_folder(path, names)
    images = _images_in(path, path)
    if not images:
        raise BadInputError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)}) and no class folders")
    return DataSource(f"flat folder {path} ({len(images)} images, unlabelled)", [Item(p.name, None, p) for p in images])


def decode(path: Path) -> Image.Image:
    """The decoded image at ``path``; BadInputError naming it when it is not a readable image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return image.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as exc:
        raise BadInputError(f"{path} is not a readable image ({exc}): remove or replace it, or pass `skip_bad`") from None


def batches(source: DataSource, recipe: Recipe | None, batch_size: int, *, skip_bad: bool = False) -> Iterator[Batch]:
    """The source's items as model inputs, ``batch_size`` at a time (one batch decoded at once)."""
    if source.arrays is None and recipe is None:
        raise BadInputError("images need a preprocess recipe: the model records none; give `preprocess` "
                            "(e.g. imagenet, or resize=256;crop=224;mean=…;std=…)")
    for start in range(0, len(source.items), batch_size):
        chunk, inputs = [], []
        for item in source.items[start:start + batch_size]:
            if source.arrays is not None and item.row is not None:
                inputs.append(source.arrays[item.row])
                chunk.append(item)
                continue
            assert item.path is not None and recipe is not None
            try:
                inputs.append(recipe.apply(decode(item.path)))
            except BadInputError:
                if not skip_bad:
                    raise
                source.skipped.append(item.name)
                continue
            chunk.append(item)
        if chunk:
            yield Batch(_stack(inputs, chunk), chunk)


def _stack(inputs: list[np.ndarray], items: list[Item]) -> np.ndarray:
    shapes = {x.shape for x in inputs}
    if len(shapes) > 1:
        raise BadInputError(f"images of different sizes after preprocessing ({sorted(shapes)[:3]}, e.g. "
                            f"{items[0].name}): add a crop or an exact resize to the preprocess recipe")
    return np.stack(inputs).astype(np.float32, copy=False)
