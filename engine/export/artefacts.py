"""Export a trained classifier: SavedModel, three TFLite variants, labels, a model card, and a standalone bundle.

    <out_dir>/saved_model/          tf.saved_model, `serving_default`: images float32 [None,S,S,3] in [0,1]
                                    -> probabilities; also loads with tf_keras (labels.txt in its assets/)
    <out_dir>/model_float32.tflite  float32 in [0,1], float32 probabilities
    <out_dir>/model_dynamic.tflite  dynamic-range quantized weights; same float input and output
    <out_dir>/model_int8.tflite     full integer: uint8 raw pixels 0-255 in, uint8 probabilities out
    <out_dir>/labels.txt            line i = output i
    <out_dir>/model_card.json       everything needed to use the model, incl. each variant's agreement with Keras

Every file is written to a temporary name and renamed, so a crash never leaves a truncated model that looks whole.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import logging
import os
import shutil
import string
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine import __version__
from engine.config import runfiles as rf
from engine.core.events import ProgressCallback, emit
from engine.core.fileio import atomic_path, atomic_write_bytes, atomic_write_text, json_default
from engine.learn.head import Head

if TYPE_CHECKING:
    from engine.features.backbones import ResolvedBackbone

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
VARIANTS = rf.VARIANTS  # file names and variants: engine.config.runfiles
# Every file of engine/inference/bundle/ ships in the bundle as it is (README.md is a string.Template filled from the model card):
# predict.py and serve.py, the Dockerfile, and requirements*.txt. The requirements are ranges, so that the bundle
# installs on the user's Python rather than only on ours: from the oldest versions that predict.py and serve.py were
# run with (tests/test_cli.py::test_the_bundle_works_with_the_lowest_versions_..., opt-in) to below the next major.
BUNDLE_SOURCES = Path(__file__).resolve().parents[1] / "inference" / "bundle"
BUNDLE_README = "README.md"
# engine.data.images.resize_for_model uses OpenCV; the standalone predict.py cannot, and Pillow's filters differ from
# OpenCV's (its BOX is not an exact area average), so predict.py re-implements the two OpenCV filters in NumPy.
TRAINING_RESAMPLING = "OpenCV INTER_AREA when the image has more than SxS pixels, else INTER_LINEAR"
BUNDLE_RESAMPLING = "the same two OpenCV filters re-implemented in NumPy (within 1 grey level of cv2.resize)"

VARIANT_DOCS = {
    "float32": {"input": "float32 RGB in [0,1] (uint8/255), shape [1,S,S,3]", "output": "float32 probabilities"},
    "dynamic": {"input": "float32 RGB in [0,1] (uint8/255), shape [1,S,S,3]", "output": "float32 probabilities",
                "note": "weights stored as int8 (about 4x smaller), computed in float"},
    "int8": {"input": "uint8 RGB 0-255: raw pixels, no scaling (input scale 1/255, zero point 0)",
             "output": "uint8; probability = (q - zero_point) * scale (scale 1/256, zero point 0)",
             "note": "full integer model for microcontrollers and Edge TPU"},
}


@dataclass
class ExportResult:
    out_dir: Path
    saved_model_dir: Path
    labels_path: Path
    card_path: Path
    tflite: dict[str, Path] = field(default_factory=dict)  # variant -> .tflite path
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # variant -> the card's tflite entry
    card: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------------------------------
def _replace_dir(tmp: Path, final: Path) -> None:
    """Swap a finished temporary folder in; a folder cannot be os.replace'd over a non-empty one."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


