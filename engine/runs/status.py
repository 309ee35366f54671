"""The job status of a run folder: status.json read, written and settled, and whether its process is alive.

The states are RunState's (a StrEnum: status.json holds its plain values, "running" and so on); no other module
spells them. Only this module writes status.json, on behalf of:
    - the launcher (engine.runs.jobs): `write_launch_status`, "running"/"starting" before the process exists, or
      "failed" if it cannot start; the training process itself (engine.runs.pipeline) then `write_status`es
      running -> succeeded | failed | cancelled;
    - engine.runs.jobs.cancel: `record_cancelled` after stopping the process;
    - a process that died without a final state (kill -9, out of memory) is recorded as failed by `settle`, the
      only function that corrects a status. engine.runs.jobs calls it from the thread that launched the job and watches
      it, from `wait`, and (`settle_all`) when a project's next job starts: that covers jobs whose launcher is
      gone too (a restarted server). Readers (`read_status`, `active_run`, the pages) never write: they report
      such a run as failed already, from the pid and its start time, so every reader agrees before and after it
      is settled.

No TensorFlow (or other heavy) import here: the app and the workspace read run folders on every page.
"""

from __future__ import annotations

import enum
import os
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.config.runfiles import BUNDLE, CANCEL, RUN, STATUS
from engine.core.fileio import atomic_write_json, read_json


class RunState(enum.StrEnum):
    """A run's job state. A StrEnum so that status.json, the pages and the history table keep the plain strings."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"  # no status.json (yet), or a state this version does not know

    @classmethod
    def parse(cls, value: Any) -> RunState:
        """The state a stored value names; UNKNOWN for anything else (a newer version's state, a damaged file): a
        reader must never fail on a run folder it cannot make sense of."""
        try:
            return cls(value)
        except (TypeError, ValueError):
            return cls.UNKNOWN


FINAL_STATES = (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)
MACHINE = "machine"  # a failure's cause: the machine (disk, permissions), not the data or the options
DIED_MESSAGE = "the training process stopped unexpectedly"
CANCELLED_MESSAGE = "cancelled by the user"
STARTING_WINDOW_S = 30.0  # a "running" status without a pid this young is a job being started, not a dead one


@dataclass
class RunStatus:
    """status.json as read now. `state` is a RunState (UNKNOWN: no status.json, or a state not known here);
    a stored "running" whose process is gone reads as failed (or cancelled, when the user asked to stop)."""

    state: RunState
    message: str = ""
    pid: int | None = None
    proc_start: str | None = None  # the process's start time (/proc/<pid>/stat), so a reused pid is not "alive"
    started: float | None = None
    finished: float | None = None
    cause: str | None = None  # MACHINE: the run failed for a reason outside the data and the options (a full disk)
    downloadable: bool = False  # bundle.zip exists (not stored: derived when read)

    @property
    def running(self) -> bool:
        return self.state is RunState.RUNNING

    def as_dict(self) -> dict[str, Any]:
        """status.json's keys plus downloadable; json.dumps writes the state as its plain string."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunStatus:
        """Whatever status.json holds: a value of the wrong kind (a damaged or hand-edited file) reads as unknown,
        never as an error that would stop the pages listing the project's other runs."""
        pid = data.get("pid")
        return cls(state=RunState.parse(data.get("state")), message=str(data.get("message") or ""),
                   pid=pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None,
                   proc_start=str(data["proc_start"]) if isinstance(data.get("proc_start"), str | int) else None,
                   started=timestamp(data.get("started")), finished=timestamp(data.get("finished")),
                   cause=data.get("cause") if data.get("cause") == MACHINE else None)


def timestamp(value: Any) -> float | None:
    """Seconds since the epoch from a stored value, None unless it is a number of a plausible time (before the year
    5000: time.localtime and the pages' durations must not overflow)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 95_617_584_000:
        return None
    return float(value)


# ------------------------------------------------------------------------------------------------------------------
# liveness
# ------------------------------------------------------------------------------------------------------------------
def proc_stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (state, ppid, ...; Linux), None where unreadable. The name
    is in parentheses and may itself hold spaces and ')', hence the split at the last ')'."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()
    except OSError:
        return None


def process_start_time(pid: int) -> str | None:
    """The process's start time: clock ticks since boot from /proc (Linux), else what `ps -o lstart=` says (macOS
    and the BSDs); None where neither tells (the process is gone, or the system has neither)."""
    fields = proc_stat(pid)
    if fields and len(fields) > 19:
        return fields[19]
    if os.path.isdir("/proc/self"):  # Linux, and no stat for this pid: it is gone
        return None
    try:
        out = subprocess.run(["ps", "-o", "lstart=", "-p", str(int(pid))], capture_output=True, text=True,
                             timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return f"ps:{out}" if out else None


def pid_exists(pid: int | None) -> bool:
    """Whether a process with this pid runs (a zombie, exited but not yet reaped, does not)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    fields = proc_stat(pid)
    return fields is None or fields[0] != "Z"


def pid_alive(pid: int | None, proc_start: str | None) -> bool:
    """The job's process runs: the pid exists and its start time is the one recorded when the job started. Without
    that proof it counts as gone, never as alive: pids are reused, and an unrelated process must neither keep a
    run "running" forever nor be signalled as if it were the job."""
    if proc_start is None or not pid_exists(pid):
        return False
    return process_start_time(pid) == proc_start


