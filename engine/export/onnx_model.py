"""The classifier as ONNX, composed like the TFLite files (engine.export.compose): the backbone converted once, the
head appended per run.

* The backbone (images in, features out, dynamic batch) is made once per backbone and image size on a machine and
  cached under the backbone cache: the table's backbones written from their weights (`lite_onnx`, ~0.3 s), any other
  module converted with tf2onnx from its TF-Hub SavedModel (TensorFlow, ~20 s).
* A run's model is that graph with the calibrated head (temperature folded in) appended as Gemm + Softmax, written
  into the cached bytes in protobuf's wire format (engine.export.protowire): no TensorFlow, no converter, not even
  the `onnx` package (its import alone cost every run ~0.7 s), in milliseconds.

The contract is the float32 TFLite model's and the SavedModel's: input "images", float32 [batch, S, S, 3] RGB in
[0, 1] (pixel / 255), any batch size; output "probabilities", float32 [batch, classes], calibrated.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.config.backbones import BACKBONES, ResolvedBackbone
from engine.core.cache import cache_root
from engine.core.fileio import atomic_write_bytes, made_once
from engine.export import protowire as pw
from engine.export.savedmodel import INPUT_NAME, OUTPUT_NAME  # the same names as the TFLite files and SavedModel
from engine.features.lite_graph import Add, Conv, LiteGraph, lite_graph, same_padding
from engine.learn.head import Head

if TYPE_CHECKING:
    import onnx

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
    import onnx  # why: once per backbone on a machine (~0.7 s of import); composing a run's model needs none
    from onnx import TensorProto, helper, numpy_helper

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
    from onnx import helper, numpy_helper  # why: see lite_onnx

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
    import onnx
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
# Field numbers of onnx.proto (stable since IR version 3): the messages a head appends, and the fields replaced.
MODEL_PRODUCER_NAME, MODEL_PRODUCER_VERSION, MODEL_DOC, MODEL_GRAPH = 2, 3, 6, 7
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_OUTPUT = 1, 5, 12
TENSOR_FLOAT = 1  # TensorProto.DataType.FLOAT
ATTRIBUTE_INT = 2  # AttributeProto.AttributeType.INT
DOC = ("Image classifier: input 'images' float32 [batch, S, S, 3] RGB in [0, 1] (pixel / 255); output "
       "'probabilities' float32 [batch, classes], calibrated; class i is line i of labels.txt.")


def compose_onnx_bytes(backbone: bytes, head: Head) -> bytes:
    """The serialized backbone graph with the calibrated head appended (Gemm + Softmax): images in, probabilities
    out. Top-level fields are copied as they are; the graph's output (features) is replaced by the probabilities
    and its producer and doc string by ours."""
    model = list(pw.fields(backbone))
    graph_field = next((f for f in model if f.number == MODEL_GRAPH), None)
    if graph_field is None:
        raise ValueError("the cached ONNX backbone has no graph")
    graph = list(pw.fields(graph_field.value))
    outputs = [f for f in graph if f.number == GRAPH_OUTPUT]
    if len(outputs) != 1:
        raise ValueError(f"the ONNX backbone has {len(outputs)} outputs, not one")
    features, dims = _value_info(outputs[0].value)
    if len(dims) != 2 or dims[1] not in (head.feature_size, None):
        raise ValueError(f"the backbone's features {dims} do not fit a head for {head.feature_size} features")
    w, b = head.calibrated()  # [D, K], [K]: softmax(features @ w + b) is the calibrated output
    appended = [
        pw.bytes_field(GRAPH_INITIALIZER, _tensor("head/kernel", w)),
        pw.bytes_field(GRAPH_INITIALIZER, _tensor("head/bias", b)),
        pw.bytes_field(GRAPH_NODE, _node("Gemm", [features, "head/kernel", "head/bias"], "head/logits", "head/gemm")),
        pw.bytes_field(GRAPH_NODE, _node("Softmax", ["head/logits"], OUTPUT_NAME, "head/softmax", axis=-1)),
        pw.bytes_field(GRAPH_OUTPUT, _tensor_value_info(OUTPUT_NAME, [BATCH, head.n_classes])),
    ]
    graph_bytes = b"".join([*(f.raw for f in graph if f.number != GRAPH_OUTPUT), *appended])
    replaced = (MODEL_PRODUCER_NAME, MODEL_PRODUCER_VERSION, MODEL_DOC, MODEL_GRAPH)
    return b"".join([*(f.raw for f in model if f.number not in replaced),
                     pw.bytes_field(MODEL_PRODUCER_NAME, "retrain-studio"),
                     pw.bytes_field(MODEL_PRODUCER_VERSION, ONNX_VERSION), pw.bytes_field(MODEL_DOC, DOC),
                     pw.bytes_field(MODEL_GRAPH, graph_bytes)])


def _tensor(name: str, array: np.ndarray) -> bytes:
    """A float32 TensorProto: dims, data type, name, little-endian raw data."""
    a = np.ascontiguousarray(array, "<f4")
    return b"".join([*(pw.int_field(1, d) for d in a.shape), pw.int_field(2, TENSOR_FLOAT),
                     pw.bytes_field(8, name), pw.bytes_field(9, a.tobytes())])


def _node(op_type: str, inputs: list[str], output: str, name: str, **ints: int) -> bytes:
    """A NodeProto of the default domain with integer attributes."""
    attributes = [pw.bytes_field(5, pw.bytes_field(1, k) + pw.int_field(3, v) + pw.int_field(20, ATTRIBUTE_INT))
                  for k, v in ints.items()]
    return b"".join([*(pw.bytes_field(1, i) for i in inputs), pw.bytes_field(2, output), pw.bytes_field(3, name),
                     pw.bytes_field(4, op_type), *attributes])


def _tensor_value_info(name: str, shape: list[int | str]) -> bytes:
    """A float32 tensor's ValueInfoProto; a str dimension is symbolic (dim_param)."""
    dims = [pw.bytes_field(1, pw.bytes_field(2, d) if isinstance(d, str) else pw.int_field(1, d)) for d in shape]
    tensor_type = pw.int_field(1, TENSOR_FLOAT) + pw.bytes_field(2, b"".join(dims))
    return pw.bytes_field(1, name) + pw.bytes_field(2, pw.bytes_field(1, tensor_type))


def _value_info(buf: bytes) -> tuple[str, list[int | None]]:
    """A ValueInfoProto's name and its tensor dimensions (None where symbolic or unknown)."""
    name = pw.first(buf, 1)
    type_proto = pw.first(buf, 2)
    tensor = pw.first(type_proto.value, 1) if type_proto else None
    shape = pw.first(tensor.value, 2) if tensor else None
    dims = []
    for dim in pw.fields(shape.value) if shape else []:
        value = pw.first(dim.value, 1)
        dims.append(int(value.value) if value else None)
    return (name.value.decode() if name else ""), dims


def compose_onnx(resolved: ResolvedBackbone, head: Head, out_path: str | Path) -> Path:
    """Write the run's classifier as ONNX: the cached backbone graph (converted on first use) + this head. Atomic."""
    out_path = Path(out_path)
    atomic_write_bytes(out_path, compose_onnx_bytes(backbone_onnx(resolved).read_bytes(), head))
    return out_path
