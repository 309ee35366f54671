"""The command line, run as a user runs it: a subprocess, real training, real export."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, shared_dataset

from engine.data.demo import make_demo_dataset

MAKE_IMAGE_CLASSIFIER_FLAGS = [
    "--image_dir", "--tfhub_module", "--image_size", "--saved_model_dir", "--labels_output_file",
    "--tflite_output_file", "--train_epochs", "--batch_size", "--learning_rate", "--momentum", "--dropout_rate",
    "--label_smoothing", "--l1_regularizer", "--l2_regularizer", "--validation_split", "--do_fine_tuning",
    "--assert_accuracy_at_least", "--do_data_augmentation", "--rotation_range", "--horizontal_flip", "--zoom_range",
    "--width_shift_range", "--height_shift_range", "--shear_range", "--summaries_dir", "--set_memory_growth",
    "--distribution_strategy", "--early_stopping_patience",
]
TOP5_LINE = re.compile(r"^\d\.\d{6}: \S.*$")


def engine(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=cwd or REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One make_image_classifier-style run shared by the checks below (export is the slow part)."""
    tmp = tmp_path_factory.mktemp("cli")
    data = make_demo_dataset(tmp / "images", per_class=10, seed=2)
    out = tmp / "out"
    proc = engine("--image_dir", str(data), "--saved_model_dir", str(out / "model"), "--labels_output_file",
                  str(out / "labels.txt"), "--tflite_output_file", str(out / "model.tflite"), "--run_dir",
                  str(tmp / "run"), "--summaries_dir", str(out / "tb"), "--set_memory_growth")
    return tmp, data, out, proc


def test_help_lists_every_make_image_classifier_flag():
    proc = engine("train", "--help")
    assert proc.returncode == 0
    for flag in MAKE_IMAGE_CLASSIFIER_FLAGS:
        assert flag in proc.stdout, flag


@pytest.mark.slow
def test_train_writes_make_image_classifier_outputs(trained):
    tmp, _, out, proc = trained
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model" / "saved_model.pb").exists()
    assert (out / "labels.txt").read_text().split() == ["shapes", "text"]
    assert (out / "model.tflite").stat().st_size > 1_000_000
    assert list((out / "tb" / "head").glob("events.out.tfevents.*"))  # --summaries_dir (test_make_image_classifier)
    assert "Validation accuracy" in proc.stdout


@pytest.mark.slow
def test_run_folder_describes_itself(trained):
    tmp, data, _, proc = trained
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp / "run"
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "succeeded"
    card = json.loads((run / "model_card.json").read_text())
    assert card["labels"] == ["shapes", "text"]
    assert card["config"]["image_dir"] == str(data)
    assert len(card["dataset_hash"]) == 64
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val_accuracy"] >= 0.9 and metrics["predictions"]
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert {"stage", "embed", "epoch", "result"} <= {e["type"] for e in events}
    names = set(zipfile.ZipFile(run / "bundle.zip").namelist())
    assert {"labels.txt", "model_card.json", "predict.py", "model_float32.tflite", "model_dynamic.tflite",
            "model_int8.tflite"} <= names


@pytest.mark.slow
def test_predict_prints_label_image_style_top_lines(trained):
    tmp, data, out, proc = trained
    assert proc.returncode == 0, proc.stderr[-3000:]
    image = next((data / "text").iterdir())
    pred = engine("predict", "--image", str(image), "--model_file", str(out / "model.tflite"), "--label_file",
                  str(out / "labels.txt"))
    assert pred.returncode == 0, pred.stderr[-2000:]
    lines = [line for line in pred.stdout.splitlines() if TOP5_LINE.match(line)]
    assert len(lines) == 2  # top-5 of a 2-class model is 2 lines
    assert lines[0].endswith(": text")


def test_missing_image_dir_is_a_clear_error_not_a_traceback(tmp_path):
    proc = engine("train", "--image_dir", str(tmp_path / "nope"), "--run_dir", str(tmp_path / "run"))
    assert proc.returncode == 1
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "failed"


