"""Adding images to a project: files, zips and existing image_dir folders.

Every image is decoded once before it is stored, so broken files are rejected with the reason; bytes already in the
project are reported as duplicates. File names from uploads are only used as labels: the stored name is sanitised
and given an extension that says what the file is. Zips are read defensively: unsafe member names are ignored, and
member count, unpacked size and compression ratio are limited while reading (a zip's directory is not trusted).

The functions take a project's index (engine.store.index.ProjectIndex); they write through its `add_image` (file and
index row in one transaction) and never touch the index themselves.
"""

from __future__ import annotations

import io
import logging
import re
import sqlite3
import unicodedata
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from engine.bundle.predict import safe_member_parts  # the one zip-member check (the bundle's serve.py too)
from engine.core.files import has_hidden_part, is_hidden
from engine.data.images import SUPPORTED, ImageError, bytes_sha256, load_image, sniff_kind
from engine.store.errors import WorkspaceError, storage_error_message, storage_errors
from engine.store.index import ProjectIndex
from engine.store.names import INBOX, invisible_characters, sanitize_class_name, windows_reserved

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = tuple(SUPPORTED)  # what the engine scans in an image_dir
MAX_FILE_BYTES = 64 * 1024 * 1024  # one image
MAX_ZIP_FILES = 50_000  # members in one zip
MAX_ZIP_TOTAL_BYTES = 8 * 1024**3  # uncompressed bytes in one zip
MAX_ZIP_RATIO = 200  # compressed -> uncompressed ratio above which a member is treated as a bomb
MAX_NAME = 80

_KIND_EXTENSION = {"jpeg": ".jpg", "png": ".png", "gif": ".gif", "bmp": ".bmp", "webp": ".webp", "tiff": ".tif",
                   "heic": ".heic"}


# ------------------------------------------------------------------------------------------------------------------
# names
# ------------------------------------------------------------------------------------------------------------------
def sanitize_filename(name: str) -> str:
    """A safe single path component from an uploaded name: no folders, no leading dots, printable, bounded."""
    base = re.split(r"[\\/]", str(name))[-1]
    base = unicodedata.normalize("NFC", base)
    base = "".join("_" if invisible_characters(c) else c for c in base)  # no zero-width or reordering marks
    base = re.sub(r"[\x00-\x1f\x7f<>:\"|?*]", "_", base).strip().strip(".")
    stem, dot, ext = base.rpartition(".")
    if not dot:
        stem, ext = base, ""
    stem = re.sub(r"\s+", "_", stem)[:MAX_NAME].strip("._") or "image"
    ext = re.sub(r"[^A-Za-z0-9]", "", ext)[:8].lower()
    if windows_reserved(stem):
        stem = f"_{stem}"
    return f"{stem}.{ext}" if ext else stem


def sniff_extension(data: bytes) -> str | None:
    """The file extension matching the image's content (".jpg", ...), or None."""
    return _KIND_EXTENSION.get(sniff_kind(data) or "")


# ------------------------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------------------------
@dataclass
class AddReport:
    added: list[str] = field(default_factory=list)  # sha256 of the new images
    duplicates: list[str] = field(default_factory=list)  # names of files already in the project (or the batch)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)
    classes_created: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # things done differently than asked, e.g. a folder -> inbox

    def merge(self, other: AddReport) -> AddReport:
        self.added += other.added
        self.duplicates += other.duplicates
        self.rejected += other.rejected
        self.classes_created += [c for c in other.classes_created if c not in self.classes_created]
        self.notes += other.notes
        return self

    def summary(self) -> str:
        parts = [f"{len(self.added)} added"]
        if self.duplicates:
            parts.append(f"{len(self.duplicates)} duplicate(s) skipped")
        if self.rejected:
            parts.append(f"{len(self.rejected)} rejected")
        if self.classes_created:
            parts.append(f"new classes: {', '.join(self.classes_created)}")
        return ", ".join(parts)


# ------------------------------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------------------------------
@storage_errors("Adding files")
def add_files(project: ProjectIndex, items: Iterable[tuple[str, bytes] | str | Path], class_name: str | None = None,
              *, create_class: bool = True, progress: Callable[[int], None] | None = None) -> AddReport:
    """Add images from (name, bytes) pairs or file paths to a class (None: the inbox).

    Each file is decoded once (engine.data.images.load_image) so broken files are rejected with the reason;
    files whose bytes are already in the project (or earlier in this batch) are reported as duplicates.
    """
    report = AddReport()
    if class_name == INBOX:
        class_name = None
    if class_name is not None:
        class_name, created = project.use_class(sanitize_class_name(class_name), create=create_class)
        if created:
            report.classes_created.append(class_name)
    with project.connect():  # held open for the batch: closing the last connection checkpoints the WAL (2 ms/file)
        _add_all(project, items, class_name, report, progress)
    if report.added:
        log.info("%s: %s", project.slug, report.summary())
    return report


