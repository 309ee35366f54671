"""engine.export.artefacts: SavedModel + three TFLite variants + labels + card, made for real (one shared export for
several test modules: import its helpers as `test_export`, the name pytest gives this file)."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.core.tfcompat import hub, keras, tf
from engine.export import artefacts as export
from engine.export.bundle import write_bundle
from engine.export.savedmodel import saved_model_zip
from engine.features.backbones import resolve
from engine.features.embeddings import Embedder
from engine.learn.classifier import build_classifier
from engine.learn.head import Head

# Deliberately not alphabetical, one with a space: labels.txt must keep the caller's order verbatim.
CLASSES = ["stripes", "red circle", "checker", "blank", "noise"]
SIZE = 224


def draw(cls: int, rng: np.random.Generator, h: int = SIZE, w: int = SIZE) -> np.ndarray:
    """A clearly separable synthetic RGB image of class `cls`, with some random variation."""
    img = np.full((h, w, 3), rng.integers(200, 256), np.uint8)
    s = min(h, w)
    if cls == 0:  # blue horizontal stripes
        step = int(rng.integers(s // 14, s // 8))
        for y in range(0, h, 2 * step):
            img[y:y + step] = (20, 40, int(rng.integers(160, 256)))
    elif cls == 1:  # a red disc
        c = (w // 2 + int(rng.integers(-s // 8, s // 8)), h // 2 + int(rng.integers(-s // 8, s // 8)))
        cv2.circle(img, c, int(rng.integers(s // 4, s // 3)), (int(rng.integers(180, 256)), 20, 20), -1)
    elif cls == 2:  # black and white checkerboard
        step = int(rng.integers(s // 10, s // 6))
        yy, xx = np.mgrid[0:h, 0:w]
        img[((yy // step + xx // step) % 2).astype(bool)] = 0
    elif cls == 4:  # colour noise
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return img  # cls 3: blank, a flat light grey


def make_set(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(CLASSES)), per_class)
    return np.stack([draw(int(c), rng) for c in y]), y


def save_rgb(path: Path, rgb: np.ndarray) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


@dataclass
class Exported:
    model: keras.Model  # the same classifier as a Keras model (backbone + head), for comparisons
    result: export.ExportResult
    out: Path
    x_val: np.ndarray
    y_val: np.ndarray
    root: Path
    head: Head
    f_tr: np.ndarray
    f_val: np.ndarray


def fit_head(feats: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> Head:
    """A converged logistic regression on the features, as engine.learn.train fits it (no TensorFlow)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=1.0, max_iter=2000).fit(feats, y)
    return Head(clf.coef_.T, clf.intercept_, temperature)


def build_model(x: np.ndarray, y: np.ndarray) -> keras.Model:
    """The classifier train.py builds: [0,1] RGB -> hub feature layer -> softmax Dense, with a fitted head."""
    resolved = resolve("efficientnet-lite0")
    embedder = Embedder(resolved)
    return build_classifier(resolved, fit_head(np.stack([embedder(img) for img in x]), y))


_SHARED: dict[str, Exported] = {}


def exported_once(tmp_path_factory) -> Exported:
    """One real export for test_export.py, test_compose.py, test_predict.py and others together: a head fitted on
    real backbone features, composed onto the cached backbone variants the way every training run exports."""
    if "exp" not in _SHARED:
        root = tmp_path_factory.mktemp("export")
        x_tr, y_tr = make_set(6, seed=1)
        x_val, y_val = make_set(4, seed=2)
        resolved = resolve("efficientnet-lite0")
        embedder = Embedder(resolved)
        f_tr = np.stack([embedder(img) for img in x_tr])
        f_val = np.stack([embedder(img) for img in x_val])
        head = fit_head(f_tr, y_tr, temperature=1.5)
        card = {"backbone": {"handle": "efficientnet-lite0"}, "config": {"seed": 42}, "dataset_hash": "ab" * 32,
                "class_counts": {c: 10 for c in CLASSES}, "metrics": {"val_accuracy": 1.0}, "extra": "kept"}
        events: list[dict] = []
        result = export.export_composed(head, resolved, CLASSES, root / "run", center_crop=False, features=f_tr,
                                        checks=(x_val, y_val, head.probabilities(f_val)), card=card,
                                        progress=events.append)
        result.events = events
        _SHARED["exp"] = Exported(build_classifier(resolved, head), result, root / "run", x_val, y_val, root, head,
                                  f_tr, f_val)
    return _SHARED["exp"]


@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    return exported_once(tmp_path_factory)


@pytest.mark.slow
def test_every_file_is_written_and_labels_keep_the_callers_order(exp):
    names = {"saved_model", "model_float32.tflite", "model_dynamic.tflite", "model_int8.tflite", "labels.txt",
             "model_card.json"}
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
