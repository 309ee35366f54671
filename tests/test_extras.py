"""Formats made on request (engine.export.extras, engine.runs.extras, `python -m engine export-extra`): TF.js and
Core ML are made from a run's SavedModel in a background process; the TF.js model classifies in Node with
@tensorflow/tfjs as the float32 TFLite model does; the Core ML model is a classifier with the run's labels and an
image input scaled by 1/255; bad states (no SavedModel, no converter, made already, a process that died, a converter
that fails) are answered in words and keep what was made before."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from export_data import CLASSES, SIZE, exported_once

from engine.cli import export_extra as cli
from engine.config import runfiles as rf
from engine.export import coreml_model, extras, tfjs_model
from engine.inference.predict import TFLiteModel
from engine.runs import extras as background

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
JS = REPO / "tests" / "js"
MADE_WITHIN_S = 600  # both conversions, on 2 busy cores


def _run_folder(tmp_path_factory) -> Path:
    """A finished run's exported files (the shared real export), in a folder of its own."""
    exp = exported_once(tmp_path_factory)
    run = tmp_path_factory.mktemp("extras") / "run"
    shutil.copytree(exp.out, run)
    return run


def _wait(run: Path, names: tuple[str, ...]) -> dict[str, dict]:
    seen: dict[str, set] = {name: set() for name in names}
    deadline = time.time() + MADE_WITHIN_S
    while time.time() < deadline:
        states = {name: background.extra_status(run, name) for name in names}
        for name, status in states.items():
            seen[name].add(status["state"])
        if all(s["state"] not in (extras.RUNNING,) for s in states.values()):
            return {name: {**s, "seen": seen[name]} for name, s in states.items()}
        time.sleep(0.5)
    raise AssertionError(f"not made within {MADE_WITHIN_S} s: {states}")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Both formats asked for as the Export page asks: started in the background, polled until made."""
    run = _run_folder(tmp_path_factory)
    first = {name: background.start_extra(run, name) for name in ("tfjs", "coreml")}
    return run, first, _wait(run, ("tfjs", "coreml"))


def test_both_are_made_in_the_background_and_say_so(made):
    run, first, final = made
    for name in ("tfjs", "coreml"):
        assert first[name]["state"] == extras.RUNNING
        assert final[name]["state"] == extras.DONE, final[name]["message"]
        assert "ready" in final[name]["message"]
        assert final[name]["files"] and all((run / f).exists() for f in final[name]["files"])
    assert set(final["tfjs"]["files"]) == {f"{rf.TFJS}/{p.name}" for p in (run / rf.TFJS).iterdir()}
    assert final["coreml"]["files"] == [rf.COREML]
    assert not list(run.glob(".partial*"))  # made aside, renamed into place


def _pixels(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(3)
    exp_like = rng.random((3, SIZE, SIZE, 3), dtype=np.float32)
    path = tmp_path / "x.f32"
    exp_like.tofile(path)
    return path, exp_like


def test_the_tfjs_model_describes_itself(made):
    run, _, _ = made
    model = json.loads((run / rf.TFJS / tfjs_model.MODEL_JSON).read_text())
    assert model["format"] == "graph-model"
    assert set(model["signature"]["inputs"]) == {"images"} and set(model["signature"]["outputs"]) == {"probabilities"}
    dims = [int(d["size"]) for d in model["signature"]["inputs"]["images"]["tensorShape"]["dim"]]
    assert dims == [-1, SIZE, SIZE, 3]
    assert model["userDefinedMetadata"]["labels"] == (run / rf.LABELS).read_text().splitlines() == CLASSES
    [group] = model["weightsManifest"]
    size = {"float32": 4, "int32": 4, "bool": 1}
    declared = sum(int(np.prod(w["shape"])) * size[w["dtype"]] for w in group["weights"])
    assert declared == sum((run / rf.TFJS / p).stat().st_size for p in group["paths"])
    assert all((run / rf.TFJS / p).stat().st_size <= tfjs_model.SHARD_BYTES for p in group["paths"])
    ops = {n["op"] for n in model["modelTopology"]["node"]}
    assert ops <= tfjs_model.OPS_TFJS_RUNS and {"Conv2D", "Softmax"} <= ops
    consts = [n for n in model["modelTopology"]["node"] if n["op"] == "Const"]
    assert consts and not [n for n in consts if "tensorContent" in json.dumps(n)]  # values live in the shards only


def test_the_tfjs_model_classifies_in_node_as_the_float32_tflite_does(made, tmp_path):
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed: the TF.js model is checked in Node where the machine has it")
    if not (JS / "node_modules" / "@tensorflow" / "tfjs-converter").is_dir():
        pytest.skip("tests/js has no node_modules: run `npm ci --prefix tests/js` (.ci/run does)")
    run, _, _ = made
    pixels, x = _pixels(tmp_path)
    out = subprocess.run(["node", str(JS / "classify.js"), str(run / rf.TFJS), str(pixels), str(len(x)), str(SIZE)],
                         capture_output=True, text=True, timeout=300, cwd=JS)
    assert out.returncode == 0, out.stderr[-3000:]
    answer = json.loads(out.stdout)
    assert answer["inputs"] == ["images"] and answer["outputs"] == ["probabilities"]
    probs = np.array(answer["probabilities"])
    expected = TFLiteModel(run / "model_float32.tflite")(x)
    assert probs.shape == expected.shape == (len(x), len(CLASSES))
    assert np.abs(probs - expected).max() <= 1e-4


def test_the_core_ml_model_is_a_classifier_with_the_runs_labels(made):
    ct = pytest.importorskip("coremltools")
    run, _, _ = made
    spec = ct.models.MLModel(str(run / rf.COREML), skip_model_load=True).get_spec()  # running it needs macOS
    [image] = spec.description.input
    assert image.name == "images" and image.type.WhichOneof("Type") == "imageType"
    assert (image.type.imageType.width, image.type.imageType.height) == (SIZE, SIZE)
    assert image.type.imageType.colorSpace == ct.proto.FeatureTypes_pb2.ImageFeatureType.RGB
    assert [o.name for o in spec.description.output] == [coreml_model.LABEL_OUTPUT, coreml_model.PROBS_OUTPUT]
    assert spec.description.predictedFeatureName == coreml_model.LABEL_OUTPUT
    assert spec.description.predictedProbabilitiesName == coreml_model.PROBS_OUTPUT
    program = (run / rf.COREML / "Data" / "com.apple.CoreML" / "model.mlmodel").read_bytes()
    assert all(label.encode() in program for label in CLASSES)
    # the pixels are scaled by 1/255 inside the model, as training scaled them
    assert b"images__scaled__" in program or np.isclose(_image_scale(ct, run), 1 / 255)
    meta = spec.description.metadata
    assert meta.author == "Retrain Studio" and meta.license == "Apache-2.0"
    assert meta.shortDescription.startswith("Classes: " + ", ".join(CLASSES))


def _image_scale(ct, run: Path) -> float:
    """The scale coremltools put in front of the image input (a `mul` by a constant in the program)."""
    prog = ct.models.MLModel(str(run / rf.COREML), skip_model_load=True)._get_mil_internal()
    for op in prog.functions["main"].operations:
        if op.op_type == "mul" and op.inputs["x"].name == "images":
            return float(op.inputs["y"].val)
    return float("nan")


# ----------------------------------------------------------------------------------------------------------------
# Bad states
# ----------------------------------------------------------------------------------------------------------------
def _bare_run(tmp_path: Path, saved_model: bool = True) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / rf.LABELS).write_text("a\nb\n")
    (run / rf.MODEL_CARD).write_text(json.dumps({"image_size": SIZE}))
    if saved_model:
        (run / rf.SAVED_MODEL).mkdir()
        (run / rf.SAVED_MODEL / "saved_model.pb").write_bytes(b"not a SavedModel")
    return run


def test_a_run_without_a_saved_model_is_refused_in_words(tmp_path):
    run = _bare_run(tmp_path, saved_model=False)
    with pytest.raises(ValueError, match="no saved_model/ folder to convert"):
        background.start_extra(run, "tfjs")
    assert background.extra_status(run, "tfjs")["state"] == extras.NOT_MADE


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="Unknown format 'onnx2'"):
        extras.get("onnx2")
    assert tuple(extras.EXTRAS) == cli.EXTRA_NAMES  # the command's choices are the table's names


def test_a_missing_converter_says_what_to_install_and_starts_nothing(tmp_path, monkeypatch):
    run = _bare_run(tmp_path)
    monkeypatch.setattr(coreml_model, "converter_installed", lambda: False)
    status = background.extra_status(run, "coreml")
    assert status["state"] == extras.CONVERTER_MISSING
    assert f"pip install {coreml_model.REQUIREMENT}" in status["message"]
    with pytest.raises(ValueError, match="needs coremltools"):
        background.start_extra(run, "coreml")
    assert not extras.status_path(run, "coreml").exists()


def test_a_second_start_while_it_is_made_is_refused(tmp_path):
    import os

    from engine.runs.status import process_start_time

    run = _bare_run(tmp_path)
    extras.write_status(run, "tfjs", state=extras.RUNNING, progress=0.4, message="Simplifying", started=time.time(),
                        pid=os.getpid(), proc_start=process_start_time(os.getpid()))
    assert background.extra_status(run, "tfjs")["state"] == extras.RUNNING
    with pytest.raises(ValueError, match="being made already"):
        background.start_extra(run, "tfjs")


def test_a_process_that_died_is_reported_as_stopped(tmp_path):
    run = _bare_run(tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    extras.write_status(run, "tfjs", state=extras.RUNNING, progress=0.6, message="Simplifying", started=time.time(),
                        pid=gone.pid, proc_start="12345")
    status = background.extra_status(run, "tfjs")
    assert status["state"] == extras.FAILED and "stopped before it finished" in status["message"]
    assert str(extras.log_path(run, "tfjs")) in status["message"]


def test_a_failing_conversion_is_stored_in_words_and_keeps_the_previous_model(tmp_path):
    run = _bare_run(tmp_path)  # its saved_model.pb is not one
    (run / rf.TFJS).mkdir()
    (run / rf.TFJS / "model.json").write_text("{}")  # made before
    out = subprocess.run([sys.executable, "-m", "engine", "export-extra", "--run_dir", str(run), "--extra", "tfjs"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 1
    status = extras.stored_status(run, "tfjs")
    assert status["state"] == extras.FAILED and status["message"].startswith("Making the TensorFlow.js model failed")
    assert "error: Making the TensorFlow.js model failed" in out.stderr
    assert (run / rf.TFJS / "model.json").read_text() == "{}"
    assert not list(run.glob(".partial*"))
