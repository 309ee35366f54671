"""`python -m engine check <project> [--repair]`: compare a project's folders with its index (engine.store.check).

Exits 0 when the folders and the index agree (after --repair: when they were repaired), 1 when they disagree, 2 on
an error.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

from engine.store.check import ConsistencyReport, rebuild_index
from engine.store.errors import WORKSPACE_ENV, DamagedIndexError, WorkspaceError
from engine.store.index import DB_FILE
from engine.store.workspace import Project, Workspace


def add_check_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project", help=f"a project folder, or a project name (slug) in ${WORKSPACE_ENV}")
    parser.add_argument("--repair", action="store_true",
                        help="rows follow files moved by hand, rows of vanished files are dropped, unknown files are "
                             "added (unreadable ones go to trash/); nothing is deleted")


def run_check(args: argparse.Namespace) -> int:
    path = Path(args.project).expanduser()
    if not (path / DB_FILE).is_file():
        ws = Workspace()
        if not ws.exists(args.project):
            print(f"error: {args.project} is not a project folder (no {DB_FILE}), nor a project in {ws.root}",
                  file=sys.stderr)
            return 2
        path = ws.root / args.project
    try:
        report = _check(path, args.repair)
    except (WorkspaceError, sqlite3.Error, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if report.ok:
        print(f"OK: the folders of {path} agree with its index.")
        return 0
    print(f"{path}: the folders and the index disagree; run again with --repair to fix it.")
    return 1


def _check(path: Path, repair: bool) -> ConsistencyReport:
    """Check (and repair) the project at `path`; a damaged index is rebuilt from the folders when repairing."""
    try:
        project = Project(path)
        project.verify()
    except DamagedIndexError:
        if not repair:
            raise
        _print_report(rebuild_index(path), {})
        project = Project(path)
    names = {r.sha256: r.filename for r in project.images()}
    report = project.consistency_check(repair=repair)
    _print_report(report, names)
    if repair:
        report = project.consistency_check()
        _print_report(report, names)
    return report


def _print_report(report: ConsistencyReport, names: dict[str, str]) -> None:
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
