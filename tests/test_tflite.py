"""engine.export.tflite: the variant table's converter recipe, applied in one place for whole-model exports and the
composed backbones (no conversion here: what the converter is told; test_compose.py converts for real)."""

from __future__ import annotations

import types

import numpy as np
import pytest

from engine.core.tfcompat import tf
from engine.export.tflite import configure


def _converter():
    return types.SimpleNamespace(optimizations=[], representative_dataset=None,
                                 target_spec=types.SimpleNamespace(supported_ops=None),
                                 inference_input_type=tf.float32, inference_output_type=tf.float32)


def test_float32_and_dynamic_recipes():
    c = _converter()
    configure(c, "float32")
    assert c.optimizations == [] and c.representative_dataset is None and c.target_spec.supported_ops is None
    configure(c, "dynamic")
    assert c.optimizations == [tf.lite.Optimize.DEFAULT] and c.inference_input_type == tf.float32


def test_int8_recipe_takes_raw_pixels_and_the_composed_backbone_ends_in_int8():
    sample = np.zeros((3, 8, 8, 3), np.uint8)
    c = _converter()
    configure(c, "int8", sample)
    assert c.optimizations == [tf.lite.Optimize.DEFAULT]
    assert c.target_spec.supported_ops == [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    assert (c.inference_input_type, c.inference_output_type) == (tf.uint8, tf.uint8)
    batches = list(c.representative_dataset())
    assert len(batches) == 3 and batches[0][0].dtype == np.float32 and batches[0][0].max() == 1.0
    backbone = _converter()
    configure(backbone, "int8", sample, output_dtype="int8")
    assert (backbone.inference_input_type, backbone.inference_output_type) == (tf.uint8, tf.int8)


def test_int8_needs_calibration_images_and_unknown_names_fail():
    with pytest.raises(ValueError, match="calibration images"):
        configure(_converter(), "int8", None)
    with pytest.raises(ValueError, match="Unknown TFLite variant"):
        configure(_converter(), "int9")
