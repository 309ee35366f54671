"""Formats made on request (TF.js, Core ML: engine.export.extras) in a background process of their own, so the page
that asked stays responsive and the conversion survives a closed tab: `python -m engine export-extra`, started like a
training job (engine.runs.jobs.spawn), its output in <run_dir>/extras/<name>.log."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from engine.config import runfiles as rf
from engine.export import extras
from engine.runs import jobs
from engine.runs import status as run_status

log = logging.getLogger(__name__)

STARTING_WINDOW_S = 30.0  # a "running" status with no process yet counts as starting for this long


def extra_status(run_dir: str | Path, name: str) -> dict[str, Any]:
    """The stored status, where a "running" one whose process is gone is said to have stopped."""
    status = extras.stored_status(run_dir, name)
    if status["state"] != extras.RUNNING or _alive(status):
        return status
    label = extras.get(name).label
    return {**status, "state": extras.FAILED, "progress": None,
            "message": f"Making the {label} model stopped before it finished (the process ended; its output is in "
                       f"{extras.log_path(run_dir, name)}). Try again."}


def _alive(status: dict[str, Any]) -> bool:
    pid = status.get("pid")
    if pid is None:  # started, its process not recorded yet
        return time.time() - float(status.get("started") or 0) < STARTING_WINDOW_S
    return run_status.pid_alive(pid, status.get("proc_start"))


def start_extra(run_dir: str | Path, name: str) -> dict[str, Any]:
    """Start making one format in the background; its first status. Refused, in the user's words, when the run has
    no SavedModel, the converter is missing, or it is being made already."""
    run, extra = Path(run_dir), extras.get(name)
    status = extra_status(run, name)
    if status["state"] == extras.RUNNING:
        raise ValueError(f"The {extra.label} model is being made already.")
    if status["state"] == extras.CONVERTER_MISSING:
        raise ValueError(status["message"])
    if not (run / rf.SAVED_MODEL).is_dir():
        raise ValueError(f"This run has no {rf.SAVED_MODEL}/ folder to convert: train again to get one.")
    logfile = extras.log_path(run, name)
    logfile.parent.mkdir(parents=True, exist_ok=True)
    extras.write_status(run, name, state=extras.RUNNING, progress=0.0, files=[], started=time.time(),
                        finished=None, pid=None, proc_start=None, message=f"Starting to make the {extra.label} model")
    argv = [sys.executable, "-m", "engine", "export-extra", "--run_dir", str(run), "--extra", name]
    pid, _proc = jobs.spawn(argv, logfile, jobs.job_env(), use_worker=True)
    log.info("making %s for %s (pid %d)", name, run, pid)
    return extra_status(run, name)  # the process records its own pid (one writer at a time: no lost update)


def record_process(run_dir: str | Path, name: str) -> None:
    """Called by the making process first thing: its pid and start time, which prove it alive to extra_status."""
    import os

    extras.write_status(run_dir, name, pid=os.getpid(), proc_start=run_status.process_start_time(os.getpid()))
