"""Background training jobs, driven by a tiny fake engine (fast) and once by the real one (slow)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fake_engine import fake_command
from PIL import Image

from engine.config import runfiles as runfolder
from engine.config.training import TrainConfig
from engine.core.fileio import read_json
from engine.runs import history, jobs
from engine.runs import status as run_status
from engine.store.workspace import Workspace


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def fill(project, per_class: int = 3, classes=("cats", "dogs")) -> None:
    for k, cls in enumerate(classes):
        project.add_files([(f"{cls}{i}.png", png(100 * k + i)) for i in range(per_class)], cls)


@pytest.fixture
def project(project):
    """conftest's empty project, filled with two small classes."""
    fill(project)
    return project


def _pid_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        fields = run_status.proc_stat(pid)
        if fields is None or fields[0] == "Z":  # gone, or a zombie: exited
            return True
        time.sleep(0.1)
    return False


def test_successful_run(project, tmp_path):
    run_id = jobs.start_training(project, TrainConfig(train_epochs=7), command=fake_command(tmp_path))
    run_dir = jobs.run_path(project, run_id)
    status = jobs.wait(run_dir, timeout=60)
    assert status.state == "succeeded", history.log_tail(run_dir)
    assert status.downloadable
    cfg = TrainConfig.load(run_dir / "config.json")
    assert cfg.train_epochs == 7 and cfg.image_dir == str(project.image_dir()) and cfg.run_dir == str(run_dir)
    assert "fake engine started" in (run_dir / "log.txt").read_text()
    assert [e["epoch"] for e in history.events(run_dir) if e["type"] == "epoch"] == [1, 2, 3, 4, 5]
    (row,) = history.list_runs(project)
    assert row.run_id == run_id and row.state == "succeeded"
    assert row.n_images == 6 and row.backbone == "efficientnet-lite0"
    assert 0 <= row.val_accuracy <= 1 and row.duration >= 0
    assert history.latest_run(project) == run_id
    assert history.load_metrics(run_dir)["labels"] == ["cats", "dogs"]
    assert jobs.active_run(project) is None


def test_failed_run_keeps_message(project, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "fail")
    run_dir = jobs.run_path(project, jobs.start_training(project, command=fake_command(tmp_path)))
    status = jobs.wait(run_dir, timeout=60)
    assert status.state == "failed" and status.message == "boom"
    assert not status.downloadable
    assert "error: boom" in history.log_tail(run_dir)


def test_dead_process_is_reported_failed(project, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "crash")
    run_dir = jobs.run_path(project, jobs.start_training(project, command=fake_command(tmp_path)))
    status = jobs.wait(run_dir, timeout=60)
    assert status.state == "failed"
    assert status.message == run_status.DIED_MESSAGE
    assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"  # rewritten on disk


