"""How far to trust an answer: temperature scaling, calibration error and the "unknown" threshold, all measured on
out-of-fold predictions (engine.learn.crossval), so on images the judging head never saw."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from engine.learn.crossval import log_loss

ECE_BINS = 15
T_MIN, T_MAX = 0.25, 10.0  # temperatures outside this range say more about a tiny sample than about the model


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T minimising the log-loss of softmax(logits / T) (temperature scaling, Guo et al. 2017), in
    [T_MIN, T_MAX]; 1 when no prediction is wrong.

    Without a single mistake the log-loss keeps falling as T -> 0, which would make every answer "100% sure",
    new kinds of images included: there is nothing to calibrate against, so the head is left as fitted.
    """
    z = np.asarray(logits, np.float64)
    if len(y) == 0 or np.all(z.argmax(axis=1) == y):
        return 1.0
    res = minimize_scalar(lambda log_t: log_loss(z / np.exp(log_t), y), bounds=(np.log(T_MIN), np.log(T_MAX)),
                          method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE: |accuracy - confidence| averaged over equal-width confidence bins, weighted by bin size."""
    if len(y) == 0:
        return float("nan")
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def precision_coverage(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each distinct confidence t (ascending): precision and coverage of predictions with confidence >= t."""
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    order = np.argsort(-conf, kind="stable")
    conf_sorted, correct_sorted = conf[order], correct[order]
    n = len(conf)
    kept = np.arange(1, n + 1)
    precision = np.cumsum(correct_sorted) / kept
    # Ties: a threshold keeps all rows with the same confidence, so use the last row of each run of equal values.
    last = np.r_[conf_sorted[1:] != conf_sorted[:-1], True]
    t, p, c = conf_sorted[last], precision[last], kept[last] / n
    return t[::-1], p[::-1], c[::-1]


def choose_threshold(probs: np.ndarray, y: np.ndarray, target_precision: float = 0.95,
                     curve_points: int = 41) -> dict:
    """The lowest confidence threshold whose kept predictions reach target precision (so coverage is the largest).

    Returns {"value", "target_precision", "precision", "coverage", "reached", "curve": [{threshold, precision,
    coverage}]}. When no threshold reaches the target, the one with the best precision is returned, reached=False.
    """
    if len(y) == 0:
        return {"value": None, "target_precision": target_precision, "precision": None, "coverage": None,
                "reached": False, "curve": []}
    t, p, c = precision_coverage(probs, y)
    ok = np.flatnonzero(p >= target_precision)
    reached = bool(len(ok))
    i = int(ok[0]) if reached else int(np.argmax(p))  # argmax: the first best, i.e. the most coverage
    # A threshold equal to the lowest confidence accepts everything; report 0 there so "all kept" reads clearly.
    value = 0.0 if i == 0 and reached else float(t[i])
    curve_t = np.linspace(0.0, 1.0, curve_points)
    curve = []
    for thr in curve_t:
        j = np.searchsorted(t, thr, side="left")  # first distinct confidence >= thr
        if j >= len(t):
            curve.append({"threshold": round(float(thr), 4), "precision": None, "coverage": 0.0})
        else:
            curve.append({"threshold": round(float(thr), 4), "precision": round(float(p[j]), 4),
                          "coverage": round(float(c[j]), 4)})
    return {"value": round(value, 6), "target_precision": float(target_precision), "precision": float(p[i]),
            "coverage": float(c[i]), "reached": reached, "curve": curve}
