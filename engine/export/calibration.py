"""The int8 calibration set: generated images, the same on every machine, so no user photo is needed to quantize.

Measured (bench/bench.py): calibrating on these gives the same top-1 agreement with float32 as calibrating on real
photos.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

CALIBRATION_IMAGES, CALIBRATION_SEED = 100, 0


def calibration_batches(sample: np.ndarray) -> Iterator[list[np.ndarray]]:
    """The TFLite converter's representative dataset: one [0,1] float32 image per batch."""
    for i, image in enumerate(sample):
        x = image.astype(np.float32)[None] / 255.0
        if i == 0:
            # One black and one white pixel pin the input range to exactly [0, 1], so the int8 model's uint8 input
            # is the raw pixel (scale 1/255, zero point 0), as label_image's --input_mean 0 --input_std 255 assumes.
            x[0, 0, 0, :], x[0, 0, 1, :] = 0.0, 1.0
        yield [x]


def calibration_images(size: int, n: int = CALIBRATION_IMAGES, seed: int = CALIBRATION_SEED) -> np.ndarray:
    """Generated photo-like images: 1/f-noise colour fields with shapes, blur, contrast and noise (uint8 RGB).

    Natural images have a ~1/f amplitude spectrum and sharp edges; activations of a ReLU6 network calibrated on
    such images cover the ranges real photos reach (top-1 agreement with float32 measured equal to calibrating on
    100 real flower photos), and the set is the same on every machine.
    """
    import cv2

    rng = np.random.default_rng(seed)
    freq = np.fft.fftfreq(size)[:, None] ** 2 + np.fft.fftfreq(size)[None, :] ** 2
    out = np.empty((n, size, size, 3), np.uint8)
    for k in range(n):
        amp = 1.0 / np.maximum(freq, 1e-4) ** rng.uniform(0.8, 1.3)
        img = np.empty((size, size, 3), np.float32)
        base = rng.uniform(0, 1, 3)
        for c in range(3):
            field = np.real(np.fft.ifft2(amp * np.exp(2j * np.pi * rng.random((size, size)))))
            img[..., c] = base[c] + 0.18 * (field - field.mean()) / (field.std() + 1e-6)
        for _ in range(int(rng.integers(2, 9))):
            colour = tuple(float(v) for v in rng.uniform(0, 1, 3))
            p = [int(v) for v in rng.integers(0, size, 4)]
            kind = int(rng.integers(0, 3))
            if kind == 0:
                cv2.circle(img, (p[0], p[1]), int(rng.integers(5, max(6, size // 3))), colour, -1)
            elif kind == 1:
                cv2.rectangle(img, (p[0], p[1]), (p[2], p[3]), colour, -1)
            else:
                cv2.line(img, (p[0], p[1]), (p[2], p[3]), colour, int(rng.integers(1, 8)))
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 2.0))
        img = img * rng.uniform(0.6, 1.3) + rng.normal(0, 0.02, img.shape)
        out[k] = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    return out
