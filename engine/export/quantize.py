"""Quantized TFLite models made from a float32 flatbuffer without the TFLite converter (no TensorFlow).

The converter takes ~11 s (dynamic-range) and ~18 s (full int8, calibrated) per backbone, and a new machine pays
both on its first run. The same files can be written from the float32 backbone the embedder already compiled:

* dynamic-range: CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED weights stored as symmetric int8, per output channel
  for convolutions and one scale for dense layers (what the variant's recipe asks the converter for), activations
  stay float ("hybrid" ops);
* full int8: the same weights plus activation ranges measured with LiteRT on the calibration images
  (engine.export.calibration), every tensor int8, uint8 pixels in.

The rules below are read off the converter's own files for the same network (TF 2.21; tests/test_quantize.py
compares them): a weight's range is its largest magnitude but at least NEAR_ZERO_RANGE, computed in float64 and
rounded half away from zero; tensors under MIN_ELEMENTS numbers stay float; operator versions as listed.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter

import numpy as np

from engine.core.litert import RUNTIME_KEY, read_model, schema, write_model  # noqa: F401 - re-exported
from engine.export.calibration import calibration_batches

log = logging.getLogger(__name__)

NEAR_ZERO_RANGE = 5e-7  # the converter widens a weight channel's range to at least this (dead channels)
MIN_ELEMENTS = 1024  # dynamic-range: the converter leaves smaller weight tensors in float
# builtin name -> (operator version of its hybrid form, the weight's per-channel axis or None for one scale).
# CONV_2D 5 and DEPTHWISE_CONV_2D 6 are the per-channel hybrid kernels; FULLY_CONNECTED 9 has one weight scale and
# quantizes its inputs asymmetrically, which tflite-runtime 2.14 and the Task Library still run (see variants.py).
_HYBRID = {"CONV_2D": (5, 0), "DEPTHWISE_CONV_2D": (6, 3), "FULLY_CONNECTED": (9, None)}
# (builtin name, version) -> the first TFLite release that runs it (tensorflow/lite/tools/versioning/runtime_version.cc)
_RUNTIME = {("CONV_2D", 5): "2.4.0", ("DEPTHWISE_CONV_2D", 6): "2.3.0", ("FULLY_CONNECTED", 9): "2.3.0"}


def quant(scale, zero_point, axis: int = 0):
    """A tensor's QuantizationParametersT: one scale and zero point, or one per slice along `axis`."""
    q = schema().QuantizationParametersT()
    q.scale = np.atleast_1d(np.asarray(scale, np.float32))
    q.zeroPoint = np.atleast_1d(np.asarray(zero_point, np.int64))
    q.quantizedDimension = axis
    return q


