"""EfficientNet-Lite without TensorFlow: the architecture table, and the network as a short list of folded layers
(each convolution with its BatchNorm folded into weights and bias, ReLU6 fused) computed from the package's weights
with NumPy.

Two writers read the folded list: the float32 .tflite (engine.features.lite_tflite: the embedder and every TFLite
variant's backbone) and the ONNX graph (engine.export.onnx_model). Both are what the TFLite converter and tf2onnx
make of the Keras port (engine.features.port, which keeps BatchNorm as layers, for fine-tuning), in a fraction of a
second instead of ~35 s of TensorFlow on a new machine; tests hold them to the Keras port's features.

Layout: images are NHWC, [0, 1] RGB; a convolution's weight is HWIO ([kh, kw, in, out]); a depthwise one's is
[kh, kw, channels, 1]. Padding is TensorFlow's SAME everywhere (the extra row and column at the bottom right).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.config.backbones import Backbone, BackboneError

# Inputs to every model we build or load are RGB floats in [0, 1] (the TF Hub image convention); the
# EfficientNet-Lite reference then applies (x * 255 - MEAN) / STD inside the model.
LITE_MEAN, LITE_STD = 127.0, 128.0
BN_EPSILON = 1e-3
# (repeats, kernel, stride, expand_ratio, in_filters, out_filters) from efficientnet_lite_builder.py
LITE_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
STEM_FILTERS, HEAD_FILTERS = 32, 1280


def _round_filters(filters: int, width: float) -> int:
    """EfficientNet's channel rounding (multiples of 8, never more than 10% below the scaled value)."""
    if width == 1.0:
        return filters
    scaled = filters * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return int(rounded + 8 if rounded < 0.9 * scaled else rounded)


def lite_block_specs(spec: Backbone) -> list[dict]:
    """One dict per MBConv block; Lite keeps the stem, first and last stage and head unscaled."""
    blocks = []
    for i, (repeats, kernel, stride, expand, f_in, f_out) in enumerate(LITE_STAGES):
        first_or_last = i in (0, len(LITE_STAGES) - 1)
        f_in = STEM_FILTERS if i == 0 else _round_filters(f_in, spec.width)
        f_out = _round_filters(f_out, spec.width)
        n = repeats if first_or_last else int(math.ceil(spec.depth * repeats))
        for j in range(n):
            blocks.append(dict(kernel=kernel, stride=stride if j == 0 else 1, expand=expand,
                               f_in=f_in if j == 0 else f_out, f_out=f_out))
    return blocks


@dataclass(frozen=True)
class Conv:
    """One convolution with its BatchNorm folded in; reads the previous layer's output."""

    name: str
    weight: np.ndarray  # float32 HWIO; depthwise: [kh, kw, channels, 1]
    bias: np.ndarray  # float32 [out]
    stride: int
    depthwise: bool
    relu6: bool

    @property
    def channels(self) -> int:
        return int(self.weight.shape[2] if self.depthwise else self.weight.shape[3])


@dataclass(frozen=True)
class Add:
    """The previous layer's output plus the output of layer `skip` (an earlier layer's index): a residual."""

    name: str
    skip: int


@dataclass(frozen=True)
class LiteGraph:
    """x * scale + offset, then the layers in order, then the mean over height and width: [batch, features]."""

    name: str
    scale: float
    offset: float
    layers: list[Conv | Add]

    @property
    def feature_size(self) -> int:
        return next(layer.channels for layer in reversed(self.layers) if isinstance(layer, Conv))


class StateTensors:
    """A PyTorch state dict's tensors handed out by name, each to be used exactly once (`unused` names the rest):
    a port that skips or repeats a tensor fails instead of giving plausible features."""

    def __init__(self, state: dict[str, np.ndarray]):
        self.state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
        self.used: set[str] = set()

    def _take(self, key: str) -> np.ndarray:
        self.used.add(key)
        return self.state[key]

    def unused(self) -> list[str]:
        return sorted(set(self.state) - self.used)


class _Folder(StateTensors):
    """Folds BatchNorm into the preceding convolution, in float64."""

    def _take(self, key: str) -> np.ndarray:
        return np.asarray(super()._take(key), np.float64)

    def conv(self, name: str, conv_key: str, bn_key: str, stride: int, depthwise: bool, relu6: bool) -> Conv:
        w = self._take(conv_key + ".weight")  # PyTorch OIHW; depthwise [C, 1, kh, kw]
        gamma, beta, mean, var = (self._take(f"{bn_key}.{n}") for n in ("weight", "bias", "running_mean",
                                                                        "running_var"))
        k = gamma / np.sqrt(var + BN_EPSILON)
        w = w * k[:, None, None, None]
        hwio = w.transpose(2, 3, 0, 1) if depthwise else w.transpose(2, 3, 1, 0)
        return Conv(name, hwio.astype(np.float32), (beta - mean * k).astype(np.float32), stride, depthwise, relu6)

    def unused(self) -> list[str]:
        return [k for k in super().unused() if not k.startswith("_fc.")]  # the ImageNet classifier: not features


def lite_graph(spec: Backbone, state: dict[str, np.ndarray] | None = None) -> LiteGraph:
    """The backbone's folded layers, from its package's weights (or `state`, a PyTorch state dict as arrays)."""
    if state is None:
        from engine.features.torch_legacy import load_state_dict  # why: reads 18 MB; the table alone needs none

        state = load_state_dict(spec.weights_path())
    f = _Folder(state)
    layers: list[Conv | Add] = [f.conv("stem", "_conv_stem", "_bn0", 2, False, True)]
    for i, b in enumerate(lite_block_specs(spec)):
        key, start = f"_blocks.{i}", len(layers) - 1
        if b["expand"] != 1:
            layers.append(f.conv(f"block{i}_expand", key + "._expand_conv", key + "._bn0", 1, False, True))
        layers.append(f.conv(f"block{i}_dw", key + "._depthwise_conv", key + "._bn1", b["stride"], True, True))
        layers.append(f.conv(f"block{i}_project", key + "._project_conv", key + "._bn2", 1, False, False))
        if b["stride"] == 1 and b["f_in"] == b["f_out"]:
            layers.append(Add(f"block{i}_add", start))
    layers.append(f.conv("top", "_conv_head", "_bn1", 1, False, True))  # not "head": the classifier's
    if f.unused():
        raise BackboneError(f"{spec.name}: weights not used by the port: {f.unused()[:5]}")
    return LiteGraph(spec.name, 255.0 / LITE_STD, -LITE_MEAN / LITE_STD, layers)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """TensorFlow's SAME padding of one spatial axis: (before, after, output size)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out
