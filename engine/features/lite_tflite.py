"""A LiteGraph (engine.features.lite_graph) written as a float32 .tflite flatbuffer, with no TensorFlow: the same
operators, layouts and versions the TFLite converter writes for the Keras port (MUL and ADD for the input scaling,
CONV_2D / DEPTHWISE_CONV_2D with bias and fused ReLU6, ADD for the residuals, MEAN), batch 1, in ~0.3 s instead of
the ~35 s the port, the hub module and the converter take on a new machine.
"""

from __future__ import annotations

import numpy as np

from engine.core.litert import GraphBuilder, new_model, write_model
from engine.features.lite_graph import Add, Conv, LiteGraph, same_padding

MIN_RUNTIME = "1.6.0"  # what the converter writes for these operators at version 1
SIGNATURE, INPUT_NAME, OUTPUT_NAME = "serving_default", "images", "features"


def float32_tflite(graph: LiteGraph, image_size: int) -> bytes:
    """[1, S, S, 3] RGB in [0, 1] -> [1, features] float32."""
    model = new_model(MIN_RUNTIME, f"Retrain Studio: {graph.name} written from its weights")
    g = GraphBuilder(model)
    f32, ops, opts = g.fb.TensorType.FLOAT32, g.fb.BuiltinOperator, g.fb.BuiltinOptions
    shape = [1, image_size, image_size, 3]
    x = g.tensor(INPUT_NAME, shape, f32)
    mul = g.tensor("preprocess/mul", shape, f32)
    g.op(ops.MUL, 1, [x, g.tensor("preprocess/scale", [], f32, np.float32(graph.scale))], [mul], opts.MulOptions,
         g.fb.MulOptionsT())
    normalised = g.tensor("preprocess/add", shape, f32)
    g.op(ops.ADD, 1, [mul, g.tensor("preprocess/offset", [], f32, np.float32(graph.offset))], [normalised],
         opts.AddOptions, g.fb.AddOptionsT())
    outputs, side = [], image_size
    for layer in graph.layers:
        prev = outputs[-1] if outputs else normalised
        if isinstance(layer, Add):
            out = g.tensor(layer.name, g.g.tensors[prev].shape, f32)
            g.op(ops.ADD, 1, [prev, outputs[layer.skip]], [out], opts.AddOptions, g.fb.AddOptionsT())
        else:
            side = same_padding(side, layer.weight.shape[0], layer.stride)[2]
            out = _conv(g, layer, prev, side)
        outputs.append(out)
    features = g.tensor(OUTPUT_NAME, [1, graph.feature_size], f32)
    mean = g.fb.ReducerOptionsT()
    mean.keepDims = False
    g.op(ops.MEAN, 1, [outputs[-1], g.tensor("mean/axes", [2], g.fb.TensorType.INT32, np.array([1, 2], np.int32))],
         [features], opts.ReducerOptions, mean)
    g.g.inputs, g.g.outputs = np.asarray([x], np.int32), np.asarray([features], np.int32)
    g.signature(SIGNATURE, {INPUT_NAME: x}, {OUTPUT_NAME: features})
    return write_model(model)


def _conv(g: GraphBuilder, layer: Conv, x: int, side: int) -> int:
    """CONV_2D takes OHWI weights, DEPTHWISE_CONV_2D [1, kh, kw, C]: both are the HWIO array moved last-axis first."""
    fb, f32 = g.fb, g.fb.TensorType.FLOAT32
    weight = np.ascontiguousarray(layer.weight.transpose(3, 0, 1, 2))
    opts = fb.DepthwiseConv2DOptionsT() if layer.depthwise else fb.Conv2DOptionsT()
    opts.padding, opts.strideH, opts.strideW = fb.Padding.SAME, layer.stride, layer.stride
    opts.dilationHFactor = opts.dilationWFactor = 1
    opts.fusedActivationFunction = fb.ActivationFunctionType.RELU6 if layer.relu6 else fb.ActivationFunctionType.NONE
    if layer.depthwise:
        opts.depthMultiplier = 1
    out = g.tensor(layer.name, [1, side, side, layer.channels], f32)
    inputs = [x, g.tensor(layer.name + "/weight", weight.shape, f32, weight),
              g.tensor(layer.name + "/bias", layer.bias.shape, f32, layer.bias)]
    if layer.depthwise:
        g.op(fb.BuiltinOperator.DEPTHWISE_CONV_2D, 1, inputs, [out], fb.BuiltinOptions.DepthwiseConv2DOptions, opts)
    else:
        g.op(fb.BuiltinOperator.CONV_2D, 1, inputs, [out], fb.BuiltinOptions.Conv2DOptions, opts)
    return out
