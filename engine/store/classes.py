"""Class edits: create, rename, merge and delete classes, and the sorter's shortcut key of each. Deleting or
merging a class moves its images (to the inbox, or into the target class); no image is ever deleted here."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterable, Sequence

from engine.store.errors import WorkspaceError, storage_errors
from engine.store.moves import ImageMoves
from engine.store.names import INBOX, name_key, sanitize_class_name
from engine.store.records import ActionResult

log = logging.getLogger(__name__)


class ClassEdits(ImageMoves):
    """A project index whose classes can be edited (merging and deleting move images, hence ImageMoves)."""

    @storage_errors("Saving the class keys")
    def class_keys(self, keys: Sequence[str]) -> dict[str, str]:
        """{class: shortcut key}. A class keeps its key for good (renames too); a class without one gets the first
        free key of `keys` (in the caller's order), so creating a class never renumbers the others."""
        keys = list(keys)
        with self.connect() as db:
            rows = db.execute("SELECT name, shortcut FROM classes ORDER BY name").fetchall()
        assigned = {n: k for n, k in rows if k in keys}
        if len(assigned) == len(rows) or len(assigned) >= len(keys):
            return assigned
        with self.transaction() as db:  # re-read: another session may be assigning at the same moment
            rows = db.execute("SELECT name, shortcut FROM classes ORDER BY name").fetchall()
            assigned = {n: k for n, k in rows if k in keys}
            free = [k for k in keys if k not in set(assigned.values())]
            for name, _ in rows:
                if name not in assigned and free:
                    assigned[name] = free.pop(0)
                    db.execute("UPDATE classes SET shortcut = ? WHERE name = ?", (assigned[name], name))
        return assigned

    @storage_errors("Creating the class")
    def create_class(self, name: str) -> str:
        name = sanitize_class_name(name)
        with self.transaction() as db:
            existing = self.find_class(db, name)
            if existing is not None:
                raise WorkspaceError(f"Class '{existing}' already exists.")
            self.ensure_class(db, name)
        return name

    @storage_errors("Renaming the class")
    def rename_class(self, old: str, new: str) -> str:
        new = sanitize_class_name(new)
        with self.transaction() as db:
            self.require_class(db, old)
            if new == old:
                return new
            clash = self.find_class(db, new)
            if clash is not None and clash != old:
                raise WorkspaceError(f"Class '{clash}' already exists: merge the classes instead.")
            src, dst = self.images_dir / old, self.images_dir / new
            src.mkdir(parents=True, exist_ok=True)
            if dst.exists() and dst.resolve() != src.resolve():
                if any(dst.iterdir()):
                    raise WorkspaceError(f"A folder '{new}' with files already exists in {self.images_dir}; "
                                         "run the consistency check first.")
                dst.rmdir()
            if name_key(old) == name_key(new):  # a case-only rename: one folder on a case-insensitive file system
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
        with self.connect() as db:
            for s in sources:
                self.require_class(db, s)
        target = sanitize_class_name(target)
        with self.transaction() as db:
            existing = self.find_class(db, target)
            target = existing or target
            self.ensure_class(db, target)
        moved = 0
        for s in sources:
            moved += self.move(self._shas_of_class(s), target)
            self._drop_class(s)
        return moved

    def delete_class(self, name: str) -> int:
        """Remove a class; its images go to the inbox (nothing is deleted). Returns how many were moved."""
        return self.remove_class(name).done

    @storage_errors("Deleting the class")
    def remove_class(self, name: str, session: str | None = None) -> ActionResult:
        """delete_class, returning the moves it made: undo() takes them (once the class exists again)."""
        with self.connect() as db:
            self.require_class(db, name)
        shas = self._shas_of_class(name)
        # an image someone moved out of the class meanwhile stays where they put it
        result = self.act(shas, INBOX, expected=dict.fromkeys(shas, name), session=session)
        self._drop_class(name)
        return result

    def _shas_of_class(self, name: str) -> list[str]:
        with self.connect() as db:
            return [r[0] for r in db.execute(
                "SELECT sha256 FROM images WHERE class = ? AND status = 'ok'", (name,))]

    def _drop_class(self, name: str) -> None:
        with self.transaction() as db:
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

