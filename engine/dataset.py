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
    return images.sniff_kind(path) not in (None, "text", "zip", "svg")


def _outside(root: Path, path: Path) -> bool:
    return path.is_symlink() and not path.resolve().is_relative_to(root.resolve())


def _class_files(root: Path, class_dir: Path, skipped: list[Skipped]) -> list[Path]:
    """Files under a class folder (nested folders included); links leading outside the image_dir are skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=False):
        for d in sorted(d for d in dirnames if not _hidden(d) and (Path(dirpath) / d).is_symlink()):
            # os.walk does not follow folder links; say so rather than leave the user wondering.
            skipped.append(Skipped(str(Path(dirpath) / d), "a link to a folder (not followed)"))
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        for fname in sorted(filenames):
            path = Path(dirpath) / fname
            if _hidden(fname):
                continue
            if _outside(root, path):
                skipped.append(Skipped(str(path), "a link to a file outside the image folder (not followed)"))
                continue
            found.append(path)
    return found


def _class_dirs(root: Path, image_dir: str | Path, skipped: list[Skipped]) -> list[Path]:
    entries = sorted(p for p in root.iterdir() if not _hidden(p.name))
    dirs = [p for p in entries if p.is_dir()]
    loose = [p for p in entries if p.is_file()]
    if not dirs:
        hint = " (it holds loose files)" if loose else ""
        raise DatasetError(f"Image folder '{image_dir}' has no class subfolders{hint}; put each class in its own "
                           f"subfolder: {root}/<class>/<image>")
    skipped += [Skipped(str(p), "not in a class subfolder (put it in <image folder>/<class>/)") for p in loose]
    for d in [d for d in dirs if _outside(root, d)]:
        skipped.append(Skipped(str(d), "a link to a folder outside the image folder (not followed)"))
        dirs.remove(d)
    return dirs


def scan_image_dir(image_dir: str | Path, check_images: bool = True, max_pixels: int = images.MAX_PIXELS,
                   progress: ProgressCallback | None = None) -> Dataset:
    """Labels and images of an image_dir; unreadable or non-image files go to `skipped` with the reason."""
    root = Path(image_dir).expanduser()
    if not root.is_dir():
        raise DatasetError(f"Image folder '{image_dir}' does not exist (or is not a folder)")
    skipped: list[Skipped] = []
    class_dirs = _class_dirs(root, image_dir, skipped)
    per_class = {d.name: _class_files(root, d, skipped) for d in class_dirs}
    items, labels, done, total = [], [], 0, sum(len(v) for v in per_class.values())
    emit(progress, "scan", done=0, total=total)
    for label, files in per_class.items():
        candidates = 0
        for path in files:
            done += 1
            candidates += _check_file(path, label, check_images, max_pixels, skipped, items)
            if done % 50 == 0 or done == total:
                emit(progress, "scan", done=done, total=total)
        if candidates:
            labels.append(label)
        else:
            log.warning("Class folder '%s' holds no image files; ignored", root / label)
    dataset = Dataset(str(root), labels, items, skipped)
    validate(dataset, image_dir)
    _warn_duplicates(dataset)
    return dataset


def _check_file(path: Path, label: str, check_images: bool, max_pixels: int, skipped: list[Skipped],
                items: list[ImageItem]) -> bool:
    """Append the file to items or skipped; True when it looked like an image (usable or not)."""
    try:
        if not _is_candidate(path):
            skipped.append(Skipped(str(path), "not an image file"))
            return False
        if check_images:
            images.load_image(path, max_pixels=max_pixels)
        items.append(ImageItem(str(path), label, images.file_sha256(path)))
    except images.ImageError as exc:
        skipped.append(Skipped(str(path), str(exc)))
    except OSError as exc:
        skipped.append(Skipped(str(path), f"cannot be read ({exc.strerror or exc})"))
    return True


def _warn_duplicates(dataset: Dataset) -> None:
    labels = {it.path: it.label for it in dataset.items}
    for _sha, paths in dataset.duplicates():
        classes = sorted({labels[p] for p in paths})
        if len(classes) > 1:
            log.warning("The same image is in classes %s: %s", ", ".join(classes), ", ".join(paths))


def validate(dataset: Dataset, image_dir: str | Path | None = None) -> None:
    """DatasetError unless there are >= 2 classes with >= MIN_PER_CLASS usable images each."""
    where = image_dir or dataset.root
    if len(dataset.labels) < 2:
        found = f"only 1 class ('{dataset.labels[0]}')" if dataset.labels else "no class with image files"
        raise DatasetError(f"Image folder '{where}': found {found}; need at least 2 classes, one subfolder each")
    for label, count in dataset.class_counts().items():
        if count < MIN_PER_CLASS:
            raise DatasetError(f"class '{label}' has {count} usable image{'s' if count != 1 else ''}"
                               f"{_skip_note(dataset, label)}; need at least {MIN_PER_CLASS}. "
                               f"Add images to {Path(dataset.root) / label} or remove that folder.")


def _skip_note(dataset: Dataset, label: str) -> str:
    folder = Path(dataset.root) / label
    reasons = [s.reason for s in dataset.skipped if Path(s.path).is_relative_to(folder)]
    return f" ({len(reasons)} file(s) skipped, e.g. {reasons[0]})" if reasons else ""


def split_dataset(ds: Dataset, validation_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split. Every class keeps >= 1 training and (when split > 0) >= 1 validation image.

    Within a class, files are grouped by content hash and the groups shuffled in hash order, so the split does not
    depend on listing order, and identical copies land on the same side (no validation leak) where possible.
    """
    if not 0 <= validation_split < 1:
        raise DatasetError(f"validation_split must be in [0, 1), got {validation_split}")
    rng = np.random.default_rng(seed)
    y = ds.y
    train: list[int] = []
    val: list[int] = []
    for c in range(len(ds.labels)):
        class_train, class_val = _split_class(ds, np.flatnonzero(y == c), validation_split, rng)
        train += class_train
        val += class_val
    return np.array(sorted(train), dtype=np.int64), np.array(sorted(val), dtype=np.int64)


def _split_class(ds: Dataset, idx: np.ndarray, validation_split: float,
                 rng: np.random.Generator) -> tuple[list[int], list[int]]:
    groups: dict[str, list[int]] = {}
    for i in sorted(idx.tolist(), key=lambda i: ds.items[i].path):
        groups.setdefault(ds.items[i].sha256 or ds.items[i].path, []).append(i)
    keys = sorted(groups)
    n_val = 0 if validation_split == 0 else min(len(idx) - 1, max(1, round(len(idx) * validation_split)))
    train: list[int] = []
    val: list[int] = []
    for k in rng.permutation(len(keys)):
        (val if len(val) < n_val else train).extend(groups[keys[k]])
    if not train and val:  # one group of identical files filled the validation side: give one back
        train.append(val.pop())
    return train, val
