"""Curate: find what is wrong with a labelled image set, and let a trained head pre-sort the inbox.

Four findings, all from cached backbone embeddings plus one small decode per image (statistics cached by SHA-256):

* label issues: cleanlab on out-of-fold probabilities (engine.learn.crossval, averaged with k-NN votes): how many from
  `find_label_issues`, which ones by normalized margin (see `label_issues` for the measurement);
* near-duplicates: exact SHA-256 copies, near-identical embeddings, and perceptual-hash matches (a group that spans
  classes is a label conflict); cross-validation passes these groups so a group is never split;
* class outliers: images unlike their own class (low mean cosine to their k nearest same-class neighbours);
* odd images: near-blank, very dark or bright, blurry, extreme aspect ratio.

Nothing here moves or deletes a file: the app and the CLI show findings, a person clicks.

How near-duplicates are decided (measured on ../shared/datasets, EfficientNet-Lite0 features, altered copies made
with JPEG quality 40, half size, 90% centre crop, +15% brightness; see bench/bench_curate.py):

    cosine of raw features, copy vs original (median / 5th percentile), flowers_large, 200 copies each:
        JPEG q40 .94/.88   half size .87/.78   90% crop .95/.89   +15% brightness .99/.96   all four .73/.60
    distinct untouched photos: median nearest-neighbour cosine .75 (flowers_large), .67 (flowers 300)
    pairs of distinct photos at cosine >= .90: 0 in flowers (300), 66 in flowers_large (most are burst shots of the
    same flower, some are different daisies), >= .95: 10 groups in flowers_large, all the same scene.

Embeddings alone cannot tell a shrunken or recompressed copy (cosine .6-.8) from a similar photo (.75-.93), so a
second signal decides those: a 63-bit DCT perceptual hash of the grayscale image at three centred crops (100%,
90%, 80%), compared as the smallest Hamming distance between one image's full view and the other's crops. Copies
vs originals: median 0-2 bits, 98.5% of the all-four-alterations copies within 8 bits; distinct photos within 8
bits: 1 pair in flowers (a real duplicate), 33 in flowers_large (nearly all edited copies of one photo).

Rule: same group when SHA-256 is equal, or cosine >= DUPLICATE_THRESHOLD (.95), or (hash distance <= HASH_BITS (8)
and cosine >= HASH_MIN_COSINE (.5)); the cosine floor vetoes hash collisions between unrelated pictures, and hash
matches never grow a group past MAX_HASH_GROUP (pictures sharing one layout would otherwise chain together).
Without hashes (the `near_duplicate_groups(features, shas)` call cross-validation makes) only the first two apply.

Result (bench/bench_curate.py, 30 copies with all four alterations at once, and with each alone): 100% grouped with
their original in flowers and in flowers_large (embedding-only rule: 0% for all four at once, 3% half size, 17-47%
JPEG/crop, 97% brightness). Untouched flowers: 1 group, a real duplicate (a greyscale edit of the same photo), so
0 false groups; untouched flowers_large: 28 groups, the ones inspected are edited copies or burst shots.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import runfiles as runfolder
from engine.core.fileio import thread_sqlite

log = logging.getLogger(__name__)

DUPLICATE_THRESHOLD = 0.95  # cosine alone: 0 false pairs on flowers, only same-scene pairs on flowers_large
HASH_BITS = 8  # perceptual-hash Hamming distance for a copy (98.5% of heavily altered copies are within it)
HASH_MIN_COSINE = 0.5  # ... if the embeddings agree at least this much (all altered copies measured >= .52)
MAX_HASH_GROUP = 8  # hash matches never make a group bigger than this (see near_duplicate_groups)
HASH_SCALES = (1.0, 0.9, 0.8)  # centred crops hashed per image, so a cropped copy matches its original's crop
# The L2 values the full grid of engine.learn.crossval picked on flowers (1e-3) and flowers_large (3e-3), with a step either
# side: 3 fits per fold instead of 7 (flowers_large: 1.5 s instead of 12 s on a busy 2-core machine).
CURATE_L2_GRID = (3e-4, 1e-3, 3e-3)
KNN_K = 10  # neighbours voting in knn_probabilities
OUTLIER_K = 5  # same-class neighbours for the "unlike its class" score
OUTLIER_Z = 4.0  # robust z-score (median/MAD within the class) above which an image is unlike its class
# cleanlab's label-quality score that orders the suspects (see label_issues for the measurement)
LABEL_ISSUE_RANKING = "normalized_margin"
STATS_VERSION = "curate-stats-4"  # bump when what image_stats computes changes

# Odd-image limits, on the image at <= 256 px (levels 0..255). Measured on flowers_large (3,461 photos): the brightest
# 1% (strongest channel) is >= 118 in every photo, the darkest 1% (luminance) <= 93 in 99% and <= 168 in all, the
# Laplacian variance >= 72; flowers darkened to 25% have their brightest 1% at 48-64, and blurred with sigma 1.5 px
# a Laplacian variance of 5-60 (median 23). So these flag no photo of flowers and one of flowers_large (a very pale
# tulip close-up).
DARK_P99 = 80.0  # underexposed: even the brightest 1% of pixels is darker than this (black backgrounds are fine)
BRIGHT_P01 = 160.0  # washed out: even the darkest 1% is brighter than this (white backgrounds are fine)
BLANK_STD = 6.0  # near-blank: no colour channel varies more than this
BLUR_LAPLACIAN_VAR = 40.0
EXTREME_ASPECT = 3.0


# ------------------------------------------------------------------------------------------------------------------
# near-duplicates
# ------------------------------------------------------------------------------------------------------------------
def _unit_rows(features: np.ndarray) -> np.ndarray:
    x = np.asarray(features, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:  # path compression
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _hash_words(hashes: np.ndarray) -> np.ndarray:
    """(n, S, B<=64) bool -> (n, S) uint64, so a Hamming distance is one XOR and a popcount."""
    h = np.asarray(hashes, bool)
    padded = np.zeros((h.shape[0], h.shape[1], 64), bool)
    padded[:, :, : h.shape[2]] = h
    return np.packbits(padded, axis=2).view(">u8")[:, :, 0].astype(np.uint64)


def _hash_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) smallest Hamming distance between one side's full-view hash and any crop hash of the other.

    a: (n, S), b: (m, S) uint64 words. Crop-vs-crop pairs are not compared: they would only add false matches.
    """
    best = None
    for i in range(a.shape[1]):
        for j in range(b.shape[1]):
            if i and j:
                continue
            d = np.bitwise_count(a[:, None, i] ^ b[None, :, j])
            best = d if best is None else np.minimum(best, d)
    return best


