"""Transfer learning: a classifier head on cached backbone features, optionally fine-tuned end to end.

The default recipe trains the head to convergence on cached embeddings (early stopping on validation loss, best
weights restored) because an epoch there costs milliseconds; make_image_classifier's 5 SGD epochs underfit.
`do_fine_tuning` then trains through the backbone on images with augmentation, starting from that head.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import __version__, images
from engine.backbones import ResolvedBackbone, load_feature_layer, resolve
from engine.config import TrainConfig
from engine.dataset import Dataset, ImageItem, Skipped, scan_image_dir, split_dataset, validate
from engine.embeddings import EmbeddingStore, embed_files
from engine.events import ProgressCallback, emit
from engine.tfcompat import hub, keras, set_seed, tf

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


@dataclass
class TrainResult:
    labels: list[str]
    config: TrainConfig
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    head: Any  # keras model: features -> probabilities
    data: PreparedData
    timings: dict[str, float] = field(default_factory=dict)
    run_dir: Path | None = None
    export: Any = None
    fine_tuned_model: Any = None

    @property
    def model(self):
        """The full keras classifier ([0,1] RGB images in, probabilities out); built on first use, as loading
        the backbone takes seconds that a head-only retrain should not pay."""
        if self.fine_tuned_model is None:
            self.fine_tuned_model = build_classifier(self.data.resolved, self.head)
        return self.fine_tuned_model

    @property
    def val_accuracy(self) -> float | None:
        return self.metrics.get("val_accuracy")


# ----------------------------------------------------------------------------------------------------------------
# Data: scan, split, embed
# ----------------------------------------------------------------------------------------------------------------
def prepare_data(cfg: TrainConfig, progress: ProgressCallback | None = None,
                 store: EmbeddingStore | None = None) -> PreparedData:
    emit(progress, "stage", stage="scan", message=f"Scanning {cfg.image_dir}")
    # Images are fully decoded only when embedded: a cached sha256 is already known to be a good image.
    dataset = scan_image_dir(cfg.image_dir, check_images=False, progress=progress)
    for skip in dataset.skipped:
        emit(progress, "warning", message=f"Skipped {skip.path}: {skip.reason}", path=skip.path)
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
                        res.computed)


def _drop_unreadable(ds: Dataset, failed: list[tuple[int, str]]) -> Dataset:
    if not failed:
        return ds
    bad = {i for i, _ in failed}
    items: list[ImageItem] = [it for i, it in enumerate(ds.items) if i not in bad]
    skipped = ds.skipped + [Skipped(ds.items[i].path, reason) for i, reason in failed]
    kept = Dataset(ds.root, ds.labels, items, skipped)
    validate(kept)  # a class may now be too small; its message counts the skipped files
    return kept


# ----------------------------------------------------------------------------------------------------------------
# Head training on features
# ----------------------------------------------------------------------------------------------------------------
def build_head(feature_size: int, n_classes: int, cfg: TrainConfig) -> keras.Model:
    reg = keras.regularizers.L1L2(l1=cfg.l1_regularizer, l2=cfg.l2_regularizer)
    return keras.Sequential([
        keras.Input((feature_size,), name="features"),
        keras.layers.Dropout(cfg.dropout_rate, name="dropout"),
        keras.layers.Dense(n_classes, activation="softmax", kernel_regularizer=reg, name="probabilities"),
    ], name="head")


def make_optimizer(name: str, learning_rate: float, momentum: float, light: bool = False):
    """light: Keras' legacy optimizers, whose graphs trace in a third of the time (the head retrains in ~0.3 s)."""
    family = keras.optimizers.legacy if light else keras.optimizers
    if name == "sgd":
        return family.SGD(learning_rate, momentum=momentum)
    if name == "adam":
        return family.Adam(learning_rate)
    raise ValueError(f"Unknown optimizer '{name}': use 'adam' or 'sgd'")


