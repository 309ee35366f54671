"""An `image_dir` (one subfolder per class, as make_image_classifier takes it): scanning, splitting, snapshots.

Labels are the sorted folder names. Files that are not images are reported with the reason and left alone; nothing
here ever deletes or moves a user's file.

A run trains on a snapshot: the (SHA-256, label) pairs seen by the scan. People keep sorting while it trains, so
every later read of an image goes through `resolve_path()`, which finds the bytes by content when the file is no
longer where the scan saw it (a workspace project asks its index, which also knows the trash: engine.store
registers it with `register_content_finder` when it loads; a plain folder is rescanned for the content), and raises
`ImageGone` (an ImageError naming the file) when they are nowhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.config.runfiles import SNAPSHOT as SNAPSHOT_FILE
from engine.core.events import EventKind, Every, ProgressCallback, emit
from engine.core.fileio import atomic_write_json
from engine.core.files import is_hidden
from engine.data import images
from engine.data.file_hashes import FileHashes

log = logging.getLogger(__name__)

# The one readiness rule ("enough images to train"): at least MIN_CLASSES classes, each with MIN_PER_CLASS images
# (the split keeps one training and one validation image per class). `validate` applies it to a scanned folder,
# `training_problem` to a project's class counts before a job is started.
MIN_CLASSES = 2
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
        for d in sorted(d for d in dirnames if not is_hidden(d) and (Path(dirpath) / d).is_symlink()):
            # os.walk does not follow folder links; say so rather than leave the user wondering.
            skipped.append(Skipped(str(Path(dirpath) / d), "a link to a folder (not followed)"))
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        for fname in sorted(filenames):
            path = Path(dirpath) / fname
            if is_hidden(fname):
                continue
            if _outside(root, path):
                skipped.append(Skipped(str(path), "a link to a file outside the image folder (not followed)"))
                continue
            found.append(path)
    return found


def _class_dirs(root: Path, image_dir: str | Path, skipped: list[Skipped]) -> list[Path]:
    entries = sorted(p for p in root.iterdir() if not is_hidden(p.name))
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


# ------------------------------------------------------------------------------------------------------------------
# reading by content: what the scan saw, and where those bytes are now
# ------------------------------------------------------------------------------------------------------------------
class ImageGone(images.ImageError):
    """An image of the snapshot whose bytes are nowhere any more (moved out of the folder, or deleted)."""


@dataclass(frozen=True)
class _Seen:
    sha256: str
    size: int
    mtime_ns: int
    root: str


READ_ATTEMPTS = 4  # searches for an image's content before it counts as gone (see prepare_image)
_FINDERS: list[Callable[[Path, str], Path | None]] = []  # register_content_finder
_SEEN: dict[str, _Seen] = {}  # path as scanned -> what was there (filled by scan_image_dir)
_FOUND: dict[str, dict[str, str]] = {}  # root -> {sha256: path} learnt by rescans
_LOCK = threading.Lock()


def _forget(root: Path) -> None:
    """A new scan of `root` replaces what earlier scans saw there (a long-lived worker scans many times)."""
    with _LOCK:
        for key in [k for k, v in _SEEN.items() if v.root == str(root)]:
            del _SEEN[key]
        _FOUND.pop(str(root), None)


def _remember(path: Path, root: Path, sha: str, stat: os.stat_result) -> None:
    _SEEN[str(path)] = _Seen(sha, stat.st_size, stat.st_mtime_ns, str(root))


def resolve_path(path: str | Path | ImageItem) -> str:
    """Where the bytes the scan saw at `path` are now: `path` itself while its file is unchanged (same size and
    modification time; a move keeps both), else the file with that SHA-256. Paths no scan saw are returned as is.
    Raises ImageGone when the content is nowhere in the project or folder."""
    key = str(path.path if isinstance(path, ImageItem) else path)
    seen = _SEEN.get(key)
    if seen is None:
        return key
    try:
        st = os.stat(key)
        if st.st_size == seen.size and st.st_mtime_ns == seen.mtime_ns:
            return key
    except OSError:
        pass
    found = _find_content(seen)
    if found is None:
        raise ImageGone(f"{Path(key).name}: moved out of {seen.root} or deleted while training, and not found "
                        "again by its content")
    log.info("%s changed place while training; reading it from %s", key, found)
    return found


def prepare_image(path: str | Path | ImageItem, size: int, center_crop: bool = False,
                  on_decoded: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
    """images.prepare() on the bytes the scan saw at `path`, wherever they are now (see resolve_path)."""
    key = str(path.path if isinstance(path, ImageItem) else path)
    if key not in _SEEN:
        return images.prepare(key, size, center_crop, on_decoded=on_decoded)
    name = Path(key).name
    for attempt in range(READ_ATTEMPTS):
        try:
            data = Path(resolve_path(key)).read_bytes()
        except (FileNotFoundError, ImageGone):
            # Moved again between being found and being read, or moved into a folder the search had already
            # walked past (so it was seen nowhere): look again.
            time.sleep(0.01 * attempt)
            continue
        except OSError as exc:
            raise images.ImageError(f"{name}: cannot be read ({exc.strerror or exc})") from exc
        return images.prepare(data, size, center_crop, name=name, on_decoded=on_decoded)
    raise ImageGone(f"{name}: moved out of the folder or deleted while training, or kept moving, and not found "
                    "again by its content")


def load_images(paths: list[str], size: int, center_crop: bool) -> np.ndarray:
    """uint8 images at the backbone's size, read by content (images may move while a run trains)."""
    if not paths:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([prepare_image(p, size, center_crop) for p in paths])