def symmetric_int8(w: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """int8 weights and their scales (zero point 0), one scale per slice along `axis` or one for the tensor (None),
    bit for bit as the TFLite converter quantizes weights."""
    w64 = np.asarray(w, np.float64)
    others = tuple(a for a in range(w64.ndim) if a != axis) if axis is not None else None
    peak = np.maximum(np.abs(w64).max(axis=others, keepdims=True), NEAR_ZERO_RANGE)
    scale = peak / 127.0
    q = np.clip(_round_away(w64 / scale), -127, 127).astype(np.int8)
    return q, scale.ravel().astype(np.float32)


def builtin_name(model, op) -> str:
    fb = schema()
    code = model.operatorCodes[op.opcodeIndex]
    number = max(code.builtinCode, code.deprecatedBuiltinCode)
    return next(k for k, v in vars(fb.BuiltinOperator).items() if v == number)


def constant(model, tensor) -> np.ndarray | None:
    """A tensor's constant value (None for an activation)."""
    data = model.buffers[tensor.buffer].data
    if data is None or not len(data):
        return None
    dtype = {0: np.float32, 2: np.int32, 9: np.int8, 3: np.uint8, 4: np.int64}[tensor.type]
    return np.frombuffer(np.asarray(data, np.uint8).tobytes(), dtype).reshape(tensor.shape)


def set_constant(model, tensor, value: np.ndarray, shared: Counter) -> None:
    """Store a new value for a constant tensor; a buffer another tensor also reads gets a copy instead."""
    fb = schema()
    data = np.frombuffer(np.ascontiguousarray(value).tobytes(), np.uint8)
    if shared[tensor.buffer] > 1:
        buf = fb.BufferT()
        model.buffers.append(buf)
        shared[tensor.buffer] -= 1
        tensor.buffer = len(model.buffers) - 1
    model.buffers[tensor.buffer].data = data


def buffer_uses(model) -> Counter:
    return Counter(t.buffer for g in model.subgraphs for t in g.tensors)


def set_min_runtime(model, version: str) -> None:
    """Raise the file's min_runtime_version metadata to `version` (never lower it)."""
    for entry in model.metadata or []:
        if entry.name == RUNTIME_KEY:
            buf = model.buffers[entry.buffer]
            old = bytes(buf.data).rstrip(b"\0").decode() if buf.data is not None else "0"
            if _version_key(version) > _version_key(old):
                buf.data = np.frombuffer(version.encode().ljust(16, b"\0"), np.uint8)
            return


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def dynamic_range(blob: bytes) -> bytes:
    """The float32 model with its convolution and dense weights stored as int8 (hybrid ops), as the converter's
    Optimize.DEFAULT makes it without a representative dataset."""
    fb = schema()
    model = read_model(blob)
    shared, done, runtime = buffer_uses(model), set(), "0"
    for g in model.subgraphs:
        readers = Counter(int(i) for op in g.operators for i in op.inputs if i >= 0)
        for op in g.operators:
            name = builtin_name(model, op)
            # a weight another operator also reads stays float: that one may not take int8
            if name not in _HYBRID or len(op.inputs) < 2 or readers[int(op.inputs[1])] != 1:
                continue
            tensor = g.tensors[op.inputs[1]]
            w = constant(model, tensor)
            if tensor.type != fb.TensorType.FLOAT32 or w is None or w.size < MIN_ELEMENTS:
                continue
            version, axis = _HYBRID[name]
            q, scale = symmetric_int8(w, axis)
            set_constant(model, tensor, q, shared)
            tensor.type, tensor.quantization = fb.TensorType.INT8, quant(scale, np.zeros(len(scale)), axis or 0)
            done.add(int(op.inputs[1]))
            if name == "FULLY_CONNECTED":
                op.builtinOptions.asymmetricQuantizeInputs = True
            code = model.operatorCodes[op.opcodeIndex]  # one code per op kind, as the converter writes it
            code.version = max(code.version, version)
            runtime = max(runtime, _RUNTIME[(name, version)], key=_version_key)
    log.debug("Dynamic-range: %d weight tensors stored as int8", len(done))
    set_min_runtime(model, runtime)
    return write_model(model)


# ----------------------------------------------------------------------------------------------------------------
# Full int8: activation ranges measured with LiteRT
# ----------------------------------------------------------------------------------------------------------------
# builtin name -> its int8 operator version, as the converter writes it; other ops make full_int8 refuse the model
_INT8 = {"CONV_2D": 3, "DEPTHWISE_CONV_2D": 3, "ADD": 2, "MUL": 2, "MEAN": 2}
_INT8_RUNTIME = "1.14.0"  # what the converter writes for these ops (and QUANTIZE 1)
_WEIGHT_AXIS = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3}
BIAS_MAX = (2**31 - 1) / 2.0  # a bias may take at most this many steps of its scale (the converter's headroom)


class Unsupported(ValueError):
    """A model with an operator the converter-free int8 path does not know: use the TFLite converter instead."""