# ------------------------------------------------------------------------------------------------------------------
# status
# ------------------------------------------------------------------------------------------------------------------
def _job_process(run_dir: Path, stored: dict[str, Any]) -> tuple[int | None, str | None]:
    """(pid, its start time) of the run's process: status.json's, else the one the launcher saw (run.json)."""
    meta = read_json(run_dir / RUN)
    pid = stored.get("pid") or meta.get("pid")
    proc_start = stored.get("proc_start") if stored.get("pid") == pid else None
    if proc_start is None and meta.get("pid") == pid:
        proc_start = meta.get("proc_start")
    return pid, proc_start


def _is_dead(run_dir: Path, stored: dict[str, Any], now: float) -> bool:
    """A stored "running" status whose process is gone (or never appeared within the starting window)."""
    pid, proc_start = _job_process(run_dir, stored)
    if pid is None:
        return now - (timestamp(stored.get("started")) or 0.0) >= STARTING_WINDOW_S
    return not pid_alive(pid, proc_start)


def _dead_state(run_dir: Path) -> tuple[RunState, str]:
    if (run_dir / CANCEL).exists():
        return RunState.CANCELLED, CANCELLED_MESSAGE
    return RunState.FAILED, DIED_MESSAGE


def read_status(run_dir: str | Path) -> RunStatus:
    """The run's status as it is now; never writes. See the module docstring for the rule on dead processes."""
    run_dir = Path(run_dir)
    stored = read_json(run_dir / STATUS)
    if not stored.get("state"):
        why = "status.json cannot be read" if (run_dir / STATUS).exists() else "no status.json in this run folder"
        status = RunStatus(RunState.UNKNOWN, why, started=timestamp(read_json(run_dir / RUN).get("started")))
    else:
        status = RunStatus.from_dict(stored)
        now = time.time()
        if status.running and _is_dead(run_dir, stored, now):
            status.state, status.message = _dead_state(run_dir)
            status.finished = status.finished or now
    status.downloadable = (run_dir / BUNDLE).exists()
    return status


def settle(run_dir: str | Path) -> RunStatus:
    """Record a dead job as failed (cancelled, if the user asked) in status.json, once; returns read_status.

    Only a status that still says "running" and whose process is gone is rewritten; it is read again right before
    writing, so a process that finished a moment ago keeps its own final state."""
    run_dir = Path(run_dir)
    stored = read_json(run_dir / STATUS)
    if stored.get("state") == RunState.RUNNING and _is_dead(run_dir, stored, time.time()):
        again = read_json(run_dir / STATUS)
        if again.get("state") == RunState.RUNNING:
            state, message = _dead_state(run_dir)
            again.update(state=state, message=message, finished=time.time())
            atomic_write_json(run_dir / STATUS, again)
    return read_status(run_dir)


def settle_all(runs_dir: str | Path) -> None:
    """`settle` every run under `runs_dir` that still says "running"."""
    for run_dir in run_dirs(runs_dir):
        if read_json(run_dir / STATUS).get("state") == RunState.RUNNING:
            settle(run_dir)


def write_status(run_dir: str | Path, state: RunState, message: str = "", *, pid: int | None = None,
                 **extra: Any) -> None:
    """Write the job's own state (the training process by default: its pid and start time are recorded, so
    readers can tell when it dies). "running" keeps the first start time; every other state sets `finished`."""
    path = Path(run_dir) / STATUS
    status = read_json(path)
    pid = os.getpid() if pid is None else pid
    state = RunState(state)  # a misspelt state fails here, in the writer, not later in every reader
    status.update(state=state, message=message, pid=pid, proc_start=process_start_time(pid), **extra)
    if state is RunState.RUNNING:
        status.setdefault("started", time.time())
    else:
        status["finished"] = time.time()
    atomic_write_json(path, status)


def write_launch_status(run_dir: str | Path, state: RunState, message: str, started: float) -> None:
    """The launcher's status before the process exists ("running", message "starting") or when it could not start
    ("failed"): no pid yet, so readers give it STARTING_WINDOW_S to appear."""
    state = RunState(state)
    atomic_write_json(Path(run_dir) / STATUS, {"state": state, "pid": None, "started": started,
                                               "finished": None if state is RunState.RUNNING else time.time(),
                                               "message": message})


def record_cancelled(run_dir: str | Path) -> RunStatus:
    """After engine.runs.jobs.cancel stopped the job's process: status.json says cancelled (the process's own pid
    and start time kept), unless the job succeeded before the signal reached it; returns read_status."""
    path = Path(run_dir) / STATUS
    stored = read_json(path)
    if stored.get("state") != RunState.SUCCEEDED:
        stored.update(state=RunState.CANCELLED, finished=stored.get("finished") or time.time(),
                      message=CANCELLED_MESSAGE)
        atomic_write_json(path, stored)
    return read_status(run_dir)


def run_dirs(runs_dir: str | Path) -> list[Path]:
    """The run folders under `runs_dir`, newest first (run ids sort by start time)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    return sorted((p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")), reverse=True)


def active_run(runs_dir: str | Path) -> Path | None:
    """The newest run folder under `runs_dir` whose job is running now (same rule as read_status), if any."""
    for run_dir in run_dirs(runs_dir):
        if (run_dir / STATUS).exists() and read_status(run_dir).running:
            return run_dir
    return None
