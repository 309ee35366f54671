"""One-time preparation of a backbone on this machine, ahead of the first click: its weights ported to a hub module,
the compiled embedder, the TFLite variants and the ONNX graph exports are composed from, and the SavedModel
template for a class count.

Each part is made once per machine, by whichever process needs it first (engine.core.fileio.made_once): the app
asks for them when it starts, in a background process (`python -m engine prepare`), so the first training run does
not wait ~30 s for them after the user clicked; a run that starts meanwhile waits for the part being made instead of
making it again. Checking what is missing reads file names only: no TensorFlow in the app.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from engine.config.backbones import BACKBONES, ResolvedBackbone
from engine.config.variants import NAMES as VARIANT_NAMES
from engine.export import onnx_model, savedmodel
from engine.export.compose import backbone_tflite, backbone_tflite_cached
from engine.features import backbones
from engine.features.embeddings import Embedder
from engine.runs.jobs import REPO_ROOT, job_env

log = logging.getLogger(__name__)

PARTS = ("backbone", "embedder", *(v for v in VARIANT_NAMES if v != "float32"), "onnx", "template")
PREPARE_ENV = "RETRAIN_STUDIO_PREPARE"  # "0": the app never prepares ahead (the tests' machine-wide cache stays theirs)


def _cached(handle: str) -> ResolvedBackbone | None:
    """The table backbone as resolve() gives it, if its port is on this machine already (else None: no port here)."""
    path = backbones.cached_module_path(handle)
    if not (path / "saved_model.pb").exists():
        return None
    spec = BACKBONES[handle]
    return ResolvedBackbone(handle, str(path), spec.image_size, spec.feature_size, path.name)


def missing(handle: str, n_classes: int | None = None, variants: Sequence[str] = VARIANT_NAMES) -> list[str]:
    """The parts of PARTS not yet on this machine for this backbone (and class count). Only the built-in backbones
    are prepared ahead: a local module or a URL is prepared by the run that names it."""
    if handle not in BACKBONES:
        return []
    wanted = ["embedder", *(v for v in variants if v != "float32"), "onnx", *(["template"] if n_classes else [])]
    resolved = _cached(handle)
    if resolved is None:
        return ["backbone", *wanted]
    done = {"embedder": Embedder.cached_tflite(resolved).exists(),
            "template": bool(n_classes) and savedmodel.has_template(resolved, n_classes),
            "onnx": onnx_model.backbone_onnx_cached(resolved),
            **{v: backbone_tflite_cached(resolved, v) for v in variants}}
    return [part for part in wanted if not done[part]]


def prepare(handle: str, n_classes: int | None = None, variants: Sequence[str] = VARIANT_NAMES) -> list[str]:
    """Make what `missing` names; returns what it found missing. Imports TensorFlow (for the parts it makes)."""
    todo = missing(handle, n_classes, variants)
    if not todo:
        return todo
    resolved = backbones.resolve(handle)
    Embedder.tflite_path(resolved)
    for variant in variants:
        if variant != "float32":
            backbone_tflite(resolved, variant)
    onnx_model.backbone_onnx(resolved)
    if n_classes:
        savedmodel.ensure_template(resolved, n_classes)
    return todo


def prepare_in_background(handle: str, n_classes: int | None = None, log_path: Path | None = None) -> int | None:
    """Start `python -m engine prepare` for what is missing, detached; returns its pid (None: nothing to do, or
    switched off with $RETRAIN_STUDIO_PREPARE=0)."""
    if os.environ.get(PREPARE_ENV, "1") == "0" or not missing(handle, n_classes):
        return None
    argv = [sys.executable, "-m", "engine", "prepare", "--tfhub_module", handle,
            *(["--classes", str(n_classes)] if n_classes else [])]
    log_path = log_path or backbones.cache_root() / "prepare.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as fh:
        proc = subprocess.Popen(argv, cwd=str(REPO_ROOT), env=job_env(), stdin=subprocess.DEVNULL, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    threading.Thread(target=proc.wait, daemon=True, name="prepare-reaper").start()  # no <defunct> left behind
    log.info("preparing %s (%s) in the background, pid %d", handle, ", ".join(missing(handle, n_classes)),
             proc.pid)
    return proc.pid
