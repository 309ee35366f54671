"""Every exported format in the runtime a user loads it with, on held-out photos, next to the float32 TFLite model.

    python bench/bench_runtimes.py                       # ../shared/datasets/flowers, 20% held out (seeded)
    python bench/bench_runtimes.py --image_dir DIR --holdout 0.3

Trains on the rest with `python -m engine train` (default flags), makes TF.js and Core ML on request
(`export-extra`), then classifies the held-out photos with: LiteRT (float32, dynamic, int8: the bundle's predict.py),
MediaPipe Tasks' ImageClassifier (each .tflite as it is, its own decoding and resizing, label names from the
metadata), ONNX Runtime (model.onnx), TensorFlow (the SavedModel's serving_default, and serving_bytes with the encoded
file), TF.js in Node (when tests/js has its node_modules). Core ML runs only on macOS: its conversion time is printed.
Prints each runtime's top-1 accuracy, its agreement with float32 and the largest probability difference, and how
long composing model.onnx takes (the issue's target: every runtime within 1 point of float32, ONNX ≤ 0.5 s).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
sys.path.insert(0, str(REPO))

from engine.config import variants  # noqa: E402  (after the path: the bench runs from anywhere)


def split(image_dir: Path, holdout: float, seed: int, into: Path) -> list[tuple[Path, str]]:
    """Copy (1 - holdout) of each class into `into`; the held-out (path, class) pairs."""
    rng, held = random.Random(seed), []
    for cls in sorted(p for p in image_dir.iterdir() if p.is_dir()):
        files = sorted(f for f in cls.iterdir() if f.is_file() and not f.name.startswith("."))
        rng.shuffle(files)
        k = max(1, round(len(files) * holdout))
        (into / cls.name).mkdir(parents=True)
        for f in files[k:]:
            shutil.copyfile(f, into / cls.name / f.name)  # copies: the scan does not follow symlinks
        held += [(f, cls.name) for f in files[:k]]
    return held


def bundle_predict():
    spec = importlib.util.spec_from_file_location("bundle_predict", REPO / "engine" / "bundle" / "predict.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def onnx_seconds(run: Path) -> float:
    """Composing model.onnx again from the run's head and the cached backbone graph (what every export does)."""
    from engine.export import onnx_model
    from engine.features.backbones import resolve
    from engine.learn.head import Head

    card = json.loads((run / "model_card.json").read_text())
    resolved, head = resolve(card["backbone"]["handle"]), Head.load(run / "head.npz")
    onnx_model.backbone_onnx(resolved)  # cached by the run
    t0 = time.perf_counter()
    onnx_model.compose_onnx(resolved, head, run / "again.onnx")
    return time.perf_counter() - t0


def litert(run: Path, pixels: np.ndarray, bp) -> dict[str, np.ndarray]:
    out = {}
    for variant in variants.TABLE:
        interpreter = bp.make_interpreter(str(run / variant.file))
        out[f"LiteRT {variant.name}"] = np.stack([bp.classify(interpreter, p) for p in pixels])
    return out


def mediapipe(run: Path, files: list[Path], labels: list[str]) -> dict[str, np.ndarray]:
    import mediapipe as mp
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    out = {}
    for variant in variants.TABLE:
        options = vision.ImageClassifierOptions(BaseOptions(model_asset_path=str(run / variant.file)),
                                                max_results=len(labels))
        with vision.ImageClassifier.create_from_options(options) as clf:
            rows = []
            for f in files:
                cats = clf.classify(mp.Image.create_from_file(str(f))).classifications[0].categories
                p = np.zeros(len(labels))
                for c in cats:
                    p[labels.index(c.category_name)] = c.score  # by name: the metadata's labels
                rows.append(p)
        out[f"MediaPipe Tasks {variant.name}"] = np.stack(rows)
    return out


