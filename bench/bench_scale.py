"""Scale benchmark (issue 22): the warm retrain's head stages at 3.5k, 25k (and 100k) photos, before vs after in one
process, so a busy machine slows both alike.

    python bench/bench_scale.py                           # flowers_large (3,461) and a 24,227-row set
    python bench/bench_scale.py --sizes 3461 24227 100000 # 100k: "before" is skipped above --before-max rows
    python bench/bench_scale.py --make-images 24227       # also write the real photo set (see below)
    python bench/bench_scale.py --app 3461 24227 100000   # the app's pages on projects of those sets
    python bench/bench_scale.py --retrain 3461 24227 100000  # the CLI's warm retrain on those sets

The sets: flowers_large's EfficientNet-Lite0 features and perceptual hashes (from the caches; computed once when
missing), then seeded altered copies of every photo until the size is reached. By default the copies are made on
the features, not on images (decoding and embedding 24k photos takes minutes on two cores, and the head stages
only see features): each copy is the original's unit feature plus Gaussian noise of a per-copy scale (cosine to
the original 5th/50th/95th percentile ~.70/.85/.98, as measured for real altered copies in engine/learn/groups.py)
and its hashes with up to 8% of the bits flipped. --make-images N writes real copies instead (crop, flip, colour,
brightness, rotation, JPEG quality; seeded) under --cache, outside the repository, one folder per class, ready for
`python -m engine train --image_dir` (49 s for 24,227 here; the first train then embeds them, ~7 minutes).

Stages, each timed "before" (the engine at --before, loaded from git) and "after" (this working tree):
  grouping   engine.learn.groups.fold_groups: near-duplicate groups (all pairs before; searched after)
  cv         engine.learn.crossval.out_of_fold: the L2 search and the out-of-fold predictions
  final      the head on every row at the chosen L2 (from zero before; from the mean fold head after)
  retrain    after only: the same cross-validation started at this run's choice (what the next retrain does)

What a user waits for, on the real photo sets (flowers_large for 3,461; --make-images N for the others):
  --cold N      cold features on N new photos (decode, features and image statistics from the same decode) next to
                the backbone alone on the same photos decoded beforehand (printed first; 0 skips it)
  --retrain     `python -m engine train` process start to exit, warm caches, every default artefact and the bundle
  --app         a project of the set in Streamlit's AppTest: the Data page, Curate's check and its map, peak memory
"""

from __future__ import annotations

import argparse
import logging
import resource
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.learn import crossval, groups  # noqa: E402

SHARED = REPO.parent / "shared" / "datasets"
BEFORE = "d2b1c9b"  # main before issue 22's head-stage work: the "before" column


def engine_at(rev: str, module: str) -> types.ModuleType:
    """engine/learn/<module>.py as it was at `rev`, as a module of its own (it imports today's engine below it)."""
    src = subprocess.check_output(["git", "show", f"{rev}:engine/learn/{module}.py"], cwd=REPO, text=True)
    mod = types.ModuleType(f"before_{module}")
    sys.modules[mod.__name__] = mod  # dataclasses look their module up there
    exec(compile(src, f"{rev}:engine/learn/{module}.py", "exec"), mod.__dict__)  # noqa: S102 - our own history
    return mod


def flowers_large() -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    from engine.data.dataset import scan_image_dir
    from engine.features.backbones import resolve
    from engine.features.embeddings import EmbeddingStore, embed_files
    from engine.features.image_stats import image_hashes

    ds = scan_image_dir(SHARED / "flowers_large", check_images=False)
    paths, shas = [it.path for it in ds.items], [it.sha256 for it in ds.items]
    emb = embed_files(paths, shas, resolve("efficientnet-lite0"), store=EmbeddingStore())
    keep = np.array(emb.ok)
    return emb.features, ds.y[keep], [shas[i] for i in keep], image_hashes([paths[i] for i in keep],
                                                                            [shas[i] for i in keep])


