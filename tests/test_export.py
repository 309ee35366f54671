"""engine.export.artefacts: SavedModel + three TFLite variants + labels + card, made for real (the export that
several test modules share: tests/export_data.py)."""

from __future__ import annotations

import base64
import io
import json
import shutil
import zipfile

import cv2
import numpy as np
import pytest
from export_data import CLASSES, SIZE, draw, exported_once

from engine.core.tfcompat import hub, keras, tf
from engine.data.images import prepare
from engine.export import artefacts as export
from engine.export.bundle import write_bundle
from engine.export.savedmodel import prepare_encoded, saved_model_zip


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    return exported_once(tmp_path_factory)


@pytest.mark.slow
def test_every_file_is_written_and_labels_keep_the_callers_order(exp):
    names = {"saved_model", "model_float32.tflite", "model_dynamic.tflite", "model_int8.tflite", "model.onnx",
             "labels.txt", "model_card.json"}
    assert {p.name for p in exp.out.iterdir()} == names  # and no temporary files left behind
    assert (exp.out / "saved_model" / "saved_model.pb").exists()
    assert (exp.out / "labels.txt").read_text().splitlines() == CLASSES
    assert (exp.out / "saved_model" / "assets" / "labels.txt").read_text().splitlines() == CLASSES
    assert set(exp.result.tflite) == {"float32", "dynamic", "int8"}
    assert {e["stage"] for e in exp.result.events if e["type"] == "stage"} == {"export"}


@pytest.mark.slow
def test_saved_model_signature_gives_the_keras_probabilities(exp):
    loaded = tf.saved_model.load(str(exp.out / "saved_model"))
    fn = loaded.signatures["serving_default"]
    spec = fn.structured_input_signature[1]["images"]
    assert spec.shape.as_list() == [None, SIZE, SIZE, 3] and spec.dtype == tf.float32
    x = exp.x_val[:8].astype(np.float32) / 255.0
    got = fn(images=tf.constant(x))["probabilities"].numpy()
    want = exp.model.predict(x, verbose=0)
    assert np.abs(got - want).max() < 1e-5


@pytest.mark.slow
def test_saved_model_still_loads_as_a_keras_model(exp):
    reloaded = keras.models.load_model(str(exp.out / "saved_model"), custom_objects={"KerasLayer": hub.KerasLayer})
    x = exp.x_val[:4].astype(np.float32) / 255.0
    assert np.abs(reloaded.predict(x, verbose=0) - exp.model.predict(x, verbose=0)).max() < 1e-5


@pytest.mark.slow
def test_saved_model_zip_unpacks_to_a_loadable_model_and_writes_nothing(exp, tmp_path):
    before = sorted(p.relative_to(exp.out) for p in exp.out.rglob("*"))
    with zipfile.ZipFile(io.BytesIO(saved_model_zip(exp.out))) as zf:
        zf.extractall(tmp_path)
    assert sorted(p.relative_to(exp.out) for p in exp.out.rglob("*")) == before  # a reader never writes
    fn = tf.saved_model.load(str(tmp_path / "saved_model")).signatures["serving_default"]
    x = exp.x_val[:2].astype(np.float32) / 255.0
    assert np.abs(fn(images=tf.constant(x))["probabilities"].numpy() - exp.model.predict(x, verbose=0)).max() < 1e-5


