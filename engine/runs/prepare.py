"""One-time preparation of a backbone on this machine, ahead of the first click: the float32 embedder (written from
the weights), the quantized TFLite variants and the ONNX graph exports are composed from, and the SavedModel template
(the one part that takes TensorFlow, ~12 s).

Each part is made once per machine, by whichever process needs it first (engine.core.fileio.made_once): the app
asks for them when it starts, in a background process (`python -m engine prepare`), so the first training run does
not wait for them after the user clicked, and a run on a new machine starts the template here while it embeds and
trains; a run that needs a part meanwhile waits for it instead of making it again. Checking what is missing reads
file names only: no TensorFlow in the app.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from engine.config.backbones import BACKBONES, PREPARED_PARTS
from engine.config.variants import NAMES as VARIANT_NAMES
from engine.core.cache import cache_root
from engine.export import onnx_model, savedmodel
from engine.export.compose import backbone_tflite, backbone_tflite_cached
from engine.features import backbones
from engine.features.embeddings import Embedder
from engine.runs.jobs import REPO_ROOT, job_env

log = logging.getLogger(__name__)

PARTS = PREPARED_PARTS
PREPARE_ENV = "RETRAIN_STUDIO_PREPARE"  # "0": the app never prepares ahead (the tests' machine-wide cache stays theirs)


def missing(handle: str, n_classes: int | None = None, variants: Sequence[str] = VARIANT_NAMES,
            parts: Sequence[str] = PARTS) -> list[str]:
    """The parts (of `parts`) not yet on this machine for this backbone (and class count: the template). Only the
    built-in backbones are prepared ahead: a local module or a URL is prepared by the run that names it."""
    if handle not in BACKBONES:
        return []
    resolved = backbones.resolve(handle)
    done = {"embedder": lambda: Embedder.cached_tflite(resolved).exists(),
            "template": lambda: savedmodel.has_template(resolved, n_classes),
            "onnx": lambda: onnx_model.backbone_onnx_cached(resolved),
            **{v: functools.partial(backbone_tflite_cached, resolved, v) for v in variants}}
    wanted = ["embedder", *(v for v in variants if v != "float32"), "onnx", *(["template"] if n_classes else [])]
    return [part for part in wanted if part in parts and not done[part]()]


def prepare(handle: str, n_classes: int | None = None, variants: Sequence[str] = VARIANT_NAMES,
            parts: Sequence[str] = PARTS) -> list[str]:
    """Make what `missing` names; returns what it found missing. Imports TensorFlow for the template only."""
    todo = missing(handle, n_classes, variants, parts)
    if not todo:
        return todo
    resolved = backbones.resolve(handle)
    make = {"embedder": lambda: Embedder.tflite_path(resolved),
            "onnx": lambda: onnx_model.backbone_onnx(resolved),
            "template": lambda: savedmodel.ensure_template(resolved, n_classes),
            **{v: functools.partial(backbone_tflite, resolved, v) for v in variants}}
    for part in todo:
        make[part]()
    return todo


def template_ahead(handle: str, image_size: int | None, fine_tuning: bool) -> int | None:
    """On a new machine, start tracing the SavedModel template (~12 s of TensorFlow, once per backbone) in another
    process as a run starts, so it is ready when the run exports instead of after; the run waits for it there
    (made_once) rather than tracing it again. Nothing for fine-tuning (its SavedModel is its own) or other sizes."""
    spec = BACKBONES.get(handle)
    if spec is None or fine_tuning or image_size not in (None, spec.image_size) or not spec.installed():
        return None  # a missing weights package is the run's to report, in its own words
    return prepare_in_background(handle, savedmodel.TEMPLATE_CLASSES, parts=("template",))


def prepare_in_background(handle: str, n_classes: int | None = None, log_path: Path | None = None,
                          parts: Sequence[str] = PARTS) -> int | None:
    """Start `python -m engine prepare` for what is missing, detached; returns its pid (None: nothing to do, or
    switched off with $RETRAIN_STUDIO_PREPARE=0)."""
    if os.environ.get(PREPARE_ENV, "1") == "0" or not missing(handle, n_classes, parts=parts):
        return None
    argv = [sys.executable, "-m", "engine", "prepare", "--tfhub_module", handle,
            *(["--classes", str(n_classes)] if n_classes else []),
            *(["--parts", *parts] if tuple(parts) != PARTS else [])]
    log_path = log_path or cache_root() / "prepare.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as fh:
        proc = subprocess.Popen(argv, cwd=str(REPO_ROOT), env=job_env(), stdin=subprocess.DEVNULL, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    threading.Thread(target=proc.wait, daemon=True, name="prepare-reaper").start()  # no <defunct> left behind
    log.info("preparing %s (%s) in the background, pid %d", handle,
             ", ".join(missing(handle, n_classes, parts=parts)), proc.pid)
    return proc.pid
