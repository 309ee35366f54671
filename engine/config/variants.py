"""The TFLite variants a run can export, as data: the one table that config defaults, composition, export, the model
card, the Export page and the bench read.

A variant is a file name, a converter recipe (engine.export.tflite applies it; engine.export.compose builds the same
model without the converter), what its input and output are, and the runtimes that load it. The bundle's predict.py
and serve.py ship alone and cannot import this: they read each model's dtypes and quantization from the file itself.

Plain data and the standard library only: engine.config.runfiles imports it, and the app reads run folders on every
page.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


def file_name(name: str) -> str:
    """The file a variant is written to; also names files of variants that a card lists but this table lacks."""
    return f"model_{name}.tflite"


@dataclass(frozen=True)
class Recipe:
    """What the TFLite converter is told for this variant."""

    optimize: bool = False  # Optimize.DEFAULT: weights stored as int8
    calibrate: bool = False  # a representative dataset fixes the activation ranges, so activations are int8 too
    integer_only: bool = False  # TFLITE_BUILTINS_INT8 only: the conversion fails rather than keep a float op
    io_dtype: str = "float32"  # the model's input and output tensors (int8's uint8: raw pixels in)
    # One weight scale per dense layer: FULLY_CONNECTED v9, which tflite-runtime <= 2.14 and the TFLite Task Library
    # run; per-channel scales make it v12 (TFLite >= 2.17 only). The composed dynamic head is per-tensor too.
    per_tensor_dense: bool = False


@dataclass(frozen=True)
class Variant:
    name: str
    label: str  # the Export page's words for the file
    input: str  # the model card's (and the bundle README's) words for what goes in and comes out
    output: str
    note: str | None
    input_dtype: str
    input_range: tuple[float, float]
    recipe: Recipe
    runtimes: tuple[str, ...]  # what loads the file as it is

    @property
    def file(self) -> str:
        return file_name(self.name)

    def card_entry(self) -> dict[str, str]:
        """The variant's words in the model card's `tflite` entry (beside what was measured on the file)."""
        return {"input": self.input, "output": self.output, **({"note": self.note} if self.note else {})}


_FLOAT_INPUT = "float32 RGB in [0,1] (uint8/255), shape [1,S,S,3]"
_CPU = "LiteRT / TensorFlow Lite interpreter (CPU)"
# Read the labels and the input normalization from the file's metadata (engine.export.tflite_metadata)
_TASKS = ("MediaPipe Tasks ImageClassifier (Android, iOS, web, Python)",
          "TFLite Task Library ImageClassifier (tflite-support 0.4.4)")

TABLE: tuple[Variant, ...] = (  # in preference order: the first one exported is a folder's default model
    Variant("float32", "TFLite, float32", _FLOAT_INPUT, "float32 probabilities", None,
            "float32", (0.0, 1.0), Recipe(), (_CPU, *_TASKS, "LiteRT GPU delegate")),
    Variant("dynamic", "TFLite, dynamic-range quantized (smaller)", _FLOAT_INPUT, "float32 probabilities",
            "weights stored as int8 (about 4x smaller), computed in float",
            "float32", (0.0, 1.0), Recipe(optimize=True, per_tensor_dense=True), (_CPU, *_TASKS)),
    Variant("int8", "TFLite, full int8 (microcontrollers, Edge TPU)",
            "uint8 RGB 0-255: raw pixels, no scaling (input scale 1/255, zero point 0)",
            "uint8; probability = (q - zero_point) * scale (scale 1/256, zero point 0)",
            "full integer model for microcontrollers and Edge TPU",
            "uint8", (0.0, 255.0), Recipe(optimize=True, calibrate=True, integer_only=True, io_dtype="uint8"),
            (_CPU, *_TASKS, "TensorFlow Lite Micro (microcontrollers)", "Edge TPU, after edgetpu_compiler")),
)
NAMES: tuple[str, ...] = tuple(v.name for v in TABLE)
FILES: tuple[str, ...] = tuple(v.file for v in TABLE)
_BY_NAME = {v.name: v for v in TABLE}


def unknown_message(names: Iterable[str]) -> str:
    return f"Unknown TFLite variant(s) {', '.join(names)}: use {', '.join(NAMES)}"


def check(names: Iterable[str]) -> list[str]:
    """The names as a list, in the order given; ValueError naming every unknown one and the valid names."""
    names = list(names)
    unknown = [n for n in names if n not in _BY_NAME]
    if unknown:
        raise ValueError(unknown_message(unknown))
    return names


def get(name: str) -> Variant:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(unknown_message([name])) from None


def in_order(names: Iterable[str]) -> list[Variant]:
    """The named variants (checked) in the table's order, each once."""
    wanted = set(check(names))
    return [v for v in TABLE if v.name in wanted]
