"""A TensorFlow.js graph model (model.json + weight shards) from a run's SavedModel, without the tensorflowjs package.

tensorflowjs 4.22 cannot be installed beside this engine (it pins tensorflow-decision-forests, whose every release
pins an older TensorFlow), so this writes the same format the way its converter does
(tensorflowjs/converters/tf_saved_model_conversion_v2.py): the `serving_default` function frozen with its variables
as constants, cleaned by Grappler (pruning, constant folding, arithmetic), every constant moved out of the graph into
little-endian weight shards of at most 4 MB, and model.json holding the graph, the weights manifest and the
signature. The graph keeps only ops that TensorFlow.js runs (checked against OPS_TFJS_RUNS before writing).

Input `images`: float32 [N,S,S,3] in [0,1], as the float32 TFLite model and model.onnx; output `probabilities`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engine.export.savedmodel import INPUT_NAME, OUTPUT_NAME

log = logging.getLogger(__name__)

MODEL_JSON = "model.json"
SHARD_BYTES = 4 * 1024 * 1024  # the converter's default shard size: browsers cache files of this size well
FORMAT = "graph-model"
INPUT = "images: float32 RGB in [0,1] (pixels / 255), [N,S,S,3], the photo stretched to SxS"
CONVERTED_BY = "Retrain Studio (engine.export.tfjs_model)"
# Ops a frozen classifier of ours holds after Grappler, all in TensorFlow.js's op list (tfjs-converter 4.22,
# src/operations/op_list/*.ts): anything else means a backbone this writer has not been proven on, refused up front
# rather than written as a model that fails to load in the browser.
OPS_TFJS_RUNS = frozenset({
    "Placeholder", "Const", "Identity", "Conv2D", "DepthwiseConv2dNative", "FusedBatchNormV3", "FusedBatchNorm",
    "Relu", "Relu6", "Sigmoid", "Swish", "Tanh", "AddV2", "Add", "Sub", "Mul", "RealDiv", "Maximum", "Minimum",
    "Mean", "MatMul", "BiasAdd", "Softmax", "Reshape", "Squeeze", "Pad", "AvgPool", "MaxPool", "ConcatV2",
    "Rsqrt", "Sqrt", "Square", "StopGradient", "Cast", "Shape", "StridedSlice", "Pack", "ExpandDims", "Transpose",
})
# The tensor fields that hold a constant's values: cleared from the graph once the values are in a shard.
_VALUE_FIELDS = ("tensor_content", "half_val", "float_val", "double_val", "int_val", "string_val", "scomplex_val",
                 "int64_val", "bool_val", "resource_handle_val", "variant_val", "uint32_val", "uint64_val")
_DTYPES = {"float32": "float32", "int32": "int32", "bool": "bool"}  # what a weights manifest can hold


def _frozen(saved_model_dir: Path):
    """(graph, input tensor, output tensor) of serving_default with its variables as constants."""
    from tensorflow.python.framework import convert_to_constants  # why: TF only where a TF.js model is made

    from engine.core.tfcompat import tf  # why: as above

    loaded = tf.saved_model.load(str(saved_model_dir))  # kept while freezing: the function only refers to its variables
    frozen = convert_to_constants.convert_variables_to_constants_v2(loaded.signatures["serving_default"],
                                                                    aggressive_inlining=True)
    [x], [y] = frozen.inputs, frozen.outputs
    return frozen.graph, x, y


def _signature(x, y):
    from tensorflow.core.protobuf import meta_graph_pb2  # why: as in _frozen

    sig = meta_graph_pb2.SignatureDef()
    for key, tensor, side in ((INPUT_NAME, x, sig.inputs), (OUTPUT_NAME, y, sig.outputs)):
        side[key].name = tensor.name
        side[key].dtype = tensor.dtype.as_datatype_enum
        side[key].tensor_shape.CopyFrom(tensor.shape.as_proto())
    return sig


def _optimized(graph, signature):
    """Grappler's cleanup, as the tensorflowjs converter's first pass: drops the Identity/NoOp chains of the frozen
    functions and folds what is constant."""
    from tensorflow.core.protobuf import config_pb2  # why: as in _frozen
    from tensorflow.python.grappler import tf_optimizer  # why: as in _frozen
    from tensorflow.python.training.saver import export_meta_graph  # why: as in _frozen

    for tensor_info in signature.outputs.values():  # what Grappler must keep
        graph.add_to_collection("train_op", graph.get_operation_by_name(tensor_info.name.split(":")[0]))
    config = config_pb2.ConfigProto()
    config.graph_options.rewrite_options.optimizers[:] = ["pruning", "constfold", "arithmetic", "dependency"] * 2
    meta_graph = export_meta_graph(graph_def=graph.as_graph_def(), graph=graph)
    meta_graph.signature_def["serving_default"].CopyFrom(signature)
    return tf_optimizer.OptimizeGraph(config, meta_graph)


def _name_output(graph_def, signature) -> None:
    """Call the output node `probabilities` (freezing names it Identity): the name a TF.js user sees in
    model.outputs, as in the other formats."""
    tensor_info = signature.outputs[OUTPUT_NAME]
    old = tensor_info.name.split(":")[0]
    if old == OUTPUT_NAME:
        return
    for node in graph_def.node:
        if node.name == old:
            node.name = OUTPUT_NAME
        node.input[:] = [_renamed(ref, old) for ref in node.input]
    tensor_info.name = f"{OUTPUT_NAME}:0"


def _renamed(ref: str, old: str) -> str:
    """An input reference ("name", "name:1", "^name") to node `old`, pointed at the output's new name."""
    control, (name, colon, port) = ref.startswith("^"), ref.lstrip("^").partition(":")
    return ref if name != old else f"{'^' if control else ''}{OUTPUT_NAME}{colon}{port}"


