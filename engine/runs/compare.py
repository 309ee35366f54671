"""What changed between two training runs: configuration, accuracy, per-class scores and the images whose prediction
flipped. Works on the runs' metrics.json and config.json contents (plain dicts), so the app and scripts share it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

# config.json fields that name where a run was written, not how it was trained
PLACE_FIELDS = ("image_dir", "run_dir", "saved_model_dir", "labels_output_file", "tflite_output_file", "cache_dir")
CLASS_METRICS = ("precision", "recall", "f1")


@dataclass
class RunDiff:
    accuracy: tuple[float | None, float | None]
    per_class: list[dict[str, Any]] = field(default_factory=list)
    flips: list[dict[str, Any]] = field(default_factory=list)
    n_common: int = 0
    config: list[tuple[str, Any, Any]] = field(default_factory=list)

    @property
    def accuracy_delta(self) -> float | None:
        a, b = self.accuracy
        return None if a is None or b is None else b - a

    @property
    def fixed(self) -> int:
        return sum(1 for f in self.flips if f["change"] == "now right")

    @property
    def broken(self) -> int:
        return sum(1 for f in self.flips if f["change"] == "now wrong")


def prediction_key(p: dict[str, Any]) -> str:
    """An image's identity across runs: its SHA-256 when the run recorded it, else its file name (the path changes
    when the image is moved to another class folder; file names are unique within a project)."""
    if p.get("sha256"):
        return str(p["sha256"])
    return PurePath(str(p.get("path", ""))).name


def config_diff(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[tuple[str, Any, Any]]:
    """(field, before, after) for every training setting that differs, in sorted order."""
    before, after = before or {}, after or {}
    keys = sorted((set(before) | set(after)) - set(PLACE_FIELDS))
    return [(k, before.get(k), after.get(k)) for k in keys if before.get(k) != after.get(k)]


def per_class_deltas(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per class of either run: precision/recall/f1 before and after and the change of each."""
    pa, pb = before.get("per_class") or {}, after.get("per_class") or {}
    rows = []
    for cls in list(dict.fromkeys([*pb, *pa])):
        row: dict[str, Any] = {"class": cls}
        for m in CLASS_METRICS:
            va, vb = (pa.get(cls) or {}).get(m), (pb.get(cls) or {}).get(m)
            row[f"{m} before"], row[m] = va, vb
            row[f"{m} change"] = None if va is None or vb is None else float(vb) - float(va)
        row["support"] = (pb.get(cls) or {}).get("support")
        rows.append(row)
    return rows


def flipped(before: dict[str, Any], after: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """Images predicted in both runs whose predicted class or right/wrong verdict changed, and how many images both
    runs predicted.

    change: "now right" (was wrong), "now wrong" (was right), or "changed" (another wrong class). Each run is judged
    by the labels it trained on, so fixing a label makes an unchanged prediction "now right"."""
    old = {prediction_key(p): p for p in before.get("predictions") or []}
    flips, common = [], 0
    for p in after.get("predictions") or []:
        q = old.get(prediction_key(p))
        if q is None:
            continue
        common += 1
        was_right, now_right = q.get("predicted") == q.get("true"), p.get("predicted") == p.get("true")
        if q.get("predicted") == p.get("predicted") and was_right == now_right:
            continue
        change = "now right" if now_right and not was_right else "now wrong" if was_right and not now_right \
            else "changed"
        flips.append({"key": prediction_key(p), "path": p.get("path"), "sha256": p.get("sha256"),
                      "true": p.get("true"), "true before": q.get("true"), "predicted before": q.get("predicted"),
                      "predicted": p.get("predicted"), "probability": p.get("probability"), "change": change})
    order = {"now right": 0, "now wrong": 1, "changed": 2}
    flips.sort(key=lambda f: (order[f["change"]], str(f["true"]), str(f["key"])))
    return flips, common


def diff_runs(before: dict[str, Any], after: dict[str, Any], before_config: dict[str, Any] | None = None,
              after_config: dict[str, Any] | None = None) -> RunDiff:
    """Everything that changed from run `before` to run `after` (their metrics.json and config.json)."""
    flips, common = flipped(before, after)
    acc = tuple(float(m["val_accuracy"]) if isinstance(m.get("val_accuracy"), int | float) else None
                for m in (before, after))
    return RunDiff(accuracy=acc, per_class=per_class_deltas(before, after), flips=flips, n_common=common,
                   config=config_diff(before_config, after_config))
