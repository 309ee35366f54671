"""A stand-in for `python -m engine train` for tests of jobs and pages: the same arguments, the same run-folder files,
in a fraction of a second (test_jobs, test_app, test_reliability)."""

from __future__ import annotations

import sys
from pathlib import Path

# A stand-in for `python -m engine train`: same arguments, same files in the run folder.
# FAKE_MODE: ok | fail | crash (dies without a word) | sleep (waits FAKE_SLEEP s with a grandchild process);
# FAKE_EPOCH_DELAY: seconds per epoch.
FAKE_ENGINE = r'''
import json, os, signal, subprocess, sys, time, zipfile
from pathlib import Path

args = sys.argv[1:]
run_dir = Path(args[args.index("--run_dir") + 1])
image_dir = Path(args[args.index("--image_dir") + 1])
mode = os.environ.get("FAKE_MODE", "ok")


def status(state, message=""):
    p = run_dir / "status.json"
    s = json.loads(p.read_text()) if p.exists() else {}
    s.update(state=state, message=message, pid=os.getpid())
    if state != "running":
        s["finished"] = time.time()
    tmp = run_dir / "status.tmp"
    tmp.write_text(json.dumps(s))
    os.replace(tmp, p)


def ev(**e):
    with open(run_dir / "events.jsonl", "a") as f:
        f.write(json.dumps({"time": time.time(), **e}) + "\n")


def on_term(*_):
    status("cancelled", "the training process was asked to stop")
    sys.exit(130)


signal.signal(signal.SIGTERM, on_term)
status("running", "training")
print("fake engine started", flush=True)
assert json.loads((run_dir / "config.json").read_text())["image_dir"] == str(image_dir)
ev(type="stage", stage="embed", message="Computing features")
files = sorted(p for p in image_dir.rglob("*") if p.is_file())
for i in range(len(files)):
    ev(type="embed", done=i + 1, total=len(files), cached=0, images_per_s=100.0)
if mode == "crash":
    os._exit(3)
if mode == "sleep":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    (run_dir / "child.pid").write_text(str(child.pid))
    time.sleep(float(os.environ.get("FAKE_SLEEP", "60")))
L2 = [1e-2, 3e-3, 1e-3, 3e-4, 1e-4]  # FAKE_MODE=grid: steps are L2 values tried, as cross-validation reports them
for e in range(1, 6):
    time.sleep(float(os.environ.get("FAKE_EPOCH_DELAY", "0")))
    ev(type="epoch", phase="head", epoch=e, loss=1 / e, accuracy=0.5 + e / 20, val_loss=1.2 / e,
       val_accuracy=0.5 + e / 25, elapsed=0.1 * e, **({"l2": L2[e - 1]} if mode == "grid" else {}))
if mode == "fail":
    ev(type="error", message="boom")
    status("failed", "boom")
    print("error: boom")
    sys.exit(1)
labels = sorted(d.name for d in image_dir.iterdir() if d.is_dir() and any(d.iterdir()))
preds = []
for j, f in enumerate(files):
    true = f.parent.name
    pred = true if j % 3 else labels[(labels.index(true) + 1) % len(labels)]
    preds.append({"path": str(f), "true": true, "predicted": pred, "probability": 0.55 + (j % 5) / 10,
                  "probs": [1 / len(labels)] * len(labels)})
cm = [[sum(1 for p in preds if p["true"] == a and p["predicted"] == b) for b in labels] for a in labels]
metrics = {"labels": labels, "val_accuracy": sum(p["true"] == p["predicted"] for p in preds) / len(preds),
           "per_class": {lb: {"precision": 0.8, "recall": 0.7, "f1": 0.75, "support": 3} for lb in labels},
           "confusion_matrix": cm, "predictions": preds}
if mode == "grid":  # as a run with a second backbone's features cached reports it
    metrics["backbone_comparison"] = [{"backbone": "efficientnet-lite2", "accuracy": 0.9, "log_loss": 0.25},
                                      {"backbone": "efficientnet-lite0", "accuracy": 0.8, "log_loss": 0.4}]
(run_dir / "metrics.json").write_text(json.dumps(metrics))
ev(type="result", val_accuracy=metrics["val_accuracy"], metrics_file=str(run_dir / "metrics.json"),
   **({"l2": 3e-3} if mode == "grid" else {}))
(run_dir / "labels.txt").write_text("\n".join(labels) + "\n")
(run_dir / "model_card.json").write_text(json.dumps({"labels": labels}))
for v in ("float32", "dynamic", "int8"):
    (run_dir / f"model_{v}.tflite").write_bytes(b"TFL3" + v.encode())
(run_dir / "saved_model").mkdir(exist_ok=True)
(run_dir / "saved_model" / "saved_model.pb").write_bytes(b"pb")
tmp = run_dir / "bundle.zip.tmp"
with zipfile.ZipFile(tmp, "w") as zf:
    for name in ("labels.txt", "model_card.json", "model_float32.tflite"):
        zf.write(run_dir / name, name)
os.replace(tmp, run_dir / "bundle.zip")
if mode == "linger":  # a job still busy after its bundle (the real engine compares backbones then)
    ev(type="stage", stage="compare", message="Comparing backbones on these images")
    time.sleep(float(os.environ.get("FAKE_SLEEP", "30")))
ev(type="stage", stage="done", message="done")
status("succeeded", "ok")
'''


def fake_command(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake_engine.py"
    script.write_text(FAKE_ENGINE)
    return [sys.executable, str(script), "train", "--image_dir", "{image_dir}", "--run_dir", "{run_dir}",
            "--config", "{config}"]