def register_content_finder(finder: Callable[[Path, str], Path | None]) -> None:
    """Ask `finder(root, sha256)` first when an image is no longer where the scan saw it (engine.store registers a
    project's index this way: it also knows the trash, and this layer cannot import it)."""
    if finder not in _FINDERS:
        _FINDERS.append(finder)


def _find_content(seen: _Seen) -> str | None:
    root = Path(seen.root)
    for finder in _FINDERS:
        try:
            where = finder(root, seen.sha256)
        except Exception as exc:  # noqa: BLE001 - a busy or broken index: fall back to looking at the files
            log.warning("project index unavailable (%r); searching %s by content", exc, root)
            where = None
        if where is not None and where.is_file():
            return str(where)
    with _LOCK:
        known = _FOUND.setdefault(seen.root, {})
        hit = known.get(seen.sha256)
        if hit and _size(hit) == seen.size and images.file_sha256(hit) == seen.sha256:
            return hit
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames[:] = [d for d in dirnames if not is_hidden(d)]
            for fname in filenames:
                candidate = os.path.join(dirpath, fname)
                if is_hidden(fname) or _size(candidate) != seen.size:
                    continue
                try:
                    known[images.file_sha256(candidate)] = candidate
                except OSError:
                    continue
                if known.get(seen.sha256) == candidate:
                    return candidate
    return None


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


