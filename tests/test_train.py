"""Training: head on cached features, early stopping, metrics, determinism, fine-tuning, unreadable files."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from engine.backbones import load_feature_layer, resolve
from engine.config import TrainConfig
from engine.dataset import DatasetError
from engine.demo import make_demo_dataset
from engine.embeddings import EmbeddingStore
from engine.train import AccuracyError, check_accuracy, evaluate, sample_weights, train, train_head


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "images", per_class=12, seed=1)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return EmbeddingStore(tmp_path_factory.mktemp("cache") / "emb.sqlite")


@pytest.fixture(scope="module")
def result(demo_dir, store):
    events = []
    res = train(TrainConfig(image_dir=str(demo_dir)), progress=events.append, store=store)
    res.events = events
    return res


def test_head_learns_the_demo_classes(result):
    assert result.labels == ["shapes", "text"]
    assert result.val_accuracy >= 0.9
    assert result.timings["head_s"] < 30


def test_early_stopping_ends_before_the_epoch_cap(result):
    assert 1 < len(result.history) < result.config.train_epochs
    epochs = [e for e in result.events if e["type"] == "epoch"]
    assert len(epochs) == len(result.history)
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "elapsed"} <= set(epochs[0])


def test_metrics_are_consistent(result):
    m = result.metrics
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (2, 2) and cm.sum() == len(m["predictions"]) == len(result.data.val_idx)
    assert np.trace(cm) / cm.sum() == pytest.approx(m["val_accuracy"])
    for p in m["predictions"]:
        assert p["predicted"] == m["labels"][int(np.argmax(p["probs"]))]
        assert p["probability"] == pytest.approx(max(p["probs"]), abs=1e-5)


def test_retrain_uses_the_cache_and_is_deterministic(demo_dir, store, result):
    again = train(TrainConfig(image_dir=str(demo_dir)), store=store)
    assert again.timings["embedded_new"] == 0
    assert [p["probs"] for p in again.metrics["predictions"]] == [p["probs"] for p in result.metrics["predictions"]]


def test_different_seed_gives_a_different_split(demo_dir, store, result):
    other = train(TrainConfig(image_dir=str(demo_dir), seed=7), store=store)
    assert {p["path"] for p in other.metrics["predictions"]} != {p["path"] for p in result.metrics["predictions"]}


def test_evaluate_matches_sklearn_definitions():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    m = evaluate(probs, np.array([0, 1, 1, 1]), ["a", "b"], ["1", "2", "3", "4"])
    assert m["val_accuracy"] == 0.75
    assert m["confusion_matrix"] == [[1, 0], [1, 2]]
    assert m["per_class"]["b"]["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["a"]["precision"] == pytest.approx(0.5)


def test_balanced_class_weights():
    w = sample_weights(np.array([0, 0, 0, 1]), 2, "balanced")
    assert w[3] == pytest.approx(3 * w[0])
    with pytest.raises(ValueError, match="balanced"):
        sample_weights(np.array([0, 1]), 2, "weird")


def test_head_converges_to_separable_features():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (3, 64)).astype(np.float32)
    y = rng.integers(0, 3, 300)
    x = centres[y] + rng.normal(0, 0.3, (300, 64)).astype(np.float32)
    head, history = train_head(x[:240], y[:240], x[240:], y[240:], 3, TrainConfig())
    assert history[-1]["val_accuracy"] == 1.0
    assert np.mean(np.argmax(head(x[240:]), 1) == y[240:]) == 1.0


def test_accuracy_assertion():
    class R:
        val_accuracy = 0.5

    with pytest.raises(AccuracyError, match="below"):
        check_accuracy(R(), 0.9)
    check_accuracy(R(), 0.4)


def test_unreadable_image_leaving_a_class_too_small_names_the_class(tmp_path, store):
    root = make_demo_dataset(tmp_path / "d", per_class=3, seed=5)
    text = sorted((root / "text").iterdir())
    text[0].write_bytes(b"garbage")
    text[1].write_bytes(text[1].read_bytes()[:40])  # truncated
    with pytest.raises(DatasetError, match="'text'"):
        train(TrainConfig(image_dir=str(root)), store=store)
    assert text[0].exists() and text[1].exists()  # never deleted


def test_unreadable_images_are_skipped_with_a_warning(tmp_path, store):
    root = make_demo_dataset(tmp_path / "d", per_class=4, seed=6)
    (root / "shapes" / "notes.jpg").write_text("this is not a picture")
    events = []
    res = train(TrainConfig(image_dir=str(root)), progress=events.append, store=store)
    warnings = [e["message"] for e in events if e["type"] == "warning"]
    assert any("notes.jpg" in w for w in warnings)
    assert all("notes.jpg" not in it.path for it in res.data.dataset.items)


@pytest.mark.slow
def test_fine_tuning_changes_the_backbone_and_still_classifies(tmp_path, store):
    root = make_demo_dataset(tmp_path / "d", per_class=6, seed=8)
    cfg = TrainConfig(image_dir=str(root), do_fine_tuning=True, fine_tune_epochs=1, validation_split=0.34,
                      fine_tune_learning_rate=1e-4)
    res = train(cfg, store=store)
    assert [h["phase"] for h in res.history][-1] == "fine_tune"
    layer = res.model.get_layer("feature_extractor")
    assert layer.trainable and len(layer.trainable_weights) > 100
    pretrained = load_feature_layer(resolve("efficientnet-lite0"))
    before = {w.name: w.numpy() for w in pretrained.weights}
    changed = [w.name for w in layer.trainable_weights if not np.allclose(w.numpy(), before[w.name])]
    assert len(changed) > 50  # gradients reached the backbone
    x = cv2.resize(cv2.imread(str(next((root / "text").iterdir())))[:, :, ::-1], (224, 224))
    probs = res.model.predict(x[None].astype(np.float32) / 255.0, verbose=0)[0]
    assert probs.shape == (2,) and probs.sum() == pytest.approx(1.0, abs=1e-4)
    assert res.val_accuracy is not None