def _encode(rgb: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGBA2BGRA if rgb.shape[2] == 4 else cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def _engine_pixels(encoded: list[bytes], center_crop: bool = False) -> np.ndarray:
    """The images as training prepares them (engine.data.images.prepare), in [0,1]: serving_default's input."""
    return np.stack([prepare(d, SIZE, center_crop) for d in encoded]).astype(np.float32) / 255.0


def test_the_bytes_signatures_preprocessing_is_trainings_to_a_grey_level():
    """PNG (lossless, so both decoders see the same pixels): every resize path of training's OpenCV rule (same size,
    INTER_LINEAR, INTER_AREA, INTER_AREA with a side growing), transparency on white and the centre crop."""
    rng = np.random.default_rng(3)
    for h, w, channels in [(SIZE, SIZE, 3), (150, 200, 3), (300, 260, 4), (600, 100, 3), (90, 700, 3), (230, 220, 3)]:
        data = _encode(rng.integers(0, 256, (h, w, channels), dtype=np.uint8), ".png")
        for crop in (False, True):
            got = prepare_encoded(tf.constant(data), SIZE, tf.constant(crop)).numpy()
            assert got.shape == (SIZE, SIZE, 3) and got.dtype == np.float32
            assert np.abs(got - _engine_pixels([data], crop)[0]).max() <= 1.01 / 255, (h, w, channels, crop)


@pytest.mark.slow
def test_serving_bytes_takes_base64_images_and_agrees_with_serving_default(exp, tmp_path):
    """The request the bundle README shows for TF Serving, its b64 strings decoded as TF Serving's REST API does: the
    probabilities match serving_default's on the same images prepared by the engine (the signature decodes JPEG
    with Pillow's IDCT; resizing may differ by a grey level). The composed export is the template with this run's
    head, so this tests the template path."""
    rng = np.random.default_rng(11)
    jpegs = [_encode(img, ".jpg") for img in exp.x_val[::4]]  # validation images, one per class
    others = [_encode(draw(1, rng, 300, 380), ".jpg"), _encode(draw(2, rng, 150, 120), ".png")]  # resized inside
    body = json.dumps({"signature_name": "serving_bytes",
                       "instances": [{"b64": base64.b64encode(d).decode()} for d in jpegs + others]})
    request = json.loads(body)
    data = [base64.b64decode(i["b64"]) for i in request["instances"]]
    loaded = tf.saved_model.load(str(exp.out / "saved_model"))
    fn = loaded.signatures[request["signature_name"]]
    assert fn.structured_input_signature[1]["image_bytes"].dtype == tf.string
    got = fn(image_bytes=tf.constant(data))["probabilities"].numpy()
    want = loaded.signatures["serving_default"](images=tf.constant(_engine_pixels(data)))["probabilities"].numpy()
    assert got.shape == (len(data), len(CLASSES)) and np.abs(got - want).max() < 1e-3, np.abs(got - want).max()
    assert list(got.argmax(1)) == [*exp.y_val[::4], 1, 2]


@pytest.mark.slow
def test_serving_bytes_crops_when_the_model_card_says_so_loaded_as_tf_serving_does(exp, tmp_path):
    """The template is traced once for both crop settings; the card the exporter writes into assets/ decides. Loaded
    the way TF Serving loads it (a session on the MetaGraph, the asset's path fed by the loader), from the version
    folder the README's docker command mounts."""
    saved = tmp_path / "models" / "classifier" / "1"
    shutil.copytree(exp.out / "saved_model", saved)
    card = json.loads((saved / "assets" / "model_card.json").read_text())
    card["preprocessing"]["center_crop"] = True
    (saved / "assets" / "model_card.json").write_text(json.dumps(card, indent=2))
    data = [_encode(draw(0, np.random.default_rng(4), 120, 480), ".png")]  # 4:1, cropped to its centre
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
        signatures = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(saved)).signature_def

        def run(name: str, value) -> np.ndarray:
            sig = signatures[name]
            [feed] = sig.inputs.values()
            return session.run(sig.outputs["probabilities"].name, {feed.name: value})

        got = run("serving_bytes", data)
        cropped = run("serving_default", _engine_pixels(data, center_crop=True))
        stretched = run("serving_default", _engine_pixels(data))
    assert np.abs(got - cropped).max() < 1e-3 < np.abs(got - stretched).max()