def onnxruntime_(run: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    return {"ONNX Runtime": session.run(None, {"images": x})[0]}


def tensorflow_(run: Path, x: np.ndarray, files: list[Path]) -> dict[str, np.ndarray]:
    from engine.core.tfcompat import tf

    model = tf.saved_model.load(str(run / "saved_model"))
    pixels = model.signatures["serving_default"](images=tf.constant(x))["probabilities"].numpy()
    encoded = tf.constant([f.read_bytes() for f in files])
    by_bytes = model.signatures["serving_bytes"](encoded)
    return {"TensorFlow SavedModel": pixels, "TF Serving bytes signature": next(iter(by_bytes.values())).numpy()}


def tfjs(run: Path, x: np.ndarray, work: Path) -> dict[str, np.ndarray]:
    js = REPO / "tests" / "js"
    if shutil.which("node") is None or not (js / "node_modules").is_dir():
        print("TF.js: skipped (no node, or no tests/js/node_modules: npm ci --prefix tests/js)")
        return {}
    pixels = work / "x.f32"
    x.astype(np.float32).tofile(pixels)
    out = subprocess.run(["node", str(js / "classify.js"), str(run / "tfjs"), str(pixels), str(len(x)),
                          str(x.shape[1])], capture_output=True, text=True, check=True, cwd=js)
    return {"TF.js (Node, CPU backend)": np.array(json.loads(out.stdout)["probabilities"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image_dir", default=str(SHARED / "flowers"))
    ap.add_argument("--holdout", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    image_dir = Path(args.image_dir)
    if not image_dir.is_dir():
        print(f"{image_dir} is missing (../shared/datasets)")
        return 1
    work = Path(tempfile.mkdtemp(prefix="bench-runtimes-"))
    try:
        held = split(image_dir, args.holdout, args.seed, work / "train")
        run = work / "run"
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "engine", "train", "--image_dir", str(work / "train"), "--run_dir",
                        str(run)], check=True, cwd=REPO, env=env, capture_output=True)
        print(f"train (default artefacts incl. metadata and ONNX): {time.perf_counter() - t0:.1f} s")
        for extra in ("tfjs", "coreml"):
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "engine", "export-extra", "--run_dir", str(run), "--extra",
                                   extra], cwd=REPO, env=env, capture_output=True, text=True)
            print(f"export-extra {extra}: {time.perf_counter() - t0:.1f} s "
                  f"({'ok' if done.returncode == 0 else done.stderr.strip().splitlines()[-1]})")
        labels = (run / "labels.txt").read_text().splitlines()
        card = json.loads((run / "model_card.json").read_text())
        print(f"compose model.onnx: {onnx_seconds(run):.2f} s (head + cached backbone graph, written)")
        bp = bundle_predict()
        files = [f for f, _ in held]
        y = np.array([labels.index(c) for _, c in held])
        pixels = np.stack([bp.prepare(str(f), card["image_size"], bool(card["preprocessing"]["center_crop"]))
                           for f in files])  # uint8, as predict.py and serve.py prepare them
        x = pixels.astype(np.float32) / 255.0
        results = litert(run, pixels, bp)
        for part in (lambda: mediapipe(run, files, labels), lambda: onnxruntime_(run, x),
                     lambda: tensorflow_(run, x, files), lambda: tfjs(run, x, work)):
            try:
                results.update(part())
            except Exception as exc:  # noqa: BLE001 - one runtime failing is a result to print, not the end
                print(f"failed: {type(exc).__name__}: {exc}")
        ref = results["LiteRT float32"]
        print(f"\n{len(files)} held-out photos of {image_dir.name} ({len(labels)} classes)")
        print(f"{'runtime':34s} {'top-1':>7s} {'vs float32':>10s} {'agree':>7s} {'max |dp|':>9s}")
        ref_acc = float((ref.argmax(1) == y).mean())
        for name, p in results.items():
            acc = float((p.argmax(1) == y).mean())
            agree, diff = float((p.argmax(1) == ref.argmax(1)).mean()), float(np.abs(p - ref).max())
            print(f"{name:34s} {acc:7.1%} {100 * (acc - ref_acc):+9.1f}p {agree:7.1%} {diff:9.2e}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
