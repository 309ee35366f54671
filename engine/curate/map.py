"""The map: a project's images placed in 2-D by their embeddings (t-SNE or PCA), cached in <project>/curate/."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine.core.fileio import atomic_path

log = logging.getLogger(__name__)

MAP_METHODS = ("pca", "tsne")


def project_2d(features: np.ndarray, method: str = "tsne", seed: int = 42) -> np.ndarray:
    """(n, 2) coordinates. t-SNE (sklearn, on 30 PCA components) separates classes; PCA is instant but crowded."""
    from sklearn.decomposition import PCA

    x = np.asarray(features, np.float32)
    n = len(x)
    if n == 0:
        return np.zeros((0, 2), np.float32)
    if n < 3:
        return np.column_stack([np.arange(n, dtype=np.float32), np.zeros(n, np.float32)])
    x = x - x.mean(axis=0)
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(x).astype(np.float32)
    if method != "tsne":
        raise ValueError(f"unknown map method '{method}' (use one of {', '.join(MAP_METHODS)})")
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    reduced = PCA(n_components=min(30, n - 1, x.shape[1]), random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3.0)))
    # One thread: t-SNE's OpenMP threads fight the app and training for 2 cores (flowers_large under load: 19 s with
    # one thread, 75 s with all). 400 iterations, 250 of them early exaggeration: the sklearn default is 1000.
    with threadpool_limits(1):
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                    max_iter=400).fit_transform(reduced).astype(np.float32)


def cached_map(project_path: str | Path, shas: Sequence[str], features: np.ndarray, method: str = "tsne",
               model_id: str = "") -> np.ndarray:
    """The 2-D map of these images, computed once per (images, model, method) and kept in <project>/curate/."""
    key = hashlib.sha256(("\n".join(sorted(shas)) + f"|{method}|{model_id}").encode()).hexdigest()[:20]
    folder = Path(project_path) / "curate"
    path = folder / f"map-{method}-{key}.npz"
    if path.exists():
        try:
            with np.load(path) as data:
                pos = {s: i for i, s in enumerate(data["shas"].tolist())}
                return data["xy"][[pos[s] for s in shas]]
        except (OSError, ValueError, KeyError) as exc:
            log.info("map cache %s unusable (%s); recomputing", path, exc)
    xy = project_2d(features, method)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(f"map-{method}-*.npz"):  # only the current map per method is worth keeping
        old.unlink(missing_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, shas=np.array(list(shas)), xy=xy)
    return xy
