"""What a user waits for: process start to exit on the command line, click to result in the app, in one run.

    python bench/bench_wait.py                                 # ../shared/datasets/flowers (+ flowers_large)
    python bench/bench_wait.py --skip_baseline --skip_app     # ours only

Measures, each as wall-clock seconds of a real process (or a real browser click):
  CLI, README flags (--saved_model_dir --labels_output_file --tflite_output_file), default variants (SavedModel,
  float32/dynamic/int8 TFLite, labels, card, bundle):
    first run on a machine    (only with --first_run: an empty $RETRAIN_STUDIO_CACHE, so the backbone is ported,
                              compiled and quantized and the SavedModel template traced; each step's seconds from
                              the run's events.jsonl, and the ratio to the baseline)
    empty embedding cache     (backbone prepared, no image embedded yet)
    warm cache                (the same folder again)
    after moving 10 images between classes
    a flowers_large-sized project, warm
  Baseline in the same run: make_image_classifier-style training (5 epochs, the backbone on every decoded image)
  plus its export (SavedModel + float32 TFLite), as one process.
  App (Streamlit + headless Chromium): click "Start training" -> Review ready (metrics shown) -> float32 model
  written -> bundle downloadable, warm cache; and the same on the large project.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
PREPARED = ("backbones", "embedders", "composed")  # the one-time backbone work: kept for the "empty cache" run


def run(cmd: list[str], env: dict[str, str], cwd: Path = REPO) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return seconds


def cli_train(image_dir: Path, out: Path, env: dict[str, str]) -> float:
    out.mkdir(parents=True, exist_ok=True)
    return run([sys.executable, "-m", "engine", "train", "--image_dir", str(image_dir), "--run_dir", str(out / "run"),
                "--saved_model_dir", str(out / "model"), "--labels_output_file", str(out / "labels.txt"),
                "--tflite_output_file", str(out / "model.tflite")], env)


def cache_env(cache: Path) -> dict[str, str]:
    return dict(os.environ, RETRAIN_STUDIO_CACHE=str(cache), PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")


def prepared_cache(tmp: Path, source: Path) -> Path:
    """A cache with the backbone converted but no image embedded."""
    cache = tmp / "cache-empty-embeddings"
    for name in PREPARED:
        if (source / name).is_dir():
            shutil.copytree(source / name, cache / name, symlinks=True)
    return cache


def stage_seconds(run_dir: Path) -> list[tuple[str, float]]:
    """Each progress stage of a run (events.jsonl) and the seconds until the next one: where a first run goes."""
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]
    stages = [e for e in events if e["type"] == "stage"]
    ends = [e["time"] for e in stages[1:]] + [events[-1]["time"]]
    return [(e["message"], end - e["time"]) for e, end in zip(stages, ends, strict=True)]


def moved_copy(image_dir: Path, dest: Path, n: int = 10) -> Path:
    """A copy of the folder with n images moved to another class (a user fixing labels)."""
    shutil.copytree(image_dir, dest)
    classes = sorted(p for p in dest.iterdir() if p.is_dir())
    for i, path in enumerate(sorted(classes[0].iterdir())[:n]):
        path.rename(classes[1 + i % (len(classes) - 1)] / path.name)
    return dest


def baseline_child(image_dir: str, out: str) -> None:
    """make_image_classifier-style: train 5 epochs on the 80% split, then write its SavedModel and .tflite."""
    sys.path.insert(0, str(REPO / "bench"))
    sys.path.insert(0, str(REPO))
    import bench as b
    from engine.data.dataset import scan_image_dir, split_dataset

    ds = scan_image_dir(image_dir, check_images=False)
    tr, va = split_dataset(ds, 0.2, 0)
    resolved = b.resolve("efficientnet-lite0")
    b.baseline_make_image_classifier([it.path for it in ds.items], b.tf.constant(ds.y), tr, va, resolved,
                                     len(ds.labels), 0, export_dir=Path(out))


def parity(image_dir: Path, out: Path, env: dict[str, str]) -> list[str]:
    """Held-out accuracy of each exported variant (make_image_classifier's 80/20 split), composed models."""
    sys.path.insert(0, str(REPO))
    import json

    import numpy as np

    from engine.config import variants
    from engine.data import images
    from engine.inference.predict import TFLiteModel

    out.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "engine", "train", "--image_dir", str(image_dir), "--run_dir", str(out),
         "--validation_split", "0.2"], env)
    metrics = json.loads((out / "metrics.json").read_text())
    labels = metrics["labels"]
    rows = [p for p in metrics["predictions"] if Path(p["path"]).is_file()]
    x = np.stack([images.prepare(p["path"], 224, False) for p in rows])
    y = np.array([labels.index(p["true"]) for p in rows])
    models = {v.name: TFLiteModel(out / v.file) for v in variants.TABLE}
    top1 = {v: np.array([int(np.argmax(m.probabilities(img))) for img in x]) for v, m in models.items()}
    return [f"{v}: held-out accuracy {np.mean(t == y):.3f}, top-1 agreement with float32 "
            f"{np.mean(t == top1['float32']):.3f} ({len(y)} images)" for v, t in top1.items()]


