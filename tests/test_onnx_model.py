"""The ONNX export (engine.export.onnx_model): the cached backbone graph with the run's head appended must be the
float32 TFLite model in ONNX Runtime (same contract: "images" NHWC float32 in [0, 1], any batch, "probabilities"
out), composed in a fraction of a second without TensorFlow, from a backbone converted once per machine."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from export_data import CLASSES, SIZE, exported_once
from onnx import TensorProto, helper, numpy_helper

from engine.export import onnx_model
from engine.features.backbones import resolve
from engine.inference.predict import TFLiteModel
from engine.learn.head import Head

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def composed(tmp_path_factory):
    """The shared export's head composed as ONNX, with its validation images as the model takes them."""
    exp = exported_once(tmp_path_factory)
    resolved = resolve("efficientnet-lite0")
    t0 = time.perf_counter()
    onnx_model.backbone_onnx(resolved)  # converted here the first time on a machine (~20 s), else found
    first = time.perf_counter() - t0
    path = onnx_model.compose_onnx(resolved, exp.head, exp.out / "model.onnx")
    x = exp.x_val.astype(np.float32) / 255.0
    return resolved, exp, path, x, first


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_onnx_equals_the_float32_tflite_model(composed):
    _, exp, path, x, _ = composed
    probs = _session(path).run(None, {"images": x})[0]
    tflite = TFLiteModel(exp.result.tflite["float32"])(x)
    assert probs.shape == (len(x), len(CLASSES))
    print(f"max |dp| ONNX vs float32 TFLite on {len(x)} images: {np.abs(probs - tflite).max():.2e}")
    assert np.abs(probs - tflite).max() <= 1e-4
    assert (probs.argmax(1) == tflite.argmax(1)).all()
    # the temperature is baked in: the head's calibrated probabilities on the same images' features
    assert exp.head.temperature != 1.0
    assert np.abs(probs - exp.head.probabilities(exp.f_val)).max() <= 1e-4
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_the_contract_images_in_probabilities_out_any_batch(composed):
    _, exp, path, x, _ = composed
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    session = _session(path)
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type) == ("images", "tensor(float)")
    assert (out.name, out.type) == ("probabilities", "tensor(float)")
    assert inp.shape[1:] == [SIZE, SIZE, 3] and isinstance(inp.shape[0], str)  # a named, free batch dimension
    assert out.shape[1:] == [len(CLASSES)] and out.shape[0] == inp.shape[0]
    whole = session.run(["probabilities"], {"images": x})[0]
    for n in (1, 2, 5):
        part = session.run(["probabilities"], {"images": x[:n]})[0]
        assert part.shape == (n, len(CLASSES))
        assert np.abs(part - whole[:n]).max() <= 1e-5
    with pytest.raises(Exception, match="(?i)dimension|shape"):  # the size is fixed, as in the TFLite file
        session.run(None, {"images": np.zeros((1, SIZE + 1, SIZE + 1, 3), np.float32)})


def test_composing_takes_under_half_a_second_and_uses_the_cached_backbone(composed, monkeypatch, tmp_path):
    resolved, exp, _, x, first = composed

    def no_conversion(_resolved):
        raise AssertionError("the cached backbone graph was converted again")

    monkeypatch.setattr(onnx_model, "_convert_backbone", no_conversion)
    assert onnx_model.backbone_onnx_cached(resolved)
    times = []
    for i in range(3):
        t0 = time.perf_counter()
        onnx_model.compose_onnx(resolved, exp.head, tmp_path / f"model{i}.onnx")
        times.append(time.perf_counter() - t0)
    print(f"backbone (first call in this session): {first:.2f} s; compose: {', '.join(f'{t:.3f}' for t in times)} s")
    assert min(times) <= 0.5, times
    blobs = {(tmp_path / f"model{i}.onnx").read_bytes() for i in range(3)}
    assert len(blobs) == 1  # the same head gives the same bytes