# ----------------------------------------------------------------------------------------------------------------
# SavedModel and TFLite
# ----------------------------------------------------------------------------------------------------------------
def save_saved_model(model, path: Path, image_size: int) -> None:
    """tf_keras SavedModel (so keras.models.load_model works) with an explicit `serving_default` signature."""
    from engine.core.tfcompat import tf

    @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="images")])
    def serve(images):
        return {"probabilities": model(images, training=False)}

    tmp = Path(tempfile.mkdtemp(prefix=".saved_model.", dir=path.parent))
    try:
        try:
            model.save(str(tmp), save_format="tf", include_optimizer=False, signatures={"serving_default": serve})
        except (TypeError, ValueError, NotImplementedError) as exc:
            # A layer Keras cannot serialize must not cost the user the model: the serving signature is what
            # TF Serving, TFLite and engine.inference.predict use; only keras.models.load_model is lost.
            log.warning("Keras could not save this model (%s); writing a plain TF SavedModel instead", exc)
            shutil.rmtree(tmp)
            tf.saved_model.save(model, str(tmp), signatures={"serving_default": serve})
        _replace_dir(tmp, path)  # its assets (labels, card) are written by _finish, for every way of exporting
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def convert_tflite(saved_model_dir: Path, variant: str, representative: np.ndarray | None = None) -> bytes:
    from engine.core.tfcompat import tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=["serving_default"])
    if variant == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant == "int8":
        if representative is None or not len(representative):
            raise ValueError("The int8 model needs calibration images (representative); none were given.")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        from engine.export.compose import _calibration_batches

        converter.representative_dataset = lambda: _calibration_batches(representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    elif variant != "float32":
        raise ValueError(f"Unknown TFLite variant '{variant}': use {', '.join(VARIANTS)}")
    return converter.convert()


def _tflite_stats(path: Path, variant: str, reference_top1: np.ndarray | None,
                  checks: tuple[np.ndarray, np.ndarray] | None, num_threads: int | None = None) -> dict[str, Any]:
    """Size, input/output types and, on the check images, top-1 agreement with the reference model (the SavedModel,
    i.e. the float head on the same backbone) and accuracy against the labels."""
    from engine.inference.predict import TFLiteModel

    runner = TFLiteModel(path, num_threads=num_threads)
    stats: dict[str, Any] = {"file": path.name, "bytes": path.stat().st_size, "input_dtype": runner.input_dtype,
                             "output_dtype": runner.output_dtype, **VARIANT_DOCS[variant],
                             "input_quantization": runner.input_quantization,
                             "output_quantization": runner.output_quantization,
                             "agreement_top1_vs_keras": None, "val_accuracy": None}
    if variant == "int8":
        scale, zero = runner.input_quantization
        if zero != 0 or abs(scale * 255.0 - 1.0) > 1e-4:
            log.warning("int8 input quantization is scale %g, zero point %d, not raw pixels; predict.py still "
                        "quantizes correctly, other runtimes must do the same", scale, zero)
            stats["input"] = f"uint8; q = round(pixel/255 / {scale:g} + {zero})"
    if checks is not None and reference_top1 is not None and len(reference_top1):
        x, y = checks
        top1 = np.array([int(np.argmax(runner.probabilities(img))) for img in x])
        stats["agreement_top1_vs_keras"] = float(np.mean(top1 == reference_top1))
        stats["val_accuracy"] = float(np.mean(top1 == np.asarray(y)))
        stats["n_validation"] = int(len(x))
    return stats


# ----------------------------------------------------------------------------------------------------------------
# The model card
# ----------------------------------------------------------------------------------------------------------------
def _card(card: dict[str, Any], labels: list[str], image_size: int, center_crop: bool,
          stats: dict[str, dict[str, Any]], keras_accuracy: float | None) -> dict[str, Any]:
    base = {"backbone": None, "config": None, "dataset_hash": None, "class_counts": None, "metrics": None}
    default = next((rf.tflite_name(v) for v in VARIANTS if v in stats), rf.SAVED_MODEL)
    ours = {
        "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "engine_version": __version__,
        "labels": list(labels),
        "image_size": int(image_size),
        "preprocessing": {
            "input": "RGB", "range": "[0,1] float32 (uint8/255)", "resize": "plain stretch to SxS",
            "center_crop": bool(center_crop),
            "center_crop_rule": "if the long side is more than 1.5x the short side, crop a centred square first",
            "int8_input": "uint8 0-255",
            "decode": "EXIF orientation applied; alpha composited on white; greyscale/CMYK converted to RGB",
            "resampling_training": TRAINING_RESAMPLING,
            "resampling_bundle_predict": BUNDLE_RESAMPLING,
        },
        "saved_model": {"dir": rf.SAVED_MODEL, "signature": "serving_default", "input": "images",
                        "output": "probabilities", "input_spec": f"float32 [None,{image_size},{image_size},3] "
                                                                 "RGB in [0,1]",
                        "keras_val_accuracy": keras_accuracy},
        "default_model": default,
        "tflite": stats,
    }
    return {**base, **card, **ours}


# ----------------------------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------------------------
def _check_images(name: str, x: np.ndarray, image_size: int) -> None:
    if x.ndim != 4 or x.shape[1:] != (image_size, image_size, 3) or x.dtype != np.uint8:
        raise ValueError(f"{name} images must be uint8 of shape (n, {image_size}, {image_size}, 3); got "
                         f"{x.dtype} {x.shape}")


def _labels_text(labels: list[str]) -> str:
    """labels.txt: line i is output i (TF's label_image format)."""
    return "\n".join(labels) + "\n"


def _prepare_out(out_dir: str | Path, variants, checks) -> tuple[Path, tuple | None]:
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"Unknown TFLite variant(s) {', '.join(unknown)}: use {', '.join(VARIANTS)}")
    if checks is not None and not len(checks[0]):
        checks = None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out, checks


