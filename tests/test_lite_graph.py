"""engine.features.lite_graph and its writers: the table's backbones as float32 TFLite and ONNX straight from the
weights, held to the Keras port (engine.features.port), which tests/test_backbones.py holds to PyTorch."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from engine.config.backbones import BACKBONES
from engine.core.litert import read_model, tflite_interpreter
from engine.export.onnx_model import compose_onnx_bytes, lite_onnx
from engine.export.quantize import builtin_name
from engine.features import lite_graph, lite_tflite
from engine.features.lite_graph import Add, Conv
from engine.learn.head import Head


def _images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth colour fields with edges (a ReLU6 network saturates on white noise)."""
    import cv2

    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), np.float32)
    for k in range(n):
        img = cv2.resize(rng.random((6, 6, 3)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
        cv2.circle(img, (size // 3, size // 2), size // 5, tuple(float(v) for v in rng.random(3)), -1)
        out[k] = np.clip(img, 0, 1)
    return out


def _tflite_features(blob: bytes, x: np.ndarray) -> np.ndarray:
    runner = tflite_interpreter(model_content=blob, num_threads=2)
    runner.allocate_tensors()
    i, o = runner.get_input_details()[0]["index"], runner.get_output_details()[0]["index"]
    out = []
    for img in x:
        runner.set_tensor(i, img[None])
        runner.invoke()
        out.append(runner.get_tensor(o)[0].copy())
    return np.stack(out)


def _channels(layers, i: int) -> int:
    """Channels of layer i's output (an Add keeps its input's)."""
    while isinstance(layers[i], Add):
        i -= 1
    return layers[i].channels


def test_folded_graph_has_every_block_and_uses_every_weight():
    spec = BACKBONES["efficientnet-lite0"]
    graph = lite_graph.lite_graph(spec)
    convs = [layer for layer in graph.layers if isinstance(layer, Conv)]
    adds = [layer for layer in graph.layers if isinstance(layer, Add)]
    blocks = lite_graph.lite_block_specs(spec)
    assert len(convs) == 1 + sum(3 if b["expand"] != 1 else 2 for b in blocks) + 1
    assert len(adds) == sum(b["stride"] == 1 and b["f_in"] == b["f_out"] for b in blocks) == 9
    assert graph.feature_size == spec.feature_size and sum(c.depthwise for c in convs) == len(blocks)
    for i, layer in enumerate(graph.layers):  # a residual adds the block's input: as many channels as its output
        if isinstance(layer, Add):
            assert 0 <= layer.skip < i - 2 and _channels(graph.layers, layer.skip) == _channels(graph.layers, i - 1)
    state = {"_conv_stem.weight": np.zeros((32, 3, 3, 3), np.float32)}
    with pytest.raises(Exception, match="_conv_stem|_bn0"):
        lite_graph.lite_graph(spec, state)  # a state dict missing tensors is refused, not half-read


@pytest.mark.parametrize(("size", "kernel", "stride", "want"), [(224, 3, 2, (0, 1, 112)), (112, 3, 1, (1, 1, 112)),
                                                                 (7, 5, 2, (2, 2, 4)), (15, 5, 1, (2, 2, 15))])
def test_same_padding_is_tensorflows(size, kernel, stride, want):
    assert lite_graph.same_padding(size, kernel, stride) == want


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BACKBONES))
def test_written_backbones_give_the_keras_ports_features(name):
    """float32 .tflite (LiteRT) and ONNX (onnxruntime), written from the weights, against the Keras port's model."""
    from engine.features import port

    spec = BACKBONES[name]
    size = spec.image_size
    x = _images(3, size)
    want = port.build_lite_model(spec)(x, training=False).numpy()
    blob = lite_tflite.float32_tflite(lite_graph.lite_graph(spec), size)
    got = _tflite_features(blob, x)
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())
    session = ort.InferenceSession(lite_onnx(lite_graph.lite_graph(spec), size).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": x})[0]
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-4 * max(1.0, np.abs(want).max())


def test_written_tflite_has_the_converters_operators_and_signature():
    spec = BACKBONES["efficientnet-lite0"]
    model = read_model(lite_tflite.float32_tflite(lite_graph.lite_graph(spec), 224))
    g = model.subgraphs[0]
    names = [builtin_name(model, op) for op in g.operators]
    assert names[:3] == ["MUL", "ADD", "CONV_2D"] and names[-1] == "MEAN"
    assert {n: names.count(n) for n in set(names)} == {"MUL": 1, "ADD": 10, "CONV_2D": 33, "DEPTHWISE_CONV_2D": 16,
                                                       "MEAN": 1}  # what the TFLite converter (TF 2.21) writes
    sig = model.signatureDefs[0]
    assert sig.signatureKey == b"serving_default" and sig.inputs[0].tensorIndex == g.inputs[0]
    assert list(g.tensors[g.inputs[0]].shape) == [1, 224, 224, 3] and list(g.tensors[g.outputs[0]].shape) == [1, 1280]


def test_written_onnx_backbone_takes_a_head():
    """The classifier's names ("head/...") must not collide with the backbone's: onnxruntime refuses the file."""
    graph = lite_graph.lite_graph(BACKBONES["efficientnet-lite0"])
    backbone = lite_onnx(graph, 96)  # any size: the pads are written for it
    rng = np.random.default_rng(0)
    head = Head(rng.normal(0, 0.1, (graph.feature_size, 3)).astype(np.float32), np.zeros(3, np.float32), 1.0)
    session = ort.InferenceSession(compose_onnx_bytes(backbone.SerializeToString(), head),
                                   providers=["CPUExecutionProvider"])
    x = _images(2, 96)
    features = lite_onnx(graph, 96).SerializeToString()
    f = ort.InferenceSession(features, providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    probs = session.run(None, {"images": x})[0]
    assert probs.shape == (2, 3) and np.abs(probs - head.probabilities(f)).max() <= 1e-5
