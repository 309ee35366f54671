"""A long-lived process that starts the app's training jobs by forking itself: imports are paid once, not per run.

A retrain on cached features takes about a second; starting `python -m engine train` and importing NumPy,
scikit-learn, OpenCV and the engine takes longer than that. The worker imports them once, then forks one child per
job. A child is an ordinary process in its own session, exactly like the subprocess it replaces: its pid goes into
status.json, cancel signals its process group, and if it crashes the app's watcher (engine.runs.status.settle)
records the run as failed. The worker reaps its children at once (no zombies) and exits when the app that
started it is gone.

TensorFlow is never imported in the worker itself: its thread pools do not survive fork(). A child that needs it
(fine-tuning, the first conversion of a backbone) imports it after forking.

Protocol: one JSON line per connection on a Unix socket, {"argv": [...], "log": path, "cwd": dir, "env": {...}},
answered by {"pid": int} or {"error": str}.
"""

from __future__ import annotations

import json
import logging
import os
import runpy
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

# What a job imports, loaded once here (never TensorFlow): third-party libraries, then the command line and the
# pipeline, which import the engine modules a head-only retrain uses.
PRELOAD = ("numpy", "cv2", "PIL.Image", "sklearn.linear_model", "sklearn.model_selection", "scipy.optimize",
           "ai_edge_litert.interpreter", "flatbuffers", "tqdm", "engine.cli.main", "engine.runs.pipeline",
           "engine.export.compose", "engine.features.embeddings", "engine.inference.predict")
START_TIMEOUT_S = 60.0
# How long the app waits for a fork. A healthy worker answers in milliseconds; one that does not is killed and the
# job starts as a plain process, and the request carries this deadline so a worker that wakes later never forks it.
SUBMIT_TIMEOUT_S = 5.0
READY = "ready\n"  # the worker's first line on stdout: its socket is listening


# ----------------------------------------------------------------------------------------------------------------
# The worker process
# ----------------------------------------------------------------------------------------------------------------
def _preload() -> None:
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a missing optional module only costs the child an import
            log.warning("worker: could not preload %s: %s", name, exc)


def _reap(signum=None, frame=None) -> None:  # noqa: ARG001 - signal handler signature
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _run_child(request: dict) -> None:
    """In the forked child: become a job process like `python -m engine train ...` and never return."""
    code = 1
    try:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(request.get("cwd") or ".")
        os.environ.update(request.get("env") or {})
        fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        # Run the command line exactly as `python -m engine ARGV` would (its __main__ exits with the code).
        sys.argv = ["python -m engine", *request["argv"]]
        runpy.run_module("engine", run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - report anything in the job's log, then exit
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve(socket_path: str, parent_pid: int) -> None:
    _preload()
    signal.signal(signal.SIGCHLD, _reap)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    Path(socket_path).unlink(missing_ok=True)
    server.bind(socket_path)
    server.listen(8)
    server.settimeout(1.0)
    sys.stdout.write(READY)  # the handshake the app waits for (a protocol line, not a message for a person)
    sys.stdout.flush()
    while os.getppid() == parent_pid:  # the app is gone: so is the reason to run
        try:
            conn, _ = server.accept()
        except TimeoutError:
            _reap()
            continue
        except InterruptedError:
            continue
        with conn:
            conn.settimeout(10)
            try:
                request = json.loads(conn.makefile("r").readline())
            except (OSError, ValueError) as exc:
                conn.sendall((json.dumps({"error": f"bad request: {exc}"}) + "\n").encode())
                continue
            if time.time() > float(request.get("deadline") or 0):  # the app gave up on it: it started it otherwise
                conn.sendall((json.dumps({"error": "the request came too late"}) + "\n").encode())
                continue
            pid = os.fork()
            if pid == 0:
                server.close()
                _run_child(request)
            conn.sendall((json.dumps({"pid": pid}) + "\n").encode())
    server.close()
    Path(socket_path).unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------------------
# The app's side
# ----------------------------------------------------------------------------------------------------------------
class WorkerError(RuntimeError):
    pass


class _Client:
    """The app's handle on its worker; started on first use, restarted if it died."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._socket: str | None = None

    def _start(self, env: dict[str, str], cwd: str) -> None:
        import tempfile

        folder = tempfile.mkdtemp(prefix="retrain-studio-worker-")
        self._socket = os.path.join(folder, "worker.sock")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "engine.runs.worker", self._socket, str(os.getpid())], cwd=cwd, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        threading.Thread(target=self._proc.wait, daemon=True, name="worker-reaper").start()
        ready, _, _ = select.select([self._proc.stdout], [], [], START_TIMEOUT_S)
        if not ready or self._proc.stdout.readline() != READY.encode():
            self.stop()
            raise WorkerError("the training worker did not start")

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def ensure(self, env: dict[str, str], cwd: str) -> None:
        with self._lock:
            if not self.alive():
                self._start(env, cwd)

    def submit(self, argv: list[str], log_path: str, cwd: str, env: dict[str, str]) -> int:
        """Fork a job from the worker; returns its pid."""
        self.ensure(env, cwd)
        request = {"argv": argv, "log": log_path, "cwd": cwd, "env": env, "deadline": time.time() + SUBMIT_TIMEOUT_S}
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(SUBMIT_TIMEOUT_S)
                conn.connect(self._socket)
                conn.sendall((json.dumps(request) + "\n").encode())
                answer = json.loads(conn.makefile("r").readline() or "{}")
        except (OSError, ValueError) as exc:
            self.kill()  # hung (stopped, swapped out, stuck): a fresh one starts with the next job
            raise WorkerError(f"the training worker did not answer: {exc}") from exc
        if "pid" not in answer:
            raise WorkerError(answer.get("error") or "the training worker refused the job")
        return int(answer["pid"])

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL: it ends a stopped process too (SIGTERM would wait for it to be continued). The jobs it forked
        run in their own sessions and are not touched."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()
            self._proc = None


CLIENT = _Client()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
