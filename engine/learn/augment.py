"""Fine-tuning augmentation: make_image_classifier's ImageDataGenerator options as tf_keras preprocessing layers.

Flip, rotation, zoom and shift map onto tf_keras' own layers. tf_keras 2.21 has no shear layer (Keras 3's
RandomShear cannot live in a tf_keras model), so `random_shear` is a small one on TF's projective-transform op,
with ImageDataGenerator's meaning: an angle in degrees drawn uniformly from [-range, range] per image, about the
image centre, edges filled by reflection as the other tf_keras layers do. Active only in training.

This module imports TensorFlow: only engine.learn.finetune imports it.
"""

from __future__ import annotations

import math

from engine.config.training import TrainConfig
from engine.core.tfcompat import keras, tf


def layers(cfg: TrainConfig) -> list:
    """The augmentation layers for cfg, in ImageDataGenerator's order; [] when augmentation is off."""
    if not cfg.do_data_augmentation:
        return []
    out = []
    if cfg.horizontal_flip:
        out.append(keras.layers.RandomFlip("horizontal", seed=cfg.seed))
    if cfg.rotation_range:
        out.append(keras.layers.RandomRotation(cfg.rotation_range / 360.0, seed=cfg.seed))
    if cfg.width_shift_range or cfg.height_shift_range:
        out.append(keras.layers.RandomTranslation(cfg.height_shift_range, cfg.width_shift_range, seed=cfg.seed))
    if cfg.shear_range:
        out.append(random_shear(cfg.shear_range, seed=cfg.seed))
    if cfg.zoom_range:
        out.append(keras.layers.RandomZoom(cfg.zoom_range, seed=cfg.seed))
    return out


def random_shear(max_degrees: float, seed: int | None = None, fill_mode: str = "reflect"):
    """A tf_keras layer shearing each training image by its own random angle in [-max_degrees, max_degrees]."""
    from tf_keras.src.engine.base_layer import BaseRandomLayer  # what tf_keras' own random layers build on


    class RandomShear(BaseRandomLayer):
        def __init__(self, max_degrees: float, seed: int | None = None, fill_mode: str = "reflect", **kwargs):
            super().__init__(seed=seed, force_generator=True, **kwargs)
            self.max_degrees, self.seed, self.fill_mode = float(max_degrees), seed, fill_mode

        def call(self, inputs, training=True):
            if not training or not self.max_degrees:
                return inputs
            images = tf.cast(inputs, tf.float32)
            unbatched = images.shape.rank == 3
            if unbatched:
                images = images[None]
            shape = tf.shape(images)
            limit = math.radians(self.max_degrees)
            angle = self._random_generator.random_uniform([shape[0]], -limit, limit, dtype=tf.float32)
            cx = (tf.cast(shape[2], tf.float32) - 1.0) / 2.0
            cos, sin = tf.cos(angle), tf.sin(angle)
            # ImageDataGenerator's shear [[1, -sin, 0], [0, cos, 0]] on (row, column) about the centre, written as
            # the output -> input map the op takes on (x, y): x_in = cos * (x - cx) + cx, y_in = y - sin * (x - cx).
            zero, one = tf.zeros_like(angle), tf.ones_like(angle)
            transforms = tf.stack([cos, zero, cx * (1.0 - cos), -sin, one, sin * cx, zero, zero], axis=1)
            out = tf.raw_ops.ImageProjectiveTransformV3(
                images=images, transforms=transforms, output_shape=shape[1:3], fill_value=0.0,
                interpolation="BILINEAR", fill_mode=self.fill_mode.upper())
            out = out[0] if unbatched else out
            out.set_shape(inputs.shape)
            return tf.cast(out, inputs.dtype)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "max_degrees": self.max_degrees, "seed": self.seed,
                    "fill_mode": self.fill_mode}

    return RandomShear(max_degrees, seed=seed, fill_mode=fill_mode, name="random_shear")
