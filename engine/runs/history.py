"""Reading finished and running runs: the project's run history as `RunSummary` rows, and each run's metrics,
events and log. engine.runs.jobs launches and cancels; this module only reads (it never writes a run folder).

Everything comes from the run folder (names: engine.config.runfiles; state: engine.runs.status), so a reload, a
second tab or a restarted server reads the same history. No TensorFlow here: the pages call it on every refresh.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import runfiles
from engine.core.events import EventKind, read_events
from engine.core.fileio import read_json
from engine.runs import status as run_status
from engine.runs.status import RunState, RunStatus
from engine.store.workspace import Project

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSummary:
    """One run as the pages list it: its status now and the few facts the history table, the run pickers and the
    comparison need, read from its folder without parsing metrics.json."""

    run_id: str
    run_dir: Path
    status: RunStatus
    started: float | None  # seconds since the epoch: status.json's, else run.json's
    val_accuracy: float | None
    backbone: str
    n_images: int | None
    duration: float | None  # seconds, so far when still running
    reviewable: bool  # metrics.json exists: Review can show the run (also while it still exports)
    retrained_from: str | None = None  # the run whose settings it repeated (Review's "Retrain now")
    name: str | None = None  # the user's name for the run (engine.runs.jobs.name_run), None when it has none

    @property
    def label(self) -> str:
        """How a person tells the run apart: its name and its id, or the id alone (plain text, not Markdown)."""
        return f"{self.name} ({self.run_id})" if self.name else self.run_id

    @property
    def state(self) -> RunState:
        return self.status.state

    @property
    def downloadable(self) -> bool:
        """bundle.zip exists (written last, atomically)."""
        return self.status.downloadable

    @property
    def started_text(self) -> str:
        """The start as local time, "" when unknown."""
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started)) if self.started else ""


def summarize(run_dir: str | Path) -> RunSummary:
    """The run folder's RunSummary as it is now."""
    run_dir = Path(run_dir)
    status = run_status.read_status(run_dir)
    meta = read_json(run_dir / runfiles.RUN)
    cfg = read_json(run_dir / runfiles.CONFIG)
    # The "result" event carries the headline accuracy: parsing metrics.json (per-image predictions, megabytes
    # on a big project) for every run on every refresh of the page would cost more than the retrain itself.
    val_acc = next((e.get("val_accuracy") for e in reversed(events(run_dir))
                    if e.get("type") == EventKind.RESULT), None)
    if val_acc is None and status.state is RunState.SUCCEEDED:
        val_acc = (load_metrics(run_dir) or {}).get("val_accuracy")
    started = status.started or run_status.timestamp(meta.get("started"))
    end = status.finished if status.finished else (time.time() if status.running else None)
    n_images = meta.get("n_images")
    return RunSummary(
        run_id=run_dir.name,
        run_dir=run_dir,
        status=status,
        started=started,
        val_accuracy=float(val_acc) if isinstance(val_acc, int | float) and not isinstance(val_acc, bool) else None,
        backbone=str(meta.get("backbone") or cfg.get("tfhub_module") or ""),
        n_images=n_images if isinstance(n_images, int) and not isinstance(n_images, bool) else None,
        duration=round(end - started, 1) if started and end and end >= started else None,
        reviewable=(run_dir / runfiles.METRICS).exists(),
        retrained_from=meta["retrained_from"] if isinstance(meta.get("retrained_from"), str) else None,
        name=meta["name"] if isinstance(meta.get("name"), str) and meta["name"] else None,
    )


def list_runs(project: Project) -> list[RunSummary]:
    """One RunSummary per run of the project, newest first (by run id: it starts with the start time). A run folder
    that cannot be read at all is listed as unreadable, so the project's other runs stay usable."""
    return [_summary_or_unreadable(run_dir) for run_dir in run_status.run_dirs(project.runs_dir)
            if (run_dir / runfiles.STATUS).exists() or (run_dir / runfiles.RUN).exists()]


def _summary_or_unreadable(run_dir: Path) -> RunSummary:
    try:
        return summarize(run_dir)
    except (OSError, ValueError, TypeError, AttributeError, OverflowError) as exc:
        log.warning("run folder %s cannot be read: %r", run_dir, exc)
        status = RunStatus(RunState.UNKNOWN, f"this run folder cannot be read ({type(exc).__name__}: {exc}); "
                                             "delete it to tidy up")
        return RunSummary(run_dir.name, run_dir, status, None, None, "", None, None, reviewable=False)


def baseline(project: Project, run_id: str) -> tuple[RunSummary, str] | None:
    """The run to compare `run_id` with, and why that one: the run it was retrained from, else the newest
    successful run before it. A cancelled or failed run is never the baseline, though it may have metrics."""
    runs = list_runs(project)
    by_id = {r.run_id: r for r in runs}
    this = by_id.get(run_id)
    if this is None:
        return None
    source = by_id.get(this.retrained_from or "")
    if source is not None and source.reviewable:
        return source, "the run it was retrained from"
    for row in runs[runs.index(this) + 1:]:
        if row.state is RunState.SUCCEEDED and row.reviewable:
            return row, "the previous successful run"
    return None


def latest_run(project: Project, state: RunState | None = RunState.SUCCEEDED) -> str | None:
    """The newest run id in `state` (any state: None), if any."""
    for row in list_runs(project):
        if state is None or row.state == state:
            return row.run_id
    return None


def load_metrics(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / runfiles.METRICS
    return read_json(path) if path.exists() else None


def events(run_dir: str | Path) -> list[dict[str, Any]]:
    return read_events(Path(run_dir) / runfiles.EVENTS)


def log_tail(run_dir: str | Path, lines: int = 40) -> str:
    path = Path(run_dir) / runfiles.LOG
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    # tqdm redraws with carriage returns: keep the last state of each line
    cleaned = [ln.rsplit("\r", 1)[-1] for ln in text.splitlines()]
    return "\n".join(cleaned[-lines:])


__all__ = ["RunSummary", "baseline", "events", "latest_run", "list_runs", "load_metrics", "log_tail", "summarize"]
