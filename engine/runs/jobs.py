"""Background training jobs: one `python -m engine train` subprocess per run, observed through its run folder.

The app never holds a job in memory: everything a page needs (state, events, metrics, bundle) is in
`<project>/runs/<run_id>/`, so a reload, a second tab or a restarted server sees the same job. The subprocess is
started in its own session (process group) with its output in `log.txt`; cancelling sends SIGTERM to the group.

Files we write around the engine's own (names and the status rule: engine.config.runfiles):
    run.json        what was started: run_id, project, command, pid and its start time, class counts, backbone;
                    the name the user gave the run (name_run)
    status.json     "running" before the process starts (run_status.write_launch_status); the engine then keeps
                    it up to date; a cancel's final "cancelled" is run_status.record_cancelled's: engine.runs.status
                    is the only module that writes it
    cancel          marker: the user asked to stop

A job that dies without writing its final state is recorded as failed (run_status.settle) by the thread that
launched it and watches it, or — when that process is gone too (a restarted server) — by `wait` and by the next
`start_training` of the project. Reading a status (`job_status`, `active_run`) never writes; the run history,
metrics, events and log are read in engine.runs.history.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from engine.config import runfiles as runfolder
from engine.config.training import TrainConfig
from engine.core.fileio import atomic_write_json, read_json
from engine.data.dataset import training_problem
from engine.runs import status as run_status
from engine.runs.status import RunState, RunStatus
from engine.runs.worker import CLIENT, WorkerError
from engine.store.errors import WorkspaceError, storage_error_message
from engine.store.names import check_display_name
from engine.store.workspace import Project, Workspace

log = logging.getLogger(__name__)

# A JSON list that replaces the engine command line (tests and development; placeholders as in start_training).
COMMAND_ENV = "RETRAIN_STUDIO_TRAIN_CMD"
WORKER_ENV = "RETRAIN_STUDIO_WORKER"  # "0": start every job as a fresh `python -m engine` process
REPO_ROOT = Path(__file__).resolve().parents[2]
WATCH_EVERY_S = 0.5  # how often a job forked by the worker (not our child) is checked for having died

_START_LOCK = threading.Lock()


class JobError(RuntimeError):
    """A user-facing problem starting or stopping a job."""


def new_run_id() -> str:
    """Sortable by start time to the millisecond (two quick runs must not list in random order)."""
    now = time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return f"{stamp}-{int(now * 1000) % 1000:03d}-{secrets.token_hex(2)}"


def run_path(project: Project, run_id: str) -> Path:
    if not run_id or "/" in run_id or "\\" in run_id or run_id.startswith("."):
        raise JobError(f"not a run id: {run_id!r}")
    return project.runs_dir / run_id


def _engine_command(config_path: Path) -> list[str]:
    """The job reads everything, image_dir and run_dir included, from its one config file."""
    return [sys.executable, "-m", "engine", "train", "--config", str(config_path)]


def active_run(project: Project) -> str | None:
    """The run id of the project's running job, if any (run_status.active_run: a dead job is not running)."""
    run_dir = run_status.active_run(project.runs_dir)
    return None if run_dir is None else run_dir.name


