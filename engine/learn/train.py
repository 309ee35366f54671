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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine import __version__
from engine.config.training import TrainConfig
from engine.core.events import ProgressCallback, emit
from engine.data.dataset import Dataset, ImageItem, Skipped, scan_image_dir, split_dataset, validate
from engine.learn import crossval
from engine.learn.classifier import build_classifier
from engine.learn.head import Head

if TYPE_CHECKING:
    from engine.features.backbones import ResolvedBackbone
    from engine.features.embeddings import EmbeddingStore

log = logging.getLogger(__name__)


class AccuracyError(RuntimeError):
    """Validation accuracy below --assert_accuracy_at_least."""


@dataclass
class PreparedData:
    dataset: Dataset
    resolved: ResolvedBackbone
    features: np.ndarray  # (n, D), row i belongs to dataset.items[i]
    train_idx: np.ndarray
    val_idx: np.ndarray
    embed_seconds: float = 0.0
    embed_images_per_s: float = 0.0
    embedded_new: int = 0
    store: EmbeddingStore | None = None  # where the features came from (other backbones' may be cached there)


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


# ----------------------------------------------------------------------------------------------------------------
# Data: scan, split, embed
# ----------------------------------------------------------------------------------------------------------------
def prepare_data(cfg: TrainConfig, progress: ProgressCallback | None = None,
                 store: EmbeddingStore | None = None) -> PreparedData:
    from engine.features.backbones import resolve
    from engine.features.embeddings import EmbeddingStore, backbone_ready, embed_files

    emit(progress, "stage", stage="scan", message=f"Scanning {cfg.image_dir}")
    # Images are fully decoded only when embedded: a cached sha256 is already known to be a good image.
    dataset = scan_image_dir(cfg.image_dir, check_images=False, progress=progress)
    for skip in dataset.skipped:
        emit(progress, "warning", message=f"Skipped {skip.path}: {skip.reason}", path=skip.path)
    if not backbone_ready(cfg.tfhub_module, cfg.image_size):
        emit(progress, "stage", stage="prepare", message=f"Preparing the {cfg.tfhub_module} backbone: converted "
                                                          "once on this machine, about 30 s")
    resolved = resolve(cfg.tfhub_module, cfg.image_size)
    emit(progress, "stage", stage="embed", message=f"Computing {resolved.handle} features")
    store = store or EmbeddingStore(Path(cfg.cache_dir) / "embeddings.sqlite" if cfg.cache_dir else None)
    res = embed_files([it.path for it in dataset.items], [it.sha256 for it in dataset.items], resolved,
                      center_crop=cfg.center_crop, store=store, progress=progress)
    for _, reason in res.failed:
        emit(progress, "warning", message=f"Skipped {reason}", path=None)
    dataset = _drop_unreadable(dataset, res.failed)
    train_idx, val_idx = split_dataset(dataset, cfg.validation_split, cfg.seed)
    return PreparedData(dataset, resolved, res.features, train_idx, val_idx, res.seconds, res.images_per_s,
                        res.computed, store)


def _drop_unreadable(ds: Dataset, failed: list[tuple[int, str]]) -> Dataset:
    if not failed:
        return ds
    bad = {i for i, _ in failed}
    items: list[ImageItem] = [it for i, it in enumerate(ds.items) if i not in bad]
    skipped = ds.skipped + [Skipped(ds.items[i].path, reason) for i, reason in failed]
    kept = Dataset(ds.root, ds.labels, items, skipped)
    validate(kept)  # a class may now be too small; its message counts the skipped files
    return kept


# Backbones compared in the cross-validated report when their features of every image are already cached
COMPARE_BACKBONES = ("efficientnet-lite0", "efficientnet-lite2")


def comparable_backbones(result: TrainResult) -> list[str]:
    """The other preset backbones this run could be compared with: installed and prepared on this machine, and the
    run cross-validated on every image (a held-out split or fine-tuning: nothing to compare)."""
    from engine.features.backbones import BACKBONES, cached_module_path

    data = result.data
    if data.store is None or not result.metrics.get("cross_validated") \
            or len(data.train_idx) != len(data.dataset.items):
        return []
    return [name for name in COMPARE_BACKBONES if name != data.resolved.handle and name in BACKBONES
            and BACKBONES[name].installed() and (cached_module_path(name) / "saved_model.pb").exists()]


