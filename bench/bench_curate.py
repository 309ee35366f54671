"""Curate targets (issue 10) on the shared photo sets, seeded; prints numbers, asserts nothing.

    python bench/bench_curate.py [--data ../shared/datasets] [--seeds 3]

1. Flip 10% of the labels of flowers (300): recall of the flipped images in the top-k label-issue suspects
   (k = number of flips), for cleanlab's rankings.
2. 30 altered copies (JPEG q40, half size, 90% centre crop, +15% brightness; each in a random class): share grouped
   with their original, and false groups on the untouched set; also each alteration alone.
3. Inbox: 10 labelled photos per class, the rest unsorted: precision and coverage of suggestions >= 0.9 (with the
   suggestion temperature, engine.curate.suggestions.suggestion_temperature, and with the head's own for comparison).
4. Timings on flowers_large (3,461 images, cached embeddings): all findings, the map (PCA, t-SNE).
Embeddings come from the shared cache (engine.features.embeddings), so the first run embeds ~3,800 images once.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.curate.findings import find_issues  # noqa: E402
from engine.curate.label_issues import label_issues, suspect_probabilities  # noqa: E402
from engine.curate.map import MAP_METHODS, project_2d  # noqa: E402
from engine.curate.outliers import class_outlier_scores  # noqa: E402
from engine.curate.suggestions import suggestion_temperature  # noqa: E402
from engine.features.image_stats import image_stats  # noqa: E402
from engine.learn.groups import groups_to_lists, near_duplicate_groups  # noqa: E402

ALTERATIONS = ("jpeg40", "half", "crop90", "bright15")


def alter(path: str | Path, kinds: tuple[str, ...] = ALTERATIONS) -> bytes:
    """An altered copy of a photo as JPEG bytes (90% centre crop, then half size, then +15% brightness, then q40)."""
    from PIL import Image, ImageEnhance

    im = Image.open(path).convert("RGB")
    if "crop90" in kinds:
        w, h = im.size
        dw, dh = round(w * 0.05), round(h * 0.05)
        im = im.crop((dw, dh, w - dw, h - dh))
    if "half" in kinds:
        im = im.resize((max(1, im.width // 2), max(1, im.height // 2)), Image.LANCZOS)
    if "bright15" in kinds:
        im = ImageEnhance.Brightness(im).enhance(1.15)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=40 if "jpeg40" in kinds else 90)
    return buf.getvalue()


def load_set(root: Path):
    from engine.data.dataset import scan_image_dir
    from engine.data.images import file_sha256
    from engine.features import backbones
    from engine.features.embeddings import embed_files

    ds = scan_image_dir(root, check_images=False)
    paths = [it.path for it in ds.items]
    shas = [it.sha256 or file_sha256(it.path) for it in ds.items]
    emb = embed_files(paths, shas, backbones.resolve("efficientnet-lite0"))
    assert len(emb.ok) == len(paths), "unreadable images in the benchmark set"
    return ds, paths, shas, emb.features


def embed_paths(paths: list[str]) -> tuple[list[str], np.ndarray]:
    from engine.data.images import file_sha256
    from engine.features import backbones
    from engine.features.embeddings import embed_files

    shas = [file_sha256(p) for p in paths]
    return shas, embed_files(paths, shas, backbones.resolve("efficientnet-lite0")).features


# ------------------------------------------------------------------------------------------------------------------
def bench_flips(root: Path, seeds: int) -> None:
    from cleanlab.filter import find_label_issues

    from engine.learn.crossval import out_of_fold

    ds, paths, shas, x = load_set(root)
    y0, k_cls = ds.y, len(ds.labels)
    stats = image_stats(paths, shas)
    groups = near_duplicate_groups(x, shas, hashes=stats.hashes)
    rankings = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")
    rec: dict[str, list[float]] = {r: [] for r in rankings}
    rec_curate, rec_outlier, rec_oof, n_flagged, secs = [], [], [], [], []
    rec_sc: list[float] = []  # curate's list ordered by self-confidence (the ranking before normalized margin)
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        n_flip = round(0.1 * len(y0))
        flipped = rng.choice(len(y0), n_flip, replace=False)
        y = y0.copy()
        y[flipped] = (y[flipped] + rng.integers(1, k_cls, n_flip)) % k_cls  # always a different class
        t0 = time.perf_counter()
        probs = suspect_probabilities(x, y, k_cls, groups)
        oof_only = out_of_fold(x, y, k_cls, groups=groups, seed=42, l2=1e-3).probs
        issues = label_issues(y, probs)
        secs.append(time.perf_counter() - t0)
        n_flagged.append(len(issues))
        rec_curate.append(len({li.index for li in issues[:n_flip]} & set(flipped.tolist())) / n_flip)
        issues_sc = label_issues(y, probs, ranking="self_confidence")
        rec_sc.append(len({li.index for li in issues_sc[:n_flip]} & set(flipped.tolist())) / n_flip)
        for r in rankings:
            idx = find_label_issues(y, probs, return_indices_ranked_by=r, n_jobs=1)[:n_flip]
            rec[r].append(len(set(idx.tolist()) & set(flipped.tolist())) / n_flip)
        idx = find_label_issues(y, oof_only, return_indices_ranked_by="self_confidence", n_jobs=1)[:n_flip]
        rec_oof.append(len(set(idx.tolist()) & set(flipped.tolist())) / n_flip)
        _, z = class_outlier_scores(x, y)
        top = np.argsort(-z)[:n_flip]
        rec_outlier.append(len(set(top.tolist()) & set(flipped.tolist())) / n_flip)
    print(f"\n[1] {root.name}: flip 10% of {len(y0)} labels ({round(0.1 * len(y0))}), {seeds} seeds")
    print(f"    top-k recall of curate's suspects (engine.curate.label_issues): {np.mean(rec_curate):.3f}  "
          f"(per seed {np.round(rec_curate, 3)}); ranked by self-confidence {np.mean(rec_sc):.3f}")
    for r in rankings:
        print(f"    top-k recall, find_label_issues ranked by {r:28s}: {np.mean(rec[r]):.3f}  "
              f"(per seed {np.round(rec[r], 3)})")
    print(f"    for comparison, logistic out-of-fold alone (self_confidence): {np.mean(rec_oof):.3f}")
    print(f"    for comparison, top-k of the class-outlier score:         {np.mean(rec_outlier):.3f}")
    print(f"    suspects listed: {np.mean(n_flagged):.1f}; out-of-fold + k-NN + cleanlab "
          f"{np.mean(secs):.2f} s")


# ------------------------------------------------------------------------------------------------------------------
def bench_copies(root: Path, n_copies: int = 30, seed: int = 0) -> None:
    ds, paths, shas, x = load_set(root)
    stats = image_stats(paths, shas)
    untouched = near_duplicate_groups(x, shas, hashes=stats.hashes)
    false_groups = groups_to_lists(untouched)
    emb_only = groups_to_lists(near_duplicate_groups(x, shas))
    print(f"\n[2] {root.name}: {n_copies} altered copies each; untouched set: {len(false_groups)} groups "
          f"(embedding-only rule: {len(emb_only)})")
    rng = np.random.default_rng(seed)
    originals = rng.choice(len(paths), n_copies, replace=False)
    with tempfile.TemporaryDirectory() as tmp:
        for kinds in [ALTERATIONS, *((k,) for k in ALTERATIONS)]:
            copy_paths = []
            for n, i in enumerate(originals):
                p = Path(tmp) / f"{'+'.join(kinds)}-{n}.jpg"
                p.write_bytes(alter(paths[i], kinds))
                copy_paths.append(str(p))
            c_shas, c_x = embed_paths(copy_paths)
            c_stats = image_stats(copy_paths, c_shas, cache=False)
            all_x = np.vstack([x, c_x])
            all_h = np.concatenate([stats.hashes, c_stats.hashes])
            t0 = time.perf_counter()
            g = near_duplicate_groups(all_x, shas + c_shas, hashes=all_h)
            secs = time.perf_counter() - t0
            ge = near_duplicate_groups(all_x, shas + c_shas)
            n0 = len(paths)
            hit = np.mean([g[n0 + c] == g[o] for c, o in enumerate(originals)])
            hit_e = np.mean([ge[n0 + c] == ge[o] for c, o in enumerate(originals)])
            print(f"    {'+'.join(kinds):28s}: grouped with original {hit:.3f} (embedding only {hit_e:.3f}); "
                  f"grouping {len(all_x)} rows {secs:.2f} s")


# ------------------------------------------------------------------------------------------------------------------
def bench_inbox(root: Path, per_class: int = 10, seeds: int = 3, threshold: float = 0.9) -> None:
    from engine.config.training import TrainConfig
    from engine.learn.train import fit_head

    ds, paths, shas, x = load_set(root)
    y = ds.y
    k = len(ds.labels)
    from engine.learn import confidence, crossval
    from engine.learn.head import Head

    kinds = ("suggestions", "head alone")
    prec: dict[str, list[float]] = {kind: [] for kind in kinds}
    cover: dict[str, list[float]] = {kind: [] for kind in kinds}
    n_acc: dict[str, list[int]] = {kind: [] for kind in kinds}
    shown: dict[str, list[float]] = {kind: [] for kind in kinds}  # mean confidence of the accepted ones
    ece: dict[str, list[float]] = {kind: [] for kind in kinds}  # calibration over the whole inbox
    temps = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        labelled = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in range(k)])
        inbox = np.setdiff1d(np.arange(len(y)), labelled)
        fit = fit_head(x[labelled], y[labelled], k, TrainConfig(seed=seed))
        head = fit.head
        # what metrics.json stores as "predictions": out-of-fold probabilities at the head's temperature
        oof_probs = np.round(crossval.softmax(fit.oof.logits / head.temperature), 6)
        t = suggestion_temperature(head.temperature, oof_probs, y[labelled])
        temps.append((head.temperature, t))
        for kind, h in zip(kinds, (Head(head.kernel, head.bias, t), head), strict=True):
            probs = h.probabilities(x[inbox])
            conf, pred = probs.max(1), probs.argmax(1)
            take = conf >= threshold
            n_acc[kind].append(int(take.sum()))
            prec[kind].append(float(np.mean(pred[take] == y[inbox][take])) if take.any() else float("nan"))
            cover[kind].append(float(take.mean()))
            shown[kind].append(float(conf[take].mean()) if take.any() else float("nan"))
            ece[kind].append(confidence.expected_calibration_error(probs, y[inbox]))
    print(f"\n[3] {root.name}: inbox with {per_class} labelled per class ({per_class * k}), "
          f"{len(y) - per_class * k} unsorted, {seeds} seeds")
    print(f"    temperature (head -> suggestions) per seed: {', '.join(f'{a:.2f}->{b:.2f}' for a, b in temps)}")
    for kind in kinds:
        print(f"    {kind:11s} accept >= {threshold}: precision {np.nanmean(prec[kind]):.3f} "
              f"(per seed {np.round(prec[kind], 3)}), coverage {np.mean(cover[kind]):.3f} "
              f"({np.mean(n_acc[kind]):.0f} images), their mean confidence {np.nanmean(shown[kind]):.3f}; "
              f"ECE of all suggestions {np.mean(ece[kind]):.3f}")


# ------------------------------------------------------------------------------------------------------------------
def bench_timings(root: Path) -> None:
    ds, paths, shas, x = load_set(root)
    print(f"\n[4] {root.name}: {len(paths)} images, cached embeddings")
    t0 = time.perf_counter()
    stats = image_stats(paths, shas, cache=False)
    t_stats = time.perf_counter() - t0
    image_stats(paths, shas)  # fills the cache
    t0 = time.perf_counter()
    stats = image_stats(paths, shas)
    t_cached = time.perf_counter() - t0
    t0 = time.perf_counter()
    found = find_issues(x, ds.y, len(ds.labels), shas, stats)
    t_find = time.perf_counter() - t0
    print(f"    image statistics: {t_stats:.1f} s uncached, {t_cached:.2f} s cached")
    print(f"    all findings: {t_find:.1f} s {found.timings}; {len(found.label_issues)} label issues, "
          f"{len(found.duplicate_groups)} duplicate groups ({sum(found.cross_class)} across classes), "
          f"{len(found.outliers)} outliers")
    by_reason: dict[str, int] = {}
    for o in found.outliers:
        by_reason[o.reason] = by_reason.get(o.reason, 0) + 1
    print(f"    outliers by reason: {by_reason}")
    for method in MAP_METHODS:
        t0 = time.perf_counter()
        project_2d(x, method)
        print(f"    map {method}: {time.perf_counter() - t0:.1f} s")
    try:
        import umap  # noqa: F401 - optional, only measured when installed
    except ImportError:
        print("    map umap: umap-learn not installed (not a dependency)")
    else:
        t0 = time.perf_counter()
        umap.UMAP(random_state=42).fit_transform(x)
        print(f"    map umap: {time.perf_counter() - t0:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = Path(__file__).resolve().parents[1]
    parser.add_argument("--data", default=str(here.parent / "shared" / "datasets"))
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--only", choices=["flips", "copies", "inbox", "timings"], default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    data = Path(args.data)
    small, large = data / "flowers", data / "flowers_large"
    if args.only in (None, "flips"):
        bench_flips(small, args.seeds)
    if args.only in (None, "copies"):
        bench_copies(small)
        bench_copies(large)
    if args.only in (None, "inbox"):
        bench_inbox(small, seeds=args.seeds)
        bench_inbox(large, seeds=args.seeds)
    if args.only in (None, "timings"):
        bench_timings(large)


if __name__ == "__main__":
    main()
