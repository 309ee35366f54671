"""Which images must share a cross-validation fold: exact copies and near-duplicates, as group ids.

A copy in the training folds and its original in the held-out fold would make cross-validation judge the head on
an image it has seen, so every group below lands in one fold (engine.learn.crossval.assign_folds); curation shows
the same groups as duplicates, a group spanning classes as a label conflict. Inputs are arrays (features, SHA-256s,
perceptual hashes from engine.features.image_stats), outputs group ids per row.

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
Without hashes (`near_duplicate_groups(features, shas)`) only the first two apply.

Result (bench/bench_curate.py, 30 copies with all four alterations at once, and with each alone): 100% grouped with
their original in flowers and in flowers_large (embedding-only rule: 0% for all four at once, 3% half size, 17-47%
JPEG/crop, 97% brightness). Untouched flowers: 1 group, a real duplicate (a greyscale edit of the same photo), so
0 false groups; untouched flowers_large: 31 groups (28 before the hashes were measured on the features' decode at
<= 256 px: the new ones are two burst shots and one more pair of dandelion clocks), the ones inspected are edited
copies or burst shots.

That rule is for cross-validation, where a false pair costs nothing (two look-alikes share a fold). Curation offers
to trash all but one of a group, so `copy_groups` asks more of a hash match and never links through a third image.
Every pair the loose rule finds on flowers_large was judged by eye: the 4 that are different photos (dandelion
clocks, round and centred, whose hashes agree) are hash matches at 6-8 bits with cosine .54-.69; the 15 hash
matches that are edits of one photo (colour grading, greyscale, crops) are within 4 bits (cosine down to .57) or
have cosine >= .83. Hence COPY_HASH_BITS (4) at the cosine floor, and COPY_MIN_COSINE (.8) from 5 to 8 bits.

Above ALL_PAIRS_MAX images the pairs are searched instead of all compared (engine.learn.pairs; issue 22): the
hash rule exactly, the cosine rule by a cluster search that found every pair all-pairs found on flowers_large
(both rules, 33 pairs; embeddings alone, 14), on 24,227 photos (7 altered copies of each flowers_large photo:
10,515 pairs, ~4.5 s instead of 45.7 s) and on a 24,227-row feature set (67,248 pairs; bench/bench_scale.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from engine.learn.pairs import blocked_cosine_pairs, hash_candidates

log = logging.getLogger(__name__)

DUPLICATE_THRESHOLD = 0.95  # cosine alone: 0 false pairs on flowers, only same-scene pairs on flowers_large
HASH_BITS = 8  # perceptual-hash Hamming distance for a copy (98.5% of heavily altered copies are within it)
HASH_MIN_COSINE = 0.5  # ... if the embeddings agree at least this much (all altered copies measured >= .52)
MAX_HASH_GROUP = 8  # hash matches never make a group bigger than this (see near_duplicate_groups)
COPY_HASH_BITS = 4  # copy_groups: a hash match this close is a copy at the cosine floor ...
COPY_MIN_COSINE = 0.8  # ... one up to HASH_BITS apart needs this cosine too
ALL_PAIRS_MAX = 4096  # up to this many images every pair is compared (0.3 s at 3,461); above, searched (pairs.py)


def unit_rows(features: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1, so a matrix product of two of them is their cosine (what every similarity here,
    and in curation, compares)."""
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
    """Smallest Hamming distance between one side's full-view hash and any crop hash of the other.

    a, b: uint64 words (..., S) that broadcast: (n, 1, S) against (1, m, S) gives every pair (n, m); (p, S) against
    (p, S) gives p pairs. Crop-vs-crop pairs are not compared: they would only add false matches.
    """
    best = None
    for s in range(a.shape[-1]):
        for d in (np.bitwise_count(a[..., 0] ^ b[..., s]), np.bitwise_count(a[..., s] ^ b[..., 0])):
            best = d if best is None else np.minimum(best, d)
    return best