def sample_weights(y: np.ndarray, n_classes: int, mode: str) -> np.ndarray:
    if mode == "none":
        return np.ones(len(y), np.float32)
    if mode != "balanced":
        raise ValueError(f"class_weights must be 'none' or 'balanced', not '{mode}'")
    counts = np.bincount(y, minlength=n_classes).astype(np.float32)
    return (len(y) / (n_classes * np.maximum(counts, 1)))[y].astype(np.float32)


class _EarlyStopping:
    """Keeps the best weights; on a plateau first lowers the learning rate, then stops.

    Lowering the rate lets mini-batch training settle into the optimum of the regularised loss instead of
    stopping on a noisy plateau (worth ~2 points of accuracy on the flowers set against a plain patience rule).
    """

    def __init__(self, patience: int, optimizer=None, reductions: int = 3, factor: float = 0.3,
                 min_delta: float = 1e-3):
        self.patience, self.min_delta, self.optimizer = patience, min_delta, optimizer
        self.reductions_left, self.factor = (reductions if optimizer is not None else 0), factor
        self.best, self.best_epoch, self.best_weights, self.wait = np.inf, 0, None, 0

    def update(self, epoch: int, value: float, model: keras.Model) -> bool:
        """Record the epoch; True when training should stop."""
        if not np.isfinite(self.best) or value < self.best - self.min_delta * max(1.0, abs(self.best)):
            self.best, self.best_epoch, self.best_weights, self.wait = value, epoch, model.get_weights(), 0
            return False
        self.wait += 1
        if self.wait < self.patience:
            return False
        if self.reductions_left:
            self.reductions_left -= 1
            self.wait = 0
            self.optimizer.learning_rate = float(self.optimizer.learning_rate) * self.factor
            return False
        return True


def train_head(x_tr: np.ndarray, y_tr: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, n_classes: int,
               cfg: TrainConfig, progress: ProgressCallback | None = None) -> tuple[keras.Model, list[dict]]:
    """Mini-batch training until the monitored loss stops improving; the best weights are kept."""
    set_seed(cfg.seed)
    head = build_head(x_tr.shape[1], n_classes, cfg)
    opt = make_optimizer(cfg.optimizer, cfg.learning_rate, cfg.momentum, light=True)
    run_epoch = _epoch_fn(head, opt, cfg, n_classes, has_val=len(y_val) > 0)
    x_tr_t, y_tr_t = tf.constant(x_tr), tf.constant(y_tr, tf.int32)
    w_tr = tf.constant(sample_weights(y_tr, n_classes, cfg.class_weights))
    x_val_t, y_val_t = tf.constant(x_val), tf.constant(y_val, tf.int32)
    monitor_val = cfg.early_stopping_monitor == "val_loss" and len(y_val) > 0
    stopper = _EarlyStopping(cfg.early_stopping_patience, opt if not monitor_val else None)
    rng, history, t0 = np.random.default_rng(cfg.seed), [], time.perf_counter()
    for epoch in range(1, cfg.train_epochs + 1):
        order = tf.constant(rng.permutation(len(y_tr)))
        loss, acc, val_loss, val_acc = (float(v) for v in run_epoch(x_tr_t, y_tr_t, w_tr, order, x_val_t, y_val_t))
        row = {"phase": "head", "epoch": epoch, "loss": loss, "accuracy": acc,
               "val_loss": val_loss if len(y_val) else None, "val_accuracy": val_acc if len(y_val) else None,
               "elapsed": time.perf_counter() - t0}
        history.append(row)
        emit(progress, "epoch", **row)
        if stopper.update(epoch, row["val_loss"] if monitor_val else loss, head):
            break
    if stopper.best_weights is not None:
        head.set_weights(stopper.best_weights)
    log.info("Head trained %d epochs (best %d) in %.2f s", len(history), stopper.best_epoch,
             time.perf_counter() - t0)
    return head, history