def activation_ranges(blob: bytes, images: np.ndarray) -> dict[int, tuple[float, float]]:
    """(min, max) of every activation tensor of a float model with one image input, over the calibration images fed
    as the converter's representative dataset is (engine.export.calibration.calibration_batches)."""
    # LiteRT directly: engine.core.litert's interpreter cannot keep intermediate tensors readable
    from ai_edge_litert.interpreter import Interpreter

    model = read_model(blob)
    g = model.subgraphs[0]
    watched = [i for i, t in enumerate(g.tensors) if constant(model, t) is None]
    with warnings.catch_warnings():  # its "debugging only" warning: here it is the point, for one image at a time
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors", category=UserWarning)
        runner = Interpreter(model_content=blob, experimental_preserve_all_tensors=True,
                             num_threads=os.cpu_count() or 1)
    runner.allocate_tensors()
    lo, hi = np.full(len(watched), np.inf), np.full(len(watched), -np.inf)
    for (x,) in calibration_batches(images):
        runner.set_tensor(int(g.inputs[0]), x)
        runner.invoke()
        for k, i in enumerate(watched):
            v = runner.get_tensor(i)
            lo[k], hi[k] = min(lo[k], float(v.min())), max(hi[k], float(v.max()))
    return {i: (float(lo[k]), float(hi[k])) for k, i in enumerate(watched)}


def _widen_into_adds(model, ranges: dict[int, tuple[float, float]]) -> None:
    """An activation read only by an ADD takes in the ADD's output range too, as the converter does."""
    g = model.subgraphs[0]
    readers = Counter(int(i) for op in g.operators for i in op.inputs if i >= 0)
    for op in g.operators:
        if builtin_name(model, op) != "ADD":
            continue
        out = ranges[int(op.outputs[0])]
        for i in (int(i) for i in op.inputs):
            if i in ranges and readers[i] == 1 and i not in g.inputs:
                ranges[i] = (min(ranges[i][0], out[0]), max(ranges[i][1], out[1]))


def asymmetric_int8(lo: float, hi: float) -> tuple[float, int]:
    """Scale and zero point of an int8 activation whose values span [lo, hi] (the range always holds 0)."""
    lo, hi = min(0.0, lo), max(0.0, hi)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    return scale, int(np.clip(np.round(-128 - lo / scale), -128, 127))


def full_int8(blob: bytes, images: np.ndarray) -> bytes:
    """The float32 model as a full-integer one, as the converter makes it with a representative dataset and
    TFLITE_BUILTINS_INT8: uint8 pixels in (scale 1/255), int8 everywhere, the last activation out as int8."""
    fb = schema()
    model = read_model(blob)
    g = model.subgraphs[0]
    names = [builtin_name(model, op) for op in g.operators]
    unknown = sorted(set(names) - set(_INT8))
    if unknown or len(model.subgraphs) != 1 or len(g.inputs) != 1:
        raise Unsupported(f"no converter-free int8 for operators {unknown or 'in several subgraphs'}")
    ranges = activation_ranges(blob, images)
    _widen_into_adds(model, ranges)
    params = {i: asymmetric_int8(*r) for i, r in ranges.items()}
    shared, done = buffer_uses(model), set()
    for op, name in zip(g.operators, names, strict=True):
        for i in (int(i) for i in op.inputs if i >= 0 and int(i) not in params and int(i) not in done):
            done.add(i)
            _quantize_constant(model, g, op, name, i, params, shared)
        model.operatorCodes[op.opcodeIndex].version = _INT8[name]
    for i, (scale, zero) in params.items():
        g.tensors[i].type, g.tensors[i].quantization = fb.TensorType.INT8, quant(scale, zero)
    _quantize_input(model, g)
    set_min_runtime(model, _INT8_RUNTIME)
    return write_model(model)


