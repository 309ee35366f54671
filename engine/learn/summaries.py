"""`--summaries_dir`: TensorBoard scalars of a run, as make_image_classifier's TensorBoard callback wrote them.

Written from the run's history once training ends (the head is fitted in a second, and fine-tuning rows arrive
through the same history). This module imports TensorFlow: engine.runs.pipeline imports it only when the flag
is given. Layout:

    <summaries_dir>/train/        epoch_loss, epoch_accuracy per fine-tuning epoch (as Keras' TensorBoard callback)
    <summaries_dir>/validation/   the same on the validation images
    <summaries_dir>/head/         the head's cross-validation curve, one step per L2 value tried (strongest first):
                                  loss, accuracy (training), val_loss, val_accuracy (out-of-fold), l2

TensorBoard is not a requirement: TF writes event files itself (tf.summary.write with the scalars plugin's
metadata, which is what tensorboard's tf.summary.scalar adds).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from engine.core.tfcompat import tf

log = logging.getLogger(__name__)

_PHASE_TAGS = {"head": ("loss", "accuracy", "val_loss", "val_accuracy", "l2")}
_EPOCH_TAGS = {"train": (("loss", "epoch_loss"), ("accuracy", "epoch_accuracy")),
               "validation": (("val_loss", "epoch_loss"), ("val_accuracy", "epoch_accuracy"))}


def write_summaries(summaries_dir: str | Path, history: list[dict[str, Any]]) -> Path:
    """Write the history's scalars as TensorBoard event files under summaries_dir; returns the folder."""
    root = Path(summaries_dir)
    root.mkdir(parents=True, exist_ok=True)
    head = [r for r in history if r.get("phase") == "head"]
    tuned = [r for r in history if r.get("phase") == "fine_tune"]
    scalars: dict[str, list[tuple[str, int, float]]] = {}
    for row in head:
        for tag in _PHASE_TAGS["head"]:
            if row.get(tag) is not None:
                scalars.setdefault("head", []).append((tag, int(row["epoch"]), float(row[tag])))
    for row in tuned:
        for run, pairs in _EPOCH_TAGS.items():
            for key, tag in pairs:
                if row.get(key) is not None:
                    scalars.setdefault(run, []).append((tag, int(row["epoch"]), float(row[key])))
    metadata = _scalar_metadata()
    for run, values in scalars.items():
        writer = tf.summary.create_file_writer(str(root / run))
        with writer.as_default():
            for tag, step, value in values:
                tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=metadata)
        writer.close()
    log.info("TensorBoard scalars written to %s (%d head points, %d fine-tuning epochs)", root, len(head), len(tuned))
    return root


def _scalar_metadata():
    from tensorflow.core.framework import summary_pb2

    return summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
