"""What a person decided about findings, kept in the project so a finding marked fine is not shown again."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.core.fileio import atomic_write_json, read_json

DECISIONS_FILE = "curate.json"
CORRECT = "correct"  # the kind under which "this image's label is right" is kept (Review's "Label is correct")


class Decisions:
    """What a person decided about findings ("keep": it is fine), so a kept suspect is not shown again.

    Stored as <project>/curate.json: {"kept": {"<kind>:<key>": {"at": time}}}. Kinds: label, outlier, duplicates
    (key: the sorted SHA-256s of the group, hashed, so a group that gains a member is shown again), correct (key:
    label_key(sha, class): the label is only vouched for while the image has it, so a moved image is a new question).
    """

    def __init__(self, project_path: str | Path):
        self.path = Path(project_path) / DECISIONS_FILE

    def _read(self) -> dict[str, Any]:
        try:
            data = read_json(self.path)
        except (OSError, ValueError):
            return {"kept": {}}
        data.setdefault("kept", {})
        return data

    def kept(self) -> set[str]:
        return set(self._read()["kept"])

    def keep(self, kind: str, key: str) -> bool:
        data = self._read()
        data["kept"][f"{kind}:{key}"] = {"at": time.time()}
        atomic_write_json(self.path, data)
        return True

    def forget(self, kind: str, key: str) -> bool:
        """Take one decision back (an undo); False when it was not there."""
        data = self._read()
        if data["kept"].pop(f"{kind}:{key}", None) is None:
            return False
        atomic_write_json(self.path, data)
        return True

    def confirm_label(self, sha: str, class_name: str) -> bool:
        """A person says `class_name` is the right label of image `sha`, whatever a model predicted."""
        return self.keep(CORRECT, label_key(sha, class_name))

    def forget_all(self) -> int:
        data = self._read()
        n = len(data["kept"])
        data["kept"] = {}
        atomic_write_json(self.path, data)
        return n


def label_key(sha: str, class_name: str) -> str:
    """The key a confirmed label is kept under (a SHA-256 is hex, so the first ':' separates the two)."""
    return f"{sha}:{class_name}"


def label_confirmed(kept: set[str], sha: str, class_name: str) -> bool:
    """Whether a person said image `sha` is rightly labelled `class_name` (`kept`: Decisions.kept())."""
    return f"{CORRECT}:{label_key(sha, class_name)}" in kept


def group_key(shas: Sequence[str]) -> str:
    """The key a duplicate group is kept under: its members' SHA-256s, order-free."""
    return hashlib.sha256("".join(sorted(shas)).encode()).hexdigest()[:24]
