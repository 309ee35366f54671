"""A project on disk: plain folders that any tool can read, plus a small SQLite index. This module owns both
layouts and is the store's public API below the project: engine.store.ingest adds images through `add_image`,
engine.store.check compares and repairs through `connect`/`transaction`, and the sorting modules (moves, classes,
leases) build on it.

    <workspace>/<slug>/
        images/<class>/<file>   the plain image_dir layout (what training reads)
        inbox/<file>            uploaded but not yet sorted
        trash/<file>            deleted images (never removed silently)
        thumbs/<sha256>.jpg     thumbnail cache
        runs/<run_id>/          training runs (engine.runs.jobs)
        project.db              SQLite: images, classes, meta, leases

Every image is identified by the SHA-256 of its bytes (duplicates are refused) and has a file name that is unique
within the project, so moving it between classes never collides. A change renames the file and updates its row
inside one `BEGIN IMMEDIATE` transaction, so two browser sessions sorting the same project serialise on the
database lock and the folders always agree with the index. File names from uploads are only used as labels: paths
are built from sanitised names, never from what a browser or a zip file says.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import numpy as np
from PIL import Image

from engine.core.fileio import atomic_write_bytes
from engine.data.dataset import Snapshot, register_content_finder
from engine.data.images import ImageError, load_image
from engine.store.errors import DamagedIndexError, WorkspaceError, damage_reason, storage_errors
from engine.store.names import INBOX, name_key
from engine.store.records import ImageRecord, ProjectInfo

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
THUMB_SIZE = 256
DB_FILE = "project.db"
FULL_BELOW_BYTES = 256 * 1024  # less room than this: SQLite cannot grow its WAL index, the disk counts as full

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    sha256 TEXT PRIMARY KEY,
    class TEXT,
    filename TEXT NOT NULL UNIQUE,
    source_name TEXT,
    added_at REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'ok',
    split TEXT
);
CREATE INDEX IF NOT EXISTS images_class ON images(status, class);
CREATE TABLE IF NOT EXISTS classes (name TEXT PRIMARY KEY, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS leases (sha256 TEXT PRIMARY KEY, session TEXT NOT NULL, expires REAL NOT NULL);
"""
# columns added after the first release: (table, column, declaration); projects made before get them on open
_ADDED_COLUMNS = [
    ("images", "version", "INTEGER NOT NULL DEFAULT 0"),  # bumped by every move, trash and restore
    ("images", "changed_by", "TEXT"),  # the session of the last change ("someone else" or you)
    ("classes", "shortcut", "TEXT"),  # the sorter key, kept when other classes come and go
    ("images", "name_key", "TEXT"),  # engine.store.names.name_key(filename): file names unique whatever their case
]

_MIGRATED: set[str] = set()  # project.db files this process has already brought up to the current schema


def record_columns(alias: str = "") -> str:
    """The images columns ProjectIndex.record reads, in its order (alias: "i." inside a join)."""
    return ", ".join(alias + c for c in ("sha256", "class", "filename", "source_name", "added_at"))