# ----------------------------------------------------------------------------------------------------------------
# The app in a browser
# ----------------------------------------------------------------------------------------------------------------
def app_clicks(projects: dict[str, Path], env: dict[str, str], tmp: Path) -> dict[str, dict[str, float]]:
    """Per project: seconds from the click on "Start training" to Review ready, float32 model, bundle."""
    sys.path[:0] = [str(REPO), str(REPO / "tests")]  # the browser tests' helpers: idle waits, Chromium flags
    from browser_app import CHROMIUM, CHROMIUM_ARGS, COUNT_RUNS, act, settle
    from playwright.sync_api import expect, sync_playwright
    from servers import free_port

    from engine.runs import jobs
    from engine.store.workspace import Workspace

    ws = tmp / "ws"
    env = dict(env, RETRAIN_STUDIO_WORKSPACE=str(ws))
    os.environ.update(RETRAIN_STUDIO_WORKSPACE=str(ws), RETRAIN_STUDIO_CACHE=env["RETRAIN_STUDIO_CACHE"])
    made = {}
    for name, folder in projects.items():
        project = Workspace(ws).create_project(name)
        t0 = time.perf_counter()
        project.import_image_dir(folder)
        made[name] = (project, time.perf_counter() - t0)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    results: dict[str, dict[str, float]] = {}
    try:
        url = f"http://127.0.0.1:{port}"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.context.add_init_script(COUNT_RUNS)
            deadline = time.time() + 60
            while True:
                try:
                    page.goto(f"{url}/train")
                    break
                except Exception:  # noqa: BLE001 - the server is still starting
                    if time.time() > deadline:
                        raise
                    time.sleep(0.5)
            for name, (project, import_s) in made.items():
                for attempt in ("first", "again"):  # "again": a retrain, as after fixing labels
                    page.goto(f"{url}/train?project={project.slug}")
                    settle(page)
                    button = page.get_by_role("button", name="Start training")
                    before = set(p.name for p in project.runs_dir.glob("*")) if project.runs_dir.is_dir() else set()
                    t0 = time.perf_counter()
                    act(page, button.click)
                    run_dir = next(p for p in project.runs_dir.iterdir() if p.name not in before and p.is_dir())
                    # this run's own view (an earlier run's "Review" link must not count)
                    expect(page.get_by_text(f"Run {run_dir.name}")).to_be_visible(timeout=60_000)
                    expect(page.get_by_text("Review mistakes")).to_be_visible(timeout=600_000)
                    t_review = time.perf_counter() - t0
                    while not (run_dir / "model_float32.tflite").exists():
                        time.sleep(0.02)
                    t_float = time.perf_counter() - t0
                    expect(page.get_by_text("Download & try the model")).to_be_visible(timeout=600_000)
                    expect(page.get_by_text("still being written")).to_have_count(0, timeout=600_000)
                    t_bundle = time.perf_counter() - t0
                    assert jobs.job_status(run_dir).downloadable, run_dir
                    started = json.loads((run_dir / "status.json").read_text()).get("started", 0)
                    clicked = time.time() - (time.perf_counter() - t0)
                    results[f"{name} ({attempt} click)"] = {
                        "review": t_review, "float32": t_float, "bundle": t_bundle, "import": import_s,
                        "job_start": started - clicked,
                        "job_bundle": (run_dir / "bundle.zip").stat().st_mtime - clicked}
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)
    return results