def _finish(result: ExportResult, card: dict[str, Any], labels: list[str], image_size: int, center_crop: bool,
            reference_accuracy: float | None, t0: float) -> ExportResult:
    result.card = _card(card, labels, image_size, center_crop, result.stats, reference_accuracy)
    text = json.dumps(result.card, indent=2, default=json_default)
    atomic_write_text(result.card_path, text)
    assets = result.saved_model_dir / "assets"
    assets.mkdir(exist_ok=True)
    # A SavedModel copied elsewhere (--saved_model_dir) still knows its label order and how it was made.
    atomic_write_text(assets / rf.LABELS, _labels_text(labels))
    atomic_write_text(assets / rf.MODEL_CARD, text)
    log.info("Exported to %s in %.1f s", result.out_dir, time.perf_counter() - t0)
    return result


def export_composed(head: Head, resolved: ResolvedBackbone, labels: list[str], out_dir: str | Path, *,
                    center_crop: bool, features: np.ndarray,
                    checks: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
                    card: dict[str, Any], variants: tuple[str, ...] | list[str] = VARIANTS,
                    progress: ProgressCallback | None = None) -> ExportResult:
    """Export a head trained on cached features by composing it onto the cached backbone (engine.export.compose).

    features: the training features (the int8 head's output range comes from them). checks: (uint8 images, labels,
    the head's probabilities for them) to measure each variant's agreement with the SavedModel, which computes
    exactly those probabilities. TensorFlow is imported only the first time a
    backbone variant or a SavedModel template for this class count is built (and cached).
    """
    from engine.export import compose

    out, checks = _prepare_out(out_dir, variants, checks)
    t0 = time.perf_counter()
    labels_path = out / rf.LABELS
    atomic_write_text(labels_path, _labels_text(labels))
    result = ExportResult(out, out / rf.SAVED_MODEL, labels_path, out / rf.MODEL_CARD)
    wanted = [v for v in VARIANTS if v in variants]
    for n, variant in enumerate(wanted, start=1):
        path = out / rf.tflite_name(variant)
        first = variant != "float32" and not compose.backbone_tflite_cached(resolved, variant)
        emit(progress, "stage", stage="export", message=f"Writing {path.name}" + (
            f" (first {variant} export of this backbone: converting it once, ~30 s)" if first else ""))
        compose.compose_file(resolved, head, variant, path, features)
        result.tflite[variant] = path
        emit(progress, "export", done=n, total=len(wanted) + 1, file=path.name)
    first = not compose.has_template(resolved, head.n_classes)
    emit(progress, "stage", stage="export", message="Writing the SavedModel" + (
        f" (first {head.n_classes}-class model of this backbone: tracing it once, ~15 s)" if first else ""))
    compose.saved_model_from_template(resolved, head, result.saved_model_dir)
    emit(progress, "export", done=len(wanted) + 1, total=len(wanted) + 1, file=rf.SAVED_MODEL)
    reference_top1 = reference_accuracy = None
    if checks is not None:
        reference_top1 = np.argmax(checks[2], axis=1)
        reference_accuracy = float(np.mean(reference_top1 == np.asarray(checks[1])))
    # One thread per variant: LiteRT releases the GIL while it runs, so the checks overlap (~2x on two cores).
    with ThreadPoolExecutor(max_workers=max(1, len(result.tflite))) as pool:
        futures = {v: pool.submit(_tflite_stats, p, v, reference_top1, checks[:2] if checks else None, 1)
                   for v, p in result.tflite.items()}
        result.stats.update({v: f.result() for v, f in futures.items()})
    card = {**card, "export": {"method": "composed: cached backbone .tflite + this run's head (engine.export.compose)",
                               "int8_calibration": f"{compose.CALIBRATION_IMAGES} generated images, seed "
                                                   f"{compose.CALIBRATION_SEED} (engine.export.compose.calibration_images)",
                               "checked_on": "labelled images the shipped model was trained on" if checks else None}}
    return _finish(result, card, labels, resolved.image_size, center_crop, reference_accuracy, t0)


