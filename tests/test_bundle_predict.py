"""The bundle's predict.py on folders: recursion into class subfolders and the per-class accuracy summary.

(Running it on a real model is in test_bundle.py, which shares one export with the other export tests.)"""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
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


@pytest.mark.parametrize("case", ["absolute", "dotdot", "linked model", "linked card", "linked labels", "not json",
                                  "not an object"])
def test_the_bundles_own_files_refuse_a_card_or_link_leading_out_of_the_bundle(tmp_path, case):
    """read_card and read_labels are what the bundle's serve.py and predict.py load the bundle with; the bundle's
    predict.py says why in one line instead of loading a model from elsewhere."""
    folder, outside = tmp_path / "bundle", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    shutil.copy(BUNDLE_SOURCES / "predict.py", folder / "predict.py")
    (outside / "model.tflite").write_bytes(b"\x00" * 64)
    default = {"absolute": str(outside / "model.tflite"), "dotdot": "../outside/model.tflite"}.get(case,
                                                                                                "model_float32.tflite")
    card = {"not json": '{"image_size":', "not an object": '"model_float32.tflite"'}.get(
        case, json.dumps({"default_model": default, "image_size": 8, "preprocessing": {"center_crop": False}}))
    (folder / "model_card.json").write_text(card)
    (folder / "labels.txt").write_text("a\nb\n")
    (folder / "model_float32.tflite").write_bytes(b"\x00" * 64)
    link = {"linked model": "model_float32.tflite", "linked card": "model_card.json", "linked labels": "labels.txt"}
    if case in link:
        (outside / link[case]).write_bytes((folder / link[case]).read_bytes())
        (folder / link[case]).unlink()
        (folder / link[case]).symlink_to(outside / link[case])
    want = {"absolute": f"default_model '{default}' in {folder} is not a path inside the bundle",
            "dotdot": f"default_model '{default}' in {folder} is not a path inside the bundle",
            "not json": f"model_card.json in {folder} is not valid JSON (Expecting",
            "not an object": f"model_card.json in {folder} is not a JSON object (it holds a string)"}.get(
        case, f"'{link.get(case)}' in {folder} is a link to {outside / str(link.get(case))}, outside the bundle")
    bp = bundle_predict()
    if case != "linked model":
        with pytest.raises(ValueError) as refused:
            bp.read_card(folder), bp.read_labels(folder)
        assert want in str(refused.value)
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    proc = subprocess.run([sys.executable, str(folder / "predict.py"), str(tmp_path / "x.png")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert want in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow only warns below twice its limit
def test_the_bundles_pixel_limit_answers_before_pillow_would(tmp_path):
    """90 Mpx: over our 80 Mpx limit, under the point where Pillow refuses by itself. Only our check, made from the
    header before decoding, says so (the bundle's predict.py and its server decode with it)."""
    from PIL import Image

    from engine.data.demo import _png_header_only

    bp = bundle_predict()
    data = _png_header_only(10_000, 9_000)
    assert 80_000_000 < 90_000_000 < 2 * Image.MAX_IMAGE_PIXELS
    with pytest.raises(bp.TooManyPixels, match=r"10000x9000 = 90000000 pixels is over the 80000000-pixel limit"):
        bp.load_rgb(data, max_pixels=80_000_000)
    (tmp_path / "big.png").write_bytes(data)  # a path, as predict.py reads files
    with pytest.raises(bp.TooManyPixels, match="90000000 pixels"):
        bp.load_rgb(tmp_path / "big.png", max_pixels=80_000_000)
