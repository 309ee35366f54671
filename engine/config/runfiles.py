"""The run folder's file names and the exported model names: every module that opens a run or bundle folder
takes them from here (the status rule that reads status.json lives in engine.runs.status).

    <run_dir>/config.json      the TrainConfig used
    <run_dir>/events.jsonl     progress events (engine.core.events), polled by the app
    <run_dir>/status.json      RunStatus (engine.runs.status): {"state", "pid", "proc_start", "started", "finished",
                               "message"}
    <run_dir>/metrics.json     per-class metrics, confusion matrix, per-image predictions, history: Review opens
    <run_dir>/head.npz         the trained head (kernel, bias, temperature), for scoring cached embeddings
    <run_dir>/snapshot.json    (sha256, label) of every image the run trained on
    <run_dir>/model_card.json, labels.txt, saved_model/, model_{variant}.tflite, model.onnx  (engine.export,
                               engine.config.variants)
    <run_dir>/tfjs/, model.mlpackage  made on request after the run (engine.export.extras): TF.js and Core ML;
                               <run_dir>/extras/<name>.json says how making each went (that module writes it)
    <run_dir>/bundle.zip       the last artefact, written atomically: if it exists, the run is downloadable
                               (afterwards the job may still add the backbone comparison to metrics.json)
    <run_dir>/run.json         app jobs only (engine.runs.jobs): run_id, project, command, pid, proc_start, counts
    <run_dir>/log.txt          app jobs only: the job's stdout and stderr
    <run_dir>/cancel           marker: the user asked to stop (the app writes it; the job looks for it)
    <run_dir>/.lock            locked by the training process while it runs: a second one is refused

Plain names only, no imports beyond the variant table (plain data): the app reads run folders on every page.
"""


from __future__ import annotations

from engine.config import variants

CONFIG = "config.json"
EVENTS = "events.jsonl"
STATUS = "status.json"
METRICS = "metrics.json"
HEAD = "head.npz"
SNAPSHOT = "snapshot.json"
MODEL_CARD = "model_card.json"
LABELS = "labels.txt"
SAVED_MODEL = "saved_model"
ONNX = "model.onnx"  # the classifier for ONNX Runtime (engine.export.onnx_model)
TFJS = "tfjs"  # TF.js graph model folder (model.json + weight shards), made on request (engine.export.extras)
COREML = "model.mlpackage"  # Core ML classifier (a folder), made on request
EXTRAS = "extras"  # <run_dir>/extras/<name>.json: the status of each format made on request
BUNDLE = "bundle.zip"
RUN = "run.json"
LOG = "log.txt"
CANCEL = "cancel"
LOCK = ".lock"  # held by the training process while it runs (one process per run folder)

# The model a run or bundle folder offers when its card names none: first one present wins.
MODEL_PREFERENCE = (*variants.FILES, SAVED_MODEL)