def export_model(model, labels: list[str], out_dir: str | Path, *, image_size: int, center_crop: bool,
                 representative: np.ndarray | None = None, validation: tuple[np.ndarray, np.ndarray] | None,
                 card: dict[str, Any], variants: tuple[str, ...] | list[str] = VARIANTS,
                 progress: ProgressCallback | None = None) -> ExportResult:
    """Export a whole Keras model (a fine-tuned backbone) by tracing and converting it: slow, but any model.

    representative: int8 calibration images (default: engine.export.compose's generated set)."""
    if representative is None:
        from engine.export.compose import calibration_images

        representative = calibration_images(image_size)
    _check_images("Calibration", representative, image_size)
    if validation is not None:
        _check_images("Validation", validation[0], image_size)
    out, validation = _prepare_out(out_dir, variants, validation)
    t0 = time.perf_counter()
    emit(progress, "stage", stage="export", message="Saving the TensorFlow SavedModel")
    save_saved_model(model, out / rf.SAVED_MODEL, image_size)
    labels_path = out / rf.LABELS
    atomic_write_text(labels_path, _labels_text(labels))

    keras_top1 = keras_accuracy = None
    if validation is not None:
        keras_probs = model.predict(validation[0].astype(np.float32) / 255.0, batch_size=32, verbose=0)
        keras_top1 = np.argmax(keras_probs, axis=1)
        keras_accuracy = float(np.mean(keras_top1 == np.asarray(validation[1])))

    result = ExportResult(out, out / rf.SAVED_MODEL, labels_path, out / rf.MODEL_CARD)
    for variant in VARIANTS:
        if variant not in variants:
            continue
        emit(progress, "stage", stage="export", message=f"Converting the {variant} TFLite model")
        path = out / rf.tflite_name(variant)
        atomic_write_bytes(path, convert_tflite(out / rf.SAVED_MODEL, variant, representative))
        result.tflite[variant] = path
        result.stats[variant] = _tflite_stats(path, variant, keras_top1, validation)
        log.info("%s: %d bytes, top-1 agreement with Keras %s", path.name, result.stats[variant]["bytes"],
                 result.stats[variant]["agreement_top1_vs_keras"])
    card = {**card, "export": {"method": "converted: the whole Keras model through the TFLite converter"}}
    return _finish(result, card, labels, image_size, center_crop, keras_accuracy, t0)


