"""Fixed inputs for the EfficientNet-Lite port check, shared by the recorder (tools/) and tests/test_backbones.py.

Pure NumPy + scikit-image's bundled photo, so the throwaway PyTorch venv and our venv build identical pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FIXTURE = Path(__file__).parent / "data" / "port_reference.npz"


def reference_inputs(size: int) -> np.ndarray:
    """Two uint8 NHWC images: skimage's coffee() (centre square, nearest-neighbour resize) and a colour ramp."""
    from skimage import data

    coffee = data.coffee()  # 400 x 600 RGB
    h, w = coffee.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    idx = (np.arange(size) * side) // size
    coffee_small = coffee[top + idx][:, left + idx]
    yy, xx = np.mgrid[0:size, 0:size]
    ramp = np.stack([xx * 255 // (size - 1), yy * 255 // (size - 1), (xx + yy) * 7 % 256], axis=-1)
    return np.stack([coffee_small, ramp.astype(np.uint8)]).astype(np.uint8)