def backbone_comparison(result: TrainResult, names: list[str]) -> list[dict[str, Any]]:
    """This run's backbone against those of `names` (comparable_backbones) whose features of every image are
    cached, by cross-validated accuracy and log-loss, best first; [] when none is or the comparison fails: it is a
    side report, never a reason to fail a run."""
    data, metrics = result.data, result.metrics
    try:
        others = compare_backbones(data, result.config, result.groups, names)
    except Exception as exc:  # noqa: BLE001 - see above
        log.warning("Backbone comparison skipped: %s", exc)
        return []
    if not others:
        return []
    own_loss = next((r["val_loss"] for r in metrics.get("l2_search") or [] if r["l2"] == metrics.get("l2")), None)
    own = {"backbone": data.resolved.handle, "accuracy": metrics["val_accuracy"], "log_loss": own_loss,
           "l2": metrics.get("l2")}
    return sorted([own, *others], key=lambda r: (r["log_loss"] is None, r["log_loss"]))


def compare_backbones(data: PreparedData, cfg: TrainConfig, groups: np.ndarray | None,
                      names: list[str]) -> list[dict[str, Any]]:
    """Cross-validated accuracy and log-loss of the named backbones whose features of all these images are in the
    cache already (nothing is computed for this): which backbone wins on the user's own data."""
    from engine.features.backbones import resolve
    from engine.features.embeddings import preprocess_id

    shas = [it.sha256 for it in data.dataset.items]
    y, n_classes = data.dataset.y, len(data.dataset.labels)
    rows = []
    for name in names:
        other = resolve(name)
        found = data.store.get_many(list(set(shas)), other.backbone_id,
                                    preprocess_id(other.image_size, cfg.center_crop))
        if len(found) < len(set(shas)):
            continue
        oof = crossval.out_of_fold(np.stack([found[s] for s in shas]), y, n_classes, groups, cfg.cv_folds, cfg.seed)
        rows.append({"backbone": name, "accuracy": float(np.mean(oof.probs.argmax(1) == y)),
                     "log_loss": crossval.log_loss(oof.logits, y), "l2": oof.l2})
    return rows


def duplicate_groups(data: PreparedData, n_folds: int = 5) -> tuple[np.ndarray, str]:
    """A group id per image (copies and near-copies share one, so they always land in the same fold), and how the
    groups were made."""
    items = data.dataset.items
    shas = [it.sha256 for it in items]
    try:
        from engine.curate.curate import image_hashes

        hashes = image_hashes([it.path for it in items], shas)  # cached by SHA-256: a retrain reads, not decodes
    except Exception as exc:  # noqa: BLE001 - grouping without hashes is still correct, only less thorough
        log.warning("Perceptual hashes unavailable (%s); grouping copies by embedding only", exc)
        hashes = None
    return crossval.fold_groups(data.features, shas, n_folds, hashes=hashes)


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
             progress: ProgressCallback | None = None) -> HeadFit:
    """Cross-validate on (x, y) to choose L2, temperature and threshold; then fit the head on all of (x, y)."""
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
        emit(progress, "epoch", **row)

    oof = crossval.out_of_fold(x, y, n_classes, groups=groups, n_folds=cfg.cv_folds, seed=cfg.seed,
                               l2=cfg.l2_regularizer, sample_weight=weights, on_grid_point=report)
    kernel, bias, iterations = crossval.fit_logreg(x, y, n_classes, oof.l2, sample_weight=weights,
                                                   max_iter=cfg.train_epochs)
    # A class with a single distinct image is missing from the training side whenever that image is held out, so
    # its out-of-fold answers say nothing about the shipped head: no temperature or threshold from them.
    distinct = [len(np.unique(groups[y == c])) if groups is not None else int(np.sum(y == c))
                for c in np.unique(y)]
    usable = min(distinct) >= 2
    temperature = crossval.fit_temperature(oof.logits, y) if cfg.calibrate and usable else 1.0
    calibrated = crossval.softmax(oof.logits / temperature)
    calibration = {"temperature": temperature, "ece_before": crossval.expected_calibration_error(oof.probs, y),
                   "ece_after": crossval.expected_calibration_error(calibrated, y), "bins": crossval.ECE_BINS,
                   "measured_on": "out-of-fold predictions"}
    threshold = crossval.choose_threshold(calibrated, y, cfg.target_precision)
    if not usable:
        calibration["note"] = threshold["note"] = "a class has a single distinct image: not estimated"
        threshold.update(value=None, reached=False, precision=None, coverage=None, curve=[])
    log.info("Head: L2 %g, %d iterations, temperature %.3f, threshold %s (coverage %s) in %.2f s", oof.l2,
             iterations, temperature, threshold["value"], threshold["coverage"], time.perf_counter() - t0)
    return HeadFit(Head(kernel, bias, temperature), history, oof, calibration, threshold, iterations)


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
def load_images(paths: list[str], size: int, center_crop: bool) -> np.ndarray:
    from engine.data.dataset import prepare_image  # images may move while a run trains: read them by content

    if not paths:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([prepare_image(p, size, center_crop) for p in paths])


