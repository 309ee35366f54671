"""Where a large project's next retrain starts: the previous run's L2 choice and its final head, kept per project in
the cache (issue 22).

A retrain in the user's loop sees nearly the same images as the run before (a few labels fixed, a few photos
added): its L2 search starts at that run's choice (crossval.WarmStart, made by PreviousFit.warm_start: usually
three steps instead of seven), its images keep their folds (identified by SHA-256), each fold starts from that
run's fold heads (at the nearest L2 it fitted) where none of the rows it holds out was a training row there, and
the final fit starts at that run's head when the same L2 is chosen. While few images have changed since the last
L2 search (KEEP_L2_SHARE), its choice is kept: the folds are fitted at that L2 only, with the final head in the
same passes (see kept_l2). Heads are only starting points: the fits converge on this run's data, and a stale or
foreign entry costs iterations, never a wrong head.
Keyed by backbone, image size and class names (the head's shape and meaning); the newest KEPT entries are kept.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.core.cache import cache_root, write_kept
from engine.learn import crossval

log = logging.getLogger(__name__)

FOLDER = "previous_fits"  # in cache_root()
KEPT = 64
# The L2 of the last search is kept while at most this share of the images changed since (added, removed or
# relabelled). Measured on the 24,227 photos' features, labels of n random photos moved to another class (each
# contradicting its altered copies, the worst case), out-of-fold accuracy of a new search vs the kept L2: n = 20
# .9758 vs .9763, 60 .9728 vs .9707, 120 .9678 vs .9640, 200 .9631 vs .9527. So 0.1%: 24 images at 24k.
KEEP_L2_SHARE = 0.001


@dataclass
class PreviousFit:
    l2: float  # the L2 the run chose
    kernel: np.ndarray  # its final head, before calibration
    bias: np.ndarray
    n_folds: int = 0  # its cross-validation: folds, and a fold per image (by image_key, sorted)
    image_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    folds: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    fold_heads: dict[float, list[tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)  # per L2 fitted
    # the labels (class indexes) of the images (by image_key, sorted) when the L2 was last searched
    search_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    search_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))

    def changed_since_search(self, keys: np.ndarray, y: np.ndarray) -> int | None:
        """Images (by image_keys) added, removed or relabelled since the last L2 search; None when not known."""
        if not len(self.search_keys):
            return None
        at, found = _find(self.search_keys, keys)
        same = found & (self.search_labels[at] == np.asarray(y))
        return int(np.sum(~same)) + len(self.search_keys) - len(np.unique(at[found]))

    def kept_l2(self, keys: np.ndarray, y: np.ndarray) -> tuple[float, int] | None:
        """(the L2 to keep, images changed since its search) while at most KEEP_L2_SHARE changed, else None."""
        changed = self.changed_since_search(keys, y)
        if changed is None or changed > KEEP_L2_SHARE * len(keys):
            return None
        return self.l2, changed

    def warm_start(self, keys: np.ndarray | None, n_folds: int, keep_l2: bool, final_max_iter: int
                   ) -> crossval.WarmStart:
        """Where this run's cross-validation starts (keys: its images, None when not known): the search at this
        entry's choice, or (keep_l2, see kept_l2) no search and the final head fitted with the folds, from this
        entry's."""
        return crossval.WarmStart(start=None if keep_l2 else self.l2,
                                  folds=self.folds_of(keys, n_folds) if keys is not None else None,
                                  heads=self.fold_heads, final=(self.kernel, self.bias) if keep_l2 else None,
                                  final_max_iter=final_max_iter)

    def folds_of(self, keys: np.ndarray, n_folds: int) -> np.ndarray | None:
        """Each image's (by image_keys) fold in that run (-1: it was not there); None when that run used another
        fold count."""
        if n_folds != self.n_folds or not len(self.image_keys):
            return None
        at, found = _find(self.image_keys, keys)
        return np.where(found, self.folds[at].astype(np.int64), -1)


def image_keys(shas: list[str]) -> np.ndarray:
    """An image's key: the first 64 bits of its SHA-256."""
    return np.array([int(s[:16], 16) for s in shas], np.uint64)


def _find(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each key, its position in sorted_keys (a valid index either way) and whether it is there."""
    at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return at, sorted_keys[at] == keys


def with_folds(fit: PreviousFit, keys: np.ndarray, folds: np.ndarray, n_folds: int,
               fold_heads: dict[float, list[tuple[np.ndarray, np.ndarray]]], y: np.ndarray,
               searched: PreviousFit | None = None) -> PreviousFit:
    """fit with its cross-validation: the fold of each image (by image_keys: keys[i] was in folds[i] with label
    y[i]) and the fold heads; `searched`: the entry whose search snapshot this run kept (its L2 was kept), else
    these labels are."""
    order = np.argsort(keys, kind="stable")
    out = PreviousFit(fit.l2, fit.kernel, fit.bias, n_folds, keys[order], np.asarray(folds, np.int8)[order],
                      fold_heads, keys[order], np.asarray(y, np.int32)[order])
    if searched is not None:
        out.search_keys, out.search_labels = searched.search_keys, searched.search_labels
    return out


def project_key(backbone_id: str, image_size: int, labels: list[str]) -> str:
    return hashlib.sha256("\x1f".join([backbone_id, str(image_size), *labels]).encode()).hexdigest()[:32]


def _path(key: str) -> Path:
    return cache_root() / FOLDER / f"{key}.npz"


def load(key: str) -> PreviousFit | None:
    """The previous fit kept under key, or None (none kept, or unreadable: the run then starts afresh)."""
    path = _path(key)
    if not path.exists():
        return None
    try:
        with np.load(path) as data:
            fit = PreviousFit(float(data["l2"]), data["kernel"], data["bias"])
            if "folds" in data:  # entries written before the folds were kept have none
                kernels, biases = data["fold_kernels"], data["fold_biases"]
                fit.n_folds, fit.image_keys, fit.folds = int(data["n_folds"]), data["image_keys"], data["folds"]
                fit.fold_heads = {float(c): list(zip(kernels[i], biases[i], strict=True))
                                  for i, c in enumerate(data["fold_l2s"])}
            if "search_keys" in data:
                fit.search_keys, fit.search_labels = data["search_keys"], data["search_labels"]
            return fit
    except (OSError, ValueError, KeyError) as exc:
        log.info("Previous fit %s unusable (%s); starting afresh", path, exc)
        return None


def save(key: str, fit: PreviousFit) -> None:
    """Keep fit under key (the oldest entries beyond KEPT go); a failure only costs the next run some time."""
    buf = io.BytesIO()
    l2s = sorted(fit.fold_heads)
    folds = {} if not l2s else dict(
        n_folds=np.int64(fit.n_folds), image_keys=fit.image_keys, folds=fit.folds, fold_l2s=np.array(l2s),
        fold_kernels=np.array([[h[0] for h in fit.fold_heads[c]] for c in l2s], np.float32),
        fold_biases=np.array([[h[1] for h in fit.fold_heads[c]] for c in l2s], np.float32),
        search_keys=fit.search_keys, search_labels=fit.search_labels)
    np.savez(buf, l2=np.float64(fit.l2), kernel=np.asarray(fit.kernel, np.float32),
             bias=np.asarray(fit.bias, np.float32), **folds)
    try:
        write_kept(_path(key), buf.getvalue(), KEPT)
    except OSError as exc:  # a full disk, a read-only cache
        log.warning("Could not keep this fit for the next retrain (%s)", exc)
