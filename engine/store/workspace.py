"""Project storage: a folder per project that any tool can read, plus a small SQLite index.

    <workspace>/<slug>/
        images/<class>/<file>   the plain image_dir layout (what training reads)
        inbox/<file>            uploaded but not yet sorted
        trash/<file>            deleted images (never removed silently)
        thumbs/<sha256>.jpg     thumbnail cache
        runs/<run_id>/          training runs (engine.runs.jobs)
        project.db              SQLite: images, classes, meta

The workspace root is `$RETRAIN_STUDIO_WORKSPACE`, else `./workspace`.

Every image is identified by the SHA-256 of its bytes (duplicates are refused) and has a file name that is unique
within the project, so moving it between classes never collides. A move renames the file and updates its row inside
one `BEGIN IMMEDIATE` transaction, so two browser sessions sorting the same project serialise on the database lock
and the folders always agree with the index. File names from uploads are only used as labels: paths are built from
sanitised names, never from what a browser or a zip file says.

Several people may sort one project at once, and a training run may read it meanwhile, so every change says what
it expects: `act()` moves, trashes or restores an image only if it is still where the user saw it, and returns a
`Conflict` ("already moved to roses by someone else") otherwise. Every change bumps the image's `version` and
records the session that made it; `undo()` reverts a `Change` only while the image still has that version, so one
person's undo never reverts another person's decision. Sorters take a short lease on the inbox image they are
looking at (`lease_next()`), so two sorters are shown different images.

Adding images (uploads, zips, folders) is engine.store.ingest; comparing the index with the folders is engine.store.check.
"""

from __future__ import annotations

import errno
import functools
import io
import logging
import os
import re
import shutil
import sqlite3
import sys
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.runs import status as run_status
from engine.core.fileio import atomic_write_bytes
from engine.data.images import ImageError, load_image

if TYPE_CHECKING:  # engine.store.ingest and engine.store.check import this module
    from engine.store.check import ConsistencyReport
    from engine.store.ingest import AddReport

log = logging.getLogger(__name__)

WORKSPACE_ENV = "RETRAIN_STUDIO_WORKSPACE"
INBOX = "__inbox__"  # pseudo class name for unsorted images (images(), counts())
TRASH = "__trash__"  # pseudo place of an image in the project's trash/ folder (act(), Change, Conflict)
LEASE_SECONDS = 90.0  # how long a sorter holds the inbox image it is looking at without touching the page
SCHEMA_VERSION = "1"
THUMB_SIZE = 256

# device names Windows refuses as file or folder names (class names here, file names in engine.store.ingest)
WINDOWS_RESERVED_NAMES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                          *(f"lpt{i}" for i in range(1, 10))}


class WorkspaceError(ValueError):
    """A user-facing problem (bad name, missing project, ...); the message says what to do."""


# ------------------------------------------------------------------------------------------------------------------
# disk-full and permission errors: in the user's words, never a traceback
# ------------------------------------------------------------------------------------------------------------------
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NO_PERMISSION = {errno.EACCES, errno.EPERM, errno.EROFS}


def storage_error_message(what: str, exc: BaseException) -> str | None:
    """'<what>: the disk is full ...' for disk-full, permission and read-only errors (OSError or SQLite); None for
    anything else (a bug, which should surface as one)."""
    if isinstance(exc, OSError):
        full, denied = exc.errno in _DISK_FULL, exc.errno in _NO_PERMISSION
        where = f" ({exc.filename})" if exc.filename else ""
    elif isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        full = "disk is full" in text or "disk i/o error" in text
        denied = "readonly" in text or "read-only" in text or "unable to open" in text
        where = " (project.db)"
    else:
        return None
    if full:
        return (f"{what}: the disk is full{where}. Free some space and try again; nothing that was already saved "
                "is lost.")
    if denied:
        return (f"{what}: no permission to write to the workspace{where}. Check that the folder is writable "
                f"(owner, permissions, not a read-only disk) or set {WORKSPACE_ENV} to another folder.")
    return None


def storage_errors(what: str) -> Callable:
    """Decorator: disk-full and permission errors of a workspace operation become a WorkspaceError."""
    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (OSError, sqlite3.OperationalError) as exc:
                message = storage_error_message(what, exc)
                if message is None:
                    raise
                log.warning("%s failed: %r", what, exc)
                raise WorkspaceError(message) from exc
        return inner
    return wrap


