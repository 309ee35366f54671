"""Progress events: one callback signature for the CLI, the app and tests, plus a JSON-lines log on disk.

A training job writes its events to `<run_dir>/events.jsonl`; the app polls that file, so a page reload or a
second browser tab sees the same job, and a worker never needs to touch the UI.

Event kinds (every event has "type" and "time"):
  {"type": "stage", "stage": "scan"|"prepare"|"embed"|"train"|"fine_tune"|"export"|"done", "message": str}
  {"type": "export", "done": int, "total": int, "file": str}   one artefact written (export progress)
  {"type": "embed", "done": int, "total": int, "cached": int, "images_per_s": float}
  {"type": "epoch", "phase": "head"|"fine_tune", "epoch": int, "loss": float, "accuracy": float,
                    "val_loss": float|None, "val_accuracy": float|None, "elapsed": float, "l2": float (head)}
                    (head: one event per L2 value tried by cross-validation; fine_tune: one per epoch)
  {"type": "warning", "message": str, "path": str|None}
  {"type": "result", "val_accuracy": float|None, "metrics_file": str}
  {"type": "error", "message": str}
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ProgressCallback = Callable[[dict[str, Any]], None]


def emit(callback: ProgressCallback | None, type_: str, **fields: Any) -> None:
    if callback is not None:
        callback({"type": type_, "time": time.time(), **fields})


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
    """All complete events in the log; a half-written last line (a killed writer) is ignored."""
    p = Path(path)
    if not p.exists():
        return []
    events = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def tee(*callbacks: ProgressCallback | None) -> ProgressCallback:
    live = [c for c in callbacks if c is not None]

    def _call(event: dict[str, Any]) -> None:
        for c in live:
            c(event)

    return _call
