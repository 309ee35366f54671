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
    # Help texts are written for a person using the app (its form shows them as tooltips and adds the option's own
    # flag at the end); the CLI prints them after the flag. Another option is named in words, never by its flag.

    # --- data ---------------------------------------------------------------------------------------------------
    image_dir: str = _opt("", "Folder with one subfolder of images per class (labels = sorted folder names).")
    # 0 (the default) means k-fold cross-validation: every labelled image is judged by a head that did not see it,
    # and the shipped head is trained on all of them (holding out a fifth cost ~3 points on small projects).
    validation_split: float = _opt(0.0, "How the model is judged. 0 (the default): by cross-validation: every image "
                                        "is predicted by a model that never saw it, and the model you download is "
                                        "trained on all of the images. Above 0: this share of each class is set "
                                        "aside (the same images for the same seed), the model trains on the rest "
                                        "and is judged on the images set aside (TF Hub make_image_classifier's "
                                        "way).", min=0.0, max=0.9)
    cv_folds: int = _opt(5, "Into how many groups cross-validation splits the images: each group is predicted by a "
                            "model trained on the others. Copies and near-copies of an image always share a group; "
                            "fewer groups are used when there are fewer distinct images. When fine-tuning, one "
                            "group is set aside to judge the model.", min=2, max=20)
    seed: int = _opt(42, "Random seed for the split, shuffling and initialisation: the same seed gives the same "
                         "result.", min=0)
    center_crop: bool = _opt(False, f"Crop images longer than {CENTER_CROP_ASPECT:g}:1 to a centred square before "
                                    "resizing (as TensorFlow's label_image does); applied the same way in training, "
                                    "export and prediction.")

    # --- backbone -------------------------------------------------------------------------------------------------
    tfhub_module: str = _opt(DEFAULT_BACKBONE, "The network that turns each image into features (the backbone): a "
                                               "built-in name (efficientnet-lite0/1/2), a local TF Hub SavedModel "
                                               "folder, or a TF Hub URL when online.")
    image_size: int | None = _opt(None, "Input size in pixels (empty: the backbone's own size).", min=32, max=1024)
    preset: str = _opt("fast", "A shortcut for the backbone. fast: EfficientNet-Lite0 (the default). accuracy: "
                               "EfficientNet-Lite2, about 1 point more accurate on photos for 2.4x the time spent "
                               "computing features. Used when the backbone is left at its default "
                               f"({DEFAULT_BACKBONE}).", choices=list(PRESETS))

    # --- head training ----------------------------------------------------------------------------------------------
    # The head is a multinomial logistic regression fitted to convergence by full-batch L-BFGS on cached features
    # (engine/learn/crossval.py): milliseconds per fit, so the L2 strength is chosen by cross-validated log-loss. The
    # make_image_classifier flags below keep their names so its command lines work; the optimiser ones only
    # matter for fine-tuning.
    l2_regularizer: float | None = _opt(None, "How strongly the classifier is kept simple (an L2 penalty on its "
                                              "weights): stronger is less likely to learn the noise of a few "
                                              "images. Empty (the default): the strength that predicts unseen "
                                              "images best is chosen from 0.0001 to 0.1 by cross-validation.",
                                        min=0.0)
    train_epochs: int = _opt(500, "The most optimiser steps the classifier takes; it stops earlier once it has "
                                  "converged (full-batch L-BFGS), so this rarely needs changing.", min=1, max=10000)
    target_precision: float = _opt(0.95, "When the model says \"unknown\": an answer less confident than the level "
                                         "at which this share of its answers were right (precision, measured on "
                                         "images it did not train on) is marked unknown by predict and the server.",
                                   min=0.5, max=1.0)
    calibrate: bool = _opt(True, "Adjust the confidences so that they match how often the model is right (a "
                                 "temperature fitted on cross-validated predictions, built into every exported "
                                 "model).")
    class_weights: str = _opt("none", "'balanced': images of small classes count more, so every class weighs the "
                                      "same in training. 'none': every image counts once.",
                              choices=["none", "balanced"])
    batch_size: int = _opt(32, "Images per training step while fine-tuning (the classifier alone trains on all the "
                               "images at once).", min=1, max=4096)
    learning_rate: float = _opt(0.005, "No effect: kept so make_image_classifier command lines still work (the "
                                       "classifier needs no learning rate, and fine-tuning has its own).", min=0.0)
    momentum: float = _opt(0.9, "Momentum of the optimiser while fine-tuning with sgd.", min=0.0, max=1.0)
    optimizer: str = _opt("adam", "The optimiser while fine-tuning: adam (the default) or sgd (make_image_"
                                  "classifier's).", choices=["adam", "sgd"])
    dropout_rate: float = _opt(0.2, "While fine-tuning: the share of features left out at random before the "
                                    "classifier, so that it does not lean on a few of them (the classifier alone "
                                    "has its L2 penalty for that).", min=0.0, max=0.95)
    label_smoothing: float = _opt(0.0, "While fine-tuning: how much the targets are softened (0: not at all); can "
                                       "help when some labels are wrong.", min=0.0, max=0.5)
    l1_regularizer: float = _opt(0.0, "While fine-tuning: an L1 penalty on the classifier's weights (0: none).",
                                 min=0.0)
    early_stopping_patience: int = _opt(10, "No effect: kept so old command lines and configs still work (the "
                                            "classifier converges on its own, and fine-tuning keeps its best "
                                            "epoch).", min=1, max=1000)
    early_stopping_monitor: str = _opt("loss", "No effect: kept so old command lines and configs still work.",
                                       choices=["loss", "val_loss"])

    # --- fine-tuning (opt-in) ---------------------------------------------------------------------------------------
    do_fine_tuning: bool = _opt(False, "After the classifier, also train the backbone itself on the images, with "
                                       "random flips, rotations and zooms: minutes instead of seconds, often a "
                                       "little more accurate. The model is then judged on one group of images set "
                                       "aside instead of by cross-validation.")
    # No upper bound: a practically endless run stopped by Cancel (or SIGTERM) is a use, and the tests' way to
    # catch a job mid-training.
    fine_tune_epochs: int = _opt(5, "How many times fine-tuning goes through all the images (epochs).", min=1)
    fine_tune_learning_rate: float = _opt(0.00001, "How big a step fine-tuning takes: small, as the backbone is "
                                                   "already good. The epoch that does best on the images set aside "
                                                   "is kept, the model before fine-tuning counting as epoch 0.",
                                          min=0.0)
    do_data_augmentation: bool = _opt(True, "While fine-tuning: show the images with random flips, rotations and "
                                            "zooms, so that the model learns what stays the same (the classifier "
                                            "alone trains on fixed features and has none).")
    rotation_range: float = _opt(10.0, "Augmentation: the largest rotation, in degrees.", min=0.0, max=180.0)
    horizontal_flip: bool = _opt(True, "Augmentation: mirror images left to right at random.")
    zoom_range: float = _opt(0.1, "Augmentation: the largest zoom, as a fraction.", min=0.0, max=0.9)
    # make_image_classifier's ImageDataGenerator meanings; 0 (off) by default here, as fine-tuning on a few hundred
    # photos was not measured to gain from them (make_image_classifier used 0.2 for all three).
    width_shift_range: float = _opt(0.0, "Augmentation: the largest shift sideways, as a fraction of the width.",
                                    min=0.0, max=0.5)
    height_shift_range: float = _opt(0.0, "Augmentation: the largest shift up or down, as a fraction of the "
                                          "height.", min=0.0, max=0.5)
    shear_range: float = _opt(0.0, "Augmentation: the largest shear angle in degrees (counter-clockwise, as Keras' "
                                   "ImageDataGenerator).", min=0.0, max=45.0)
    distribution_strategy: str = _opt("none", "Fine-tuning across devices (make_image_classifier's option): "
                                              "'mirrored' uses all local GPUs, else the CPU; 'multi_worker' one "
                                              "process per machine, set up by TF_CONFIG. The batch size stays the "
                                              "total, split over the devices; see docs/scaling.md.",
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
    quantize: list[str] = _opt(list(VARIANT_NAMES), "Which TensorFlow Lite models to export: float32 (exact), "
                                                    "dynamic (about 4x smaller, nearly as exact), int8 (whole "
                                                    "numbers only: for microcontrollers and the Edge TPU). On the "
                                                    "command line: comma separated.",
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
