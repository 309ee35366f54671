"""Does a project's index still agree with its folders? People may edit the folders by hand (the layout is the plain
image_dir one on purpose), so this compares the two and, when asked, repairs the index without deleting anything.

The command line is `python -m engine check <project> [--repair]` (engine.cli.check); the Data page has a button.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.core.fileio import TEMP_PREFIX
from engine.store import ingest
from engine.store.errors import WorkspaceError, storage_errors
from engine.store.index import DB_FILE, ProjectIndex
from engine.store.names import sanitize_class_name


@dataclass
class ConsistencyReport:
    missing_files: list[str] = field(default_factory=list)  # rows whose file is nowhere (sha256)
    untracked_files: list[str] = field(default_factory=list)  # files under images/ or inbox/ with no row
    misplaced: list[str] = field(default_factory=list)  # rows whose file sits in another class folder (sha256)
    unknown_folders: list[str] = field(default_factory=list)  # folders in images/ that are no class
    repaired: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing_files or self.untracked_files or self.misplaced or self.unknown_folders)


@storage_errors("Checking the project")
def consistency_check(project: ProjectIndex, repair: bool = False) -> ConsistencyReport:
    """Compare the index with the folders (someone may have edited them by hand).

    With repair=True: rows follow files that moved to another class folder; rows whose file is gone are dropped;
    untracked files are added (class folders that are no class yet become classes; unreadable files go to
    trash/); leftover temp files are removed.
    """
    report = ConsistencyReport(repaired=repair)
    with project.connect() as db:
        rows = db.execute("SELECT sha256, class, filename FROM images WHERE status = 'ok'").fetchall()
        classes = {r[0] for r in db.execute("SELECT name FROM classes")}
    on_disk: dict[str, Path] = {}  # filename -> path, for files in images/*/ and inbox/
    untracked_dirs: list[Path] = []
    for folder in [project.inbox_dir, *sorted(p for p in project.images_dir.glob("*") if p.is_dir())]:
        if folder.parent == project.images_dir and folder.name not in classes:
            report.unknown_folders.append(folder.name)
            untracked_dirs.append(folder)
        for f in folder.iterdir() if folder.is_dir() else []:
            if f.is_file():
                if f.name.startswith(TEMP_PREFIX):
                    if repair and time.time() - f.stat().st_mtime > 3600:
                        f.unlink(missing_ok=True)
                    continue
                on_disk[f.name] = f
    for cls in sorted(classes):
        if repair and not (project.images_dir / cls).is_dir():
            (project.images_dir / cls).mkdir(parents=True, exist_ok=True)
    tracked = set()
    for sha, cls, filename in rows:
        tracked.add(filename)
        expected = project.location(cls, filename)
        actual = on_disk.get(filename)
        if actual is None:
            report.missing_files.append(sha)
            if repair:
                with project.transaction() as db:
                    db.execute("DELETE FROM images WHERE sha256 = ?", (sha,))
                report.notes.append(f"forgot {filename}: its file is gone")
        elif actual != expected:
            report.misplaced.append(sha)
            if repair:
                new_cls = None if actual.parent == project.inbox_dir else actual.parent.name
                with project.transaction() as db:
                    if new_cls is not None:
                        project.ensure_class(db, new_cls)
                    db.execute("UPDATE images SET class = ?, version = version + 1, changed_by = NULL "
                               "WHERE sha256 = ?", (new_cls, sha))
                report.notes.append(f"{filename} is in {new_cls or 'the inbox'} now")
    untracked = [p for name, p in on_disk.items() if name not in tracked]
    report.untracked_files = sorted(str(p.relative_to(project.path)) for p in untracked)
    if repair:
        _repair_untracked(project, untracked_dirs, untracked, report)
    return report


def _repair_untracked(project: ProjectIndex, folders: list[Path], files: list[Path], report: ConsistencyReport) -> None:
    """Class folders made by hand become classes; files nobody tracks are added, or set aside in trash/."""
    for folder in folders:
        try:
            name = sanitize_class_name(folder.name)
            with project.transaction() as db:
                project.ensure_class(db, name)
        except WorkspaceError:
            pass
    for p in files:
        data = p.read_bytes()
        cls = None if p.parent == project.inbox_dir else p.parent.name
        tmp_holder = project.trash_dir / f".check-{time.time_ns()}-{p.name}"
        project.trash_dir.mkdir(parents=True, exist_ok=True)
        os.replace(p, tmp_holder)  # out of the way, so add_files can write the file under its own name
        try:
            cls = sanitize_class_name(cls) if cls is not None else None
        except WorkspaceError:
            cls = None
        rep = ingest.add_files(project, [(p.name, data)], cls)
        if rep.added or rep.duplicates:
            tmp_holder.unlink(missing_ok=True)
            report.notes.append(f"{p.name}: {'added' if rep.added else 'duplicate, removed'}")
        else:
            os.replace(tmp_holder, project.trash_dir / p.name)
            reason = rep.rejected[0][1] if rep.rejected else "unreadable"
            report.notes.append(f"{p.name}: moved to trash/ ({reason})")


def rebuild_index(project_path: str | Path) -> ConsistencyReport:
    """A new index made from the project's folders, for when project.db is damaged (DamagedIndexError). The damaged
    file (and its -wal/-shm) is kept beside it as project.db.damaged-<time>; images in images/<class>/ and inbox/
    are indexed again, each class folder a class; files in trash/ stay on disk, no longer listed as trashed."""
    path = Path(project_path)
    name = _salvage_name(path / DB_FILE) or path.name
    aside = f"{DB_FILE}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
    for suffix in ("", "-wal", "-shm"):  # a WAL file of the damaged index must not be replayed into the new one
        if (path / f"{DB_FILE}{suffix}").exists():
            os.replace(path / f"{DB_FILE}{suffix}", path / f"{aside}{suffix}")
    project = ProjectIndex.create(path, name)
    report = consistency_check(project, repair=True)
    report.notes.insert(0, f"a new index was made from the folders; the damaged one is kept as {aside}")
    trashed = [p for p in project.trash_dir.iterdir() if p.is_file() and not p.name.startswith(".")]
    if trashed:
        report.notes.append(f"{len(trashed)} file(s) in trash/ stay on disk, no longer listed as trashed")
    return report


def _salvage_name(db_path: Path) -> str | None:
    """The project's name from a damaged index, when that much of it can still be read."""
    try:
        db = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'name'").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return row[0] if row and row[0] else None