def duplicate_pairs(features: np.ndarray, hashes: np.ndarray | None = None, threshold: float | None = None,
                    chunk: int = 512) -> list[tuple[int, int, float, int]]:
    """(i, j, cosine, hash distance) with i < j for every pair the rule in the module docstring calls
    near-duplicates; the hash distance is -1 for pairs the cosine alone decides."""
    threshold = DUPLICATE_THRESHOLD if threshold is None else float(threshold)
    x = _unit_rows(features)
    n = len(x)
    words = valid = None
    if hashes is not None and n:
        words = _hash_words(hashes)
        valid = words.any(axis=1)  # an unreadable image has an all-zero hash: it must not match anything
    pairs: list[tuple[int, int, float, int]] = []
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        sims = x[start:stop] @ x.T
        strong = sims >= threshold
        dist = np.full(sims.shape, -1, np.int64)
        hit = strong.copy()
        if words is not None:
            d = _hash_distance(words[start:stop], words)
            close = (d <= HASH_BITS) & valid[start:stop, None] & valid[None, :] & (sims >= HASH_MIN_COSINE) & ~strong
            dist[close] = d[close]
            hit |= close
        rows, cols = np.nonzero(hit)
        keep = cols > start + rows
        pairs += [(start + r, c, float(sims[r, c]), int(dist[r, c]))
                  for r, c in zip(rows[keep].tolist(), cols[keep].tolist(), strict=True)]
    return pairs


def near_duplicate_groups(features: np.ndarray, shas: Sequence[str], threshold: float | None = None,
                          hashes: np.ndarray | None = None) -> np.ndarray:
    """A group id per row: exact SHA-256 copies and near-identical images share an id, singletons get their own.

    Ids are 0..G-1 in order of first appearance (deterministic for a given input order). `hashes` (from
    `image_stats`) adds the perceptual-hash rule; without it only SHA-256 and cosine >= threshold group rows.
    """
    n = len(shas)
    if len(features) != n:
        raise ValueError(f"{len(features)} feature rows but {n} file hashes")
    uf = _UnionFind(n)
    first_with_sha: dict[str, int] = {}
    for i, sha in enumerate(shas):
        if sha in first_with_sha:
            uf.union(first_with_sha[sha], i)
        else:
            first_with_sha[sha] = i
    if n:
        pairs = duplicate_pairs(features, hashes, threshold)
        for i, j, _, dist in pairs:
            if dist < 0:
                uf.union(i, j)
        # Hash matches join closest first and never grow a group past MAX_HASH_GROUP: pictures with one layout
        # (product shots, scans) can match pairwise and would otherwise chain a whole class into one "photo".
        size: dict[int, int] = {}
        for i in range(n):
            root = uf.find(i)
            size[root] = size.get(root, 0) + 1
        for i, j, _, _ in sorted((p for p in pairs if p[3] >= 0), key=lambda p: (p[3], -p[2])):
            ri, rj = uf.find(i), uf.find(j)
            if ri != rj and size[ri] + size[rj] <= MAX_HASH_GROUP:
                uf.union(ri, rj)
                size[uf.find(ri)] = size[ri] + size[rj]
    ids: dict[int, int] = {}
    return np.array([ids.setdefault(uf.find(i), len(ids)) for i in range(n)], np.int64)


def groups_to_lists(group_ids: np.ndarray) -> list[list[int]]:
    """Row indices of every group with more than one member, largest group first."""
    by_group: dict[int, list[int]] = {}
    for i, g in enumerate(np.asarray(group_ids).tolist()):
        by_group.setdefault(g, []).append(i)
    return sorted((m for m in by_group.values() if len(m) > 1), key=lambda m: (-len(m), m[0]))


