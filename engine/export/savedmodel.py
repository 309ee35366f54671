"""The exported TF SavedModel: traced and saved with TensorFlow (a fine-tuned model), or a cached template with this
run's head written into it (engine.export.tfbundle: no TensorFlow), and the folder as a zip for downloads.

    saved_model/   `serving_default`: images float32 [None,S,S,3] in [0,1] -> probabilities; also loads with
                   tf_keras (labels.txt and model_card.json in its assets/, written by engine.export.artefacts)
                   `serving_bytes`: image_bytes string [None], encoded JPEG/PNG/GIF/BMP (base64 over TF Serving's
                   REST API) -> probabilities: decodes, crops and resizes as training does (`prepare_encoded`)

The template is traced once per backbone and image size, for TEMPLATE_CLASSES classes, and cached beside the
backbones; its head tensors are found by value (a marker head). A run copies the folder, gives the head its own
class count (the one byte that holds it in each shape, in saved_model.pb, keras_metadata.pb and the checkpoint
index: nothing moves) and rewrites the two tensors: no TensorFlow, no trace per class count. More classes than
TEMPLATE_CLASSES get a template of their own, traced once.
"""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from engine.config import runfiles as rf
from engine.config.backbones import BACKBONES, ResolvedBackbone
from engine.config.training import CENTER_CROP_ASPECT
from engine.core.cache import cache_root
from engine.core.fileio import atomic_write_text, made_once, read_json
from engine.export import tfbundle
from engine.features.embeddings import Embedder
from engine.learn.head import Head

log = logging.getLogger(__name__)

TEMPLATE_VERSION = "4"  # part of the template cache key: bump when the cached templates change (4: Keras layers)
# The template's class count: the largest a one-byte varint holds, so any count up to it is written over that byte
# and every class count up to it fits in the template's head tensors. A prime no layer of a backbone has.
TEMPLATE_CLASSES = 127
# The count in keras_metadata.pb's JSON: a Dense layer's "units" and the last dimension of a shape; never any other
# number that happens to be 127 (an object id, "layer-127" in an object path)
_UNITS = re.compile(rb'(?<="units": )%d(?![\w.])|(?<=null, )%d(?=\])' % (TEMPLATE_CLASSES, TEMPLATE_CLASSES))
SIGNATURE, INPUT_NAME, OUTPUT_NAME = "serving_default", "images", "probabilities"
BYTES_SIGNATURE, BYTES_INPUT_NAME = "serving_bytes", "image_bytes"
# serving_bytes crops only where the model card in the SavedModel's assets/ says so. The exporter writes the card
# there after saving, and one template serves runs with and without the crop, so the signature reads the card (a
# SavedModel asset) on each call rather than a constant traced into it.
CARD_CROP_PATTERN = r'(?s).*"center_crop"\s*:\s*true.*'
PLACEHOLDER_CARD = '{"preprocessing": {"center_crop": false}}\n'  # until the exporter writes the real card


def _replace_dir(tmp: Path, final: Path) -> None:
    """Swap a finished temporary folder in; a folder cannot be os.replace'd over a non-empty one."""
    if final.exists():
        shutil.rmtree(final)
    tmp.replace(final)


