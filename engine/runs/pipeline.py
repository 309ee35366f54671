"""A training run into its run folder (names: engine.config.runfiles; status: engine.runs.status): config, event
log, status, metrics, head, snapshot, exported models, and bundle.zip written last (if it exists, the run is
complete)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from engine.config import runfiles as rf
from engine.config import variants
from engine.config.training import TrainConfig
from engine.core.events import EventKind, EventLog, ProgressCallback, Stage, emit, tee
from engine.core.fileio import TEMP_PREFIX, atomic_write_bytes, atomic_write_json, try_lock
from engine.data.dataset import load_images, write_snapshot
from engine.export.artefacts import export_composed, export_model, write_legacy_outputs
from engine.export.bundle import write_bundle
from engine.export.card import training_facts
from engine.learn.backbone_comparison import backbone_comparison, comparable_backbones
from engine.learn.head import Head
from engine.learn.train import AccuracyError, TrainResult, check_accuracy, train
from engine.runs import status as run_status
from engine.runs.status import RunState
from engine.store.errors import storage_error_message

log = logging.getLogger(__name__)

CHECK_IMAGES = 32  # images run through every exported variant to measure agreement (~0.5 s in all)


class Cancelled(Exception):
    """The job was asked to stop (SIGTERM from the app's cancel button, or Ctrl-C)."""


class RunError(RuntimeError):
    """The run failed for a reason outside the data and the options (a full disk, no permission to write); the
    message says what to do, as status.json and the CLI show it."""


DISK_FULL_WORDS = ("no space left on device", "disk is full", "database or disk is full")
MESSAGE_LIMIT = 600  # characters of an unexpected error kept in status.json: a message, not a dump


def failure_message(exc: BaseException) -> tuple[str, bool]:
    """(what status.json and the user read, whether it is about the machine rather than the data). A full disk
    is said so wherever in the chain it shows (TensorFlow wraps it in its own errors, shutil in a list)."""
    chain, seen = [], exc
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    for err in chain:
        known = storage_error_message("Training", err)
        if known:
            return known, True
    if any(w in str(err).lower() for err in chain for w in DISK_FULL_WORDS):
        return ("Training: the disk is full. Free some space and train again; the project's images and earlier "
                "runs are not affected.", True)
    text = str(exc) or type(exc).__name__
    return (text if len(text) <= MESSAGE_LIMIT else text[:MESSAGE_LIMIT] + " ..."), False


def default_run_dir(base: str | Path = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(base) / stamp
    n = 1
    while path.exists():
        n += 1
        path = Path(base) / f"{stamp}-{n}"
    return path


def execute(cfg: TrainConfig, progress: ProgressCallback | None = None) -> TrainResult:
    """Run the whole job into cfg.run_dir; the status file always ends as succeeded, failed or cancelled. One
    process at a time per run folder: a second one is refused before it touches anything there."""
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir()
    cfg = dataclasses.replace(cfg, run_dir=str(run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    with _run_folder_lock(run_dir):
        return _execute_locked(cfg, run_dir, progress)


@contextlib.contextmanager
def _run_folder_lock(run_dir: Path) -> Iterator[None]:
    with try_lock(run_dir / rf.LOCK) as mine:
        if not mine:
            raise RunError(f"Another training process is using the run folder {run_dir}; wait for it to finish "
                           "or train into another --run_dir.")
        yield


def _stop_when_asked(run_dir: Path) -> ProgressCallback:
    """Cancelling without a signal: the app's cancel marker is looked for at every event (each batch of features,
    epoch and stage), so a job stops even when its process cannot be signalled or proven to be the job."""
    marker = run_dir / rf.CANCEL

    def check(_event: dict) -> None:
        if marker.exists():
            raise Cancelled(run_status.CANCELLED_MESSAGE)

    return check


def _execute_locked(cfg: TrainConfig, run_dir: Path, progress: ProgressCallback | None) -> TrainResult:
    for stale in (rf.BUNDLE, rf.METRICS, rf.CANCEL):  # a re-used folder must not offer an old result or stop
        (run_dir / stale).unlink(missing_ok=True)
    cfg.save(run_dir / rf.CONFIG)
    progress = tee(progress, EventLog(run_dir / rf.EVENTS))
    run_status.write_status(run_dir, RunState.RUNNING, "training")
    try:
        result = _execute(cfg, run_dir, tee(progress, _stop_when_asked(run_dir)))
    except Cancelled as exc:
        run_status.write_status(run_dir, RunState.CANCELLED, str(exc) or run_status.CANCELLED_MESSAGE)
        emit(progress, EventKind.ERROR, message=RunState.CANCELLED.value)
        raise
    except BaseException as exc:
        message, machine = failure_message(exc)
        with contextlib.suppress(OSError):  # the disk may be too full even for this; readers then see it died
            _discard_unfinished_models(run_dir)
            run_status.write_status(run_dir, RunState.FAILED, message,
                                    **({"cause": run_status.MACHINE} if machine else {}))
            emit(progress, EventKind.ERROR, message=message)
        if machine and isinstance(exc, Exception):
            raise RunError(message) from exc
        raise
    # The status last: a reader that sees "succeeded" (jobs.wait, the app) finds the log and events complete too.
    # The line is news only: a closed console or a full disk must not fail a saved run.
    with contextlib.suppress(OSError):
        emit(progress, EventKind.STAGE, stage=Stage.DONE, message=f"Run saved in {run_dir}")
    run_status.write_status(run_dir, RunState.SUCCEEDED, f"validation accuracy {result.val_accuracy}")
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
         l2=result.metrics.get("l2"), l2_kept=result.metrics.get("l2_kept"))
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


def _discard_unfinished_models(run_dir: Path) -> None:
    """A failed run offers nothing to download: the model files it was writing (whole or half, and their
    temporary copies) go, so a full disk gets its space back; config, events, metrics and the log stay."""
    for name in (*variants.FILES, rf.BUNDLE):
        (run_dir / name).unlink(missing_ok=True)
    for path in run_dir.iterdir():
        if path.name.startswith((TEMP_PREFIX, ".saved_model.")) or path.name == rf.SAVED_MODEL:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


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


__all__ = ["AccuracyError", "Cancelled", "RunError", "default_run_dir", "execute", "failure_message"]
