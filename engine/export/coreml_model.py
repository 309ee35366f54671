"""A Core ML classifier (.mlpackage) from a run's SavedModel, with coremltools: the photo goes in as an image (Core
ML scales its pixels by 1/255, as training did), the class label and each class's probability come out.

coremltools converts on Linux too; only running the model needs macOS or iOS, so what is checked here is the
model's description (its image input, its class-label outputs, its labels), not its answers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.export.savedmodel import INPUT_NAME

log = logging.getLogger(__name__)

REQUIREMENT = "coremltools==9.0"  # the version this was proven with (requirements.txt pins the same)
LABEL_OUTPUT = "classLabel"  # coremltools' names for a classifier's outputs: Xcode's generated class shows them
PROBS_OUTPUT = "classLabel_probs"


class ConverterMissing(RuntimeError):
    """The converter is not installed in this Python: the message says what to install."""


def _coremltools():
    try:
        import coremltools  # why: only when a Core ML model is asked for (slow import, optional)
    except ImportError as exc:
        raise ConverterMissing(f"Core ML models need coremltools: pip install {REQUIREMENT} ({exc})") from exc
    return coremltools


def converter_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("coremltools") is not None


def export_coreml(saved_model_dir: str | Path, out_path: str | Path, labels: list[str], image_size: int,
                  about: dict[str, str], progress: Callable[[float, str], None] | None = None) -> dict[str, Any]:
    """Write out_path (a .mlpackage folder); `about` holds the model's description, author, licence and version
    (shown in Xcode) and any other string facts (kept as user metadata). Returns a summary for the caller."""
    ct = _coremltools()
    from engine.core.tfcompat import tf  # why: TF only where a Core ML model is made

    say = progress or (lambda fraction, message: None)
    say(0.1, "Loading the SavedModel")
    loaded = tf.saved_model.load(str(saved_model_dir))  # kept alive while converting: the function uses its variables
    # one concrete function: coremltools refuses a SavedModel with two signatures (ours also has serving_bytes)
    function = loaded.signatures["serving_default"]
    say(0.3, "Converting to Core ML (coremltools)")
    model = ct.convert([function], source="tensorflow", convert_to="mlprogram",
                       inputs=[ct.ImageType(name=INPUT_NAME, shape=(1, image_size, image_size, 3), scale=1 / 255,
                                            color_layout=ct.colorlayout.RGB)],
                       classifier_config=ct.ClassifierConfig([str(x) for x in labels]))
    say(0.9, "Writing the .mlpackage")
    model.short_description = about.get("description", "")
    model.author = about.get("author", "")
    model.license = about.get("license", "")
    model.version = about.get("version", "")
    model.input_description[INPUT_NAME] = (f"An RGB photo, stretched to {image_size}x{image_size} (Core ML scales "
                                           "its pixels by 1/255, as training did)")
    model.output_description[LABEL_OUTPUT] = "The most probable class"
    model.output_description[PROBS_OUTPUT] = "Each class's probability"
    model.user_defined_metadata.update({k: str(v) for k, v in about.items()
                                        if k not in ("description", "author", "license", "version")})
    model.save(str(out_path))
    log.info("Core ML model written: %s", out_path)
    return {"input": INPUT_NAME, "outputs": [LABEL_OUTPUT, PROBS_OUTPUT], "precision": "float16 (Core ML's default)",
            "coremltools": ct.__version__}