def make_optimizer(name: str, learning_rate: float, momentum: float):
    from engine.core.tfcompat import keras

    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=momentum)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    raise ValueError(f"Unknown optimizer '{name}': use 'adam' or 'sgd'")


def fine_tune(classifier, data: PreparedData, cfg: TrainConfig, progress: ProgressCallback | None = None) -> list[dict]:
    from engine.core.tfcompat import keras, set_seed, tf
    from engine.features.distributed import fit_callbacks

    set_seed(cfg.seed)
    size, items = data.resolved.image_size, data.dataset.items
    x_tr = load_images([items[i].path for i in data.train_idx], size, cfg.center_crop)
    x_val = load_images([items[i].path for i in data.val_idx], size, cfg.center_crop)
    y_all = data.dataset.y
    n = len(data.dataset.labels)
    aug = _augmentation(cfg)
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
            emit(progress, "epoch", **row)
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


def _augmentation(cfg: TrainConfig) -> list:
    from engine.learn import augment  # flips, rotation, shifts, shear, zoom: make_image_classifier's options

    return augment.layers(cfg)


def _calibrate_keras(classifier, probs: np.ndarray, y: np.ndarray) -> float:
    """Temperature for a fine-tuned classifier from its held-out probabilities, baked into its dense layer."""
    logits = np.log(np.clip(probs, 1e-12, 1.0))  # log-probabilities: softmax-equivalent logits
    temperature = crossval.fit_temperature(logits, y)
    dense = classifier.get_layer("probabilities")
    w, b = dense.get_weights()
    dense.set_weights([w / temperature, b / temperature])
    return temperature


# ----------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------
def evaluate(probs: np.ndarray, y_true: np.ndarray, labels: list[str], paths: list[str],
             shas: list[str] | None = None, folds: np.ndarray | None = None) -> dict[str, Any]:
    """Accuracy, per-class report, confusion matrix and one prediction per image (sha256 is its key; path is for
    display; fold is the cross-validation fold that held it out, None on a plain validation split)."""
    if len(y_true) == 0:
        return {"labels": labels, "val_accuracy": None, "per_class": {}, "confusion_matrix": [], "predictions": []}
    pred = probs.argmax(1)
    # scikit-learn's definitions (zero_division=0), without importing it (seconds on a cold start)
    cm = np.zeros((len(labels), len(labels)), np.int64)
    np.add.at(cm, (np.asarray(y_true), pred), 1)
    tp, s, predicted = np.diag(cm).astype(float), cm.sum(axis=1), cm.sum(axis=0)
    p = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    r = np.divide(tp, s, out=np.zeros_like(tp), where=s > 0)
    f = np.divide(2 * p * r, p + r, out=np.zeros_like(tp), where=(p + r) > 0)
    per_class = {lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                 for i, lab in enumerate(labels)}
    shas = shas if shas is not None else [None] * len(y_true)
    folds_list = folds.tolist() if folds is not None else [None] * len(y_true)
    predictions = [{"path": path, "sha256": sha, "fold": fold, "true": labels[t], "predicted": labels[k],
                    "probability": float(pr[k]), "probs": [round(float(v), 6) for v in pr]}
                   for path, sha, fold, t, k, pr in zip(paths, shas, folds_list, y_true, pred, probs, strict=True)]
    return {"labels": labels, "val_accuracy": float(np.mean(pred == y_true)), "per_class": per_class,
            "confusion_matrix": cm.tolist(), "predictions": predictions}


