"""make_image_classifier drop-in: its remaining flags (summaries, shift/shear augmentation, memory growth) and a
local TF Hub module's own input size. (Training through the CLI with these flags: tests/test_cli.py.)"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from engine.cli.main import build_parser
from engine.cli.train import config_from_args
from engine.config.training import TrainConfig
from engine.core.tfcompat import keras, set_memory_growth, tf
from engine.features import backbones, port
from engine.learn import augment
from engine.learn.summaries import write_summaries


def test_make_image_classifier_flags_are_accepted_and_reach_the_config():
    args = build_parser().parse_args([
        "train", "--image_dir", "flowers", "--summaries_dir", "/tmp/tb", "--width_shift_range", "0.2",
        "--height_shift_range", "0.1", "--shear_range", "0.2", "--set_memory_growth", "--distribution_strategy",
        "mirrored"])
    cfg = config_from_args(args)
    assert (cfg.summaries_dir, cfg.width_shift_range, cfg.height_shift_range, cfg.shear_range) == ("/tmp/tb", 0.2,
                                                                                                    0.1, 0.2)
    assert cfg.set_memory_growth is True and cfg.distribution_strategy == "mirrored"
    assert config_from_args(build_parser().parse_args(["train", "--image_dir", "x", "--noset_memory_growth"])) \
        .set_memory_growth is False


def test_augmentation_layers_follow_the_flags_and_train():
    cfg = TrainConfig(width_shift_range=0.2, height_shift_range=0.1, shear_range=20.0)
    layers = augment.layers(cfg)
    assert [type(x).__name__ for x in layers] == ["RandomFlip", "RandomRotation", "RandomTranslation", "RandomShear",
                                                  "RandomZoom"]
    translation = layers[2]
    assert (translation.height_factor, translation.width_factor) == (0.1, 0.2)
    assert augment.layers(TrainConfig(do_data_augmentation=False)) == []
    assert "RandomShear" not in [type(x).__name__ for x in augment.layers(TrainConfig())]  # off by default
    model = keras.Sequential([keras.Input((16, 16, 3)), *layers, keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "categorical_crossentropy")
    x = np.random.default_rng(0).random((8, 16, 16, 3), np.float32)
    model.fit(x, tf.one_hot([0, 1] * 4, 2), epochs=1, batch_size=4, verbose=0)  # the layers run inside fit


def test_shear_tilts_horizontal_lines_and_leaves_inference_alone():
    x = np.zeros((1, 33, 33, 3), np.float32)
    x[:, 15:18] = 1.0  # a horizontal bar through the centre
    y = augment.random_shear(40.0, seed=3)(np.repeat(x, 16, axis=0), training=True).numpy()
    rows = [(img[:, :, 0].argmax(0)) for img in y]  # the bar's row in each column
    slopes = np.array([np.polyfit(np.arange(33), r, 1)[0] for r in rows])
    assert np.abs(slopes).max() > 0.2  # tilted: the row changes along the bar (tan 20 degrees = 0.36)
    assert np.abs(slopes).max() <= np.tan(np.radians(40.0)) + 0.05  # never more than the range allows
    assert (slopes > 0).any() and (slopes < 0).any()  # both directions
    assert np.allclose(y[:, 16, 16], 1.0)  # about the centre
    layer = augment.random_shear(40.0)
    assert np.array_equal(layer(x, training=False).numpy(), x)
    assert layer(x[0], training=True).shape == (33, 33, 3)  # unbatched images too


def _events(folder: Path) -> list[tuple[str, int, float, str]]:
    out = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for v in event.summary.value:
                out.append((v.tag, event.step, float(tf.make_ndarray(v.tensor)), v.metadata.plugin_data.plugin_name))
    return out


def test_summaries_are_tensorboard_scalars_of_the_head_and_fine_tuning(tmp_path):
    history = [{"phase": "head", "epoch": 1, "loss": 0.9, "accuracy": 0.6, "val_loss": 1.0, "val_accuracy": 0.5,
                "l2": 0.1, "elapsed": 0.1},
               {"phase": "head", "epoch": 2, "loss": 0.5, "accuracy": 0.8, "val_loss": 0.7, "val_accuracy": 0.75,
                "l2": 0.01, "elapsed": 0.2},
               {"phase": "fine_tune", "epoch": 1, "loss": 0.4, "accuracy": 0.9, "val_loss": 0.6,
                "val_accuracy": 0.8, "elapsed": 3.0}]
    write_summaries(tmp_path / "tb", history)
    head = _events(tmp_path / "tb" / "head")
    assert {e[3] for e in head} == {"scalars"}  # what TensorBoard's scalar dashboard shows
    assert [(s, round(v, 4)) for t, s, v, _ in head if t == "val_loss"] == [(1, 1.0), (2, 0.7)]
    assert {t for t, *_ in head} == {"loss", "accuracy", "val_loss", "val_accuracy", "l2"}
    train = {(t, s): round(v, 4) for t, s, v, _ in _events(tmp_path / "tb" / "train")}
    val = {(t, s): round(v, 4) for t, s, v, _ in _events(tmp_path / "tb" / "validation")}
    assert train == {("epoch_loss", 1): 0.4, ("epoch_accuracy", 1): 0.9}
    assert val == {("epoch_loss", 1): 0.6, ("epoch_accuracy", 1): 0.8}


def test_set_memory_growth_applies_to_every_gpu_and_is_harmless_without_one():
    gpus = tf.config.list_physical_devices("GPU")
    assert set_memory_growth() == [g.name for g in gpus]
    assert all(tf.config.experimental.get_memory_growth(g) for g in gpus)


# ------------------------------------------------------------------------------------------ local module input size
class _FixedSize(tf.Module):
    def __init__(self, size: int):
        super().__init__()
        inputs = keras.Input((None, None, 3))
        self.model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs)))
        self.__call__ = tf.function(lambda images: self.model(images),
                                    input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    """Tiny hub-format SavedModels: one declaring 40x40 in its signature, one only in its call function, one with
    any size (as save_hub_module writes the built-in backbones)."""
    root = tmp_path_factory.mktemp("modules")
    fixed = _FixedSize(40)
    tf.saved_model.save(fixed, str(root / "sig40"), signatures={"serving_default": fixed.__call__})
    tf.saved_model.save(_FixedSize(48), str(root / "call48"), signatures={})
    inputs = keras.Input((None, None, 3))
    port.save_hub_module(keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs)), root / "any")
    return root


def test_local_module_defaults_to_its_own_input_size_read_once(modules, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("RETRAIN_STUDIO_CACHE", str(tmp_path))
    resolved = backbones.resolve(str(modules / "sig40"))
    assert resolved.image_size == 40
    assert port.load_feature_layer(resolved)(tf.zeros((1, 40, 40, 3))).shape == (1, 4)
    assert backbones.resolve(str(modules / "call48")).image_size == 48
    cached = tmp_path / "backbones" / f"{resolved.backbone_id}.json"
    assert json.loads(cached.read_text())["image_size"] == 40
    cached.write_text(json.dumps({"image_size": 44}))  # a later resolve reads the cache, not the module
    assert backbones.resolve(str(modules / "sig40")).image_size == 44
    with caplog.at_level(logging.INFO, logger="engine.features.backbones"):
        assert backbones.resolve(str(modules / "any")).image_size == 224
    assert "declares no input size: using 224 px" in caplog.text
    assert backbones.resolve(str(modules / "any"), image_size=96).image_size == 96


def test_an_image_size_the_local_module_cannot_take_is_a_clear_error(modules, tmp_path, monkeypatch):
    monkeypatch.setenv("RETRAIN_STUDIO_CACHE", str(tmp_path))
    assert backbones.resolve(str(modules / "sig40"), image_size=40).image_size == 40
    with pytest.raises(backbones.BackboneError, match=r"takes 40x40 images, not --image_size 32"):
        backbones.resolve(str(modules / "sig40"), image_size=32)
