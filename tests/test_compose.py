"""Composed exports (engine.export.compose; the SavedModel template of engine.export.savedmodel, rewritten by
engine.export.tfbundle) against what the TFLite converter (engine.export.tflite) and TensorFlow make of the same
weights: the composed model must be the same model, only made in a fraction of the time."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from export_data import CLASSES, SIZE, exported_once

from engine.export import artefacts as export
from engine.export import compose, savedmodel, tfbundle
from engine.export.calibration import calibration_images
from engine.export.tflite import convert_tflite
from engine.features.backbones import resolve
from engine.inference.predict import TFLiteModel
from engine.learn.head import Head

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    exp = exported_once(tmp_path_factory)
    return resolve("efficientnet-lite0"), exp.head, exp.result, (exp.x_val, exp.y_val, exp.f_val), exp.root


def _probs(path, x: np.ndarray) -> np.ndarray:
    model = TFLiteModel(path)
    return np.stack([model.probabilities(img) for img in x])


def test_float32_equals_the_head_on_features_and_the_converters_model(setup):
    resolved, head, composed, (x, _, f), root = setup
    from engine.learn.classifier import build_classifier

    ours = _probs(composed.tflite["float32"], x)
    assert np.abs(ours - head.probabilities(f)).max() <= 1e-5
    keras_model = build_classifier(resolved, head)
    theirs_blob = convert_tflite(composed.saved_model_dir, "float32")
    (root / "converter_float32.tflite").write_bytes(theirs_blob)
    theirs = _probs(root / "converter_float32.tflite", x)
    assert np.abs(ours - theirs).max() <= 1e-5
    assert np.abs(ours - keras_model.predict(x / 255.0, verbose=0)).max() <= 1e-5


def test_dynamic_matches_the_converters_dynamic_model(setup):
    _, _, composed, (x, _, _), root = setup
    ours = _probs(composed.tflite["dynamic"], x)
    (root / "converter_dynamic.tflite").write_bytes(convert_tflite(composed.saved_model_dir, "dynamic"))
    theirs = _probs(root / "converter_dynamic.tflite", x)
    assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 0.99
    assert np.abs(ours - theirs).max() <= 0.02  # same backbone bytes; the head quantized the converter's way


def test_int8_takes_raw_pixels_and_agrees_with_float32(setup):
    _, _, composed, (x, y, _), _ = setup
    runner = TFLiteModel(composed.tflite["int8"])
    assert runner.input_dtype == "uint8" and runner.output_dtype == "uint8"
    scale, zero = runner.input_quantization
    assert zero == 0 and abs(scale * 255 - 1) < 1e-4  # label_image --input_mean 0 --input_std 255 feeds pixels as-is
    ours = _probs(composed.tflite["int8"], x)
    floats = _probs(composed.tflite["float32"], x)
    assert (ours.argmax(1) == floats.argmax(1)).mean() >= 0.9
    assert abs((ours.argmax(1) == y).mean() - (floats.argmax(1) == y).mean()) <= 0.1
    card = composed.card["tflite"]
    assert card["int8"]["agreement_top1_vs_keras"] >= 0.9 and card["float32"]["agreement_top1_vs_keras"] == 1.0


def test_saved_model_is_the_template_with_this_head(setup):
    from engine.core.tfcompat import tf

    resolved, head, composed, (x, _, f), _ = setup
    loaded = tf.saved_model.load(str(composed.saved_model_dir))
    out = loaded.signatures["serving_default"](images=tf.constant(x[:4] / 255.0, tf.float32))["probabilities"]
    assert np.abs(out.numpy() - head.probabilities(f[:4])).max() <= 1e-5
    labels = (composed.saved_model_dir / "assets" / "labels.txt").read_text().splitlines()
    assert labels == CLASSES
    assert savedmodel.has_template(resolved, len(CLASSES))


def test_another_class_count_rewrites_the_same_template(setup, tmp_path):
    """Two classes from the template traced for TEMPLATE_CLASSES: the shapes' bytes and the checkpoint entries are
    rewritten in place (the smallest count: the sizes' varints are padded), and TensorFlow and tf_keras load it."""
    from engine.core.tfcompat import keras, tf

    resolved, head, _, (x, _, f), _ = setup
    two = Head(head.kernel[:, :2], head.bias[:2], 1.0)
    assert savedmodel.has_template(resolved, 2) and savedmodel.has_template(resolved, savedmodel.TEMPLATE_CLASSES)
    out = savedmodel.saved_model_from_template(resolved, two, tmp_path / "two")
    loaded = tf.saved_model.load(str(out))
    serve = loaded.signatures["serving_default"]
    assert serve.structured_outputs["probabilities"].shape.as_list() == [None, 2]
    probs = serve(images=tf.constant(x[:3] / 255.0, tf.float32))["probabilities"].numpy()
    assert np.abs(probs - two.probabilities(f[:3])).max() <= 1e-5
    model = keras.models.load_model(str(out))
    assert model.layers[-1].get_config()["units"] == 2
    assert np.abs(model.predict(x[:3] / 255.0, verbose=0) - probs).max() <= 1e-5


def test_another_head_reuses_the_cached_parts_without_tensorflow_conversion(setup, tmp_path, monkeypatch):
    resolved, head, _, (x, _, f), _ = setup
    other = Head(head.kernel[:, ::-1], head.bias[::-1], 1.0)

    def no_conversion(*args, **kwargs):
        raise AssertionError("a cached backbone was made again")

    monkeypatch.setattr(compose, "_convert_backbone", no_conversion)
    monkeypatch.setattr(compose, "_quantize_backbone", no_conversion)
    monkeypatch.setattr(savedmodel, "ensure_template", lambda r, k: savedmodel._template_dir(r, k))
    result = export.export_composed(other, resolved, CLASSES, tmp_path / "again", center_crop=False, features=f,
                                    checks=None, card={})
    probs = _probs(result.tflite["float32"], x)
    assert np.abs(probs - other.probabilities(f)).max() <= 1e-5


def test_quantized_backbones_are_made_without_the_converter(setup, tmp_path, monkeypatch):
    """A new machine's dynamic and int8 backbones come from the float32 one (engine.export.quantize), in seconds."""
    from engine.export import quantize
    from engine.features.embeddings import Embedder

    resolved = setup[0]

    def converter(*args, **kwargs):
        raise AssertionError("the TFLite converter was used")

    monkeypatch.setattr(compose, "_convert_backbone", converter)
    monkeypatch.setattr(compose, "_backbone_cache", lambda r, v: tmp_path / f"{v}.tflite")
    dynamic = compose.backbone_tflite(resolved, "dynamic")
    assert dynamic.read_bytes() == quantize.dynamic_range(Embedder.tflite_path(resolved).read_bytes())
    int8 = TFLiteModel(compose.backbone_tflite(resolved, "int8"))
    assert int8.input_dtype == "uint8" and int8.output_dtype == "int8"  # int8 features, for the appended head


def test_bundle_rewrite_refuses_other_shapes_and_unknown_tensors(setup, tmp_path):
    _, head, composed, _, _ = setup
    sm = tmp_path / "sm"
    shutil.copytree(composed.saved_model_dir, sm)
    prefix = sm / "variables" / "variables"
    keys = {k for k, e in tfbundle.read_index(prefix.with_name("variables.index")).items() if e.dtype == 1}
    kernel_key = next(k for k in keys if tfbundle.read_tensor(prefix, k).size == head.kernel.size)
    with pytest.raises(tfbundle.BundleError, match="holds"):
        tfbundle.overwrite_tensors(prefix, {kernel_key: np.zeros(3, np.float32)})
    with pytest.raises(tfbundle.BundleError, match="no tensor"):
        tfbundle.overwrite_tensors(prefix, {"no/such/tensor": np.zeros(3, np.float32)})
    before = tfbundle.read_tensor(prefix, kernel_key)
    tfbundle.overwrite_tensors(prefix, {kernel_key: np.full(head.kernel.shape, 0.25, np.float32)})
    assert np.all(tfbundle.read_tensor(prefix, kernel_key) == 0.25) and not np.all(before == 0.25)


def test_shrinking_a_dimension_refuses_what_would_move_bytes(setup, tmp_path):
    _, head, composed, _, _ = setup
    sm = tmp_path / "sm"
    shutil.copytree(composed.saved_model_dir, sm)
    prefix = sm / "variables" / "variables"
    with pytest.raises(tfbundle.BundleError, match="in place"):
        tfbundle.shrink_last_dim(prefix, ["any"], 5, 200)
    key = next(k for k, e in tfbundle.read_index(prefix.with_name("variables.index")).items()
               if e.dtype == 1 and e.size == head.bias.size * 4)
    with pytest.raises(tfbundle.BundleError, match="does not end in"):
        tfbundle.shrink_last_dim(prefix, [key], 7, 3)


def test_crc32c_matches_the_published_check_value():
    assert tfbundle.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value (RFC 3720)


def test_calibration_images_are_fixed_and_photo_like():
    a, b = calibration_images(SIZE, n=4), calibration_images(SIZE, n=4)
    assert a.dtype == np.uint8 and a.shape == (4, SIZE, SIZE, 3) and np.array_equal(a, b)
    assert 20 < a.std() < 120  # neither flat nor pure noise


def _head_read_back(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The head appended to an exported .tflite, as the runtime holds it: dequantized kernel [k, d], bias, and
    the kernel's quantization step per class (0 for float weights)."""
    from engine.core.litert import tflite_interpreter

    runner = tflite_interpreter(str(path))
    tensors = {d["name"]: d for d in runner.get_tensor_details()}
    out = []
    for name in ("head/kernel", "head/bias"):
        detail = tensors[name]
        values = runner.get_tensor(detail["index"]).astype(np.float64)
        scales = detail["quantization_parameters"]["scales"]
        out.append(values * (scales[:, None] if values.ndim == 2 else scales) if len(scales) else values)
    scales = tensors["head/kernel"]["quantization_parameters"]["scales"]
    return out[0], out[1], scales if len(scales) else np.zeros(len(out[1]))


def test_every_variant_carries_the_calibrated_head(setup):
    """The temperature is in every file: each variant's head, read back from the file, is the calibrated head
    (W/T, b/T) within its quantization step. The int8 model's other differences from float32 come from its int8
    backbone, bounded here on the held-out images."""
    _, head, composed, (x, _, _), _ = setup
    assert head.temperature != 1.0
    w, b = head.calibrated()
    for variant in ("float32", "dynamic", "int8"):
        kernel, bias, step = _head_read_back(composed.tflite[variant])
        assert np.all(np.abs(kernel - w.T) <= step[:, None] / 2 + 1e-6), variant
        assert np.abs(bias - b).max() <= 1e-4, variant
        uncalibrated = np.abs(kernel - head.kernel.T).max()
        assert uncalibrated > 10 * (step.max() + 1e-6), f"{variant}: the temperature is not in the file"
    floats, ints = _probs(composed.tflite["float32"], x), _probs(composed.tflite["int8"], x)
    assert np.abs(floats - ints).mean() <= 0.05 and np.abs(floats - ints).max() <= 0.35
