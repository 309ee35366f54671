"""Per-image statistics: perceptual hashes and brightness, contrast, blur and aspect ratio, measured on the decode
the features do (no second decode of a new image).

The hashes let cross-validation keep a shrunk, cropped or recompressed copy in its original's fold
(engine.learn.groups measures why embeddings alone miss those); the other values let curation name odd images
(engine.curate.outliers holds the limits). Both a retrain and a curation check ask for the same images again, so
the values are kept in a SQLite table keyed by SHA-256 next to the embedding cache: a second call reads instead of
decoding.

The hash is 63 bits per view: the lowest 8 x 8 DCT frequencies (without the DC term) of the grayscale image (at
<= STATS_SIDE px) shrunk to 32 x 32, each bit set where the coefficient is above their median; HASH_SCALES gives
the centred crops hashed, so a cropped copy matches a crop of its original.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engine.core.cache import cache_root
from engine.core.fileio import thread_sqlite
from engine.data.images import load_image

HASH_SCALES = (1.0, 0.9, 0.8)  # centred crops hashed per image, so a cropped copy matches its original's crop
HASH_BITS_PER_SCALE = 63
STATS_VERSION = "curate-stats-5"  # bump when what image_stats computes changes
STATS_SIDE = 256  # the statistics and hashes are measured on the image shrunk to this long side


@dataclass
class ImageStats:
    hashes: np.ndarray  # (n, len(HASH_SCALES), 63) bool; all False for unreadable images
    mean: np.ndarray  # (n,) gray level 0..255
    p01: np.ndarray  # (n,) darkest 1% of gray levels
    p99: np.ndarray  # (n,) brightest 1% of the strongest colour channel
    std: np.ndarray  # (n,) contrast: the largest standard deviation of the three colour channels
    blur: np.ndarray  # (n,) variance of the Laplacian at <= 256 px (low: blurry)
    aspect: np.ndarray  # (n,) long side / short side
    readable: np.ndarray  # (n,) bool


def _decode(path: str) -> np.ndarray | None:
    """The image as the features decode it (engine.data.images.load_image: RGB, EXIF-rotated), or None."""
    try:
        return load_image(path)
    except (ValueError, OSError):
        return None


def stats_row(rgb: np.ndarray) -> dict:
    """The cached statistics of one decoded RGB image. Measured at <= STATS_SIDE px, so the decode the features
    already did serves (engine.features.embeddings) and a large photo costs little more than a small one.

    OpenCV calls and 256-bin histograms throughout: with NumPy's percentile, std and median this took 4 ms per
    image, four times the decode, and held cold features to 55% of the backbone's speed (bench/bench_scale.py)."""
    h, w = rgb.shape[:2]
    scale = STATS_SIDE / max(h, w)
    small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA) \
        if scale < 1 else rgb
    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    sh, sw = gray.shape
    gray_f = gray.astype(np.float32)
    bits = np.empty((len(HASH_SCALES), HASH_BITS_PER_SCALE), bool)
    for k, s in enumerate(HASH_SCALES):
        ch, cw = max(1, round(sh * s)), max(1, round(sw * s))
        y, x = (sh - ch) // 2, (sw - cw) // 2
        crop = cv2.resize(gray_f[y:y + ch, x:x + cw], (32, 32), interpolation=cv2.INTER_AREA)
        dct = cv2.dct(crop)[:8, :8].ravel()[1:]  # lowest frequencies without the DC term
        bits[k] = dct > np.partition(dct, HASH_BITS_PER_SCALE // 2)[HASH_BITS_PER_SCALE // 2]  # above the median
    # brightest pixels by their strongest channel (a deep red rose is dark in luminance, not underexposed);
    # darkest by luminance; contrast in any channel (a green pattern on grey has little contrast in luminance,
    # but is not blank)
    planes = cv2.split(small)
    _, std = cv2.meanStdDev(small)
    _, lap_std = cv2.meanStdDev(cv2.Laplacian(gray, cv2.CV_16S))  # exact: |values| <= 4 * 255
    return {"ok": True, "hash": np.packbits(bits, axis=1).tobytes().hex(),
            "mean": float(cv2.mean(gray)[0]), "p01": _percentile(gray, 1),
            "p99": _percentile(cv2.max(cv2.max(planes[0], planes[1]), planes[2]), 99),
            "std": float(std.max()), "blur": float(lap_std[0, 0]) ** 2, "aspect": max(h, w) / max(1, min(h, w))}


def _percentile(levels: np.ndarray, q: float) -> float:
    """np.percentile(levels, q) of uint8 levels (linear between order statistics), from their histogram."""
    counts = np.cumsum(np.bincount(levels.ravel(), minlength=256))
    pos = q / 100.0 * (counts[-1] - 1)
    lo = int(np.floor(pos))
    a, b = (int(np.searchsorted(counts, i, side="right")) for i in (lo, min(lo + 1, counts[-1] - 1)))
    return float(a + (b - a) * (pos - lo))


def _measure(path: str) -> dict:
    img = _decode(path)
    return {"ok": False} if img is None else stats_row(img)


class StatsCache:
    """SQLite table of per-image statistics keyed by SHA-256 (next to the embedding cache). The embedding keeps
    the rows it measured here (stats_row on its own decode), one store per run of new images."""

    def __init__(self, path: Path | None = None):
        self.path = path or cache_root() / "curate_stats.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as db:
            db.execute("CREATE TABLE IF NOT EXISTS stats (sha256 TEXT, version TEXT, value TEXT,"
                       " PRIMARY KEY (sha256, version))")

    def _conn(self) -> sqlite3.Connection:
        return thread_sqlite(self._local, self.path)

    def get_many(self, shas: Sequence[str]) -> dict[str, dict]:
        found: dict[str, dict] = {}
        db = self._conn()
        for start in range(0, len(shas), 500):
            chunk = list(shas[start:start + 500])
            marks = ",".join("?" * len(chunk))
            for sha, value in db.execute(f"SELECT sha256, value FROM stats WHERE version=? AND sha256 IN ({marks})",
                                         [STATS_VERSION, *chunk]):
                found[sha] = json.loads(value)
        return found

    def put_many(self, items: list[tuple[str, dict]]) -> None:
        with self._conn() as db:
            db.executemany("INSERT OR REPLACE INTO stats VALUES (?,?,?)",
                           [(sha, STATS_VERSION, json.dumps(v)) for sha, v in items])


def image_stats(paths: Sequence[str | Path], shas: Sequence[str], cache: bool = True) -> ImageStats:
    """Perceptual hashes and brightness/contrast/blur/aspect per image. Images embedded by this engine have theirs
    cached already (measured on the features' decode); others are decoded here, on every core."""
    n = len(paths)
    store = StatsCache() if cache else None
    known = store.get_many(list(dict.fromkeys(shas))) if store else {}
    missing = {sha: str(path) for path, sha in zip(paths, shas, strict=True) if sha not in known}
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # cv2 and PIL release the GIL while decoding
        made = dict(zip(missing, pool.map(_measure, missing.values()), strict=True))
    # unreadable ones are not cached: the file may be fixed in place
    new = [(sha, row) for sha, row in made.items() if row["ok"]]
    known.update(made)
    rows = [known[sha] for sha in shas]
    if store and new:
        store.put_many(new)
    n_scales = len(HASH_SCALES)
    hashes = np.zeros((n, n_scales, HASH_BITS_PER_SCALE), bool)
    for i, r in enumerate(rows):
        if r["ok"]:
            packed = np.frombuffer(bytes.fromhex(r["hash"]), np.uint8).reshape(n_scales, -1)
            hashes[i] = np.unpackbits(packed, axis=1)[:, :HASH_BITS_PER_SCALE].astype(bool)

    def col(key: str, default: float) -> np.ndarray:
        return np.array([r.get(key, default) if r["ok"] else default for r in rows], np.float32)

    return ImageStats(hashes, col("mean", 128.0), col("p01", 0.0), col("p99", 255.0), col("std", 50.0),
                      col("blur", 1000.0), col("aspect", 1.0),
                      np.array([r["ok"] for r in rows], bool))


def image_hashes(paths: Sequence[str | Path], shas: Sequence[str]) -> np.ndarray:
    """Perceptual hashes for `engine.learn.groups.near_duplicate_groups(..., hashes=)` (cached by SHA-256)."""
    return image_stats(paths, shas).hashes
