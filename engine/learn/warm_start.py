"""Where a large project's next retrain starts: the previous run's L2 choice and its final head, kept per project in
the cache (issue 22).

A retrain in the user's loop sees nearly the same images as the run before (a few labels fixed, a few photos
added): its L2 search starts at that run's choice (crossval.out_of_fold's `start`: usually three steps instead of
seven) and its final fit at that run's head when the same L2 is chosen. The final head is only a starting point:
the fit converges on this run's data, and a stale or foreign entry costs iterations, never a wrong head. The fold
heads are not kept: a fold starting from one may have seen rows it is judged on (see out_of_fold). Keyed by
backbone, image size and class names (the head's shape and meaning); the newest KEPT entries are kept.
"""

from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.core.cache import cache_root, write_kept

log = logging.getLogger(__name__)

FOLDER = "previous_fits"  # in cache_root()
KEPT = 64


@dataclass
class PreviousFit:
    l2: float  # the L2 the run chose
    kernel: np.ndarray  # its final head, before calibration
    bias: np.ndarray


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
            return PreviousFit(float(data["l2"]), data["kernel"], data["bias"])
    except (OSError, ValueError, KeyError) as exc:
        log.info("Previous fit %s unusable (%s); starting afresh", path, exc)
        return None


def save(key: str, fit: PreviousFit) -> None:
    """Keep fit under key (the oldest entries beyond KEPT go); a failure only costs the next run some time."""
    buf = io.BytesIO()
    np.savez(buf, l2=np.float64(fit.l2), kernel=np.asarray(fit.kernel, np.float32),
             bias=np.asarray(fit.bias, np.float32))
    try:
        write_kept(_path(key), buf.getvalue(), KEPT)
    except OSError as exc:  # a full disk, a read-only cache
        log.warning("Could not keep this fit for the next retrain (%s)", exc)
