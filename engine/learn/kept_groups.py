"""The near-duplicate pairs and fold groups of a set of images, kept between runs (issue 22): a retrain of the same
images reads its groups instead of searching 24,000-100,000 images for copies again (3 s of a 24,000-image retrain),
and a Curate check of them reads the pairs the run searched (15 s of a 100,000-photo check).

Keyed by the set of images (not their order or labels: moving an image between classes keeps the key), the features
they were compared by (a slice of their values in image order: cheap, and no two feature sets that differ anywhere
in it share an entry) and the perceptual hashes' version (image_stats.STATS_VERSION: groups kept from earlier hashes
differed from the current ones in 2,421 of 16,058 groups on 24,227 photos); groups also by backbone, preprocessing
and fold count (a group larger than a fold falls back to exact copies). The pairs of a set do not depend on the
order of its rows (engine.learn.pairs: the hash search is exact, and the cluster search found the same 4,822 pairs
in two orders of the 24,227 photos). The newest KEPT entries of each kind are kept, so a test run or a few small
projects do not push out a big project's; a damaged or foreign file is searched again. Bump VERSION when the
grouping rule changes.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine.core.cache import cache_root, write_kept
from engine.features.image_stats import STATS_VERSION, image_hashes
from engine.learn.groups import ALL_PAIRS_MAX, duplicate_pairs, fold_groups
from engine.learn.prepare import PreparedData

log = logging.getLogger(__name__)

GROUPS_DIR, PAIRS_DIR, VERSION = "groups", "pairs", "1"
# Entries kept per kind (each ~3 MB at 100,000 images): a test run or a few small projects must not push out the big
# project's groups; its pairs are read by the next Curate check only.
KEPT = {GROUPS_DIR: 64, PAIRS_DIR: 16}


def fold_groups_of(data: PreparedData, n_folds: int = 5, preprocess: str = "") -> tuple[np.ndarray, str]:
    """A group id per image (copies and near-copies share one, so they always land in the same fold), and how the
    groups were made (engine.learn.groups.fold_groups), kept per set of images."""
    items = data.dataset.items
    shas = [it.sha256 for it in items]
    path = _path(GROUPS_DIR, shas, _sha_order(shas), data.features,
                 [data.resolved.backbone_id, preprocess, str(n_folds)])
    known = _read_groups(path, shas)
    if known is not None:
        return known
    try:
        hashes = image_hashes([it.path for it in items], shas)  # cached by SHA-256: a retrain reads, not decodes
    except Exception as exc:  # noqa: BLE001 - grouping without hashes is still correct, only less thorough
        log.warning("Perceptual hashes unavailable (%s); grouping copies by embedding only", exc)
        hashes = None
    groups, how = fold_groups(data.features, shas, n_folds, hashes=hashes,
                              pairs=duplicate_pairs_of(data.features, shas, hashes))
    if hashes is not None:  # groups without the hashes are looser: made again next time, not kept
        _write(path, shas=np.asarray(shas), groups=groups, how=np.array(how))
    return groups, how


def duplicate_pairs_of(features: np.ndarray, shas: Sequence[str], hashes: np.ndarray | None
                       ) -> list[tuple[int, int, float, int]]:
    """engine.learn.groups.duplicate_pairs(features, hashes), kept per set of images above ALL_PAIRS_MAX rows
    (below, comparing every pair is quicker than reading a file)."""
    if len(shas) <= ALL_PAIRS_MAX or hashes is None:
        return duplicate_pairs(features, hashes) if len(shas) else []
    # rows by their place in SHA-256 order, so another order of the same images reads them (rows with one SHA-256
    # are the same file: the pairs do not tell them apart)
    order = _sha_order(shas)
    path = _path(PAIRS_DIR, shas, order, features, [])
    known = _read_pairs(path, shas, order)
    if known is not None:
        return known
    pairs = duplicate_pairs(features, hashes)
    place = np.empty(len(shas), np.int64)
    place[order] = np.arange(len(shas))
    a, b, cos, dist = (np.array(col) for col in zip(*pairs, strict=True)) if pairs else ([], [], [], [])
    _write(path, shas=np.asarray(shas)[order], i=place[np.asarray(a, np.int64)],
           j=place[np.asarray(b, np.int64)], cos=np.asarray(cos, np.float32), dist=np.asarray(dist, np.int16))
    return pairs


def _sha_order(shas: Sequence[str]) -> np.ndarray:
    """The rows in SHA-256 order: what the kept entries are keyed and stored by."""
    return np.argsort(np.asarray(shas), kind="stable")


def _path(kind: str, shas: Sequence[str], order: np.ndarray, features: np.ndarray, more: list[str]) -> Path:
    h = hashlib.sha256("\x1f".join([VERSION, STATS_VERSION, *more]).encode())
    h.update("\n".join(np.asarray(shas)[order].tolist()).encode())
    h.update(np.ascontiguousarray(np.asarray(features, np.float32)[order, :16]).tobytes())
    return cache_root() / kind / f"{h.hexdigest()[:24]}.npz"


def _load(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            found = {k: z[k] for k in z.files}
            found["shas"] = found["shas"].astype("U64")  # kept as ASCII bytes (earlier files: as text)
            return found
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as exc:  # a damaged or foreign file: search again
        log.warning("Ignoring the kept duplicate groups in %s (%s)", path, exc)
        return None


def _read_groups(path: Path, shas: list[str]) -> tuple[np.ndarray, str] | None:
    z = _load(path)
    if z is None:
        return None
    try:
        label = dict(zip(z["shas"].tolist(), z["groups"].tolist(), strict=True))
        per_row, how = np.array([label[s] for s in shas], np.int64), str(z["how"])
    except (KeyError, ValueError) as exc:  # another set of images, or a damaged entry: search again
        log.warning("Ignoring the kept duplicate groups in %s (%s)", path, exc)
        return None
    # ids 0..G-1 in order of first appearance, as fold_groups numbers them
    _, first, inverse = np.unique(per_row, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse].astype(np.int64), how


def _read_pairs(path: Path, shas: Sequence[str], order: np.ndarray) -> list[tuple[int, int, float, int]] | None:
    """The kept pairs in this order of rows (`order`: _sha_order(shas)): (i, j) with i < j, sorted, as
    duplicate_pairs returns them."""
    z = _load(path)
    try:
        if z is None or len(z["shas"]) != len(shas) or not np.array_equal(z["shas"], np.asarray(shas)[order]):
            return None
        a, b = order[z["i"].astype(np.int64)], order[z["j"].astype(np.int64)]
        cos, dist = z["cos"], z["dist"]
    except (KeyError, ValueError, IndexError) as exc:
        log.warning("Ignoring the kept duplicate pairs in %s (%s)", path, exc)
        return None
    i, j = np.minimum(a, b), np.maximum(a, b)
    at = np.lexsort((j, i))
    return [(p, q, float(c), int(d)) for p, q, c, d in
            zip(i[at].tolist(), j[at].tolist(), cos[at].tolist(), dist[at].tolist(), strict=True)]


def _write(path: Path, shas: np.ndarray, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, shas=shas.astype("S64"), **arrays)  # 64 bytes a SHA-256, not NumPy text's 256
    try:
        write_kept(path, buf.getvalue(), KEPT[path.parent.name])
    except OSError as exc:  # a time saver for the next run: never worth failing this one
        log.warning("Could not keep the duplicate groups (%s)", exc)
