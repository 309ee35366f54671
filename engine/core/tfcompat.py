"""Every TensorFlow / Keras version quirk lives here.

`tensorflow_hub.KerasLayer` cannot live inside a Keras 3 model (tensorflow/hub#903), so the engine builds its
models with tf_keras (Keras 2). TF reads TF_USE_LEGACY_KERAS when it is first imported, so this module must be
imported before anything else imports tensorflow.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# Quiet the C++ start-up chatter (CUDA probing, oneDNN notices); real errors still surface as exceptions.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tensorflow_hub as hub  # noqa: E402
import tf_keras as keras  # noqa: E402

__all__ = ["tf", "hub", "keras", "set_memory_growth", "set_per_tensor_dense", "set_seed"]


def set_per_tensor_dense(converter) -> None:
    """Dense layers quantized with one weight scale (FULLY_CONNECTED v9) rather than one per output channel (v12,
    TFLite >= 2.17 only). The converter has no public option for it in TF 2.21."""
    converter._experimental_disable_per_channel_quantization_for_dense_layers = True


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and TF so a run with the same data and config is repeatable."""
    keras.utils.set_random_seed(seed)


def set_memory_growth() -> list[str]:
    """--set_memory_growth: every GPU takes memory as needed instead of all at once. TF only allows it before the
    GPUs are first used, so it runs before any model is built; the GPUs it applies to (none on a CPU machine)."""
    import logging

    done = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            if not tf.config.experimental.get_memory_growth(gpu):
                tf.config.experimental.set_memory_growth(gpu, True)
            done.append(gpu.name)
        except RuntimeError as exc:  # this process used the GPU already: too late, and not worth failing the run
            logging.getLogger(__name__).warning("--set_memory_growth ignored for %s: %s", gpu.name, exc)
    return done