def test_single_class_is_a_clear_error(tmp_path):
    (tmp_path / "only").mkdir()
    for i in range(3):
        cv2.imwrite(str(tmp_path / "only" / f"{i}.png"), np.full((40, 40, 3), i * 50, np.uint8))
    proc = engine("train", "--image_dir", str(tmp_path), "--run_dir", str(tmp_path / "run"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "only" in proc.stderr


@pytest.mark.slow
def test_random_labels_fail_the_accuracy_assertion(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(30):  # the same kind of noise in both classes: nothing to learn
        folder = tmp_path / "data" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    proc = engine("train", "--image_dir", str(tmp_path / "data"), "--assert_accuracy_at_least", "0.9", "--run_dir",
                  str(tmp_path / "run"))
    assert proc.returncode == 1
    assert "below --assert_accuracy_at_least" in proc.stderr
    assert not (tmp_path / "run" / "bundle.zip").exists()


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.parametrize("name, min_accuracy", [("flowers", 0.8), ("text_nontext", 0.85)])
def test_cli_trains_on_the_shared_datasets(tmp_path, name, min_accuracy):
    data = shared_dataset(name)
    out = tmp_path / "out"
    proc = engine("train", "--image_dir", str(data), "--saved_model_dir", str(out / "model"),
                  "--labels_output_file", str(out / "labels.txt"), "--tflite_output_file", str(out / "m.tflite"),
                  "--run_dir", str(tmp_path / "run"), "--assert_accuracy_at_least", str(min_accuracy))
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads((tmp_path / "run" / "model_card.json").read_text())
    assert card["labels"] == sorted(p.name for p in data.iterdir() if p.is_dir())
    for variant, stats in card["tflite"].items():
        assert stats["agreement_top1_vs_keras"] >= 0.9, variant
    assert (tmp_path / "run" / "bundle.zip").exists()


@pytest.mark.slow
def test_bundle_predict_runs_in_a_fresh_venv_without_tensorflow(trained, tmp_path):
    tmp, data, _, proc = trained
    assert proc.returncode == 0, proc.stderr[-3000:]
    bundle = tmp_path / "bundle"
    zipfile.ZipFile(tmp / "run" / "bundle.zip").extractall(bundle)
    venv = tmp_path / "venv"  # RETRAIN_STUDIO_BUNDLE_PYTHON=/path/to/python3.x: on another Python than the trainer's
    subprocess.run([os.environ.get("RETRAIN_STUDIO_BUNDLE_PYTHON", sys.executable), "-m", "venv", str(venv)],
                   check=True)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-r", str(bundle / "requirements.txt")],
                         capture_output=True, text=True, timeout=600)
    if pip.returncode != 0:
        pytest.skip(f"could not install the bundle's requirements from the package registry: {pip.stderr[-500:]}")
    image = next((data / "shapes").iterdir())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([str(venv / "bin" / "python"), "predict.py", str(image)], cwd=bundle, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [line for line in run.stdout.splitlines() if TOP5_LINE.match(line)]
    assert lines[0].endswith(": shapes")
    no_tf = subprocess.run([str(venv / "bin" / "python"), "-c", "import tensorflow"], capture_output=True)
    assert no_tf.returncode != 0  # the bundle really runs without TensorFlow


def _lowest_versions(requirements: str) -> list[str]:
    """'name>=low,<high' lines -> 'name==low': the oldest versions a bundle's requirements claim to work with."""
    out = []
    for line in requirements.splitlines():
        found = re.fullmatch(r"([\w-]+)>=([\w.]+),<[\w.]+", line.strip())
        if found:
            out.append(f"{found[1]}=={found[2]}")
        else:
            assert line.startswith("-r ") or not line.strip(), f"not a range: {line!r}"
    return out


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RETRAIN_STUDIO_FRESH_VENV_TEST") != "1",
                    reason="set RETRAIN_STUDIO_FRESH_VENV_TEST=1: installs old package versions from the registry")
def test_the_bundle_works_with_the_lowest_versions_its_requirements_allow(trained, tmp_path):
    # RETRAIN_STUDIO_BUNDLE_PYTHON=/path/to/python3.x runs it on another Python than the trainer's (run on 3.10 and
    # 3.11; the oldest versions have no builds for 3.13, where pip picks newer ones: the test above)
    from servers import clean_env, curl_upload, free_port, start

    tmp, data, _, proc = trained
    assert proc.returncode == 0, proc.stderr[-3000:]
    bundle = tmp_path / "bundle"
    zipfile.ZipFile(tmp / "run" / "bundle.zip").extractall(bundle)
    lowest = _lowest_versions((bundle / "requirements.txt").read_text()
                              + (bundle / "requirements-serve.txt").read_text())
    assert {v.split("==")[0] for v in lowest} >= {"ai-edge-litert", "numpy", "pillow", "fastapi", "uvicorn"}
    venv = tmp_path / "venv"
    python = os.environ.get("RETRAIN_STUDIO_BUNDLE_PYTHON", sys.executable)
    subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *lowest], capture_output=True, text=True,
                         timeout=900)
    if pip.returncode != 0 and "matching distribution" not in pip.stderr:
        pytest.skip(f"could not reach the package registry: {pip.stderr[-500:]}")
    assert pip.returncode == 0, f"the lowest versions do not install: {pip.stderr[-2000:]}"
    freeze = subprocess.run([str(venv / "bin" / "pip"), "freeze"], capture_output=True, text=True).stdout.lower()
    assert all(v.lower().replace("_", "-") in freeze.replace("_", "-") for v in lowest), (lowest, freeze)
    image = next((data / "shapes").iterdir())
    for model in sorted(bundle.glob("model_*.tflite")):  # each variant: older runtimes may lack newer op versions
        run = subprocess.run([str(venv / "bin" / "python"), "predict.py", "--model", model.name, str(image)],
                             cwd=bundle, env=clean_env(), capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        assert [ln for ln in run.stdout.splitlines() if TOP5_LINE.match(ln)][0].endswith(": shapes"), model.name
    port = free_port()
    srv = start([str(venv / "bin" / "python"), "serve.py", "--port", str(port)], bundle, tmp_path / "log", port)
    try:
        assert curl_upload(srv.url + "/classify", image)[image.name]["preds"][0]["tagName"] == "shapes"
    finally:
        srv.stop()


@pytest.mark.slow
def test_sigterm_marks_the_run_cancelled_and_leaves_no_bundle(tmp_path):
    data = make_demo_dataset(tmp_path / "images", per_class=6, seed=4)
    run = tmp_path / "run"
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "engine", "train", "--image_dir", str(data), "--run_dir", str(run),
                             "--do_fine_tuning", "--fine_tune_epochs", "100000"],  # minutes of training
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and '"type": "epoch"' not in _read(run / "events.jsonl"):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "cancelled"
    assert not (run / "bundle.zip").exists()
    assert {p: p.read_bytes() for p in data.rglob("*") if p.is_file()} == before  # no image lost or changed


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""