def _add_all(project: ProjectIndex, items: Iterable[tuple[str, bytes] | str | Path], class_name: str | None,
             report: AddReport, progress: Callable[[int], None] | None) -> None:
    seen: set[str] = set()
    for n, item in enumerate(items, start=1):
        if progress is not None and n % 20 == 0:
            progress(20)  # a big import shows a count, not a bare spinner
        name, data, reason = _read_item(item)
        if data is None:
            report.rejected.append((name, reason or "unreadable"))
            continue
        try:
            _add_one(project, name, data, class_name, report, seen)
        except (OSError, sqlite3.OperationalError) as exc:
            message = storage_error_message(f"Adding {name}", exc)
            if message is None:
                raise
            log.warning("adding %s failed: %r", name, exc)
            raise WorkspaceError(f"{message} {len(report.added)} file(s) of this batch were added before it; "
                                 "the rest were not.") from exc


def _read_item(item: tuple[str, bytes] | str | Path) -> tuple[str, bytes | None, str | None]:
    if isinstance(item, tuple):
        name, data = item
        if hasattr(data, "read"):
            data = data.read()
        return str(name), bytes(data), None
    path = Path(item)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return path.name, None, f"file too large ({size / 2**20:.0f} MB; limit {MAX_FILE_BYTES // 2**20} MB)"
        return path.name, path.read_bytes(), None
    except OSError as exc:
        return path.name, None, f"cannot read the file ({exc.strerror or exc})"


def _add_one(project: ProjectIndex, name: str, data: bytes, class_name: str | None, report: AddReport,
             seen: set[str]) -> None:
    if not data:
        report.rejected.append((name, "empty file"))
        return
    if len(data) > MAX_FILE_BYTES:
        report.rejected.append((name, f"file too large (limit {MAX_FILE_BYTES // 2**20} MB)"))
        return
    sha = bytes_sha256(data)
    if sha in seen:
        report.duplicates.append(name)
        return
    seen.add(sha)
    if project.get(sha) is not None:  # cheap check before decoding; add_image checks again under the lock
        report.duplicates.append(name)
        return
    try:
        pixels = load_image(data, name=name)
    except ImageError as exc:
        report.rejected.append((name, str(exc)))
        return
    except Exception as exc:  # a decoder crash on a hostile file must not stop the batch
        log.warning("decoder failed on %s: %r", name, exc)
        report.rejected.append((name, f"not a readable image ({type(exc).__name__})"))
        return
    filename = sanitize_filename(name)
    stem, dot, ext = filename.rpartition(".")
    if not dot:
        stem, ext = filename, ""
    if f".{ext}" not in IMAGE_EXTENSIONS:
        # keep the name but give the file an extension that says what it is, so any tool can read the folder
        sniffed = sniff_extension(data)
        if sniffed is None:
            report.rejected.append((name, "unsupported image format (use JPEG, PNG, BMP, GIF, WebP, TIFF or HEIC)"))
            return
        stem, ext = (filename if not dot else f"{stem}_{ext}"), sniffed[1:]
    fallback = f"{stem}-{sha[:10]}.{ext}"  # unique by content when the plain name is taken
    wanted = f"{stem}.{ext}"
    if is_hidden(wanted):  # a file named like OS junk would be skipped by the next scan
        wanted = fallback
    if not project.add_image(sha, data, class_name, wanted, fallback, name[:255], pixels):
        report.duplicates.append(name)  # another session added it meanwhile
        return
    report.added.append(sha)


# ------------------------------------------------------------------------------------------------------------------
# zips
# ------------------------------------------------------------------------------------------------------------------
class _TooBig(Exception):
    pass


