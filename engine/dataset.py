"""An `image_dir` (one subfolder per class, as make_image_classifier takes it): scanning and splitting.

Labels are the sorted folder names. Files that are not images are reported with the reason and left alone; nothing
here ever deletes or moves a user's file.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine import images
from engine.events import ProgressCallback, emit

log = logging.getLogger(__name__)

MIN_PER_CLASS = 2


class DatasetError(ValueError):
    """The folder cannot be trained on; the message says what to change."""


@dataclass
class ImageItem:
    path: str
    label: str
    sha256: str | None = None


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class Dataset:
    root: str
    labels: list[str]
    items: list[ImageItem]
    skipped: list[Skipped] = field(default_factory=list)

    def class_counts(self) -> dict[str, int]:
        counts = {label: 0 for label in self.labels}
        for it in self.items:
            counts[it.label] += 1
        return counts

    def label_index(self, label: str) -> int:
        return self.labels.index(label)

    @property
    def y(self) -> np.ndarray:
        index = {label: i for i, label in enumerate(self.labels)}
        return np.array([index[it.label] for it in self.items], dtype=np.int64)

    def dataset_hash(self) -> str:
        """Content hash of (label, file sha256) pairs: stable across renames, moves and listing order."""
        pairs = sorted(f"{it.label}\t{it.sha256}" for it in self.items)
        return hashlib.sha256("\n".join(pairs).encode()).hexdigest()

    def duplicates(self) -> list[tuple[str, list[str]]]:
        groups: dict[str, list[str]] = {}
        for it in self.items:
            groups.setdefault(it.sha256 or it.path, []).append(it.path)
        return [(sha, paths) for sha, paths in groups.items() if len(paths) > 1]


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _is_candidate(path: Path) -> bool:
    if path.suffix.lower() in images.SUPPORTED:
        return True
    kind = images.sniff_kind(path)
    return kind not in (None, "text", "zip", "svg")


def _class_files(root: Path, class_dir: Path, skipped: list[Skipped]) -> list[Path]:
    """Files under a class folder (nested folders included); links leading outside the image_dir are skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        for fname in sorted(filenames):
            if _hidden(fname):
                continue
            path = Path(dirpath) / fname
            if path.is_symlink() and not path.resolve().is_relative_to(root.resolve()):
                skipped.append(Skipped(str(path), "a link to a file outside the image folder (not followed)"))
                continue
            found.append(path)
    return found


def scan_image_dir(image_dir: str | Path, check_images: bool = True, max_pixels: int = images.MAX_PIXELS,
                   progress: ProgressCallback | None = None) -> Dataset:
    """Labels and images of an image_dir; unreadable or non-image files go to `skipped` with the reason."""
    root = Path(image_dir).expanduser()
    if not root.is_dir():
        raise DatasetError(f"Image folder '{image_dir}' does not exist (or is not a folder)")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not _hidden(p.name))
    if not class_dirs:
        loose = [p.name for p in root.iterdir() if p.is_file() and not _hidden(p.name)]
        hint = " (it holds loose images)" if loose else ""
        raise DatasetError(f"'{image_dir}' has no class subfolders{hint}: put each class in its own subfolder, "
                           f"{root}/<class>/<image>")
    skipped: list[Skipped] = []
    per_class = {d.name: _class_files(root, d, skipped) for d in class_dirs}
    total, done, items = sum(len(v) for v in per_class.values()), 0, []
    for label, files in per_class.items():
        for path in files:
            done += 1
            item = _check_file(path, label, check_images, max_pixels, skipped)
            if item:
                items.append(item)
            if done % 50 == 0 or done == total:
                emit(progress, "scan", done=done, total=total)
    labels = [d.name for d in class_dirs if any(it.label == d.name for it in items)]
    for d in class_dirs:
        if d.name not in labels:
            log.warning("Class folder '%s' has no usable images; ignored", d.name)
    dataset = Dataset(str(root), labels, items, skipped)
    validate(dataset, image_dir)
    return dataset


def _check_file(path: Path, label: str, check_images: bool, max_pixels: int,
                skipped: list[Skipped]) -> ImageItem | None:
    try:
        if not _is_candidate(path):
            skipped.append(Skipped(str(path), "not an image file"))
            return None
        if check_images:
            images.load_image(path, max_pixels=max_pixels)
        return ImageItem(str(path), label, images.file_sha256(path))
    except images.ImageError as exc:
        skipped.append(Skipped(str(path), str(exc)))
    except OSError as exc:
        skipped.append(Skipped(str(path), f"cannot be read ({exc.strerror or exc})"))
    return None


def validate(dataset: Dataset, image_dir: str | Path | None = None) -> None:
    where = image_dir or dataset.root
    if len(dataset.labels) < 2:
        found = f"only 1 class ('{dataset.labels[0]}')" if dataset.labels else "no class with usable images"
        raise DatasetError(f"Found {found} in '{where}'; need at least 2 classes, one subfolder each")
    for label, count in dataset.class_counts().items():
        if count < MIN_PER_CLASS:
            raise DatasetError(f"class '{label}' has {count} usable image{'s' if count != 1 else ''}; need at least "
                               f"{MIN_PER_CLASS}. Add images to {Path(dataset.root) / label} or remove that folder.")


def split_dataset(ds: Dataset, validation_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split. Every class keeps >= 1 training and (when split > 0) >= 1 validation image.

    Items are ordered by content hash inside each class first, so the split does not depend on listing order.
    """
    if not 0 <= validation_split < 1:
        raise DatasetError(f"validation_split must be in [0, 1), got {validation_split}")
    rng = np.random.default_rng(seed)
    y = ds.y
    train, val = [], []
    for c in range(len(ds.labels)):
        idx = sorted(np.flatnonzero(y == c), key=lambda i: (ds.items[i].sha256 or "", ds.items[i].path))
        idx = list(rng.permutation(idx))
        n_val = 0 if validation_split == 0 else min(len(idx) - 1, max(1, round(len(idx) * validation_split)))
        val += idx[:n_val]
        train += idx[n_val:]
    return np.array(sorted(train), dtype=np.int64), np.array(sorted(val), dtype=np.int64)
