"""Close pairs of rows without comparing every pair: the searches behind near-duplicate grouping
(engine.learn.groups) once a project is too large for all n^2 pairs.

Comparing every pair costs n^2 * D: 3,461 images take 0.3 s, 24,000 take ~17 s and 100,000 would take minutes
(issue 22). Two searches replace it there:

- Embeddings (cosine >= a high threshold): rows are split into ~sqrt(n) clusters (k-means on unit rows, seeded);
  a row is compared only with the members of the few clusters whose Voronoi cell lies within the pair distance of
  it (by the bisector bound, nearest first, at most MAX_PROBES). That is exact whenever no row has more than
  MAX_PROBES such cells; on flowers_large every pair at cosine >= .90 (66) and >= .95 (14) was found with 3 probes
  (59 of 66 with one); on 24,227 photos (7 altered copies of each flowers_large photo) 4 probes missed 1 of the
  4,822 pairs at >= .95 (cosine .959), 6 and 8 none. Cost ~ n^1.5 * D * MAX_PROBES.
- Perceptual hashes (Hamming distance <= r bits on 64-bit words): exact, by the pigeonhole principle. The word
  is cut into three blocks; two words within r bits agree within r // 3 bits on at least one block, so only rows
  whose block values lie that close are candidates (looked up in a table of block values), then checked in full.
"""

from __future__ import annotations

import itertools

import numpy as np

MAX_PROBES = 6  # clusters searched per row (module docstring: 6 found every pair on the 24k photo set)
KMEANS_ITERATIONS = 5  # the clusters only need to be compact, not optimal: the search stays correct either way
KMEANS_SAMPLE = 4096  # centroids are fitted on at most this many rows (assignment then covers all)
# nearest_neighbours (k-NN votes and class outliers in curation): all pairs up to EXACT_NEIGHBOURS_MAX rows, then
# the NEIGHBOUR_PROBES nearest clusters of each row. On bench/bench_scale.py's 24,227 rows: 10 s -> 1.5 s, 90.6% of
# the 10 exact neighbours found (4 probes: 85%, 8: 93.5% in 1.9 s), the majority class among them the same for
# 96.8% of the rows (8 probes: 97.5%).
EXACT_NEIGHBOURS_MAX = 4000
NEIGHBOUR_PROBES = 6
_BLOCKS = ((0, 22), (22, 43), (43, 64))  # bit ranges of a 64-bit hash word: three blocks for the pigeonhole


# ----------------------------------------------------------------------------------------------------------------
# Embeddings: cosine >= threshold
# ----------------------------------------------------------------------------------------------------------------
def blocked_cosine_pairs(x: np.ndarray, threshold: float, seed: int = 0) -> tuple[np.ndarray, ...]:
    """(i, j, cosine), i < j and in (i, j) order, for the pairs of unit rows at cosine >= threshold, found by
    searching each row's nearest clusters only (module docstring), not by comparing all pairs."""
    n = len(x)
    k = max(1, int(np.sqrt(n)))  # 24,227 rows: each compared with ~1,300 (4 clusters) instead of all
    centres = _kmeans(x, k, seed)
    home, probes = _probes(x, centres, np.sqrt(max(0.0, 2.0 - 2.0 * threshold)) + 1e-3)
    found = []
    for members, queries in zip(_by_cluster(home[:, None], k), _by_cluster(probes, k), strict=True):
        if not len(members) or not len(queries):
            continue
        sims = x[queries] @ x[members].T
        q, m = np.nonzero(sims >= threshold)
        a, b = queries[q], members[m]
        keep = a != b
        found.append((np.minimum(a, b)[keep], np.maximum(a, b)[keep], sims[q, m][keep]))
    i, j, cos = _ordered(found)
    first = np.r_[True, (i[1:] != i[:-1]) | (j[1:] != j[:-1])][: len(i)]  # a pair is found from both its rows
    return i[first], j[first], cos[first]