def grown(x: np.ndarray, y: np.ndarray, shas: list[str], hashes: np.ndarray, size: int,
          seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """The set plus seeded altered copies (on features and hashes, see the module docstring) up to `size` rows."""
    rng = np.random.default_rng(seed)
    n = len(x)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    xs, ys, ss, hs = [x], [y], [list(shas)], [hashes]
    for k in range(1, -(-size // n)):
        scale = rng.uniform(0.005, 0.03, (n, 1)).astype(np.float32)
        xs.append((x / norms + rng.normal(0, 1, x.shape).astype(np.float32) * scale) * norms)
        hs.append(hashes ^ (rng.random(hashes.shape) < rng.uniform(0, 0.08, (n, 1, 1))))
        ys.append(y)
        ss.append([f"{s}-copy{k}" for s in shas])
    return (np.concatenate(xs)[:size], np.concatenate(ys)[:size], sum(ss, [])[:size],
            np.concatenate(hs)[:size])


def make_images(count: int, out: Path, seed: int = 0) -> Path:
    """Seeded altered copies of flowers_large's photos under out/<class>/ until `count` files (originals included,
    as copies of their bytes)."""
    import cv2

    rng = np.random.default_rng(seed)
    sources = sorted(p for p in (SHARED / "flowers_large").glob("*/*") if p.is_file())
    for p in sources:
        (out / p.parent.name).mkdir(parents=True, exist_ok=True)
        (out / p.parent.name / p.name).write_bytes(p.read_bytes())
    made = len(sources)
    k = 0
    while made < count:
        k += 1
        for p in sources:
            if made >= count:
                break
            img = cv2.imread(str(p))
            if img is None:
                continue
            cv2.imwrite(str(out / p.parent.name / f"{p.stem}-alt{k}.jpg"), altered(img, rng),
                        [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(40, 95))])
            made += 1
    return out


def altered(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A crop (80-100%), maybe a mirror, a colour and brightness shift and a small rotation of a BGR image."""
    import cv2

    h, w = img.shape[:2]
    f = rng.uniform(0.8, 1.0)
    top, left = int(rng.uniform(0, 1 - f) * h), int(rng.uniform(0, 1 - f) * w)
    out = img[top: top + int(f * h), left: left + int(f * w)]
    if rng.random() < 0.5:
        out = out[:, ::-1]
    out = np.clip(out * rng.uniform(0.85, 1.15, 3) + rng.uniform(-20, 20), 0, 255).astype(np.uint8)
    rot = cv2.getRotationMatrix2D((out.shape[1] / 2, out.shape[0] / 2), rng.uniform(-8, 8), 1.0)
    return cv2.warpAffine(np.ascontiguousarray(out), rot, (out.shape[1], out.shape[0]),
                          borderMode=cv2.BORDER_REFLECT)


def cold_features(count: int, repeat: int = 2) -> None:
    """Cold features (what a new photo costs) next to the backbone alone on the same photos, decoded beforehand.

    "with statistics": engine.features.embeddings.embed_files into empty caches, as a first train does: decode,
    features, and the perceptual hashes and image statistics measured on the same decode. "hashes decoded again":
    image_stats on its own afterwards (what each new photo cost before issue 22's item 2, on top of features)."""
    import os
    import tempfile

    from engine.data.dataset import prepare_image
    from engine.features.backbones import resolve
    from engine.features.embeddings import Embedder, EmbeddingStore, embed_files, to_unit_float
    from engine.features.image_stats import image_stats

    paths = sorted(str(p) for p in (SHARED / "flowers_large").glob("*/*") if p.is_file())
    paths = [paths[i] for i in np.random.default_rng(1).choice(len(paths), min(count, len(paths)), replace=False)]
    resolved = resolve("efficientnet-lite0")
    embedder = Embedder(resolved)
    decoded = [to_unit_float(prepare_image(p, resolved.image_size)) for p in paths]
    embedder.from_unit_float(decoded[0])  # first call allocates
    rows = []
    for _ in range(repeat):  # alternated, fastest kept
        _, t_backbone = timed(lambda: [embedder.from_unit_float(img) for img in decoded])
        with tempfile.TemporaryDirectory() as tmp:
            old = os.environ.get("RETRAIN_STUDIO_CACHE")
            os.environ["RETRAIN_STUDIO_CACHE"] = tmp
            try:
                shas = [f"cold-{i}" for i in range(len(paths))]  # new to every cache
                _, t_cold = timed(embed_files, paths, shas, resolved, store=EmbeddingStore(Path(tmp) / "e.sqlite"),
                                  embedder=embedder)
                _, t_again = timed(image_stats, paths, [f"again-{i}" for i in range(len(paths))], cache=False)
            finally:
                if old is None:
                    del os.environ["RETRAIN_STUDIO_CACHE"]
                else:
                    os.environ["RETRAIN_STUDIO_CACHE"] = old
        rows.append((t_backbone, t_cold, t_again))
    t_backbone, t_cold, t_again = (min(r[i] for r in rows) for i in range(3))
    n = len(paths)
    print(f"cold features, {n} flowers_large photos: backbone alone {n / t_backbone:.0f} img/s; decode + features + "
          f"statistics from the same decode {n / t_cold:.0f} img/s = {t_backbone / t_cold:.0%} of the backbone; "
          f"hashes decoded again would add {t_again:.2f} s ({n / (t_cold + t_again):.0f} img/s)")


def app_pages(size: int, cache: Path) -> dict:
    """The app at this size, in this process (run as its own subprocess per size, for its peak memory): a project
    of the photo set (imported once, trained again with the CLI), then in Streamlit's AppTest the Data page (first
    run and a rerun), Curate's "Check the data" and its map (t-SNE, first time)."""
    import json
    import os
    import shutil
    import uuid

    os.environ["RETRAIN_STUDIO_WORKSPACE"] = str(cache / "workspace")
    from streamlit.testing.v1 import AppTest

    from engine.store.workspace import Workspace

    source = SHARED / "flowers_large" if size == 3461 else cache / f"flowers_x{size}"
    ws = Workspace()
    slug = f"flowers-{size}"
    out: dict = {"size": size}
    if not ws.exists(slug):
        project = ws.create_project(slug)
        _, out["import_s"] = timed(project.import_image_dir, source)
    project = ws.open_project(slug)
    # a run of this engine, as the user's loop has one (the check starts from its fit); warm after the first time
    run_dir = project.runs_dir / uuid.uuid4().hex[:12]
    _, out["train_s"] = timed(subprocess.run, [sys.executable, "-m", "engine", "train", "--image_dir",
                                               str(project.image_dir()), "--run_dir", str(run_dir)],
                              cwd=REPO, check=True, capture_output=True)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=900)
    at.query_params["project"] = slug
    _, out["home_s"] = timed(at.run)
    _, out["data_first_s"] = timed(at.switch_page("ui/pages/data.py").run)
    _, out["data_rerun_s"] = timed(at.run)
    # Images embedded by this engine have their statistics cached by the embedding; a project whose features came
    # from an older version (or another project) computes them once, here, outside the timed check
    from engine.features.image_stats import image_stats

    records = [r for r in project.images() if r.class_name is not None]
    _, out["stats_once_s"] = timed(image_stats, [str(r.path) for r in records], [r.sha256 for r in records])
    shutil.rmtree(project.path / "curate", ignore_errors=True)  # no kept check or map: the first time
    at.switch_page("ui/pages/curate.py").run()
    _, out["curate_check_s"] = timed(at.button(key="curate_check").click().run)
    _, out["curate_map_s"] = timed(at.segmented_control(key="curate_section").set_value("Map").run)
    out["errors"] = [str(e.value) for e in at.exception] + [str(e.value) for e in at.error]
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))
    return out


def warm_retrain(size: int, cache: Path, repeat: int = 2) -> tuple[float, tuple[float, float], float]:
    """Process start to exit of `python -m engine train` on the photo set with every default artefact (float32,
    dynamic and int8 .tflite, ONNX, SavedModel, bundle): what a user waits for in the loop. Returns the fastest of
    `repeat` warm runs on the same photos, the runs after moving 20 photos to another class and after moving them
    back (each a retrain after 20 labels changed; flowers_large is only read: its runs are on a copy) and the first
    run's time (it fills whatever cache is empty, and keeps the fit the next runs start from)."""
    import shutil
    import tempfile

    source = cache / f"flowers_x{size}"
    if size == 3461 and not source.is_dir():  # a copy: the shared set is never changed
        shutil.copytree(SHARED / "flowers_large", source)

    def once() -> float:
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "engine", "train", "--image_dir", str(source), "--run_dir",
                            f"{tmp}/run", "--saved_model_dir", f"{tmp}/sm", "--labels_output_file",
                            f"{tmp}/labels.txt", "--tflite_output_file", f"{tmp}/model.tflite"],
                           cwd=REPO, check=True, capture_output=True)
            seconds = time.perf_counter() - t0
            shutil.rmtree(tmp, ignore_errors=True)
            return seconds

    first = once()
    warm = min(once() for _ in range(repeat))
    moved = _move_photos(source, 20)  # the user's loop: a few labels fixed since the last run
    try:
        after_moving = once()
    finally:
        for src, dst in moved:
            dst.rename(src)
    return warm, (after_moving, once()), first


