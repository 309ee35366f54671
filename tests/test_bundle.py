"""engine.export.bundle: bundle.zip holds the export and the bundle's own files, atomically, and its predict.py runs
alone (on the export the export tests share, tests/export_data.py)."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from export_data import draw, exported_once, save_rgb

from engine.export import bundle as export_bundle

TOP_LINE = re.compile(r"^\d\.\d{6}: \S.*$")


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    return exported_once(tmp_path_factory)


@pytest.fixture(scope="module")
def bundle(exp):
    return export_bundle.write_bundle(exp.out, exp.root / "dl" / "bundle.zip")


@pytest.mark.slow
def test_bundle_holds_everything_and_no_temporary_file_remains(exp, bundle):
    names = set(zipfile.ZipFile(bundle).namelist())
    assert {"saved_model/saved_model.pb", "model_float32.tflite", "model_dynamic.tflite", "model_int8.tflite",
            "labels.txt", "model_card.json", "predict.py", "requirements.txt", "README.md"} <= names
    assert any(n.startswith("saved_model/variables/") for n in names)
    assert [p.name for p in bundle.parent.iterdir()] == ["bundle.zip"]
    reqs = zipfile.ZipFile(bundle).read("requirements.txt").decode().split()
    assert [re.split("[<>=]", r)[0] for r in reqs] == ["ai-edge-litert", "numpy", "pillow"]
    # ranges, not the trainer's exact versions: lowest tested version up to the next major (test_serve.py tests both)
    assert all(re.fullmatch(r"[\w-]+>=\d+(\.\d+)*,<\d+", r) for r in reqs), reqs
    serve = zipfile.ZipFile(bundle).read("requirements-serve.txt").decode().split()
    assert serve[:2] == ["-r", "requirements.txt"] and all(re.fullmatch(r"[\w-]+>=\d+(\.\d+)*,<\d+", r)
                                                          for r in serve[2:]), serve


@pytest.mark.slow
def test_a_failed_bundle_write_leaves_neither_a_bundle_nor_a_temp_file(exp, tmp_path, monkeypatch):
    monkeypatch.setattr(export_bundle, "BUNDLE_SOURCES", tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        export_bundle.write_bundle(exp.out, tmp_path / "out" / "bundle.zip")
    assert list((tmp_path / "out").iterdir()) == []


def _modelless_export(folder: Path) -> Path:
    """An export folder without models: all that write_bundle needs, without TensorFlow."""
    folder.mkdir(parents=True)
    (folder / "labels.txt").write_text("a\nb\n")
    (folder / "model_card.json").write_text(json.dumps({"labels": ["a", "b"], "image_size": 96,
                                                        "engine_version": "9.9", "tflite": {}}))
    return folder


SHIPPED = ("predict.py", "serve.py", "Dockerfile", "requirements.txt", "requirements-serve.txt", "www/index.html",
           "www/app.html", "www/app.js", "www/page.js", "www/page.css", "web/index.html", "web/demo.js", "web/demo.css")
RUNTIME = "web/vendor/onnxruntime-web-1.31.1/"  # the vendored ONNX Runtime Web (tests/test_web_demo.py checks it)
VENDORED = tuple(RUNTIME + name for name in ("LICENSE", "README.md", "ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs"))
WASM = RUNTIME + "ort-wasm-simd-threaded.wasm"  # kept gzipped in the repository, unpacked in the bundle


def test_the_bundle_ships_engine_bundle_files_byte_for_byte(tmp_path):
    bundle = export_bundle.write_bundle(_modelless_export(tmp_path / "out"), tmp_path / "bundle.zip")
    with zipfile.ZipFile(bundle) as zf:
        assert set(zf.namelist()) == {*SHIPPED, *VENDORED, WASM, "README.md", "labels.txt", "model_card.json"}
        for name in SHIPPED + VENDORED:
            assert zf.read(name) == (export_bundle.BUNDLE_SOURCES / name).read_bytes(), name
            assert zf.getinfo(name).external_attr >> 16 == 0o644, name
        assert zf.read(WASM) == gzip.decompress((export_bundle.BUNDLE_SOURCES / (WASM + ".gz")).read_bytes())
        assert zf.getinfo(WASM).external_attr >> 16 == 0o644
        readme = zf.read("README.md").decode()
    assert readme == export_bundle.bundle_readme(json.loads((tmp_path / "out" / "model_card.json").read_text()))
    assert readme.startswith("# Image classifier (2 classes)\n\nMade with Retrain Studio 9.9 on .")
    assert "`[N,96,96,3]`" in readme and "Resize to 96x96" in readme
    assert "$" not in readme.replace('"$PWD/', "").replace('"$(base64 ', "")  # the shell's, not the template's
    # TF Serving: the version folder it needs, and a request to the signature that takes encoded images
    assert 'docker run -p 8501:8501 -v "$PWD/saved_model:/models/classifier/1" -e MODEL_NAME=classifier ' \
           "tensorflow/serving" in readme
    assert '{"signature_name": "serving_bytes", "instances": [{"b64": ' in readme
    assert "curl -s -d @request.json http://127.0.0.1:8501/v1/models/classifier:predict" in readme


def test_nothing_but_the_bundle_folders_files_ships(tmp_path, monkeypatch):
    sources = tmp_path / "bundle_sources"
    sources.mkdir()
    for name in SHIPPED + ("README.md",):
        (sources / name).parent.mkdir(exist_ok=True)
        (sources / name).write_bytes((export_bundle.BUNDLE_SOURCES / name).read_bytes())
    (sources / "__pycache__").mkdir()  # left by importing engine.bundle.predict from the source tree
    (sources / "__pycache__" / "predict.cpython-311.pyc").write_bytes(b"\x00")
    (sources / ".DS_Store").write_bytes(b"\x00")
    (sources / "www" / ".DS_Store").write_bytes(b"\x00")
    (sources / "www" / "drafts").mkdir()  # only www/'s own files ship, not folders below it
    (sources / "www" / "drafts" / "old.html").write_bytes(b"<p>")
    vendor = sources / RUNTIME
    vendor.mkdir(parents=True)  # web/ ships with its folders (the vendored runtime), but nothing hidden in them
    (vendor / "ort.wasm.min.mjs").write_bytes(b"export {};")
    (vendor / "x.wasm.gz").write_bytes(gzip.compress(b"\x00asm"))
    (vendor / ".DS_Store").write_bytes(b"\x00")
    (sources / "web" / ".cache").mkdir()
    (sources / "web" / ".cache" / "old.js").write_bytes(b"")
    (sources / "web" / "__pycache__").mkdir()
    (sources / "web" / "__pycache__" / "x.pyc").write_bytes(b"\x00")
    monkeypatch.setattr(export_bundle, "BUNDLE_SOURCES", sources)
    bundle = export_bundle.write_bundle(_modelless_export(tmp_path / "out"), tmp_path / "bundle.zip")
    names = zipfile.ZipFile(bundle).namelist()
    assert sorted(names) == sorted([*SHIPPED, RUNTIME + "ort.wasm.min.mjs", RUNTIME + "x.wasm", "README.md",
                                    "labels.txt", "model_card.json"]), names
    assert zipfile.ZipFile(bundle).read(RUNTIME + "x.wasm") == b"\x00asm"


def _run_bundle_predict(unpacked: Path, *args: str) -> subprocess.CompletedProcess:
    """predict.py from the unzipped bundle, in a clean environment where engine, TensorFlow and OpenCV cannot be
    imported: it must stand alone."""
    block = ("import runpy, sys; sys.modules.update(dict.fromkeys(['engine', 'tensorflow', 'cv2'])); "
             "sys.argv = ['predict.py', *sys.argv[1:]]; runpy.run_path('predict.py', run_name='__main__')")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", block, *args], cwd=unpacked, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_bundle_predict_runs_standalone_and_prints_label_image_lines(exp, bundle, tmp_path):
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(bundle).extractall(unpacked)
    rng = np.random.default_rng(7)
    circle = save_rgb(tmp_path / "circle.jpg", draw(1, rng, 300, 400))  # not model-sized: predict.py resizes
    proc = _run_bundle_predict(unpacked, str(circle))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 5 and all(TOP_LINE.match(line) for line in lines), proc.stdout
    assert lines[0].endswith(": red circle")
    probs = [float(line.split(":")[0]) for line in lines]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-3)

    stripes = save_rgb(tmp_path / "stripes.png", draw(0, rng, 260, 200))
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    proc = _run_bundle_predict(unpacked, "--model", "model_int8.tflite", "--json", str(stripes),
                               str(tmp_path / "broken.jpg"))
    assert proc.returncode == 1 and "broken.jpg" in proc.stderr and "Traceback" not in proc.stderr
    [result] = json.loads(proc.stdout)
    assert result["predictions"][0]["label"] == "stripes"



@pytest.mark.slow
def test_exported_files_are_readable_by_others_like_any_new_file(exp, bundle):
    """A Dockerfile's non-root user must be able to read the models it copies in (mkstemp alone makes 0600)."""
    for p in (exp.out / "model_float32.tflite", exp.out / "model_card.json", bundle):
        assert p.stat().st_mode & 0o044 == 0o044, p
    with zipfile.ZipFile(bundle) as zf:
        for info in zf.infolist():
            if info.filename.endswith((".tflite", ".json", ".txt")):
                assert (info.external_attr >> 16) & 0o044 == 0o044, info.filename
