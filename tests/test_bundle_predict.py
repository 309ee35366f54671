"""The bundle's predict.py on folders: recursion into class subfolders and the per-class accuracy summary.

(Running it on a real model is in test_bundle.py, which shares one export with the other export tests.)"""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from engine.data import images
from engine.inference.bundle_files import BUNDLE_SOURCES


def bundle_predict():
    spec = importlib.util.spec_from_file_location("bundle_predict_folders", BUNDLE_SOURCES / "predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_folders_are_searched_recursively_and_hidden_entries_skipped(tmp_path):
    bp = bundle_predict()
    for rel in ("daisy/a.jpg", "daisy/sub/b.PNG", "rose/c.jpeg", "rose/notes.txt", ".hidden/d.jpg",
                "rose/.e.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = [p.replace(str(tmp_path), "") for p in bp.image_paths([str(tmp_path), "loose.jpg"])]
    assert found == ["/daisy/a.jpg", "/daisy/sub/b.PNG", "/rose/c.jpeg", "loose.jpg"]
    labels = ["daisy", "rose"]
    assert [bp.true_label(p, labels) for p in bp.image_paths([str(tmp_path)])] == ["daisy", None, "rose"]


def test_accuracy_per_class_summary():
    bp = bundle_predict()

    def result(true, top, unknown=False):
        return {"path": "x", "true": true, "predictions": [{"label": top, "probability": 0.9}], "unknown": unknown}

    text = bp.accuracy_per_class([result("rose", "rose"), result("rose", "daisy", True), result("daisy", "daisy"),
                                  {"path": "y", "predictions": [{"label": "rose", "probability": 1.0}]}])
    lines = text.splitlines()
    assert lines[0].startswith("top-1 accuracy per class")
    assert lines[1].split() == ["daisy", "1/1", "100.0%"]
    assert lines[2].split()[:3] == ["rose", "1/2", "50.0%"] and "(1 below the threshold" in lines[2]
    assert lines[3].split()[:3] == ["all", "2/3", "66.7%"]
    assert bp.accuracy_per_class([{"path": "y", "predictions": []}]) == ""


def _heic_bytes() -> bytes:
    buf = io.BytesIO()
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[:, :20] = (30, 40, 200)
    Image.fromarray(rgb).save(buf, "HEIF")  # engine.data.images registered pillow-heif's plugin
    return buf.getvalue()


def test_bundle_reads_heic_like_training_when_pillow_heif_is_installed(tmp_path):
    bp = bundle_predict()
    data = _heic_bytes()
    assert bp.HEIF and "HEIF" in bp.TRAINING_FORMATS
    assert np.array_equal(bp.load_rgb(data, formats=bp.TRAINING_FORMATS), images.load_image(data))
    (tmp_path / "IMG_0001.HEIC").write_bytes(data)
    assert bp.image_paths([str(tmp_path)]) == [str(tmp_path / "IMG_0001.HEIC")]


def test_without_pillow_heif_the_bundle_refuses_heic_with_the_install_command(tmp_path):
    # serve.py and predict.py in an interpreter where pillow-heif cannot be imported (the bundle does not require it)
    (tmp_path / "IMG_0002.HEIC").write_bytes(_heic_bytes())
    code = f"""import sys, json, importlib.util
sys.modules["pillow_heif"] = None
spec = importlib.util.spec_from_file_location("bundle_serve", {str(BUNDLE_SOURCES / "serve.py")!r})
serve = sys.modules["bundle_serve"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(serve)
bp = serve.bp
try:
    bp.load_rgb(open(sys.argv[1], "rb").read(), formats=bp.TRAINING_FORMATS)
except bp.DECODE_ERRORS as exc:
    print(json.dumps({{"heif": bp.HEIF, "answer": serve.image_error(exc), "paths": bp.image_paths([sys.argv[2]])}}))
"""
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "IMG_0002.HEIC"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out == {"heif": False, "paths": [],
                   "answer": [415, "not a supported image (JPEG, PNG, BMP, WebP, GIF or TIFF; HEIC after pip install "
                                   "pillow-heif)"]}


@pytest.mark.parametrize("name, parts", [
    ("a/b.jpg", ["a", "b.jpg"]), ("a\\b.jpg", ["a", "b.jpg"]), ("./a//b/", ["a", "b"]), ("..png", ["..png"]),
    ("../x", None), ("a/../../x", None), ("a\\..\\x", None), ("/etc/x", None), ("\\x", None), ("C:x", None),
    ("c:\\x", None), ("a\x00b", None), ("", None), ("./", None)])
def test_zip_member_names_are_checked_once_for_every_zip(name, parts):
    """engine.inference.predict, engine.inference.serve, the bundle's serve.py and the data import all use this one
    check."""
    assert bundle_predict().safe_member_parts(name) == parts
