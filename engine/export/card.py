"""The model card (model_card.json): everything needed to use an exported model, and how it was made; each fact once.

    format_version, created, engine_version
    labels, image_size, preprocessing, default_model    how to feed the model and read its answer
    threshold         {value, target_precision, precision, coverage, reached}: answers below `value` are "unknown"
    saved_model, tflite, onnx                             each exported file, and what it measured on check images
    backbone, config  the backbone (handle, id, image_size) and the TrainConfig used
    dataset_hash, class_counts, dataset {root, n_train, n_validation, skipped}
    metrics           the run's metrics.json without per-image predictions and without the threshold (above; its
                      curve stays in metrics.json): evaluation, n_evaluated, calibration (temperature...), l2...
    history_epochs, timings, export

Cards written before this builder repeat some facts: dataset.hash and dataset.class_counts beside dataset_hash and
class_counts, dataset.n_evaluated, top-level temperature, calibration and evaluation beside metrics', the threshold
in metrics too. Every place named above was in those cards as well, so readers of these cards read old ones.
"""

from __future__ import annotations

import datetime as _dt
import time
from typing import TYPE_CHECKING, Any

from engine import __version__
from engine.config import runfiles as rf
from engine.config import variants
from engine.config.backbones import BACKBONES
from engine.config.training import CENTER_CROP_RULE
from engine.export.savedmodel import BYTES_INPUT_NAME, BYTES_SIGNATURE, INPUT_NAME, OUTPUT_NAME, SIGNATURE

if TYPE_CHECKING:
    from engine.learn.train import TrainResult

FORMAT_VERSION = 1
AUTHOR = "Retrain Studio"
# A card from a caller that knows nothing of training still has these keys (null).
CALLER_KEYS = ("backbone", "config", "dataset_hash", "class_counts", "metrics")
THRESHOLD_KEYS = ("value", "target_precision", "precision", "coverage", "reached")
# engine.data.images.resize_for_model uses OpenCV; the standalone predict.py cannot, and Pillow's filters differ from
# OpenCV's (its BOX is not an exact area average), so predict.py re-implements the two OpenCV filters in NumPy.
TRAINING_RESAMPLING = "OpenCV INTER_AREA when the image has more than SxS pixels, else INTER_LINEAR"
BUNDLE_RESAMPLING = "the same two OpenCV filters re-implemented in NumPy (within 1 grey level of cv2.resize)"


def training_facts(result: TrainResult) -> dict[str, Any]:
    """What training knows about the model: the card's fields that the export does not write itself."""
    data, metrics = result.data, result.metrics
    threshold = metrics.get("threshold") or {}
    return {
        "backbone": {"handle": data.resolved.handle, "id": data.resolved.backbone_id,
                     "image_size": data.resolved.image_size},
        "config": result.config.to_dict(),
        "dataset_hash": data.dataset.dataset_hash(),
        "class_counts": data.dataset.class_counts(),
        "dataset": {"root": str(data.dataset.root), "n_train": int(len(data.train_idx)),
                    "n_validation": int(len(data.val_idx)), "skipped": len(data.dataset.skipped)},
        # Predictions below threshold.value are "unknown" (predict --threshold and the server follow it by default).
        # Probabilities of every exported variant are already calibrated: metrics.calibration.temperature is in
        # the weights.
        "threshold": {**dict.fromkeys(THRESHOLD_KEYS), **{k: v for k, v in threshold.items() if k != "curve"}},
        "metrics": {k: v for k, v in metrics.items() if k not in ("predictions", "threshold")},
        "history_epochs": len(result.history),
        "timings": result.timings,
    }


def build(facts: dict[str, Any], *, labels: list[str], image_size: int, center_crop: bool,
          stats: dict[str, dict[str, Any]], reference_accuracy: float | None,
          export: dict[str, Any], onnx: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole card: the caller's facts (training_facts, or any dict: kept) and what the export knows, which wins
    where both name a key."""
    default = next((variants.get(v).file for v in variants.NAMES if v in stats), rf.SAVED_MODEL)
    ours = {
        "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "engine_version": __version__,
        "labels": list(labels),
        "image_size": int(image_size),
        "preprocessing": {
            "input": "RGB", "range": "[0,1] float32 (uint8/255)", "resize": "plain stretch to SxS",
            "center_crop": bool(center_crop),
            "center_crop_rule": CENTER_CROP_RULE,
            "int8_input": "uint8 0-255",
            "decode": "EXIF orientation applied; alpha composited on white; greyscale/CMYK converted to RGB",
            "resampling_training": TRAINING_RESAMPLING,
            "resampling_bundle_predict": BUNDLE_RESAMPLING,
        },
        "saved_model": {"dir": rf.SAVED_MODEL, "signature": SIGNATURE, "input": INPUT_NAME, "output": OUTPUT_NAME,
                        "input_spec": f"float32 [None,{image_size},{image_size},3] RGB in [0,1]",
                        "bytes_signature": {"name": BYTES_SIGNATURE, "input": BYTES_INPUT_NAME,
                                            "input_spec": "string [None]: encoded JPEG/PNG/GIF/BMP, preprocessed "
                                                          "in the graph as training does (TF Serving: base64)"},
                        "keras_val_accuracy": reference_accuracy},
        "default_model": default,
        "tflite": stats,
        "onnx": onnx or {"file": None, "why_not": "not exported"},
        "export": export,
    }
    return {**dict.fromkeys(CALLER_KEYS), **facts, **ours}


def about(labels: list[str], facts: dict[str, Any]) -> dict[str, str]:
    """The model's name, description, version, author and licence, in the words every format's own metadata shows
    (TFLite metadata, Core ML in Xcode, TF.js's model.json). facts: the card, or the facts the card is built from."""
    handle = (facts.get("backbone") or {}).get("handle") or "custom backbone"
    spec = BACKBONES.get(handle)
    return {"name": f"Image classifier: {len(labels)} classes on {handle}",
            "description": f"Classes: {', '.join(labels)}. Trained with Retrain Studio; model_card.json tells how.",
            "version": f"{__version__} {time.strftime('%Y-%m-%d')}", "license": spec.license if spec else "",
            "author": AUTHOR}
