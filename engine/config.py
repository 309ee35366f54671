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


@dataclass
class TrainConfig:
    # --- data ---------------------------------------------------------------------------------------------------
    image_dir: str = ""
    validation_split: float = 0.2
    seed: int = 42
    center_crop: bool = False  # crop images with aspect > 1.5 to a centred square (as label_image does)

    # --- backbone -------------------------------------------------------------------------------------------------
    tfhub_module: str = DEFAULT_BACKBONE  # a name from backbones.BACKBONES, a local SavedModel folder, or a URL
    image_size: int | None = None  # None: the backbone's own input size

    # --- head training (make_image_classifier flags, same meaning) ------------------------------------------------
    # make_image_classifier trains 5 SGD epochs and underfits; on cached embeddings an epoch costs milliseconds,
    # so we train up to this many epochs and stop early on validation loss, restoring the best weights.
    train_epochs: int = 300
    batch_size: int = 32
    learning_rate: float = 0.005
    momentum: float = 0.9
    optimizer: str = "adam"  # "adam" (default, converges in few epochs) or "sgd" (make_image_classifier's)
    dropout_rate: float = 0.2
    label_smoothing: float = 0.1
    l1_regularizer: float = 0.0
    l2_regularizer: float = 0.0001
    early_stopping_patience: int = 20
    class_weights: str = "none"  # "none" or "balanced"

    # --- fine-tuning (opt-in) ---------------------------------------------------------------------------------------
    do_fine_tuning: bool = False
    fine_tune_epochs: int = 5
    fine_tune_learning_rate: float = 0.0005
    do_data_augmentation: bool = True  # only used while fine-tuning: head-only training runs on cached embeddings
    rotation_range: float = 10.0
    horizontal_flip: bool = True
    zoom_range: float = 0.1

    # --- outputs (make_image_classifier flags) ---------------------------------------------------------------------
    saved_model_dir: str | None = None
    labels_output_file: str | None = None
    tflite_output_file: str | None = None
    run_dir: str | None = None  # where the run's config, events, metrics and bundle go
    assert_accuracy_at_least: float | None = None
    quantize: list[str] = field(default_factory=lambda: ["float32", "dynamic", "int8"])

    # --- caching ------------------------------------------------------------------------------------------------------
    cache_dir: str | None = None  # None: the user cache dir (see backbones.cache_root)

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
