"""Prediction from every exported form (tflite, SavedModel, run folder, bundle zip) and the label_image-style CLI."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import stat
import struct
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from export_data import CLASSES, SIZE, draw, exported_once, save_rgb

from engine.cli.predict import add_predict_args, run_predict
from engine.data import images
from engine.export.bundle import write_bundle
from engine.inference.bundle_files import BUNDLE_SOURCES
from engine.inference.predict import PredictError, load_predictor, unpack_bundle

TOP_LINE = re.compile(r"^\d\.\d{6}: \S.*$")


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    return exported_once(tmp_path_factory)  # the shared export (tests/export_data.py), made once per session


@pytest.fixture(scope="module")
def files(exp, tmp_path_factory):
    """Validation-style images as files of other sizes and formats, one per class, named by class index."""
    folder = tmp_path_factory.mktemp("predict_images")
    rng = np.random.default_rng(11)
    for i in range(len(CLASSES)):
        save_rgb(folder / f"{i}.{'png' if i % 2 else 'jpg'}", draw(i, rng, 180 + 40 * i, 250))
    return sorted(folder.iterdir())


@pytest.fixture(scope="module")
def tflite(exp):
    return load_predictor(str(exp.out / "model_float32.tflite"))


def _cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_predict_args(parser)
    return parser.parse_args(list(argv))


@pytest.mark.slow
def test_tflite_and_saved_model_give_the_same_answers(exp, files, tflite):
    saved = load_predictor(str(exp.out / "saved_model"))
    assert saved.labels == tflite.labels == CLASSES and saved.kind == "saved_model" and tflite.kind == "tflite"
    assert saved.image_size == tflite.image_size == SIZE
    for (path, top_t, err_t), (_, top_s, err_s) in zip(tflite.predict_files(files), saved.predict_files(files),
                                                       strict=True):
        assert err_t is None and err_s is None
        assert top_t[0][0] == top_s[0][0] == CLASSES[int(path.rsplit("/", 1)[1][0])]
        assert top_t[0][1] == pytest.approx(top_s[0][1], abs=1e-4)


@pytest.mark.slow
def test_a_corrupt_file_is_an_error_entry_and_the_others_still_run(tflite, files, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    results = tflite.predict_files([files[0], bad, tmp_path / "missing.png", files[1]])
    assert [r[2] is None for r in results] == [True, False, False, True]
    assert "broken.jpg" in results[1][2] and "missing.png" in results[2][2]
    assert results[1][1] is None and len(results[3][1]) == 5


@pytest.mark.slow
def test_predict_takes_any_size_array_and_resizes_inside(tflite, files):
    pixels = images.load_image(files[1])
    assert pixels.shape[:2] != (SIZE, SIZE)
    top = tflite.predict(pixels, top_k=3)
    assert len(top) == 3 and top[0][0] == CLASSES[1]
    assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)
    assert top == tflite.predict(images.prepare(files[1], SIZE), top_k=3)  # prepared or not: same answer


@pytest.mark.slow
def test_int8_output_is_dequantised_to_probabilities(exp, files, tflite):
    int8 = load_predictor(str(exp.out / "model_int8.tflite"))
    assert int8.backend.input_dtype == "uint8" and int8.backend.output_dtype == "uint8"
    for path in files:
        image = images.prepare(path, SIZE)
        probs = int8.probabilities(image)
        assert probs.dtype == np.float32 and probs.min() >= 0 and probs.max() <= 1
        assert probs.sum() == pytest.approx(1.0, abs=0.02)
        assert probs.argmax() == tflite.probabilities(image).argmax()


@pytest.mark.slow
def test_bundle_zip_and_run_folder_load_with_their_labels(exp, files, tmp_path):
    bundle = write_bundle(exp.out, tmp_path / "bundle.zip")
    from_zip = load_predictor(str(bundle))
    from_run = load_predictor(str(exp.out))
    for p in (from_zip, from_run):
        assert p.labels == CLASSES and p.model_path.name == "model_float32.tflite" and p.card["image_size"] == SIZE
        assert p.predict_files(files[:1])[0][1][0][0] == CLASSES[0]


@pytest.mark.slow
def test_cli_prints_label_image_lines_headed_by_file_name_when_several(exp, files, capsys):
    assert run_predict(_cli("--image", str(files[2]), "--model_file", str(exp.out / "model_dynamic.tflite"))) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and all(TOP_LINE.match(line) for line in lines) and lines[0].endswith(": " + CLASSES[2])

    folder = str(files[0].parent)
    assert run_predict(_cli("--image", folder, "--model_file", str(exp.out / "model_float32.tflite"),
                            "--label_file", str(exp.out / "labels.txt"), "--top_k", "2")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0::3] == [str(f) for f in files] and len(lines) == 3 * len(files)
    assert all(TOP_LINE.match(line) for i, line in enumerate(lines) if i % 3)


@pytest.mark.slow
def test_cli_honours_input_mean_and_std(exp, files, tflite, capsys):
    def probs(*extra: str) -> list[float]:
        assert run_predict(_cli("--image", str(files[3]), "--model_file", str(exp.out / "model_float32.tflite"),
                                "--json", *extra)) == 0
        [entry] = json.loads(capsys.readouterr().out)
        return {p["label"]: p["probability"] for p in entry["predictions"]}

    image = images.prepare(files[3], SIZE)
    for mean, std in ((0.0, 255.0), (127.5, 127.5)):
        got = probs("--input_mean", str(mean), "--input_std", str(std))
        want = tflite.backend(((image.astype(np.float32) - mean) / std)[None])[0]
        assert got == {lab: pytest.approx(float(w), abs=2e-6) for lab, w in zip(CLASSES, want, strict=True)}
    assert probs() == probs("--input_mean", "0", "--input_std", "255")  # the defaults are label_image-style [0,1]
    assert probs("--input_mean", "127.5", "--input_std", "127.5") != probs()


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["float32", "dynamic", "int8"])
def test_label_image_flags_work_on_every_composed_variant(exp, files, capsys, variant):
    """TF's label_image usage (--input_mean 0 --input_std 255) on each exported file, int8 included."""
    def top(*extra: str) -> list[dict]:
        assert run_predict(_cli("--image", str(files[1]), "--model_file", str(exp.out / f"model_{variant}.tflite"),
                                "--label_file", str(exp.out / "labels.txt"), "--json", *extra)) == 0
        [entry] = json.loads(capsys.readouterr().out)
        return entry["predictions"]

    plain, label_image = top(), top("--input_mean", "0", "--input_std", "255")
    assert plain == label_image and label_image[0]["label"] == CLASSES[1]


