"""The trained classifier head as plain NumPy: one dense layer on backbone features, then softmax.

This is what every consumer of a trained model needs (export composes it onto the cached backbone, Review and
Curate score cached embeddings with it), so it carries no TensorFlow object. `temperature` is the calibration
(logits are divided by it); exporters bake it into the weights so exported probabilities are calibrated too.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Head:
    kernel: np.ndarray  # (D, K) float32: features -> logits
    bias: np.ndarray  # (K,) float32
    temperature: float = 1.0

    def __post_init__(self) -> None:
        self.kernel = np.asarray(self.kernel, np.float32)
        self.bias = np.asarray(self.bias, np.float32).reshape(-1)
        if self.kernel.ndim != 2 or self.kernel.shape[1] != self.bias.shape[0]:
            raise ValueError(f"head kernel {self.kernel.shape} and bias {self.bias.shape} do not match")

    @property
    def n_classes(self) -> int:
        return int(self.kernel.shape[1])

    @property
    def feature_size(self) -> int:
        return int(self.kernel.shape[0])

    def calibrated(self) -> tuple[np.ndarray, np.ndarray]:
        """Kernel and bias with the temperature folded in: softmax(x @ W + b) is then the calibrated output."""
        t = np.float32(self.temperature)
        return (self.kernel / t).astype(np.float32), (self.bias / t).astype(np.float32)

    def logits(self, features: np.ndarray) -> np.ndarray:
        w, b = self.calibrated()
        return np.asarray(features, np.float32) @ w + b

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        return softmax(self.logits(features))

    def to_bytes(self) -> bytes:
        """The head as an .npz (kernel, bias, temperature): a run's head.npz."""
        buf = io.BytesIO()
        np.savez(buf, kernel=self.kernel, bias=self.bias, temperature=np.float32(self.temperature))
        return buf.getvalue()

    @classmethod
    def load(cls, path: str | Path) -> Head:
        with np.load(path) as data:
            return cls(data["kernel"], data["bias"], float(np.asarray(data["temperature"]).reshape(-1)[0]))


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits, stable for large values."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