def start_training(project: Project, config: TrainConfig | dict[str, Any] | None = None, *,
                   command: list[str] | None = None, retrained_from: str | None = None) -> str:
    """Start a training job for the project and return its run id.

    Refuses (JobError) when a job of this project is already running, or when the data cannot train.
    `retrained_from`: the run whose settings this one repeats (Review's "Retrain now"), kept in run.json so the
    new run is compared with it.
    `command` replaces the engine command line (for tests); "{run_dir}", "{image_dir}" and "{config}" in it are
    filled in. Without it, $RETRAIN_STUDIO_TRAIN_CMD (a JSON list) may do the same.
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(dict(config or {}))
    counts = project.class_counts()
    problem = training_problem(counts)
    if problem:
        raise JobError(problem)
    if command is None and os.environ.get(COMMAND_ENV):
        try:
            command = json.loads(os.environ[COMMAND_ENV])
        except ValueError as exc:
            raise JobError(f"${COMMAND_ENV} is not a JSON list: {exc}") from exc
    try:
        project.runs_dir.mkdir(parents=True, exist_ok=True)
        lock_path = project.runs_dir / ".start.lock"
        with _START_LOCK, open(lock_path, "a+") as lock_fh:
            _lock_file(lock_fh)
            try:
                run_status.settle_all(project.runs_dir)  # jobs that died unwatched (their launcher restarted)
                running = active_run(project)
                if running is not None:
                    raise JobError(f"A training job of this project is already running ({running}); "
                                   "wait for it or cancel it first.")
                run_id = new_run_id()
                run_dir = project.runs_dir / run_id
                run_dir.mkdir(parents=True)
                return _launch(project, cfg, run_id, run_dir, counts, command, retrained_from)
            finally:
                _unlock_file(lock_fh)
    except OSError as exc:
        message = storage_error_message("Starting training", exc)
        if message is None:
            raise
        raise JobError(message) from exc


def _launch(project: Project, cfg: TrainConfig, run_id: str, run_dir: Path, counts: dict[str, int],
            command: list[str] | None, retrained_from: str | None = None) -> str:
    image_dir = project.image_dir()
    cfg = dataclasses.replace(cfg, image_dir=str(image_dir), run_dir=str(run_dir))
    config_path = run_dir / runfolder.CONFIG
    cfg.save(config_path)
    fill = {"run_dir": str(run_dir), "image_dir": str(image_dir), "config": str(config_path)}
    argv = [str(a).format(**fill) for a in command] if command else _engine_command(config_path)
    started = time.time()
    run_status.write_launch_status(run_dir, RunState.RUNNING, "starting", started)
    meta = {"run_id": run_id, "project": project.slug, "started": started, "command": argv, "counts": counts,
            "n_images": sum(counts.values()), "backbone": cfg.tfhub_module,
            **({"retrained_from": retrained_from} if retrained_from else {})}
    atomic_write_json(run_dir / runfolder.RUN, meta)
    env = job_env()
    try:
        pid, proc = spawn(argv, run_dir / runfolder.LOG, env, use_worker=command is None)
    except OSError as exc:
        run_status.write_launch_status(run_dir, RunState.FAILED, f"could not start training: {exc}", started)
        raise JobError(f"Could not start the training process: {exc}") from exc
    meta.update(pid=pid, proc_start=run_status.process_start_time(pid))
    atomic_write_json(run_dir / runfolder.RUN, meta)
    # The launcher watches its job: one that dies without a final state is recorded failed at once.
    threading.Thread(target=_watch, args=(run_dir, pid, meta["proc_start"], proc), daemon=True,
                     name=f"watch-{pid}").start()
    log.info("started run %s of %s (pid %d): %s", run_id, project.slug, pid, shlex.join(argv))
    return run_id


def spawn(argv: list[str], log_path: Path, env: dict[str, str],
           use_worker: bool) -> tuple[int, subprocess.Popen | None]:
    """Start the job; (pid, the Popen when it is our own child). Forked from the long-lived worker (engine.runs.worker:
    no start-up imports) when it runs the engine itself, else (a custom command, or the worker cannot start) as a
    plain subprocess."""
    if use_worker and os.environ.get(WORKER_ENV, "1") != "0" and argv[1:3] == ["-m", "engine"]:
        try:
            return CLIENT.submit(argv[3:], str(log_path), str(REPO_ROOT), env), None
        except WorkerError as exc:
            log.warning("%s; starting the job as a plain process", exc)
    with open(log_path, "ab") as log_fh:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_fh, stderr=subprocess.STDOUT,
                                cwd=str(REPO_ROOT), env=env, start_new_session=True)
    return proc.pid, proc


def _watch(run_dir: Path, pid: int, proc_start: str | None, proc: subprocess.Popen | None) -> None:
    """Until the job's process ends, then settle its status. Our own child is reaped here (no <defunct> left
    behind); one forked by the worker is reaped by the worker and polled."""
    try:
        if proc is not None:
            proc.wait()
        else:
            while run_status.pid_alive(pid, proc_start):
                time.sleep(WATCH_EVERY_S)
        run_status.settle(run_dir)
    except Exception:  # noqa: BLE001 - a vanished run folder must not print a thread traceback in the app
        log.debug("watching %s ended", run_dir, exc_info=True)


def warm_worker() -> None:
    """Start the worker ahead of the first click (its imports take a couple of seconds); never raises."""
    if os.environ.get(WORKER_ENV, "1") == "0" or os.environ.get(COMMAND_ENV):
        return
    env = job_env()
    try:
        CLIENT.ensure(env, str(REPO_ROOT))
    except (WorkerError, OSError) as exc:
        log.warning("could not start the training worker: %s", exc)


def job_env() -> dict[str, str]:
    """The environment of a process started from the app: it imports this repository's engine."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _lock_file(fh) -> None:
    try:
        import fcntl

        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
    except ImportError:  # Windows: the in-process lock still applies
        pass