def duplicate_pairs(features: np.ndarray, hashes: np.ndarray | None = None, threshold: float | None = None,
                    chunk: int = 512, all_pairs_max: int | None = None) -> list[tuple[int, int, float, int]]:
    """(i, j, cosine, hash distance) with i < j for every pair the rule in the module docstring calls
    near-duplicates, in (i, j) order; the hash distance is -1 for pairs the cosine alone decides.

    Up to `all_pairs_max` rows every pair is compared; above, engine.learn.pairs searches for them (issue 22:
    all pairs of 24,000 images took ~17 s of every retrain)."""
    threshold = DUPLICATE_THRESHOLD if threshold is None else float(threshold)
    x = unit_rows(features)
    n = len(x)
    words = valid = None
    if hashes is not None and n:
        words = _hash_words(hashes)
        valid = words.any(axis=1)  # an unreadable image has an all-zero hash: it must not match anything
    if n > (ALL_PAIRS_MAX if all_pairs_max is None else all_pairs_max):
        return _searched_pairs(x, words, valid, threshold)
    pairs: list[tuple[int, int, float, int]] = []
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        sims = x[start:stop] @ x.T
        strong = sims >= threshold
        dist = np.full(sims.shape, -1, np.int64)
        hit = strong.copy()
        if words is not None:
            d = _hash_distance(words[start:stop, None], words[None])
            close = (d <= HASH_BITS) & valid[start:stop, None] & valid[None, :] & (sims >= HASH_MIN_COSINE) & ~strong
            dist[close] = d[close]
            hit |= close
        rows, cols = np.nonzero(hit)
        keep = cols > start + rows
        pairs += [(start + r, c, float(sims[r, c]), int(dist[r, c]))
                  for r, c in zip(rows[keep].tolist(), cols[keep].tolist(), strict=True)]
    return pairs


def _searched_pairs(x: np.ndarray, words: np.ndarray | None, valid: np.ndarray | None,
                    threshold: float) -> list[tuple[int, int, float, int]]:
    """duplicate_pairs without comparing all pairs: the same rule on the pairs the two searches of
    engine.learn.pairs return (exact for hashes; for embeddings, see MAX_PROBES there)."""
    i, j, cos = blocked_cosine_pairs(x, threshold)
    found = {(a, b): (c, -1) for a, b, c in zip(i.tolist(), j.tolist(), cos.tolist(), strict=True)}
    if words is not None:
        a, b, dist = _close_hashes(words, valid)
        cos = _row_cosines(x, a, b)
        for p, q, c, d in zip(a.tolist(), b.tolist(), cos.tolist(), dist.tolist(), strict=True):
            if c >= threshold:  # a pair the embedding search missed (it never misses one the hashes find)
                found.setdefault((p, q), (c, -1))
            elif c >= HASH_MIN_COSINE:
                found[(p, q)] = (c, d)
    return [(p, q, float(c), int(d)) for (p, q), (c, d) in sorted(found.items())]


def _close_hashes(words: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, distance), i < j, for the valid rows whose hashes are within HASH_BITS (as _hash_distance counts)."""
    rows = np.flatnonzero(valid)
    ci, cj = hash_candidates(words[rows, 0], words[rows], HASH_BITS)
    n = len(words)
    key = np.unique(rows[np.minimum(ci, cj)] * n + rows[np.maximum(ci, cj)])
    a, b = key // n, key % n
    dist = _hash_distance(words[a], words[b]).astype(np.int64)
    keep = dist <= HASH_BITS
    return a[keep], b[keep], dist[keep]


def _row_cosines(x: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """The cosine of rows a[k] and b[k] of unit rows x, for each k."""
    return np.concatenate([np.einsum("ij,ij->i", x[a[s:s + chunk]], x[b[s:s + chunk]])
                           for s in range(0, len(a), chunk)] or [np.zeros(0, np.float32)])


def near_duplicate_groups(features: np.ndarray, shas: Sequence[str], threshold: float | None = None,
                          hashes: np.ndarray | None = None, pairs: list | None = None) -> np.ndarray:
    """A group id per row: exact SHA-256 copies and near-identical images share an id, singletons get their own.

    Ids are 0..G-1 in order of first appearance (deterministic for a given input order). `hashes` (from
    `engine.features.image_stats`) adds the perceptual-hash rule; without it only SHA-256 and cosine >= threshold
    group rows. `pairs`: duplicate_pairs(features, hashes, threshold) when the caller has them already.
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
        pairs = duplicate_pairs(features, hashes, threshold) if pairs is None else pairs
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


