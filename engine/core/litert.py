"""The TFLite runtime, without importing TensorFlow: `ai_edge_litert` (tf.lite.Interpreter is deprecated), falling
back to TensorFlow's copy only where LiteRT is not installed; the .tflite flatbuffer schema's Python API, and reading,
building and writing flatbuffers with it (the composed exports, the quantized variants, the backbones written from
their weights)."""

from __future__ import annotations

import os

import numpy as np


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


RUNTIME_KEY = b"min_runtime_version"  # the metadata entry LiteRT's tools read: the oldest runtime that runs a file


def read_model(blob: bytes):
    fb = schema()
    return fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(blob, 0))


def write_model(model) -> bytes:
    import flatbuffers  # why: only writers need it; the app's pages read no flatbuffer

    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def new_model(min_runtime: str, description: str):
    """An empty ModelT: one subgraph, buffer 0 (the empty one activations point at), and its min_runtime_version."""
    fb = schema()
    model, g = fb.ModelT(), fb.SubGraphT()
    model.version, model.description, model.subgraphs, model.operatorCodes = 3, description.encode(), [g], []
    g.tensors, g.operators, g.name = [], [], b"main"
    runtime = fb.BufferT()
    runtime.data = np.frombuffer(min_runtime.encode().ljust(16, b"\0"), np.uint8)
    model.buffers = [fb.BufferT(), runtime]
    meta = fb.MetadataT()
    meta.name, meta.buffer = RUNTIME_KEY, 1
    model.metadata = [meta]
    return model


class GraphBuilder:
    """Appends tensors, constant buffers and operators to subgraph 0 of a ModelT."""

    def __init__(self, model):
        self.fb, self.model, self.g = schema(), model, model.subgraphs[0]

    def tensor(self, name: str, shape, dtype: int, data: np.ndarray | None = None, quant=None) -> int:
        t = self.fb.TensorT()
        t.name, t.shape, t.type, t.quantization = name.encode(), np.asarray(shape, np.int32), dtype, quant
        t.buffer = 0  # buffer 0 is the empty sentinel: activations have no data
        if data is not None:
            buf = self.fb.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            self.model.buffers.append(buf)
            t.buffer = len(self.model.buffers) - 1
        self.g.tensors.append(t)
        return len(self.g.tensors) - 1

    def op(self, builtin: int, version: int, inputs: list[int], outputs: list[int], options_type: int = 0,
           options=None) -> None:
        op = self.fb.OperatorT()
        op.opcodeIndex = self._opcode(builtin, version)
        op.inputs, op.outputs = np.asarray(inputs, np.int32), np.asarray(outputs, np.int32)
        op.builtinOptionsType, op.builtinOptions = options_type, options
        self.g.operators.append(op)

    def _opcode(self, builtin: int, version: int) -> int:
        for i, code in enumerate(self.model.operatorCodes):
            if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin and code.version == version:
                return i
        code = self.fb.OperatorCodeT()
        code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), version
        self.model.operatorCodes.append(code)
        return len(self.model.operatorCodes) - 1

    def signature(self, key: str, inputs: dict[str, int], outputs: dict[str, int]) -> None:
        """The model's signature (what LiteRT's get_signature_runner and MediaPipe name tensors by)."""
        sig = self.fb.SignatureDefT()
        sig.signatureKey, sig.subgraphIndex = key.encode(), 0
        sig.inputs, sig.outputs = ([self._tensor_map(n, i) for n, i in d.items()] for d in (inputs, outputs))
        self.model.signatureDefs = [*(self.model.signatureDefs or []), sig]

    def _tensor_map(self, name: str, index: int):
        m = self.fb.TensorMapT()
        m.name, m.tensorIndex = name.encode(), index
        return m