@pytest.mark.slow
def test_size_and_centre_crop_come_from_the_model_card(exp, tmp_path):
    card = json.loads((exp.out / "model_card.json").read_text())
    card["preprocessing"]["center_crop"] = True
    (tmp_path / "model_card.json").write_text(json.dumps(card))
    for name in ("model_int8.tflite", "labels.txt"):
        (tmp_path / name).write_bytes((exp.out / name).read_bytes())
    p = load_predictor(str(tmp_path / "model_int8.tflite"))
    assert p.center_crop is True and p.image_size == SIZE and p.labels == CLASSES
    wide = draw(0, np.random.default_rng(3), 100, 400)
    assert np.array_equal(p.prepare(wide), images.resize_for_model(images.center_crop_if_elongated(wide), SIZE))
    (tmp_path / "model_card.json").unlink()
    p = load_predictor(str(tmp_path / "model_int8.tflite"))  # no card: size from the input shape, no crop
    assert p.center_crop is False and p.image_size == SIZE


def test_cli_reports_a_missing_or_broken_model_without_a_traceback(tmp_path, capsys):
    assert run_predict(_cli("--image", str(tmp_path), "--model_file", str(tmp_path / "nope.tflite"))) == 1
    assert "Model not found" in capsys.readouterr().err
    (tmp_path / "broken.tflite").write_bytes(b"\x00" * 64)
    assert run_predict(_cli("--image", str(tmp_path), "--model_file", str(tmp_path / "broken.tflite"))) == 1
    assert "broken.tflite is not a valid TFLite model" in capsys.readouterr().err