# ------------------------------------------------------------------------------------------------------------------
# per-image statistics from one small decode (cached by SHA-256)
# ------------------------------------------------------------------------------------------------------------------
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


_HASH_BITS_PER_SCALE = 63


def _decode(path: str) -> np.ndarray | None:
    """The image as BGR uint8, small: JPEGs decode at 1/2 or 1/4 scale straight from the DCT (the statistics
    below need <= 256 px anyway)."""
    import cv2

    try:
        size = Path(path).stat().st_size
    except OSError:
        return None
    flag = cv2.IMREAD_REDUCED_COLOR_4 if size > 1_500_000 else cv2.IMREAD_REDUCED_COLOR_2
    img = cv2.imread(path, flag)
    if img is None:  # GIF, TIFF oddities, ...: the engine's own decoder
        try:
            from engine.data.images import load_image

            img = cv2.cvtColor(load_image(path), cv2.COLOR_RGB2BGR)
        except (ValueError, OSError):
            return None
    return img


def _stats_of(img: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
    import cv2

    h, w = img.shape[:2]
    aspect = max(h, w) / max(1, min(h, w))
    scale = 256.0 / max(h, w)
    small = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA) \
        if scale < 1 else img
    gray_small = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    blur = float(cv2.Laplacian(gray_small, cv2.CV_32F).var())
    # contrast in any channel: a green pattern on grey has little contrast in luminance, but is not blank
    contrast = float(small.reshape(-1, 3).std(axis=0).max())
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    bits = []
    for s in HASH_SCALES:
        ch, cw = max(1, round(h * s)), max(1, round(w * s))
        y, x = (h - ch) // 2, (w - cw) // 2
        crop = cv2.resize(gray[y:y + ch, x:x + cw].astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
        dct = cv2.dct(crop)[:8, :8].ravel()[1:]  # lowest frequencies without the DC term
        bits.append(dct > np.median(dct))
    # brightest pixels by their strongest channel (a deep red rose is dark in luminance, not underexposed);
    # darkest by luminance
    p99 = np.percentile(small.max(axis=2), 99)
    p01 = np.percentile(gray_small, 1)
    return np.array(bits), {"mean": float(gray_small.mean()), "p01": float(p01), "p99": float(p99), "std": contrast,
                            "blur": blur, "aspect": float(aspect)}


class _StatsCache:
    """SQLite table of per-image statistics keyed by SHA-256 (next to the embedding cache)."""

    def __init__(self, path: Path | None = None):
        from engine.features.backbones import cache_root

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
    """Perceptual hashes and brightness/contrast/blur/aspect per image (about 3,000 small JPEGs per second)."""
    n = len(paths)
    store = _StatsCache() if cache else None
    known = store.get_many(list(dict.fromkeys(shas))) if store else {}
    rows: list[dict] = []
    new: list[tuple[str, dict]] = []
    for path, sha in zip(paths, shas, strict=True):
        row = known.get(sha)
        if row is None:
            img = _decode(str(path))
            if img is None:
                row = {"ok": False}
            else:
                bits, values = _stats_of(img)
                row = {"ok": True, "hash": np.packbits(bits, axis=1).tobytes().hex(), **values}
                new.append((sha, row))  # unreadable ones are not cached: the file may be fixed in place
            known[sha] = row
        rows.append(row)
    if store and new:
        store.put_many(new)
    n_scales = len(HASH_SCALES)
    hashes = np.zeros((n, n_scales, _HASH_BITS_PER_SCALE), bool)
    for i, r in enumerate(rows):
        if r["ok"]:
            packed = np.frombuffer(bytes.fromhex(r["hash"]), np.uint8).reshape(n_scales, -1)
            hashes[i] = np.unpackbits(packed, axis=1)[:, :_HASH_BITS_PER_SCALE].astype(bool)

    def col(key: str, default: float) -> np.ndarray:
        return np.array([r.get(key, default) if r["ok"] else default for r in rows], np.float32)

    return ImageStats(hashes, col("mean", 128.0), col("p01", 0.0), col("p99", 255.0), col("std", 50.0),
                      col("blur", 1000.0), col("aspect", 1.0),
                      np.array([r["ok"] for r in rows], bool))


def image_hashes(paths: Sequence[str | Path], shas: Sequence[str]) -> np.ndarray:
    """Perceptual hashes for `near_duplicate_groups(..., hashes=)` (cached by SHA-256)."""
    return image_stats(paths, shas).hashes


# ------------------------------------------------------------------------------------------------------------------
# findings
# ------------------------------------------------------------------------------------------------------------------
@dataclass
class LabelIssue:
    index: int
    given: int
    suggested: int
    # (1 + best other class's probability - given label's probability) / 2, out-of-fold: above 0.5 another class
    # is more likely than the given one (higher: more suspicious)
    score: float
    p_suggested: float = 0.0


@dataclass
class Outlier:
    index: int
    reason: str  # "unlike its class" | "near-blank" | "very dark" | "very bright" | "blurry" | "extreme aspect" | ...
    score: float  # higher: more unusual; comparable within one reason


def suspect_probabilities(features: np.ndarray, labels: np.ndarray, n_classes: int, groups: np.ndarray | None,
                          seed: int = 42, l2: float | None = None) -> np.ndarray:
    """Class probabilities of every labelled row from models that did not see it (what cleanlab judges).

    Logistic regression out-of-fold (engine.learn.crossval) and k-NN votes make different mistakes; their mean ranks
    flipped labels better than either (flowers, 10% flipped: top-k recall .74-.76 logistic alone, .79 k-NN alone,
    .81 together; mixing weights .3-.5 and k 5-20 all within .77-.80, noise between seeds is +-.03).
    """
    from engine.learn.crossval import out_of_fold

    oof = out_of_fold(features, labels, n_classes, groups=groups, seed=seed, l2=l2, grid=CURATE_L2_GRID).probs
    return (oof + knn_probabilities(features, labels, n_classes, groups)) / 2


def label_issues(labels: np.ndarray, probs: np.ndarray, ranking: str = LABEL_ISSUE_RANKING) -> list[LabelIssue]:
    """Label-issue suspects from out-of-fold probabilities, most suspicious first.

    cleanlab decides how many (`find_label_issues`, prune_by_noise_rate) and ranks (`get_label_quality_scores`,
    normalized margin); the suspects are the top of that ranking over all images. Measured on flowers with 10% of
    the labels flipped (8 seeds, bench/bench_curate.py): top-k recall .83 (per seed .77-.93), .81 ranked by
    self-confidence, .79-.81 for find_label_issues' own list (self-confidence, normalized margin,
    confidence-weighted entropy): its filter drops some flipped images that rank high. Normalized margin beat
    self-confidence in every variant tried (10 folds, 3 fold seeds averaged, k-NN k=20, geometric mean: +.01-.03);
    10 folds gained another ~.005 for twice the out-of-fold time, not worth it on 3,500 images. Ranking everything
    without cleanlab's count reached .86 but then k must be known.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, np.int64)
    probs = np.asarray(probs, np.float64)
    if len(labels) == 0:
        return []
    present = np.flatnonzero(np.bincount(labels, minlength=probs.shape[1]) > 0)
    if len(present) < 2:
        return []
    # cleanlab needs every column to be a class with examples: drop empty classes and renormalise.
    remap = np.full(probs.shape[1], -1)
    remap[present] = np.arange(len(present))
    sub = probs[:, present]
    sub = sub / np.maximum(sub.sum(axis=1, keepdims=True), 1e-12)
    y = remap[labels]
    n_issues = int(np.sum(find_label_issues(y, sub, filter_by="prune_by_noise_rate", n_jobs=1)))
    quality = get_label_quality_scores(y, sub, method=ranking)
    out = []
    for i in np.argsort(quality, kind="stable")[:n_issues].tolist():
        p = probs[i].copy()
        given = int(labels[i])
        p[given] = -1.0
        sug = int(p.argmax())
        out.append(LabelIssue(i, given, sug, float(1.0 - quality[i]), float(probs[i, sug])))
    return out


def knn_probabilities(features: np.ndarray, labels: np.ndarray, n_classes: int, groups: np.ndarray | None = None,
                      k: int = KNN_K) -> np.ndarray:
    """Leave-one-out class probabilities from the k most similar other images (cosine-weighted votes).

    Neighbours in the same duplicate group are skipped: a copy carrying the same wrong label would vouch for it.
    """
    x = _unit_rows(features)
    labels = np.asarray(labels, np.int64)
    n = len(x)
    k = max(1, min(k, n - 1))
    out = np.full((n, n_classes), 1e-3, np.float32)  # a floor: no class is impossible
    for start in range(0, n, 1024):
        stop = min(n, start + 1024)
        s = x[start:stop] @ x.T
        s[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        if groups is not None:
            g = np.asarray(groups)
            s[g[start:stop, None] == g[None, :]] = -np.inf
        nb = np.argpartition(-s, k - 1, axis=1)[:, :k]
        w = np.maximum(np.take_along_axis(s, nb, axis=1), 0.0)
        rows = np.repeat(np.arange(stop - start), k)
        np.add.at(out[start:stop], (rows, labels[nb].ravel()), w.ravel())
    return out / out.sum(axis=1, keepdims=True)


def class_outlier_scores(features: np.ndarray, labels: np.ndarray, k: int = OUTLIER_K) -> tuple[np.ndarray,
                                                                                                 np.ndarray]:
    """Per image: mean cosine to its k nearest same-class neighbours, and that value's robust z-score within the
    class (how many MADs below the class median; high = unlike its class). Classes under k+2 images score 0."""
    x = _unit_rows(features)
    labels = np.asarray(labels)
    sim_k = np.ones(len(x), np.float32)
    z = np.zeros(len(x), np.float32)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < k + 2:
            continue
        xc = x[idx]
        s = xc @ xc.T
        np.fill_diagonal(s, -np.inf)
        top = -np.partition(-s, k - 1, axis=1)[:, :k]
        m = top.mean(axis=1)
        med = float(np.median(m))
        mad = float(np.median(np.abs(m - med))) * 1.4826 + 1e-6
        sim_k[idx] = m
        z[idx] = (med - m) / mad
    return sim_k, z


def odd_image_reasons(stats: ImageStats) -> list[list[tuple[str, float]]]:
    """(reason, score) pairs per image from absolute limits; scores > 0, larger is odder."""
    out: list[list[tuple[str, float]]] = []
    for i in range(len(stats.mean)):
        reasons: list[tuple[str, float]] = []
        if not stats.readable[i]:
            reasons.append(("unreadable", 10.0))
        else:
            p01, p99, std = float(stats.p01[i]), float(stats.p99[i]), float(stats.std[i])
            blur, aspect = float(stats.blur[i]), float(stats.aspect[i])
            if std < BLANK_STD:
                reasons.append(("near-blank", 1.0 + (BLANK_STD - std) / BLANK_STD))
            elif blur < BLUR_LAPLACIAN_VAR:
                reasons.append(("blurry", 1.0 + (BLUR_LAPLACIAN_VAR - blur) / BLUR_LAPLACIAN_VAR))
            if p99 < DARK_P99:
                reasons.append(("very dark", 1.0 + (DARK_P99 - p99) / DARK_P99))
            elif p01 > BRIGHT_P01:
                reasons.append(("very bright", 1.0 + (p01 - BRIGHT_P01) / (255.0 - BRIGHT_P01)))
            if aspect > EXTREME_ASPECT:
                reasons.append(("extreme aspect", aspect / EXTREME_ASPECT))
        out.append(reasons)
    return out


@dataclass
class Findings:
    """Everything curate found, indices into the rows it was given; each list most suspicious first."""

    label_issues: list[LabelIssue] = field(default_factory=list)
    duplicate_groups: list[list[int]] = field(default_factory=list)
    cross_class: list[bool] = field(default_factory=list)  # per duplicate group: spans several classes
    outliers: list[Outlier] = field(default_factory=list)
    group_ids: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)


def find_issues(features: np.ndarray, labels: np.ndarray, n_classes: int, shas: Sequence[str],
                stats: ImageStats | None = None, probs: np.ndarray | None = None, seed: int = 42,
                l2: float | None = None) -> Findings:
    """All findings for labelled rows. `probs` are out-of-fold probabilities (computed here when None)."""
    t = {}
    t0 = time.perf_counter()
    labels = np.asarray(labels, np.int64)
    groups = near_duplicate_groups(features, shas, hashes=None if stats is None else stats.hashes)
    t["duplicates_s"] = time.perf_counter() - t0
    found = Findings(group_ids=groups)
    found.duplicate_groups = groups_to_lists(groups)
    found.cross_class = [len(set(labels[m].tolist())) > 1 for m in found.duplicate_groups]
    # conflicts (one photo, two labels) first: they are certain mistakes
    order = sorted(range(len(found.duplicate_groups)), key=lambda g: (not found.cross_class[g], g))
    found.duplicate_groups = [found.duplicate_groups[g] for g in order]
    found.cross_class = [found.cross_class[g] for g in order]

    t1 = time.perf_counter()
    counts = np.bincount(labels, minlength=n_classes)
    if probs is None and (counts > 0).sum() >= 2 and len(labels) >= 4:
        probs = suspect_probabilities(features, labels, n_classes, groups, seed=seed, l2=l2)
    t["out_of_fold_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    if probs is not None:
        found.label_issues = label_issues(labels, probs)
    t["label_issues_s"] = time.perf_counter() - t2

    t3 = time.perf_counter()
    _, z = class_outlier_scores(features, labels)
    outliers = [Outlier(int(i), "unlike its class", float(z[i])) for i in np.flatnonzero(z > OUTLIER_Z)]
    if stats is not None:
        for i, reasons in enumerate(odd_image_reasons(stats)):
            outliers += [Outlier(i, r, s) for r, s in reasons]
    # odd images (absolute limits, score ~1-2) before class outliers (z >= 4): the former are near-certain
    found.outliers = sorted(outliers, key=lambda o: (o.reason == "unlike its class", -o.score))
    t["outliers_s"] = time.perf_counter() - t3
    found.timings = {k: round(v, 3) for k, v in t.items()}
    return found


# ------------------------------------------------------------------------------------------------------------------
# an image folder (the CLI)
# ------------------------------------------------------------------------------------------------------------------
def inspect_image_dir(image_dir: str | Path, backbone: str | None = None, center_crop: bool = False,
                      progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Findings for `<image_dir>/<class>/<image>` as the CLI's JSON object (paths as scanned)."""
    from engine.config.backbones import DEFAULT_BACKBONE
    from engine.data.dataset import scan_image_dir
    from engine.features import backbones
    from engine.features.embeddings import embed_files

    ds = scan_image_dir(image_dir, check_images=False, progress=progress)
    paths = [it.path for it in ds.items]
    shas = [it.sha256 or _sha(it.path) for it in ds.items]
    resolved = backbones.resolve(backbone or DEFAULT_BACKBONE)
    emb = embed_files(paths, shas, resolved, center_crop=center_crop, progress=progress)
    ok = emb.ok
    y = ds.y[ok]
    stats = image_stats([paths[i] for i in ok], [shas[i] for i in ok])
    found = find_issues(emb.features, y, len(ds.labels), [shas[i] for i in ok], stats)
    report = findings_json(found, [paths[i] for i in ok], ds.labels)
    report["outliers"] = ([{"path": paths[i], "reason": "unreadable", "score": 10.0} for i, _ in emb.failed]
                          + report["outliers"])
    report["skipped"] = [{"path": s.path, "reason": s.reason} for s in ds.skipped]
    return report


def add_inspect_args(parser) -> None:
    parser.add_argument("--image_dir", required=True, help="Folder with one subfolder of images per class.")
    parser.add_argument("--json", action="store_true", help="Print one JSON object: label_issues, "
                        "near_duplicates, outliers (each most suspicious first).")
    parser.add_argument("--tfhub_module", default=None, help="Backbone (default: efficientnet-lite0).")
    parser.add_argument("--center_crop", action="store_true", help="Embed as training with --center_crop does.")


def run_inspect(args) -> int:
    import sys

    from engine.data.dataset import DatasetError
    from engine.features.backbones import BackboneError

    try:
        report = inspect_image_dir(args.image_dir, backbone=args.tfhub_module, center_crop=args.center_crop)
    except (DatasetError, BackboneError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({k: report[k] for k in ("label_issues", "near_duplicates", "outliers")}))
    else:
        print_findings(report)
    return 0


def _sha(path: str) -> str:
    from engine.data.images import file_sha256

    return file_sha256(path)


def findings_json(found: Findings, paths: Sequence[str], class_names: Sequence[str]) -> dict[str, Any]:
    """The CLI's `--json` object: label_issues, near_duplicates, outliers, most suspicious first."""
    return {
        "label_issues": [{"path": str(paths[li.index]), "given": class_names[li.given],
                          "suggested": class_names[li.suggested], "score": round(li.score, 4)}
                         for li in found.label_issues],
        "near_duplicates": [[str(paths[i]) for i in g] for g in found.duplicate_groups],
        "outliers": [{"path": str(paths[o.index]), "reason": o.reason, "score": round(o.score, 3)}
                     for o in found.outliers],
    }


def print_findings(report: dict[str, Any], limit: int = 20) -> None:
    """Human-readable summary for the terminal (the CLI's default output)."""
    out = []
    li, nd, ol = report["label_issues"], report["near_duplicates"], report["outliers"]
    out.append(f"Label issues: {len(li)}")
    out += [f"  {r['score']:.3f}  {r['path']}  labelled {r['given']}, looks like {r['suggested']}" for r in li[:limit]]
    out.append(f"Near-duplicate groups: {len(nd)}")
    out += ["  " + "  |  ".join(g) for g in nd[:limit]]
    out.append(f"Outliers: {len(ol)}")
    out += [f"  {r['reason']:16s} {r['score']:.2f}  {r['path']}" for r in ol[:limit]]
    if any(len(x) > limit for x in (li, nd, ol)):
        out.append(f"(first {limit} of each; --json prints all)")
    print("\n".join(out))


# ------------------------------------------------------------------------------------------------------------------
# a project (the app): findings, decisions, inbox suggestions, the map
# ------------------------------------------------------------------------------------------------------------------
DECISIONS_FILE = "curate.json"


class Decisions:
    """What a person decided about findings ("keep": it is fine), so a kept suspect is not shown again.

    Stored as <project>/curate.json: {"kept": {"<kind>:<key>": {"at": time}}}. Kinds: label, outlier, duplicates
    (key: the sorted SHA-256s of the group, hashed, so a group that gains a member is shown again).
    """

    def __init__(self, project_path: str | Path):
        self.path = Path(project_path) / DECISIONS_FILE

    def _read(self) -> dict[str, Any]:
        from engine.core.fileio import read_json

        try:
            data = read_json(self.path)
        except (OSError, ValueError):
            return {"kept": {}}
        data.setdefault("kept", {})
        return data

    def kept(self) -> set[str]:
        return set(self._read()["kept"])

    def keep(self, kind: str, key: str) -> bool:
        from engine.core.fileio import atomic_write_json

        data = self._read()
        data["kept"][f"{kind}:{key}"] = {"at": time.time()}
        atomic_write_json(self.path, data)
        return True

    def forget_all(self) -> int:
        from engine.core.fileio import atomic_write_json

        data = self._read()
        n = len(data["kept"])
        data["kept"] = {}
        atomic_write_json(self.path, data)
        return n


def group_key(shas: Sequence[str]) -> str:
    return hashlib.sha256("".join(sorted(shas)).encode()).hexdigest()[:24]


@dataclass
class ProjectModel:
    """What a project's images are embedded with: the newest trained run's backbone, else the default."""

    handle: str
    image_size: int | None
    center_crop: bool
    run_dir: Path | None = None
    labels: list[str] = field(default_factory=list)


def newest_run(project) -> Path | None:
    """The newest run folder with a stored head (head.npz) and model card."""
    runs = [p.parent for p in Path(project.runs_dir).glob(f"*/{runfolder.HEAD}")
            if (p.parent / runfolder.MODEL_CARD).exists()]
    return max(runs, key=lambda p: (p / runfolder.HEAD).stat().st_mtime) if runs else None


def project_model(project) -> ProjectModel:
    from engine.config.backbones import DEFAULT_BACKBONE
    from engine.core.fileio import read_json

    run = newest_run(project)
    if run is None:
        return ProjectModel(DEFAULT_BACKBONE, None, False)
    card = read_json(run / runfolder.MODEL_CARD)
    bb = card.get("backbone") or {}
    cfg = card.get("config") or {}
    return ProjectModel(bb.get("handle") or DEFAULT_BACKBONE, bb.get("image_size"), bool(cfg.get("center_crop")),
                        run, list(card.get("labels") or []))


def load_head(run_dir: str | Path):
    """The trained head of a run folder (<run_dir>/head.npz: kernel, bias, temperature) as engine.learn.head.Head."""
    from engine.learn.head import Head

    path = Path(run_dir) / runfolder.HEAD
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: this run was trained before heads were stored; "
                                "train again to get suggestions.")
    return Head.load(path)


