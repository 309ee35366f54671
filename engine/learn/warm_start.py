"""Where a large project's next retrain starts: the previous run's L2 choice, its fold heads at each L2 it fitted
and its final head, kept per project in the cache (issue 22).

A retrain in the user's loop sees nearly the same images as the run before (a few labels fixed, a few photos
added), so that run's heads are close to this one's optima: the L2 search starts at its choice
(crossval.out_of_fold's `start`) and each fold at its head for the same L2 (`starts`), the final fit at its final
head. On 24,227 rows with 20 labels changed the first step's folds took 12-18 L-BFGS iterations instead of 30-34
from zero. They are only starting points: the fits still converge on this run's data, so a stale or foreign entry
costs iterations, never a wrong head. Keyed by backbone, image size and class names (the heads' shapes and
meaning); the newest KEPT entries are kept.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.core.cache import cache_root
from engine.core.fileio import atomic_write_bytes

log = logging.getLogger(__name__)

FOLDER = "previous_fits"  # in cache_root()
KEPT = 64

FoldHeads = list[tuple[np.ndarray, np.ndarray]]


@dataclass
class PreviousFit:
    l2: float  # the L2 the run chose (its final head's)
    folds: dict[float, FoldHeads] = field(default_factory=dict)  # per L2 fitted: each fold's (kernel, bias)
    final: tuple[np.ndarray, np.ndarray] | None = None  # the final head's (kernel, bias), before calibration


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
            l2s, kernels, biases = data["l2s"], data["kernels"], data["biases"]
            folds = {float(c): [(kernels[i, f], biases[i, f]) for f in range(kernels.shape[1])]
                     for i, c in enumerate(l2s)}
            return PreviousFit(float(data["l2"]), folds, (data["final_kernel"], data["final_bias"]))
    except (OSError, ValueError, KeyError, IndexError) as exc:
        log.info("Previous fit %s unusable (%s); starting afresh", path, exc)
        return None


def save(key: str, fit: PreviousFit) -> None:
    """Keep fit under key (the oldest entries beyond KEPT go); a failure only costs the next run some time."""
    l2s = sorted(fit.folds)
    try:
        kernels = np.stack([np.stack([k for k, _ in fit.folds[c]]) for c in l2s]).astype(np.float32)
        biases = np.stack([np.stack([b for _, b in fit.folds[c]]) for c in l2s]).astype(np.float32)
        final_kernel, final_bias = fit.final if fit.final is not None else (kernels[0].mean(0), biases[0].mean(0))
        path = _path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = _npz(l2=np.float64(fit.l2), l2s=np.array(l2s, np.float64), kernels=kernels, biases=biases,
                   final_kernel=np.asarray(final_kernel, np.float32), final_bias=np.asarray(final_bias, np.float32))
        atomic_write_bytes(path, buf)
        for old in sorted(path.parent.glob("*.npz"), key=lambda p: p.stat().st_mtime)[:-KEPT]:
            old.unlink(missing_ok=True)
    except (OSError, ValueError) as exc:  # fold heads of unequal shapes (folds with a missing class), a full disk
        log.warning("Could not keep this fit for the next retrain (%s)", exc)


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()
