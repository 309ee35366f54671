"""Exported classifiers composed from cached parts: the backbone converted once, the head appended per run.

Every run of a project exports the same backbone; only the head (a dense layer + softmax, a few thousand numbers)
changes. Converting the whole network with the TFLite converter costs ~15-30 s per variant, so instead:

* each TFLite variant of the backbone (float32, dynamic-range, full int8) is made once per backbone and image size
  and cached: float32 is the embedder's own model; the quantized ones are made from it without the converter
  (engine.export.quantize: ~0.2 s and ~4 s instead of ~11 s and ~18 s), the int8 one calibrated on a fixed set of
  generated images (measured: the top-1 agreement with float32 matches calibration on real photos, see
  bench/bench.py), so no user photo is needed;
* a run's classifier is that flatbuffer with FULLY_CONNECTED + SOFTMAX appended (quantized the way the converter
  quantizes them: int8 symmetric per-channel weights), written in a fraction of a second without TensorFlow;
* the SavedModel is a cached template whose head tensors are rewritten in place (engine.export.savedmodel).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from engine.config.backbones import ResolvedBackbone
from engine.core.cache import cache_root
from engine.core.fileio import atomic_write_bytes, made_once
from engine.core.litert import GraphBuilder
from engine.core.litert import schema as _schema
from engine.export import quantize
from engine.export.calibration import calibration_images
from engine.export.quantize import quant as _quant
from engine.export.quantize import read_model, write_model
from engine.export.savedmodel import INPUT_NAME, OUTPUT_NAME  # the TFLite files' signature uses the same names
from engine.export.tflite import configure
from engine.features.embeddings import Embedder
from engine.learn.head import Head

log = logging.getLogger(__name__)

COMPOSE_VERSION = "2"  # part of every cache key here: bump when the cached backbones change (2: no converter)
# (op, variant) -> operator version, as the TFLite converter (TF 2.21) writes them for the same ops. The dynamic head's
# FULLY_CONNECTED is version 9 (float in, int8 weights with ONE scale, inputs quantized asymmetrically), what the
# converter writes with _experimental_disable_per_channel_quantization_for_dense_layers: by default it quantizes per
# output channel, version 12, which only TFLite >= 2.17 runs (tflite-runtime 2.14, the Task Library 0.4.4 refuse it)
# and which the cached backbone's min_runtime_version (2.4.0) would not cover. Version 9 runs on TFLite >= 2.3.
_OP_VERSIONS = {("fc", "float32"): 1, ("fc", "dynamic"): 9, ("fc", "int8"): 4,
                ("softmax", "float32"): 1, ("softmax", "dynamic"): 1, ("softmax", "int8"): 2, ("quantize", "int8"): 1}
SOFTMAX_INT8 = (1.0 / 256.0, -128)  # TFLite requires this output quantization for an int8 SOFTMAX
OUTPUT_UINT8 = (1.0 / 256.0, 0)


# ----------------------------------------------------------------------------------------------------------------
# Cached backbone variants
# ----------------------------------------------------------------------------------------------------------------
def _backbone_cache(resolved: ResolvedBackbone, variant: str) -> Path:
    name = f"{resolved.backbone_id}-{resolved.image_size}-{variant}-v{COMPOSE_VERSION}.tflite"
    return cache_root() / "composed" / name


def backbone_tflite_cached(resolved: ResolvedBackbone, variant: str) -> bool:
    return variant == "float32" or _backbone_cache(resolved, variant).exists()


def backbone_tflite(resolved: ResolvedBackbone, variant: str) -> Path:
    """The backbone as a .tflite file for one variant (features out), made on first use and cached."""
    if variant == "float32":
        return Embedder.tflite_path(resolved)  # the embedder's own model: composed outputs equal the head's
    path = _backbone_cache(resolved, variant)
    with made_once(path) as to_make:
        if to_make:
            log.info("Quantizing the %s backbone to a %s TFLite model (once)", resolved.handle, variant)
            atomic_write_bytes(path, _quantize_backbone(resolved, variant))
    return path


def _quantize_backbone(resolved: ResolvedBackbone, variant: str) -> bytes:
    """The variant made from the float32 backbone by engine.export.quantize; the converter only for a network
    with operators that module does not quantize."""
    float32 = Embedder.tflite_path(resolved).read_bytes()
    try:
        if variant == "dynamic":
            return quantize.dynamic_range(float32)
        if variant == "int8":
            return quantize.full_int8(float32, calibration_images(resolved.image_size))
    except quantize.Unsupported as exc:
        log.info("%s; converting with TensorFlow instead", exc)
        return _convert_backbone(resolved, variant)
    raise ValueError(f"Unknown TFLite variant '{variant}'")


def _convert_backbone(resolved: ResolvedBackbone, variant: str) -> bytes:
    """The variant through the TFLite converter (~11-18 s): the fallback, and the reference the tests compare with."""
    if variant not in ("dynamic", "int8"):
        raise ValueError(f"Unknown TFLite variant '{variant}'")
    size = resolved.image_size
    from engine.core.tfcompat import tf  # why: only a backbone engine.export.quantize cannot take
    from engine.features import port  # why: as above

    converter = tf.lite.TFLiteConverter.from_keras_model(port.feature_model(resolved))
    # the head appended here consumes the int8 backbone's int8 features directly
    configure(converter, variant, calibration_images(size) if variant == "int8" else None, output_dtype="int8")
    return converter.convert()


# ----------------------------------------------------------------------------------------------------------------
# Appending the head to a backbone flatbuffer
# ----------------------------------------------------------------------------------------------------------------
class _Graph(GraphBuilder):
    """The head's operators, at the versions the converter writes for each variant."""

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
        q, scale = quantize.symmetric_int8(w_t, None)  # one scale: FULLY_CONNECTED version 9
        wt = g.tensor("head/kernel", q.shape, fb.TensorType.INT8, q, _quant(scale, 0))
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
    q, s_w = quantize.symmetric_int8(w_t, 0)
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