# Inbox suggestions use a temperature no lower than the `SUGGEST_T_QUANTILE` quantile of temperatures refitted on
# bootstrap resamples of the run's out-of-fold predictions (see suggestion_temperature for the measurement).
SUGGEST_T_QUANTILE = 0.9
SUGGEST_BOOTSTRAPS = 100
_suggest_t_cache: dict[tuple[str, int, float], float] = {}


def suggestion_temperature(temperature: float, oof_probs: np.ndarray, y: np.ndarray,
                           quantile: float = SUGGEST_T_QUANTILE, n_boot: int = SUGGEST_BOOTSTRAPS,
                           seed: int = 0) -> float:
    """The temperature for inbox suggestions: the head's, or higher where its out-of-fold sample is too small to
    trust it. `oof_probs` are the run's out-of-fold probabilities at `temperature` (metrics.json "predictions").

    Why: with 10 labelled photos per class the temperature is fitted on 50 out-of-fold predictions (~0.5-0.7, a
    sharpening), and the suggestions a person accepts in bulk are the top of the confidence range, where that
    estimate is least certain: on flowers_large (8 seeds) suggestions >= 0.9 were 95.7% correct while their mean
    confidence was 95-98%. The temperature refitted on bootstrap resamples of the out-of-fold rows spreads as wide
    as the sample is small; its 90th percentile makes the shown confidence mean what it says (>= 0.9: 97.5% correct,
    covering 36% instead of 46%; flowers 300: 98.3% -> 98.8%, covering 42% instead of 53%; 80th percentile 97.0%/
    39%, 95th 97.8%/33%). The price is caution: accepted suggestions now show 95.8% on average where 97.5% are
    right (before: 96.8% shown, 95.7% right); ECE over all suggestions .047 -> .047 on flowers_large, .059 -> .082 on
    flowers (already under-confident). With thousands of out-of-fold rows the spread, and so the change, is negligible.
    """
    from engine.learn import crossval

    p = np.asarray(oof_probs, np.float64)
    y = np.asarray(y, np.int64)
    if len(y) < 2 or p.ndim != 2:
        return float(temperature)
    # probabilities at temperature T are softmax(z / T): log p * T recovers z up to a per-row constant
    logits = np.log(np.clip(p, 1e-12, 1.0)) * float(temperature)
    rng = np.random.default_rng(seed)
    temps = [crossval.fit_temperature(logits[i], y[i]) for i in (rng.integers(0, len(y), len(y))
                                                                  for _ in range(n_boot))]
    return float(max(temperature, np.quantile(temps, quantile)))


