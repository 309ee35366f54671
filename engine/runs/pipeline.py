"""A training run into its run folder (names: engine.config.runfiles; status: engine.runs.status): config, event
log, status, metrics, head, snapshot, exported models, and bundle.zip written last (if it exists, the run is
complete)."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from engine.config import runfiles as rf
from engine.config.training import TrainConfig
from engine.core.events import EventKind, EventLog, ProgressCallback, Stage, emit, tee
from engine.core.fileio import atomic_write_bytes, atomic_write_json
from engine.data.dataset import load_images, write_snapshot
from engine.export.artefacts import export_composed, export_model, write_legacy_outputs
from engine.export.bundle import write_bundle
from engine.export.card import training_facts
from engine.learn.backbone_comparison import backbone_comparison, comparable_backbones
from engine.learn.head import Head
from engine.learn.train import AccuracyError, TrainResult, check_accuracy, train
from engine.runs import status as run_status
from engine.runs.status import RunState

log = logging.getLogger(__name__)

CHECK_IMAGES = 32  # images run through every exported variant to measure agreement (~0.5 s in all)


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


def execute(cfg: TrainConfig, progress: ProgressCallback | None = None) -> TrainResult:
    """Run the whole job into cfg.run_dir; the status file always ends as succeeded, failed or cancelled."""
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir()
    cfg = dataclasses.replace(cfg, run_dir=str(run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in (rf.BUNDLE, rf.METRICS):  # a re-used folder must not offer an old result
        (run_dir / stale).unlink(missing_ok=True)
    cfg.save(run_dir / rf.CONFIG)
    progress = tee(progress, EventLog(run_dir / rf.EVENTS))
    run_status.write_status(run_dir, RunState.RUNNING, "training")
    try:
        result = _execute(cfg, run_dir, progress)
    except Cancelled as exc:
        run_status.write_status(run_dir, RunState.CANCELLED, str(exc) or run_status.CANCELLED_MESSAGE)
        emit(progress, EventKind.ERROR, message=RunState.CANCELLED.value)
        raise
    except BaseException as exc:
        message = str(exc) or type(exc).__name__
        run_status.write_status(run_dir, RunState.FAILED, message)
        emit(progress, EventKind.ERROR, message=message)
        raise
    run_status.write_status(run_dir, RunState.SUCCEEDED, f"validation accuracy {result.val_accuracy}")
    emit(progress, EventKind.STAGE, stage=Stage.DONE, message=f"Run saved in {run_dir}")
    return result


def _execute(cfg: TrainConfig, run_dir: Path, progress: ProgressCallback) -> TrainResult:
    result = train(cfg, progress)
    result.run_dir = run_dir
    write_snapshot(result.data.dataset, run_dir)  # what this run trained on: (sha256, label) of every image
    metrics = {**result.metrics, "history": result.history, "timings": result.timings,
               "skipped": [{"path": s.path, "reason": s.reason} for s in result.data.dataset.skipped]}
    atomic_write_json(run_dir / rf.METRICS, metrics)
    if cfg.summaries_dir:  # make_image_classifier's TensorBoard output (imports TensorFlow: only when asked)
        from engine.learn.summaries import write_summaries  # TensorFlow: only for --summaries_dir

        write_summaries(cfg.summaries_dir, result.history)
    write_head(run_dir / rf.HEAD, result.head)
    emit(progress, EventKind.RESULT, val_accuracy=result.val_accuracy, metrics_file=str(run_dir / rf.METRICS),
         l2=result.metrics.get("l2"))
    check_accuracy(result, cfg.assert_accuracy_at_least)
    emit(progress, EventKind.STAGE, stage=Stage.EXPORT, message="Exporting SavedModel and TFLite models")
    data, size = result.data, result.data.resolved.image_size
    idx, checks = _check_images(result)
    if result.fine_tuned_model is None:
        result.export = export_composed(
            result.head, data.resolved, result.labels, run_dir, center_crop=cfg.center_crop,
            features=data.features, checks=(*checks, result.head.probabilities(data.features[idx])) if checks else None,
            card=training_facts(result), variants=tuple(cfg.quantize), progress=progress)
    else:
        result.export = export_model(
            result.model, result.labels, run_dir, image_size=size, center_crop=cfg.center_crop,
            validation=checks, card=training_facts(result), variants=tuple(cfg.quantize), progress=progress)
    emit(progress, EventKind.STAGE, stage=Stage.EXPORT, message=f"Writing {rf.BUNDLE}")
    write_bundle(run_dir, run_dir / rf.BUNDLE)
    write_legacy_outputs(result.export, saved_model_dir=cfg.saved_model_dir,
                         labels_output_file=cfg.labels_output_file, tflite_output_file=cfg.tflite_output_file)
    _add_backbone_comparison(result, run_dir, metrics, progress)
    return result


def _add_backbone_comparison(result: TrainResult, run_dir: Path, metrics: dict, progress: ProgressCallback) -> None:
    """How the other cached backbone does on the same images: after the bundle, so nobody waits for a side report
    (a second cross-validation, ~1 s on 3,500 images); metrics.json gains it when it is ready."""
    t0 = time.perf_counter()
    names = comparable_backbones(result)
    if not names:
        return
    emit(progress, EventKind.STAGE, stage=Stage.COMPARE,
         message="Comparing backbones on these images (cached features)")
    rows = backbone_comparison(result, names)
    if rows:
        metrics["backbone_comparison"] = rows
        metrics["timings"] = {**metrics["timings"], "compare_s": time.perf_counter() - t0}
        result.metrics["backbone_comparison"] = rows
        atomic_write_json(run_dir / rf.METRICS, metrics)


def write_head(path: Path, head: Head) -> None:
    """The trained head (engine.learn.head's .npz): what Curate scores inbox images with."""
    atomic_write_bytes(path, head.to_bytes())


def _check_images(result: TrainResult) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """A few labelled images (held-out ones when there is a validation split) to measure each exported variant's
    agreement with the SavedModel. Images that moved or vanished since the scan are skipped, not fatal."""
    data, cfg = result.data, result.config
    items, size = data.dataset.items, data.resolved.image_size
    pool = data.val_idx if len(data.val_idx) else np.arange(len(items))
    order = np.random.default_rng(cfg.seed).permutation(pool)
    kept, pixels = [], []
    for i in order:
        if len(kept) >= CHECK_IMAGES:
            break
        try:
            pixels.append(load_images([items[i].path], size, cfg.center_crop)[0])
        except (OSError, ValueError) as exc:  # ImageError is a ValueError
            log.info("Not checking %s: %s", items[i].path, exc)
            continue
        kept.append(int(i))
    idx = np.asarray(kept, int)
    if not len(idx):
        return idx, None
    return idx, (np.stack(pixels), data.dataset.y[idx])


__all__ = ["AccuracyError", "Cancelled", "default_run_dir", "execute"]