def nearest_neighbours(x: np.ndarray, k: int, groups: np.ndarray | None = None, seed: int = 0,
                       probes: int = NEIGHBOUR_PROBES) -> tuple[np.ndarray, np.ndarray]:
    """(indices, cosines), each (n, k), best first: for each unit row, its k most similar other rows outside its
    group (-1 / -inf where fewer exist). All pairs up to EXACT_NEIGHBOURS_MAX rows; above, each row searches its
    `probes` nearest clusters only (see blocked_cosine_pairs), which can miss a neighbour in a farther cluster."""
    n = len(x)
    g = np.arange(n) if groups is None else np.asarray(groups)
    best_i = np.full((n, k), -1, np.int64)
    best_s = np.full((n, k), -np.inf, np.float32)
    if n <= EXACT_NEIGHBOURS_MAX:
        for start in range(0, n, 1024):
            sims = x[start:start + 1024] @ x.T
            sims[g[start:start + 1024, None] == g[None, :]] = -np.inf  # a row is in its own group
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < n else np.broadcast_to(np.arange(n), sims.shape)
            best_i[start:start + 1024, :top.shape[1]] = top
            best_s[start:start + 1024, :top.shape[1]] = np.take_along_axis(sims, top, axis=1)
    else:
        n_clusters = max(1, int(np.sqrt(n)))
        home, near = _nearest_clusters(x, _kmeans(x, n_clusters, seed), probes)
        for members, queries in zip(_by_cluster(home[:, None], n_clusters), _by_cluster(near, n_clusters),
                                    strict=True):
            if len(members) and len(queries):
                _keep_best(best_i, best_s, queries, members, x[queries] @ x[members].T, g)
    order = np.argsort(-best_s, axis=1, kind="stable")
    best_i, best_s = np.take_along_axis(best_i, order, axis=1), np.take_along_axis(best_s, order, axis=1)
    best_i[~np.isfinite(best_s)] = -1
    return best_i, best_s


