"""The one training configuration that flows from the UI or the CLI to the trainer.

Field names and meanings follow TF Hub's `make_image_classifier` flags so its command lines keep working; the
defaults differ where its defaults are weak (see `train_epochs`), and every default lives here, nowhere else (the
default backbone and the presets are the backbone table's, engine.config.backbones; the variant names are
engine.config.variants').

Each field's metadata carries its help text, choices and bounds, and a TrainConfig checks them when it is built
(ConfigError): the CLI's flags, the app's form and a config.json read back accept exactly the same values.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config.backbones import DEFAULT_BACKBONE, PRESETS
from engine.config.variants import NAMES as VARIANT_NAMES  # the TFLite variants --quantize may name

# --center_crop, TF label_image's rule: an image whose long side is more than this times its short side is cropped
# to a centred square before resizing. Training, export, predict and the cache key read it here; the bundle's
# standalone predict.py restates it (it ships without the engine) and a test keeps the two equal.
CENTER_CROP_ASPECT = 1.5
CENTER_CROP_RULE = (f"if the long side is more than {CENTER_CROP_ASPECT:g}x the short side, crop a centred square "
                    "first")


class ConfigError(ValueError):
    """A training option refused where the config is built, before anything is read or written.

    A ValueError, so every caller that already shows ValueErrors as user errors (the CLI, the app's form, the
    worker reading config.json) shows this one too; `option` and `problem` let the CLI report it argparse-style.
    """

    def __init__(self, option: str | None, problem: str):
        self.option, self.problem = option, problem
        super().__init__(f"--{option}: {problem}" if option else problem)


def _opt(default: Any, help: str, **kw: Any) -> Any:  # noqa: A002 - "help" as in argparse
    """A field whose help text, choices and bounds travel with its default: the CLI, the app's form and
    `TrainConfig.__post_init__` read them from here, so what one accepts the others accept.

    choices=[...]: the allowed values. each_of=[...], item="...": the allowed items of a list option.
    min=, max=: inclusive bounds of a number (None is allowed where the default is None).
    """
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
                                        "on the held-out part.", min=0.0, max=0.9)
    cv_folds: int = _opt(5, "Folds for cross-validation (stratified, seeded; identical and near-identical images "
                            "always share a fold). Fewer are used when there are fewer distinct images. With "
                            "--do_fine_tuning, one fold is held out for validation.", min=2, max=20)
    seed: int = _opt(42, "Random seed for the split, shuffling and initialisation (same seed, same result).", min=0)
    center_crop: bool = _opt(False, f"Crop images longer than {CENTER_CROP_ASPECT:g}:1 to a centred square before "
                                    "resizing (as label_image does); applied identically in training, export and "
                                    "predict.")

    # --- backbone -------------------------------------------------------------------------------------------------
    tfhub_module: str = _opt(DEFAULT_BACKBONE, "Backbone: a built-in offline name (efficientnet-lite0/1/2), a local "
                                               "TF Hub SavedModel folder, or a TF Hub URL when online.")
    image_size: int | None = _opt(None, "Input size in pixels (default: the backbone's own size).", min=32, max=1024)
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
                                              "cross-validated log-loss (reported in metrics).", min=0.0)
    train_epochs: int = _opt(500, "Maximum optimiser iterations of the head (full-batch L-BFGS; it stops "
                                  "earlier once converged).", min=1, max=10000)
    target_precision: float = _opt(0.95, "The \"unknown\" threshold: the lowest confidence at which cross-validated "
                                         "predictions reach this precision; predict and the server mark answers "
                                         "below it as unknown.", min=0.5, max=1.0)
    calibrate: bool = _opt(True, "Fit a temperature on cross-validated predictions so probabilities match how "
                                 "often the model is right; baked into every exported model.")
    class_weights: str = _opt("none", "'balanced' weighs classes inversely to their size; 'none' does not.",
                              choices=["none", "balanced"])
    batch_size: int = _opt(32, "Batch size (fine-tuning; the head trains on all features at once).", min=1, max=4096)
    learning_rate: float = _opt(0.005, "Learning rate (kept for make_image_classifier command lines; the head's "
                                       "L-BFGS needs none, fine-tuning uses --fine_tune_learning_rate).", min=0.0)
    momentum: float = _opt(0.9, "Momentum (fine-tuning with --optimizer sgd).", min=0.0, max=1.0)
    optimizer: str = _opt("adam", "Fine-tuning optimizer: adam (default) or sgd (make_image_classifier's).",
                          choices=["adam", "sgd"])
    dropout_rate: float = _opt(0.2, "Dropout before the classification layer while fine-tuning (the head's L2 "
                                    "plays that role on cached features).", min=0.0, max=0.95)
    label_smoothing: float = _opt(0.0, "Label smoothing of the cross-entropy loss while fine-tuning.",
                                  min=0.0, max=0.5)
    l1_regularizer: float = _opt(0.0, "L1 penalty on the classification layer's weights while fine-tuning.", min=0.0)
    early_stopping_patience: int = _opt(10, "Kept for old command lines and configs; the head converges by "
                                            "L-BFGS and fine-tuning keeps its best validation epoch.", min=1, max=1000)
    early_stopping_monitor: str = _opt("loss", "Kept for old command lines and configs (no effect).",
                                       choices=["loss", "val_loss"])

    # --- fine-tuning (opt-in) ---------------------------------------------------------------------------------------
    do_fine_tuning: bool = _opt(False, "After the head, also train the backbone on images with augmentation "
                                       "(slower; often a little more accurate).")
    # No upper bound: a practically endless run stopped by Cancel (or SIGTERM) is a use, and the tests' way to
    # catch a job mid-training.
    fine_tune_epochs: int = _opt(5, "Epochs of fine-tuning.", min=1)
    fine_tune_learning_rate: float = _opt(0.00001, "Learning rate while fine-tuning (small: the backbone is "
                                                   "already good; the epoch with the best validation loss is kept, "
                                                   "the head-only model counting as epoch 0).", min=0.0)
    do_data_augmentation: bool = _opt(True, "Random flips, rotations and zooms while fine-tuning (head-only "
                                            "training runs on cached features and has none).")
    rotation_range: float = _opt(10.0, "Augmentation: maximum rotation in degrees.", min=0.0, max=180.0)
    horizontal_flip: bool = _opt(True, "Augmentation: random horizontal flips.")
    zoom_range: float = _opt(0.1, "Augmentation: maximum zoom fraction.", min=0.0, max=0.9)
    # make_image_classifier's ImageDataGenerator meanings; 0 (off) by default here, as fine-tuning on a few hundred
    # photos was not measured to gain from them (make_image_classifier used 0.2 for all three).
    width_shift_range: float = _opt(0.0, "Augmentation: maximum horizontal shift as a fraction of the width.",
                                    min=0.0, max=0.5)
    height_shift_range: float = _opt(0.0, "Augmentation: maximum vertical shift as a fraction of the height.",
                                     min=0.0, max=0.5)
    shear_range: float = _opt(0.0, "Augmentation: maximum shear angle in degrees (counter-clockwise, as Keras' "
                                   "ImageDataGenerator).", min=0.0, max=45.0)
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
    assert_accuracy_at_least: float | None = _opt(None, "Fail (exit 1) when validation accuracy is below this.",
                                                  min=0.0, max=1.0)
    quantize: list[str] = _opt(list(VARIANT_NAMES), "TFLite variants to export (comma separated).",
                               each_of=list(VARIANT_NAMES), item="variant")

    # --- caching ------------------------------------------------------------------------------------------------------
    cache_dir: str | None = _opt(None, "Embedding cache folder (default: ~/.cache/retrain-studio).")

    def __post_init__(self) -> None:
        # Every way in (the CLI, the app's form, config.json read by the worker, dataclasses.replace) builds a
        # TrainConfig: checking here refuses a bad value before a run folder, cache or feature exists.
        for f in dataclasses.fields(self):
            check_option(f.name, getattr(self, f.name))
        if self.tfhub_module == DEFAULT_BACKBONE:
            self.tfhub_module = PRESETS[self.preset]["tfhub_module"]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(None, f"Unknown training option(s): {', '.join(unknown)}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


# ----------------------------------------------------------------------------------------------------------------
# Validation: one rule per option, from the field's type hint and metadata
# ----------------------------------------------------------------------------------------------------------------
@functools.cache
def _fields() -> dict[str, tuple[dataclasses.Field, Any, bool]]:
    """name -> (field, base type, None allowed); the hints are strings under `from __future__ import annotations`."""
    hints = typing.get_type_hints(TrainConfig)
    out = {}
    for f in dataclasses.fields(TrainConfig):
        hint, optional = hints[f.name], False
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            args = typing.get_args(hint)
            optional = type(None) in args
            hint = next(a for a in args if a is not type(None))
        out[f.name] = (f, typing.get_origin(hint) or hint, optional)
    return out


def option_bounds(name: str) -> tuple[float | None, float | None]:
    """The inclusive (min, max) of a numeric option, None where unbounded; the app's form reads them from here."""
    meta = _fields()[name][0].metadata
    return meta.get("min"), meta.get("max")