def test_a_bundle_zip_with_an_unsafe_member_is_refused_and_nothing_is_left(tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("model_float32.tflite", b"\x00" * 64)
        zf.writestr("../x", b"outside the bundle's folder")
    with pytest.raises(PredictError, match=r"unsafe path \('\.\./x'\)"):
        load_predictor(str(bad))
    assert list(scratch.iterdir()) == []


# ----------------------------------------------------------------------------------------------------------------
# Untrusted bundles (issue 19): model paths stay inside the bundle, a broken card is one line, unpacking is limited
# ----------------------------------------------------------------------------------------------------------------
def _bundle_folder(root: Path, card: dict | str) -> Path:
    """A bundle folder whose model loads no further than the checks (its .tflite is not a model)."""
    folder = root / "bundle"
    folder.mkdir()
    (folder / "model_card.json").write_text(card if isinstance(card, str) else json.dumps(card))
    (folder / "labels.txt").write_text("a\nb\n")
    (folder / "model_float32.tflite").write_bytes(b"\x00" * 64)
    return folder


@pytest.mark.parametrize("how", ["absolute", "dotdot"])
def test_a_card_whose_default_model_is_outside_the_bundle_is_refused(tmp_path, how):
    outside = tmp_path / "elsewhere" / "model.tflite"
    outside.parent.mkdir()
    outside.write_bytes(b"\x00" * 64)
    name = str(outside) if how == "absolute" else "../elsewhere/model.tflite"
    folder = _bundle_folder(tmp_path, {"default_model": name, "image_size": SIZE})
    with pytest.raises(PredictError, match=rf"default_model '{re.escape(name)}' in {re.escape(str(folder))} is not "
                                           r"a path inside the bundle"):
        load_predictor(str(folder))


@pytest.mark.parametrize("link", ["model_card.json", "model_float32.tflite", "labels.txt"])
def test_a_card_model_or_labels_linked_out_of_the_bundle_is_refused(tmp_path, link):
    folder = _bundle_folder(tmp_path, {"default_model": "model_float32.tflite", "image_size": SIZE})
    outside = tmp_path / f"outside-{link}"
    (folder / link).rename(outside)  # a readable file of the right kind, only not in the bundle
    (folder / link).symlink_to(outside)
    with pytest.raises(PredictError, match=rf"'{re.escape(link)}' in .* is a link to .*outside-.*, outside the "
                                           "bundle"):
        load_predictor(str(folder))


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "\udcff"])
def test_a_card_that_is_not_a_json_object_is_one_error_line(tmp_path, capsys, text):
    folder = _bundle_folder(tmp_path, "")
    (folder / "model_card.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    assert run_predict(_cli("--image", str(tmp_path), "--model_file", str(folder))) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.match(rf"error: model_card.json in {re.escape(str(folder))} is not (valid JSON|a JSON object) \(", err)


def _raw_zip(path: Path, name: str, deflated: bytes, crc: int, declared: int) -> Path:
    """A one-member zip written by hand, so that the test decides what its directory declares."""
    n = name.encode()
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(deflated), declared, len(n), 0) + n
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, len(deflated), declared,
                          len(n), 0, 0, 0, 0, 0o644 << 16, 0) + n
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local) + len(deflated), 0)
    path.write_bytes(local + deflated + central + end)
    return path


def _gib_of_zeros() -> tuple[bytes, int]:
    """1 GiB of zeros deflated (about 1 MB) and its CRC, without deflating a gigabyte: each fully flushed block
    stands alone, so one block repeated is the whole stream."""
    mib = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(mib) + c.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(1024):
        crc = zlib.crc32(mib, crc)
    return block * 1024 + zlib.compressobj(9, zlib.DEFLATED, -15).flush(), crc


@pytest.mark.parametrize("declared, match", [(1 << 30, r"would unpack to \d+ times its packed size \(the limit is "
                                                       r"200:1\); is it a zip bomb\?"),
                                             (1000, r"is not a readable zip file \(Bad CRC-32")],
                         ids=["1 GiB of zeros", "size understated"])
