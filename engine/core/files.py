"""The one rule for names that are never photos or classes: what every scan, import and listing skips.

Dot files and folders (macOS' `._name` resource forks and `.DS_Store`, editors' and git's files), the `__MACOSX`
folder that macOS' zip tool adds, and the other operating-system litter that lands in photo folders.
"""

from __future__ import annotations

from collections.abc import Iterable

JUNK_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini", ".gitkeep", ".gitignore"})  # compared lower-case
JUNK_FOLDERS = frozenset({"__MACOSX"})


def is_hidden(name: str) -> bool:
    """A file or folder name to skip silently (not reported as a bad image)."""
    return name.startswith(".") or name in JUNK_FOLDERS or name.lower() in JUNK_NAMES


def has_hidden_part(parts: Iterable[str]) -> bool:
    """Whether any part of a relative path is hidden (a photo inside `__MACOSX/` or `.git/` is skipped too)."""
    return any(is_hidden(p) for p in parts)
