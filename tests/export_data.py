"""One real export shared by the export tests (test_export, test_bundle, test_card, test_compose, test_predict,
test_serve, test_crossval): synthetic classes drawn with OpenCV, a head fitted on real backbone features, composed
onto the cached backbone variants the way every training run exports. Made once per session (`exported_once`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engine.core.tfcompat import keras
from engine.export import artefacts as export
from engine.features.backbones import resolve
from engine.features.embeddings import Embedder
from engine.learn.classifier import build_classifier
from engine.learn.head import Head

# Deliberately not alphabetical, one with a space: labels.txt must keep the caller's order verbatim.
CLASSES = ["stripes", "red circle", "checker", "blank", "noise"]
SIZE = 224


def draw(cls: int, rng: np.random.Generator, h: int = SIZE, w: int = SIZE) -> np.ndarray:
    """A clearly separable synthetic RGB image of class `cls`, with some random variation."""
    img = np.full((h, w, 3), rng.integers(200, 256), np.uint8)
    s = min(h, w)
    if cls == 0:  # blue horizontal stripes
        step = int(rng.integers(s // 14, s // 8))
        for y in range(0, h, 2 * step):
            img[y:y + step] = (20, 40, int(rng.integers(160, 256)))
    elif cls == 1:  # a red disc
        c = (w // 2 + int(rng.integers(-s // 8, s // 8)), h // 2 + int(rng.integers(-s // 8, s // 8)))
        cv2.circle(img, c, int(rng.integers(s // 4, s // 3)), (int(rng.integers(180, 256)), 20, 20), -1)
    elif cls == 2:  # black and white checkerboard
        step = int(rng.integers(s // 10, s // 6))
        yy, xx = np.mgrid[0:h, 0:w]
        img[((yy // step + xx // step) % 2).astype(bool)] = 0
    elif cls == 4:  # colour noise
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return img  # cls 3: blank, a flat light grey


def make_set(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(CLASSES)), per_class)
    return np.stack([draw(int(c), rng) for c in y]), y


def save_rgb(path: Path, rgb: np.ndarray) -> Path:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


@dataclass
class Exported:
    model: keras.Model  # the same classifier as a Keras model (backbone + head), for comparisons
    result: export.ExportResult
    out: Path
    x_val: np.ndarray
    y_val: np.ndarray
    root: Path
    head: Head
    f_tr: np.ndarray
    f_val: np.ndarray


def fit_head(feats: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> Head:
    """A converged logistic regression on the features, as engine.learn.train fits it (no TensorFlow)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=1.0, max_iter=2000).fit(feats, y)
    return Head(clf.coef_.T, clf.intercept_, temperature)


def build_model(x: np.ndarray, y: np.ndarray) -> keras.Model:
    """The classifier train.py builds: [0,1] RGB -> hub feature layer -> softmax Dense, with a fitted head."""
    resolved = resolve("efficientnet-lite0")
    embedder = Embedder(resolved)
    return build_classifier(resolved, fit_head(np.stack([embedder(img) for img in x]), y))


_SHARED: dict[str, Exported] = {}


def exported_once(tmp_path_factory) -> Exported:
    """One real export for test_export.py, test_compose.py, test_predict.py and others together: a head fitted on
    real backbone features, composed onto the cached backbone variants the way every training run exports."""
    if "exp" not in _SHARED:
        root = tmp_path_factory.mktemp("export")
        x_tr, y_tr = make_set(6, seed=1)
        x_val, y_val = make_set(4, seed=2)
        resolved = resolve("efficientnet-lite0")
        embedder = Embedder(resolved)
        f_tr = np.stack([embedder(img) for img in x_tr])
        f_val = np.stack([embedder(img) for img in x_val])
        head = fit_head(f_tr, y_tr, temperature=1.5)
        card = {"backbone": {"handle": "efficientnet-lite0"}, "config": {"seed": 42}, "dataset_hash": "ab" * 32,
                "class_counts": {c: 10 for c in CLASSES}, "metrics": {"val_accuracy": 1.0}, "extra": "kept"}
        events: list[dict] = []
        result = export.export_composed(head, resolved, CLASSES, root / "run", center_crop=False, features=f_tr,
                                        checks=(x_val, y_val, head.probabilities(f_val)), card=card,
                                        progress=events.append)
        result.events = events
        _SHARED["exp"] = Exported(build_classifier(resolved, head), result, root / "run", x_val, y_val, root, head,
                                  f_tr, f_val)
    return _SHARED["exp"]
