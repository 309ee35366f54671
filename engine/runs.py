"""A training run as a self-describing folder: config, event log, status, metrics, exported models and bundle.

    <run_dir>/config.json      the TrainConfig used
    <run_dir>/events.jsonl     progress events (engine.events), polled by the app
    <run_dir>/status.json      {"state": running|succeeded|failed|cancelled, "pid", "started", "finished", "message"}
    <run_dir>/metrics.json     per-class metrics, confusion matrix, per-image validation predictions, history
    <run_dir>/model_card.json, labels.txt, saved_model/, model_*.tflite   (engine.export)
    <run_dir>/bundle.zip       written last and atomically: if it exists, the run is complete and downloadable
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import TrainConfig
from engine.events import EventLog, ProgressCallback, emit, tee
from engine.fileio import atomic_write_json, read_json
from engine.train import (
    AccuracyError,
    TrainResult,
    check_accuracy,
    load_images,
    model_card,
    train,
)

log = logging.getLogger(__name__)

REPRESENTATIVE_IMAGES = 100  # int8 calibration set size, as the TFLite docs suggest


class Cancelled(Exception):
    """The job was asked to stop (SIGTERM from the app's cancel button, or Ctrl-C)."""


def default_run_dir(base: str | Path = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(base) / stamp
    n = 1
    while path.exists():
        n += 1
        path = Path(base) / f"{stamp}-{n}"
    return path


def write_status(run_dir: Path, state: str, message: str = "", **extra: Any) -> None:
    status_path = run_dir / "status.json"
    status = read_json(status_path)
    status.update(state=state, message=message, pid=os.getpid(), **extra)
    if state == "running":
        status.setdefault("started", time.time())
    else:
        status["finished"] = time.time()
    atomic_write_json(status_path, status)


def execute(cfg: TrainConfig, progress: ProgressCallback | None = None) -> TrainResult:
    """Run the whole job into cfg.run_dir; the status file always ends as succeeded, failed or cancelled."""
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir()
    cfg.run_dir = str(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("bundle.zip", "metrics.json"):  # a re-used folder must not offer an old result
        (run_dir / stale).unlink(missing_ok=True)
    cfg.save(run_dir / "config.json")
    progress = tee(progress, EventLog(run_dir / "events.jsonl"))
    write_status(run_dir, "running", "training")
    try:
        result = _execute(cfg, run_dir, progress)
    except Cancelled as exc:
        write_status(run_dir, "cancelled", str(exc) or "cancelled by the user")
        emit(progress, "error", message="cancelled")
        raise
    except BaseException as exc:
        message = str(exc) or type(exc).__name__
        write_status(run_dir, "failed", message)
        emit(progress, "error", message=message)
        raise
    write_status(run_dir, "succeeded", f"validation accuracy {result.val_accuracy}")
    emit(progress, "stage", stage="done", message=f"Run saved in {run_dir}")
    return result


def _execute(cfg: TrainConfig, run_dir: Path, progress: ProgressCallback) -> TrainResult:
    from engine.export import export_model, write_bundle, write_legacy_outputs

    result = train(cfg, progress)
    result.run_dir = run_dir
    metrics = {**result.metrics, "history": result.history, "timings": result.timings,
               "skipped": [{"path": s.path, "reason": s.reason} for s in result.data.dataset.skipped]}
    atomic_write_json(run_dir / "metrics.json", metrics)
    emit(progress, "result", val_accuracy=result.val_accuracy, metrics_file=str(run_dir / "metrics.json"))
    check_accuracy(result, cfg.assert_accuracy_at_least)
    emit(progress, "stage", stage="export", message="Exporting SavedModel and TFLite models")
    representative, validation = _export_images(result)
    result.export = export_model(
        result.model, result.labels, run_dir, image_size=result.data.resolved.image_size,
        center_crop=cfg.center_crop, representative=representative, validation=validation,
        card=model_card(result), variants=tuple(cfg.quantize), progress=progress,
    )
    write_bundle(run_dir, run_dir / "bundle.zip")
    write_legacy_outputs(result.export, saved_model_dir=cfg.saved_model_dir,
                         labels_output_file=cfg.labels_output_file, tflite_output_file=cfg.tflite_output_file)
    return result


def _export_images(result: TrainResult) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """Calibration images (training split) and validation images with labels, as uint8 at the model's size."""
    data, cfg = result.data, result.config
    items, size = data.dataset.items, data.resolved.image_size
    rng = np.random.default_rng(cfg.seed)
    rep_idx = rng.permutation(data.train_idx)[:REPRESENTATIVE_IMAGES]
    representative = load_images([items[i].path for i in rep_idx], size, cfg.center_crop)
    if not len(data.val_idx):
        return representative, None
    x_val = load_images([items[i].path for i in data.val_idx], size, cfg.center_crop)
    return representative, (x_val, data.dataset.y[data.val_idx])


__all__ = ["AccuracyError", "Cancelled", "default_run_dir", "execute", "write_status"]
