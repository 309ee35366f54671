"""The classifier as ONNX, composed like the TFLite files (engine.export.compose): the backbone converted once, the
head appended per run.

* The backbone (images in, features out, dynamic batch) is made once per backbone and image size on a machine and
  cached under the backbone cache: the table's backbones written from their weights (`lite_onnx`, ~0.3 s), any other
  module converted with tf2onnx from its TF-Hub SavedModel (TensorFlow, ~20 s).
* A run's model is that graph with the calibrated head (temperature folded in) appended as Gemm + Softmax, built
  with the `onnx` package alone (no TensorFlow, no converter) in a fraction of a second.

The contract is the float32 TFLite model's and the SavedModel's: input "images", float32 [batch, S, S, 3] RGB in
[0, 1] (pixel / 255), any batch size; output "probabilities", float32 [batch, classes], calibrated.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engine.config.backbones import BACKBONES, ResolvedBackbone
from engine.core.cache import cache_root
from engine.core.fileio import atomic_write_bytes, made_once
from engine.export.savedmodel import INPUT_NAME, OUTPUT_NAME  # the same names as the TFLite files and SavedModel
from engine.features.lite_graph import Add, Conv, LiteGraph, lite_graph, same_padding
from engine.learn.head import Head

log = logging.getLogger(__name__)

ONNX_VERSION = "1"  # part of the cache key: bump when the cached backbone graphs change
OPSET = 15  # ONNX Runtime >= 1.10 (2021) runs it; Gemm and Softmax(axis=-1) are unchanged up to the newest opsets
IR_VERSION = 8  # the IR of opset 15: runtimes older than the installed onnx package still read the file
FEATURES_NAME = "features"
BATCH = "batch"  # the symbolic batch dimension of the input and the output


# ----------------------------------------------------------------------------------------------------------------
# The cached backbone
# ----------------------------------------------------------------------------------------------------------------
def _backbone_cache(resolved: ResolvedBackbone) -> Path:
    return cache_root() / "composed" / f"{resolved.backbone_id}-{resolved.image_size}-onnx-v{ONNX_VERSION}.onnx"


def backbone_onnx_cached(resolved: ResolvedBackbone) -> bool:
    """Whether the backbone's ONNX graph is already converted on this machine (else the first export takes ~20 s)."""
    return _backbone_cache(resolved).exists()


def backbone_onnx(resolved: ResolvedBackbone) -> Path:
    """The backbone as an .onnx file ([batch, S, S, 3] images in, [batch, D] features out), converted on first use
    and cached; processes that need it at once convert it once (engine.core.fileio.made_once)."""
    path = _backbone_cache(resolved)
    with made_once(path) as to_make:
        if to_make:
            log.info("Converting the %s backbone to ONNX (once)", resolved.handle)
            atomic_write_bytes(path, _convert_backbone(resolved))
    return path


def _convert_backbone(resolved: ResolvedBackbone) -> bytes:
    """A table backbone written from its weights (~0.3 s); any other module converted with tf2onnx (~20 s)."""
    if resolved.handle in BACKBONES:
        return lite_onnx(lite_graph(BACKBONES[resolved.handle]), resolved.image_size).SerializeToString()
    return _tf2onnx_backbone(resolved)


def lite_onnx(graph: LiteGraph, image_size: int) -> onnx.ModelProto:
    """The folded EfficientNet-Lite as ONNX: NHWC images in (as every export takes them), transposed once to the
    NCHW convolutions; TensorFlow's SAME padding written out as explicit pads for this image size."""
    inits = [numpy_helper.from_array(np.float32(graph.scale), "preprocess/scale"),
             numpy_helper.from_array(np.float32(graph.offset), "preprocess/offset"),
             numpy_helper.from_array(np.float32(0.0), "relu6/min"),
             numpy_helper.from_array(np.float32(6.0), "relu6/max")]
    nodes = [helper.make_node("Mul", [INPUT_NAME, "preprocess/scale"], ["preprocess/mul"]),
             helper.make_node("Add", ["preprocess/mul", "preprocess/offset"], ["preprocess/add"]),
             helper.make_node("Transpose", ["preprocess/add"], ["preprocess/nchw"], perm=[0, 3, 1, 2])]
    outputs, side = [], image_size
    for layer in graph.layers:
        prev = outputs[-1] if outputs else "preprocess/nchw"
        if isinstance(layer, Add):
            nodes.append(helper.make_node("Add", [prev, outputs[layer.skip]], [layer.name], name=layer.name))
        else:
            side = _onnx_conv(layer, prev, side, nodes, inits)
        outputs.append(layer.name)
    nodes += [helper.make_node("GlobalAveragePool", [outputs[-1]], ["pool"]),
              helper.make_node("Flatten", ["pool"], [FEATURES_NAME], axis=1)]
    g = helper.make_graph(
        nodes, graph.name, [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT,
                                                          [BATCH, image_size, image_size, 3])],
        [helper.make_tensor_value_info(FEATURES_NAME, TensorProto.FLOAT, [BATCH, graph.feature_size])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="retrain-studio")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _onnx_conv(layer: Conv, x: str, side: int, nodes: list, inits: list) -> int:
    """Conv (depthwise: one group per channel) with OIHW weights, then Clip(0, 6) for ReLU6; returns the new side."""
    kernel = layer.weight.shape[0]
    before, after, out = same_padding(side, kernel, layer.stride)
    oihw = layer.weight.transpose(2, 3, 0, 1) if layer.depthwise else layer.weight.transpose(3, 2, 0, 1)
    inits += [numpy_helper.from_array(np.ascontiguousarray(oihw), layer.name + "/weight"),
              numpy_helper.from_array(layer.bias, layer.name + "/bias")]
    conv_out = layer.name + "/conv" if layer.relu6 else layer.name
    nodes.append(helper.make_node(
        "Conv", [x, layer.name + "/weight", layer.name + "/bias"], [conv_out], name=layer.name,
        kernel_shape=[kernel, kernel], strides=[layer.stride] * 2, pads=[before, before, after, after],
        group=layer.channels if layer.depthwise else 1))
    if layer.relu6:
        nodes.append(helper.make_node("Clip", [conv_out, "relu6/min", "relu6/max"], [layer.name]))
    return out


