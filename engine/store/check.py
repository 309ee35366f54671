"""Does a project's index still agree with its folders? People may edit the folders by hand (the layout is the plain
image_dir one on purpose), so this compares the two and, when asked, repairs the index without deleting anything.

    python -m engine.store.check check <project folder or name> [--repair]

exits 0 when the folders and the index agree (after --repair: when they were repaired), 1 when they disagree, 2 on
an error.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.core.fileio import TEMP_PREFIX
from engine.store import ingest
from engine.store.workspace import (
    WORKSPACE_ENV,
    Project,
    Workspace,
    WorkspaceError,
    sanitize_class_name,
    storage_errors,
)


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
def consistency_check(project: Project, repair: bool = False) -> ConsistencyReport:
    """Compare the index with the folders (someone may have edited them by hand).

    With repair=True: rows follow files that moved to another class folder; rows whose file is gone are dropped;
    untracked files are added (class folders that are no class yet become classes; unreadable files go to
    trash/); leftover temp files are removed.
    """
    report = ConsistencyReport(repaired=repair)
    with project._db() as db:
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
        expected = project._location(cls, filename)
        actual = on_disk.get(filename)
        if actual is None:
            report.missing_files.append(sha)
            if repair:
                with project._tx() as db:
                    db.execute("DELETE FROM images WHERE sha256 = ?", (sha,))
                report.notes.append(f"forgot {filename}: its file is gone")
        elif actual != expected:
            report.misplaced.append(sha)
            if repair:
                new_cls = None if actual.parent == project.inbox_dir else actual.parent.name
                with project._tx() as db:
                    if new_cls is not None:
                        project._ensure_class(db, new_cls)
                    db.execute("UPDATE images SET class = ?, version = version + 1, changed_by = NULL "
                               "WHERE sha256 = ?", (new_cls, sha))
                report.notes.append(f"{filename} is in {new_cls or 'the inbox'} now")
    untracked = [p for name, p in on_disk.items() if name not in tracked]
    report.untracked_files = sorted(str(p.relative_to(project.path)) for p in untracked)
    if repair:
        _repair_untracked(project, untracked_dirs, untracked, report)
    return report


def _repair_untracked(project: Project, folders: list[Path], files: list[Path], report: ConsistencyReport) -> None:
    """Class folders made by hand become classes; files nobody tracks are added, or set aside in trash/."""
    for folder in folders:
        try:
            name = sanitize_class_name(folder.name)
            with project._tx() as db:
                project._ensure_class(db, name)
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


# ------------------------------------------------------------------------------------------------------------------
# command line: python -m engine.store.check check <project> [--repair]
# ------------------------------------------------------------------------------------------------------------------
def _print_check(report: ConsistencyReport, names: dict[str, str]) -> None:
    sections = [("rows whose file is gone", [names.get(s, s) for s in report.missing_files]),
                ("files moved to another folder by hand", [names.get(s, s) for s in report.misplaced]),
                ("files the index does not know", report.untracked_files),
                ("folders in images/ that are no class", report.unknown_folders)]
    for title, items in sections:
        if items:
            print(f"{len(items)} {title}:")
            for item in items[:200]:
                print(f"  {item}")
    for note in report.notes:
        print(f"repaired: {note}")


def main(argv: list[str] | None = None) -> int:
    """`check`: compare a project's folders with its index; 0 when they agree (after --repair: when repaired)."""
    parser = argparse.ArgumentParser(prog="python -m engine.store.check",
                                     description="Project maintenance for Retrain Studio workspaces.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="Report (and with --repair fix) differences between folders and index.")
    check.add_argument("project", help=f"a project folder, or a project name (slug) in ${WORKSPACE_ENV}")
    check.add_argument("--repair", action="store_true",
                       help="rows follow files moved by hand, rows of vanished files are dropped, unknown files are "
                            "added (unreadable ones go to trash/); nothing is deleted")
    args = parser.parse_args(argv)
    path = Path(args.project).expanduser()
    if not (path / "project.db").is_file():
        ws = Workspace()
        if not ws.exists(args.project):
            print(f"error: {args.project} is not a project folder (no project.db), nor a project in {ws.root}",
                  file=sys.stderr)
            return 2
        path = ws.root / args.project
    try:
        project = Project(path)
        with project._db() as db:
            names = dict(db.execute("SELECT sha256, filename FROM images WHERE status = 'ok'").fetchall())
        report = consistency_check(project, repair=args.repair)
        _print_check(report, names)
        if args.repair:
            report = consistency_check(project)
            _print_check(report, names)
    except (WorkspaceError, sqlite3.Error, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if report.ok:
        print(f"OK: the folders of {path} agree with its index.")
        return 0
    print(f"{path}: the folders and the index disagree; run again with --repair to fix it.")
    return 1


if __name__ == "__main__":
    sys.exit(main())
