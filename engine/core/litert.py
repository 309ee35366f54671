"""The TFLite runtime, without importing TensorFlow: `ai_edge_litert` (tf.lite.Interpreter is deprecated), falling
back to TensorFlow's copy only where LiteRT is not installed; and the .tflite flatbuffer schema's Python API."""

from __future__ import annotations

import os


def tflite_interpreter(model_path: str | None = None, model_content: bytes | None = None,
                       num_threads: int | None = None):
    threads = num_threads or os.cpu_count() or 1
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - depends on what is installed
        from engine.core.tfcompat import tf  # TensorFlow only where LiteRT is missing

        Interpreter = tf.lite.Interpreter  # noqa: N806
    return Interpreter(model_path=model_path, model_content=model_content, num_threads=threads)


def schema():
    """TFLite's flatbuffer schema (ModelT, TensorType, BuiltinOperator ...): LiteRT ships its Python API; importing
    TensorFlow's copy would import TensorFlow."""
    from ai_edge_litert import schema_py_generated

    return schema_py_generated
