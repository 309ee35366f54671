"""Transfer learning: a classifier head on cached backbone features, optionally fine-tuned end to end.

The head is a multinomial logistic regression fitted to convergence on cached embeddings (engine/learn/crossval.py).
By default (validation_split 0) every labelled image is judged by k-fold cross-validation, the L2 strength is the
one with the lowest cross-validated log-loss, a temperature is fitted on the out-of-fold logits, an "unknown"
threshold is read off the out-of-fold predictions, and the shipped head is then fitted on all the images.
`validation_split > 0` is make_image_classifier's recipe instead: train on the rest, report on the held-out part.
`do_fine_tuning` then trains through the backbone on images with augmentation, starting from that head; its
validation uses one held-out fold.

Head-only training never imports TensorFlow: it is imported where a Keras model is built (fine-tuning, the
full classifier) and where features are computed.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.config.training import TrainConfig
from engine.core.events import EventKind, ProgressCallback, Stage, emit
from engine.features.embeddings import EmbeddingStore, preprocess_id
from engine.learn import confidence, crossval, warm_start
from engine.learn.evaluate import evaluate, fold_spread
from engine.learn.head import Head
from engine.learn.kept_groups import fold_groups_of
from engine.learn.prepare import PreparedData, prepare_data

log = logging.getLogger(__name__)


class AccuracyError(RuntimeError):
    """Validation accuracy below --assert_accuracy_at_least."""


@dataclass
class TrainResult:
    labels: list[str]
    config: TrainConfig
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    head: Head  # features -> calibrated probabilities (NumPy); exporters compose head.calibrated()
    data: PreparedData
    timings: dict[str, float] = field(default_factory=dict)
    run_dir: Path | None = None
    export: Any = None
    fine_tuned_model: Any = None  # keras model, only when fine-tuning ran (its backbone weights changed)
    groups: np.ndarray | None = None  # fold group per image (copies together), as cross-validation used them

    @property
    def model(self):
        """The full keras classifier ([0,1] RGB images in, calibrated probabilities out); built on first use, as
        loading the backbone takes seconds that a head-only retrain should not pay."""
        if self.fine_tuned_model is None:
            from engine.learn.classifier import build_classifier  # TensorFlow: only when the Keras model is asked for

            self.fine_tuned_model = build_classifier(self.data.resolved, self.head)
        return self.fine_tuned_model

    @property
    def val_accuracy(self) -> float | None:
        return self.metrics.get("val_accuracy")


@dataclass
class HeadFit:
    """A head fitted on features, with what cross-validation on those features said about it."""

    head: Head  # fitted on every row given, temperature set
    history: list[dict[str, Any]]  # one row per L2 grid point (the "epoch" events)
    oof: crossval.OutOfFold
    calibration: dict[str, Any]
    threshold: dict[str, Any]
    iterations: int = 0
    l2_kept: dict[str, Any] | None = None  # the last search's L2 was kept: {"changed": images since, "limit"}


# ----------------------------------------------------------------------------------------------------------------
# Head training on features
# ----------------------------------------------------------------------------------------------------------------
def sample_weights(y: np.ndarray, n_classes: int, mode: str) -> np.ndarray:
    if mode == "none":
        return np.ones(len(y), np.float32)
    if mode != "balanced":
        raise ValueError(f"class_weights must be 'none' or 'balanced', not '{mode}'")
    counts = np.bincount(y, minlength=n_classes).astype(np.float32)
    return (len(y) / (n_classes * np.maximum(counts, 1)))[y].astype(np.float32)


def fit_head(x: np.ndarray, y: np.ndarray, n_classes: int, cfg: TrainConfig, groups: np.ndarray | None = None,
             progress: ProgressCallback | None = None, previous: warm_start.PreviousFit | None = None,
             keys: np.ndarray | None = None) -> HeadFit:
    """Cross-validate on (x, y) to choose L2, temperature and threshold; then fit the head on all of (x, y).
    previous: where the L2 search, the folds and the final fit start (engine.learn.warm_start); keys: the rows'
    images (warm_start.image_keys), to find them there."""
    t0 = time.perf_counter()
    weights = None if cfg.class_weights == "none" else sample_weights(y, n_classes, cfg.class_weights)
    history: list[dict[str, Any]] = []

    def report(point: dict) -> None:
        # One "epoch" event per L2 grid point, strongest penalty first: the chart reads like a training curve
        # (training loss falls, validation loss bottoms out at the value that is kept).
        row = {"phase": "head", "epoch": point["step"], "loss": point["loss"], "accuracy": point["accuracy"],
               "val_loss": point["val_loss"], "val_accuracy": point["val_accuracy"],
               "elapsed": time.perf_counter() - t0, "l2": point["l2"]}
        history.append(row)
        emit(progress, EventKind.EPOCH, **row)

    # Few images changed since the last search: its L2 is kept, the folds are fitted at it alone (at the search's
    # tolerance, as the search would have) and the final head in the same passes over the rows.
    kept = previous.kept_l2(keys, y) if previous is not None and keys is not None else None
    warm = previous.warm_start(keys, cfg.cv_folds, bool(kept), cfg.train_epochs) if previous else None
    oof = crossval.out_of_fold(x, y, n_classes, groups=groups, n_folds=cfg.cv_folds, seed=cfg.seed,
                               l2=kept[0] if kept else cfg.l2_regularizer, sample_weight=weights,
                               on_grid_point=report, tol=crossval.SEARCH_TOL if kept else None, warm=warm)
    if oof.final is not None:
        kernel, bias, iterations = oof.final
    else:
        # Warm-started from the previous run's final head at the same L2, else from the mean fold head (fitted on
        # (k-1)/k of these rows at the same L2: on 24,227 photos 43-53 iterations instead of 81 from zero); the
        # same optimum, a shorter path to it.
        init = (previous.kernel, previous.bias) if previous is not None and previous.l2 == oof.l2 else oof.head_init
        kernel, bias, iterations = crossval.fit_logreg(x, y, n_classes, oof.l2, sample_weight=weights,
                                                       max_iter=cfg.train_epochs, init=init,
                                                       threads=os.cpu_count() or 1)
    # A class with a single distinct image is missing from the training side whenever that image is held out, so
    # its out-of-fold answers say nothing about the shipped head: no temperature or threshold from them.
    distinct = [len(np.unique(groups[y == c])) if groups is not None else int(np.sum(y == c))
                for c in np.unique(y)]
    usable = min(distinct) >= 2
    temperature = confidence.fit_temperature(oof.logits, y) if cfg.calibrate and usable else 1.0
    calibrated = crossval.softmax(oof.logits / temperature)
    calibration = {"temperature": temperature, "ece_before": confidence.expected_calibration_error(oof.probs, y),
                   "ece_after": confidence.expected_calibration_error(calibrated, y), "bins": confidence.ECE_BINS,
                   "measured_on": "out-of-fold predictions"}
    threshold = confidence.choose_threshold(calibrated, y, cfg.target_precision)
    if not usable:
        calibration["note"] = threshold["note"] = "a class has a single distinct image: not estimated"
        threshold.update(value=None, reached=False, precision=None, coverage=None, curve=[])
    log.info("Head: L2 %g, %d iterations, temperature %.3f, threshold %s (coverage %s) in %.2f s", oof.l2,
             iterations, temperature, threshold["value"], threshold["coverage"], time.perf_counter() - t0)
    l2_kept = {"changed": kept[1], "limit": int(warm_start.KEEP_L2_SHARE * len(y))} if kept else None
    return HeadFit(Head(kernel, bias, temperature), history, oof, calibration, threshold, iterations, l2_kept)


def train_head(x_tr: np.ndarray, y_tr: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, n_classes: int,
               cfg: TrainConfig, progress: ProgressCallback | None = None) -> tuple[Head, list[dict]]:
    """The head fitted on (x_tr, y_tr) and its history (x_val/y_val are not used for fitting: kept for callers
    of the earlier signature, which measured on them themselves)."""
    del x_val, y_val
    fit = fit_head(x_tr, y_tr, n_classes, cfg, progress=progress)
    return fit.head, fit.history


# ----------------------------------------------------------------------------------------------------------------
# The full classifier (Keras), fine-tuning
# ----------------------------------------------------------------------------------------------------------------
# ----------------------------------------------------------------------------------------------------------------
# The whole job
# ----------------------------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, progress: ProgressCallback | None = None, store: EmbeddingStore | None = None,
          data: PreparedData | None = None) -> TrainResult:
    """Scan, embed, train (and optionally fine-tune); no files written. See engine.runs.pipeline for the full job."""
    t0 = time.perf_counter()
    if cfg.set_memory_growth:  # before anything touches a GPU (embedding may)
        from engine.core.tfcompat import set_memory_growth  # TensorFlow: only when GPUs are asked for

        set_memory_growth()
    data = data or prepare_data(cfg, progress, store)
    t_embed = time.perf_counter()
    groups, grouping = fold_groups_of(data, cfg.cv_folds, preprocess_id(data.resolved.image_size, cfg.center_crop))
    evaluation = _choose_evaluation(data, cfg, groups)
    tr, n_classes = data.train_idx, len(data.dataset.labels)
    emit(progress, EventKind.STAGE, stage=Stage.TRAIN, message=f"Training a {n_classes}-class head"
         + (" with cross-validation" if evaluation.cross_validated else ""))
    # A large project's retrain starts where its last one ended (engine.learn.warm_start); small projects always
    # start from the grid, so their results do not depend on what ran before.
    key = warm_start.project_key(data.resolved.backbone_id, data.resolved.image_size, data.dataset.labels) \
        if len(tr) >= crossval.LARGE_N and cfg.l2_regularizer is None else None
    keys = warm_start.image_keys([data.dataset.items[i].sha256 for i in tr]) if key else None
    previous = warm_start.load(key) if key else None
    fit = fit_head(data.features[tr], data.dataset.y[tr], n_classes, cfg, groups[tr], progress, previous, keys)
    if key:
        warm_start.save(key, warm_start.with_folds(
            warm_start.PreviousFit(fit.oof.l2, fit.head.kernel, fit.head.bias), keys, fit.oof.fold,
            fit.oof.n_folds, fit.oof.fold_heads, data.dataset.y[tr], searched=previous if fit.l2_kept else None))
    t_head = time.perf_counter()
    if evaluation.cross_validated:
        judged = _judge_cross_validated(data, fit)
    elif cfg.do_fine_tuning:
        from engine.learn import finetune  # TensorFlow: only a fine-tuning run loads it

        tuned = finetune.fine_tune_and_judge(data, fit.head, cfg, progress)
        judged = _Judged(tuned.head, _evaluate_on(data, data.val_idx, tuned.probs), tuned.calibration,
                         tuned.threshold, fit.history + tuned.history, tuned.classifier)
    else:
        judged = _judge_held_out(data, fit)
    t_end = time.perf_counter()
    metrics = judged.metrics
    metrics.update(
        evaluation=judged.evaluation or evaluation.text, cross_validated=evaluation.cross_validated,
        n_evaluated=len(metrics["predictions"]), kept_together=grouping,
        l2=fit.oof.l2, l2_chosen=cfg.l2_regularizer is None, l2_rule=_l2_rule(fit), l2_kept=fit.l2_kept,
        l2_se=fit.oof.se,
        l2_search=[{k: r[k] for k in ("l2", "val_loss", "val_accuracy", "iterations")} for r in fit.oof.grid],
        head_iterations=fit.iterations, folds_from_last_run=fit.oof.warm_folds, calibration=judged.calibration,
        threshold=judged.threshold)
    timings = {"embed_s": t_embed - t0, "head_s": t_head - t_embed, "cv_s": fit.oof.seconds,
               "fine_tune_s": t_end - t_head if cfg.do_fine_tuning else 0.0, "total_s": t_end - t0,
               "embed_images_per_s": data.embed_images_per_s, "embedded_new": data.embedded_new}
    return TrainResult(data.dataset.labels, cfg, judged.history, metrics, judged.head, data, timings,
                       fine_tuned_model=judged.classifier, groups=groups)


def _l2_rule(fit: HeadFit) -> str:
    rule = "the strongest L2 whose cross-validated log-loss is within one standard error (l2_se) of the lowest"
    if fit.l2_kept is None:
        return rule
    return (f"kept from the last search ({rule}): {fit.l2_kept['changed']} image(s) added, removed or relabelled "
            f"since; searched again once more than {fit.l2_kept['limit']} have")


@dataclass
class _Evaluation:
    cross_validated: bool
    text: str


@dataclass
class _Judged:
    """The shipped head and what the chosen evaluation said of it."""

    head: Head
    metrics: dict[str, Any]
    calibration: dict[str, Any]
    threshold: dict[str, Any]
    history: list[dict[str, Any]]
    classifier: Any = None  # the fine-tuned keras model, when fine-tuning ran
    evaluation: str | None = None  # overrides _Evaluation.text once known (the folds actually used)


def _choose_evaluation(data: PreparedData, cfg: TrainConfig, groups: np.ndarray) -> _Evaluation:
    """Cross-validation on every image (validation_split 0), else the held-out split; fine-tuning cannot afford k
    trainings through the backbone, so it validates on one held-out fold (data's split is set to it)."""
    if len(data.val_idx):
        return _Evaluation(False, f"held-out validation ({cfg.validation_split:.0%} of each class)")
    if not cfg.do_fine_tuning:
        return _Evaluation(True, "cross-validation")
    fold, k = crossval.assign_folds(data.dataset.y, groups, cfg.cv_folds, cfg.seed)
    data.train_idx, data.val_idx = np.flatnonzero(fold != 0), np.flatnonzero(fold == 0)
    return _Evaluation(False, f"one held-out fold (1 of {k}; fine-tuning)")


def _evaluate_on(data: PreparedData, idx: np.ndarray, probs: np.ndarray, folds: np.ndarray | None = None) -> dict:
    items = data.dataset.items
    return evaluate(probs, data.dataset.y[idx], data.dataset.labels, [items[i].path for i in idx],
                    [items[i].sha256 for i in idx], folds)


def _judge_cross_validated(data: PreparedData, fit: HeadFit) -> _Judged:
    """Every image judged by a head that did not see it; the shipped head was fitted on all of them."""
    oof, tr = fit.oof, data.train_idx
    probs = crossval.softmax(oof.logits / fit.head.temperature)  # what the shipped (calibrated) model would say
    metrics = _evaluate_on(data, tr, probs, oof.fold)
    metrics.update(fold_spread(data.dataset.y[tr], probs.argmax(1), oof.fold))
    return _Judged(fit.head, metrics, dict(fit.calibration), dict(fit.threshold), list(fit.history),
                   evaluation=f"cross-validation ({oof.n_folds} folds)")


def _judge_held_out(data: PreparedData, fit: HeadFit) -> _Judged:
    """make_image_classifier's recipe: the head fitted on the rest, judged on the held-out images."""
    va, head = data.val_idx, fit.head
    y = data.dataset.y[va]
    probs = head.probabilities(data.features[va])
    raw = crossval.softmax(data.features[va] @ head.kernel + head.bias)
    # The temperature came from cross-validation inside the training part: this check is independent.
    calibration = dict(fit.calibration, ece_before=confidence.expected_calibration_error(raw, y),
                       ece_after=confidence.expected_calibration_error(probs, y),
                       measured_on="the held-out validation images")
    return _Judged(head, _evaluate_on(data, va, probs), calibration, dict(fit.threshold), list(fit.history))


def check_accuracy(result: TrainResult, threshold: float | None) -> None:
    if threshold is None:
        return
    acc = result.val_accuracy
    if acc is None:
        raise AccuracyError("--assert_accuracy_at_least needs cross-validation (--validation_split 0) or "
                            "validation images (--validation_split > 0)")
    if acc < threshold:
        what = result.metrics.get("evaluation", "validation")
        raise AccuracyError(f"Accuracy {acc:.3f} ({what}) is below --assert_accuracy_at_least {threshold:.3f}")