def run_suggestion_temperature(run_dir: str | Path, head) -> float:
    """suggestion_temperature from a run folder's metrics.json (its out-of-fold or validation predictions);
    the head's own temperature when the run stored none. Cached per metrics file."""
    from engine.core.fileio import read_json

    path = Path(run_dir) / "metrics.json"
    try:
        key = (str(path), path.stat().st_mtime_ns, float(head.temperature))
    except OSError:
        return float(head.temperature)
    if key not in _suggest_t_cache:
        labels: list[str] = []
        try:
            metrics = read_json(path)
            labels = list(metrics.get("labels") or [])
            rows = [r for r in metrics.get("predictions") or []
                    if r.get("true") in labels and len(r.get("probs") or []) == len(labels)]
        except (OSError, ValueError, TypeError, AttributeError):
            rows = []
        if len(labels) != head.n_classes or not rows:
            t = float(head.temperature)
        else:
            t = suggestion_temperature(head.temperature, np.array([r["probs"] for r in rows]),
                                       np.array([labels.index(r["true"]) for r in rows]))
            log.info("run %s: suggestions use temperature %.3f (head %.3f, %d out-of-fold rows)", run_dir, t,
                     head.temperature, len(rows))
        _suggest_t_cache[key] = t
    return _suggest_t_cache[key]