def test_stale_running_status_from_another_process(project):
    """A server restart: status.json says running, the pid is long gone and was never our child."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir = project.runs_dir / "20200101-000000-abcd"
    run_dir.mkdir(parents=True)
    (run_dir / "status.json").write_text(json.dumps({"state": "running", "pid": dead.pid, "started": 1.0}))
    assert jobs.job_status(run_dir).state == "failed"
    assert jobs.job_status(run_dir).message == run_status.DIED_MESSAGE


def test_one_job_per_project_and_cancel(project, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "sleep")
    cmd = fake_command(tmp_path)
    run_id = jobs.start_training(project, command=cmd)
    run_dir = jobs.run_path(project, run_id)
    deadline = time.time() + 30
    while not (run_dir / "child.pid").exists() and time.time() < deadline:
        time.sleep(0.05)
    assert jobs.active_run(project) == run_id
    with pytest.raises(jobs.JobError, match="already running"):
        jobs.start_training(project, command=cmd)
    with pytest.raises(Exception, match="cancel"):
        jobs.delete_project(Workspace(), project.slug)
    grandchild = int((run_dir / "child.pid").read_text())
    status = jobs.cancel(run_dir, timeout=10)
    assert status.state == "cancelled"
    assert _pid_gone(grandchild), "the whole process group must be stopped"
    assert jobs.active_run(project) is None
    monkeypatch.setenv("FAKE_MODE", "ok")
    second = jobs.start_training(project, command=cmd)
    assert jobs.wait(jobs.run_path(project, second), timeout=60).state == "succeeded"
    states = {r.run_id: r.state for r in history.list_runs(project)}
    assert states == {run_id: "cancelled", second: "succeeded"}


def test_command_from_environment(project, tmp_path, monkeypatch):
    monkeypatch.setenv(jobs.COMMAND_ENV, json.dumps(fake_command(tmp_path)))
    run_dir = jobs.run_path(project, jobs.start_training(project, {"train_epochs": 3}))
    assert jobs.wait(run_dir, timeout=60).state == "succeeded"


def test_refuses_without_enough_data(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRAIN_STUDIO_WORKSPACE", str(tmp_path / "ws"))
    project = Workspace().create_project("empty")
    with pytest.raises(jobs.JobError, match="at least 2 classes"):
        jobs.start_training(project, command=fake_command(tmp_path))
    fill(project, per_class=3, classes=("only",))
    with pytest.raises(jobs.JobError, match="at least 2 classes"):
        jobs.start_training(project, command=fake_command(tmp_path))
    assert history.list_runs(project) == []
    with pytest.raises(ValueError, match="Unknown"):
        jobs.start_training(project, {"nonsense": 1})
    with pytest.raises(jobs.JobError):
        jobs.run_path(project, "../x")


def _real_engine_available() -> str | None:
    for mod in ("engine.cli.main", "engine.data.demo", "engine.data.dataset", "engine.export.artefacts"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not written yet"
    return None


@pytest.fixture
def demo_project(tmp_path, monkeypatch):
    """A project of the demo dataset (text vs shapes) that the real engine trains on, through the worker."""
    reason = _real_engine_available()
    if reason:
        pytest.skip(f"real engine not available: {reason}")
    from engine.data.demo import make_demo_dataset

    monkeypatch.setenv("RETRAIN_STUDIO_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.delenv(jobs.COMMAND_ENV, raising=False)
    monkeypatch.delenv(jobs.WORKER_ENV, raising=False)
    project = Workspace().create_project("demo")
    project.import_image_dir(make_demo_dataset(tmp_path / "demo", per_class=12))
    return project


@pytest.mark.slow
def test_real_training_on_demo_dataset(demo_project):
    project = demo_project
    run_id = jobs.start_training(project, TrainConfig(train_epochs=30, quantize=["float32"]))
    run_dir = jobs.run_path(project, run_id)
    status = jobs.wait(run_dir, timeout=600)
    assert status.state == "succeeded", history.log_tail(run_dir)
    metrics = history.load_metrics(run_dir)
    assert sorted(metrics["labels"]) == ["shapes", "text"]
    assert metrics["predictions"] and Path(metrics["predictions"][0]["path"]).is_file()
    assert any(e["type"] == "epoch" for e in history.events(run_dir))
    # the job got one config file and nothing beside it; that file says where the images and the run are
    command = read_json(run_dir / runfolder.RUN)["command"]
    assert command[-3:] == ["train", "--config", str(run_dir / runfolder.CONFIG)]
    saved = TrainConfig.load(run_dir / runfolder.CONFIG)
    assert (saved.image_dir, saved.run_dir) == (str(project.image_dir()), str(run_dir))
    with zipfile.ZipFile(run_dir / "bundle.zip") as zf:
        names = zf.namelist()
    assert any(n.endswith("labels.txt") for n in names)
    assert any(n.endswith(".tflite") for n in names)


def _ppid(pid: int) -> int | None:
    fields = run_status.proc_stat(pid)
    return int(fields[1]) if fields else None


@pytest.mark.slow
def test_jobs_fork_from_one_worker_and_leave_no_zombies(demo_project):
    """The app's jobs start from the long-lived worker (no per-run imports) and are reaped when they end."""
    from engine.runs.worker import CLIENT

    project = demo_project
    jobs.warm_worker()
    assert CLIENT.alive()
    worker_pid = CLIENT._proc.pid
    cfg = TrainConfig(quantize=["float32"])
    pids = []
    for _ in range(2):
        run_dir = jobs.run_path(project, jobs.start_training(project, cfg))
        pid = read_json(run_dir / "run.json")["pid"]
        assert _ppid(pid) in (worker_pid, None)  # None: it already ended and was reaped
        status = jobs.wait(run_dir, timeout=300)
        assert status.state == "succeeded", history.log_tail(run_dir)
        assert (run_dir / "bundle.zip").is_file() and "Run saved" in history.log_tail(run_dir)
        pids.append(pid)
    assert CLIENT._proc.pid == worker_pid  # the same worker served both runs
    deadline = time.time() + 10
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.1)
    assert not any(Path(f"/proc/{p}").exists() for p in pids), "a finished job was left as a zombie"
    # cancel reaches a forked job through its own process group
    run_dir = jobs.run_path(project, jobs.start_training(project, TrainConfig(do_fine_tuning=True)))
    assert jobs.cancel(run_dir).state == "cancelled"


@pytest.mark.slow
def test_a_hung_worker_is_replaced_and_its_late_request_never_forks_a_second_job(demo_project):
    """A stopped worker (SIGSTOP: swapped out, stuck) costs the click a few seconds, not half a minute; the job
    starts as a plain process, and the worker, woken later, never forks the same run into the same folder."""
    from engine.runs import worker
    from engine.runs.worker import CLIENT

    jobs.warm_worker()
    hung = CLIENT._proc.pid
    os.kill(hung, signal.SIGSTOP)
    try:
        t0 = time.time()
        run_dir = jobs.run_path(demo_project, jobs.start_training(demo_project, TrainConfig(quantize=["float32"])))
        waited = time.time() - t0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(hung, signal.SIGCONT)
    assert waited < worker.SUBMIT_TIMEOUT_S + 5, waited
    status = jobs.wait(run_dir, timeout=300)
    assert status.state == "succeeded", history.log_tail(run_dir)
    assert _pid_gone(hung)  # replaced: a woken worker cannot fork it afterwards
    time.sleep(2)
    assert [e["type"] for e in history.events(run_dir)].count("result") == 1
    assert jobs.job_status(run_dir).state == "succeeded"


def test_the_worker_refuses_a_request_the_app_gave_up_on(tmp_path):
    from engine.runs.worker import CLIENT

    jobs.warm_worker()
    assert CLIENT.alive()
    request = {"argv": ["--help"], "log": str(tmp_path / "log"), "cwd": str(tmp_path), "env": {},
               "deadline": time.time() - 1}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(CLIENT._socket)
        conn.sendall((json.dumps(request) + "\n").encode())
        answer = json.loads(conn.makefile("r").readline())
    assert answer == {"error": "the request came too late"}
    assert not (tmp_path / "log").exists()  # nothing was forked
