"""The workspace (a folder of projects) and a project as the app and the CLI use it.

`Project` is the project index with everything that changes it: moves and undo (engine.store.moves), class edits
(engine.store.classes), sorters' leases (engine.store.leases), adding images (engine.store.ingest) and the
folder-against-index check (engine.store.check). Those modules hold the rules; this one puts them together.
The workspace root is `$RETRAIN_STUDIO_WORKSPACE`, else `./workspace`.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from engine.store import check, ingest
from engine.store.check import ConsistencyReport
from engine.store.classes import ClassEdits
from engine.store.errors import WORKSPACE_ENV, WorkspaceError, storage_error_message, storage_errors
from engine.store.index import DB_FILE
from engine.store.ingest import AddReport
from engine.store.leases import InboxLeases
from engine.store.names import check_display_name, slugify
from engine.store.records import ProjectInfo

log = logging.getLogger(__name__)


class Project(ClassEdits, InboxLeases):
    """A project: its index and folders, and every way to change them."""

    def add_files(self, items: Iterable[tuple[str, bytes] | str | Path], class_name: str | None = None,
                  **options: Any) -> AddReport:
        """Images from (name, bytes) pairs or paths to a class (None: inbox); see engine.store.ingest.add_files."""
        return ingest.add_files(self, items, class_name, **options)

    def add_zip(self, source: str | Path | bytes | io.IOBase, class_name: str | None = None,
                **limits: int) -> AddReport:
        """The images of a zip file, its folders as classes where they look so (engine.store.ingest.add_zip)."""
        return ingest.add_zip(self, source, class_name, **limits)

    def import_image_dir(self, path: str | Path, progress: Callable[[int, int], None] | None = None) -> AddReport:
        """An existing image_dir, one subfolder per class (engine.store.ingest.import_image_dir)."""
        return ingest.import_image_dir(self, path, progress)

    def consistency_check(self, repair: bool = False) -> ConsistencyReport:
        """Compare the index with the folders, and repair when asked (engine.store.check.consistency_check)."""
        return check.consistency_check(self, repair)


def default_root() -> Path:
    return Path(os.environ.get(WORKSPACE_ENV) or "workspace").expanduser().resolve()


class Workspace:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser().resolve() if root else default_root()

    def _project_dirs(self) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        for p in sorted(self.root.iterdir()):
            if p.is_dir() and not p.name.startswith(".") and (p / DB_FILE).exists():
                yield p

    def list_projects(self) -> list[ProjectInfo]:
        """Every project, also one whose index cannot be read now (its `problem` says why: the user can act)."""
        out = []
        for p in self._project_dirs():
            try:
                out.append(Project(p).info())
            except (sqlite3.Error, OSError, WorkspaceError) as exc:
                log.warning("project %s cannot be read: %s", p, exc)
                problem = str(exc) if isinstance(exc, WorkspaceError) else \
                    storage_error_message("Reading the project", exc) or f"it cannot be read ({exc})"
                out.append(ProjectInfo(p.name, p.name, 0.0, 0, 0, 0, problem=problem))
        return out

    def exists(self, slug: str) -> bool:
        return bool(slug) and slug == slugify(slug) and (self.root / slug / DB_FILE).exists()

    @storage_errors("Creating the project")
    def create_project(self, name: str) -> Project:
        name = check_display_name(name, "project")
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
        project = Project(self.root / slug)
        project.verify()
        return project

    @storage_errors("Renaming the project")
    def rename_project(self, slug: str, new_name: str) -> Project:
        """Changes the display name; the folder (slug) stays, so links and running jobs keep working."""
        project = self.open_project(slug)
        new_name = check_display_name(new_name, "project")
        if not new_name:
            raise WorkspaceError("Give the project a name.")
        project.set_meta("name", new_name[:100])
        return project

    @storage_errors("Deleting the project")
    def delete_project(self, slug: str) -> None:
        """Gone for good (its runs too). Whether a job still runs is the run layer's to say: the app deletes through
        engine.runs.jobs.delete_project, which refuses then."""
        project = self.open_project(slug)
        # rename first so a half-finished delete never looks like a project
        doomed = self.root / f".deleting-{slug}-{os.getpid()}-{time.time_ns()}"
        os.replace(project.path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        log.info("deleted project %s", slug)


# ------------------------------------------------------------------------------------------------------------------
# project
