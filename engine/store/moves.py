"""Moving, trashing, restoring and undoing, safely while several people sort one project and a run reads it.

Every change says what it expects: `act()` moves, trashes or restores an image only if it is still where the user
saw it, and returns a `Conflict` ("already moved to roses by someone else") otherwise. Every change bumps the
image's `version` and records the session that made it; `undo()` reverts a `Change` only while the image still has
that version, so one person's undo never reverts another person's decision. Each image changes in its own short
transaction, file and row together.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from engine.store.errors import WorkspaceError, storage_errors
from engine.store.index import ProjectIndex
from engine.store.leases import LEASE_SECONDS
from engine.store.names import INBOX, TRASH
from engine.store.records import ActionResult, Change, Conflict, StaleActionError


class ImageMoves(ProjectIndex):
    """A project index whose images can be moved between classes, the inbox and the trash."""

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
            with self.connect() as db:
                self.require_class(db, to)
        result = ActionResult()
        for sha in dict.fromkeys(shas):
            want = expected.get(sha, ...) if expected is not None else ...
            want = INBOX if want is None else want
            with self.transaction() as db:
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
            with self.transaction() as db:
                back = change.before
                if back not in (INBOX, TRASH) and self.find_class(db, back) != back:
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
            self.require_class(db, to)
        old_class, status = row[0], row[2]
        src = self.trash_dir / filename if status == "trashed" else self.location(old_class, filename)
        dst = self.trash_dir / filename if to == TRASH else self.location(None if to == INBOX else to, filename)
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

    @storage_errors("Restoring images")
    def restore_images(self, shas: Iterable[str], session: str | None = None) -> int:
        """Bring trashed images back to their class (or the inbox if the class is gone)."""
        done = 0
        for sha in dict.fromkeys(shas):
            with self.transaction() as db:
                row = db.execute("SELECT class FROM images WHERE sha256 = ? AND status = 'trashed'",
                                 (sha,)).fetchone()
                if row is None:
                    continue
                cls = row[0] if row[0] is not None and self.find_class(db, row[0]) == row[0] else INBOX
                done += isinstance(self._relocate(db, sha, cls, TRASH, None, session), Change)
        return done
