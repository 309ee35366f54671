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

__all__ = ["tf", "hub", "keras", "set_seed"]


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and TF so a run with the same data and config is repeatable."""
    keras.utils.set_random_seed(seed)


def tflite_interpreter(model_path: str | None = None, model_content: bytes | None = None,
                       num_threads: int | None = None):
    """A LiteRT interpreter: `ai_edge_litert` when installed (tf.lite.Interpreter is deprecated), else tf.lite."""
    threads = num_threads or os.cpu_count() or 1
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - depends on what is installed
        Interpreter = tf.lite.Interpreter  # noqa: N806
    return Interpreter(model_path=model_path, model_content=model_content, num_threads=threads)
