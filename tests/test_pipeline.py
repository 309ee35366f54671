"""engine.runs.pipeline: a run that fails for a reason outside the data says so in the user's words, in status.json
and on the command line, and leaves no half-written model behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

from engine.config import runfiles
from engine.config.training import TrainConfig
from engine.core.fileio import try_lock
from engine.data.demo import make_demo_dataset
from engine.runs import status as run_status
from engine.runs.pipeline import Cancelled, execute, failure_message
from engine.runs.status import RunState


def test_a_full_disk_is_named_wherever_in_the_chain_it_shows():
    tf_like = RuntimeError("{{function_node __wrapped__SaveV2_dtypes_246_device_/job:localhost}} No space left on "
                           "device [Op:SaveV2]")
    assert failure_message(tf_like) == (
        "Training: the disk is full. Free some space and train again; the project's images and earlier runs are not "
        "affected.", True)
    try:
        try:
            raise OSError(28, "No space left on device", "/x/model_int8.tflite")
        except OSError as exc:
            raise RuntimeError("copying failed: " + "x" * 2000) from exc
    except RuntimeError as chained:
        message, machine = failure_message(chained)
    assert machine and message.startswith("Training: the disk is full (/x/model_int8.tflite)")
    message, machine = failure_message(ValueError("y" * 5000))
    assert not machine and len(message) < 700  # a message, not a dump


@pytest.mark.slow
def test_training_onto_a_full_disk_fails_in_words_and_frees_what_it_wrote(small_disk, tmp_path):
    images = make_demo_dataset(tmp_path / "images", per_class=6)
    run_dir = small_disk / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "engine", "train", "--image_dir", str(images), "--run_dir",
                           str(run_dir), "--quantize", "float32"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: Training: the disk is full"), done.stderr
    assert "Traceback" not in done.stderr
    status = json.loads((run_dir / runfiles.STATUS).read_text())
    assert status["state"] == "failed" and "the disk is full" in status["message"] and len(status["message"]) < 700
    left = sorted(p.name for p in run_dir.iterdir())
    assert not [n for n in left if n.endswith(".tflite") or n.startswith(".tmp") or n.startswith(".saved_model")
                or n in (runfiles.SAVED_MODEL, runfiles.BUNDLE)], left
    assert runfiles.CONFIG in left and runfiles.EVENTS in left  # what explains the run stays


def test_a_second_process_on_the_same_run_folder_is_refused_before_it_touches_it(tmp_path):
    images = make_demo_dataset(tmp_path / "images", per_class=3)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / runfiles.STATUS).write_text('{"state": "running", "message": "the first process"}')
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with try_lock(run_dir / runfiles.LOCK) as mine:  # this test plays the first training process
        assert mine
        done = subprocess.run([sys.executable, "-m", "engine", "train", "--image_dir", str(images), "--run_dir",
                               str(run_dir), "--quantize", "float32"], capture_output=True, text=True, env=env,
                              timeout=300)
    assert done.returncode == 1 and "Another training process is using the run folder" in done.stderr
    assert json.loads((run_dir / runfiles.STATUS).read_text())["message"] == "the first process"
    assert sorted(p.name for p in run_dir.iterdir()) == [runfiles.LOCK, runfiles.STATUS]


def test_a_job_stops_at_its_next_event_once_the_cancel_marker_is_there(tmp_path):
    """No signal needed: the marker the app's cancel writes is enough, so a job whose process cannot be proven
    (and so is never signalled) still stops."""
    images = make_demo_dataset(tmp_path / "images", per_class=4)
    run_dir = tmp_path / "run"
    seen = []

    def user_cancels_when_features_start(event: dict) -> None:
        seen.append(event)
        if event.get("stage") == "embed":
            (run_dir / runfiles.CANCEL).write_text("now")

    cfg = TrainConfig(image_dir=str(images), run_dir=str(run_dir), quantize=["float32"])
    with pytest.raises(Cancelled):
        execute(cfg, user_cancels_when_features_start)
    assert run_status.read_status(run_dir).state is RunState.CANCELLED
    assert not (run_dir / runfiles.METRICS).exists() and not (run_dir / runfiles.BUNDLE).exists()
    assert not [e for e in seen if e.get("stage") == "train"]  # it stopped before training the head
