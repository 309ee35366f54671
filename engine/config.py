"""The one training configuration that flows from the UI or the CLI to the trainer.

Field names and meanings follow TF Hub's `make_image_classifier` flags so its command lines keep working; the
defaults differ where its defaults are weak (see `train_epochs`), and every default lives here, nowhere else.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_BACKBONE = "efficientnet-lite0"


def _opt(default: Any, help: str, **kw: Any) -> Any:  # noqa: A002 - "help" as in argparse
    """A field whose help text travels with its default (the CLI and the app's form read both from here)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    # --- data ---------------------------------------------------------------------------------------------------
    image_dir: str = _opt("", "Folder with one subfolder of images per class (labels = sorted folder names).")
    validation_split: float = _opt(0.2, "Fraction of each class held out for validation (stratified, seeded).")
    seed: int = _opt(42, "Random seed for the split, shuffling and initialisation (same seed, same result).")
    center_crop: bool = _opt(False, "Crop images longer than 1.5:1 to a centred square before resizing "
                                    "(as label_image does); applied identically in training, export and predict.")

    # --- backbone -------------------------------------------------------------------------------------------------
    tfhub_module: str = _opt(DEFAULT_BACKBONE, "Backbone: a built-in offline name (efficientnet-lite0/1/2), a local "
                                               "TF Hub SavedModel folder, or a TF Hub URL when online.")
    image_size: int | None = _opt(None, "Input size in pixels (default: the backbone's own size).")

    # --- head training (make_image_classifier flags, same meaning) ------------------------------------------------
    # make_image_classifier trains 5 SGD epochs and underfits; on cached embeddings an epoch costs milliseconds,
    # so we train up to this many epochs and stop early on validation loss, restoring the best weights.
    train_epochs: int = _opt(300, "Maximum epochs for the classifier head (early stopping usually ends sooner).")
    batch_size: int = _opt(32, "Batch size.")
    learning_rate: float = _opt(0.005, "Learning rate of the head optimizer.")
    momentum: float = _opt(0.9, "Momentum (with --optimizer sgd).")
    optimizer: str = _opt("adam", "adam (default: converges in few epochs) or sgd (make_image_classifier's).",
                          choices=["adam", "sgd"])
    dropout_rate: float = _opt(0.2, "Dropout before the classification layer.")
    # Defaults below are tuned on cached features (flowers, text_nontext: see bench/), not make_image_classifier's
    # (label smoothing 0.1, L2 1e-4), which cost ~2 points of accuracy against a converged logistic regression.
    label_smoothing: float = _opt(0.0, "Label smoothing of the cross-entropy loss.")
    l1_regularizer: float = _opt(0.0, "L1 penalty on the classification layer's weights.")
    l2_regularizer: float = _opt(0.005, "L2 penalty on the classification layer's weights.")
    early_stopping_patience: int = _opt(10, "Epochs without improvement before the learning rate is lowered "
                                            "(3 times), then training stops; the best weights are kept.")
    early_stopping_monitor: str = _opt("loss", "What early stopping watches: 'loss' (the regularised training loss: "
                                              "train to convergence) or 'val_loss' (stop when validation loss "
                                              "stops improving; noisy on small validation sets).",
                                       choices=["loss", "val_loss"])
    class_weights: str = _opt("none", "'balanced' weighs classes inversely to their size; 'none' does not.",
                              choices=["none", "balanced"])

    # --- fine-tuning (opt-in) ---------------------------------------------------------------------------------------
    do_fine_tuning: bool = _opt(False, "After the head, also train the backbone on images with augmentation "
                                       "(slower; often a little more accurate).")
    fine_tune_epochs: int = _opt(5, "Epochs of fine-tuning.")
    fine_tune_learning_rate: float = _opt(0.00001, "Learning rate while fine-tuning (small: the backbone is "
                                                   "already good; the epoch with the best validation loss is kept, "
                                                   "the head-only model counting as epoch 0).")
    do_data_augmentation: bool = _opt(True, "Random flips, rotations and zooms while fine-tuning (head-only "
                                            "training runs on cached features and has none).")
    rotation_range: float = _opt(10.0, "Augmentation: maximum rotation in degrees.")
    horizontal_flip: bool = _opt(True, "Augmentation: random horizontal flips.")
    zoom_range: float = _opt(0.1, "Augmentation: maximum zoom fraction.")

    # --- outputs (make_image_classifier flags) ---------------------------------------------------------------------
    saved_model_dir: str | None = _opt(None, "Also copy the exported TF SavedModel here.")
    labels_output_file: str | None = _opt(None, "Also write the labels (line i = output i) here.")
    tflite_output_file: str | None = _opt(None, "Also copy the float32 .tflite model here.")
    run_dir: str | None = _opt(None, "Folder for this run's config, events, metrics, exported models and bundle "
                                     "(default: ./runs/<timestamp>).")
    assert_accuracy_at_least: float | None = _opt(None, "Fail (exit 1) when validation accuracy is below this.")
    quantize: list[str] = _opt(["float32", "dynamic", "int8"], "TFLite variants to export (comma separated).")

    # --- caching ------------------------------------------------------------------------------------------------------
    cache_dir: str | None = _opt(None, "Embedding cache folder (default: ~/.cache/retrain-studio).")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"Unknown training option(s): {', '.join(unknown)}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