def copy_groups(features: np.ndarray, shas: Sequence[str], threshold: float | None = None,
                hashes: np.ndarray | None = None, pairs: list | None = None) -> np.ndarray:
    """Group ids where every two members of a group are copies of each other by the rule above, not merely linked
    through a third image: what curation offers to thin out ("keep one, trash the rest"), so a photo that only
    resembles one copy of a pair is never trashed with it. Cross-validation keeps the looser near_duplicate_groups:
    there a chain of look-alikes (burst shots) is better held out together.

    A hash match counts only within COPY_HASH_BITS, or up to HASH_BITS at COPY_MIN_COSINE (see the module
    docstring). Complete linkage, strongest evidence first: identical files, then near-identical embeddings
    (highest cosine first), then hash matches (fewest differing bits first); two groups merge only when every pair
    across them is a copy pair. `pairs`: as near_duplicate_groups'."""
    n = len(shas)
    if len(features) != n:
        raise ValueError(f"{len(features)} feature rows but {n} file hashes")
    if pairs is None:
        pairs = duplicate_pairs(features, hashes, threshold) if n else []
    pairs = [p for p in pairs if p[3] < 0 or p[3] <= COPY_HASH_BITS or p[2] >= COPY_MIN_COSINE]
    by_sha: dict[str, list[int]] = {}
    for i, sha in enumerate(shas):
        by_sha.setdefault(sha, []).append(i)
    exact = [(a, b) for rows in by_sha.values() for k, a in enumerate(rows) for b in rows[k + 1:]]
    linked = set(exact) | {(i, j) for i, j, _, _ in pairs}
    order = exact + [(i, j) for i, j, _, _ in sorted(pairs, key=lambda p: (p[3] >= 0, p[3], -p[2]))]
    group = list(range(n))
    members: dict[int, list[int]] = {i: [i] for i in range(n)}
    for i, j in order:
        gi, gj = group[i], group[j]
        if gi == gj or not all((min(a, b), max(a, b)) in linked for a in members[gi] for b in members[gj]):
            continue
        keep, gone = min(gi, gj), max(gi, gj)
        moved = members.pop(gone)
        for m in moved:
            group[m] = keep
        members[keep] += moved
    ids: dict[int, int] = {}
    return np.array([ids.setdefault(g, len(ids)) for g in group], np.int64)


def groups_to_lists(group_ids: np.ndarray) -> list[list[int]]:
    """Row indices of every group with more than one member, largest group first."""
    by_group: dict[int, list[int]] = {}
    for i, g in enumerate(np.asarray(group_ids).tolist()):
        by_group.setdefault(g, []).append(i)
    return sorted((m for m in by_group.values() if len(m) > 1), key=lambda m: (-len(m), m[0]))


def exact_groups(shas: Sequence[str]) -> np.ndarray:
    """Group ids from SHA-256 alone (identical files share an id): the fallback when near-duplicate groups are too
    large to keep together."""
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(s, len(ids)) for s in shas], np.int64)


def duplicate_groups(features: np.ndarray, shas: Sequence[str]) -> np.ndarray:
    """The group ids of `fold_groups` for 5 folds, without the report."""
    return fold_groups(features, shas)[0]


def fold_groups(features: np.ndarray, shas: Sequence[str], n_folds: int = 5,
                hashes: np.ndarray | None = None, pairs: list | None = None) -> tuple[np.ndarray, str]:
    """Groups that must not be split across folds, and how they were made (for the report).

    Near-duplicates when usable (`pairs`: duplicate_pairs(features, hashes) when the caller has them). On images
    the backbone cannot tell apart (noise, blank frames) near-duplicate chains can swallow most of the set; a group
    larger than a fold would leave folds without it, so then only exact copies are kept together.
    """
    # Perceptual hashes (when given) also join shrunk, cropped and recompressed copies that embeddings alone miss.
    groups = np.asarray(near_duplicate_groups(features, list(shas), hashes=hashes, pairs=pairs), np.int64)
    n = len(groups)
    if n and np.bincount(groups).max() > max(1, n // max(2, n_folds)):
        log.warning("Near-duplicate groups are too large for %d folds (largest: %d of %d images); keeping only "
                    "exact copies together", n_folds, int(np.bincount(groups).max()), n)
        return exact_groups(shas), "exact copies (SHA-256); near-duplicate groups were larger than a fold"
    return groups, "exact copies and near-duplicates"
