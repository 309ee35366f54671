"""Progress events: one callback signature for the CLI, the app and tests, plus a JSON-lines log on disk.

A training job writes its events to `<run_dir>/events.jsonl`; the app polls that file, so a page reload or a
second browser tab sees the same job, and a worker never needs to touch the UI.

The kinds below are the schema, owned here: emitters pass an `EventKind` (emit refuses any other "type"), readers
compare with one, and `FIELDS` lists what each kind carries (tests/test_events.py checks every emit call against
it). On disk "type" is the kind's plain string, so events.jsonl reads as it always has.

Event kinds (every event has "type" and "time"):
  {"type": "stage", "stage": Stage, "message": str}   a step of the run begins; Stage: "scan"|"prepare"|"embed"|
                    "train"|"fine_tune"|"export"|"compare"|"done" ("compare": the backbone comparison after the
                    bundle; "done": the run is saved)
  {"type": "scan", "done": int, "total": int}   images looked at while scanning the folder (dataset scan progress)
  {"type": "embed", "done": int, "total": int, "cached": int, "images_per_s": float}
  {"type": "epoch", "phase": "head"|"fine_tune", "epoch": int, "loss": float, "accuracy": float,
                    "val_loss": float|None, "val_accuracy": float|None, "elapsed": float, "l2": float (head)}
                    (head: one event per L2 value tried by cross-validation; fine_tune: one per epoch)
  {"type": "export", "done": int, "total": int, "file": str}   one artefact written (export progress)
  {"type": "warning", "message": str, "path": str|None}
  {"type": "result", "val_accuracy": float|None, "metrics_file": str, "l2": float|None,
   "l2_kept": {"changed": int, "limit": int}|None}   the head is trained and metrics.json written (export
                    follows); l2: the L2 strength kept; l2_kept: set when the last search's L2 was kept
                    without a search (images changed since that search, and how many may before it runs again)
  {"type": "error", "message": str}   the run failed ("cancelled" when it was stopped)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

ProgressCallback = Callable[[dict[str, Any]], None]


class EventKind(StrEnum):
    """An event's "type". A str, so `event["type"] == EventKind.EPOCH` holds for events read back from disk."""

    STAGE = "stage"
    SCAN = "scan"
    EMBED = "embed"
    EPOCH = "epoch"
    EXPORT = "export"
    WARNING = "warning"
    RESULT = "result"
    ERROR = "error"


class Stage(StrEnum):
    """The "stage" of a STAGE event, in the order a run passes them."""

    SCAN = "scan"
    PREPARE = "prepare"
    EMBED = "embed"
    TRAIN = "train"
    FINE_TUNE = "fine_tune"
    EXPORT = "export"
    COMPARE = "compare"
    DONE = "done"


# The fields each kind may carry besides "type" and "time" (see the module docstring for their types).
FIELDS: dict[EventKind, tuple[str, ...]] = {
    EventKind.STAGE: ("stage", "message"),
    EventKind.SCAN: ("done", "total"),
    EventKind.EMBED: ("done", "total", "cached", "images_per_s"),
    EventKind.EPOCH: ("phase", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "elapsed", "l2"),
    EventKind.EXPORT: ("done", "total", "file"),
    EventKind.WARNING: ("message", "path"),
    EventKind.RESULT: ("val_accuracy", "metrics_file", "l2", "l2_kept"),
    EventKind.ERROR: ("message",),
}


class Every:
    """Progress by time, not by count: due() says whether another progress event is worth writing now (a bar moves
    smoothly, and a 100,000-image scan writes a few hundred events, not thousands)."""

    def __init__(self, seconds: float = 0.25):
        self.seconds, self._last = seconds, float("-inf")

    def due(self, last: bool = False) -> bool:
        now = time.monotonic()
        if last or now - self._last >= self.seconds:
            self._last = now
            return True
        return False


def emit(callback: ProgressCallback | None, kind: EventKind | str, **fields: Any) -> None:
    """Send one event. An unknown kind is a ValueError even with no callback: a typo fails in every test run, not
    only in the one that listens. Kinds and stages are sent as plain strings, as events.jsonl holds them."""
    kind = EventKind(kind)
    if callback is not None:
        plain = {k: v.value if isinstance(v, StrEnum) else v for k, v in fields.items()}  # Stage.EXPORT -> "export"
        callback({"type": kind.value, "time": time.time(), **plain})


class EventLog:
    """Append-only JSON-lines file; each line is flushed so a reader in another process sees it at once."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, default=float) + "\n"
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """All complete events in the log. What is not an event is skipped: a half-written last line (a killed writer),
    a line that is not a JSON object, bytes that are not UTF-8 (a damaged file must not stop a page)."""
    p = Path(path)
    if not p.exists():
        return []
    events = []
    for line in p.read_bytes().decode("utf-8", "replace").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def tee(*callbacks: ProgressCallback | None) -> ProgressCallback:
    live = [c for c in callbacks if c is not None]

    def _call(event: dict[str, Any]) -> None:
        for c in live:
            c(event)

    return _call