@pytest.mark.slow
def test_tflite_variants_agree_with_keras(exp):
    stats = exp.result.stats
    assert stats["float32"]["agreement_top1_vs_keras"] == 1.0
    for variant in ("dynamic", "int8"):
        assert stats[variant]["agreement_top1_vs_keras"] >= 0.9, variant
    for variant, s in stats.items():
        assert s["val_accuracy"] >= 0.9, variant
        assert s["bytes"] == (exp.out / s["file"]).stat().st_size
    assert stats["int8"]["bytes"] < stats["float32"]["bytes"] / 2
    assert stats["dynamic"]["bytes"] < stats["float32"]["bytes"] / 2


@pytest.mark.slow
def test_int8_model_takes_raw_pixels_and_returns_uint8(exp):
    from engine.core.litert import tflite_interpreter

    it = tflite_interpreter(model_path=str(exp.out / "model_int8.tflite"))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    assert inp["dtype"] == np.uint8 and out["dtype"] == np.uint8
    scale, zero = inp["quantization"]
    assert zero == 0 and scale == pytest.approx(1 / 255, rel=1e-5)
    keras_top1 = exp.model.predict(exp.x_val / 255.0, verbose=0).argmax(1)
    top1 = []
    for img in exp.x_val:  # raw pixels straight in, no scaling
        it.set_tensor(inp["index"], img[None])
        it.invoke()
        top1.append(int(it.get_tensor(out["index"])[0].argmax()))
    assert np.mean(np.array(top1) == keras_top1) >= 0.9


@pytest.mark.slow
def test_card_describes_the_model_and_keeps_the_callers_fields(exp):
    card = json.loads((exp.out / "model_card.json").read_text())
    for key in ("format_version", "created", "engine_version", "labels", "image_size", "preprocessing", "backbone",
                "config", "dataset_hash", "class_counts", "metrics", "tflite"):
        assert key in card, key
    assert card["labels"] == CLASSES and card["image_size"] == SIZE and card["extra"] == "kept"
    assert card["dataset_hash"] == "ab" * 32 and card["backbone"]["handle"] == "efficientnet-lite0"
    pre = card["preprocessing"]
    assert pre["center_crop"] is False and pre["input"] == "RGB" and pre["int8_input"] == "uint8 0-255"
    assert {"range", "resize"} <= set(pre)
    for variant, s in card["tflite"].items():
        assert {"file", "bytes", "input_dtype", "agreement_top1_vs_keras", "val_accuracy", "input"} <= set(s)
        assert s["file"] == f"model_{variant}.tflite"
    assert card["tflite"]["int8"]["input_dtype"] == "uint8"
    assert card["tflite"]["float32"]["input_dtype"] == "float32"
    assert card["default_model"] == "model_float32.tflite"


def test_bad_arguments_are_rejected_before_any_work(tmp_path):
    x = np.zeros((2, SIZE, SIZE, 3), np.uint8)
    with pytest.raises(ValueError, match="Unknown TFLite variant"):
        export.export_model(None, CLASSES, tmp_path, image_size=SIZE, center_crop=False, representative=x,
                            validation=None, card={}, variants=("float16",))
    with pytest.raises(ValueError, match="uint8 of shape"):
        export.export_model(None, CLASSES, tmp_path, image_size=SIZE, center_crop=False,
                            representative=x[:, :100], validation=None, card={})
    with pytest.raises(FileNotFoundError, match="export it first"):
        write_bundle(tmp_path, tmp_path / "bundle.zip")


@pytest.mark.slow
def test_legacy_outputs_are_copied_to_the_flag_paths(exp, tmp_path):
    written = export.write_legacy_outputs(exp.result, saved_model_dir=str(tmp_path / "sm"),
                                          labels_output_file=str(tmp_path / "a" / "labels.txt"),
                                          tflite_output_file=str(tmp_path / "b" / "model.tflite"))
    assert set(written) == {"saved_model_dir", "labels_output_file", "tflite_output_file"}
    assert (tmp_path / "sm" / "saved_model.pb").exists()
    assert (tmp_path / "a" / "labels.txt").read_text().splitlines() == CLASSES
    assert (tmp_path / "b" / "model.tflite").read_bytes() == (exp.out / "model_float32.tflite").read_bytes()
    assert export.write_legacy_outputs(exp.result) == {}
