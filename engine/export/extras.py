"""Formats made on request after a run, from its SavedModel: TensorFlow.js and Core ML. The bundle never waits for
them; the Export page and `python -m engine export-extra` ask for them (engine.runs.extras starts the process).

This module owns the table of such formats and their status file, <run_dir>/extras/<name>.json:
    {"state": "running" | "done" | "failed", "message", "progress" (0-1), "files" (run-relative), "started",
     "finished", "pid", "proc_start" (the process making it; engine.runs.extras writes these two)}
"not made" and "converter missing" are never stored: they are what a missing file means.

A format is made in a temporary folder beside its place and renamed there when complete, so a half-made model is
never offered for download; a failure keeps the previous one, if any.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config import runfiles as rf
from engine.core.fileio import atomic_write_json, read_json
from engine.export import card as model_card
from engine.export import coreml_model, tfjs_model

log = logging.getLogger(__name__)

NOT_MADE, RUNNING, DONE, FAILED, CONVERTER_MISSING = "not made", "running", "done", "failed", "converter missing"
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class Extra:
    name: str
    label: str  # the words on the Export page and in messages
    output: str  # its file or folder in the run folder (engine.config.runfiles)
    requirement: str | None  # what to pip install when its converter is missing (None: TensorFlow suffices)

    def installed(self) -> bool:
        return self.requirement is None or coreml_model.converter_installed()


EXTRAS: dict[str, Extra] = {e.name: e for e in (
    Extra("tfjs", "TensorFlow.js", rf.TFJS, None),
    Extra("coreml", "Core ML", rf.COREML, coreml_model.REQUIREMENT),
)}


def get(name: str) -> Extra:
    if name not in EXTRAS:
        raise ValueError(f"Unknown format '{name}': choose one of {', '.join(EXTRAS)}")
    return EXTRAS[name]


def status_path(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir) / rf.EXTRAS / f"{get(name).name}.json"


def log_path(run_dir: str | Path, name: str) -> Path:
    return Path(run_dir) / rf.EXTRAS / f"{get(name).name}.log"


def stored_status(run_dir: str | Path, name: str) -> dict[str, Any]:
    """The status as stored, or the one a missing file means: "not made" (or "converter missing"; "done" when the
    format is there from before status files existed)."""
    extra, run = get(name), Path(run_dir)
    stored = read_json(status_path(run, name))
    if stored.get("state") in (RUNNING, DONE, FAILED):
        return {"message": "", "progress": None, "files": [], **stored}
    if (run / extra.output).exists():
        return {"state": DONE, "message": f"The {extra.label} model is ready.", "progress": 1.0,
                "files": [extra.output]}
    if not extra.installed():
        return {"state": CONVERTER_MISSING, "progress": None, "files": [],
                "message": f"Making {extra.label} models needs {extra.requirement}: pip install {extra.requirement}"}
    return {"state": NOT_MADE, "message": "", "progress": None, "files": []}


def write_status(run_dir: str | Path, name: str, **fields: Any) -> dict[str, Any]:
    """Update the stored status with these fields (the others, e.g. the pid, are kept)."""
    path = status_path(run_dir, name)
    status = {**read_json(path), **fields}
    atomic_write_json(path, status)
    return status


def _about(run: Path) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
    """(labels, card, the model's description for the format's own metadata) of a finished run."""
    card = read_json(run / rf.MODEL_CARD)
    labels_file = run / rf.LABELS
    if not (run / rf.SAVED_MODEL).is_dir() or not labels_file.is_file():
        raise ValueError(f"{run} has no {rf.SAVED_MODEL}/ and {rf.LABELS}: only a finished run with a SavedModel "
                         "can be converted")
    labels = labels_file.read_text(encoding="utf-8").splitlines()
    preprocessing = card.get("preprocessing") or {}
    facts = {**model_card.about(labels, card), "labels": labels, "image_size": card.get("image_size"),
             "center_crop": preprocessing.get("center_crop_rule", "") if preprocessing.get("center_crop") else "no",
             "dataset_hash": card.get("dataset_hash") or ""}
    return labels, card, facts


def _make(extra: Extra, run: Path, into: Path, progress: Progress) -> list[str]:
    """Write the format into `into` (a fresh temporary path); the run-relative files it will have."""
    labels, card, facts = _about(run)
    if extra.name == "tfjs":
        made = tfjs_model.export_tfjs(run / rf.SAVED_MODEL, into, {**facts, "input": tfjs_model.INPUT}, progress)
        return [f"{extra.output}/{f}" for f in made["files"]]
    size = int(card.get("image_size") or 0)
    if size <= 0:
        raise ValueError(f"{run / rf.MODEL_CARD} does not say the model's image size")
    about = {k: str(v) for k, v in facts.items() if k not in ("labels", "image_size")}
    coreml_model.export_coreml(run / rf.SAVED_MODEL, into, labels, size, about, progress)
    return [extra.output]


def make_extra(run_dir: str | Path, name: str, progress: Progress | None = None) -> dict[str, Any]:
    """Make one format now, in this process, keeping its status file up to date; the final status. A failure is
    stored with its message (and raised again for the command line)."""
    extra, run = get(name), Path(run_dir)

    def say(fraction: float, message: str) -> None:
        write_status(run, name, state=RUNNING, progress=round(fraction, 3), message=message)
        if progress:
            progress(fraction, message)

    write_status(run, name, state=RUNNING, progress=0.0, message=f"Making the {extra.label} model", files=[],
                 started=time.time(), finished=None)
    into = run / f".partial.{extra.output}"  # the same suffix: coremltools insists on .mlpackage
    shutil.rmtree(into, ignore_errors=True)
    t0 = time.perf_counter()
    try:
        files = _make(extra, run, into, say)
        shutil.rmtree(run / extra.output, ignore_errors=True)
        into.rename(run / extra.output)
    except Exception as exc:
        shutil.rmtree(into, ignore_errors=True)
        message = (str(exc) if isinstance(exc, coreml_model.ConverterMissing | ValueError)
                   else f"{type(exc).__name__}: {exc}")
        write_status(run, name, state=FAILED, progress=None, finished=time.time(),
                     message=f"Making the {extra.label} model failed: {message}"[:2000])
        raise
    seconds = time.perf_counter() - t0
    log.info("%s model made in %.1f s: %s", extra.label, seconds, run / extra.output)
    return write_status(run, name, state=DONE, progress=1.0, files=files, finished=time.time(), seconds=seconds,
                        message=f"The {extra.label} model is ready (made in {seconds:.0f} s).")