# ----------------------------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image_dir", default=str(SHARED / "flowers"))
    ap.add_argument("--large_dir", default=str(SHARED / "flowers_large"), help="'' to skip")
    ap.add_argument("--skip_baseline", action="store_true")
    ap.add_argument("--skip_app", action="store_true")
    ap.add_argument("--first_run", action="store_true", help="also time a run with a completely empty cache")
    ap.add_argument("--baseline_child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline_child:
        baseline_child(*args.baseline_child)
        return 0
    sys.path.insert(0, str(REPO))
    from engine.core.cache import cache_root

    image_dir = Path(args.image_dir)
    rows: list[tuple[str, float]] = []
    first_steps: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        user_cache = cache_root()
        warm_env = cache_env(user_cache)
        cli_train(image_dir, tmp / "prime", warm_env)  # make sure every one-time part exists in the user cache
        if args.first_run:
            rows.append(("CLI, first run on a machine (empty cache)", cli_train(image_dir, tmp / "first",
                                                                                 cache_env(tmp / "cache-first"))))
            first_steps = stage_seconds(tmp / "first" / "run")
        cold_env = cache_env(prepared_cache(tmp, user_cache))
        rows.append(("CLI, empty embedding cache", cli_train(image_dir, tmp / "cold", cold_env)))
        rows.append(("CLI, warm cache", cli_train(image_dir, tmp / "warm", cold_env)))
        moved = moved_copy(image_dir, tmp / "moved")
        rows.append(("CLI, warm, after moving 10 images between classes", cli_train(moved, tmp / "moved-run",
                                                                                   cold_env)))
        large = Path(args.large_dir) if args.large_dir else None
        if large and large.is_dir():
            cli_train(large, tmp / "large-prime", warm_env)
            rows.append((f"CLI, warm, {sum(1 for _ in large.rglob('*.*'))}-photo project", cli_train(
                large, tmp / "large", warm_env)))
        held_out = parity(image_dir, tmp / "parity", warm_env)
        base = None
        if not args.skip_baseline:
            (tmp / "base").mkdir()
            base = run([sys.executable, str(Path(__file__).resolve()), "--baseline_child", str(image_dir),
                        str(tmp / "base")], warm_env)
            rows.append(("baseline: make_image_classifier-style 5 epochs + SavedModel + float32 .tflite", base))
        app = {}
        if not args.skip_app:
            projects = {"flowers": image_dir}
            if large and large.is_dir():
                projects["flowers_large"] = large
            app = app_clicks(projects, warm_env, tmp)

    print(f"\nDataset: {image_dir}\n{'what the user waits for':72s} {'seconds':>8s}")
    for name, seconds in rows:
        print(f"{name:72s} {seconds:8.1f}")
    if first_steps:
        print("\nWhere the first run went (events.jsonl, seconds from each stage to the next):")
        for message, seconds in first_steps:
            print(f"  {seconds:6.1f}  {message}")
    print("\nExported variants on images the model did not see:")
    for line in held_out:
        print("  " + line)
    for name, t in app.items():
        print(f"app, {name}: click -> Review {t['review']:.1f} s, float32 model {t['float32']:.1f} s, bundle "
              f"{t['bundle']:.1f} s (job started {t['job_start']:.1f} s after the click, its bundle written at "
              f"{t['job_bundle']:.1f} s; import of the folder {t['import']:.1f} s)")
    if base:
        warm = dict(rows)["CLI, warm cache"]
        cold = dict(rows)["CLI, empty embedding cache"]
        print(f"\nRatios: baseline / ours warm = {base / warm:.1f}x (target >= 5), baseline / ours empty cache = "
              f"{base / cold:.1f}x")
        if first_steps:
            first = dict(rows)["CLI, first run on a machine (empty cache)"]
            print(f"        baseline / ours first run on a machine = {base / first:.1f}x (target >= 3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
