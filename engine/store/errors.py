"""What goes wrong with project storage, in the user's words: a WorkspaceError carries a message that says what to
do; disk-full and permission errors (OSError or SQLite) become one, never a traceback."""

from __future__ import annotations

import errno
import functools
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

WORKSPACE_ENV = "RETRAIN_STUDIO_WORKSPACE"  # where the projects live (engine.store.workspace.default_root)


class WorkspaceError(ValueError):
    """A user-facing problem (bad name, missing project, ...); the message says what to do."""


class DamagedIndexError(WorkspaceError):
    """project.db cannot be read as the project's index (overwritten, cut short, emptied). The images are plain
    files in the project's folders, so the index can be rebuilt from them (engine.store.check.rebuild_index)."""

    def __init__(self, project_path: Path, reason: str):
        super().__init__(
            f"The index of the project in {project_path} (project.db) is damaged: {reason}. Its images are safe in "
            f"{project_path / 'images'}. Rebuild the index from the folders (the button here, or `python -m engine "
            f"check {project_path} --repair`); the damaged file is kept beside it.")
        self.project_path = project_path


# What SQLite says of a file that is not (or no longer) a database; anything else is not damage.
DAMAGE_WORDS = ("file is not a database", "database disk image is malformed", "malformed database schema")


def damage_reason(exc: BaseException) -> str | None:
    """SQLite's words when `exc` says the database file is damaged, else None."""
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        text = str(exc)
        return text if any(w in text.lower() for w in DAMAGE_WORDS) else None
    return None


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