def _epoch_fn(head: keras.Model, opt, cfg: TrainConfig, n_classes: int, has_val: bool):
    """One compiled call per epoch (training batches and the validation pass): no per-step Python."""
    loss_fn = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
    batch = cfg.batch_size

    def accuracy(p, y):
        return tf.reduce_mean(tf.cast(tf.argmax(p, 1, output_type=tf.int32) == y, tf.float32))

    @tf.function
    def run_epoch(x, y, w, order, x_val, y_val):
        n = tf.shape(order)[0]
        total, correct = tf.constant(0.0), tf.constant(0.0)
        for start in tf.range(0, n, batch):
            idx = order[start : tf.minimum(start + batch, n)]
            xb, yb, wb = tf.gather(x, idx), tf.gather(y, idx), tf.gather(w, idx)
            with tf.GradientTape() as tape:
                p = head(xb, training=True)
                loss = loss_fn(tf.one_hot(yb, n_classes), p, sample_weight=wb) + tf.add_n(head.losses + [0.0])
            grads = tape.gradient(loss, head.trainable_variables)
            opt.apply_gradients(zip(grads, head.trainable_variables, strict=True))
            size = tf.cast(tf.shape(idx)[0], tf.float32)
            total += loss * size
            correct += accuracy(p, yb) * size
        n_f = tf.cast(n, tf.float32)
        if not has_val:
            return total / n_f, correct / n_f, tf.constant(0.0), tf.constant(0.0)
        p_val = head(x_val, training=False)
        return total / n_f, correct / n_f, loss_fn(tf.one_hot(y_val, n_classes), p_val), accuracy(p_val, y_val)

    return run_epoch


# ----------------------------------------------------------------------------------------------------------------
# The full classifier, fine-tuning
# ----------------------------------------------------------------------------------------------------------------
class _FrozenBatchNormHubLayer(hub.KerasLayer):
    """A trainable hub layer whose BatchNorm statistics stay fixed: small fine-tuning batches would ruin them."""

    def call(self, inputs, training=None):
        return super().call(inputs, training=False)


def build_classifier(resolved: ResolvedBackbone, head: keras.Model, trainable: bool = False) -> keras.Model:
    """Images in [0,1] at the backbone's size -> probabilities; the head's trained weights are copied in."""
    size = resolved.image_size
    if trainable:
        feature = _FrozenBatchNormHubLayer(resolved.path, trainable=True, name="feature_extractor")
    else:
        feature = load_feature_layer(resolved, trainable=False)
    dense_src = head.get_layer("probabilities")
    dense = keras.layers.Dense(dense_src.units, activation="softmax", kernel_regularizer=dense_src.kernel_regularizer,
                               name="probabilities")
    model = keras.Sequential([keras.Input((size, size, 3), name="images"), feature,
                              keras.layers.Dropout(head.get_layer("dropout").rate, name="dropout"), dense],
                             name="classifier")
    dense.set_weights(dense_src.get_weights())
    return model


def load_images(paths: list[str], size: int, center_crop: bool) -> np.ndarray:
    return np.stack([images.prepare(p, size, center_crop) for p in paths]) if paths else np.zeros((0, size, size, 3),
                                                                                                 np.uint8)


def fine_tune(classifier: keras.Model, data: PreparedData, cfg: TrainConfig,
              progress: ProgressCallback | None = None) -> list[dict]:
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
                epochs=cfg.fine_tune_epochs, validation_data=val, verbose=0, callbacks=[_Report()],
                shuffle=True)
    if val is not None:
        classifier.set_weights(best["weights"])
        log.info("Fine-tuning: kept epoch %d (validation loss %.4f)", best["epoch"], best["loss"])
    return history


def _augmentation(cfg: TrainConfig) -> list:
    if not cfg.do_data_augmentation:
        return []
    layers = []
    if cfg.horizontal_flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=cfg.seed))
    if cfg.rotation_range:
        layers.append(keras.layers.RandomRotation(cfg.rotation_range / 360.0, seed=cfg.seed))
    if cfg.zoom_range:
        layers.append(keras.layers.RandomZoom(cfg.zoom_range, seed=cfg.seed))
    return layers