def save_saved_model(model, path: Path, image_size: int, traces: bool = True) -> None:
    """tf_keras SavedModel (so keras.models.load_model works) with two signatures: `serving_default` (pixels) and
    `serving_bytes` (encoded images, preprocessed in the graph as training does). traces=False saves no traced
    function per layer (3x faster): only for models of Keras's own layers, which load_model rebuilds from config."""
    from engine.core.tfcompat import tf  # why: only a fine-tuned model or a new template is traced

    @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name=INPUT_NAME)])
    def serve(images):
        return {OUTPUT_NAME: model(images, training=False)}

    tmp = Path(tempfile.mkdtemp(prefix=".saved_model.", dir=path.parent))
    placeholder = Path(tempfile.mkdtemp(prefix=".saved_model_card.", dir=path.parent)) / rf.MODEL_CARD
    try:
        placeholder.write_text(PLACEHOLDER_CARD, encoding="utf-8")  # the save copies it into assets/
        # Tracked by the model, so the signature's reference to it is saved as an asset (found again on load).
        model.retrain_card = card = tf.saved_model.Asset(str(placeholder))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT_NAME)])
        def serve_bytes(image_bytes):
            crop = tf.strings.regex_full_match(tf.io.read_file(card.asset_path), CARD_CROP_PATTERN)
            images = tf.map_fn(lambda data: prepare_encoded(data, image_size, crop), image_bytes,
                               fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32))
            return {OUTPUT_NAME: model(images, training=False)}

        signatures = {SIGNATURE: serve, BYTES_SIGNATURE: serve_bytes}
        try:
            model.save(str(tmp), save_format="tf", include_optimizer=False, signatures=signatures,
                       save_traces=traces)
        except (TypeError, ValueError, NotImplementedError) as exc:
            # A layer Keras cannot serialize must not cost the user the model: the serving signature is what
            # TF Serving, TFLite and engine.inference.predict use; only keras.models.load_model is lost.
            log.warning("Keras could not save this model (%s); writing a plain TF SavedModel instead", exc)
            shutil.rmtree(tmp)
            tf.saved_model.save(model, str(tmp), signatures=signatures)
        _replace_dir(tmp, path)  # its assets (labels, card) are written by the exporter, for every way of exporting
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(placeholder.parent, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# serving_bytes: engine.data.images.prepare in TensorFlow ops
# ----------------------------------------------------------------------------------------------------------------
def prepare_encoded(data, size: int, center_crop):
    """One encoded image (a scalar string tensor) -> float32 [size,size,3] in [0,1], as training prepares it
    (engine.data.images.prepare): RGB (JPEG decoded as Pillow does, transparent PNG areas on white, a GIF's first
    frame), the centre crop where `center_crop` (a bool tensor) and the image is longer than 1.5:1, a plain stretch
    with training's OpenCV filters, rounded to whole grey levels, /255. Unlike training it does not apply the EXIF
    orientation (TensorFlow's decoders ignore it)."""
    from engine.core.tfcompat import tf  # why: traced into the SavedModel only

    is_png = tf.equal(tf.strings.substr(data, 0, 8), b"\x89PNG\r\n\x1a\n")
    img = tf.case([
        # libjpeg's accurate integer IDCT, as Pillow decodes (TensorFlow's default, the fast one, is up to 15
        # grey levels off)
        (tf.io.is_jpeg(data), lambda: tf.cast(tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
                                              tf.float32)),
        (is_png, lambda: _png_on_white(data)),
    ], default=lambda: tf.cast(tf.io.decode_image(data, channels=3, expand_animations=False), tf.float32))
    img.set_shape([None, None, 3])
    h, w = tf.shape(img)[0], tf.shape(img)[1]
    side = tf.minimum(h, w)
    elongated = tf.cast(tf.maximum(h, w), tf.float64) > CENTER_CROP_ASPECT * tf.cast(side, tf.float64)
    img = tf.cond(tf.logical_and(center_crop, elongated),
                  lambda: img[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side],
                  lambda: img)
    x = _resize_like_opencv(img, size)
    return tf.clip_by_value(tf.floor(x + 0.5), 0.0, 255.0) / 255.0


def _png_on_white(data):
    """A PNG as float32 RGB with its transparent areas composited on white, rounded as Pillow's alpha_composite."""
    from engine.core.tfcompat import tf  # why: traced into the SavedModel only

    rgba = tf.cast(tf.io.decode_png(data, channels=4), tf.float32)
    alpha = rgba[..., 3:] / 255.0
    return tf.floor(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha) + 0.5)


def _resize_like_opencv(img, size: int):
    """engine.data.images.resize_for_model: cv2 INTER_AREA when the image has more than size x size pixels (an exact
    area mean when both sides shrink, OpenCV's two-tap emulation when one grows), else INTER_LINEAR."""
    from engine.core.tfcompat import tf  # why: traced into the SavedModel only

    h, w = tf.shape(img)[0], tf.shape(img)[1]
    pixels = tf.cast(h, tf.int64) * tf.cast(w, tf.int64)
    return tf.case([
        (tf.logical_and(tf.equal(h, size), tf.equal(w, size)), lambda: img),
        (pixels <= size * size, lambda: tf.image.resize(img, [size, size], method="bilinear")),
        (tf.logical_and(h >= size, w >= size), lambda: tf.image.resize(img, [size, size], method="area")),
    ], default=lambda: tf.transpose(_area_grow_axis(tf.transpose(_area_grow_axis(img, size), [1, 0, 2]), size),
                                    [1, 0, 2]), exclusive=False)


def _area_grow_axis(a, n_out: int):
    """Axis 0 of an HxWx3 image resampled as cv2.resize's INTER_AREA does when a side grows (engine/bundle/predict.py
    `_resize_axis`, mode area_grow)."""
    from engine.core.tfcompat import tf  # why: traced into the SavedModel only

    n_in = tf.shape(a, out_type=tf.int64)[0]
    inv = n_out / tf.cast(n_in, tf.float64)
    d = tf.range(n_out, dtype=tf.float64)
    s = tf.floor(d * (1.0 / inv))
    f = tf.cast((d + 1.0) - (s + 1.0) * inv, tf.float32)
    f = tf.where(f <= 0, tf.zeros_like(f), f - tf.floor(f))
    edge = tf.logical_or(s < 0, s >= tf.cast(n_in - 1, tf.float64))
    f = tf.where(edge, tf.zeros_like(f), f)[:, None, None]
    s = tf.cast(s, tf.int64)
    s0, s1 = tf.clip_by_value(s, 0, n_in - 1), tf.clip_by_value(s + 1, 0, n_in - 1)
    return tf.gather(a, s0) * (1.0 - f) + tf.gather(a, s1) * f


