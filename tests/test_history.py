"""engine.runs.history: the run read-model the pages list (fast: run folders written by hand, no training)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from engine.config import runfiles
from engine.runs import history
from engine.runs import status as run_status
from engine.runs.history import RunSummary
from engine.runs.status import RunState, RunStatus
from engine.store.workspace import Workspace


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _run(project, run_id: str, state: RunState, *, pid: int | None = None, result: float | None = None,
         metrics: dict | None = None, bundle: bool = False, started: float = 1_600_000_000.0) -> Path:
    run_dir = project.runs_dir / run_id
    run_dir.mkdir(parents=True)
    (run_dir / runfiles.RUN).write_text(json.dumps({"run_id": run_id, "started": started, "n_images": 6,
                                                    "backbone": "efficientnet-lite0"}))
    run_status.write_status(run_dir, RunState.RUNNING, "training", pid=pid)
    if state is not RunState.RUNNING:
        run_status.write_status(run_dir, state, "done", pid=pid)
    if result is not None:
        (run_dir / runfiles.EVENTS).write_text(json.dumps({"type": "result", "val_accuracy": result}) + "\n")
    if metrics is not None:
        (run_dir / runfiles.METRICS).write_text(json.dumps(metrics))
    if bundle:
        (run_dir / runfiles.BUNDLE).write_bytes(b"zip")
    return run_dir


def test_rows_are_the_read_model_and_follow_the_files(project):
    done = _run(project, "20200101-000001-000-aaaa", RunState.SUCCEEDED, pid=_dead_pid(),
                metrics={"val_accuracy": 0.75}, bundle=True)
    exporting = _run(project, "20200101-000002-000-bbbb", RunState.RUNNING, pid=os.getpid(), result=0.5,
                     metrics={"val_accuracy": 0.5})
    failed = _run(project, "20200101-000003-000-cccc", RunState.FAILED, pid=_dead_pid())
    (project.runs_dir / "20200101-000004-000-dddd").mkdir()  # neither status.json nor run.json: not a run

    rows = history.list_runs(project)
    assert all(isinstance(r, RunSummary) and isinstance(r.status, RunStatus) for r in rows)
    assert [r.run_id for r in rows] == [failed.name, exporting.name, done.name]  # newest first
    by_id = {r.run_id: r for r in rows}
    assert [(by_id[d.name].state, by_id[d.name].reviewable, by_id[d.name].downloadable)
            for d in (done, exporting, failed)] == [(RunState.SUCCEEDED, True, True), (RunState.RUNNING, True, False),
                                                    (RunState.FAILED, False, False)]
    assert by_id[done.name].val_accuracy == 0.75  # from metrics.json: no result event
    assert by_id[exporting.name].val_accuracy == 0.5 and by_id[failed.name].val_accuracy is None
    row = by_id[done.name]
    assert (row.run_dir, row.backbone, row.n_images) == (done, "efficientnet-lite0", 6)
    assert row.started == row.status.started and row.duration >= 0
    assert row.started_text == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row.started))

    # the flags are read from the files each time, not remembered
    (done / runfiles.BUNDLE).unlink()
    (exporting / runfiles.METRICS).unlink()
    (failed / runfiles.METRICS).write_text("{}")
    by_id = {r.run_id: r for r in history.list_runs(project)}
    assert not by_id[done.name].downloadable and by_id[done.name].reviewable
    assert not by_id[exporting.name].reviewable and by_id[failed.name].reviewable

    assert history.latest_run(project) == done.name
    assert history.latest_run(project, state=None) == failed.name
    assert history.latest_run(project, state=RunState.RUNNING) == exporting.name
    assert history.latest_run(project, state=RunState.CANCELLED) is None


def test_a_dead_or_unknown_run_is_listed_as_such(project):
    dead = _run(project, "20200101-000001-000-aaaa", RunState.RUNNING, pid=_dead_pid())
    odd = project.runs_dir / "20200101-000002-000-bbbb"
    odd.mkdir()
    (odd / runfiles.STATUS).write_text(json.dumps({"state": "paused", "started": 1_600_000_000.0}))
    no_status = project.runs_dir / "20200101-000003-000-cccc"
    no_status.mkdir()
    (no_status / runfiles.RUN).write_text(json.dumps({"run_id": no_status.name, "started": 1_600_000_000.0}))
    by_id = {r.run_id: r for r in history.list_runs(project)}
    assert by_id[dead.name].state is RunState.FAILED and by_id[dead.name].status.message == run_status.DIED_MESSAGE
    assert by_id[odd.name].state is RunState.UNKNOWN and by_id[odd.name].duration is None
    assert by_id[no_status.name].state is RunState.UNKNOWN
    assert by_id[no_status.name].started == 1_600_000_000.0  # from run.json
    assert history.list_runs(Workspace().create_project("empty")) == []


def test_metrics_events_and_log(tmp_path):
    assert history.load_metrics(tmp_path) is None and history.events(tmp_path) == []
    assert history.log_tail(tmp_path) == ""
    (tmp_path / runfiles.METRICS).write_text(json.dumps({"labels": ["a", "b"]}))
    assert history.load_metrics(tmp_path) == {"labels": ["a", "b"]}
    (tmp_path / runfiles.LOG).write_text("".join(f"line {i}\n" for i in range(50)))
    assert history.log_tail(tmp_path, lines=3).splitlines() == ["line 47", "line 48", "line 49"]


BROKEN = {  # what one damaged or hand-edited run folder holds
    "finished is a word": {runfiles.STATUS: json.dumps({"state": "succeeded", "started": 1.0, "finished": "today"})},
    "started overflows": {runfiles.STATUS: json.dumps({"state": "succeeded", "started": 1e308, "finished": 2.0})},
    "an event that is a list": {runfiles.STATUS: json.dumps({"state": "succeeded"}), runfiles.EVENTS: "[1]\n"},
    "status.json not UTF-8": {runfiles.STATUS: b'{"state": "succeeded", "message": "\xff"}'},
    "run.json of the wrong kinds": {runfiles.STATUS: json.dumps({"state": "failed", "pid": "x"}),
                                    runfiles.RUN: json.dumps({"started": "y", "n_images": "many", "backbone": 3})},
    "metrics.json a list": {runfiles.STATUS: json.dumps({"state": "succeeded"}), runfiles.METRICS: "[1, 2]"},
}


def test_one_broken_run_folder_never_stops_the_others_being_listed(project):
    good = _run(project, "20200101-000009-000-good", RunState.SUCCEEDED, pid=_dead_pid(), result=0.8, bundle=True)
    for i, contents in enumerate(BROKEN.values()):
        run_dir = project.runs_dir / f"20200101-00000{i}-000-bad{i}"
        run_dir.mkdir(parents=True)
        for name, data in contents.items():
            (run_dir / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    rows = history.list_runs(project)
    assert len(rows) == len(BROKEN) + 1
    by_id = {r.run_id: r for r in rows}
    assert by_id[good.name].state is RunState.SUCCEEDED and by_id[good.name].val_accuracy == 0.8
    for row in rows:  # what the pages do with every row: format it
        assert row.started is None or 0 < row.started < 1e11
        assert isinstance(row.started_text, str) and (row.duration is None or row.duration >= 0)
        assert row.n_images is None or isinstance(row.n_images, int)
        assert isinstance(row.backbone, str)
    assert history.latest_run(project) == good.name


def test_a_run_is_compared_with_the_run_it_was_retrained_from_else_the_last_successful_one(project):
    metrics = {"val_accuracy": 0.9, "labels": ["a", "b"]}
    first = _run(project, "20200101-000001-000-aaaa", RunState.SUCCEEDED, pid=_dead_pid(), metrics=metrics)
    second = _run(project, "20200101-000002-000-bbbb", RunState.SUCCEEDED, pid=_dead_pid(), metrics=metrics)
    stopped = _run(project, "20200101-000003-000-cccc", RunState.CANCELLED, pid=_dead_pid(), metrics=metrics)
    retrain = _run(project, "20200101-000004-000-dddd", RunState.SUCCEEDED, pid=_dead_pid(), metrics=metrics)
    meta = json.loads((retrain / runfiles.RUN).read_text())
    (retrain / runfiles.RUN).write_text(json.dumps({**meta, "retrained_from": first.name}))
    row, why = history.baseline(project, retrain.name)
    assert (row.run_id, why) == (first.name, "the run it was retrained from")
    (retrain / runfiles.RUN).write_text(json.dumps(meta))  # a run started on the Train page
    row, why = history.baseline(project, retrain.name)
    assert (row.run_id, why) == (second.name, "the previous successful run")  # never the cancelled one
    assert history.baseline(project, first.name) is None and stopped.is_dir()


def test_a_run_can_be_named_in_its_run_json(project):
    import pytest

    from engine.runs import jobs
    from engine.store.errors import WorkspaceError

    run_dir = _run(project, "20200101-000001-000-aaaa", RunState.SUCCEEDED, pid=_dead_pid())
    assert history.summarize(run_dir).name is None
    assert jobs.name_run(project, run_dir.name, "  Before fixing the roses ") == "Before fixing the roses"
    meta = json.loads((run_dir / runfiles.RUN).read_text())
    assert meta["name"] == "Before fixing the roses" and meta["backbone"] == "efficientnet-lite0"  # the rest stays
    assert history.list_runs(project)[0].name == "Before fixing the roses"
    with pytest.raises(WorkspaceError, match="cannot be seen"):
        jobs.name_run(project, run_dir.name, "a\u200bb")
    with pytest.raises(jobs.JobError, match="too long"):
        jobs.name_run(project, run_dir.name, "x" * 200)
    jobs.name_run(project, run_dir.name, "")  # an empty name removes it
    assert history.summarize(run_dir).name is None and "name" not in json.loads((run_dir / runfiles.RUN).read_text())
    cli_run = project.runs_dir / "20200101-000002-000-bbbb"  # a command-line run: no run.json yet
    cli_run.mkdir()
    run_status.write_status(cli_run, RunState.SUCCEEDED, "done", pid=_dead_pid())
    jobs.name_run(project, cli_run.name, "from the command line")
    assert history.summarize(cli_run).name == "from the command line"
    with pytest.raises(jobs.JobError):
        jobs.name_run(project, "20200101-000009-000-gone", "x")