def _quantize_constant(model, g, op, name: str, i: int, params: dict, shared: Counter) -> None:
    """A weight (per output channel), a bias (int32, scale input x weight) or an operand (its own range)."""
    fb, tensor = schema(), g.tensors[i]
    value = constant(model, tensor)
    position = list(op.inputs).index(i)
    if name in _WEIGHT_AXIS and position == 1:
        if len(op.inputs) < 3 or op.inputs[2] < 0:
            raise Unsupported(f"no converter-free int8 for a {name} without a bias")
        return  # quantized with its bias, which may widen its scale
    if name in _WEIGHT_AXIS and position == 2:
        _quantize_weight_and_bias(model, g, op, _WEIGHT_AXIS[name], params[int(op.inputs[0])][0], shared)
        return
    if tensor.type != fb.TensorType.FLOAT32:
        return  # an integer operand (MEAN's axes) stays as it is
    s, z = asymmetric_int8(float(value.min()), float(value.max()))
    q = np.clip(_round_away(value.astype(np.float64) / s) + z, -128, 127).astype(np.int8)
    tensor.type, tensor.quantization = fb.TensorType.INT8, quant(s, z)
    set_constant(model, tensor, q, shared)


def _quantize_weight_and_bias(model, g, op, axis: int, input_scale: float, shared: Counter) -> None:
    """Per-channel int8 weights and their int32 bias (scale input x weight). Where a bias would not fit in
    BIAS_MAX steps (a near-dead channel with a large bias), the converter widens that channel's weight scale."""
    fb = schema()
    w_tensor, b_tensor = g.tensors[int(op.inputs[1])], g.tensors[int(op.inputs[2])]
    w, b = constant(model, w_tensor), constant(model, b_tensor).astype(np.float64)
    _, w_scale = symmetric_int8(w, axis)
    w_scale = np.maximum(w_scale.astype(np.float64), np.abs(b) / (input_scale * BIAS_MAX))
    shape = [1] * w.ndim
    shape[axis] = -1
    q_w = np.clip(_round_away(w.astype(np.float64) / w_scale.reshape(shape)), -127, 127).astype(np.int8)
    b_scale = np.float32(input_scale) * w_scale.astype(np.float32)  # float32 throughout, as the converter
    q_b = _round_away(b.astype(np.float32) / b_scale).astype(np.int32)
    w_tensor.type, w_tensor.quantization = fb.TensorType.INT8, quant(w_scale, np.zeros(len(w_scale)), axis)
    b_tensor.type, b_tensor.quantization = fb.TensorType.INT32, quant(b_scale, np.zeros(len(b_scale)), 0)
    set_constant(model, w_tensor, q_w, shared)
    set_constant(model, b_tensor, q_b, shared)


def _round_away(x: np.ndarray) -> np.ndarray:
    """Round half away from zero (C++ std::round), in x's own precision."""
    return np.sign(x) * np.floor(np.abs(x) + x.dtype.type(0.5))


def _quantize_input(model, g) -> None:
    """uint8 pixels in (scale 1/255, zero point 0), shifted to int8 by a QUANTIZE op in front of the graph."""
    fb = schema()
    first = int(g.inputs[0])
    scale = float(g.tensors[first].quantization.scale[0])
    shifted = fb.TensorT()
    shifted.name, shifted.shape = b"tfl.quantize", np.asarray(g.tensors[first].shape, np.int32)
    shifted.type, shifted.quantization, shifted.buffer = fb.TensorType.INT8, quant(scale, -128), 0
    g.tensors.append(shifted)
    new = len(g.tensors) - 1
    for op in g.operators:
        op.inputs = np.asarray([new if int(i) == first else int(i) for i in op.inputs], np.int32)
    g.tensors[first].type, g.tensors[first].quantization = fb.TensorType.UINT8, quant(scale, 0)
    code = fb.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = fb.BuiltinOperator.QUANTIZE
    code.version = 1
    model.operatorCodes.append(code)
    op = fb.OperatorT()
    op.opcodeIndex = len(model.operatorCodes) - 1
    op.inputs, op.outputs = np.asarray([first], np.int32), np.asarray([new], np.int32)
    g.operators.insert(0, op)