def embed_records(records: Sequence, model: ProjectModel,
                  progress: Callable[[dict], None] | None = None) -> tuple[np.ndarray, list[int]]:
    """Features of project ImageRecords (cached by SHA-256; only new images are embedded) and the rows that worked."""
    from engine.features import backbones
    from engine.features.embeddings import embed_files

    if not records:
        return np.zeros((0, 0), np.float32), []
    resolved = backbones.resolve(model.handle, model.image_size)
    res = embed_files([str(r.path) for r in records], [r.sha256 for r in records], resolved,
                      center_crop=model.center_crop, progress=progress)
    return res.features, res.ok


@dataclass
class Suggestion:
    sha256: str
    class_name: str
    confidence: float


def inbox_suggestions(project, records: Sequence | None = None,
                      progress: Callable[[dict], None] | None = None) -> list[Suggestion]:
    """A suggested class and confidence for inbox images (all, or `records`) from the newest run's head; [] without
    a model. Features come from the embedding cache, so after a retrain only the head's matrix product runs again.
    Classes the model knows but the project no longer has are never suggested. Confidences use
    `run_suggestion_temperature` (cautious while the run's out-of-fold sample is small).
    """
    from engine.store.workspace import INBOX

    model = project_model(project)
    if model.run_dir is None:
        return []
    from engine.learn.head import Head

    head = load_head(model.run_dir)
    head = Head(head.kernel, head.bias, run_suggestion_temperature(model.run_dir, head))
    labels = model.labels
    if len(labels) != head.n_classes:
        log.warning("run %s: %d labels but the head has %d outputs", model.run_dir, len(labels), head.n_classes)
        return []
    records = list(project.images(INBOX) if records is None else records)
    current = set(project.classes())
    usable = np.array([lab in current for lab in labels])
    if not records or not usable.any():
        return []
    feats, ok = embed_records(records, model, progress)
    if not ok:
        return []
    probs = np.where(usable, head.probabilities(feats), 0.0)
    best = probs.argmax(axis=1)
    return [Suggestion(records[i].sha256, labels[int(best[row])], float(probs[row, best[row]]))
            for row, i in enumerate(ok)]


