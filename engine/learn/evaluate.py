"""What a run's predictions say: accuracy, per-class precision/recall/F1, the confusion matrix, one prediction per
image (what Review shows), and how much accuracy varies between cross-validation folds."""

from __future__ import annotations

from typing import Any

import numpy as np


def evaluate(probs: np.ndarray, y_true: np.ndarray, labels: list[str], paths: list[str],
             shas: list[str] | None = None, folds: np.ndarray | None = None) -> dict[str, Any]:
    """Accuracy, per-class report, confusion matrix and one prediction per image (sha256 is its key; path is for
    display; fold is the cross-validation fold that held it out, None on a plain validation split)."""
    if len(y_true) == 0:
        return {"labels": labels, "val_accuracy": None, "per_class": {}, "confusion_matrix": [], "predictions": []}
    pred = probs.argmax(1)
    # scikit-learn's definitions (zero_division=0), without importing it (seconds on a cold start)
    cm = np.zeros((len(labels), len(labels)), np.int64)
    np.add.at(cm, (np.asarray(y_true), pred), 1)
    tp, s, predicted = np.diag(cm).astype(float), cm.sum(axis=1), cm.sum(axis=0)
    p = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    r = np.divide(tp, s, out=np.zeros_like(tp), where=s > 0)
    f = np.divide(2 * p * r, p + r, out=np.zeros_like(tp), where=(p + r) > 0)
    per_class = {lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                 for i, lab in enumerate(labels)}
    shas = shas if shas is not None else [None] * len(y_true)
    folds_list = folds.tolist() if folds is not None else [None] * len(y_true)
    predictions = [{"path": path, "sha256": sha, "fold": fold, "true": labels[t], "predicted": labels[k],
                    "probability": float(pr[k]), "probs": [round(float(v), 6) for v in pr]}
                   for path, sha, fold, t, k, pr in zip(paths, shas, folds_list, y_true, pred, probs, strict=True)]
    return {"labels": labels, "val_accuracy": float(np.mean(pred == y_true)), "per_class": per_class,
            "confusion_matrix": cm.tolist(), "predictions": predictions}


def fold_spread(y_true: np.ndarray, pred: np.ndarray, folds: np.ndarray) -> dict[str, Any]:
    per_fold = [{"fold": int(f), "n": int((folds == f).sum()), "accuracy": float(np.mean(pred[folds == f]
                                                                                        == y_true[folds == f]))}
                for f in np.unique(folds)]
    accs = np.array([r["accuracy"] for r in per_fold])
    return {"folds": per_fold, "accuracy_std": float(accs.std(ddof=1)) if len(accs) > 1 else 0.0,
            "accuracy_min": float(accs.min()), "accuracy_max": float(accs.max())}
