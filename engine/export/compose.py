"""Exported classifiers composed from cached parts: the backbone converted once, the head appended per run.

Every run of a project exports the same backbone; only the head (a dense layer + softmax, a few thousand numbers)
changes. Converting the whole network with the TFLite converter costs ~15-30 s per variant, so instead:

* each TFLite variant of the backbone (float32, dynamic-range, full int8) is converted once per backbone and
  image size and cached; the int8 one is calibrated on a fixed set of generated images (measured: the top-1
  agreement with float32 matches calibration on real photos, see bench/bench.py), so no user photo is needed;
* a run's classifier is that flatbuffer with FULLY_CONNECTED + SOFTMAX appended (quantized the way the converter
  quantizes them: int8 symmetric per-channel weights), written in a fraction of a second without TensorFlow;
* the SavedModel is a cached template (traced and saved once per backbone, size and class count) whose head
  tensors are rewritten in place (engine.export.tfbundle).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import flatbuffers
import numpy as np

from engine.core.fileio import atomic_write_bytes, atomic_write_text, read_json
from engine.features.backbones import ResolvedBackbone, cache_root
from engine.learn.head import Head

log = logging.getLogger(__name__)

COMPOSE_VERSION = "1"  # part of every cache key here: bump when the cached backbones or templates change
CALIBRATION_IMAGES, CALIBRATION_SEED = 100, 0
INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
# (op, variant) -> operator version, as the TFLite converter (TF 2.21) writes them for the same ops
_OP_VERSIONS = {("fc", "float32"): 1, ("fc", "dynamic"): 12, ("fc", "int8"): 4,
                ("softmax", "float32"): 1, ("softmax", "dynamic"): 1, ("softmax", "int8"): 2, ("quantize", "int8"): 1}
SOFTMAX_INT8 = (1.0 / 256.0, -128)  # TFLite requires this output quantization for an int8 SOFTMAX
OUTPUT_UINT8 = (1.0 / 256.0, 0)


def _schema():
    # LiteRT ships the flatbuffer schema's Python API; importing TensorFlow's copy would import TensorFlow.
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


# ----------------------------------------------------------------------------------------------------------------
# Cached backbone variants
# ----------------------------------------------------------------------------------------------------------------
def _backbone_cache(resolved: ResolvedBackbone, variant: str) -> Path:
    name = f"{resolved.backbone_id}-{resolved.image_size}-{variant}-v{COMPOSE_VERSION}.tflite"
    return cache_root() / "composed" / name


def backbone_tflite_cached(resolved: ResolvedBackbone, variant: str) -> bool:
    return variant == "float32" or _backbone_cache(resolved, variant).exists()


def backbone_tflite(resolved: ResolvedBackbone, variant: str) -> Path:
    """The backbone as a .tflite file for one variant (features out), converted on first use and cached."""
    if variant == "float32":
        from engine.features.embeddings import Embedder

        return Embedder.tflite_path(resolved)  # the embedder's own model: composed outputs equal the head's
    path = _backbone_cache(resolved, variant)
    if not path.exists():
        log.info("Converting the %s backbone to a %s TFLite model (once)", resolved.handle, variant)
        atomic_write_bytes(path, _convert_backbone(resolved, variant))
    return path


def _convert_backbone(resolved: ResolvedBackbone, variant: str) -> bytes:
    from engine.core.tfcompat import keras, tf
    from engine.features.backbones import load_feature_layer

    size = resolved.image_size
    model = keras.Sequential([keras.Input((size, size, 3), batch_size=1), load_feature_layer(resolved)])
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "int8":
        sample = calibration_images(size)
        converter.representative_dataset = lambda: _calibration_batches(sample)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.int8  # the head consumes the int8 features directly
    elif variant != "dynamic":
        raise ValueError(f"Unknown TFLite variant '{variant}'")
    return converter.convert()


def _calibration_batches(sample: np.ndarray):
    for i, image in enumerate(sample):
        x = image.astype(np.float32)[None] / 255.0
        if i == 0:
            # One black and one white pixel pin the input range to exactly [0, 1], so the int8 model's uint8 input
            # is the raw pixel (scale 1/255, zero point 0), as label_image's --input_mean 0 --input_std 255 assumes.
            x[0, 0, 0, :], x[0, 0, 1, :] = 0.0, 1.0
        yield [x]


def calibration_images(size: int, n: int = CALIBRATION_IMAGES, seed: int = CALIBRATION_SEED) -> np.ndarray:
    """Generated photo-like images: 1/f-noise colour fields with shapes, blur, contrast and noise (uint8 RGB).

    Natural images have a ~1/f amplitude spectrum and sharp edges; activations of a ReLU6 network calibrated on
    such images cover the ranges real photos reach (top-1 agreement with float32 measured equal to calibrating on
    100 real flower photos), and the set is the same on every machine.
    """
    import cv2

    rng = np.random.default_rng(seed)
    freq = np.fft.fftfreq(size)[:, None] ** 2 + np.fft.fftfreq(size)[None, :] ** 2
    out = np.empty((n, size, size, 3), np.uint8)
    for k in range(n):
        amp = 1.0 / np.maximum(freq, 1e-4) ** rng.uniform(0.8, 1.3)
        img = np.empty((size, size, 3), np.float32)
        base = rng.uniform(0, 1, 3)
        for c in range(3):
            field = np.real(np.fft.ifft2(amp * np.exp(2j * np.pi * rng.random((size, size)))))
            img[..., c] = base[c] + 0.18 * (field - field.mean()) / (field.std() + 1e-6)
        for _ in range(int(rng.integers(2, 9))):
            colour = tuple(float(v) for v in rng.uniform(0, 1, 3))
            p = [int(v) for v in rng.integers(0, size, 4)]
            kind = int(rng.integers(0, 3))
            if kind == 0:
                cv2.circle(img, (p[0], p[1]), int(rng.integers(5, max(6, size // 3))), colour, -1)
            elif kind == 1:
                cv2.rectangle(img, (p[0], p[1]), (p[2], p[3]), colour, -1)
            else:
                cv2.line(img, (p[0], p[1]), (p[2], p[3]), colour, int(rng.integers(1, 8)))
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 2.0))
        img = img * rng.uniform(0.6, 1.3) + rng.normal(0, 0.02, img.shape)
        out[k] = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Appending the head to a backbone flatbuffer
# ----------------------------------------------------------------------------------------------------------------
def read_model(blob: bytes):
    fb = _schema()
    return fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(blob, 0))


def write_model(model) -> bytes:
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _opcode(model, builtin: int, version: int) -> int:
    fb = _schema()
    for i, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin and code.version == version:
            return i
    code = fb.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), version
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _quant(scale, zero_point, axis: int = 0):
    fb = _schema()
    q = fb.QuantizationParametersT()
    q.scale = np.atleast_1d(np.asarray(scale, np.float32))
    q.zeroPoint = np.atleast_1d(np.asarray(zero_point, np.int64))
    q.quantizedDimension = axis
    return q


class _Graph:
    """Appends tensors, constant buffers and operators to subgraph 0 of a ModelT."""

    def __init__(self, model):
        self.fb, self.model, self.g = _schema(), model, model.subgraphs[0]

    def tensor(self, name: str, shape, dtype: int, data: np.ndarray | None = None, quant=None) -> int:
        t = self.fb.TensorT()
        t.name, t.shape, t.type, t.quantization = name.encode(), np.asarray(shape, np.int32), dtype, quant
        t.buffer = 0  # buffer 0 is the empty sentinel: activations have no data
        if data is not None:
            buf = self.fb.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            self.model.buffers.append(buf)
            t.buffer = len(self.model.buffers) - 1
        self.g.tensors.append(t)
        return len(self.g.tensors) - 1

    def op(self, builtin: int, version: int, inputs: list[int], outputs: list[int], options_type: int = 0,
           options=None) -> None:
        op = self.fb.OperatorT()
        op.opcodeIndex = _opcode(self.model, builtin, version)
        op.inputs, op.outputs = np.asarray(inputs, np.int32), np.asarray(outputs, np.int32)
        op.builtinOptionsType, op.builtinOptions = options_type, options
        self.g.operators.append(op)

    def fully_connected(self, variant: str, x: int, w: int, b: int, out: int, asymmetric: bool = False) -> None:
        opts = self.fb.FullyConnectedOptionsT()
        opts.asymmetricQuantizeInputs = asymmetric
        self.op(self.fb.BuiltinOperator.FULLY_CONNECTED, _OP_VERSIONS[("fc", variant)], [x, w, b], [out],
                self.fb.BuiltinOptions.FullyConnectedOptions, opts)

    def softmax(self, variant: str, x: int, out: int) -> None:
        opts = self.fb.SoftmaxOptionsT()
        opts.beta = 1.0
        self.op(self.fb.BuiltinOperator.SOFTMAX, _OP_VERSIONS[("softmax", variant)], [x], [out],
                self.fb.BuiltinOptions.SoftmaxOptions, opts)


def _per_channel_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8 weights ([K, D]) and their scales, as the TFLite converter makes them."""
    scale = np.abs(w).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.round(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def compose(backbone_blob: bytes, head: Head, variant: str, logit_range: tuple[float, float] | None = None) -> bytes:
    """The backbone .tflite with the head appended: images in, probabilities out (temperature included).

    logit_range: the calibrated head's (min, max) logit on the training features; needed for int8 only.
    """
    fb = _schema()
    model = read_model(backbone_blob)
    g = _Graph(model)
    sub = g.g
    feat = int(sub.outputs[0])
    w, b = head.calibrated()
    w_t = np.ascontiguousarray(w.T)  # TFLite FULLY_CONNECTED weights are [out, in]
    k = head.n_classes
    if variant == "float32":
        wt = g.tensor("head/kernel", w_t.shape, fb.TensorType.FLOAT32, w_t)
        bt = g.tensor("head/bias", b.shape, fb.TensorType.FLOAT32, b)
        logits = g.tensor("head/logits", [1, k], fb.TensorType.FLOAT32)
        g.fully_connected(variant, feat, wt, bt, logits)
        out = g.tensor(OUTPUT_NAME, [1, k], fb.TensorType.FLOAT32)
        g.softmax(variant, logits, out)
    elif variant == "dynamic":
        q, scale = _per_channel_int8(w_t)
        wt = g.tensor("head/kernel", q.shape, fb.TensorType.INT8, q, _quant(scale, np.zeros(k), 0))
        bt = g.tensor("head/bias", b.shape, fb.TensorType.FLOAT32, b)
        logits = g.tensor("head/logits", [1, k], fb.TensorType.FLOAT32)
        g.fully_connected(variant, feat, wt, bt, logits, asymmetric=True)
        out = g.tensor(OUTPUT_NAME, [1, k], fb.TensorType.FLOAT32)
        g.softmax(variant, logits, out)
    elif variant == "int8":
        out = _append_int8_head(g, feat, w_t, b, logit_range)
    else:
        raise ValueError(f"Unknown TFLite variant '{variant}'")
    sub.outputs = np.asarray([out], np.int32)
    _rename_signature(model, out)
    return write_model(model)


def _append_int8_head(g: _Graph, feat: int, w_t: np.ndarray, b: np.ndarray,
                      logit_range: tuple[float, float] | None) -> int:
    fb, k = g.fb, w_t.shape[0]
    fq = g.g.tensors[feat].quantization
    if g.g.tensors[feat].type != fb.TensorType.INT8 or fq is None or fq.scale is None:
        raise ValueError("the int8 backbone must end in a quantized int8 feature tensor")
    if logit_range is None:
        raise ValueError("the int8 head needs the range of its logits on the training features")
    s_in = float(fq.scale[0])
    q, s_w = _per_channel_int8(w_t)
    bias_scale = (s_in * s_w).astype(np.float32)
    q_b = np.round(b / bias_scale).astype(np.int32)
    lo, hi = min(0.0, float(logit_range[0])), max(0.0, float(logit_range[1]))
    s_out = max(hi - lo, 1e-6) / 255.0
    z_out = int(np.clip(np.round(-128 - lo / s_out), -128, 127))
    wt = g.tensor("head/kernel", q.shape, fb.TensorType.INT8, q, _quant(s_w, np.zeros(k), 0))
    bt = g.tensor("head/bias", q_b.shape, fb.TensorType.INT32, q_b, _quant(bias_scale, np.zeros(k), 0))
    logits = g.tensor("head/logits", [1, k], fb.TensorType.INT8, quant=_quant(s_out, z_out))
    g.fully_connected("int8", feat, wt, bt, logits)
    probs = g.tensor("head/probabilities_int8", [1, k], fb.TensorType.INT8, quant=_quant(*SOFTMAX_INT8))
    g.softmax("int8", logits, probs)
    # uint8 out, as before and as TF's label_image and the seed server expect
    out = g.tensor(OUTPUT_NAME, [1, k], fb.TensorType.UINT8, quant=_quant(*OUTPUT_UINT8))
    g.op(fb.BuiltinOperator.QUANTIZE, _OP_VERSIONS[("quantize", "int8")], [probs], [out])
    return out


def _rename_signature(model, out: int) -> None:
    for sig in model.signatureDefs or []:
        for t in sig.inputs or []:
            t.name = INPUT_NAME.encode()
        sig.outputs = sig.outputs[:1]
        sig.outputs[0].tensorIndex, sig.outputs[0].name = out, OUTPUT_NAME.encode()


def logit_range(head: Head, features: np.ndarray, margin: float = 0.05) -> tuple[float, float]:
    """The calibrated head's logit range on these features, widened a little for images not seen here."""
    z = head.logits(features)
    lo, hi = float(z.min()), float(z.max())
    pad = margin * (hi - lo)
    return lo - pad, hi + pad


def compose_file(resolved: ResolvedBackbone, head: Head, variant: str, out_path: Path,
                 features: np.ndarray | None = None) -> Path:
    rng = logit_range(head, features) if variant == "int8" and features is not None else None
    blob = compose(backbone_tflite(resolved, variant).read_bytes(), head, variant, rng)
    atomic_write_bytes(out_path, blob)
    return out_path


# ----------------------------------------------------------------------------------------------------------------
# SavedModel from a cached template
# ----------------------------------------------------------------------------------------------------------------
def _template_dir(resolved: ResolvedBackbone, n_classes: int) -> Path:
    return (cache_root() / "composed" /
            f"{resolved.backbone_id}-{resolved.image_size}-k{n_classes}-savedmodel-v{COMPOSE_VERSION}")


def has_template(resolved: ResolvedBackbone, n_classes: int) -> bool:
    return (_template_dir(resolved, n_classes) / "template.json").exists()


def ensure_template(resolved: ResolvedBackbone, n_classes: int) -> Path:
    """A classifier SavedModel for this backbone and class count, traced once; its head tensors are found by value."""
    folder = _template_dir(resolved, n_classes)
    if (folder / "template.json").exists():
        return folder
    from engine.export import tfbundle
    from engine.export.artefacts import save_saved_model
    from engine.learn.classifier import build_classifier

    log.info("Tracing a %d-class SavedModel template for %s (once)", n_classes, resolved.handle)
    rng = np.random.default_rng(0)
    marker = Head(rng.normal(size=(resolved.feature_size or _feature_size(resolved), n_classes)),
                  rng.normal(size=n_classes))
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        save_saved_model(build_classifier(resolved, marker), tmp / "saved_model", resolved.image_size)
        prefix = tmp / "saved_model" / "variables" / "variables"
        keys = {}
        for key, entry in tfbundle.read_index(prefix.with_name("variables.index")).items():
            if entry.dtype != 1 or entry.size not in (marker.kernel.nbytes, marker.bias.nbytes):
                continue
            values = tfbundle.read_tensor(prefix, key)
            for name, ref in (("kernel", marker.kernel), ("bias", marker.bias)):
                if values.size == ref.size and np.array_equal(values, ref.ravel()):
                    keys[name] = key
        if set(keys) != {"kernel", "bias"}:
            raise RuntimeError("could not find the head's tensors in the SavedModel template")
        (tmp / "saved_model" / "fingerprint.pb").unlink(missing_ok=True)  # its checkpoint hash goes stale per run
        atomic_write_text(tmp / "template.json", json.dumps({**keys, "n_classes": n_classes}))
        try:
            tmp.rename(folder)
        except OSError:
            if not (folder / "template.json").exists():
                raise
            shutil.rmtree(tmp)  # another process made it first: identical
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _feature_size(resolved: ResolvedBackbone) -> int:
    from engine.features.embeddings import Embedder

    return Embedder(resolved, num_threads=1).feature_size


def saved_model_from_template(resolved: ResolvedBackbone, head: Head, out_dir: Path) -> Path:
    """Copy the template and write this head into it (temperature included); atomic, no TensorFlow."""
    from engine.export import tfbundle

    template = ensure_template(resolved, head.n_classes)
    keys = read_json(template / "template.json")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".saved_model.", dir=out_dir.parent))
    try:
        shutil.copytree(template / "saved_model", tmp, dirs_exist_ok=True)
        w, b = head.calibrated()
        tfbundle.overwrite_tensors(tmp / "variables" / "variables", {keys["kernel"]: w, keys["bias"]: b})
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