def _weights(graph_def) -> list[tuple[str, np.ndarray]]:
    """Every constant's values, in graph order, removed from the graph (the loader finds them by node name)."""
    from tensorflow.python.framework import tensor_util  # why: as in _frozen

    out = []
    for node in graph_def.node:
        if node.op != "Const":
            continue
        value = tensor_util.MakeNdarray(node.attr["value"].tensor)
        if value.dtype.name not in _DTYPES:
            raise ValueError(f"constant {node.name} is {value.dtype}, which a TF.js weights manifest cannot hold")
        out.append((node.name, value))
        for field in _VALUE_FIELDS:
            node.attr["value"].tensor.ClearField(field)
    return out


def _write_shards(weights: list[tuple[str, np.ndarray]], out: Path) -> list[dict[str, Any]]:
    """The weights, concatenated little-endian, cut into shards of at most SHARD_BYTES: the manifest's one group."""
    data = b"".join(np.ascontiguousarray(v.astype(v.dtype.newbyteorder("<"))).tobytes() for _, v in weights)
    n = max(1, -(-len(data) // SHARD_BYTES))
    paths = [f"group1-shard{i + 1}of{n}.bin" for i in range(n)]
    for i, name in enumerate(paths):
        (out / name).write_bytes(data[i * SHARD_BYTES:(i + 1) * SHARD_BYTES])
    specs = [{"name": name, "shape": list(v.shape), "dtype": _DTYPES[v.dtype.name]} for name, v in weights]
    return [{"paths": paths, "weights": specs}]


def export_tfjs(saved_model_dir: str | Path, out_dir: str | Path, metadata: dict[str, Any],
                progress: Callable[[float, str], None] | None = None) -> dict[str, Any]:
    """Write out_dir/model.json and its weight shards (out_dir must be empty or new); the summary for the caller.
    `metadata` (labels, input size and contract) goes into model.json's userDefinedMetadata."""
    from google.protobuf.json_format import MessageToDict  # why: comes with TensorFlow; only here

    from engine.core.tfcompat import tf  # why: as in _frozen

    say = progress or (lambda fraction, message: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say(0.1, "Loading the SavedModel and freezing its weights")
    graph, x, y = _frozen(Path(saved_model_dir))
    signature = _signature(x, y)
    say(0.6, "Simplifying the graph (Grappler)")
    graph_def = _optimized(graph, signature)
    _name_output(graph_def, signature)
    unknown = sorted({n.op for n in graph_def.node} - OPS_TFJS_RUNS)
    if unknown:
        raise ValueError(f"the model uses ops this TF.js export has not been proven with: {', '.join(unknown)}")
    say(0.8, "Writing model.json and the weight shards")
    weights = _weights(graph_def)
    manifest = _write_shards(weights, out)
    model = {"format": FORMAT, "generatedBy": tf.__version__, "convertedBy": CONVERTED_BY,
             "signature": MessageToDict(signature), "userDefinedMetadata": metadata,
             "modelTopology": MessageToDict(graph_def), "weightsManifest": manifest}
    (out / MODEL_JSON).write_text(json.dumps(model), encoding="utf-8")
    n_bytes = sum((out / p).stat().st_size for p in manifest[0]["paths"])
    log.info("TF.js model written: %s (%d weights, %.1f MB)", out, len(weights), n_bytes / 1e6)
    return {"files": [MODEL_JSON, *manifest[0]["paths"]], "weights": len(weights), "bytes": n_bytes,
            "ops": sorted({n.op for n in graph_def.node})}
