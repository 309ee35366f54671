"""The names a project uses: the inbox and trash places, class names (they become folder names and labels) and
project slugs (folder names). Checked here, once, for every way a name comes in (the app, zips, folders, the CLI)."""

from __future__ import annotations

import re
import unicodedata

from engine.store.errors import WorkspaceError

INBOX = "__inbox__"  # pseudo class name for unsorted images (images(), counts())
TRASH = "__trash__"  # pseudo place of an image in the project's trash/ folder (act(), Change, Conflict)

# device names Windows refuses as file or folder names (class names here, file names in engine.store.ingest)
WINDOWS_RESERVED_NAMES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                          *(f"lpt{i}" for i in range(1, 10))}


def _ascii_fold(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def slugify(name: str) -> str:
    """'My Flowers!' -> 'my-flowers'; never empty, never a path."""
    slug = re.sub(r"[^a-z0-9]+", "-", _ascii_fold(name).lower()).strip("-")[:48].strip("-")
    return slug or "project"


def sanitize_class_name(name: str) -> str:
    """Validate a class name (it becomes a folder name and a label). Raises WorkspaceError with the reason."""
    text = unicodedata.normalize("NFC", str(name)).strip()
    if not text:
        raise WorkspaceError("A class name cannot be empty.")
    if len(text) > 64:
        raise WorkspaceError(f"Class name '{text[:20]}...' is too long (64 characters at most).")
    if text == INBOX or text.startswith("__"):
        raise WorkspaceError(f"'{text}' is reserved; choose another class name.")
    if re.search(r"[\\/\x00-\x1f\x7f<>:\"|?*]", text) or text in (".", "..") or text.startswith("."):
        raise WorkspaceError(f"Class name '{text}' cannot contain / \\ : * ? \" < > | or start with a dot.")
    if text.lower() in WINDOWS_RESERVED_NAMES:
        raise WorkspaceError(f"'{text}' is a reserved device name on Windows; choose another class name.")
    return text


def place_label(place: str | None) -> str:
    """How a place reads in a message: 'roses', 'the inbox', 'the trash'."""
    if place in (None, INBOX):
        return "the inbox"
    if place == TRASH:
        return "the trash"
    return f"'{place}'"