def _unlock_file(fh) -> None:
    try:
        import fcntl

        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    except ImportError:
        pass


def job_status(run_dir: str | Path) -> RunStatus:
    """The run's status as it is now (run_status.read_status); never writes. A dead "running" job reads failed
    with run_status.DIED_MESSAGE; `downloadable` says bundle.zip exists."""
    return run_status.read_status(run_dir)


def cancel(run_dir: str | Path, timeout: float = 10.0) -> RunStatus:
    """Stop a running job: SIGTERM its process group, SIGKILL after `timeout` seconds; status becomes cancelled."""
    run_dir = Path(run_dir)
    status = run_status.read_status(run_dir)
    if not status.running:
        return status
    (run_dir / runfolder.CANCEL).write_text(str(time.time()))
    meta = read_json(run_dir / runfolder.RUN)
    pid = status.pid or meta.get("pid")
    proc_start = status.proc_start or (meta.get("proc_start") if meta.get("pid") == pid else None)
    if isinstance(pid, int) and run_status.pid_alive(pid, proc_start):
        _signal_group(pid, signal.SIGTERM)
        deadline = time.time() + timeout
        while time.time() < deadline and run_status.pid_alive(pid, proc_start):
            time.sleep(0.1)
        if run_status.pid_alive(pid, proc_start):
            _signal_group(pid, signal.SIGKILL)
            deadline = time.time() + 5
            while time.time() < deadline and run_status.pid_alive(pid, proc_start):
                time.sleep(0.1)
    return run_status.record_cancelled(run_dir)


def _signal_group(pid: int, sig: int) -> None:
    """The job's whole process group (its own: jobs start in a new session), else the job alone; never the group
    of a process that merely shares it, such as the app's own."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
            return
    except (ProcessLookupError, PermissionError, AttributeError):
        pass
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait(run_dir: str | Path, timeout: float = 600, poll: float = 0.2) -> RunStatus:
    """Block until the job is no longer running (tests, scripts). Returns the final status, settled: a job that
    died is recorded as failed in status.json before this returns."""
    deadline = time.time() + timeout
    while True:
        status = run_status.read_status(run_dir)
        if not status.running:
            return run_status.settle(run_dir)
        if time.time() > deadline:
            return status
        time.sleep(poll)


def delete_run(project: Project, run_id: str) -> None:
    run_dir = run_path(project, run_id)
    if run_status.read_status(run_dir).running:
        raise JobError("This run is still training: cancel it first.")
    shutil.rmtree(run_dir, ignore_errors=True)


RUN_NAME_MAX = 80  # characters: a name labels a row and a picker entry, it is not a note


def name_run(project: Project, run_id: str, name: str) -> str:
    """Give a run a name of the user's ("before fixing the roses"), kept in its run.json beside what the launcher
    wrote there; "" removes it. Returns the name as kept. A run from the command line has no run.json yet: it
    gets one holding only the name (history reads every other fact from status.json and config.json then)."""
    run_dir = run_path(project, run_id)
    if not run_dir.is_dir():
        raise JobError(f"There is no run {run_id} any more.")
    text = " ".join(check_display_name(name, "run").split())  # one line: it labels a table row
    if len(text) > RUN_NAME_MAX:
        raise JobError(f"A run name is too long ({len(text)} characters; {RUN_NAME_MAX} at most).")
    meta = read_json(run_dir / runfolder.RUN)
    if text:
        meta["name"] = text
    else:
        meta.pop("name", None)
    atomic_write_json(run_dir / runfolder.RUN, meta)
    return text


def delete_project(workspace: Workspace, slug: str) -> None:
    """Delete a project for good, unless one of its training jobs is running (the store cannot tell: the job
    state is this layer's)."""
    if active_run(workspace.open_project(slug)) is not None:
        raise WorkspaceError("A training job of this project is running: cancel it on the Train page first.")
    workspace.delete_project(slug)


__all__ = ["COMMAND_ENV", "JobError", "WorkspaceError", "active_run", "cancel", "delete_project", "delete_run",
           "job_status", "name_run", "new_run_id", "run_path", "start_training", "wait"]