def _move_photos(root: Path, count: int, seed: int = 0) -> list[tuple[Path, Path]]:
    """Move `count` seeded photos into the next class folder; (from, to) pairs to move them back."""
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    files = sorted(p for p in root.glob("*/*") if p.is_file())
    moved = []
    for i in np.random.default_rng(seed).choice(len(files), count, replace=False):
        src = files[i]
        dst = classes[(classes.index(src.parent) + 1) % len(classes)] / f"moved-{src.name}"
        src.rename(dst)
        moved.append((src, dst))
    return moved


def report_app(rows: list[dict]) -> None:
    print("app (Streamlit AppTest, one process per size; peak memory of that process):")
    for r in rows:
        print(f"  {r['size']:>7,} photos: Data page {r['data_first_s']:.2f} s first, {r['data_rerun_s']:.2f} s "
              f"rerun; Curate check {r['curate_check_s']:.1f} s + map {r['curate_map_s']:.1f} s = "
              f"{r['curate_check_s'] + r['curate_map_s']:.1f} s; peak {r['peak_mb']:.0f} MB"
              + (f"; errors: {r['errors']}" if r["errors"] else ""))


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def stages(g, cv, x, y, shas, hashes) -> dict:
    """Grouping, cross-validation and the final fit with the modules g (groups) and cv (crossval)."""
    k = int(y.max()) + 1
    (ids, how), t_group = timed(g.fold_groups, x, shas, 5, hashes=hashes)
    oof, t_cv = timed(cv.out_of_fold, x, y, k, groups=ids)
    init = getattr(oof, "head_init", None)
    (_, _, iters), t_final = timed(cv.fit_logreg, x, y, k, oof.l2, init=init)
    return {"groups": ids, "how": how, "l2": oof.l2, "folds": oof.n_folds, "steps": len(oof.grid),
            "acc": float(np.mean(oof.probs.argmax(1) == y)), "group_s": t_group, "cv_s": t_cv,
            "final_s": t_final, "final_iter": iters}


