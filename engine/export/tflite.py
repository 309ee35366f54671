"""TFLite files through the converter: the variant table's recipe applied in one place (whole-model exports and the
cached backbones of engine.export.compose both use it), and what a written file measures for the model card."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import variants
from engine.export.calibration import calibration_batches
from engine.inference.predict import TFLiteModel

log = logging.getLogger(__name__)


def configure(converter, variant: str, representative: np.ndarray | None = None,
              output_dtype: str | None = None) -> None:
    """Set up a tf.lite.TFLiteConverter for the variant. output_dtype overrides the recipe's output type (the
    composed int8 backbone ends in int8 features, which its appended head consumes as they are)."""
    from engine.core.tfcompat import set_per_tensor_dense, tf  # why: compose imports this module in the TF-free worker

    recipe = variants.get(variant).recipe
    if recipe.optimize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if recipe.calibrate:
        if representative is None or not len(representative):
            raise ValueError(f"The {variant} model needs calibration images (representative); none were given.")
        converter.representative_dataset = lambda: calibration_batches(representative)
    if recipe.integer_only:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if recipe.per_tensor_dense:
        set_per_tensor_dense(converter)
    if recipe.io_dtype != "float32":
        converter.inference_input_type = tf.as_dtype(recipe.io_dtype)
        converter.inference_output_type = tf.as_dtype(output_dtype or recipe.io_dtype)


def convert_tflite(saved_model_dir: Path, variant: str, representative: np.ndarray | None = None) -> bytes:
    """A SavedModel's `serving_default` converted to the variant (the slow way: any model, ~15-30 s)."""
    from engine.core.tfcompat import tf  # why: only whole-model exports convert; composed ones need no TF

    variants.get(variant)  # an unknown name fails before the SavedModel is read
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=["serving_default"])
    configure(converter, variant, representative)
    return converter.convert()


def tflite_stats(path: Path, variant: str, reference_top1: np.ndarray | None,
                 checks: tuple[np.ndarray, np.ndarray] | None, num_threads: int | None = None) -> dict[str, Any]:
    """The card's entry for one file: size, input/output types and, on the check images, top-1 agreement with the
    reference model (the SavedModel, i.e. the float head on the same backbone) and accuracy against the labels."""
    runner = TFLiteModel(path, num_threads=num_threads)
    stats: dict[str, Any] = {"file": path.name, "bytes": path.stat().st_size, "input_dtype": runner.input_dtype,
                             "output_dtype": runner.output_dtype, **variants.get(variant).card_entry(),
                             "input_quantization": runner.input_quantization,
                             "output_quantization": runner.output_quantization,
                             "agreement_top1_vs_keras": None, "val_accuracy": None}
    if runner.input_dtype == "uint8":
        scale, zero = runner.input_quantization
        if zero != 0 or abs(scale * 255.0 - 1.0) > 1e-4:
            log.warning("%s input quantization is scale %g, zero point %d, not raw pixels; predict.py still "
                        "quantizes correctly, other runtimes must do the same", variant, scale, zero)
            stats["input"] = f"uint8; q = round(pixel/255 / {scale:g} + {zero})"
    if checks is not None and reference_top1 is not None and len(reference_top1):
        x, y = checks
        top1 = np.array([int(np.argmax(runner.probabilities(img))) for img in x])
        stats["agreement_top1_vs_keras"] = float(np.mean(top1 == reference_top1))
        stats["val_accuracy"] = float(np.mean(top1 == np.asarray(y)))
        stats["n_validation"] = int(len(x))
    return stats