@storage_errors("Adding the zip")
def add_zip(project: ProjectIndex, source: str | Path | bytes | io.IOBase, class_name: str | None = None, *,
            max_files: int = MAX_ZIP_FILES, max_total_bytes: int = MAX_ZIP_TOTAL_BYTES) -> AddReport:
    """Add the images of a zip file.

    Unsafe member names (absolute, `..`) are ignored and reported; macOS metadata is skipped. Zip bombs are
    refused: at most `max_files` members and `max_total_bytes` uncompressed in all, counted while reading (the
    sizes in the zip directory are not trusted). If the zip's top-level folders look like classes (two or more,
    or one named like an existing class) they become classes; a single wrapping folder is looked through.
    """
    report = AddReport()
    data = source.read() if hasattr(source, "read") else source
    try:
        zf = zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes | bytearray) else data)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise WorkspaceError(f"This is not a readable zip file ({exc}). Re-create it with your file manager's "
                             "'Compress' command.") from exc
    with zf:
        members = []
        for info in zf.infolist():
            if info.is_dir():
                continue
            parts = safe_member_parts(info.filename)
            if parts is None:
                report.rejected.append((info.filename, "unsafe path in the zip (ignored)"))
                continue
            if has_hidden_part(parts):  # the same rule as folders: __MACOSX/, ._ forks, .git/, OS junk
                continue
            members.append((info, parts))
        if len(members) > max_files:
            raise WorkspaceError(f"The zip holds {len(members)} files; the limit is {max_files}. "
                                 "Split it into smaller zips.")
        declared = sum(info.file_size for info, _ in members)
        if declared > max_total_bytes:
            raise WorkspaceError(f"The zip would unpack to {declared / 2**30:.1f} GB; the limit is "
                                 f"{max_total_bytes / 2**30:.1f} GB.")
        layout = _zip_layout([p for _, p in members], set(project.classes()) if class_name is None else set())
        budget = max_total_bytes
        groups: dict[str | None, list[tuple[str, bytes]]] = {}
        for info, parts in members:
            name = "/".join(parts)
            if info.compress_size and info.file_size / max(info.compress_size, 1) > MAX_ZIP_RATIO \
                    and info.file_size > 10 * 2**20:
                report.rejected.append((name, "suspicious compression ratio (zip bomb?), skipped"))
                continue
            if info.file_size > MAX_FILE_BYTES:
                report.rejected.append((name, f"file too large (limit {MAX_FILE_BYTES // 2**20} MB)"))
                continue
            try:
                content = _read_member(zf, info, min(MAX_FILE_BYTES, budget))
            except _TooBig:
                if budget < MAX_FILE_BYTES:
                    raise WorkspaceError("The zip unpacks to more data than allowed; is it a zip bomb?") from None
                report.rejected.append((name, f"file too large (limit {MAX_FILE_BYTES // 2**20} MB)"))
                continue
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
                report.rejected.append((name, f"cannot extract ({exc})"))
                continue
            budget -= len(content)
            target = class_name if class_name is not None else layout(parts)
            groups.setdefault(target, []).append((parts[-1], content))
    for target, items in groups.items():
        if target is not None:
            try:
                target = sanitize_class_name(target)
            except WorkspaceError as exc:
                report.notes.append(_inbox_note(target, exc, len(items)))
                target = None
        report.merge(add_files(project, items, target))
    return report


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    buf = bytearray()
    with zf.open(info) as fh:
        while True:
            chunk = fh.read(1 << 20)
            if not chunk:
                return bytes(buf)
            buf += chunk
            if len(buf) > limit:
                raise _TooBig


def _zip_layout(all_parts: list[list[str]], known_classes: set[str]):
    """Decide how member paths map to classes; returns parts -> class name or None (inbox)."""
    strip = 0
    firsts = {p[0] for p in all_parts if len(p) > 1}
    # one wrapping folder (flowers/daisy/x.jpg) is looked through
    if len(firsts) == 1 and all(len(p) > 1 for p in all_parts) and any(len(p) > 2 for p in all_parts):
        strip = 1
    folders = {p[strip] for p in all_parts if len(p) > strip + 1}
    use_folders = len(folders) >= 2 or bool(folders & known_classes)

    def layout(parts: list[str]) -> str | None:
        rest = parts[strip:]
        if use_folders and len(rest) > 1:
            return rest[0]
        return None

    return layout


def _inbox_note(folder: str, exc: Exception, n_files: int) -> str:
    shown = folder if len(folder) <= 40 else folder[:37] + "..."
    return (f"Folder '{shown}' cannot be a class ({str(exc).rstrip('.')}); its {n_files} file(s) went to the inbox "
            "instead.")


# ------------------------------------------------------------------------------------------------------------------
# folders
# ------------------------------------------------------------------------------------------------------------------
@storage_errors("Importing the folder")
def import_image_dir(project: ProjectIndex, path: str | Path,
                     progress: Callable[[int, int], None] | None = None) -> AddReport:
    """Add an existing image_dir (one subfolder per class; loose files go to the inbox). Nothing is moved.

    progress(done, total) is called every few files."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise WorkspaceError(f"Folder not found: {root}")
    report = AddReport()
    loose = []
    inside = root.resolve()

    def leads_outside(p: Path) -> bool:
        # a link to a file or folder elsewhere on the disk is not part of the folder the user picked
        if p.is_symlink() and not p.resolve().is_relative_to(inside):
            report.rejected.append((str(p.relative_to(root)), "a link to something outside the imported folder "
                                                              "(not followed)"))
            return True
        return False

    groups: list[tuple[Path, list[Path]]] = []
    for child in sorted(root.iterdir()):
        if is_hidden(child.name):
            continue
        if leads_outside(child):
            continue
        if child.is_dir():
            groups.append((child, sorted(p for p in child.rglob("*") if not has_hidden_part(p.relative_to(child).parts)
                                         and not leads_outside(p) and p.is_file())))
        elif child.is_file():
            loose.append(child)
    total, done = sum(len(files) for _, files in groups) + len(loose), 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(min(done, total), total)

    for child, files in groups:
        try:
            cls = sanitize_class_name(child.name)
        except WorkspaceError as exc:
            report.notes.append(_inbox_note(child.name, exc, len(files)))
            cls = None
        report.merge(add_files(project, files, cls, progress=step))
        step(len(files) % 20)
    if loose:
        report.merge(add_files(project, loose, None, progress=step))
        step(len(loose) % 20)
    return report
