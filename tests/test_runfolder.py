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
from engine.inference import predict
from engine.runs import jobs
from engine.runs import pipeline as runs
from engine.runs import status as run_status
from engine.store.workspace import INBOX, Workspace

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
    assert variants.NAMES == ("float32", "dynamic", "int8")
    assert predict.MODEL_PREFERENCE == runfolder.MODEL_PREFERENCE == (
        "model_float32.tflite", "model_dynamic.tflite", "model_int8.tflite", "saved_model")
    assert dataset.SNAPSHOT_FILE == runfolder.SNAPSHOT
    assert jobs.DIED_MESSAGE == run_status.DIED_MESSAGE
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


def test_a_dead_job_reads_failed_and_is_written_once_by_settle(tmp_path):
    (tmp_path / runfolder.STATUS).write_text(json.dumps({"state": "running", "pid": _dead_pid(), "started": 1.0}))
    before = (tmp_path / runfolder.STATUS).read_bytes()
    for _ in range(2):  # reading never writes
        status = run_status.read_status(tmp_path)
        assert (status.state, status.message) == ("failed", run_status.DIED_MESSAGE)
        assert jobs.job_status(tmp_path)["state"] == "failed"
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
def project(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRAIN_STUDIO_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.delenv(jobs.COMMAND_ENV, raising=False)
    project = Workspace().create_project("runfolder")
    for k, cls in enumerate(("cats", "dogs")):
        project.add_files([(f"{cls}{i}.png", _png(10 * k + i)) for i in range(2)], cls)
    project.add_files([("loose.png", _png(99))])
    return project


def test_workspace_and_jobs_agree_on_the_running_job(project):
    run_dir = project.runs_dir / "20200101-000000-000-abcd"
    run_dir.mkdir(parents=True)
    (run_dir / runfolder.STATUS).write_text(json.dumps({"state": "running", "pid": _dead_pid(), "started": 1.0}))
    assert jobs.active_run(project) is None and project.running_job() is None
    run_status.write_status(run_dir, "running", "training")  # alive: this process
    assert jobs.active_run(project) == run_dir.name and project.running_job() == run_dir
    with pytest.raises(Exception, match="cancel"):
        Workspace().delete_project(project.slug)


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
    assert (_status(run_dir)["state"], _status(run_dir)["message"]) == ("failed", jobs.DIED_MESSAGE)

    monkeypatch.chdir(tmp_path)
    bad = TrainConfig(image_dir=str(tmp_path / "no such folder"))
    with pytest.raises(dataset.DatasetError):
        runs.execute(bad)
    assert bad.run_dir is None
    (made,) = (tmp_path / "runs").iterdir()
    assert _status(made)["state"] == "failed"
    assert Path(TrainConfig.load(made / runfolder.CONFIG).run_dir).resolve() == made.resolve()