def _by_cluster(clusters: np.ndarray, n_clusters: int) -> list[np.ndarray]:
    """For each cluster 0..n_clusters-1, the rows with it among their (n, p) clusters (-1: none), ascending: one
    sort instead of a scan of every row per cluster."""
    rows = np.argsort(clusters.ravel(), kind="stable")
    bounds = np.searchsorted(clusters.ravel()[rows], np.arange(n_clusters + 1))
    return [np.sort(rows[a:b] // clusters.shape[1]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _keep_best(best_i: np.ndarray, best_s: np.ndarray, queries: np.ndarray, members: np.ndarray, sims: np.ndarray,
               groups: np.ndarray) -> None:
    """Merge the similarities of `queries` to `members` into each query's k best (itself and its group left out)."""
    sims[(queries[:, None] == members[None, :]) | (groups[queries][:, None] == groups[members][None, :])] = -np.inf
    k = best_i.shape[1]
    cand_i = np.concatenate([best_i[queries], np.broadcast_to(members, sims.shape)], axis=1)
    cand_s = np.concatenate([best_s[queries], sims], axis=1)
    top = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
    best_i[queries] = np.take_along_axis(cand_i, top, axis=1)
    best_s[queries] = np.take_along_axis(cand_s, top, axis=1)


def _nearest_clusters(x: np.ndarray, centres: np.ndarray, probes: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's cluster and its `probes` nearest clusters (its own among them)."""
    sq = (centres * centres).sum(axis=1)
    p = min(probes, len(centres))
    homes, nears = [], []
    for start in range(0, len(x), 8192):
        d2 = sq - 2.0 * (x[start:start + 8192] @ centres.T)  # |x - c|^2 - 1
        homes.append(np.argmin(d2, axis=1))
        nears.append(np.argpartition(d2, p - 1, axis=1)[:, :p])
    return np.concatenate(homes), np.concatenate(nears)


def _kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k centroids of the unit rows x (Lloyd's iterations on a seeded sample): deterministic for a seed."""
    rng = np.random.default_rng(seed)
    fit = x[np.sort(rng.choice(len(x), min(len(x), KMEANS_SAMPLE), replace=False))]
    centres = fit[rng.choice(len(fit), k, replace=False)].copy()
    for _ in range(KMEANS_ITERATIONS):
        home = np.argmin((centres * centres).sum(axis=1) - 2.0 * (fit @ centres.T), axis=1)
        counts = np.bincount(home, minlength=k)
        used = np.flatnonzero(counts)
        # the members' sums as one product with a 0/1 matrix: np.add.reduceat over rows took 40 ms per iteration
        sums = (np.arange(k)[used, None] == home[None, :]).astype(np.float32) @ fit
        centres[used] = sums / counts[used, None]
    return centres


def _probes(x: np.ndarray, centres: np.ndarray, radius: float, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Each row's cluster, and up to MAX_PROBES clusters (-1: none) whose members may lie within `radius` of it.

    A member y of cluster b is at least (|x-b|^2 - |x-a|^2) / (2|a-b|) from x (a: x's own centroid): the distance
    from x to the bisector of a and b, on whose far side y lies. Clusters beyond `radius` by that bound are skipped.
    """
    sq = (centres * centres).sum(axis=1)
    gap = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * centres @ centres.T, 1e-12))
    homes, probes = [], []
    for start in range(0, len(x), chunk):
        d2 = sq - 2.0 * (x[start:start + chunk] @ centres.T)  # |x - c|^2 - 1: the constant cancels below
        home = np.argmin(d2, axis=1)
        rows = np.arange(len(home))
        bound = (d2 - d2[rows, home][:, None]) / (2.0 * gap[home])
        bound[rows, home] = -1.0  # its own cluster first, always
        m = min(MAX_PROBES, len(centres))
        near = np.argpartition(bound, m - 1, axis=1)[:, :m]
        near = np.where(bound[rows[:, None], near] <= radius, near, -1)
        homes.append(home)
        probes.append(near)
    return np.concatenate(homes), np.concatenate(probes)


def _ordered(found: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """Concatenated (i, j, cosine) sorted by (i, j): the order of the all-pairs scan."""
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    i, j, cos = (np.concatenate(parts) for parts in zip(*found, strict=True))
    order = np.lexsort((j, i))
    return i[order].astype(np.int64), j[order].astype(np.int64), cos[order]


# ----------------------------------------------------------------------------------------------------------------
# Perceptual hashes: Hamming distance <= bits
# ----------------------------------------------------------------------------------------------------------------
def hash_candidates(full: np.ndarray, views: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(i, j), i != j: every row i whose `full` word is within `bits` of any of row j's `views` words (n, S), and
    some more (the caller checks the distance). Exact by the pigeonhole rule of the module docstring."""
    radius = bits // len(_BLOCKS)
    n, s = views.shape
    owner = np.repeat(np.arange(n), s)
    found_i, found_j = [], []
    for lo, hi in _BLOCKS:
        width = hi - lo
        keys = ((views.reshape(-1) >> np.uint64(lo)) & np.uint64((1 << width) - 1)).astype(np.int64)
        order = np.argsort(keys, kind="stable")
        counts = np.bincount(keys, minlength=1 << width)
        starts = np.cumsum(counts) - counts
        query = ((full >> np.uint64(lo)) & np.uint64((1 << width) - 1)).astype(np.int64)
        for mask in _masks(width, radius):
            q = query ^ mask
            hit = np.flatnonzero(counts[q])
            if not len(hit):
                continue
            reps = counts[q[hit]]
            rows = np.repeat(hit, reps)
            offsets = np.arange(len(rows)) - np.repeat(np.cumsum(reps) - reps, reps)
            found_i.append(rows)
            found_j.append(owner[order[starts[q[rows]] + offsets]])
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    i, j = np.concatenate(found_i), np.concatenate(found_j)
    return i[i != j], j[i != j]


def _masks(width: int, radius: int) -> list[int]:
    """Every bit pattern of `width` bits with at most `radius` bits set."""
    return [sum(1 << b for b in bits) for r in range(radius + 1) for bits in itertools.combinations(range(width), r)]