class ProjectIndex:
    """One project's folders and index: paths, queries, class rows and the one way an image comes in."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.slug = self.path.name
        self.db_path = self.path / DB_FILE
        self.images_dir = self.path / "images"
        self.inbox_dir = self.path / "inbox"
        self.trash_dir = self.path / "trash"
        self.thumbs_dir = self.path / "thumbs"
        self.runs_dir = self.path / "runs"
        self.read_only: str | None = None  # why this process can only read the index (a full disk)
        if str(self.db_path) in _MIGRATED and self.db_path.exists():
            return
        try:
            self._migrate()
        except sqlite3.DatabaseError as exc:
            if damage_reason(exc) is None:
                raise
            raise DamagedIndexError(self.path, damage_reason(exc)) from exc

    def _migrate(self) -> None:
        """Bring project.db up to the current schema; writes nothing when it already is (a full disk can read)."""
        with self.connect() as db:
            if self.read_only:
                return
            db.executescript(_SCHEMA)
            db.execute("PRAGMA journal_mode = WAL")  # kept in the file: readers and one writer at a time
            for table, column, decl in _ADDED_COLUMNS:
                if column not in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
                    try:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
                    except sqlite3.OperationalError as exc:  # another process added it a moment ago
                        if "duplicate column" not in str(exc):
                            raise
            db.execute("CREATE INDEX IF NOT EXISTS images_name_key ON images(name_key)")
            unkeyed = db.execute("SELECT sha256, filename FROM images WHERE name_key IS NULL").fetchall()
            if unkeyed:  # rows of an older version
                db.executemany("UPDATE images SET name_key = ? WHERE sha256 = ?",
                               [(name_key(filename), sha) for sha, filename in unkeyed])
        _MIGRATED.add(str(self.db_path))

    @classmethod
    def create(cls, path: Path, name: str) -> Self:
        for sub in ("images", "inbox", "trash", "thumbs", "runs"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        project = cls(path)
        with project.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('name', ?)", (name,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('created_at', ?)", (str(time.time()),))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        return project

    def __repr__(self) -> str:
        return f"Project({str(self.path)!r})"

    # --- database -------------------------------------------------------------------------------------------------
    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A connection to the index. On a full disk SQLite cannot even map the shared memory a WAL reader needs:
        then the index is read as it is on disk (immutable, read-only), and every write says the disk is full."""
        try:
            db = self._open()
        except sqlite3.OperationalError:
            if not _disk_full(self.path):
                raise
            db = sqlite3.connect(f"{self.db_path.resolve().as_uri()}?immutable=1", uri=True, isolation_level=None)
            self.read_only = "the disk is full"
        try:
            yield db
        finally:
            db.close()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout = 60000")
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA schema_version").fetchone()  # the first read: maps the WAL index, or fails here
        except BaseException:
            db.close()
            raise
        return db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the database write lock at once (serialises movers across processes)."""
        with self.connect() as db:
            if self.read_only:  # the callers' storage_errors decorators put this in the user's words
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.db_path))
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def meta(self, key: str, default: str | None = None) -> str | None:
        with self.connect() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    @storage_errors("Saving the project")
    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))

    @property
    def name(self) -> str:
        return self.meta("name") or self.slug

    def verify(self) -> None:
        """Raise DamagedIndexError when project.db is not this project's index: unreadable, or emptied (every
        project's index records when it was created)."""
        try:
            created = self.meta("created_at")
        except sqlite3.DatabaseError as exc:
            if damage_reason(exc) is None:
                raise
            raise DamagedIndexError(self.path, damage_reason(exc)) from exc
        if created is None:
            raise DamagedIndexError(self.path, "it holds no project (it was emptied or replaced)")

    def info(self) -> ProjectInfo:
        self.verify()
        with self.connect() as db:
            n_images, n_inbox = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(class IS NULL), 0) FROM images WHERE status = 'ok'").fetchone()
            n_classes = db.execute("SELECT COUNT(*) FROM classes").fetchone()[0]
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        return ProjectInfo(self.slug, meta.get("name", self.slug), float(meta.get("created_at", 0) or 0),
                           int(n_images), int(n_classes), int(n_inbox))

    # --- paths ----------------------------------------------------------------------------------------------------
    def image_dir(self) -> Path:
        """The folder to train on: images/<class>/<file>."""
        self.images_dir.mkdir(parents=True, exist_ok=True)
        return self.images_dir

    def location(self, class_name: str | None, filename: str) -> Path:
        return (self.inbox_dir if class_name is None else self.images_dir / class_name) / filename

    def record(self, row: Sequence[Any], trashed: bool = False) -> ImageRecord:
        """An ImageRecord from a row that starts with record_columns(); a trashed image's file is in trash/."""
        sha, cls, filename, source_name, added_at = row[:5]
        path = self.trash_dir / filename if trashed else self.location(cls, filename)
        return ImageRecord(sha, cls, filename, source_name or filename, added_at, path)

    def path_of(self, sha: str) -> Path | None:
        with self.connect() as db:
            row = db.execute("SELECT class, filename FROM images WHERE sha256 = ? AND status = 'ok'",
                             (sha,)).fetchone()
        return self.location(row[0], row[1]) if row else None

    def locate(self, sha: str) -> Path | None:
        """Where the image's bytes are now: its class folder, the inbox or trash/ (None: not in the project)."""
        with self.connect() as db:
            row = db.execute("SELECT class, filename, status FROM images WHERE sha256 = ?", (sha,)).fetchone()
        if row is None:
            return None
        return self.trash_dir / row[1] if row[2] == "trashed" else self.location(row[0], row[1])

    def labels(self) -> dict[str, str]:
        """{sha256: class} of every sorted image (what a training run would see now)."""
        with self.connect() as db:
            return dict(db.execute("SELECT sha256, class FROM images WHERE status = 'ok' AND class IS NOT NULL"))

    def changed_since(self, run_dir: str | Path) -> int | None:
        """How many images were sorted, moved, added or deleted since the run took its snapshot (None: the run
        has no snapshot.json)."""
        snap = Snapshot.load(run_dir)
        return None if snap is None else snap.changed(self.labels())

    # --- classes --------------------------------------------------------------------------------------------------
    def classes(self) -> list[str]:
        with self.connect() as db:
            return [r[0] for r in db.execute("SELECT name FROM classes ORDER BY name")]

    def counts(self) -> dict[str, int]:
        """Images per class (every class, also empty ones), plus INBOX for the unsorted ones."""
        with self.connect() as db:
            out = {r[0]: 0 for r in db.execute("SELECT name FROM classes ORDER BY name")}
            for cls, n in db.execute("SELECT class, COUNT(*) FROM images WHERE status = 'ok' GROUP BY class"):
                out[INBOX if cls is None else cls] = n
        out.setdefault(INBOX, 0)
        return out

    def class_counts(self) -> dict[str, int]:
        """Images per class, every class (also empty ones), sorted by name; the inbox is not a class
        (its count: `count(INBOX)`)."""
        counts = self.counts()
        del counts[INBOX]
        return counts

    def ensure_class(self, db: sqlite3.Connection, name: str) -> bool:
        """Inside a transaction: make sure class `name` exists (row + folder). Returns True if it was created."""
        (self.images_dir / name).mkdir(parents=True, exist_ok=True)
        cur = db.execute("INSERT OR IGNORE INTO classes (name, created_at) VALUES (?, ?)", (name, time.time()))
        return cur.rowcount > 0

    def find_class(self, db: sqlite3.Connection, name: str) -> str | None:
        """Existing class with this name, compared as names are (engine.store.names.name_key: folders collide on
        macOS and Windows whatever the case and the Unicode form)."""
        key = name_key(name)
        return next((row[0] for row in db.execute("SELECT name FROM classes") if name_key(row[0]) == key), None)

    def require_class(self, db: sqlite3.Connection, name: str) -> str:
        row = db.execute("SELECT name FROM classes WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise WorkspaceError(f"There is no class '{name}'.")
        return row[0]

    # --- images ---------------------------------------------------------------------------------------------------
    def images(self, class_name: str | None = None, offset: int = 0, limit: int | None = None) -> list[ImageRecord]:
        """Images of one class, of the inbox (class_name=INBOX), or all (None); stable order, paged."""
        sql = f"SELECT {record_columns()} FROM images WHERE status = 'ok'"
        args: list[Any] = []
        if class_name == INBOX:
            sql += " AND class IS NULL"
        elif class_name is not None:
            sql += " AND class = ?"
            args.append(class_name)
        sql += " ORDER BY added_at, filename LIMIT ? OFFSET ?"
        args += [-1 if limit is None else int(limit), max(0, int(offset))]
        with self.connect() as db:
            rows = db.execute(sql, args).fetchall()
        return [self.record(r) for r in rows]

    def count(self, class_name: str | None = None) -> int:
        sql = "SELECT COUNT(*) FROM images WHERE status = 'ok'"
        args: tuple = ()
        if class_name == INBOX:
            sql += " AND class IS NULL"
        elif class_name is not None:
            sql, args = sql + " AND class = ?", (class_name,)
        with self.connect() as db:
            return db.execute(sql, args).fetchone()[0]

    def get(self, sha: str) -> ImageRecord | None:
        with self.connect() as db:
            r = db.execute(f"SELECT {record_columns()} FROM images WHERE sha256 = ? AND status = 'ok'",
                           (sha,)).fetchone()
        return self.record(r) if r else None

    def find_by_filename(self, filename: str) -> ImageRecord | None:
        """The image stored under this file name (names are unique in a project), wherever it is now."""
        with self.connect() as db:
            r = db.execute(f"SELECT {record_columns()} FROM images WHERE filename = ? AND status = 'ok'",
                           (filename,)).fetchone()
        return self.record(r) if r else None

    def trashed(self) -> list[ImageRecord]:
        with self.connect() as db:
            rows = db.execute(f"SELECT {record_columns()} FROM images WHERE status = 'trashed' "
                              "ORDER BY added_at").fetchall()
        return [self.record(r, trashed=True) for r in rows]

    # --- adding: engine.store.ingest reads and checks the files, these two methods store them ---------------------
    def use_class(self, name: str, create: bool = True) -> tuple[str, bool]:
        """For engine.store.ingest: the existing class spelled like `name` (case-insensitively), else `name` created
        (WorkspaceError when not `create`). `name` must be sanitised. Returns (class, whether it was created)."""
        with self.transaction() as db:
            existing = self.find_class(db, name)
            if existing is None and not create:
                raise WorkspaceError(f"There is no class '{name}'.")
            name = existing or name
            return name, self.ensure_class(db, name)

    def add_image(self, sha: str, data: bytes, class_name: str | None, filename: str, fallback: str,
                  source_name: str, pixels: Any = None) -> bool:
        """For engine.store.ingest, its only way into the index: in one transaction, write `data` (already checked and
        decoded into `pixels`) to class_name's folder (None: the inbox) and insert its row. The file is named
        `filename`, or `fallback` when another image has that name (compared case-insensitively, as folders are
        on macOS and Windows). False, and nothing written, when the image is already in the project (another
        session added it meanwhile); a trashed copy's row is replaced. The thumbnail is cached afterwards."""
        with self.transaction() as db:
            row = db.execute("SELECT status FROM images WHERE sha256 = ?", (sha,)).fetchone()
            if row is not None and row[0] == "ok":
                return False
            if row is not None:  # it was in the trash: re-adding brings it back under a fresh row
                db.execute("DELETE FROM images WHERE sha256 = ?", (sha,))
            if db.execute("SELECT 1 FROM images WHERE name_key = ?", (name_key(filename),)).fetchone():
                filename = fallback
            if class_name is not None:
                self.ensure_class(db, class_name)
            dest = self.location(class_name, filename)
            atomic_write_bytes(dest, data)
            try:
                db.execute("INSERT INTO images (sha256, class, filename, source_name, added_at, status, name_key) "
                           "VALUES (?, ?, ?, ?, ?, 'ok', ?)",
                           (sha, class_name, filename, source_name, time.time(), name_key(filename)))
            except BaseException:
                dest.unlink(missing_ok=True)
                raise
        if pixels is not None:
            try:
                self.write_thumbnail(sha, pixels)
            except Exception as exc:  # a thumbnail is a cache: never fail an upload over it
                log.warning("thumbnail for %s failed: %r", source_name, exc)
        return True

    # --- thumbnails -----------------------------------------------------------------------------------------------
    def write_thumbnail(self, sha: str, pixels: np.ndarray) -> bytes:
        img = Image.fromarray(pixels)
        img.thumbnail((THUMB_SIZE, THUMB_SIZE))
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=85)
        data = buf.getvalue()
        try:
            atomic_write_bytes(self.thumbs_dir / f"{sha}.jpg", data, durable=False)  # a cache
        except OSError as exc:  # a cache: a full disk or a read-only folder still shows the picture
            log.warning("thumbnail of %s not cached: %s", sha[:12], exc)
        return data

    def thumbnail(self, sha: str) -> bytes:
        """A JPEG thumbnail (cached in thumbs/). Raises WorkspaceError if the image is gone or unreadable."""
        if not re.fullmatch(r"[0-9a-f]{64}", sha or ""):
            raise WorkspaceError("not an image id")
        cached = self.thumbs_dir / f"{sha}.jpg"
        try:
            return cached.read_bytes()
        except FileNotFoundError:
            pass
        path = self.path_of(sha)
        if path is None:
            trashed = self.trash_dir / next((r.filename for r in self.trashed() if r.sha256 == sha), "-")
            path = trashed if trashed.exists() else None
        if path is None or not path.exists():
            raise WorkspaceError("This image is no longer in the project.")
        try:
            return self.write_thumbnail(sha, load_image(path))
        except ImageError as exc:
            raise WorkspaceError(str(exc)) from exc


def _disk_full(folder: Path) -> bool:
    """Whether the disk holding `folder` has (next to) no room left: what a failing read on it then means."""
    try:
        return shutil.disk_usage(folder).free < FULL_BELOW_BYTES
    except OSError:
        return False


def find_in_project(root: Path, sha: str) -> Path | None:
    """Where a workspace project's image is now, by its content (the index also knows the trash); None when `root`
    is not a project's images/ folder or the index does not know the image."""
    if root.name != "images" or not (root.parent / DB_FILE).is_file():
        return None
    return ProjectIndex(root.parent).locate(sha)


# engine.data reads images while people sort; it cannot import the store, so the store tells it where to ask.
register_content_finder(find_in_project)