@dataclass
class Snapshot:
    """What a run trained on: (sha256, label, path relative to root) for every image, and their hash (the same as
    Dataset.dataset_hash(), which the model card records)."""
    hash: str
    root: str
    created: float
    items: list[tuple[str, str, str]]

    @classmethod
    def of(cls, dataset: Dataset) -> Snapshot:
        root = Path(dataset.root)
        prefix = os.path.join(str(root), "")  # the scan wrote each path as root / class / name
        rows = []
        for it in dataset.items:
            # string prefix, not pathlib: Path() per image took 0.4 s at 24,000 images
            rel = (it.path[len(prefix):].replace(os.sep, "/") if it.path.startswith(prefix)
                   else Path(it.path).as_posix())
            rows.append((it.sha256 or "", it.label, rel))
        return cls(dataset.dataset_hash(), str(root), time.time(), sorted(rows))

    def save(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / SNAPSHOT_FILE
        atomic_write_json(path, {"hash": self.hash, "root": self.root, "created": self.created,
                                 "n_images": len(self.items), "items": [list(r) for r in self.items]})
        return path

    @classmethod
    def load(cls, run_dir: str | Path) -> Snapshot | None:
        try:
            data = json.loads((Path(run_dir) / SNAPSHOT_FILE).read_text())
            return cls(str(data["hash"]), str(data["root"]), float(data["created"]),
                       [tuple(r) for r in data["items"]])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def labels(self) -> dict[str, str]:
        return {sha: label for sha, label, _ in self.items}

    def changed(self, current: dict[str, str]) -> int:
        """How many images differ from `current` ({sha256: label} now): added, removed or relabelled."""
        before = self.labels()
        return sum(1 for sha in before.keys() | current.keys() if before.get(sha) != current.get(sha))


def write_snapshot(dataset: Dataset, run_dir: str | Path) -> Snapshot:
    """Save the snapshot a run trains on as <run_dir>/snapshot.json."""
    snap = Snapshot.of(dataset)
    snap.save(run_dir)
    return snap


def scan_image_dir(image_dir: str | Path, check_images: bool = True, max_pixels: int = images.MAX_PIXELS,
                   progress: ProgressCallback | None = None) -> Dataset:
    """Labels and images of an image_dir; unreadable or non-image files go to `skipped` with the reason."""
    root = Path(image_dir).expanduser()
    if not root.is_dir():
        raise DatasetError(f"Image folder '{image_dir}' does not exist (or is not a folder)")
    skipped: list[Skipped] = []
    _forget(root)
    class_dirs = _class_dirs(root, image_dir, skipped)
    per_class = {d.name: _class_files(root, d, skipped) for d in class_dirs}
    items, labels, done, total = [], [], 0, sum(len(v) for v in per_class.values())
    emit(progress, EventKind.SCAN, done=0, total=total)
    every, hashes = Every(), FileHashes(root)
    for label, files in per_class.items():
        candidates = 0
        for path in files:
            done += 1
            candidates += _check_file(path, label, check_images, max_pixels, skipped, items, root, hashes)
            if every.due(last=done == total):
                emit(progress, EventKind.SCAN, done=done, total=total)
        if candidates:
            labels.append(label)
        else:
            log.warning("Class folder '%s' holds no image files; ignored", root / label)
    hashes.save()
    dataset = Dataset(str(root), labels, items, skipped)
    validate(dataset, image_dir)
    _warn_duplicates(dataset)
    return dataset


def _check_file(path: Path, label: str, check_images: bool, max_pixels: int, skipped: list[Skipped],
                items: list[ImageItem], root: Path, hashes: FileHashes) -> bool:
    """Append the file to items or skipped; True when it looked like an image (usable or not). A file hashed by an
    earlier scan and unchanged since (`hashes`) is not read again: it was an image then."""
    try:
        stat = path.stat()
        sha = hashes.get(path, stat)
        if sha is None and not _is_candidate(path):
            skipped.append(Skipped(str(path), "not an image file"))
            return False
        if check_images:
            images.load_image(path, max_pixels=max_pixels)
        if sha is None:
            sha = images.file_sha256(path)
            hashes.add(path, stat, sha)
        items.append(ImageItem(str(path), label, sha))
        _remember(path, root, sha, stat)
    except images.ImageError as exc:
        gone = not os.path.lexists(path)
        skipped.append(Skipped(str(path), "moved or deleted while the folder was being read" if gone else str(exc)))
    except FileNotFoundError:
        skipped.append(Skipped(str(path), "moved or deleted while the folder was being read"))
    except OSError as exc:
        skipped.append(Skipped(str(path), f"cannot be read ({exc.strerror or exc})"))
    return True


def _warn_duplicates(dataset: Dataset) -> None:
    labels = {it.path: it.label for it in dataset.items}
    for _sha, paths in dataset.duplicates():
        classes = sorted({labels[p] for p in paths})
        if len(classes) > 1:
            log.warning("The same image is in classes %s: %s", ", ".join(classes), ", ".join(paths))


def training_problem(class_counts: Mapping[str, int]) -> str | None:
    """Why a project with these images per class ({class: n}, the inbox not included) cannot train, in the user's
    words, or None. Same rule as `validate`: the engine would refuse such a folder, so the app says it before a job
    is started for nothing."""
    usable = [k for k, v in class_counts.items() if v >= MIN_PER_CLASS]
    if len(usable) < MIN_CLASSES:
        now = ", ".join(f"{k}: {v}" for k, v in class_counts.items()) or "no classes"
        return (f"Training needs at least {MIN_CLASSES} classes with {MIN_PER_CLASS}+ images each (now: {now}). "
                "Add and sort images on the Data page.")
    small = [f"'{k}' ({v})" for k, v in class_counts.items() if 0 < v < MIN_PER_CLASS]
    if small:
        return (f"Every class needs at least {MIN_PER_CLASS} images to train; too few in {', '.join(small)}. Add "
                "images to it, or delete the class on the Data page (its images go to the inbox).")
    return None


def validate(dataset: Dataset, image_dir: str | Path | None = None) -> None:
    """DatasetError unless there are >= MIN_CLASSES classes with >= MIN_PER_CLASS usable images each."""
    where = image_dir or dataset.root
    if len(dataset.labels) < MIN_CLASSES:
        found = f"only 1 class ('{dataset.labels[0]}')" if dataset.labels else "no class with image files"
        raise DatasetError(f"Image folder '{where}': found {found}; need at least {MIN_CLASSES} classes, one "
                           "subfolder each")
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