def bundle_readme(card: dict[str, Any]) -> str:
    """engine/inference/bundle/README.md filled in from the model card."""
    labels = card.get("labels") or []
    rows = "\n".join(
        f"| `{s['file']}` | {s['bytes'] / 1e6:.1f} MB | {s['input']} | {s['output']} | "
        f"{_pct(s.get('agreement_top1_vs_keras'))} | {_pct(s.get('val_accuracy'))} |"
        for s in (card.get("tflite") or {}).values())
    crop = ("yes: images more than 1.5x longer than wide (or wider than long) are cropped to a centred square "
            "first" if card.get("preprocessing", {}).get("center_crop") else "no")
    template = string.Template((BUNDLE_SOURCES / BUNDLE_README).read_text(encoding="utf-8"))
    return template.substitute(
        n_classes=len(labels), engine_version=card.get("engine_version", ""), created=card.get("created", ""),
        labels=", ".join(labels), rows=rows, size=card.get("image_size"), crop=crop,
        training_resampling=TRAINING_RESAMPLING, bundle_resampling=BUNDLE_RESAMPLING)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def _zip_file(zf: zipfile.ZipFile, path: Path, name: str) -> None:
    # Weights barely compress (~7%) and deflating 30 MB of them costs seconds per bundle: store them as they are.
    weights = path.suffix == ".tflite" or path.name.startswith("variables.data")
    zf.write(path, name, compress_type=zipfile.ZIP_STORED if weights else zipfile.ZIP_DEFLATED)


def _zip_text(zf: zipfile.ZipFile, name: str, text: str | bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=time.localtime()[:6])
    info.external_attr, info.compress_type = 0o644 << 16, zipfile.ZIP_DEFLATED  # writestr's default is 0600
    zf.writestr(info, text)


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


def bundle_sources() -> list[Path]:
    """The files of engine/inference/bundle/ that ship, by name: never a __pycache__ (or any folder) left by running them."""
    return sorted(p for p in BUNDLE_SOURCES.iterdir() if p.is_file() and not p.name.startswith("."))


def write_bundle(out_dir: str | Path, bundle_path: str | Path) -> Path:
    """Zip the exported files with engine/inference/bundle/'s (predict.py, serve.py, requirements, Dockerfile, README.md);
    atomically, so a bundle that exists is complete."""
    out, bundle = Path(out_dir), Path(bundle_path)
    card_path = out / rf.MODEL_CARD
    if not card_path.exists() or not (out / rf.LABELS).exists():
        raise FileNotFoundError(f"{out} has no exported model (model_card.json, labels.txt); export it first")
    card = json.loads(card_path.read_text(encoding="utf-8"))
    models = sorted(out / rf.tflite_name(v) for v in VARIANTS)
    files = [p for p in [card_path, out / rf.LABELS, *models] if p.exists()]
    bundle.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(bundle) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in files:
            _zip_file(zf, p, p.name)
        for p in sorted((out / rf.SAVED_MODEL).rglob("*")):
            if p.is_file():
                _zip_file(zf, p, p.relative_to(out).as_posix())
        for p in bundle_sources():
            _zip_text(zf, p.name, bundle_readme(card) if p.name == BUNDLE_README else p.read_bytes())
    log.info("Bundle written: %s (%.1f MB)", bundle, bundle.stat().st_size / 1e6)
    return bundle


def _copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(dst, src.read_bytes())


def write_legacy_outputs(export_result: ExportResult, saved_model_dir: str | None = None,
                         labels_output_file: str | None = None, tflite_output_file: str | None = None) -> dict:
    """Copy the SavedModel, labels and float32 .tflite to the make_image_classifier flag paths that were given."""
    written: dict[str, Path] = {}
    if saved_model_dir:
        # Copied into the folder, like tf.saved_model.save: files of the user's that are already there stay.
        dst = Path(saved_model_dir)
        shutil.copytree(export_result.saved_model_dir, dst, dirs_exist_ok=True)
        written["saved_model_dir"] = dst
    if labels_output_file:
        _copy_file(export_result.labels_path, Path(labels_output_file))
        written["labels_output_file"] = Path(labels_output_file)
    if tflite_output_file:
        src = export_result.tflite.get("float32")
        if src is None:
            raise ValueError("--tflite_output_file copies the float32 model, which was not exported; add float32 to "
                             "--quantize")
        _copy_file(src, Path(tflite_output_file))
        written["tflite_output_file"] = Path(tflite_output_file)
    return written
