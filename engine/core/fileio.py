"""Atomic file writes and tolerant JSON reads, shared by the workspace, runs, jobs, export and caches.

A file written here either has its complete new content or its old one: data goes to a temporary file in the
same folder (named TEMP_PREFIX..., which the workspace consistency check recognises as debris) and is then
renamed over the target.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

TEMP_PREFIX = ".tmp-"
# mkstemp makes 0600 files; a model or bundle must get the mode any other new file gets (a container's non-root
# user has to read what a Dockerfile copies in). Read once: os.umask can only be read by setting it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextmanager
def made_once(entry: Path, done: Path | None = None) -> Iterator[bool]:
    """For a machine-wide cache entry that takes seconds to make (a converted backbone, a template; `done` exists
    once it is complete, default: the entry itself): yields whether the caller still has to make it. Processes that
    need it at once wait on one lock file beside it, so it is made once, not once per process (the app, a CLI run
    and a test worker often start together); the others then find it made. Where the OS has no flock (Windows),
    each makes its own and the atomic rename keeps one."""
    done = entry if done is None else done
    if done.exists():
        yield False
        return
    lock = entry.parent / f"{entry.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        if fcntl is not None:
            fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        yield not done.exists()


@contextmanager
def try_lock(path: Path) -> Iterator[bool]:
    """Hold an exclusive lock on the file `path` for the block, if no other process holds it: yields whether it
    got it (without waiting). Released when the block ends or the process dies. Always True without flock."""
    with open(path, "a") as fh:
        if fcntl is None:
            yield True
            return
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path`; renamed onto it when the block succeeds, removed when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX, suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = True) -> None:
    """Write to a temporary name and rename: readers see the old file or the whole new one. durable=False skips
    the fsync, for a cache that can be remade (a thumbnail): half of an import's time went to fsyncs."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# Smaller JSON files are indented for people reading them; larger ones (a 24,000-image run's metrics.json is 10 MB)
# stay on one line: json indents only in its pure-Python encoder, ~4x slower than its C one (1.4 s at that size).
PRETTY_JSON_BYTES = 1 << 16


def atomic_write_json(path: str | Path, obj: Any, sort_keys: bool = False) -> None:
    text = json.dumps(obj, sort_keys=sort_keys, default=json_default)
    if len(text) < PRETTY_JSON_BYTES:
        text = json.dumps(obj, indent=2, sort_keys=sort_keys, default=json_default)
    atomic_write_text(path, text)


def json_default(o: Any) -> Any:
    """NumPy scalars and arrays as plain JSON; anything else (paths, ...) as its string."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def read_json(path: str | Path) -> dict[str, Any]:
    """The JSON object in `path`, or {} when it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def thread_sqlite(local: threading.local, path: str | Path) -> sqlite3.Connection:
    """This thread's connection to a cache database (one per thread: sqlite3 connections are not shared), in WAL
    mode with a busy timeout so several processes can read and write it at once."""
    conn = getattr(local, "conn", None)
    if conn is None:
        conn = sqlite3.connect(path, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        local.conn = conn
    return conn
