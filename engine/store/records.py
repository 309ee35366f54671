"""What the store hands out: an image's record, a project's summary, and the outcome of a change (for undo, and
for telling the user what someone else did meanwhile)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine.store.errors import WorkspaceError
from engine.store.names import TRASH, place_label


@dataclass(frozen=True)
class ImageRecord:
    sha256: str
    class_name: str | None  # None: inbox
    filename: str
    source_name: str
    added_at: float
    path: Path



@dataclass(frozen=True)
class Change:
    """One applied change to one image: enough to undo it, and to tell whether someone changed it since."""
    sha256: str
    filename: str
    before: str  # a class name, INBOX or TRASH
    after: str
    version: int  # the image's version right after this change


@dataclass(frozen=True)
class Conflict:
    """An action refused because the image is no longer where the user saw it (or changed since)."""
    sha256: str
    filename: str
    expected: str  # where the user saw it
    actual: str | None  # where it is now (class, INBOX, TRASH), None: no longer in the project
    by_other: bool  # the last change was made by another session (or by hand)
    undo: bool = False

    def message(self) -> str:
        who = " by someone else" if self.by_other else ""
        if self.actual is None:
            return f"'{self.filename}' is no longer in the project (removed{who})."
        if self.undo:
            if self.actual == self.expected:
                return f"'{self.filename}' was changed{who} since; not undone (it stays in {place_label(self.actual)})."
            return f"'{self.filename}' was moved to {place_label(self.actual)}{who} since; not undone."
        if self.actual == TRASH:
            return f"'{self.filename}' was already moved to the trash{who}."
        return f"'{self.filename}' was already moved to {place_label(self.actual)}{who}."


@dataclass
class ActionResult:
    changes: list[Change] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)

    @property
    def done(self) -> int:
        return len(self.changes)

    def conflict_message(self) -> str | None:
        """One line for the user (the first few conflicts by name), or None when there were none."""
        if not self.conflicts:
            return None
        shown = " ".join(c.message() for c in self.conflicts[:3])
        more = f" (and {len(self.conflicts) - 3} more)" if len(self.conflicts) > 3 else ""
        return shown + more + " The view shows where the images are now."


class StaleActionError(WorkspaceError):
    """Some images were not where the caller expected: the others were changed, these were left alone."""

    def __init__(self, result: ActionResult):
        super().__init__(result.conflict_message() or "Nothing was changed.")
        self.result = result


@dataclass(frozen=True)
class ProjectInfo:
    slug: str
    name: str
    created_at: float
    n_images: int
    n_classes: int
    n_inbox: int
    problem: str | None = None  # why the project cannot be opened now (a damaged index), in the user's words
