"""Benchmark of the cross-validated head (issue 9): accuracy against a converged logistic regression, Lite0 vs
Lite2, calibration, and the time of cross-validation + L2 search + final fit.

    python bench/bench_cv.py                         # ../shared/datasets: flowers, text_nontext, flowers_large
    python bench/bench_cv.py --datasets flowers --backbones efficientnet-lite0 --splits 3

For each dataset and backbone (and the Lite0+Lite2 concatenation), over --splits random stratified 50/50 splits:
our head (engine.learn.train.fit_head: 5-fold CV chooses L2, temperature and threshold, then the head is fitted on the
whole training half) and scikit-learn's LogisticRegression (C=1, max_iter 5000, converged) are trained on one half
and scored on the other, both ways. The exported models compute exactly head.probabilities() on the backbone's
features (the temperature is baked into the weights), so the accuracy printed is the exported model's.
"floor" is the calibration error a perfectly calibrated model with the same confidences would show on the same
number of test images (sampling noise of the binned ECE): calibration is as good as it can be shown when "ECE cal"
is near it. Features come from the embedding cache (computed once when missing).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config.training import TrainConfig  # noqa: E402
from engine.data.dataset import scan_image_dir  # noqa: E402
from engine.learn import confidence, crossval  # noqa: E402
from engine.learn.groups import duplicate_groups  # noqa: E402
from engine.learn.train import fit_head  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def features_of(image_dir: Path, backbone: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from engine.features.backbones import resolve
    from engine.features.embeddings import EmbeddingStore, embed_files

    ds = scan_image_dir(image_dir, check_images=False)
    res = embed_files([it.path for it in ds.items], [it.sha256 for it in ds.items], resolve(backbone),
                      store=EmbeddingStore())
    keep = np.array(res.ok)
    return res.features, ds.y[keep], [ds.items[i].sha256 for i in keep]


def halves(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    a, b = train_test_split(np.arange(len(y)), test_size=0.5, stratify=y, random_state=seed)
    return np.sort(a), np.sort(b)


def compare(x: np.ndarray, y: np.ndarray, shas: list[str], splits: int) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression

    k = int(y.max()) + 1
    rows = []
    for seed in range(splits):
        a, b = halves(y, seed)
        for tr, te in ((a, b), (b, a)):
            groups = duplicate_groups(x[tr], [shas[i] for i in tr])
            fit = fit_head(x[tr], y[tr], k, TrainConfig(seed=seed), groups)
            probs = fit.head.probabilities(x[te])
            raw = crossval.softmax(x[te] @ fit.head.kernel + fit.head.bias)
            lr = LogisticRegression(max_iter=5000).fit(x[tr], y[tr])
            thr = fit.threshold["value"] or 0.0
            kept = probs.max(1) >= thr
            rows.append({
                "ours": float(np.mean(probs.argmax(1) == y[te])),
                "sklearn": float(np.mean(lr.predict(x[te]) == y[te])),
                "ece_before": confidence.expected_calibration_error(raw, y[te]),
                "ece_after": confidence.expected_calibration_error(probs, y[te]),
                "ece_sklearn": confidence.expected_calibration_error(lr.predict_proba(x[te]), y[te]),
                "ece_floor": ece_floor(probs, seed),
                "l2": fit.oof.l2, "temperature": fit.head.temperature,
                "threshold": thr, "held_out_precision": float(np.mean(probs.argmax(1)[kept] == y[te][kept]))
                if kept.any() else float("nan"), "held_out_coverage": float(kept.mean()),
            })
    return {key: float(np.nanmean([r[key] for r in rows])) for key in rows[0]} | {
        "ours_min": min(r["ours"] for r in rows), "sklearn_min": min(r["sklearn"] for r in rows),
        "l2_values": sorted({r["l2"] for r in rows})}


def ece_floor(probs: np.ndarray, seed: int, draws: int = 200) -> float:
    """The ECE a perfectly calibrated model with these confidences would show on this many images: each answer
    right with probability equal to its confidence (seeded draws). On a small test set the binned ECE cannot be
    expected below it (flowers' 150-image halves: ~0.055), whatever the calibration."""
    rng = np.random.default_rng(seed)
    conf, top = probs.max(axis=1), probs.argmax(axis=1)
    other = (top + 1) % probs.shape[1]
    return float(np.mean([confidence.expected_calibration_error(probs, np.where(rng.random(len(conf)) < conf, top,
                                                                                     other))
                          for _ in range(draws)]))


def timing(x: np.ndarray, y: np.ndarray, shas: list[str], n: int) -> tuple[float, float, float]:
    """Seconds for near-duplicate grouping, and for CV + L2 search + calibration + final fit, on n rows."""
    idx = np.random.default_rng(0).permutation(len(y))[:n]
    k = int(y.max()) + 1
    t0 = time.perf_counter()
    groups = duplicate_groups(x[idx], [shas[i] for i in idx])
    t1 = time.perf_counter()
    fit = fit_head(x[idx], y[idx], k, TrainConfig(), groups)
    return t1 - t0, time.perf_counter() - t1, fit.oof.l2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=str(SHARED))
    ap.add_argument("--datasets", default="flowers,text_nontext,flowers_large:efficientnet-lite0",
                    help="comma separated; name:bb1+bb2 overrides --backbones for that dataset")
    ap.add_argument("--backbones", default="efficientnet-lite0,efficientnet-lite2")
    ap.add_argument("--splits", type=int, default=5, help="random 50/50 splits (each scored both ways)")
    ap.add_argument("--timing_dataset", default="flowers_large")
    ap.add_argument("--timing_sizes", default="1000,3500")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = Path(args.root)

    print(f"{'dataset':14s} {'backbone':22s} {'ours':>6s} {'sklearn':>7s} {'ours-min':>8s} {'skl-min':>7s} "
          f"{'ECE raw':>7s} {'ECE cal':>7s} {'floor':>7s} {'ECE skl':>7s} {'T':>5s} {'thr':>5s} {'prec':>5s} "
          f"{'cover':>5s}  L2")
    for spec in [d for d in args.datasets.split(",") if d]:
        name, _, own = spec.partition(":")
        if not (root / name).is_dir():
            print(f"{name}: not found under {root}, skipped")
            continue
        feats = {}
        for bb in [b for b in (own.split("+") if own else args.backbones.split(",")) if b]:
            feats[bb] = features_of(root / name, bb)
        combos = [(bb, f) for bb, f in feats.items()]
        if len(feats) == 2:
            (_, (x0, y0, s0)), (_, (x1, _, _)) = feats.items()
            if len(x0) == len(x1):
                combos.append(("+".join(b.replace("efficientnet-", "") for b in feats), (np.hstack([x0, x1]), y0,
                                                                                          s0)))
        for bb, (x, y, shas) in combos:
            r = compare(x, y, shas, args.splits)
            print(f"{name:14s} {bb:22s} {r['ours']:6.3f} {r['sklearn']:7.3f} {r['ours_min']:8.3f} "
                  f"{r['sklearn_min']:7.3f} {r['ece_before']:7.3f} {r['ece_after']:7.3f} {r['ece_floor']:7.3f} "
                  f"{r['ece_sklearn']:7.3f} "
                  f"{r['temperature']:5.2f} {r['threshold']:5.2f} {r['held_out_precision']:5.3f} "
                  f"{r['held_out_coverage']:5.3f}  {','.join(f'{v:g}' for v in r['l2_values'])}", flush=True)

    if args.timing_dataset and (root / args.timing_dataset).is_dir():
        x, y, shas = features_of(root / args.timing_dataset, "efficientnet-lite0")
        for n in [int(v) for v in args.timing_sizes.split(",") if v]:
            n = min(n, len(y))
            group_s, fit_s, l2 = timing(x, y, shas, n)
            print(f"{args.timing_dataset} {n} cached Lite0 rows: near-duplicate groups {group_s:.2f} s, "
                  f"CV + L2 search + calibration + final fit {fit_s:.2f} s (L2 {l2:g})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