# ------------------------------------------------------------------------------------------------------------------
# names
# ------------------------------------------------------------------------------------------------------------------
def _ascii_fold(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def slugify(name: str) -> str:
    """'My Flowers!' -> 'my-flowers'; never empty, never a path."""
    slug = re.sub(r"[^a-z0-9]+", "-", _ascii_fold(name).lower()).strip("-")[:48].strip("-")
    return slug or "project"


def sanitize_class_name(name: str) -> str:
    """Validate a class name (it becomes a folder name and a label). Raises WorkspaceError with the reason."""
    text = unicodedata.normalize("NFC", str(name)).strip()
    if not text:
        raise WorkspaceError("A class name cannot be empty.")
    if len(text) > 64:
        raise WorkspaceError(f"Class name '{text[:20]}...' is too long (64 characters at most).")
    if text == INBOX or text.startswith("__"):
        raise WorkspaceError(f"'{text}' is reserved; choose another class name.")
    if re.search(r"[\\/\x00-\x1f\x7f<>:\"|?*]", text) or text in (".", "..") or text.startswith("."):
        raise WorkspaceError(f"Class name '{text}' cannot contain / \\ : * ? \" < > | or start with a dot.")
    if text.lower() in WINDOWS_RESERVED_NAMES:
        raise WorkspaceError(f"'{text}' is a reserved device name on Windows; choose another class name.")
    return text


# ------------------------------------------------------------------------------------------------------------------
# records
# ------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageRecord:
    sha256: str
    class_name: str | None  # None: inbox
    filename: str
    source_name: str
    added_at: float
    path: Path


def place_label(place: str | None) -> str:
    """How a place reads in a message: 'roses', 'the inbox', 'the trash'."""
    if place in (None, INBOX):
        return "the inbox"
    if place == TRASH:
        return "the trash"
    return f"'{place}'"


@dataclass(frozen=True)
class Change:
    """One applied change to one image: enough to undo it, and to tell whether someone changed it since."""
    sha256: str
    filename: str
    before: str  # a class name, INBOX or TRASH
    after: str
    version: int  # the image's version right after this change


@dataclass(frozen=True)
class Conflict:
    """An action refused because the image is no longer where the user saw it (or changed since)."""
    sha256: str
    filename: str
    expected: str  # where the user saw it
    actual: str | None  # where it is now (class, INBOX, TRASH), None: no longer in the project
    by_other: bool  # the last change was made by another session (or by hand)
    undo: bool = False

    def message(self) -> str:
        who = " by someone else" if self.by_other else ""
        if self.actual is None:
            return f"'{self.filename}' is no longer in the project (removed{who})."
        if self.undo:
            if self.actual == self.expected:
                return f"'{self.filename}' was changed{who} since; not undone (it stays in {place_label(self.actual)})."
            return f"'{self.filename}' was moved to {place_label(self.actual)}{who} since; not undone."
        if self.actual == TRASH:
            return f"'{self.filename}' was already moved to the trash{who}."
        return f"'{self.filename}' was already moved to {place_label(self.actual)}{who}."


@dataclass
class ActionResult:
    changes: list[Change] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)

    @property
    def done(self) -> int:
        return len(self.changes)

    def conflict_message(self) -> str | None:
        """One line for the user (the first few conflicts by name), or None when there were none."""
        if not self.conflicts:
            return None
        shown = " ".join(c.message() for c in self.conflicts[:3])
        more = f" (and {len(self.conflicts) - 3} more)" if len(self.conflicts) > 3 else ""
        return shown + more + " The view shows where the images are now."


class StaleActionError(WorkspaceError):
    """Some images were not where the caller expected: the others were changed, these were left alone."""

    def __init__(self, result: ActionResult):
        super().__init__(result.conflict_message() or "Nothing was changed.")
        self.result = result


@dataclass(frozen=True)
class ProjectInfo:
    slug: str
    name: str
    created_at: float
    n_images: int
    n_classes: int
    n_inbox: int


# ------------------------------------------------------------------------------------------------------------------
# workspace
# ------------------------------------------------------------------------------------------------------------------
def default_root() -> Path:
    return Path(os.environ.get(WORKSPACE_ENV) or "workspace").expanduser().resolve()


