"""What the Train page says under a run's charts, in words for a person: which step became the model and why
(the L2 strength a search kept, the one a big project's retrain kept without a search, the fine-tuning epoch).
Plain functions of the run's events, so the page stays a renderer."""

from __future__ import annotations

import pandas as pd

from engine.core.events import EventKind
from ui import common


def phases(events: list[dict]) -> dict[str, pd.DataFrame]:
    """The "epoch" events by phase, each its own frame: the head's regularisation strengths ("head") and the
    fine-tuning epochs ("fine_tune") are different things and never share an axis."""
    rows: dict[str, list[dict]] = {}
    for e in events:
        if e.get("type") == EventKind.EPOCH:
            rows.setdefault(str(e.get("phase") or "head"), []).append(e)
    return {phase: pd.DataFrame(found, index=pd.RangeIndex(1, len(found) + 1, name="step"))
            for phase, found in rows.items()}


def is_grid(frame: pd.DataFrame) -> bool:
    """One point per regularisation strength tried by cross-validation (engine.learn.train.fit_head)."""
    return "l2" in frame and bool(frame["l2"].notna().all())


def kept_step(frame: pd.DataFrame, phase: str, result: dict | None) -> int | None:
    """The point of the chart that became the run's model, None when none did (or it is not known yet)."""
    if phase == "head" and is_grid(frame):  # the strength kept is the result's (engine.learn.crossval's rule)
        hits = [] if result is None or result.get("l2") is None else \
            frame.index[frame["l2"].astype(float) == float(result["l2"])]
        return int(hits[0]) if len(hits) else None
    if "val_loss" not in frame or not frame["val_loss"].notna().any():
        return None
    best = int(frame["val_loss"].astype(float).idxmin())
    if phase == "fine_tune" and result is not None and result.get("val_accuracy") is not None:
        # fine-tuning keeps its best epoch only when it beats the model it started from (engine.learn.finetune)
        if abs(float(frame.loc[best, "val_accuracy"]) - float(result["val_accuracy"])) > 1e-4:
            return None
    return best


def head_note(frame: pd.DataFrame, result: dict | None, cross_validated: bool) -> str:
    n, kept = len(frame), kept_step(frame, "head", result)
    if not is_grid(frame):
        text = f"{n} training step(s)."
        if kept is not None and n > 1:
            text += (f" The model kept is the one from step {kept} (lowest validation loss, validation accuracy "
                     f"{common.fmt_pct(frame.loc[kept].get('val_accuracy'))}), not necessarily the last one.")
        return text
    text = (f"{n} training step(s), one per penalty strength tried: a strong penalty keeps the classifier simple, a "
            "weak one lets it follow every image. Each point is measured on images that model did not train on.")
    if kept is None:
        return text
    if result.get("l2_kept"):
        return kept_l2_note(frame, kept, result["l2_kept"], cross_validated)
    text += (f" Kept: strength {kept}, the simplest that predicts unseen images about as well as the best one, so "
             "it may sit beside the lowest loss rather than on it; it is then trained on every image.")
    accuracy = common.fmt_pct(frame.loc[kept].get("val_accuracy"))
    if cross_validated:
        return text + f" Its accuracy on images it did not train on, {accuracy}, is the accuracy of this run."
    return text + (f" (Measured within the training images: {accuracy}. The accuracy of this run is measured on "
                   "the images set aside for judging.)")


def kept_l2_note(frame: pd.DataFrame, kept: int, l2_kept: dict, cross_validated: bool) -> str:
    """A big project's retrain that kept the last search's strength (engine.learn.warm_start's rule): one point."""
    changed, limit = int(l2_kept.get("changed", 0)), int(l2_kept.get("limit", 0))
    text = (f"The penalty strength (how simple the classifier is kept) was not searched again: the one an earlier run "
            f"chose still holds, since only {changed} image(s) were added, removed or relabelled after that search. "
            f"It is searched again once more than {limit} have changed; until then a retrain takes seconds instead "
            "of a search over every strength.")
    if cross_validated:
        accuracy = common.fmt_pct(frame.loc[kept].get("val_accuracy"))
        text += f" Its accuracy on images it did not train on, {accuracy}, is the accuracy of this run."
    return text


def fine_tune_note(frame: pd.DataFrame, result: dict | None, planned: int | None) -> str:
    n = len(frame)
    text = f"{n} of {planned or n} epoch(s): each goes once through every training image; validation is measured " \
           "on the images set aside."
    if result is None:
        return text
    kept = kept_step(frame, "fine_tune", result)
    accuracy = common.fmt_pct(result.get("val_accuracy"))
    if kept is None:
        return text + (" No epoch did better on the images set aside than the model before fine-tuning, so that "
                       f"one is kept: validation accuracy {accuracy}, the accuracy of this run.")
    return text + (f" Kept: epoch {kept}, the lowest validation loss; its validation accuracy, {accuracy}, is the "
                   "accuracy of this run.")