def order_suggestions(suggestions: Sequence[Suggestion], least_confident_first: bool = True) -> list[Suggestion]:
    """Least confident first teaches the model most per label (uncertainty sampling); most confident first is the
    quick way through the easy ones."""
    return sorted(suggestions, key=lambda s: s.confidence, reverse=not least_confident_first)


def accept_suggestions(project, suggestions: Sequence[Suggestion], min_confidence: float) -> int:
    """Move every inbox image whose suggestion is at least `min_confidence` into its suggested class; an image
    someone sorted meanwhile stays where they put it. Returns how many moved."""
    from engine.store.workspace import INBOX

    by_class: dict[str, list[str]] = {}
    for s in suggestions:
        if s.confidence >= min_confidence:
            by_class.setdefault(s.class_name, []).append(s.sha256)
    return sum(len(project.act(shas, cls, expected=dict.fromkeys(shas, INBOX)).changes)
               for cls, shas in by_class.items())


@dataclass
class ProjectFindings:
    """Findings of a project's labelled images, keyed by SHA-256 (what the Curate page shows)."""

    shas: list[str]
    classes: list[str]  # class name per row
    label_issues: list[dict]  # {"sha256", "given", "suggested", "score"}
    duplicates: list[dict]  # {"key", "shas", "classes", "cross_class"}
    outliers: list[dict]  # {"sha256", "class", "reason", "score"}
    timings: dict[str, float]
    n_failed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def project_findings(project, progress: Callable[[dict], None] | None = None,
                     hide_kept: bool = True) -> ProjectFindings:
    """Findings for every labelled image of a project; ones a person kept are left out."""
    t0 = time.perf_counter()
    records = [r for r in project.images() if r.class_name is not None]
    class_names = sorted({r.class_name for r in records})
    if len(records) < 2:
        return ProjectFindings([], [], [], [], [], {})
    model = project_model(project)
    feats, ok = embed_records(records, model, progress)
    recs = [records[i] for i in ok]
    shas = [r.sha256 for r in recs]
    y = np.array([class_names.index(r.class_name) for r in recs], np.int64)
    t1 = time.perf_counter()
    stats = image_stats([str(r.path) for r in recs], shas)
    t2 = time.perf_counter()
    found = find_issues(feats, y, len(class_names), shas, stats)
    kept = Decisions(project.path).kept() if hide_kept else set()
    issues = [{"sha256": shas[li.index], "given": class_names[li.given], "suggested": class_names[li.suggested],
               "score": li.score} for li in found.label_issues if f"label:{shas[li.index]}" not in kept]
    dups = []
    for members, cross in zip(found.duplicate_groups, found.cross_class, strict=True):
        g_shas = [shas[i] for i in members]
        key = group_key(g_shas)
        if f"duplicates:{key}" not in kept:
            dups.append({"key": key, "shas": g_shas, "classes": [recs[i].class_name for i in members],
                         "cross_class": cross})
    outliers = [{"sha256": shas[o.index], "class": recs[o.index].class_name, "reason": o.reason, "score": o.score}
                for o in found.outliers if f"outlier:{shas[o.index]}" not in kept]
    timings = {"embed_s": round(t1 - t0, 3), "stats_s": round(t2 - t1, 3), **found.timings,
               "total_s": round(time.perf_counter() - t0, 3)}
    return ProjectFindings(shas, [r.class_name for r in recs], issues, dups, outliers, timings,
                           len(records) - len(recs))


# ------------------------------------------------------------------------------------------------------------------
# the map
# ------------------------------------------------------------------------------------------------------------------
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
    from engine.core.fileio import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, shas=np.array(list(shas)), xy=xy)
    return xy