class Workspace:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser().resolve() if root else default_root()

    def _project_dirs(self) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        for p in sorted(self.root.iterdir()):
            if p.is_dir() and not p.name.startswith(".") and (p / "project.db").exists():
                yield p

    def list_projects(self) -> list[ProjectInfo]:
        out = []
        for p in self._project_dirs():
            try:
                out.append(Project(p).info())
            except (sqlite3.Error, OSError, WorkspaceError) as exc:
                log.warning("skipping unreadable project %s: %s", p, exc)
        return out

    def exists(self, slug: str) -> bool:
        return bool(slug) and slug == slugify(slug) and (self.root / slug / "project.db").exists()

    @storage_errors("Creating the project")
    def create_project(self, name: str) -> Project:
        name = str(name).strip()
        if not name:
            raise WorkspaceError("Give the project a name.")
        if len(name) > 100:
            raise WorkspaceError("Project names are limited to 100 characters.")
        self.root.mkdir(parents=True, exist_ok=True)
        base = slugify(name)
        for n in range(1, 1000):
            slug = base if n == 1 else f"{base}-{n}"
            path = self.root / slug
            try:
                path.mkdir()
            except FileExistsError:
                continue
            return Project.create(path, name)
        raise WorkspaceError(f"Too many projects called '{name}'.")

    @storage_errors("Opening the project")
    def open_project(self, slug: str) -> Project:
        if not self.exists(slug):
            raise WorkspaceError(f"There is no project '{slug}' in {self.root}. Pick or create one on the Home page.")
        return Project(self.root / slug)

    @storage_errors("Renaming the project")
    def rename_project(self, slug: str, new_name: str) -> Project:
        """Changes the display name; the folder (slug) stays, so links and running jobs keep working."""
        project = self.open_project(slug)
        new_name = str(new_name).strip()
        if not new_name:
            raise WorkspaceError("Give the project a name.")
        project.set_meta("name", new_name[:100])
        return project

    @storage_errors("Deleting the project")
    def delete_project(self, slug: str) -> None:
        project = self.open_project(slug)
        if project.running_job() is not None:
            raise WorkspaceError("A training job of this project is running: cancel it on the Train page first.")
        # rename first so a half-finished delete never looks like a project
        doomed = self.root / f".deleting-{slug}-{os.getpid()}-{time.time_ns()}"
        os.replace(project.path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        log.info("deleted project %s", slug)


# ------------------------------------------------------------------------------------------------------------------
# project
# ------------------------------------------------------------------------------------------------------------------
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
]


_MIGRATED: set[str] = set()  # project.db files this process has already brought up to the current schema


def _record_columns(alias: str = "") -> str:
    """The images columns Project._record reads, in its order (alias: "i." inside a join)."""
    return ", ".join(alias + c for c in ("sha256", "class", "filename", "source_name", "added_at"))


