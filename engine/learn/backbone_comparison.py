"""Which backbone wins on the user's own data: this run's cross-validated accuracy and log-loss next to the other
preset backbones', computed only from features already in the cache (nothing is embedded for it). A side report,
run after the bundle is written; never a reason to fail a run."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.config.backbones import PRESETS
from engine.config.training import TrainConfig
from engine.features import backbones
from engine.features.embeddings import preprocess_id
from engine.learn import crossval
from engine.learn.prepare import PreparedData

if TYPE_CHECKING:
    from engine.learn.train import TrainResult

log = logging.getLogger(__name__)


# Backbones compared in the cross-validated report when their features of every image are already cached
COMPARE_BACKBONES = tuple(p["tfhub_module"] for p in PRESETS.values())  # the presets' backbones


def comparable_backbones(result: TrainResult) -> list[str]:
    """The other preset backbones this run could be compared with: installed and prepared on this machine, and the
    run cross-validated on every image (a held-out split or fine-tuning: nothing to compare)."""
    data = result.data
    if data.store is None or not result.metrics.get("cross_validated") \
            or len(data.train_idx) != len(data.dataset.items):
        return []
    table = backbones.BACKBONES
    return [name for name in COMPARE_BACKBONES if name != data.resolved.handle and name in table
            and table[name].installed() and (backbones.cached_module_path(name) / "saved_model.pb").exists()]


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
    shas = [it.sha256 for it in data.dataset.items]
    y, n_classes = data.dataset.y, len(data.dataset.labels)
    rows = []
    for name in names:
        other = backbones.resolve(name)
        found = data.store.get_many(list(set(shas)), other.backbone_id,
                                    preprocess_id(other.image_size, cfg.center_crop))
        if len(found) < len(set(shas)):
            continue
        oof = crossval.out_of_fold(np.stack([found[s] for s in shas]), y, n_classes, groups, cfg.cv_folds, cfg.seed)
        rows.append({"backbone": name, "accuracy": float(np.mean(oof.probs.argmax(1) == y)),
                     "log_loss": crossval.log_loss(oof.logits, y), "l2": oof.l2})
    return rows