def test_a_fresh_cache_converts_once_for_concurrent_callers(composed, monkeypatch, tmp_path):
    resolved = composed[0]
    real = onnx_model.backbone_onnx(resolved).read_bytes()
    calls = []

    def convert(_resolved):
        calls.append(1)
        time.sleep(0.5)  # a real conversion takes seconds: the other callers ask meanwhile
        return real

    monkeypatch.setenv("RETRAIN_STUDIO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(onnx_model, "_convert_backbone", convert)
    assert not onnx_model.backbone_onnx_cached(resolved)
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(onnx_model.backbone_onnx(resolved))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(calls) == 1 and len(paths) == 3 and len(set(paths)) == 1
    assert paths[0].is_relative_to(tmp_path / "cache") and paths[0].read_bytes() == real
    onnx_model.backbone_onnx(resolved)
    assert len(calls) == 1


def test_composing_needs_neither_tensorflow_nor_the_converter(composed, tmp_path):
    """A fresh process with the backbone cached: no TensorFlow, tf2onnx, nor even the onnx package imported."""
    resolved, exp, _, x, _ = composed
    (tmp_path / "head.npz").write_bytes(exp.head.to_bytes())
    script = (
        "import sys, time\n"
        "from engine.export.onnx_model import compose_onnx\n"
        "from engine.features.backbones import resolve\n"
        "from engine.learn.head import Head\n"
        "resolved, head = resolve('efficientnet-lite0'), Head.load(sys.argv[1])\n"
        "t0 = time.perf_counter()\n"
        "compose_onnx(resolved, head, sys.argv[2])\n"
        "print(round(time.perf_counter() - t0, 3))\n"
        "print(sorted(m for m in ('tensorflow', 'tf2onnx', 'tf_keras', 'onnx') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "head.npz"), str(tmp_path / "m.onnx")],
                         cwd=REPO, capture_output=True, text=True, timeout=120, check=True).stdout.split("\n")
    print(f"compose in a fresh process: {out[0]} s")
    assert out[1] == "[]"
    probs = _session(tmp_path / "m.onnx").run(None, {"images": x[:3]})[0]
    assert np.abs(probs - exp.head.probabilities(exp.f_val[:3])).max() <= 1e-4


def _reference(backbone: bytes, head: Head) -> onnx.ModelProto:
    """The composed model as the onnx package builds it (what compose_onnx_bytes wrote before it wrote bytes)."""
    model = onnx.load_model_from_string(backbone)
    g = model.graph
    w, b = head.calibrated()
    g.initializer.extend([numpy_helper.from_array(w, "head/kernel"), numpy_helper.from_array(b, "head/bias")])
    g.node.extend([helper.make_node("Gemm", ["features", "head/kernel", "head/bias"], ["head/logits"],
                                    name="head/gemm"),
                   helper.make_node("Softmax", ["head/logits"], ["probabilities"], name="head/softmax", axis=-1)])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", head.n_classes]))
    model.producer_name, model.producer_version = "retrain-studio", onnx_model.ONNX_VERSION
    model.doc_string = onnx_model.DOC
    return model


def test_the_bytes_written_are_the_model_the_onnx_package_builds(composed):
    """compose_onnx_bytes writes protobuf by hand: parsed by onnx, it must equal the same model built with onnx's
    own helpers, field for field, and pass onnx's full check (types and shapes inferred through the head)."""
    resolved, exp, path, _, _ = composed
    backbone = onnx_model.backbone_onnx(resolved).read_bytes()
    written = onnx.load_model_from_string(path.read_bytes())
    assert written == _reference(backbone, exp.head)
    onnx.checker.check_model(written, full_check=True)
    rng = np.random.default_rng(1)
    for k in (2, 7, 300):  # more classes than a varint byte holds
        head = Head(rng.normal(0, 1, (exp.head.feature_size, k)).astype(np.float32), rng.normal(0, 1, k)
                    .astype(np.float32), 1.7)
        assert onnx.load_model_from_string(onnx_model.compose_onnx_bytes(backbone, head)) == _reference(backbone, head)


def test_a_damaged_backbone_is_refused_in_words():
    with pytest.raises(ValueError, match="truncated|no graph"):
        onnx_model.compose_onnx_bytes(b"\x08\x08\x3a\xff\xff",
                                      Head(np.zeros((4, 2), np.float32), np.zeros(2, np.float32)))


def test_a_head_for_other_features_is_refused(composed, tmp_path):
    resolved = composed[0]
    head = Head(np.zeros((1000, 2), np.float32), np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="1000 features"):
        onnx_model.compose_onnx(resolved, head, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()