def test_a_zip_bomb_is_refused_quickly_and_nothing_is_left(tmp_path, monkeypatch, declared, match):
    """A gigabyte of zeros in a 1 MB zip: refused on its ratio before anything is written; declared as 1000 bytes
    instead, unpacking stops at what the directory says and the file begun is removed."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    bomb = _raw_zip(tmp_path / "bomb.zip", "model_float32.tflite", *_gib_of_zeros(), declared=declared)
    started = time.monotonic()
    with pytest.raises(PredictError, match=match):
        load_predictor(str(bomb))
    assert time.monotonic() - started < 5
    assert list(scratch.iterdir()) == []
    into = tmp_path / "into"
    with pytest.raises(PredictError, match=match):
        unpack_bundle(bomb, into)
    assert not into.exists()


def test_a_bundle_zip_over_the_file_or_size_limit_or_with_a_link_is_refused(tmp_path):
    big = tmp_path / "big.zip"
    with zipfile.ZipFile(big, "w") as zf:
        zf.writestr("saved_model/variables/variables.data-00000-of-00001", np.random.default_rng(0).bytes(3 << 20))
        zf.writestr("model_card.json", "{}")
    into = tmp_path / "into"
    with pytest.raises(PredictError, match=r"big.zip would unpack to 3.0 MB; a bundle may unpack to at most 2.0 MB"):
        unpack_bundle(big, into, max_bytes=2 << 20)
    with pytest.raises(PredictError, match=r"big.zip holds 2 files; a bundle may hold at most 1$"):
        unpack_bundle(big, into, max_files=1)
    assert not into.exists()
    unpack_bundle(big, into)  # within the default limits: unpacked, folders and all
    assert (into / "saved_model" / "variables" / "variables.data-00000-of-00001").stat().st_size == 3 << 20

    linked = tmp_path / "linked.zip"
    with zipfile.ZipFile(linked, "w") as zf:
        zf.writestr("labels.txt", "a\nb\n")
        info = zipfile.ZipInfo("model_card.json")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(PredictError, match=r"linked.zip holds a link \('model_card.json'\)"):
        unpack_bundle(linked, tmp_path / "into2")
    assert not (tmp_path / "into2").exists()


@pytest.mark.slow
def test_cli_exit_code_is_1_when_an_image_fails_but_the_rest_print(exp, files, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_text("hello")
    rc = run_predict(_cli("--image", str(files[0]), str(bad), "--model_file", str(exp.out / "model_float32.tflite")))
    out, err = capsys.readouterr()
    assert rc == 1 and "bad.png" in err and sum(bool(TOP_LINE.match(line)) for line in out.splitlines()) == 5


@pytest.mark.slow
def test_wrong_label_file_is_a_clear_error(exp, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    with pytest.raises(PredictError, match="2 labels but the model has 5 outputs"):
        load_predictor(str(exp.out / "model_float32.tflite"), str(labels))


def _bundle_module():
    """The bundle's predict.py as a module (it is a standalone script, not part of the engine package)."""
    spec = importlib.util.spec_from_file_location("bundle_predict", BUNDLE_SOURCES / "predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("shape, crop", [((400, 300), False), ((128, 128), False), ((120, 90), False),
                                         ((600, 200), True), ((600, 200), False), ((40, 300), False)])
def test_bundle_preprocessing_matches_the_engine(tmp_path, shape, crop):
    """The standalone predict.py (NumPy + Pillow) decodes, crops and resizes like engine.data.images (OpenCV)."""
    rng = np.random.default_rng(0)
    h, w = shape
    img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 2)
    rgba = np.dstack([img, np.where(np.arange(w) < w // 4, 0, 255).astype(np.uint8)[None].repeat(h, 0)])
    path = tmp_path / "x.png"
    cv2.imwrite(str(path), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))  # with transparency: composited on white
    ours = _bundle_module().prepare(str(path), 64, crop).astype(int)
    engine = images.prepare(path, 64, crop).astype(int)
    assert ours.shape == engine.shape == (64, 64, 3)
    assert np.abs(ours - engine).max() <= 1  # OpenCV's fixed-point bilinear rounds a little differently


def test_bundle_decoding_matches_the_engine(tmp_path):
    """16-bit grey, palette transparency and EXIF rotation decode to the same pixels as engine.data.images."""
    from PIL import Image

    rng = np.random.default_rng(1)
    cv2.imwrite(str(tmp_path / "grey16.png"), rng.integers(0, 65535, (30, 40), dtype=np.uint16))
    pal = Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).convert("P")
    pal.info["transparency"] = 0
    pal.save(tmp_path / "palette.png", transparency=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: the decoded image must be upright (40 x 30 -> 30 x 40)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "rot.jpg", exif=exif)
    module = _bundle_module()
    for name in ("grey16.png", "palette.png", "rot.jpg"):
        ours, engine = module.load_rgb(str(tmp_path / name)), images.load_image(tmp_path / name)
        assert ours.shape == engine.shape and np.array_equal(ours, engine), name
    assert module.load_rgb(str(tmp_path / "rot.jpg")).shape == (40, 30, 3)
