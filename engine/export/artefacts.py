"""Export a trained classifier into a run (or any) folder: SavedModel, the TFLite variants, labels and the model card.

    <out_dir>/saved_model/          engine.export.savedmodel
    <out_dir>/model_<variant>.tflite  one per variant of engine.config.variants (float32, dynamic, int8), each with
                                    TFLite metadata (labels, input normalization: MediaPipe Tasks reads them)
    <out_dir>/model.onnx            the composed classifier for ONNX Runtime (composed exports)
    <out_dir>/labels.txt            line i = output i
    <out_dir>/model_card.json       engine.export.card, incl. each variant's agreement with the SavedModel

Two ways: export_composed (a head trained on cached features, composed onto the cached backbone: no TensorFlow
once the backbone's parts are cached) and export_model (any Keras model, e.g. a fine-tuned one, traced and
converted). The bundle is engine.export.bundle. Every file is written to a temporary name and renamed, so a crash
never leaves a truncated model that looks whole.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import runfiles as rf
from engine.config import variants as variant_table  # `variants` is the exporters' argument
from engine.config.backbones import BACKBONES, ResolvedBackbone
from engine.core.events import EventKind, ProgressCallback, Stage, emit
from engine.core.fileio import atomic_write_bytes, atomic_write_text, json_default
from engine.export import card as model_card
from engine.export import compose, onnx_model, savedmodel, tflite_metadata
from engine.export.calibration import CALIBRATION_IMAGES, CALIBRATION_SEED, calibration_images
from engine.export.savedmodel import INPUT_NAME, OUTPUT_NAME
from engine.export.tflite import convert_tflite, tflite_stats
from engine.learn.head import Head

log = logging.getLogger(__name__)


@dataclass
class ExportResult:
    out_dir: Path
    saved_model_dir: Path
    labels_path: Path
    card_path: Path
    tflite: dict[str, Path] = field(default_factory=dict)  # variant -> .tflite path
    onnx: dict[str, Any] = field(default_factory=dict)  # the card's onnx entry (a file, or why there is none)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # variant -> the card's tflite entry
    card: dict[str, Any] = field(default_factory=dict)


def _check_images(name: str, x: np.ndarray, image_size: int) -> None:
    if x.ndim != 4 or x.shape[1:] != (image_size, image_size, 3) or x.dtype != np.uint8:
        raise ValueError(f"{name} images must be uint8 of shape (n, {image_size}, {image_size}, 3); got "
                         f"{x.dtype} {x.shape}")


def _labels_text(labels: list[str]) -> str:
    """labels.txt: line i is output i (TF's label_image format)."""
    return "\n".join(labels) + "\n"


def _with_metadata(blob: bytes, variant: str, labels: list[str], image_size: int, facts: dict[str, Any]) -> bytes:
    """A .tflite file as MediaPipe Tasks and the TFLite Task Library load it: labels and input normalization in the
    file (engine.export.tflite_metadata, milliseconds)."""
    return tflite_metadata.add_metadata(blob, labels, **model_card.about(labels, facts), image_size=image_size,
                                        input_range=variant_table.get(variant).input_range)


def _export_onnx(resolved: ResolvedBackbone, head: Head, out: Path, progress: ProgressCallback | None) -> dict:
    """model.onnx composed like the .tflite files; a backbone the converter cannot take costs the ONNX file, with
    the reason in the card, never the run."""
    slow = resolved.handle not in BACKBONES and not onnx_model.backbone_onnx_cached(resolved)
    emit(progress, EventKind.STAGE, stage=Stage.EXPORT, message=f"Writing {rf.ONNX}" + (
        " (first ONNX export of this backbone: converting it once, ~20 s)" if slow else ""))
    try:
        path = onnx_model.compose_onnx(resolved, head, out / rf.ONNX)
    except Exception as exc:  # noqa: BLE001 - tf2onnx fails in many ways on models it does not support
        log.warning("No ONNX model for %s: %s", resolved.handle, exc)
        return {"file": None, "why_not": f"the backbone could not be converted to ONNX ({type(exc).__name__}: {exc})"}
    return {"file": rf.ONNX, "bytes": path.stat().st_size, "opset": onnx_model.OPSET,
            "input": f"{INPUT_NAME}: float32 [batch,{resolved.image_size},{resolved.image_size},3] RGB in [0,1]",
            "output": f"{OUTPUT_NAME}: float32 [batch,classes], calibrated"}


def _prepare_out(out_dir: str | Path, wanted, checks) -> tuple[Path, list[str], tuple | None]:
    names = [v.name for v in variant_table.in_order(wanted)]
    if checks is not None and not len(checks[0]):
        checks = None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out, names, checks


def _finish(result: ExportResult, facts: dict[str, Any], export: dict[str, Any], labels: list[str],
            image_size: int, center_crop: bool, reference_accuracy: float | None, t0: float) -> ExportResult:
    result.card = model_card.build(facts, labels=labels, image_size=image_size, center_crop=center_crop,
                                   stats=result.stats, reference_accuracy=reference_accuracy, export=export,
                                   onnx=result.onnx)
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
                    card: dict[str, Any], variants: tuple[str, ...] | list[str] = variant_table.NAMES,
                    progress: ProgressCallback | None = None) -> ExportResult:
    """Export a head trained on cached features by composing it onto the cached backbone (engine.export.compose).

    features: the training features (the int8 head's output range comes from them). checks: (uint8 images, labels,
    the head's probabilities for them) to measure each variant's agreement with the SavedModel, which computes
    exactly those probabilities. card: the caller's fields of the model card (engine.export.card.training_facts).
    TensorFlow is imported only the first time a backbone variant or a SavedModel template for this class count is
    built (and cached).
    """
    out, wanted, checks = _prepare_out(out_dir, variants, checks)
    t0 = time.perf_counter()
    labels_path = out / rf.LABELS
    atomic_write_text(labels_path, _labels_text(labels))
    result = ExportResult(out, out / rf.SAVED_MODEL, labels_path, out / rf.MODEL_CARD)
    for n, variant in enumerate(wanted, start=1):
        path = out / _file(variant)
        first = variant != "float32" and not compose.backbone_tflite_cached(resolved, variant)
        emit(progress, EventKind.STAGE, stage=Stage.EXPORT, message=f"Writing {path.name}" + (
            f" (first {variant} export of this backbone: quantizing it once, a few seconds)" if first else ""))
        blob = compose.compose(compose.backbone_tflite(resolved, variant).read_bytes(), head, variant,
                               compose.logit_range(head, features) if variant == "int8" and features is not None
                               else None)
        atomic_write_bytes(path, _with_metadata(blob, variant, labels, resolved.image_size, card))
        result.tflite[variant] = path
        emit(progress, EventKind.EXPORT, done=n, total=len(wanted) + 1, file=path.name)
    result.onnx = _export_onnx(resolved, head, out, progress)
    reference_top1 = reference_accuracy = None
    if checks is not None:
        reference_top1 = np.argmax(checks[2], axis=1)
        reference_accuracy = float(np.mean(reference_top1 == np.asarray(checks[1])))
    # One thread per variant: LiteRT releases the GIL while it runs, so the checks overlap (~2x on two cores).
    with ThreadPoolExecutor(max_workers=max(1, len(result.tflite))) as pool:
        futures = {v: pool.submit(tflite_stats, p, v, reference_top1, checks[:2] if checks else None, 1)
                   for v, p in result.tflite.items()}
        result.stats.update({v: f.result() for v, f in futures.items()})
    # Last: on a new machine its template may still be traced by the process the CLI started as the run began
    # (engine.runs.prepare.template_ahead)
    first = not savedmodel.has_template(resolved, head.n_classes)
    emit(progress, EventKind.STAGE, stage=Stage.EXPORT, message="Writing the SavedModel" + (
        " (first SavedModel of this backbone: its template is traced once, ~12 s)" if first else ""))
    savedmodel.saved_model_from_template(resolved, head, result.saved_model_dir)
    emit(progress, EventKind.EXPORT, done=len(wanted) + 1, total=len(wanted) + 1, file=rf.SAVED_MODEL)
    export = {"method": "composed: cached backbone .tflite + this run's head (engine.export.compose)",
              "int8_calibration": f"{CALIBRATION_IMAGES} generated images, seed {CALIBRATION_SEED} "
                                  "(engine.export.calibration.calibration_images)",
              "checked_on": "labelled images the shipped model was trained on" if checks else None}
    return _finish(result, card, export, labels, resolved.image_size, center_crop, reference_accuracy, t0)


