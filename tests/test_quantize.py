"""engine.export.quantize: quantized TFLite models made from a float32 flatbuffer without the converter.

Fast tests build a small float32 network with the flatbuffer schema (no TensorFlow) and run what quantize makes of
it in LiteRT; the slow ones hold the real backbone's variants against the TFLite converter's (engine.export.compose
keeps the converter as its fallback) and, on the shared flower photos, against float32."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_dataset

from engine.core.litert import tflite_interpreter
from engine.export import quantize as q

fb = q.schema()


# ----------------------------------------------------------------------------------------------------------------
# The converter's rounding rules
# ----------------------------------------------------------------------------------------------------------------
def test_symmetric_int8_per_channel_rounds_half_away_and_widens_dead_channels():
    w = np.zeros((3, 1, 1, 4), np.float32)
    w[0, 0, 0] = [1.27, -0.025, 0.035, 0.0]  # 127 steps of 0.01: 2.5 -> 3 and 3.5 -> 4, away from zero
    w[1, 0, 0] = [-2.54, 1.27, 0.0, 0.0]
    w[2, 0, 0] = [1e-9, 0.0, 0.0, 0.0]  # a dead channel: its range widened to NEAR_ZERO_RANGE
    values, scales = q.symmetric_int8(w, 0)
    assert values.dtype == np.int8 and scales.dtype == np.float32
    assert np.allclose(scales, [0.01, 0.02, q.NEAR_ZERO_RANGE / 127], rtol=1e-6)
    assert values[0, 0, 0].tolist() == [127, -3, 4, 0]
    assert values[1, 0, 0].tolist() == [-127, 64, 0, 0]  # 63.5 -> 64
    assert values[2, 0, 0, 0] == 0


def test_symmetric_int8_one_scale_for_the_tensor():
    w = np.array([[0.5, -1.0], [0.25, 0.1]], np.float32)
    values, scales = q.symmetric_int8(w, None)
    assert scales.shape == (1,) and np.isclose(scales[0], 1.0 / 127)
    assert values.tolist() == [[64, -127], [32, 13]]  # 63.5 -> 64, 31.75 -> 32, 12.7 -> 13


def test_asymmetric_int8_range_always_holds_zero():
    assert q.asymmetric_int8(0.0, 6.0) == pytest.approx((6 / 255, -128))
    scale, zero = q.asymmetric_int8(2.0, 6.0)  # widened down to 0
    assert scale == pytest.approx(6 / 255) and zero == -128
    scale, zero = q.asymmetric_int8(-1.0, 1.0)
    assert scale == pytest.approx(2 / 255) and zero == 0  # -128 + 127.5, rounded half to even as the converter


# ----------------------------------------------------------------------------------------------------------------
# A small float32 network: MUL, ADD, CONV_2D (relu6), DEPTHWISE_CONV_2D, a residual ADD, MEAN
# ----------------------------------------------------------------------------------------------------------------
def _tensor(model, g, name, shape, data=None):
    t = fb.TensorT()
    t.name, t.shape, t.type, t.buffer = name.encode(), np.asarray(shape, np.int32), fb.TensorType.FLOAT32, 0
    if data is not None:
        buf = fb.BufferT()
        buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
        model.buffers.append(buf)
        t.buffer = len(model.buffers) - 1
        t.type = fb.TensorType.INT32 if data.dtype == np.int32 else fb.TensorType.FLOAT32
    g.tensors.append(t)
    return len(g.tensors) - 1


def _op(model, g, builtin, inputs, outputs, options_type=0, options=None):
    if not any(c.builtinCode == builtin for c in model.operatorCodes):
        code = fb.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = builtin
        code.version = 1
        model.operatorCodes.append(code)
    op = fb.OperatorT()
    op.opcodeIndex = next(i for i, c in enumerate(model.operatorCodes) if c.builtinCode == builtin)
    op.inputs, op.outputs = np.asarray(inputs, np.int32), np.asarray(outputs, np.int32)
    op.builtinOptionsType, op.builtinOptions = options_type, options
    g.operators.append(op)


def _conv_options(depthwise: bool, relu6: bool):
    opts = fb.DepthwiseConv2DOptionsT() if depthwise else fb.Conv2DOptionsT()
    opts.padding, opts.strideH, opts.strideW = fb.Padding.SAME, 1, 1
    opts.dilationHFactor = opts.dilationWFactor = 1
    opts.fusedActivationFunction = fb.ActivationFunctionType.RELU6 if relu6 else 0
    if depthwise:
        opts.depthMultiplier = 1
    return opts


def small_float_model(seed: int = 0, size: int = 8, channels: int = 39) -> bytes:
    """Image [1,S,S,3] in [0,1] -> features [1,C]: the operators (and the layout) of an EfficientNet-Lite block."""
    rng = np.random.default_rng(seed)
    model, g = fb.ModelT(), fb.SubGraphT()
    model.version, model.buffers, model.operatorCodes, model.subgraphs = 3, [fb.BufferT()], [], [g]
    g.tensors, g.operators = [], []
    runtime = fb.BufferT()
    runtime.data = np.frombuffer(b"1.6.0".ljust(16, b"\0"), np.uint8)
    model.buffers.append(runtime)
    meta = fb.MetadataT()
    meta.name, meta.buffer = q.RUNTIME_KEY, 1
    model.metadata = [meta]
    t = lambda *a: _tensor(model, g, *a)  # noqa: E731
    x = t("image", [1, size, size, 3])
    mul = t("mul", [1, size, size, 3])
    _op(model, g, fb.BuiltinOperator.MUL, [x, t("two", [], np.float32(2.0).reshape(()))], [mul],
        fb.BuiltinOptions.MulOptions, fb.MulOptionsT())
    add = t("add", [1, size, size, 3])
    _op(model, g, fb.BuiltinOperator.ADD, [mul, t("minus_one", [], np.float32(-1.0).reshape(()))], [add],
        fb.BuiltinOptions.AddOptions, fb.AddOptionsT())
    conv = t("conv", [1, size, size, channels])
    w = rng.normal(0, 0.3, (channels, 3, 3, 3)).astype(np.float32)  # 1053 numbers: quantized
    w[5] = 0.0  # a dead output channel with a bias: its scale is widened (int8) and never divides by zero
    b = rng.normal(0, 0.1, channels).astype(np.float32)
    _op(model, g, fb.BuiltinOperator.CONV_2D, [add, t("conv/w", w.shape, w), t("conv/b", [channels], b)], [conv],
        fb.BuiltinOptions.Conv2DOptions, _conv_options(False, True))
    dw = t("dw", [1, size, size, channels])
    wd = rng.normal(0, 0.3, (1, 5, 5, channels)).astype(np.float32)  # 975 numbers: dynamic-range keeps it float
    _op(model, g, fb.BuiltinOperator.DEPTHWISE_CONV_2D,
        [conv, t("dw/w", wd.shape, wd), t("dw/b", [channels], rng.normal(0, 0.1, channels).astype(np.float32))],
        [dw], fb.BuiltinOptions.DepthwiseConv2DOptions, _conv_options(True, False))
    res = t("residual", [1, size, size, channels])
    _op(model, g, fb.BuiltinOperator.ADD, [conv, dw], [res], fb.BuiltinOptions.AddOptions, fb.AddOptionsT())
    out = t("features", [1, channels])
    mean_opts = fb.ReducerOptionsT()
    mean_opts.keepDims = False
    _op(model, g, fb.BuiltinOperator.MEAN, [res, t("axes", [2], np.array([1, 2], np.int32))], [out],
        fb.BuiltinOptions.ReducerOptions, mean_opts)
    g.inputs, g.outputs = np.asarray([x], np.int32), np.asarray([out], np.int32)
    return q.write_model(model)


def _run(blob: bytes, images: np.ndarray) -> np.ndarray:
    """Features for uint8 images, fed as each model wants them (float [0,1], or raw pixels), dequantized."""
    runner = tflite_interpreter(model_content=blob, num_threads=1)
    runner.allocate_tensors()
    inp, out = runner.get_input_details()[0], runner.get_output_details()[0]
    rows = []
    for img in images:
        x = img[None].astype(np.float32) / 255.0 if inp["dtype"] == np.float32 else img[None].astype(inp["dtype"])
        runner.set_tensor(inp["index"], x)
        runner.invoke()
        y = runner.get_tensor(out["index"])[0].astype(np.float64)
        scale, zero = out["quantization"]
        rows.append((y - zero) * scale if scale else y)
    return np.stack(rows)


def _images(n: int, size: int = 8, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _types(blob: bytes) -> dict[str, int]:
    model = q.read_model(blob)
    return {t.name.decode(): t.type for t in model.subgraphs[0].tensors}


def _runtime(blob: bytes) -> str:
    model = q.read_model(blob)
    entry = next(m for m in model.metadata if m.name == q.RUNTIME_KEY)
    return bytes(model.buffers[entry.buffer].data).rstrip(b"\0").decode()


def test_dynamic_range_stores_large_weights_as_int8_and_computes_close_to_float():
    blob = small_float_model()
    ours = q.dynamic_range(blob)
    types = _types(ours)
    assert types["conv/w"] == fb.TensorType.INT8 and types["conv/b"] == fb.TensorType.FLOAT32
    assert types["dw/w"] == fb.TensorType.FLOAT32  # under MIN_ELEMENTS numbers
    assert types["image"] == types["features"] == fb.TensorType.FLOAT32  # hybrid: activations stay float
    versions = {c.builtinCode: c.version for c in q.read_model(ours).operatorCodes}
    assert versions[fb.BuiltinOperator.CONV_2D] == 5 and versions[fb.BuiltinOperator.DEPTHWISE_CONV_2D] == 1
    assert _runtime(ours) == "2.4.0"
    x = _images(16)
    floats, hybrid = _run(blob, x), _run(ours, x)
    assert 0 < np.abs(hybrid - floats).max() <= 0.02 * np.abs(floats).max()


def test_full_int8_takes_raw_pixels_and_tracks_float():
    blob = small_float_model()
    ours = q.full_int8(blob, _images(32, seed=2))
    model = q.read_model(ours)
    g = model.subgraphs[0]
    first, last = g.tensors[int(g.inputs[0])], g.tensors[int(g.outputs[0])]
    assert first.type == fb.TensorType.UINT8 and last.type == fb.TensorType.INT8
    assert np.isclose(first.quantization.scale[0], 1 / 255) and first.quantization.zeroPoint[0] == 0
    assert q.builtin_name(model, g.operators[0]) == "QUANTIZE" and _runtime(ours) == "1.14.0"
    assert {t.type for t in g.tensors} <= {fb.TensorType.INT8, fb.TensorType.INT32, fb.TensorType.UINT8}
    x = _images(16)
    floats, ints = _run(blob, x), _run(ours, x)
    spread = floats.max() - floats.min()
    assert np.abs(ints - floats).max() <= 0.05 * spread and np.corrcoef(ints.ravel(), floats.ravel())[0, 1] > 0.99


def test_full_int8_widens_the_scale_of_a_dead_channel_with_a_bias():
    model = q.read_model(q.full_int8(small_float_model(), _images(8, seed=2)))
    g = model.subgraphs[0]
    by_name = {t.name.decode(): t for t in g.tensors}
    scales = by_name["conv/w"].quantization.scale
    assert scales[5] > q.NEAR_ZERO_RANGE / 127  # the bias fits in BIAS_MAX steps of input x weight scale
    bias = q.constant(model, by_name["conv/b"])
    assert np.abs(bias).max() <= q.BIAS_MAX + 1


def test_full_int8_refuses_operators_it_does_not_know():
    model = q.read_model(small_float_model())
    model.operatorCodes[0].builtinCode = model.operatorCodes[0].deprecatedBuiltinCode = fb.BuiltinOperator.TANH
    with pytest.raises(q.Unsupported, match="TANH"):
        q.full_int8(q.write_model(model), _images(2))


# ----------------------------------------------------------------------------------------------------------------
# The real backbone against the TFLite converter, and on photos
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def backbone():
    from engine.features.backbones import resolve
    from engine.features.embeddings import Embedder

    resolved = resolve("efficientnet-lite0")
    return resolved, Embedder.tflite_path(resolved).read_bytes()


@pytest.fixture(scope="module")
def converted(backbone):
    """The variants as the converter makes them (~30 s): what engine.export.compose cached before."""
    from engine.export import compose

    return {v: compose._convert_backbone(backbone[0], v) for v in ("dynamic", "int8")}


def _pairs(ours, theirs):
    """(our tensor, their tensor) for every operator input and output, matched by position in the graph."""
    g, h = ours.subgraphs[0], theirs.subgraphs[0]
    assert len(g.operators) == len(h.operators)
    for a, b in zip(g.operators, h.operators, strict=True):
        assert q.builtin_name(ours, a) == q.builtin_name(theirs, b)
        for i, j in zip([*a.inputs, *a.outputs], [*b.inputs, *b.outputs], strict=True):
            if i >= 0:
                yield g.tensors[i], h.tensors[j]


def _versions(model) -> dict[int, int]:
    return {c.builtinCode: c.version for c in model.operatorCodes}


@pytest.mark.slow
def test_dynamic_backbone_quantizes_as_the_converter(backbone, converted):
    """Operator by operator: the same graph (our float32 backbone is written from the weights, the converter's
    from the Keras port: BatchNorm folded in another order, so a weight may be one step off), the same versions,
    types and scales."""
    ours, theirs = q.read_model(q.dynamic_range(backbone[1])), q.read_model(converted["dynamic"])
    assert _versions(ours) == _versions(theirs) and _runtime(q.write_model(ours)) == _runtime(converted["dynamic"])
    steps = []
    for a, b in _pairs(ours, theirs):
        assert a.type == b.type and list(a.shape) == list(b.shape), a.name
        va, vb = q.constant(ours, a), q.constant(theirs, b)
        assert (va is None) == (vb is None), a.name
        if a.type == fb.TensorType.INT8:
            steps.append(np.abs(va.astype(int) - vb).ravel())
            assert np.allclose(a.quantization.scale, b.quantization.scale, rtol=1e-5)
            assert a.quantization.quantizedDimension == b.quantization.quantizedDimension
        elif va is not None and a.type == fb.TensorType.FLOAT32:
            assert np.allclose(va, vb, rtol=1e-4, atol=1e-5), a.name
    assert len(steps) > 40
    steps = np.concatenate(steps)
    assert steps.max() <= 1 and np.mean(steps > 0) < 1e-3


@pytest.mark.slow
def test_int8_backbone_quantizes_as_the_converter(backbone, converted):
    from engine.export.calibration import calibration_images

    ours_blob = q.full_int8(backbone[1], calibration_images(backbone[0].image_size))
    ours, theirs = q.read_model(ours_blob), q.read_model(converted["int8"])
    assert _versions(ours) == _versions(theirs) and _runtime(ours_blob) == _runtime(converted["int8"])
    steps = []
    for a, b in _pairs(ours, theirs):
        assert a.type == b.type, a.name
        qa, qb = a.quantization, b.quantization
        if qb is None or qb.scale is None:
            assert qa is None or qa.scale is None, a.name
            continue
        assert np.allclose(qa.scale, qb.scale, rtol=1e-5) and np.array_equal(qa.zeroPoint, qb.zeroPoint), a.name
        if a.type == fb.TensorType.INT8 and q.constant(ours, a) is not None:
            steps.append(np.abs(q.constant(ours, a).astype(int) - q.constant(theirs, b)).ravel())
    steps = np.concatenate(steps)
    assert steps.max() <= 1 and np.mean(steps > 0) < 1e-3  # a few weights rounded the other way
    x = calibration_images(backbone[0].image_size, n=8, seed=7)
    ours_out, theirs_out = _run(ours_blob, x), _run(converted["int8"], x)
    scale = q.read_model(ours_blob).subgraphs[0].tensors[-1].quantization
    assert np.abs(ours_out - theirs_out).mean() <= 2 * _out_scale(ours_blob) and scale is not None


def _out_scale(blob: bytes) -> float:
    model = q.read_model(blob)
    g = model.subgraphs[0]
    return float(g.tensors[int(g.outputs[0])].quantization.scale[0])


def _photos(folder, per_class: int | None, exclude=None) -> tuple[np.ndarray, np.ndarray]:
    from engine.data.images import prepare

    xs, ys = [], []
    for label, cls in enumerate(sorted(p.name for p in folder.iterdir() if p.is_dir())):
        files = sorted(f for f in (folder / cls).iterdir() if not (exclude and (exclude / cls / f.name).exists()))
        for f in files[:per_class] if per_class else files:
            xs.append(prepare(f, 224))
            ys.append(label)
    return np.stack(xs), np.array(ys)


@pytest.mark.slow
@pytest.mark.shared
def test_quantized_classifiers_agree_with_float32_as_the_converters_do(backbone, tmp_path):
    """A head fitted on the 300 flowers, composed onto each backbone variant, on 200 other flower photos (the first
    40 of each class): ours agree with float32 (top-1) and keep its accuracy as the converter's variants do. The
    converter's, measured on these 200 photos (TF 2.21): float32 0.840 accuracy; dynamic (quantized by the same rules
    as ours, see test_dynamic_backbone_quantizes_as_the_converter) 95.5% agreement, 0.825; int8 94.5%, 0.820. On
    1,000 such photos (200 a class, drawn at random): its dynamic 98.8%, its int8 97.9%, ours 97.7%: a 99% bar would
    fail the converter's too. Its variants are not converted again here: that would double this module's time."""
    from export_data import fit_head

    from engine.export import compose
    from engine.export.calibration import calibration_images
    from engine.features.embeddings import Embedder
    from engine.inference.predict import TFLiteModel

    flowers, large = shared_dataset("flowers"), shared_dataset("flowers_large")
    resolved, float32 = backbone
    x_tr, y_tr = _photos(flowers, None)
    embed = Embedder(resolved, num_threads=2)
    f_tr = np.stack([embed(x) for x in x_tr])
    head = fit_head(f_tr, y_tr, temperature=1.3)
    x, y = _photos(large, 40, exclude=flowers)
    backbones = {"float32": float32, "dynamic": q.dynamic_range(float32),
                 "int8": q.full_int8(float32, calibration_images(resolved.image_size))}
    top1 = {}
    for name, blob in backbones.items():
        path = tmp_path / f"{name}.tflite"
        path.write_bytes(compose.compose(blob, head, name, compose.logit_range(head, f_tr)))
        model = TFLiteModel(path, num_threads=2)
        top1[name] = np.array([int(np.argmax(model.probabilities(img))) for img in x])
    agree = {n: float(np.mean(t == top1["float32"])) for n, t in top1.items()}
    lost = {n: float(np.mean(top1["float32"] == y) - np.mean(t == y)) for n, t in top1.items()}
    assert np.mean(top1["float32"] == y) > 0.7
    converters = {"dynamic": (0.955, 0.015), "int8": (0.945, 0.020)}  # (agreement, accuracy lost), as above
    for variant, (theirs_agree, theirs_lost) in converters.items():
        assert agree[variant] >= theirs_agree - 0.01, (agree, lost)
        assert lost[variant] <= max(0.01, theirs_lost + 0.005) + 1e-9, (agree, lost)