def fold_spread(y_true: np.ndarray, pred: np.ndarray, folds: np.ndarray) -> dict[str, Any]:
    per_fold = [{"fold": int(f), "n": int((folds == f).sum()), "accuracy": float(np.mean(pred[folds == f]
                                                                                        == y_true[folds == f]))}
                for f in np.unique(folds)]
    accs = np.array([r["accuracy"] for r in per_fold])
    return {"folds": per_fold, "accuracy_std": float(accs.std(ddof=1)) if len(accs) > 1 else 0.0,
            "accuracy_min": float(accs.min()), "accuracy_max": float(accs.max())}


# ----------------------------------------------------------------------------------------------------------------
# The whole job
# ----------------------------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, progress: ProgressCallback | None = None, store: EmbeddingStore | None = None,
          data: PreparedData | None = None) -> TrainResult:
    """Scan, embed, train (and optionally fine-tune); no files written. See engine.runs.pipeline for the full job."""
    t0 = time.perf_counter()
    if cfg.set_memory_growth:  # before anything touches a GPU (embedding may)
        from engine.core.tfcompat import set_memory_growth

        set_memory_growth()
    data = data or prepare_data(cfg, progress, store)
    t_embed = time.perf_counter()
    y, labels, items = data.dataset.y, data.dataset.labels, data.dataset.items
    n_classes = len(labels)
    groups, grouping = duplicate_groups(data, cfg.cv_folds)
    cross_validated = len(data.val_idx) == 0
    evaluation = f"held-out validation ({cfg.validation_split:.0%} of each class)"
    if cfg.do_fine_tuning and cross_validated:
        # Fine-tuning cannot afford k trainings through the backbone: it validates on one held-out fold.
        fold, k = crossval.assign_folds(y, groups, cfg.cv_folds, cfg.seed)
        data.train_idx, data.val_idx = np.flatnonzero(fold != 0), np.flatnonzero(fold == 0)
        cross_validated = False
        evaluation = f"one held-out fold (1 of {k}; fine-tuning)"
    tr, va = data.train_idx, data.val_idx
    emit(progress, "stage", stage="train", message=f"Training a {n_classes}-class head"
         + (" with cross-validation" if cross_validated else ""))
    fit = fit_head(data.features[tr], y[tr], n_classes, cfg, groups[tr], progress)
    head, history = fit.head, list(fit.history)
    t_head = time.perf_counter()
    calibration, threshold = dict(fit.calibration), dict(fit.threshold)
    classifier = None
    if cross_validated:
        oof = fit.oof
        probs = crossval.softmax(oof.logits / head.temperature)  # what the shipped (calibrated) model would say
        metrics = evaluate(probs, y[tr], labels, [items[i].path for i in tr], [items[i].sha256 for i in tr],
                           oof.fold)
        metrics.update(fold_spread(y[tr], probs.argmax(1), oof.fold))
        evaluation = f"cross-validation ({oof.n_folds} folds)"
    else:
        paths, shas = [items[i].path for i in va], [items[i].sha256 for i in va]
        if cfg.do_fine_tuning:
            from engine.core.tfcompat import set_seed

            set_seed(cfg.seed)
            # Fine-tuning starts from the uncalibrated head; its own temperature is fitted afterwards.
            from engine.features.distributed import strategy_scope

            with strategy_scope(cfg.distribution_strategy):  # tf.distribute: build, compile and fit in its scope
                classifier = build_classifier(data.resolved, Head(head.kernel, head.bias), trainable=True,
                                              dropout_rate=cfg.dropout_rate, l1=cfg.l1_regularizer)
                emit(progress, "stage", stage="fine_tune", message="Fine-tuning the backbone on images")
                history += fine_tune(classifier, data, cfg, progress)
            x_val = load_images(paths, data.resolved.image_size, cfg.center_crop)
            raw = classifier.predict(x_val / 255.0, verbose=0)
            before = crossval.expected_calibration_error(raw, y[va])
            temperature = _calibrate_keras(classifier, raw, y[va]) if cfg.calibrate else 1.0
            probs = crossval.softmax(np.log(np.clip(raw, 1e-12, 1.0)) / temperature)
            w, b = classifier.get_layer("probabilities").get_weights()
            head = Head(w * temperature, b * temperature, temperature)  # the fine-tuned dense layer, uncalibrated
            calibration = {"temperature": temperature, "ece_before": before,
                           "ece_after": crossval.expected_calibration_error(probs, y[va]), "bins": crossval.ECE_BINS,
                           "measured_on": "the held-out fold (also used to fit the temperature)"}
            threshold = crossval.choose_threshold(probs, y[va], cfg.target_precision)
        else:
            probs = head.probabilities(data.features[va])
            raw = crossval.softmax(data.features[va] @ head.kernel + head.bias)
            # The temperature came from cross-validation inside the training part: this check is independent.
            calibration.update(ece_before=crossval.expected_calibration_error(raw, y[va]),
                               ece_after=crossval.expected_calibration_error(probs, y[va]),
                               measured_on="the held-out validation images")
        metrics = evaluate(probs, y[va], labels, paths, shas)
    t_end = time.perf_counter()
    metrics.update(
        evaluation=evaluation, cross_validated=cross_validated, n_evaluated=len(metrics["predictions"]),
        kept_together=grouping,
        l2=fit.oof.l2, l2_chosen=cfg.l2_regularizer is None, l2_rule="the strongest L2 whose cross-validated "
        "log-loss is within one standard error (l2_se) of the lowest", l2_se=fit.oof.se,
        l2_search=[{k: r[k] for k in ("l2", "val_loss", "val_accuracy")} for r in fit.oof.grid],
        head_iterations=fit.iterations, calibration=calibration, threshold=threshold)
    timings = {"embed_s": t_embed - t0, "head_s": t_head - t_embed, "cv_s": fit.oof.seconds,
               "fine_tune_s": t_end - t_head if cfg.do_fine_tuning else 0.0, "total_s": t_end - t0,
               "embed_images_per_s": data.embed_images_per_s, "embedded_new": data.embedded_new}
    return TrainResult(labels, cfg, history, metrics, head, data, timings, fine_tuned_model=classifier,
                       groups=groups)


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


