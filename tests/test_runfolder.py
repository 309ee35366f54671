"""engine.config.runfiles: one owner for the run folder's names and the job status rule (fast: no training)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.config import runfiles as runfolder
from engine.config import variants
from engine.config.training import TrainConfig
from engine.data import dataset
from engine.runs import jobs
from engine.runs import pipeline as runs
from engine.runs import status as run_status
from engine.store.errors import WorkspaceError
from engine.store.names import INBOX
from engine.store.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]


def _status(run_dir: Path) -> dict:
    return json.loads((run_dir / runfolder.STATUS).read_text())


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_names_have_one_owner():
    """That no other module spells these names is tests/test_architecture.py's owner check; here, what they are."""
    assert variants.NAMES == ("float32", "dynamic", "int8")
    assert runfolder.MODEL_PREFERENCE == (
        "model_float32.tflite", "model_dynamic.tflite", "model_int8.tflite", "saved_model")
    # the run states and status messages have one owner (engine.runs.status): jobs keeps no copies of them
    assert not {"DIED_MESSAGE", "CANCELLED_MESSAGE", "FINAL_STATES", "RUNNING"} & set(vars(jobs))
    # the app and the workspace read run folders on every page: no TensorFlow, no engine module beyond fileio
    code = ("import sys, engine.config.runfiles; "
            "print(sorted(m for m in sys.modules if m.startswith(('engine.', 'tensorflow', 'keras'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['engine.config', 'engine.config.runfiles', 'engine.config.variants']"


def test_write_and_read_status_of_this_process(tmp_path):
    run_status.write_status(tmp_path, "running", "training")
    status = run_status.read_status(tmp_path)
    assert status.running and status.pid == os.getpid() and status.message == "training"
    assert status.proc_start == run_status.process_start_time(os.getpid()) and status.finished is None
    started = status.started
    run_status.write_status(tmp_path, "succeeded", "ok")
    status = run_status.read_status(tmp_path)
    assert (status.state, status.started, status.downloadable) == ("succeeded", started, False)
    assert status.finished >= started
    (tmp_path / runfolder.BUNDLE).write_bytes(b"zip")
    assert run_status.read_status(tmp_path).downloadable
    assert run_status.RunStatus.from_dict(_status(tmp_path)).state == "succeeded"
    assert run_status.read_status(tmp_path / "missing").state == "unknown"


def test_a_state_this_version_does_not_know_reads_unknown(tmp_path):
    RunState = run_status.RunState
    (tmp_path / runfolder.STATUS).write_text(json.dumps({"state": "paused", "message": "from a newer version"}))
    status = run_status.read_status(tmp_path)
    assert status.state is RunState.UNKNOWN and not status.running and status.message == "from a newer version"
    assert jobs.job_status(tmp_path).state is RunState.UNKNOWN
    for stored in ({}, {"state": None}, {"state": ["running"]}, {"state": 3}, {"state": "Running"}):
        assert run_status.RunStatus.from_dict(stored).state is RunState.UNKNOWN, stored
    assert run_status.RunStatus.from_dict({"state": "cancelled"}).state is RunState.CANCELLED
    assert run_status.settle(tmp_path).state is RunState.UNKNOWN  # only a "running" status is ever corrected
    assert _status(tmp_path)["state"] == "paused"
    with pytest.raises(ValueError, match="paused"):  # the writer refuses what the readers could not name
        run_status.write_status(tmp_path, "paused")


def test_states_are_stored_as_their_plain_strings(tmp_path):
    RunState = run_status.RunState
    assert [s.value for s in RunState] == ["running", "succeeded", "failed", "cancelled", "unknown"]
    assert run_status.FINAL_STATES == (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED)
    run_status.write_status(tmp_path, RunState.SUCCEEDED, "ok")
    assert '"state": "succeeded"' in (tmp_path / runfolder.STATUS).read_text()
    assert type(_status(tmp_path)["state"]) is str
    status = run_status.read_status(tmp_path)
    assert status.state is RunState.SUCCEEDED
    assert json.loads(json.dumps(status.as_dict()))["state"] == "succeeded"
    run_status.write_launch_status(tmp_path, RunState.FAILED, "could not start", time.time())
    assert json.loads((tmp_path / runfolder.STATUS).read_text())["state"] == "failed"


def test_a_cancel_is_recorded_by_the_status_module(tmp_path):
    RunState = run_status.RunState
    run_status.write_status(tmp_path, RunState.RUNNING, "training", pid=_dead_pid())
    pid = _status(tmp_path)["pid"]
    status = run_status.record_cancelled(tmp_path)
    assert (status.state, status.message) == (RunState.CANCELLED, run_status.CANCELLED_MESSAGE)
    saved = _status(tmp_path)
    assert (saved["state"], saved["pid"]) == ("cancelled", pid) and saved["finished"] >= saved["started"]
    run_status.write_status(tmp_path, RunState.SUCCEEDED, "ok")  # finished before the signal arrived: kept
    assert run_status.record_cancelled(tmp_path).state is RunState.SUCCEEDED
    assert _status(tmp_path)["message"] == "ok"
    # engine.runs.status is the one writer of status.json: the launcher never names the file
    assert "STATUS" not in Path(jobs.__file__).read_text(encoding="utf-8")


def test_a_dead_job_reads_failed_and_is_written_once_by_settle(tmp_path):
    (tmp_path / runfolder.STATUS).write_text(json.dumps({"state": "running", "pid": _dead_pid(), "started": 1.0}))
    before = (tmp_path / runfolder.STATUS).read_bytes()
    for _ in range(2):  # reading never writes
        status = run_status.read_status(tmp_path)
        assert (status.state, status.message) == ("failed", run_status.DIED_MESSAGE)
        assert jobs.job_status(tmp_path).state == "failed"
    assert (tmp_path / runfolder.STATUS).read_bytes() == before
    assert run_status.settle(tmp_path).state == "failed"
    saved = _status(tmp_path)
    assert (saved["state"], saved["message"]) == ("failed", run_status.DIED_MESSAGE)
    run_status.settle(tmp_path)
    assert _status(tmp_path) == saved  # once: a settled status is final


def test_settle_keeps_a_final_state_and_a_live_job(tmp_path):
    run_status.write_status(tmp_path, "running", "training")  # this process: alive
    assert run_status.settle(tmp_path).running and _status(tmp_path)["state"] == "running"
    run_status.write_status(tmp_path, "cancelled", "asked to stop", pid=_dead_pid())
    assert run_status.settle(tmp_path).state == "cancelled" and _status(tmp_path)["message"] == "asked to stop"


def test_cancel_marker_pid_reuse_and_starting_window(tmp_path):
    cancelled, reused, starting, stuck = (tmp_path / n for n in ("cancelled", "reused", "starting", "stuck"))
    for d in (cancelled, reused, starting, stuck):
        d.mkdir()
    (cancelled / runfolder.STATUS).write_text(json.dumps({"state": "running", "pid": _dead_pid()}))
    (cancelled / runfolder.CANCEL).write_text("1")
    assert run_status.read_status(cancelled).state == "cancelled"
    # a live pid that is another process now (its start time differs from the one recorded): not our job
    (reused / runfolder.STATUS).write_text(json.dumps({"state": "running", "pid": os.getpid(), "proc_start": "1"}))
    assert run_status.read_status(reused).state == "failed"
    # no pid yet: being started, unless that was longer ago than the starting window
    run_status.write_launch_status(starting, "running", "starting", time.time())
    assert run_status.read_status(starting).running
    run_status.write_launch_status(stuck, "running", "starting", time.time() - run_status.STARTING_WINDOW_S - 1)
    assert run_status.read_status(stuck).state == "failed"
    # run.json's pid stands in until the process writes its own
    (starting / runfolder.RUN).write_text(json.dumps({"pid": _dead_pid()}))
    assert run_status.read_status(starting).state == "failed"


@pytest.fixture
def project(project):
    """conftest's empty project with two classes of two images and one unsorted image."""
    for k, cls in enumerate(("cats", "dogs")):
        project.add_files([(f"{cls}{i}.png", _png(10 * k + i)) for i in range(2)], cls)
    project.add_files([("loose.png", _png(99))])
    return project


def test_a_project_with_a_running_job_is_not_deleted(project):
    run_dir = project.runs_dir / "20200101-000000-000-abcd"
    run_dir.mkdir(parents=True)
    (run_dir / runfolder.STATUS).write_text(json.dumps({"state": "running", "pid": _dead_pid(), "started": 1.0}))
    assert jobs.active_run(project) is None
    run_status.write_status(run_dir, "running", "training")  # alive: this process
    assert jobs.active_run(project) == run_dir.name
    with pytest.raises(WorkspaceError, match="cancel"):
        jobs.delete_project(Workspace(), project.slug)
    assert project.db_path.exists()


def test_readiness_rule_and_inbox_apart(project):
    assert project.class_counts() == {"cats": 2, "dogs": 2} and project.count(INBOX) == 1
    assert dataset.training_problem(project.class_counts()) is None
    assert "at least 2 classes" in dataset.training_problem({"cats": 2, "dogs": 1})
    assert "'dogs' (1)" in dataset.training_problem({"cats": 2, "dogs": 1, "birds": 3})
    assert dataset.training_problem({"cats": 2, "dogs": 2, "empty": 0}) is None  # an empty class is left out


def test_the_launcher_settles_its_dead_job_and_configs_are_not_mutated(project, tmp_path, monkeypatch):
    cfg = TrainConfig(train_epochs=3)
    run_id = jobs.start_training(project, cfg, command=[sys.executable, "-c", "pass"])  # exits without a status
    run_dir = jobs.run_path(project, run_id)
    assert (cfg.run_dir, cfg.image_dir) == (TrainConfig().run_dir, TrainConfig().image_dir)
    assert TrainConfig.load(run_dir / runfolder.CONFIG).run_dir == str(run_dir)
    deadline = time.time() + 20
    while _status(run_dir)["state"] == "running" and time.time() < deadline:  # nobody but the watcher writes
        time.sleep(0.05)
    assert (_status(run_dir)["state"], _status(run_dir)["message"]) == ("failed", run_status.DIED_MESSAGE)

    monkeypatch.chdir(tmp_path)
    bad = TrainConfig(image_dir=str(tmp_path / "no such folder"))
    with pytest.raises(dataset.DatasetError):
        runs.execute(bad)
    assert bad.run_dir is None
    (made,) = (tmp_path / "runs").iterdir()
    assert _status(made)["state"] == "failed"
    assert Path(TrainConfig.load(made / runfolder.CONFIG).run_dir).resolve() == made.resolve()


def test_a_process_that_cannot_be_proven_the_job_is_neither_kept_running_nor_signalled(tmp_path):
    """pids are reused: a status whose process start time is missing (as where /proc was missing) or another
    process's reads as a dead job, and cancel never signals that process or its group."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        for proc_start in (None, "12345"):
            run_dir = tmp_path / f"run-{proc_start}"
            run_dir.mkdir()
            stored = {"state": "running", "pid": other.pid, "started": time.time() - 3600, "message": "training"}
            if proc_start:
                stored["proc_start"] = proc_start
            (run_dir / runfolder.STATUS).write_text(json.dumps(stored))
            assert run_status.read_status(run_dir).state == "failed"
            jobs.cancel(run_dir, timeout=1)
            assert other.poll() is None, "an unrelated process was signalled"
    finally:
        other.kill()
        other.wait()