def _tf2onnx_backbone(resolved: ResolvedBackbone) -> bytes:
    """tf2onnx on a tf.function around the backbone's hub layer, with a free batch dimension."""
    from engine.core.tfcompat import tf  # why: once per backbone on a machine; a cached graph needs no TensorFlow
    from engine.features import port  # why: as above

    size = resolved.image_size
    layer = port.load_feature_layer(resolved)
    # why: only the first conversion needs the converter; it imports TensorFlow, so it comes after tfcompat has
    # chosen tf_keras (TF_USE_LEGACY_KERAS), which the hub layer needs
    import tf2onnx

    spec = tf.TensorSpec([None, size, size, 3], tf.float32, name=INPUT_NAME)

    @tf.function(input_signature=[spec])
    def features(images):
        return {FEATURES_NAME: layer(images, training=False)}

    model, _ = tf2onnx.convert.from_function(features, input_signature=[spec], opset=OPSET)
    _name_io(model)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _name_io(model: onnx.ModelProto) -> None:
    """One input "images" and one output "features", both with the batch dimension named BATCH."""
    g = model.graph
    if len(g.input) != 1 or len(g.output) != 1:
        raise ValueError(f"the backbone graph has {len(g.input)} inputs and {len(g.output)} outputs, not one each")
    _rename(g, g.input[0].name, INPUT_NAME)
    _rename(g, g.output[0].name, FEATURES_NAME)
    for value in (g.input[0], g.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = BATCH


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    if old == new:
        return
    for value in [*graph.input, *graph.output]:
        if value.name == old:
            value.name = new
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]


# ----------------------------------------------------------------------------------------------------------------
# Appending the head
# ----------------------------------------------------------------------------------------------------------------
def compose_onnx_bytes(backbone: onnx.ModelProto, head: Head) -> bytes:
    """The backbone graph with the calibrated head appended (Gemm + Softmax): images in, probabilities out.
    `backbone` is modified (it is the caller's freshly parsed copy)."""
    g = backbone.graph
    feat = g.output[0]
    dims = feat.type.tensor_type.shape.dim
    if len(dims) != 2 or (dims[1].HasField("dim_value") and dims[1].dim_value != head.feature_size):
        raise ValueError(f"the backbone's features {[d.dim_value or d.dim_param for d in dims]} do not fit a head "
                         f"for {head.feature_size} features")
    w, b = head.calibrated()  # [D, K], [K]: softmax(features @ w + b) is the calibrated output
    g.initializer.extend([numpy_helper.from_array(np.ascontiguousarray(w), "head/kernel"),
                          numpy_helper.from_array(np.ascontiguousarray(b), "head/bias")])
    g.node.extend([
        helper.make_node("Gemm", [feat.name, "head/kernel", "head/bias"], ["head/logits"], name="head/gemm"),
        helper.make_node("Softmax", ["head/logits"], [OUTPUT_NAME], name="head/softmax", axis=-1),
    ])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [BATCH, head.n_classes]))
    backbone.producer_name, backbone.producer_version = "retrain-studio", ONNX_VERSION
    backbone.doc_string = ("Image classifier: input 'images' float32 [batch, S, S, 3] RGB in [0, 1] (pixel / 255); "
                           "output 'probabilities' float32 [batch, classes], calibrated; class i is line i of "
                           "labels.txt.")
    return backbone.SerializeToString()


def compose_onnx(resolved: ResolvedBackbone, head: Head, out_path: str | Path) -> Path:
    """Write the run's classifier as ONNX: the cached backbone graph (converted on first use) + this head. Atomic."""
    backbone = onnx.load_model_from_string(backbone_onnx(resolved).read_bytes())
    out_path = Path(out_path)
    atomic_write_bytes(out_path, compose_onnx_bytes(backbone, head))
    return out_path