class Project:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.slug = self.path.name
        self.db_path = self.path / "project.db"
        self.images_dir = self.path / "images"
        self.inbox_dir = self.path / "inbox"
        self.trash_dir = self.path / "trash"
        self.thumbs_dir = self.path / "thumbs"
        self.runs_dir = self.path / "runs"
        if str(self.db_path) in _MIGRATED and self.db_path.exists():
            return
        with self._db() as db:
            db.executescript(_SCHEMA)
            for table, column, decl in _ADDED_COLUMNS:
                if column not in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
                    try:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
                    except sqlite3.OperationalError as exc:  # another process added it a moment ago
                        if "duplicate column" not in str(exc):
                            raise
        _MIGRATED.add(str(self.db_path))

    @classmethod
    def create(cls, path: Path, name: str) -> Project:
        for sub in ("images", "inbox", "trash", "thumbs", "runs"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        project = cls(path)
        with project._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('name', ?)", (name,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('created_at', ?)", (str(time.time()),))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        return project

    def __repr__(self) -> str:
        return f"Project({str(self.path)!r})"

    # --- database -------------------------------------------------------------------------------------------------
    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout = 60000")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            yield db
        finally:
            db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the database write lock at once (serialises movers across processes)."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def meta(self, key: str, default: str | None = None) -> str | None:
        with self._db() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    @storage_errors("Saving the project")
    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))

    @property
    def name(self) -> str:
        return self.meta("name") or self.slug

    def info(self) -> ProjectInfo:
        with self._db() as db:
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

    def _location(self, class_name: str | None, filename: str) -> Path:
        return (self.inbox_dir if class_name is None else self.images_dir / class_name) / filename

    def _record(self, row: Sequence[Any], trashed: bool = False) -> ImageRecord:
        """An ImageRecord from a row that starts with _record_columns(); a trashed image's file is in trash/."""
        sha, cls, filename, source_name, added_at = row[:5]
        path = self.trash_dir / filename if trashed else self._location(cls, filename)
        return ImageRecord(sha, cls, filename, source_name or filename, added_at, path)

    def path_of(self, sha: str) -> Path | None:
        with self._db() as db:
            row = db.execute("SELECT class, filename FROM images WHERE sha256 = ? AND status = 'ok'",
                             (sha,)).fetchone()
        return self._location(row[0], row[1]) if row else None

    def locate(self, sha: str) -> Path | None:
        """Where the image's bytes are now: its class folder, the inbox or trash/ (None: not in the project)."""
        with self._db() as db:
            row = db.execute("SELECT class, filename, status FROM images WHERE sha256 = ?", (sha,)).fetchone()
        if row is None:
            return None
        return self.trash_dir / row[1] if row[2] == "trashed" else self._location(row[0], row[1])

    def labels(self) -> dict[str, str]:
        """{sha256: class} of every sorted image (what a training run would see now)."""
        with self._db() as db:
            return dict(db.execute("SELECT sha256, class FROM images WHERE status = 'ok' AND class IS NOT NULL"))

    def changed_since(self, run_dir: str | Path) -> int | None:
        """How many images were sorted, moved, added or deleted since the run took its snapshot (None: the run
        has no snapshot.json)."""
        from engine.data.dataset import Snapshot

        snap = Snapshot.load(run_dir)
        return None if snap is None else snap.changed(self.labels())

    def running_job(self) -> Path | None:
        """The run folder of a live training job, if any (engine.config.runfiles's rule, the same as engine.runs.jobs')."""
        return run_status.active_run(self.runs_dir)

    # --- classes --------------------------------------------------------------------------------------------------
    def classes(self) -> list[str]:
        with self._db() as db:
            return [r[0] for r in db.execute("SELECT name FROM classes ORDER BY name")]

    def counts(self) -> dict[str, int]:
        """Images per class (every class, also empty ones), plus INBOX for the unsorted ones."""
        with self._db() as db:
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

    @storage_errors("Saving the class keys")
    def class_keys(self, keys: Sequence[str]) -> dict[str, str]:
        """{class: shortcut key}. A class keeps its key for good (renames too); a class without one gets the first
        free key of `keys` (in the caller's order), so creating a class never renumbers the others."""
        keys = list(keys)
        with self._db() as db:
            rows = db.execute("SELECT name, shortcut FROM classes ORDER BY name").fetchall()
        assigned = {n: k for n, k in rows if k in keys}
        if len(assigned) == len(rows) or len(assigned) >= len(keys):
            return assigned
        with self._tx() as db:  # re-read: another session may be assigning at the same moment
            rows = db.execute("SELECT name, shortcut FROM classes ORDER BY name").fetchall()
            assigned = {n: k for n, k in rows if k in keys}
            free = [k for k in keys if k not in set(assigned.values())]
            for name, _ in rows:
                if name not in assigned and free:
                    assigned[name] = free.pop(0)
                    db.execute("UPDATE classes SET shortcut = ? WHERE name = ?", (assigned[name], name))
        return assigned

    # --- leases: sorters are shown different inbox images ---------------------------------------------------------
    @storage_errors("Sorting")
    def lease_next(self, session: str, skip: Iterable[str] = (), ttl: float = LEASE_SECONDS) -> ImageRecord | None:
        """The inbox image this session should sort next, leased to it for `ttl` seconds (renewed by each call).

        It keeps the image it already holds (unless skipped); otherwise it gets the oldest inbox image nobody else
        holds. A lease ends when the image is acted on, after `ttl`, or with release_leases()."""
        skip = set(skip)
        now = time.time()
        with self._tx() as db:
            db.execute("DELETE FROM leases WHERE expires < ?", (now,))
            rows = db.execute(
                f"SELECT {_record_columns('i.')} FROM images i LEFT JOIN leases l ON l.sha256 = i.sha256 "
                "WHERE i.status = 'ok' AND i.class IS NULL AND (l.session IS NULL OR l.session = ?) "
                "ORDER BY (l.session IS NULL), l.expires DESC, i.added_at, i.filename LIMIT ?",
                (session, len(skip) + 4)).fetchall()
            pick = next((r for r in rows if r[0] not in skip), None)
            db.execute("DELETE FROM leases WHERE session = ? AND sha256 != ?", (session, pick[0] if pick else ""))
            if pick is None:
                return None
            db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)", (pick[0], session, now + ttl))
        return self._record(pick)

    @storage_errors("Sorting")
    def lease_in_order(self, session: str, order: Sequence[str], skip: Iterable[str] = (),
                       ttl: float = LEASE_SECONDS) -> ImageRecord | None:
        """lease_next, but a new lease follows `order` (sha256s, e.g. least confident model suggestion first;
        engine.curate.curate); inbox images missing from `order` come after it, oldest first."""
        skip = set(skip)
        now = time.time()
        with self._tx() as db:
            db.execute("DELETE FROM leases WHERE expires < ?", (now,))
            held = dict(db.execute("SELECT sha256, session FROM leases ORDER BY expires DESC").fetchall())
            inbox = {r[0]: r for r in db.execute(
                f"SELECT {_record_columns()} FROM images WHERE status = 'ok' AND class IS NULL "
                "ORDER BY added_at, filename")}
            mine = [s for s, who in held.items() if who == session and s in inbox and s not in skip]
            rank = {s: i for i, s in enumerate(order)}
            free = sorted((s for s in inbox if s not in held and s not in skip), key=lambda s: rank.get(s, len(rank)))
            pick = (mine or free or [None])[0]
            db.execute("DELETE FROM leases WHERE session = ? AND sha256 != ?", (session, pick or ""))
            if pick is None:
                return None
            db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)", (pick, session, now + ttl))
        return self._record(inbox[pick])

    def inbox_queue(self, session: str, skip: Iterable[str] = (), limit: int = 6) -> list[ImageRecord]:
        """Inbox images nobody else is looking at (for a 'next up' preview; not leased)."""
        skip = set(skip)
        with self._db() as db:
            rows = db.execute(
                f"SELECT {_record_columns('i.')} FROM images i LEFT JOIN leases l "
                "ON l.sha256 = i.sha256 AND l.expires >= ? WHERE i.status = 'ok' AND i.class IS NULL "
                "AND (l.session IS NULL OR l.session = ?) ORDER BY i.added_at, i.filename LIMIT ?",
                (time.time(), session, len(skip) + limit)).fetchall()
        return [self._record(r) for r in rows if r[0] not in skip][:limit]

    def leased_by_others(self, session: str) -> int:
        with self._db() as db:
            return db.execute("SELECT COUNT(*) FROM leases WHERE session != ? AND expires >= ?",
                              (session, time.time())).fetchone()[0]

    @storage_errors("Sorting")
    def release_leases(self, session: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM leases WHERE session = ?", (session,))

    def _ensure_class(self, db: sqlite3.Connection, name: str) -> bool:
        """Inside a transaction: make sure class `name` exists (row + folder). Returns True if it was created."""
        (self.images_dir / name).mkdir(parents=True, exist_ok=True)
        cur = db.execute("INSERT OR IGNORE INTO classes (name, created_at) VALUES (?, ?)", (name, time.time()))
        return cur.rowcount > 0

    def _find_class(self, db: sqlite3.Connection, name: str) -> str | None:
        """Existing class with this name, compared case-insensitively (folders collide on macOS and Windows)."""
        row = db.execute("SELECT name FROM classes WHERE lower(name) = lower(?)", (name,)).fetchone()
        return row[0] if row else None

    @storage_errors("Creating the class")
    def create_class(self, name: str) -> str:
        name = sanitize_class_name(name)
        with self._tx() as db:
            existing = self._find_class(db, name)
            if existing is not None:
                raise WorkspaceError(f"Class '{existing}' already exists.")
            self._ensure_class(db, name)
        return name

    def _require_class(self, db: sqlite3.Connection, name: str) -> str:
        row = db.execute("SELECT name FROM classes WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise WorkspaceError(f"There is no class '{name}'.")
        return row[0]

    @storage_errors("Renaming the class")
    def rename_class(self, old: str, new: str) -> str:
        new = sanitize_class_name(new)
        with self._tx() as db:
            self._require_class(db, old)
            if new == old:
                return new
            clash = self._find_class(db, new)
            if clash is not None and clash != old:
                raise WorkspaceError(f"Class '{clash}' already exists: merge the classes instead.")
            src, dst = self.images_dir / old, self.images_dir / new
            src.mkdir(parents=True, exist_ok=True)
            if dst.exists() and dst.resolve() != src.resolve():
                if any(dst.iterdir()):
                    raise WorkspaceError(f"A folder '{new}' with files already exists in {self.images_dir}; "
                                         "run the consistency check first.")
                dst.rmdir()
            if old.lower() == new.lower():  # case-only rename on a case-insensitive file system
                tmp = self.images_dir / f".rename-{time.time_ns()}"
                os.rename(src, tmp)
                os.rename(tmp, dst)
            else:
                os.rename(src, dst)
            try:
                db.execute("UPDATE classes SET name = ? WHERE name = ?", (new, old))
                db.execute("UPDATE images SET class = ? WHERE class = ?", (new, old))
            except BaseException:
                os.rename(dst, src)
                raise
        return new

    @storage_errors("Merging the classes")
    def merge_classes(self, sources: Iterable[str], target: str) -> int:
        """Move every image of `sources` into `target` (created if needed) and remove the source classes."""
        sources = [s for s in dict.fromkeys(sources) if s != target]
        with self._db() as db:
            for s in sources:
                self._require_class(db, s)
        target = sanitize_class_name(target)
        with self._tx() as db:
            existing = self._find_class(db, target)
            target = existing or target
            self._ensure_class(db, target)
        moved = 0
        for s in sources:
            moved += self.move(self._shas_of_class(s), target)
            self._drop_class(s)
        return moved

    @storage_errors("Deleting the class")
    def delete_class(self, name: str) -> int:
        """Remove a class; its images go to the inbox (nothing is deleted). Returns how many were moved."""
        with self._db() as db:
            self._require_class(db, name)
        moved = self.move(self._shas_of_class(name), None)
        self._drop_class(name)
        return moved

    def _shas_of_class(self, name: str) -> list[str]:
        with self._db() as db:
            return [r[0] for r in db.execute(
                "SELECT sha256 FROM images WHERE class = ? AND status = 'ok'", (name,))]

    def _drop_class(self, name: str) -> None:
        with self._tx() as db:
            left = db.execute("SELECT COUNT(*) FROM images WHERE class = ? AND status = 'ok'", (name,)).fetchone()[0]
            if left:  # someone added images meanwhile: keep them safe in the inbox first
                raise WorkspaceError(f"Class '{name}' received new images meanwhile; try again.")
            db.execute("DELETE FROM classes WHERE name = ?", (name,))
            folder = self.images_dir / name
            if folder.is_dir():
                # files nobody tracks (dropped in by hand) are not deleted either: they go to the inbox folder
                for stray in folder.iterdir():
                    if stray.is_file():
                        dest = self.inbox_dir / f"untracked-{name}-{stray.name}"
                        os.replace(stray, dest)
                        log.warning("untracked file %s moved to %s", stray, dest)
                shutil.rmtree(folder, ignore_errors=True)

    # --- images ---------------------------------------------------------------------------------------------------
    def images(self, class_name: str | None = None, offset: int = 0, limit: int | None = None) -> list[ImageRecord]:
        """Images of one class, of the inbox (class_name=INBOX), or all (None); stable order, paged."""
        sql = f"SELECT {_record_columns()} FROM images WHERE status = 'ok'"
        args: list[Any] = []
        if class_name == INBOX:
            sql += " AND class IS NULL"
        elif class_name is not None:
            sql += " AND class = ?"
            args.append(class_name)
        sql += " ORDER BY added_at, filename LIMIT ? OFFSET ?"
        args += [-1 if limit is None else int(limit), max(0, int(offset))]
        with self._db() as db:
            rows = db.execute(sql, args).fetchall()
        return [self._record(r) for r in rows]

    def count(self, class_name: str | None = None) -> int:
        sql = "SELECT COUNT(*) FROM images WHERE status = 'ok'"
        args: tuple = ()
        if class_name == INBOX:
            sql += " AND class IS NULL"
        elif class_name is not None:
            sql, args = sql + " AND class = ?", (class_name,)
        with self._db() as db:
            return db.execute(sql, args).fetchone()[0]

    def get(self, sha: str) -> ImageRecord | None:
        with self._db() as db:
            r = db.execute(f"SELECT {_record_columns()} FROM images WHERE sha256 = ? AND status = 'ok'",
                           (sha,)).fetchone()
        return self._record(r) if r else None

    def find_by_filename(self, filename: str) -> ImageRecord | None:
        """The image stored under this file name (names are unique in a project), wherever it is now."""
        with self._db() as db:
            r = db.execute(f"SELECT {_record_columns()} FROM images WHERE filename = ? AND status = 'ok'",
                           (filename,)).fetchone()
        return self._record(r) if r else None

    @storage_errors("Moving images")
    def move(self, shas: Iterable[str], class_name: str | None, *, expected: Mapping[str, str | None] | None = None,
             session: str | None = None) -> int:
        """Move images to a class (or to the inbox with None). Returns how many actually changed place.

        With `expected` ({sha: the class the user saw it in, INBOX/None for the inbox}) an image that is no longer
        there is left alone, and StaleActionError says where it went (after the others were moved)."""
        return self._checked(self.act(shas, INBOX if class_name is None else class_name, expected=expected,
                                      session=session), expected)

    @storage_errors("Deleting images")
    def delete_images(self, shas: Iterable[str], *, expected: Mapping[str, str | None] | None = None,
                      session: str | None = None) -> int:
        """Move images to the project's trash/ folder and drop them from training. Returns how many."""
        return self._checked(self.act(shas, TRASH, expected=expected, session=session), expected)

    @staticmethod
    def _checked(result: ActionResult, expected: Mapping | None) -> int:
        if expected is not None and result.conflicts:
            raise StaleActionError(result)
        return result.done

    @storage_errors("Changing images")
    def act(self, shas: Iterable[str], to: str | None, *, expected: Mapping[str, str | None] | None = None,
            session: str | None = None) -> ActionResult:
        """Move images to `to` (a class, INBOX or TRASH), each only if it is still where `expected` says.

        Images missing from `expected` (or all, when it is None) are moved from wherever they are; images already
        at `to` are left alone. Each image is changed in its own transaction (short lock; folder and index always
        agree), its version is bumped and its lease released. Returns the changes (for undo) and the conflicts."""
        to = INBOX if to is None else to
        if to not in (INBOX, TRASH):
            with self._db() as db:
                self._require_class(db, to)
        result = ActionResult()
        for sha in dict.fromkeys(shas):
            want = expected.get(sha, ...) if expected is not None else ...
            want = INBOX if want is None else want
            with self._tx() as db:
                outcome = self._relocate(db, sha, to, want, None, session)
            if isinstance(outcome, Change):
                result.changes.append(outcome)
            elif isinstance(outcome, Conflict):
                result.conflicts.append(outcome)
        return result

    @storage_errors("Undoing")
    def undo(self, changes: Iterable[Change], session: str | None = None) -> ActionResult:
        """Revert changes (newest first), each only if nobody changed the image since (its version still matches).
        A class that no longer exists sends the image to the inbox."""
        result = ActionResult()
        for change in reversed(list(changes)):
            with self._tx() as db:
                back = change.before
                if back not in (INBOX, TRASH) and self._find_class(db, back) != back:
                    back = INBOX
                outcome = self._relocate(db, change.sha256, back, change.after, change.version, session,
                                         undo=True)
                if isinstance(outcome, Change) and back == INBOX and session:  # the sorter shows it again next
                    db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)",
                               (change.sha256, session, time.time() + LEASE_SECONDS))
            if isinstance(outcome, Change):
                result.changes.append(outcome)
            elif isinstance(outcome, Conflict):
                result.conflicts.append(outcome)
        return result

    def _relocate(self, db: sqlite3.Connection, sha: str, to: str, expect: Any, expect_version: int | None,
                  session: str | None, undo: bool = False) -> Change | Conflict | None:
        """Inside a write transaction: move one image's file and row; None when there is nothing to do."""
        row = db.execute("SELECT class, filename, status, version, changed_by FROM images WHERE sha256 = ?",
                         (sha,)).fetchone()
        if row is None:
            actual, filename = None, sha[:12]
        else:
            actual, filename = (TRASH if row[2] == "trashed" else row[0] or INBOX), row[1]
        if expect is not ...:
            stale = actual != expect or (expect_version is not None and row is not None and row[3] != expect_version)
            if stale:
                by_other = row is None or session is None or row[4] != session
                return Conflict(sha, filename, expect, actual, by_other, undo=undo)
        if row is None or actual == to or (expect is ... and actual == TRASH):  # only restore brings one back
            return None
        if to not in (INBOX, TRASH):
            self._require_class(db, to)
        old_class, status = row[0], row[2]
        src = self.trash_dir / filename if status == "trashed" else self._location(old_class, filename)
        dst = self.trash_dir / filename if to == TRASH else self._location(None if to == INBOX else to, filename)
        if not self._move_file(src, dst, sha, missing_ok=to == TRASH):
            if status == "trashed":  # a trashed file removed by hand cannot come back
                return None
        new_class = old_class if to == TRASH else (None if to == INBOX else to)  # the trash remembers the class
        try:
            db.execute("UPDATE images SET status = ?, class = ?, version = version + 1, changed_by = ? "
                       "WHERE sha256 = ?", ("trashed" if to == TRASH else "ok", new_class, session, sha))
            db.execute("DELETE FROM leases WHERE sha256 = ?", (sha,))
        except BaseException:
            if dst.exists():
                os.replace(dst, src)
            raise
        return Change(sha, filename, actual, to, int(row[3]) + 1)

    def _move_file(self, src: Path, dst: Path, sha: str, missing_ok: bool = False) -> bool:
        """Move the file; False if it was nowhere and missing_ok (else WorkspaceError)."""
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.exists():
            os.replace(src, dst)
            return True
        if dst.exists():
            return True
        if missing_ok or src.parent == self.trash_dir:
            return False
        raise WorkspaceError(f"The file of image {sha[:12]} is missing ({src}); run the consistency check.")

    def trashed(self) -> list[ImageRecord]:
        with self._db() as db:
            rows = db.execute(f"SELECT {_record_columns()} FROM images WHERE status = 'trashed' "
                              "ORDER BY added_at").fetchall()
        return [self._record(r, trashed=True) for r in rows]

    @storage_errors("Restoring images")
    def restore_images(self, shas: Iterable[str], session: str | None = None) -> int:
        """Bring trashed images back to their class (or the inbox if the class is gone)."""
        done = 0
        for sha in dict.fromkeys(shas):
            with self._tx() as db:
                row = db.execute("SELECT class FROM images WHERE sha256 = ? AND status = 'trashed'",
                                 (sha,)).fetchone()
                if row is None:
                    continue
                cls = row[0] if row[0] is not None and self._find_class(db, row[0]) == row[0] else INBOX
                done += isinstance(self._relocate(db, sha, cls, TRASH, None, session), Change)
        return done

    # --- adding: engine.store.ingest reads and checks the files, these two methods store them -------------------------
    def add_files(self, items: Iterable[tuple[str, bytes] | str | Path], class_name: str | None = None,
                  **options: Any) -> AddReport:
        """engine.store.ingest.add_files(self, ...): images from (name, bytes) pairs or paths to a class (None: inbox)."""
        from engine.store import ingest  # imported on use: engine.ingest imports this module

        return ingest.add_files(self, items, class_name, **options)

    def add_zip(self, source: str | Path | bytes | io.IOBase, class_name: str | None = None,
                **limits: int) -> AddReport:
        """engine.store.ingest.add_zip(self, ...): the images of a zip file, its folders as classes where they look so."""
        from engine.store import ingest

        return ingest.add_zip(self, source, class_name, **limits)

    def import_image_dir(self, path: str | Path, progress: Callable[[int, int], None] | None = None) -> AddReport:
        """engine.store.ingest.import_image_dir(self, ...): an existing image_dir (one subfolder per class)."""
        from engine.store import ingest

        return ingest.import_image_dir(self, path, progress)

    def _use_class(self, name: str, create: bool = True) -> tuple[str, bool]:
        """For engine.store.ingest: the existing class spelled like `name` (case-insensitively), else `name` created
        (WorkspaceError when not `create`). `name` must be sanitised. Returns (class, whether it was created)."""
        with self._tx() as db:
            existing = self._find_class(db, name)
            if existing is None and not create:
                raise WorkspaceError(f"There is no class '{name}'.")
            name = existing or name
            return name, self._ensure_class(db, name)

    def _add_image(self, sha: str, data: bytes, class_name: str | None, filename: str, fallback: str,
                   source_name: str, pixels: Any = None) -> bool:
        """For engine.store.ingest, its only way into the index: in one transaction, write `data` (already checked and
        decoded into `pixels`) to class_name's folder (None: the inbox) and insert its row. The file is named
        `filename`, or `fallback` when another image has that name (compared case-insensitively, as folders are
        on macOS and Windows). False, and nothing written, when the image is already in the project (another
        session added it meanwhile); a trashed copy's row is replaced. The thumbnail is cached afterwards."""
        with self._tx() as db:
            row = db.execute("SELECT status FROM images WHERE sha256 = ?", (sha,)).fetchone()
            if row is not None and row[0] == "ok":
                return False
            if row is not None:  # it was in the trash: re-adding brings it back under a fresh row
                db.execute("DELETE FROM images WHERE sha256 = ?", (sha,))
            if db.execute("SELECT 1 FROM images WHERE lower(filename) = lower(?)", (filename,)).fetchone():
                filename = fallback
            if class_name is not None:
                self._ensure_class(db, class_name)
            dest = self._location(class_name, filename)
            atomic_write_bytes(dest, data)
            try:
                db.execute("INSERT INTO images (sha256, class, filename, source_name, added_at, status) "
                           "VALUES (?, ?, ?, ?, ?, 'ok')", (sha, class_name, filename, source_name, time.time()))
            except BaseException:
                dest.unlink(missing_ok=True)
                raise
        if pixels is not None:
            try:
                self._write_thumbnail(sha, pixels)
            except Exception as exc:  # a thumbnail is a cache: never fail an upload over it
                log.warning("thumbnail for %s failed: %r", source_name, exc)
        return True

    # --- thumbnails -----------------------------------------------------------------------------------------------
    def _write_thumbnail(self, sha: str, pixels) -> bytes:
        from PIL import Image

        img = Image.fromarray(pixels)
        img.thumbnail((THUMB_SIZE, THUMB_SIZE))
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=85)
        data = buf.getvalue()
        atomic_write_bytes(self.thumbs_dir / f"{sha}.jpg", data)
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
            return self._write_thumbnail(sha, load_image(path))
        except ImageError as exc:
            raise WorkspaceError(str(exc)) from exc

    # --- consistency ----------------------------------------------------------------------------------------------
    def consistency_check(self, repair: bool = False) -> ConsistencyReport:
        """engine.store.check.consistency_check(self, repair): compare the index with the folders (and repair)."""
        from engine.store import check  # imported on use: engine.check imports this module

        return check.consistency_check(self, repair)


if __name__ == "__main__":  # the older spelling of `python -m engine.store.check check <project>`
    from engine.store.check import main

    sys.exit(main())
