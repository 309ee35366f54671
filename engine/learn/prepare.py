"""What a training run learns from: the image folder scanned, every image's backbone features (from the cache, the
rest computed), unreadable images dropped with a warning, and the split (all images for cross-validation, or
make_image_classifier's held-out fraction)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.config.backbones import ResolvedBackbone
from engine.config.training import TrainConfig
from engine.core.events import EventKind, ProgressCallback, Stage, emit
from engine.data.dataset import Dataset, ImageItem, Skipped, scan_image_dir, split_dataset, validate
from engine.features.backbones import resolve
from engine.features.embeddings import EmbeddingStore, backbone_ready, embed_files


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


def prepare_data(cfg: TrainConfig, progress: ProgressCallback | None = None,
                 store: EmbeddingStore | None = None) -> PreparedData:
    emit(progress, EventKind.STAGE, stage=Stage.SCAN, message=f"Scanning {cfg.image_dir}")
    # Images are fully decoded only when embedded: a cached sha256 is already known to be a good image.
    dataset = scan_image_dir(cfg.image_dir, check_images=False, progress=progress)
    for skip in dataset.skipped:
        emit(progress, EventKind.WARNING, message=f"Skipped {skip.path}: {skip.reason}", path=skip.path)
    if not backbone_ready(cfg.tfhub_module, cfg.image_size):
        emit(progress, EventKind.STAGE, stage=Stage.PREPARE,
             message=f"Preparing the {cfg.tfhub_module} backbone: converted once on this machine, about 30 s")
    resolved = resolve(cfg.tfhub_module, cfg.image_size)
    emit(progress, EventKind.STAGE, stage=Stage.EMBED, message=f"Computing {resolved.handle} features")
    store = store or EmbeddingStore(Path(cfg.cache_dir) / "embeddings.sqlite" if cfg.cache_dir else None)
    res = embed_files([it.path for it in dataset.items], [it.sha256 for it in dataset.items], resolved,
                      center_crop=cfg.center_crop, store=store, progress=progress)
    for _, reason in res.failed:
        emit(progress, EventKind.WARNING, message=f"Skipped {reason}", path=None)
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