def export_model(model, labels: list[str], out_dir: str | Path, *, image_size: int, center_crop: bool,
                 representative: np.ndarray | None = None, validation: tuple[np.ndarray, np.ndarray] | None,
                 card: dict[str, Any], variants: tuple[str, ...] | list[str] = variant_table.NAMES,
                 progress: ProgressCallback | None = None) -> ExportResult:
    """Export a whole Keras model (a fine-tuned backbone) by tracing and converting it: slow, but any model.

    representative: int8 calibration images (default: engine.export.calibration's generated set)."""
    if representative is None:
        representative = calibration_images(image_size)
    _check_images("Calibration", representative, image_size)
    if validation is not None:
        _check_images("Validation", validation[0], image_size)
    out, wanted, validation = _prepare_out(out_dir, variants, validation)
    t0 = time.perf_counter()
    emit(progress, EventKind.STAGE, stage=Stage.EXPORT, message="Saving the TensorFlow SavedModel")
    savedmodel.save_saved_model(model, out / rf.SAVED_MODEL, image_size)
    labels_path = out / rf.LABELS
    atomic_write_text(labels_path, _labels_text(labels))

    keras_top1 = keras_accuracy = None
    if validation is not None:
        keras_probs = model.predict(validation[0].astype(np.float32) / 255.0, batch_size=32, verbose=0)
        keras_top1 = np.argmax(keras_probs, axis=1)
        keras_accuracy = float(np.mean(keras_top1 == np.asarray(validation[1])))

    result = ExportResult(out, out / rf.SAVED_MODEL, labels_path, out / rf.MODEL_CARD)
    for variant in wanted:
        emit(progress, EventKind.STAGE, stage=Stage.EXPORT, message=f"Converting the {variant} TFLite model")
        path = out / _file(variant)
        blob = convert_tflite(out / rf.SAVED_MODEL, variant, representative)
        atomic_write_bytes(path, _with_metadata(blob, variant, labels, image_size, card))
        result.tflite[variant] = path
        result.stats[variant] = tflite_stats(path, variant, keras_top1, validation)
        log.info("%s: %d bytes, top-1 agreement with Keras %s", path.name, result.stats[variant]["bytes"],
                 result.stats[variant]["agreement_top1_vs_keras"])
    export = {"method": "converted: the whole Keras model through the TFLite converter"}
    result.onnx = {"file": None, "why_not": "a fine-tuned model: its backbone changed, so the cached ONNX backbone "
                                            "does not hold it (export its saved_model/ with tf2onnx)"}
    return _finish(result, card, export, labels, image_size, center_crop, keras_accuracy, t0)


def _file(variant: str) -> str:
    return variant_table.get(variant).file


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