def saved_model_zip(run_dir: str | Path) -> bytes:
    """The run's saved_model/ folder as a zip, built in memory when asked for: nothing is written into the run
    folder by its readers. Stored, not deflated: the weights do not compress and copying ~10 MB takes milliseconds."""
    folder = Path(run_dir) / rf.SAVED_MODEL
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, Path(rf.SAVED_MODEL) / f.relative_to(folder))
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------------
# The cached template
# ----------------------------------------------------------------------------------------------------------------
def _traced_classes(n_classes: int) -> int:
    return TEMPLATE_CLASSES if n_classes <= TEMPLATE_CLASSES else n_classes


def _template_dir(resolved: ResolvedBackbone, n_classes: int) -> Path:
    return (cache_root() / "composed" / f"{resolved.backbone_id}-{resolved.image_size}-"
            f"k{_traced_classes(n_classes)}-savedmodel-v{TEMPLATE_VERSION}")


def has_template(resolved: ResolvedBackbone, n_classes: int) -> bool:
    return (_template_dir(resolved, n_classes) / "template.json").exists()


def ensure_template(resolved: ResolvedBackbone, n_classes: int) -> Path:
    """The classifier SavedModel template that serves this class count, traced once; its head tensors are found by
    value."""
    folder = _template_dir(resolved, n_classes)
    with made_once(folder, folder / "template.json") as to_make:
        if to_make:
            traced = _traced_classes(n_classes)
            log.info("Tracing a %d-class SavedModel template for %s (once)", traced, resolved.handle)
            _trace_template(resolved, traced, folder)
    return folder


def _trace_template(resolved: ResolvedBackbone, n_classes: int, folder: Path) -> None:
    from engine.learn.classifier import build_classifier  # why: TensorFlow, once per backbone and class count

    rng = np.random.default_rng(0)
    marker = Head(rng.normal(size=(resolved.feature_size or _feature_size(resolved), n_classes)),
                  rng.normal(size=n_classes))
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        save_saved_model(build_classifier(resolved, marker), tmp / "saved_model", resolved.image_size,
                         traces=resolved.handle not in BACKBONES)  # a table backbone is Keras's own layers
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
        counts = _count_marks(tmp / "saved_model") if n_classes == TEMPLATE_CLASSES else {}
        atomic_write_text(tmp / "template.json", json.dumps({**keys, "n_classes": n_classes, "marks": counts}))
        try:
            tmp.rename(folder)
        except OSError:
            if not (folder / "template.json").exists():
                raise
            shutil.rmtree(tmp)  # made meanwhile where file locks are missing: identical
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _feature_size(resolved: ResolvedBackbone) -> int:
    return Embedder(resolved, num_threads=1).feature_size


def _dim(size: int) -> bytes:
    return tfbundle.ONE_BYTE_DIM + bytes([size])  # a shape's dimension of that size, as serialized


def _count_marks(folder: Path) -> dict[str, int]:
    """How often the template's class count is written in each file that holds it (checked again on each rewrite)."""
    return {"saved_model.pb": (folder / "saved_model.pb").read_bytes().count(_dim(TEMPLATE_CLASSES)),
            "keras_metadata.pb": len(_UNITS.findall((folder / "keras_metadata.pb").read_bytes()))}


def _set_class_count(folder: Path, keys: dict, n_classes: int) -> None:
    """The template's head resized to n_classes in place: each shape's one byte, each JSON number padded to its
    width, the checkpoint entries' shapes and sizes (engine.export.tfbundle.shrink_last_dim)."""
    if _count_marks(folder) != keys["marks"] or not all(keys["marks"].values()):
        raise RuntimeError(f"the SavedModel template in {folder} does not hold its class count where expected")
    pb = folder / "saved_model.pb"
    pb.write_bytes(pb.read_bytes().replace(_dim(TEMPLATE_CLASSES), _dim(n_classes)))
    meta = folder / "keras_metadata.pb"
    width = len(str(TEMPLATE_CLASSES))
    meta.write_bytes(_UNITS.sub(str(n_classes).ljust(width).encode(), meta.read_bytes()))  # JSON allows the spaces
    tfbundle.shrink_last_dim(folder / "variables" / "variables", [keys["kernel"], keys["bias"]], TEMPLATE_CLASSES,
                             n_classes)


def saved_model_from_template(resolved: ResolvedBackbone, head: Head, out_dir: Path) -> Path:
    """Copy the template and write this head into it (temperature included); atomic, no TensorFlow."""
    template = ensure_template(resolved, head.n_classes)
    keys = read_json(template / "template.json")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".saved_model.", dir=out_dir.parent))
    try:
        shutil.copytree(template / "saved_model", tmp, dirs_exist_ok=True)
        if head.n_classes != keys["n_classes"]:
            _set_class_count(tmp, keys, head.n_classes)
        w, b = head.calibrated()
        tfbundle.overwrite_tensors(tmp / "variables" / "variables", {keys["kernel"]: w, keys["bias"]: b})
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
