"""Label issues: which labelled rows another class explains better, from features and labels alone.

Arrays in (features, integer labels, duplicate group ids), row indices out, as cleanlab's own API: the
probabilities it judges come from models that never saw the row (cross-validated logistic regression and k-NN
votes), so a wrong label cannot vouch for itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.learn.crossval import SEARCH_TOL, WarmStart, out_of_fold
from engine.learn.groups import unit_rows
from engine.learn.pairs import nearest_neighbours

# The L2 values the full grid of engine.learn.crossval picked on flowers (1e-3) and flowers_large (3e-3), with a step
# either side: 3 fits per fold instead of 7 (flowers_large: 1.5 s instead of 12 s on a busy 2-core machine).
CURATE_L2_GRID = (3e-4, 1e-3, 3e-3)
CURATE_FOLDS = 5  # folds of the out-of-fold probabilities (a big project's check keeps its last run's if as many)
KNN_K = 10  # neighbours voting in knn_probabilities
# cleanlab's label-quality score that orders the suspects (see label_issues for the measurement)
LABEL_ISSUE_RANKING = "normalized_margin"


@dataclass
class LabelIssue:
    index: int
    given: int
    suggested: int
    # (1 + best other class's probability - given label's probability) / 2, out-of-fold: above 0.5 another class
    # is more likely than the given one (higher: more suspicious)
    score: float
    p_suggested: float = 0.0


def suspect_probabilities(features: np.ndarray, labels: np.ndarray, n_classes: int, groups: np.ndarray | None,
                          seed: int = 42, l2: float | None = None, warm: WarmStart | None = None) -> np.ndarray:
    """Class probabilities of every labelled row from models that did not see it (what cleanlab judges).

    Logistic regression out-of-fold (engine.learn.crossval) and k-NN votes make different mistakes; their mean ranks
    flipped labels better than either (flowers, 10% flipped: top-k recall .74-.76 logistic alone, .79 k-NN alone,
    .81 together; mixing weights .3-.5 and k 5-20 all within .77-.80, noise between seeds is +-.03). `l2`: the
    trained run's L2, when it is known (no search); `warm`: that run's folds and fold heads (a large project).
    """
    # A ranking needs no more precision than an L2 search (SEARCH_TOL), even at a given L2
    oof = out_of_fold(features, labels, n_classes, groups=groups, n_folds=CURATE_FOLDS, seed=seed, l2=l2,
                      grid=CURATE_L2_GRID, tol=SEARCH_TOL, warm=warm).probs
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
    # cleanlab loads scikit-learn and pandas (1.2 s): only when suspects are ranked, not when a page imports this
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
    x = unit_rows(features)
    labels = np.asarray(labels, np.int64)
    n = len(x)
    out = np.full((n, n_classes), 1e-3, np.float32)  # a floor: no class is impossible
    nb, sims = nearest_neighbours(x, max(1, min(k, n - 1)), groups)
    found = nb >= 0
    rows = np.broadcast_to(np.arange(n)[:, None], nb.shape)
    np.add.at(out, (rows[found], labels[nb[found]]), np.maximum(sims[found], 0.0))
    return out / out.sum(axis=1, keepdims=True)
