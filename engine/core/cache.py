"""Where this machine keeps what it computed once and may compute again (the backbones' files, features, templates,
file hashes): $RETRAIN_STUDIO_CACHE, else $XDG_CACHE_HOME/retrain-studio, else ~/.cache/retrain-studio. Everything
under it can be deleted; it is made again when needed."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    root = os.environ.get("RETRAIN_STUDIO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "retrain-studio")
    return Path(root)
