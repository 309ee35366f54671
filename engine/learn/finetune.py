"""Fine-tuning (opt-in): train through the backbone on images with augmentation, starting from the head, keeping the
epoch with the best validation loss; resumable from the run folder; its own temperature fitted afterwards.

This module imports TensorFlow: engine.learn.train imports it only when a run fine-tunes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.config.training import TrainConfig
from engine.core.events import EventKind, ProgressCallback, Stage, emit
from engine.core.tfcompat import keras, set_seed, tf
from engine.data.dataset import load_images
from engine.learn import augment, confidence, crossval
from engine.learn.classifier import build_classifier
from engine.learn.head import Head
from engine.learn.prepare import PreparedData
from engine.learn.strategy import strategy_scope

log = logging.getLogger(__name__)


@dataclass
class FineTuned:
    classifier: Any  # the fine-tuned keras classifier, temperature baked into its dense layer
    head: Head  # that dense layer, uncalibrated, with its temperature
    history: list[dict[str, Any]]  # one row per epoch (the "epoch" events)
    probs: np.ndarray  # calibrated probabilities of the validation images
    calibration: dict[str, Any]
    threshold: dict[str, Any]


def fine_tune_and_judge(data: PreparedData, head: Head, cfg: TrainConfig,
                        progress: ProgressCallback | None = None) -> FineTuned:
    """Fine-tune from the (uncalibrated) head on data.train_idx, validate on data.val_idx, fit the fine-tuned
    classifier's own temperature there and read the "unknown" threshold off the same images."""
    set_seed(cfg.seed)
    with strategy_scope(cfg.distribution_strategy):  # tf.distribute: build, compile and fit in its scope
        classifier = build_classifier(data.resolved, Head(head.kernel, head.bias), trainable=True,
                                      dropout_rate=cfg.dropout_rate, l1=cfg.l1_regularizer)
        emit(progress, EventKind.STAGE, stage=Stage.FINE_TUNE, message="Fine-tuning the backbone on images")
        history = fine_tune(classifier, data, cfg, progress)
    va, y = data.val_idx, data.dataset.y
    x_val = load_images([data.dataset.items[i].path for i in va], data.resolved.image_size, cfg.center_crop)
    raw = classifier.predict(x_val / 255.0, verbose=0)
    before = confidence.expected_calibration_error(raw, y[va])
    temperature = _calibrate_keras(classifier, raw, y[va]) if cfg.calibrate else 1.0
    probs = crossval.softmax(np.log(np.clip(raw, 1e-12, 1.0)) / temperature)
    w, b = classifier.get_layer("probabilities").get_weights()
    tuned = Head(w * temperature, b * temperature, temperature)  # the fine-tuned dense layer, uncalibrated
    calibration = {"temperature": temperature, "ece_before": before,
                   "ece_after": confidence.expected_calibration_error(probs, y[va]), "bins": confidence.ECE_BINS,
                   "measured_on": "the held-out fold (also used to fit the temperature)"}
    threshold = confidence.choose_threshold(probs, y[va], cfg.target_precision)
    return FineTuned(classifier, tuned, history, probs, calibration, threshold)


def make_optimizer(name: str, learning_rate: float, momentum: float):
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=momentum)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    raise ValueError(f"Unknown optimizer '{name}': use 'adam' or 'sgd'")


def fine_tune(classifier, data: PreparedData, cfg: TrainConfig, progress: ProgressCallback | None = None) -> list[dict]:
    set_seed(cfg.seed)
    size, items = data.resolved.image_size, data.dataset.items
    x_tr = load_images([items[i].path for i in data.train_idx], size, cfg.center_crop)
    x_val = load_images([items[i].path for i in data.val_idx], size, cfg.center_crop)
    y_all = data.dataset.y
    n = len(data.dataset.labels)
    aug = augment.layers(cfg)  # flips, rotation, shifts, shear, zoom: make_image_classifier's options
    trainer = keras.Sequential([keras.Input((size, size, 3)), *aug, classifier]) if aug else classifier
    trainer.compile(optimizer=make_optimizer(cfg.optimizer, cfg.fine_tune_learning_rate, cfg.momentum),
                    loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
                    metrics=["accuracy"])
    history: list[dict] = []
    t0 = time.perf_counter()
    val = (x_val / 255.0, tf.one_hot(y_all[data.val_idx], n)) if len(x_val) else None
    # On a few hundred images fine-tuning can as well hurt as help: keep the weights with the best validation
    # loss, counting the head-only starting point as epoch 0, so opting in never ends worse on validation.
    best = {"loss": trainer.evaluate(*val, verbose=0)[0] if val else np.inf, "weights": classifier.get_weights(),
            "epoch": 0}

    class _Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            row = {"phase": "fine_tune", "epoch": epoch + 1, "loss": logs.get("loss"),
                   "accuracy": logs.get("accuracy"), "val_loss": logs.get("val_loss"),
                   "val_accuracy": logs.get("val_accuracy"), "elapsed": time.perf_counter() - t0}
            history.append(row)
            emit(progress, EventKind.EPOCH, **row)
            if val is not None and row["val_loss"] is not None and row["val_loss"] < best["loss"]:
                best.update(loss=row["val_loss"], weights=classifier.get_weights(), epoch=epoch + 1)

    trainer.fit(x_tr / 255.0, tf.one_hot(y_all[data.train_idx], n), batch_size=min(cfg.batch_size, 16),
                epochs=cfg.fine_tune_epochs, validation_data=val, verbose=0,
                callbacks=[_Report(), *fit_callbacks(cfg.run_dir)],  # resumable from <run_dir> (issue 12)
                shuffle=True)
    if val is not None:
        classifier.set_weights(best["weights"])
        log.info("Fine-tuning: kept epoch %d (validation loss %.4f)", best["epoch"], best["loss"])
    return history


def _calibrate_keras(classifier, probs: np.ndarray, y: np.ndarray) -> float:
    """Temperature for a fine-tuned classifier from its held-out probabilities, baked into its dense layer."""
    logits = np.log(np.clip(probs, 1e-12, 1.0))  # log-probabilities: softmax-equivalent logits
    temperature = confidence.fit_temperature(logits, y)
    dense = classifier.get_layer("probabilities")
    w, b = dense.get_weights()
    dense.set_weights([w / temperature, b / temperature])
    return temperature


def fit_callbacks(run_dir: str | Path | None) -> list:
    """Resume an interrupted fine-tuning from its last epoch: keras' BackupAndRestore keeps a
    tf.train.CheckpointManager checkpoint in <run_dir>/fine_tune_checkpoint, restores it when the same run starts
    again, and deletes it once training completes.

    Not under multi_worker: every worker would have to restore the chief's checkpoint, but each has its own run
    folder, and workers resuming from different epochs would wait for each other forever.
    """
    if not run_dir:
        return []
    if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
        return []

    folder = Path(run_dir) / "fine_tune_checkpoint"

    class _Tidy(keras.callbacks.Callback):
        def on_train_end(self, logs=None):  # BackupAndRestore leaves the emptied folder of a finished run behind
            with contextlib.suppress(OSError):
                folder.rmdir()

    return [keras.callbacks.BackupAndRestore(str(folder)), _Tidy()]
