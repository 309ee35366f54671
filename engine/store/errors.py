"""What goes wrong with project storage, in the user's words: a WorkspaceError carries a message that says what to
do; disk-full and permission errors (OSError or SQLite) become one, never a traceback."""

from __future__ import annotations

import errno
import functools
import logging
import sqlite3
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

WORKSPACE_ENV = "RETRAIN_STUDIO_WORKSPACE"  # where the projects live (engine.store.workspace.default_root)


class WorkspaceError(ValueError):
    """A user-facing problem (bad name, missing project, ...); the message says what to do."""


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