def fastest(runs: list[dict]) -> dict:
    """The first run with each stage's time replaced by its fastest."""
    return dict(runs[0], **{k: min(r[k] for r in runs) for k in runs[0] if k.endswith("_s")})


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    return len(set(zip(a.tolist(), b.tolist(), strict=True))) == len(set(a.tolist())) == len(set(b.tolist()))


def report(size: int, before: dict | None, after: dict, retrain: tuple[float, int]) -> None:
    def row(name: str, r: dict) -> str:
        total = r["group_s"] + r["cv_s"] + r["final_s"]
        return (f"  {name:7s} grouping {r['group_s']:6.2f} s  cv {r['cv_s']:6.2f} s ({r['steps']} L2 x "
                f"{r['folds']} folds, L2 {r['l2']:g}, oof acc {r['acc']:.3f})  final {r['final_s']:5.2f} s "
                f"({r['final_iter']} it)  total {total:6.2f} s")

    print(f"{size} rows:")
    if before:
        print(row("before", before))
    print(row("after", after))
    print(f"  after, next retrain (search starts at the last choice): cv {retrain[0]:.2f} s ({retrain[1]} L2 steps)")
    if before:
        tb = before["group_s"] + before["cv_s"] + before["final_s"]
        ta = after["group_s"] + after["cv_s"] + after["final_s"]
        print(f"  ratio before/after: grouping {before['group_s'] / after['group_s']:.1f}x, cv "
              f"{before['cv_s'] / after['cv_s']:.1f}x, final {before['final_s'] / after['final_s']:.1f}x, "
              f"total {tb / ta:.1f}x; same groups: {same_partition(before['groups'], after['groups'])}; "
              f"same L2: {before['l2'] == after['l2']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[3461, 24227])
    ap.add_argument("--before", default=BEFORE, help="git revision of the 'before' engine")
    ap.add_argument("--before-max", type=int, default=30_000, help="skip 'before' above this many rows")
    ap.add_argument("--repeat", type=int, default=1, help="runs per size (alternating before/after)")
    ap.add_argument("--make-images", type=int, default=0, help="also write and embed a real photo set this big")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/retrain-studio-scale"))
    ap.add_argument("--cold", type=int, default=600, help="photos for the cold-features measurement (0: skip)")
    ap.add_argument("--app", type=int, nargs="*", default=[],
                    help="sizes to open in the app (3461: flowers_large; others need --make-images N first)")
    ap.add_argument("--retrain", type=int, nargs="*", default=[],
                    help="sizes to retrain with the CLI, process start to exit (as --app: the photo sets)")
    ap.add_argument("--app-one", type=int, help=argparse.SUPPRESS)  # the child process of --app
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.retrain:
        for size in args.retrain:
            warm, after_moving, cold = warm_retrain(size, args.cache)
            print(f"warm retrain to bundle, {size:,} photos: {warm:.1f} s process start to exit; "
                  f"{after_moving[0]:.1f} s after moving 20 photos to another class, {after_moving[1]:.1f} s after "
                  f"moving them back (the first run: {cold:.1f} s)",
                  flush=True)
        return
    if args.app_one:
        app_pages(args.app_one, args.cache)
        return
    if args.app:
        import json

        rows = []
        for size in args.app:
            done = subprocess.run([sys.executable, __file__, "--app-one", str(size), "--cache", str(args.cache)],
                                  check=True, capture_output=True, text=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        report_app(rows)
        return
    if args.cold:
        cold_features(args.cold)
    old_g, old_cv = engine_at(args.before, "groups"), engine_at(args.before, "crossval")
    x, y, shas, hashes = flowers_large()
    for size in args.sizes:
        xs, ys, ss, hs = grown(x, y, shas, hashes, size)
        befores, afters, retrains = [], [], []
        for _ in range(args.repeat):  # alternated, fastest kept: the machine's other work slows runs at random
            if size <= args.before_max:
                befores.append(stages(old_g, old_cv, xs, ys, ss, hs))
            afters.append(stages(groups, crossval, xs, ys, ss, hs))
            oof, t = timed(crossval.out_of_fold, xs, ys, int(ys.max()) + 1, groups=afters[-1]["groups"],
                           warm=crossval.WarmStart(start=afters[-1]["l2"]))
            retrains.append((t, len(oof.grid)))
        report(size, fastest(befores) if befores else None, fastest(afters), min(retrains))
    if args.make_images:
        out = make_images(args.make_images, args.cache / f"flowers_x{args.make_images}")
        print(f"wrote {sum(1 for _ in out.glob('*/*'))} photos under {out}")
    print(f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
