"""Where this machine keeps what it computed once and may compute again (the backbones' files, features, templates,
file hashes): $RETRAIN_STUDIO_CACHE, else $XDG_CACHE_HOME/retrain-studio, else ~/.cache/retrain-studio. Everything
under it can be deleted; it is made again when needed."""

from __future__ import annotations

import os
from pathlib import Path

from engine.core.fileio import atomic_write_bytes


def cache_root() -> Path:
    root = os.environ.get("RETRAIN_STUDIO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "retrain-studio")
    return Path(root)


def write_kept(path: Path, data: bytes, kept: int) -> None:
    """Write one entry of a cache folder (atomically), then delete its oldest entries (same suffix) beyond the newest
    `kept`: per-project entries (duplicate groups, previous fits) must not grow without bound. OSError is the
    caller's to report."""
    atomic_write_bytes(path, data)
    for old in sorted(path.parent.glob(f"*{path.suffix}"), key=lambda p: p.stat().st_mtime)[:-kept]:
        old.unlink(missing_ok=True)