# ----------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------
def evaluate(probs: np.ndarray, y_true: np.ndarray, labels: list[str], paths: list[str]) -> dict[str, Any]:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    if len(y_true) == 0:
        return {"labels": labels, "val_accuracy": None, "per_class": {}, "confusion_matrix": [], "predictions": []}
    pred = probs.argmax(1)
    idx = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(y_true, pred, labels=idx, zero_division=0)
    per_class = {lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                 for i, lab in enumerate(labels)}
    predictions = [{"path": path, "true": labels[t], "predicted": labels[k], "probability": float(pr[k]),
                    "probs": [round(float(v), 6) for v in pr]}
                   for path, t, k, pr in zip(paths, y_true, pred, probs, strict=True)]
    return {"labels": labels, "val_accuracy": float(np.mean(pred == y_true)), "per_class": per_class,
            "confusion_matrix": confusion_matrix(y_true, pred, labels=idx).tolist(), "predictions": predictions}


# ----------------------------------------------------------------------------------------------------------------
# The whole job
# ----------------------------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, progress: ProgressCallback | None = None, store: EmbeddingStore | None = None,
          data: PreparedData | None = None) -> TrainResult:
    """Scan, embed, train (and optionally fine-tune); no files written. See run() for the full job."""
    t0 = time.perf_counter()
    data = data or prepare_data(cfg, progress, store)
    t_embed = time.perf_counter()
    y, labels = data.dataset.y, data.dataset.labels
    emit(progress, "stage", stage="train", message=f"Training a {len(labels)}-class head")
    head, history = train_head(data.features[data.train_idx], y[data.train_idx], data.features[data.val_idx],
                               y[data.val_idx], len(labels), cfg, progress)
    t_head = time.perf_counter()
    val_paths = [data.dataset.items[i].path for i in data.val_idx]
    classifier = None
    if cfg.do_fine_tuning:
        classifier = build_classifier(data.resolved, head, trainable=True)
        emit(progress, "stage", stage="fine_tune", message="Fine-tuning the backbone on images")
        history += fine_tune(classifier, data, cfg, progress)
        x_val = load_images(val_paths, data.resolved.image_size, cfg.center_crop)
        probs = classifier.predict(x_val / 255.0, verbose=0) if len(x_val) else np.zeros((0, len(labels)))
    else:
        probs = head(data.features[data.val_idx], training=False).numpy()
    metrics = evaluate(probs, y[data.val_idx], labels, val_paths)
    t_end = time.perf_counter()
    timings = {"embed_s": t_embed - t0, "head_s": t_head - t_embed, "fine_tune_s": t_end - t_head if
               cfg.do_fine_tuning else 0.0, "total_s": t_end - t0, "embed_images_per_s": data.embed_images_per_s,
               "embedded_new": data.embedded_new}
    return TrainResult(labels, cfg, history, metrics, head, data, timings, fine_tuned_model=classifier)


def check_accuracy(result: TrainResult, threshold: float | None) -> None:
    if threshold is None:
        return
    acc = result.val_accuracy
    if acc is None:
        raise AccuracyError("--assert_accuracy_at_least needs validation images; set --validation_split > 0")
    if acc < threshold:
        raise AccuracyError(f"Validation accuracy {acc:.3f} is below --assert_accuracy_at_least {threshold:.3f}")


def model_card(result: TrainResult) -> dict[str, Any]:
    data, cfg = result.data, result.config
    return {
        "engine_version": __version__,
        "labels": result.labels,
        "backbone": {"handle": data.resolved.handle, "id": data.resolved.backbone_id,
                     "image_size": data.resolved.image_size},
        "config": cfg.to_dict(),
        "dataset": {"root": str(data.dataset.root), "hash": data.dataset.dataset_hash(),
                    "class_counts": data.dataset.class_counts(), "n_train": int(len(data.train_idx)),
                    "n_validation": int(len(data.val_idx)), "skipped": len(data.dataset.skipped)},
        "dataset_hash": data.dataset.dataset_hash(),
        "class_counts": data.dataset.class_counts(),
        "metrics": {k: v for k, v in result.metrics.items() if k != "predictions"},
        "history_epochs": len(result.history),
        "timings": result.timings,
    }
