"""The map: a project's images placed in 2-D by their embeddings (t-SNE or PCA), cached in <project>/curate/, and
the colour each class is drawn in."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from engine.core.fileio import atomic_path, atomic_write_json, read_json
from engine.store.names import name_key

log = logging.getLogger(__name__)

MAP_METHODS = ("pca", "tsne")
# t-SNE places at most this many images (a seeded sample); every other image goes where its nearest placed images
# are. t-SNE's cost grows faster than n: one thread took ~9 s at 3,461 images and would take minutes at 25,000.
MAP_SAMPLE = 1500
MAP_NEIGHBOURS = 5  # placed images an unplaced one is put among (inverse-distance weighted mean of their places)


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

    placed = np.arange(n) if n <= MAP_SAMPLE else np.sort(np.random.default_rng(seed).choice(n, MAP_SAMPLE,
                                                                                                 replace=False))
    # the components from the placed sample, applied to every image: fitted on all 24,227 images it took 1.5 s
    pca = PCA(n_components=min(30, len(placed) - 1, x.shape[1]), random_state=seed).fit(x[placed])
    reduced = (x @ pca.components_.T.astype(np.float32)).astype(np.float32)
    perplexity = float(min(30.0, max(2.0, (len(placed) - 1) / 3.0)))
    # One thread: t-SNE's OpenMP threads fight the app and training for 2 cores (flowers_large under load: 19 s with
    # one thread, 75 s with all). 400 iterations, 250 of them early exaggeration: the sklearn default is 1000.
    with threadpool_limits(1):
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                  max_iter=400).fit_transform(reduced[placed]).astype(np.float32)
    return xy if len(placed) == n else _place_the_rest(reduced, placed, xy)


def _place_the_rest(reduced: np.ndarray, placed: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Every image at the inverse-distance weighted mean of its MAP_NEIGHBOURS nearest placed images' positions."""
    out = np.zeros((len(reduced), 2), np.float32)
    out[placed] = xy
    rest = np.setdiff1d(np.arange(len(reduced)), placed)
    ref = reduced[placed]
    ref_sq = (ref * ref).sum(axis=1)
    k = min(MAP_NEIGHBOURS, len(placed))
    for start in range(0, len(rest), 4096):
        rows = rest[start:start + 4096]
        q = reduced[rows]
        d2 = np.maximum((q * q).sum(axis=1)[:, None] + ref_sq[None, :] - 2.0 * q @ ref.T, 0.0)
        near = np.argpartition(d2, k - 1, axis=1)[:, :k]
        w = 1.0 / (np.sqrt(np.take_along_axis(d2, near, axis=1)) + 1e-6)
        out[rows] = (xy[near] * w[:, :, None]).sum(axis=1) / w.sum(axis=1, keepdims=True)
    return out


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


# ------------------------------------------------------------------------------------------------------------------
# class colours: one hue per class, the same wherever the class is drawn
# ------------------------------------------------------------------------------------------------------------------
# Eight hues no one confuses (blue, orange, green, red, purple, brown, pink, olive), dark enough for white and light
# enough for a dark background; Vega's default scheme has blue beside cyan and teal, so two classes were both blue.
# Only past eight classes do the lighter and darker variants come in, where some pairs cannot be told apart anyway.
CLASS_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22")
EXTRA_PALETTE = ("#17becf", "#393b79", "#e7ba52", "#843c39", "#7b4173", "#637939", "#6baed6", "#fd8d3c",
                 "#74c476", "#9e9ac8", "#ad494a", "#000000")
UNSORTED_COLOUR = "#a0a0a0"  # the inbox: grey, no class hue
COLOURS_FILE = "colours.json"  # in <project>/curate/


def _slot(name: str, n: int) -> int:
    """A class name's own place in a palette of n: from the name alone, so the same name asks for the same colour
    in every project (Python's hash() differs per process)."""
    return int.from_bytes(hashlib.sha256(name_key(name).encode()).digest()[:4], "big") % n


def class_colours(names: Sequence[str], taken: Mapping[str, str] | None = None) -> dict[str, str]:
    """A colour per class name, all different while the palette lasts (8 distinct hues, then 12 more).

    A name in `taken` keeps its colour; a new one gets its own slot (the same in every project) unless another class
    holds it, then the next free one."""
    palette = (*CLASS_PALETTE, *EXTRA_PALETTE)
    out = {n: c for n, c in (taken or {}).items() if n in set(names) and c in palette}
    used = set(out.values())
    for name in sorted((n for n in dict.fromkeys(names) if n not in out), key=lambda n: (name_key(n), n)):
        for part in (CLASS_PALETTE, EXTRA_PALETTE):
            start = _slot(name, len(part))
            free = [c for c in part[start:] + part[:start] if c not in used]
            if free:
                out[name] = free[0]
                break
        else:  # more classes than colours: some share one
            out[name] = palette[_slot(name, len(palette))]
        used.add(out[name])
    return {n: out[n] for n in names}


def project_class_colours(project_path: str | Path, names: Sequence[str]) -> dict[str, str]:
    """class_colours for a project's classes, kept in <project>/curate/ so a class keeps its colour when others are
    added (a deleted class frees its colour)."""
    path = Path(project_path) / "curate" / COLOURS_FILE
    stored = read_json(path)
    colours = class_colours(names, {k: v for k, v in stored.items() if isinstance(v, str)})
    if colours != stored:
        try:
            atomic_write_json(path, colours)
        except OSError as exc:  # a read-only project still gets its map, in these colours
            log.info("class colours not kept in %s: %s", path, exc)
    return colours