def model_card(result: TrainResult) -> dict[str, Any]:
    data, cfg, metrics = result.data, result.config, result.metrics
    threshold = metrics.get("threshold") or {}
    calibration = metrics.get("calibration") or {}
    return {
        "engine_version": __version__,
        "labels": result.labels,
        "backbone": {"handle": data.resolved.handle, "id": data.resolved.backbone_id,
                     "image_size": data.resolved.image_size},
        "config": cfg.to_dict(),
        "dataset": {"root": str(data.dataset.root), "hash": data.dataset.dataset_hash(),
                    "class_counts": data.dataset.class_counts(), "n_train": int(len(data.train_idx)),
                    "n_validation": int(len(data.val_idx)), "n_evaluated": metrics.get("n_evaluated"),
                    "skipped": len(data.dataset.skipped)},
        "dataset_hash": data.dataset.dataset_hash(),
        "class_counts": data.dataset.class_counts(),
        "evaluation": metrics.get("evaluation"),
        # Probabilities of every exported variant are calibrated (the temperature is in the weights); predictions
        # below threshold.value are "unknown" (predict --threshold and the server follow it by default).
        "temperature": result.head.temperature,
        "calibration": calibration,
        "threshold": {k: threshold.get(k) for k in ("value", "target_precision", "precision", "coverage", "reached")},
        "metrics": {k: v for k, v in metrics.items() if k != "predictions"},
        "history_epochs": len(result.history),
        "timings": result.timings,
    }