def _range_text(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"use a value from {lo:g} to {hi:g}"
    return f"use a value of at least {lo:g}" if lo is not None else f"use a value of at most {hi:g}"


def check_option(name: str, value: Any) -> None:
    """Raise ConfigError when `value` is not a valid value of option `name` (type, choices, bounds)."""
    if name not in _fields():
        raise ConfigError(None, f"Unknown training option(s): {name}")
    f, kind, optional = _fields()[name]
    meta = f.metadata
    if value is None:
        if optional:
            return
        raise ConfigError(name, "a value is required")
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(name, f"expected true or false, got {value!r}")
    elif kind in (int, float):
        # bool is an int to Python, never a number to a user; a float where a count is meant is a mistake. The
        # numbers ABCs also admit NumPy scalars (a seed from np.arange).
        number = numbers.Integral if kind is int else numbers.Real
        if isinstance(value, bool) or not isinstance(value, number) or not math.isfinite(value):
            raise ConfigError(name, f"expected {'a whole number' if kind is int else 'a number'}, got {value!r}")
        lo, hi = option_bounds(name)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ConfigError(name, f"{value!r} is out of range; {_range_text(lo, hi)}")
    elif kind is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(name, f"expected a list of names, got {value!r}")
        allowed = meta.get("each_of")
        bad = [v for v in value if allowed is not None and v not in allowed]
        if bad:
            raise ConfigError(name, f"unknown {meta.get('item', 'value')} {bad[0]!r}; use {', '.join(allowed)}")
    elif kind is str:
        if not isinstance(value, str):
            raise ConfigError(name, f"expected text, got {value!r}")
        choices = meta.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(name, f"unknown value {value!r}; use {', '.join(choices)}")
