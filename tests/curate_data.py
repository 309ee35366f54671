"""What the curate tests make: generated photos (red discs, blue squares and green stripes on textured backgrounds),
the bench's altered copy, feature blobs, and a run folder as the trainer leaves it. One module, so the tests and
the browser tests import these under one name."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np


def drawing(kind: str, seed: int, size: int = 128) -> np.ndarray:
    """A 'photo': a random two-colour gradient with clutter, and 1-3 objects of the class at random places."""
    rng = np.random.default_rng(seed)
    c0, c1 = rng.integers(40, 230, 3), rng.integers(40, 230, 3)
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / size
    t = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
    img = (c0 * (1 - t) + c1 * t + rng.normal(0, 12, (size, size, 3))).clip(0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(3, 8))):  # clutter: grey-ish blobs anywhere
        cv2.ellipse(img, (int(rng.integers(0, size)), int(rng.integers(0, size))),
                    (int(rng.integers(4, 20)), int(rng.integers(4, 20))), float(rng.uniform(0, 180)), 0, 360,
                    tuple(int(v) for v in rng.integers(60, 200, 3)), -1)
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = (int(v) for v in rng.integers(size // 5, 4 * size // 5, 2))
        r = int(rng.integers(size // 10, size // 4))
        if kind == "red":
            cv2.circle(img, (cx, cy), r, (30, 30, 220), -1)
        elif kind == "blue":
            cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), (220, 60, 30), -1)
        else:
            cv2.line(img, (cx - r, cy - 2 * r), (cx + r, cy + 2 * r), (40, 200, 40), 6)
            cv2.line(img, (cx - r + 12, cy - 2 * r), (cx + r + 12, cy + 2 * r), (40, 200, 40), 6)
    return img


def jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def altered(img: np.ndarray) -> bytes:
    """The bench's alteration: 90% centre crop, half size, +15% brightness, JPEG quality 40."""
    h, w = img.shape[:2]
    crop = img[round(h * 0.05): h - round(h * 0.05), round(w * 0.05): w - round(w * 0.05)]
    small = cv2.resize(crop, (crop.shape[1] // 2, crop.shape[0] // 2), interpolation=cv2.INTER_AREA)
    return jpeg(np.clip(small.astype(np.float32) * 1.15, 0, 255).astype(np.uint8), 40)


KINDS = ("red", "blue", "green")
PER_CLASS = 8


def blobs(n_per: int = 40, k: int = 3, d: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Separable classes whose members are not near-duplicates of each other (cosine ~0.5, as photos)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=1.0, size=(k, d))
    y = np.repeat(np.arange(k), n_per)
    return (centres[y] + rng.normal(size=(len(y), d))).astype(np.float32), y


def fake_run(project, labels: list[str], kernel: np.ndarray, bias: np.ndarray, name: str = "run1") -> Path:
    """A run folder as the trainer leaves it (only what curate reads: head.npz and model_card.json)."""
    run = project.runs_dir / name
    run.mkdir(parents=True)
    np.savez(run / "head.npz", kernel=kernel.astype(np.float32), bias=bias.astype(np.float32),
             temperature=np.float32(1.0))
    (run / "model_card.json").write_text(json.dumps({"labels": labels, "backbone": {"handle": "efficientnet-lite0",
                                                                                     "image_size": 224},
                                                     "config": {"center_crop": False}}))
    return run
