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
# What a preset changes while --tfhub_module is left at its default. "accuracy" measured with bench/bench_cv.py
# (5 random 50/50 splits, each scored both ways, head chosen by cross-validation): held-out top-1 on flowers 0.907
# with Lite0 -> 0.917 with Lite2, text_nontext 0.976 -> 0.977 (cross-validated on all 300 flowers: 0.920 ->
# 0.937), for 2.4x the backbone time (143 vs 336 images/s on 2 cores).
PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"tfhub_module": DEFAULT_BACKBONE},
    "accuracy": {"tfhub_module": "efficientnet-lite2"},
}


def _opt(default: Any, help: str, **kw: Any) -> Any:  # noqa: A002 - "help" as in argparse
    """A field whose help text travels with its default (the CLI and the app's form read both from here)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    # --- data ---------------------------------------------------------------------------------------------------
    image_dir: str = _opt("", "Folder with one subfolder of images per class (labels = sorted folder names).")
    # 0 (the default) means k-fold cross-validation: every labelled image is judged by a head that did not see it,
    # and the shipped head is trained on all of them (holding out a fifth cost ~3 points on small projects).
    validation_split: float = _opt(0.0, "How the model is judged. 0 (default): k-fold cross-validation (see "
                                        "--cv_folds): every image is predicted by a model that never saw it, the "
                                        "reported metrics are cross-validated, and the shipped model is trained on "
                                        "all of the images. > 0: make_image_classifier's behaviour: hold out this "
                                        "fraction of each class (stratified, seeded), train on the rest and report "
                                        "on the held-out part.")
    cv_folds: int = _opt(5, "Folds for cross-validation (stratified, seeded; identical and near-identical images "
                            "always share a fold). Fewer are used when there are fewer distinct images. With "
                            "--do_fine_tuning, one fold is held out for validation.")
    seed: int = _opt(42, "Random seed for the split, shuffling and initialisation (same seed, same result).")
    center_crop: bool = _opt(False, "Crop images longer than 1.5:1 to a centred square before resizing "
                                    "(as label_image does); applied identically in training, export and predict.")

    # --- backbone -------------------------------------------------------------------------------------------------
    tfhub_module: str = _opt(DEFAULT_BACKBONE, "Backbone: a built-in offline name (efficientnet-lite0/1/2), a local "
                                               "TF Hub SavedModel folder, or a TF Hub URL when online.")
    image_size: int | None = _opt(None, "Input size in pixels (default: the backbone's own size).")
    preset: str = _opt("fast", "fast: EfficientNet-Lite0 (the default). accuracy: EfficientNet-Lite2, about 1 point "
                               "more accurate on photos for 2.4x the feature time. Applies when "
                               "--tfhub_module is left at its default.", choices=list(PRESETS))

    # --- head training ----------------------------------------------------------------------------------------------
    # The head is a multinomial logistic regression fitted to convergence by full-batch L-BFGS on cached features
    # (engine/learn/crossval.py): milliseconds per fit, so the L2 strength is chosen by cross-validated log-loss. The
    # make_image_classifier flags below keep their names so its command lines work; the optimiser ones only
    # matter for fine-tuning.
    l2_regularizer: float | None = _opt(None, "L2 penalty on the classification layer's weights (loss = mean "
                                              "cross-entropy + l2 * sum(w^2)). Default: chosen from 1e-4..0.1 by "
                                              "cross-validated log-loss (reported in metrics).")
    train_epochs: int = _opt(500, "Maximum optimiser iterations of the head (full-batch L-BFGS; it stops "
                                  "earlier once converged).")
    target_precision: float = _opt(0.95, "The \"unknown\" threshold: the lowest confidence at which cross-validated "
                                         "predictions reach this precision; predict and the server mark answers "
                                         "below it as unknown.")
    calibrate: bool = _opt(True, "Fit a temperature on cross-validated predictions so probabilities match how "
                                 "often the model is right; baked into every exported model.")
    class_weights: str = _opt("none", "'balanced' weighs classes inversely to their size; 'none' does not.",
                              choices=["none", "balanced"])
    batch_size: int = _opt(32, "Batch size (fine-tuning; the head trains on all features at once).")
    learning_rate: float = _opt(0.005, "Learning rate (kept for make_image_classifier command lines; the head's "
                                       "L-BFGS needs none, fine-tuning uses --fine_tune_learning_rate).")
    momentum: float = _opt(0.9, "Momentum (fine-tuning with --optimizer sgd).")
    optimizer: str = _opt("adam", "Fine-tuning optimizer: adam (default) or sgd (make_image_classifier's).",
                          choices=["adam", "sgd"])
    dropout_rate: float = _opt(0.2, "Dropout before the classification layer while fine-tuning (the head's L2 "
                                    "plays that role on cached features).")
    label_smoothing: float = _opt(0.0, "Label smoothing of the cross-entropy loss while fine-tuning.")
    l1_regularizer: float = _opt(0.0, "L1 penalty on the classification layer's weights while fine-tuning.")
    early_stopping_patience: int = _opt(10, "Kept for old command lines and configs; the head converges by "
                                            "L-BFGS and fine-tuning keeps its best validation epoch.")
    early_stopping_monitor: str = _opt("loss", "Kept for old command lines and configs (no effect).",
                                       choices=["loss", "val_loss"])

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
    # make_image_classifier's ImageDataGenerator meanings; 0 (off) by default here, as fine-tuning on a few hundred
    # photos was not measured to gain from them (make_image_classifier used 0.2 for all three).
    width_shift_range: float = _opt(0.0, "Augmentation: maximum horizontal shift as a fraction of the width.")
    height_shift_range: float = _opt(0.0, "Augmentation: maximum vertical shift as a fraction of the height.")
    shear_range: float = _opt(0.0, "Augmentation: maximum shear angle in degrees (counter-clockwise, as Keras' "
                                   "ImageDataGenerator).")
    distribution_strategy: str = _opt("none", "Fine-tuning across devices (make_image_classifier's flag): 'mirrored' "
                                              "(all local GPUs, else the CPU) or 'multi_worker' (one process per "
                                              "machine, from TF_CONFIG); --batch_size stays global, split over the "
                                              "replicas; see docs/scaling.md.",
                                      choices=["none", "mirrored", "multi_worker"])

    set_memory_growth: bool = _opt(False, "Let TensorFlow take GPU memory as it needs it instead of all at once "
                                          "(tf.config.experimental.set_memory_growth on every GPU); no effect "
                                          "without a GPU.")

    # --- outputs (make_image_classifier flags) ---------------------------------------------------------------------
    saved_model_dir: str | None = _opt(None, "Also copy the exported TF SavedModel here.")
    labels_output_file: str | None = _opt(None, "Also write the labels (line i = output i) here.")
    tflite_output_file: str | None = _opt(None, "Also copy the float32 .tflite model here.")
    run_dir: str | None = _opt(None, "Folder for this run's config, events, metrics, exported models and bundle "
                                     "(default: ./runs/<timestamp>).")
    summaries_dir: str | None = _opt(None, "Write TensorBoard scalars here: the head's cross-validation curve "
                                           "(loss and accuracy per L2 value) and the fine-tuning epochs.")
    assert_accuracy_at_least: float | None = _opt(None, "Fail (exit 1) when validation accuracy is below this.")
    quantize: list[str] = _opt(["float32", "dynamic", "int8"], "TFLite variants to export (comma separated).")

    # --- caching ------------------------------------------------------------------------------------------------------
    cache_dir: str | None = _opt(None, "Embedding cache folder (default: ~/.cache/retrain-studio).")

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"Unknown preset '{self.preset}': use one of {', '.join(PRESETS)}")
        if self.tfhub_module == DEFAULT_BACKBONE:
            self.tfhub_module = PRESETS[self.preset]["tfhub_module"]

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
