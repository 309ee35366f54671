"""engine.export.card: one builder, each fact once; cards written before it are still read everywhere."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import types

import cv2
import numpy as np
import pytest
from export_data import exported_once

from engine.config.training import TrainConfig
from engine.data.dataset import scan_image_dir, split_dataset
from engine.export import bundle, card
from engine.inference.bundle_files import BUNDLE_SOURCES
from engine.inference.predict import load_predictor
from engine.learn.prepare import PreparedData
from engine.learn.train import train

# A card as the engine wrote it before engine.export.card (trimmed): the dataset's hash and class counts twice,
# the temperature, calibration and evaluation beside metrics', the threshold in metrics too.
OLD_CARD = {
    "backbone": {"handle": "efficientnet-lite0", "id": "efficientnet-lite0", "image_size": 224},
    "config": {"seed": 42, "center_crop": True},
    "dataset_hash": "ab" * 32, "class_counts": {"a": 6, "b": 6},
    "metrics": {"val_accuracy": 1.0, "evaluation": "cross-validation (5 folds)",
                "calibration": {"temperature": 1.5}, "threshold": {"value": 0.4, "curve": []}},
    "engine_version": "0.9", "labels": ["a", "b"],
    "dataset": {"root": "/data", "hash": "ab" * 32, "class_counts": {"a": 6, "b": 6}, "n_train": 12,
                "n_validation": 0, "n_evaluated": 12, "skipped": 0},
    "evaluation": "cross-validation (5 folds)", "temperature": 1.5, "calibration": {"temperature": 1.5},
    "threshold": {"value": 0.4, "target_precision": 0.95, "precision": 0.97, "coverage": 0.8, "reached": True},
    "history_epochs": 9, "timings": {"total_s": 1.0},
    "format_version": 1, "created": "2025-01-01T00:00:00+00:00", "image_size": 224,
    "preprocessing": {"input": "RGB", "center_crop": True},
    "saved_model": {"dir": "saved_model"}, "default_model": "model_float32.tflite",
    "tflite": {"float32": {"file": "model_float32.tflite", "bytes": 3_000_000, "input": "float32 RGB in [0,1]",
                           "output": "float32 probabilities", "agreement_top1_vs_keras": 1.0, "val_accuracy": 1.0}},
}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    """A head-only run on random features (no backbone, no TensorFlow), as test_crossval.py makes one."""
    root = tmp_path_factory.mktemp("card") / "images"
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            cv2.imwrite(str(root / c / f"{i}.png"), rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    ds = scan_image_dir(root)
    feats = rng.normal(0, 1, (len(ds.items), 8)).astype(np.float32) + 3 * ds.y[:, None]
    resolved = types.SimpleNamespace(handle="x", backbone_id="x", image_size=16, path="x")
    tr, va = split_dataset(ds, 0.0, 0)
    return train(TrainConfig(image_dir=str(root)), data=PreparedData(ds, resolved, feats, tr, va))


def _whole(facts: dict) -> dict:
    stats = {"float32": {"file": "model_float32.tflite"}, "int8": {"file": "model_int8.tflite"}}
    return card.build(facts, labels=["a", "b"], image_size=16, center_crop=False, stats=stats,
                      reference_accuracy=1.0, export={"method": "test"})


def test_each_fact_is_written_once(result):
    whole = _whole(card.training_facts(result))
    ds = result.data.dataset
    assert whole["dataset_hash"] == ds.dataset_hash() and whole["class_counts"] == ds.class_counts()
    assert not {"hash", "class_counts", "n_evaluated"} & set(whole["dataset"])
    assert not {"temperature", "evaluation", "calibration"} & set(whole)
    assert not {"predictions", "threshold"} & set(whole["metrics"])
    assert whole["metrics"]["calibration"]["temperature"] == result.head.temperature
    assert whole["metrics"]["evaluation"] == result.metrics["evaluation"]
    assert set(card.THRESHOLD_KEYS) <= set(whole["threshold"]) and "curve" not in whole["threshold"]
    assert whole["threshold"]["value"] == result.metrics["threshold"]["value"]
    assert whole["labels"] == ["a", "b"] and whole["default_model"] == "model_float32.tflite"
    json.dumps(whole, default=str)


def test_a_bare_card_gets_the_callers_keys_and_the_export_wins():
    whole = _whole({"labels": ["stale"], "extra": "kept"})
    assert all(whole[k] is None for k in card.CALLER_KEYS)
    assert whole["labels"] == ["a", "b"] and whole["extra"] == "kept" and whole["export"] == {"method": "test"}
    assert _whole({})["default_model"] == "model_float32.tflite"
    only_int8 = card.build({}, labels=["a"], image_size=16, center_crop=False, stats={"int8": {}},
                           reference_accuracy=None, export={})
    assert only_int8["default_model"] == "model_int8.tflite"


def test_an_old_card_is_read_by_the_bundle_and_the_readme():
    spec = importlib.util.spec_from_file_location("bundle_predict_card", BUNDLE_SOURCES / "predict.py")
    bp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bp)
    assert bp.card_threshold(OLD_CARD) == 0.4
    readme = bundle.bundle_readme(OLD_CARD)
    assert "`model_float32.tflite`" in readme and "centred square" in readme
    assert not re.search(r"\$\{?[a-z_]", readme)  # every template field filled ($PWD and $(...) are the shell's)


@pytest.mark.slow
def test_an_old_card_is_read_by_predict(tmp_path_factory):
    exp = exported_once(tmp_path_factory)
    folder = tmp_path_factory.mktemp("old_card")
    for name in ("model_float32.tflite", "labels.txt"):
        shutil.copy(exp.out / name, folder / name)
    labels = (folder / "labels.txt").read_text().splitlines()
    old = {**OLD_CARD, "labels": labels, "class_counts": dict.fromkeys(labels, 6)}
    (folder / "model_card.json").write_text(json.dumps(old))
    predictor = load_predictor(str(folder))
    assert predictor.image_size == 224 and predictor.center_crop is True and predictor.threshold == 0.4
    assert predictor.model_path.name == "model_float32.tflite" and predictor.labels == labels
