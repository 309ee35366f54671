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


def name_key(name: str) -> str:
    """What two names are compared by: one Unicode normal form (NFC) and full case folding, so "café", "CAFÉ" and
    "Café" typed with a combining accent are one name, as they are one folder on macOS and Windows."""
    return unicodedata.normalize("NFC", name).casefold()


def invisible_characters(text: str) -> list[str]:
    """The characters of `text` that show as nothing or reorder what follows (zero-width, byte-order mark,
    right-to-left override, other controls): two names that look alike must be alike."""
    return [c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Co", "Cs", "Cn")]


def windows_reserved(name: str) -> bool:
    """A name Windows cannot hold as a file or folder: a device name, with or without an extension ("con.txt")."""
    return name.split(".", 1)[0].strip().lower() in WINDOWS_RESERVED_NAMES


def check_display_name(text: str, what: str) -> str:
    """A project's or class's name as typed, in NFC; refused (WorkspaceError, with the reason) when it holds
    characters that cannot be seen."""
    text = unicodedata.normalize("NFC", str(text)).strip()
    hidden = invisible_characters(text)
    if hidden:
        codes = ", ".join(sorted({f"U+{ord(c):04X}" for c in hidden}))
        raise WorkspaceError(f"The {what} name '{text.encode('ascii', 'backslashreplace').decode()}' holds characters "
                             f"that cannot be seen ({codes}); type it again without them.")
    return text


def slugify(name: str) -> str:
    """'My Flowers!' -> 'my-flowers'; never empty, never a path, never a name Windows reserves."""
    slug = re.sub(r"[^a-z0-9]+", "-", _ascii_fold(name).lower()).strip("-")[:48].strip("-") or "project"
    return f"{slug}-project" if windows_reserved(slug) else slug


def sanitize_class_name(name: str) -> str:
    """Validate a class name (it becomes a folder name and a label). Raises WorkspaceError with the reason."""
    text = check_display_name(name, "class")
    if not text:
        raise WorkspaceError("A class name cannot be empty.")
    if len(text) > 64:
        raise WorkspaceError(f"Class name '{text[:20]}...' is too long (64 characters at most).")
    if text == INBOX or text.startswith("__"):
        raise WorkspaceError(f"'{text}' is reserved; choose another class name.")
    if re.search(r"[\\/\x00-\x1f\x7f<>:\"|?*]", text) or text in (".", "..") or text.startswith("."):
        raise WorkspaceError(f"Class name '{text}' cannot contain / \\ : * ? \" < > | or start with a dot.")
    if text.endswith("."):
        raise WorkspaceError(f"Class name '{text}' cannot end with a dot (Windows drops it from folder names).")
    if windows_reserved(text):
        raise WorkspaceError(f"'{text}' is a reserved device name on Windows; choose another class name.")
    return text


def place_label(place: str | None) -> str:
    """How a place reads in a message: 'roses', 'the inbox', 'the trash'."""
    if place in (None, INBOX):
        return "the inbox"
    if place == TRASH:
        return "the trash"
    return f"'{place}'"
