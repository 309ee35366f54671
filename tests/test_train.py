"""Training: cross-validated head on cached features, metrics, calibration, threshold, determinism, the
make_image_classifier hold-out mode, fine-tuning, unreadable files."""

from __future__ import annotations

import dataclasses
import hashlib

import cv2
import numpy as np
import pytest

from engine.config.training import TrainConfig
from engine.data.dataset import DatasetError
from engine.data.demo import make_demo_dataset
from engine.export.card import training_facts
from engine.features.backbones import resolve
from engine.features.embeddings import EmbeddingStore
from engine.features.port import load_feature_layer
from engine.learn.evaluate import evaluate
from engine.learn.head import Head
from engine.learn.train import (
    AccuracyError,
    check_accuracy,
    fit_head,
    sample_weights,
    train,
    train_head,
)


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


def test_head_learns_the_demo_classes_judged_by_cross_validation(result):
    assert result.labels == ["shapes", "text"]
    assert result.val_accuracy >= 0.9
    assert result.metrics["evaluation"] == "cross-validation (5 folds)" and result.metrics["cross_validated"]
    assert result.timings["head_s"] < 30
    assert isinstance(result.head, Head) and result.head.kernel.shape == (result.data.features.shape[1], 2)
    # the shipped head is fitted on every image
    assert len(result.data.train_idx) == len(result.data.dataset.items) and len(result.data.val_idx) == 0
    probs = result.head.probabilities(result.data.features)
    assert np.mean(probs.argmax(1) == result.data.dataset.y) == 1.0


def test_every_labelled_image_gets_an_out_of_fold_prediction(result):
    m, items = result.metrics, result.data.dataset.items
    assert len(m["predictions"]) == len(items) == m["n_evaluated"]
    assert {p["sha256"] for p in m["predictions"]} == {it.sha256 for it in items}
    assert {p["fold"] for p in m["predictions"]} == set(range(5))
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (2, 2) and cm.sum() == len(items)
    assert np.trace(cm) / cm.sum() == pytest.approx(m["val_accuracy"])
    for p in m["predictions"]:
        assert {"path", "true", "predicted", "probability", "probs", "sha256", "fold"} <= set(p)
        assert p["predicted"] == m["labels"][int(np.argmax(p["probs"]))]
        assert p["probability"] == pytest.approx(max(p["probs"]), abs=1e-5)
    assert [f["fold"] for f in m["folds"]] == list(range(5)) and m["accuracy_min"] <= m["val_accuracy"]


def test_grid_points_are_epoch_events_and_the_choice_is_reported(result):
    epochs = [e for e in result.events if e["type"] == "epoch"]
    assert len(epochs) == len(result.history) >= 5
    assert {"phase", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "elapsed"} <= set(epochs[0])
    assert [e["epoch"] for e in epochs] == list(range(1, len(epochs) + 1))
    m = result.metrics
    lowest = min(r["val_loss"] for r in m["l2_search"])
    chosen = next(r for r in m["l2_search"] if r["l2"] == m["l2"])
    assert m["l2_chosen"] and chosen["val_loss"] <= lowest + m["l2_se"]  # the one-standard-error rule
    assert all(r["l2"] <= m["l2"] for r in m["l2_search"] if r["val_loss"] <= lowest + m["l2_se"])


def test_calibration_and_threshold_reach_metrics_and_the_model_card(result):
    m = result.metrics
    assert m["calibration"]["temperature"] == result.head.temperature > 0
    assert {"ece_before", "ece_after"} <= set(m["calibration"])
    card = training_facts(result)
    assert card["threshold"]["value"] == m["threshold"]["value"] is not None
    assert card["threshold"]["target_precision"] == 0.95 and 0 < card["threshold"]["coverage"] <= 1
    assert card["metrics"]["evaluation"] == m["evaluation"]
    assert card["metrics"]["calibration"]["temperature"] == result.head.temperature
    assert "predictions" not in card["metrics"] and len(m["threshold"]["curve"]) > 10


def test_retrain_uses_the_cache_and_is_deterministic(demo_dir, store, result):
    again = train(TrainConfig(image_dir=str(demo_dir)), store=store)
    assert again.timings["embedded_new"] == 0
    assert [p["probs"] for p in again.metrics["predictions"]] == [p["probs"] for p in result.metrics["predictions"]]
    assert np.array_equal(again.head.kernel, result.head.kernel)


def test_different_seed_gives_different_folds(demo_dir, store, result):
    other = train(TrainConfig(image_dir=str(demo_dir), seed=7), store=store)
    assert {(p["sha256"], p["fold"]) for p in other.metrics["predictions"]} != {
        (p["sha256"], p["fold"]) for p in result.metrics["predictions"]}


def test_validation_split_keeps_make_image_classifiers_hold_out(demo_dir, store):
    res = train(TrainConfig(image_dir=str(demo_dir), validation_split=0.25), store=store)
    m = res.metrics
    assert len(res.data.val_idx) == 6 and len(m["predictions"]) == 6 and not m["cross_validated"]
    assert m["evaluation"].startswith("held-out validation") and m["val_accuracy"] >= 0.8
    assert {p["fold"] for p in m["predictions"]} == {None}
    assert m["calibration"]["measured_on"] == "the held-out validation images"


def test_duplicates_share_a_fold_and_a_fixed_l2_is_used(tmp_path, store):
    root = make_demo_dataset(tmp_path / "d", per_class=8, seed=3)
    for name in ("shapes", "text"):
        first = sorted((root / name).iterdir())[0]
        for i in range(3):
            (root / name / f"copy{i}{first.suffix}").write_bytes(first.read_bytes())
    res = train(TrainConfig(image_dir=str(root), l2_regularizer=0.01), store=store)
    folds: dict[str, set] = {}
    for p in res.metrics["predictions"]:
        folds.setdefault(p["sha256"], set()).add(p["fold"])
    assert max(len(v) for v in folds.values()) == 1 and len(res.metrics["predictions"]) == 22
    assert res.metrics["l2"] == 0.01 and not res.metrics["l2_chosen"] and len(res.history) == 1


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
    assert np.mean(np.argmax(head.probabilities(x[240:]), 1) == y[240:]) == 1.0


def test_no_temperature_or_threshold_from_a_class_with_one_distinct_image():
    rng = np.random.default_rng(3)
    y = np.array([0] * 10 + [1] * 3)
    x = rng.normal(0, 1, (13, 8)).astype(np.float32) + 2 * y[:, None]
    groups = np.r_[np.arange(10), [10, 10, 10]]  # class 1: three copies of one photo
    fit = fit_head(x, y, 2, TrainConfig(), groups)
    assert fit.head.temperature == 1.0 and fit.threshold["value"] is None and "note" in fit.threshold
    assert fit_head(x, y, 2, TrainConfig(), np.arange(13)).threshold["value"] is not None


def test_accuracy_assertion():
    class R:
        val_accuracy = 0.5
        metrics = {"evaluation": "cross-validation (5 folds)"}

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
def test_fine_tuning_changes_the_backbone_validates_on_one_fold_and_bakes_the_temperature(tmp_path, store):
    root = make_demo_dataset(tmp_path / "d", per_class=6, seed=8)
    cfg = TrainConfig(image_dir=str(root), do_fine_tuning=True, fine_tune_epochs=1, fine_tune_learning_rate=1e-4)
    res = train(cfg, store=store)
    assert [h["phase"] for h in res.history][-1] == "fine_tune"
    assert res.metrics["evaluation"].startswith("one held-out fold") and not res.metrics["cross_validated"]
    assert len(res.data.val_idx) and len(res.metrics["predictions"]) == len(res.data.val_idx)
    assert not set(res.data.val_idx) & set(res.data.train_idx)
    layer = res.model.get_layer("feature_extractor")
    assert layer.trainable and len(layer.trainable_weights) > 100
    pretrained = load_feature_layer(resolve("efficientnet-lite0"))
    before = {w.name: w.numpy() for w in pretrained.weights}
    changed = [w.name for w in layer.trainable_weights if not np.allclose(w.numpy(), before[w.name])]
    assert len(changed) > 50  # gradients reached the backbone
    kernel, bias = res.model.get_layer("probabilities").get_weights()
    w, b = res.head.calibrated()
    np.testing.assert_allclose(kernel, w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bias, b, rtol=1e-5, atol=1e-6)
    x = cv2.resize(cv2.imread(str(next((root / "text").iterdir())))[:, :, ::-1], (224, 224))
    probs = res.model.predict(x[None].astype(np.float32) / 255.0, verbose=0)[0]
    assert probs.shape == (2,) and probs.sum() == pytest.approx(1.0, abs=1e-4)
    assert res.val_accuracy is not None


def test_backbone_comparison_ranks_this_run_against_another_backbones_cached_features(result, monkeypatch):
    """Features of a second backbone, cached for the same images, are compared by cross-validated log-loss. The
    second backbone here is the run's own features plus noise under another id (computing EfficientNet-Lite2's
    would take a minute); resolving its name is the one part replaced."""
    import engine.features.backbones as backbones
    import engine.learn.backbone_comparison as train_module
    from engine.config.backbones import ResolvedBackbone
    from engine.features.embeddings import preprocess_id

    data = result.data
    other = ResolvedBackbone("noisy", "-", data.resolved.image_size, None, "noisy-test-features")
    noisy = data.features + np.random.default_rng(0).normal(0, 3 * data.features.std(), data.features.shape)
    prep = preprocess_id(other.image_size, result.config.center_crop)
    data.store.put_many([(it.sha256, f.astype(np.float32)) for it, f in zip(data.dataset.items, noisy, strict=True)],
                        other.backbone_id, prep)
    monkeypatch.setattr(backbones, "resolve", lambda name, image_size=None: other)
    rows = train_module.backbone_comparison(result, ["noisy"])
    assert [r["backbone"] for r in rows] == [data.resolved.handle, "noisy"]  # the clean features win
    assert rows[0]["log_loss"] < rows[1]["log_loss"] and rows[0]["accuracy"] == result.val_accuracy
    own = next(r for r in result.metrics["l2_search"] if r["l2"] == result.metrics["l2"])
    assert rows[0]["log_loss"] == own["val_loss"]
    data.store.put_many([(data.dataset.items[0].sha256, noisy[0].astype(np.float32))], "another-id", prep)
    monkeypatch.setattr(backbones, "resolve", lambda name, image_size=None: dataclasses.replace(
        other, backbone_id="another-id"))
    assert train_module.backbone_comparison(result, ["noisy"]) == []  # features of only some images: nothing to compare


# ----------------------------------------------------------------------------------------------------------------
# What the shipped head promises, checked on what train() returns (and metrics.json holds)
# ----------------------------------------------------------------------------------------------------------------
def _features_run(tmp_path, features: np.ndarray, y: np.ndarray, **cfg) -> object:
    """train() on given features (no backbone): one tiny image per row, so the run has real items and shas."""
    import types

    from engine.data.dataset import scan_image_dir, split_dataset
    from engine.learn.prepare import PreparedData

    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for i, c in enumerate(y):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / f"c{c}" / f"{i:04d}.png"), rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
    ds = scan_image_dir(root)
    order = [int(p.rsplit("/", 1)[1][:4]) for p in (it.path for it in ds.items)]
    resolved = types.SimpleNamespace(handle="x", backbone_id="x", image_size=8, path="x")
    tr, va = split_dataset(ds, 0.0, 0)
    return train(TrainConfig(image_dir=str(root), **cfg), data=PreparedData(ds, resolved, features[order], tr, va))


def _overlapping(n: int = 800, d: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes that overlap: the head's raw answers are off in confidence (too timid here, after the strong
    L2 the one-standard-error rule picks), which a temperature fitted on the out-of-fold answers corrects."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    return (rng.normal(0, 1, (n, d)) + 0.7 * y[:, None] * (np.arange(d) < 3)).astype(np.float32), y


def test_the_head_is_calibrated_on_its_out_of_fold_answers(tmp_path):
    x, y = _overlapping()
    res = _features_run(tmp_path, x, y)
    cal = res.metrics["calibration"]
    assert res.head.temperature == cal["temperature"] and abs(cal["temperature"] - 1.0) > 0.05, cal
    assert cal["ece_after"] < cal["ece_before"], cal


def test_the_unknown_threshold_reaches_the_target_precision_and_follows_it(tmp_path):
    x, y = _overlapping()
    values = {}
    for target in (0.8, 0.95):
        res = _features_run(tmp_path / str(target), x, y, target_precision=target)
        threshold = res.metrics["threshold"]
        assert threshold["target_precision"] == target and threshold["reached"], threshold
        kept = [p for p in res.metrics["predictions"] if p["probability"] >= threshold["value"]]
        precision = np.mean([p["predicted"] == p["true"] for p in kept])
        n = len(res.metrics["predictions"])  # stored rounded: an answer right at the threshold may fall either side
        assert precision >= target - 1 / n and len(kept) / n == pytest.approx(threshold["coverage"], abs=1.5 / n), (
            target, precision, threshold)
        values[target] = threshold["value"]
    assert values[0.95] > values[0.8]


@pytest.mark.slow
def test_altered_copies_share_their_originals_fold(tmp_path, store):
    """Copies a user is likely to have (smaller, recompressed, cropped, brighter) are held out with their original,
    or cross-validation would grade the model on pictures it was trained on."""
    from curate_data import KINDS, altered, drawing, jpeg

    from engine.data.images import bytes_sha256

    root = tmp_path / "images"
    pairs = []
    for k, kind in enumerate(KINDS):
        (root / kind).mkdir(parents=True)
        for i in range(8):
            (root / kind / f"{kind}{i}.jpg").write_bytes(jpeg(drawing(kind, 100 * k + i)))
        for i in (1, 5):
            copy = altered(drawing(kind, 100 * k + i))
            (root / kind / f"copy_of_{kind}{i}.jpg").write_bytes(copy)
            pairs.append((bytes_sha256((root / kind / f"{kind}{i}.jpg").read_bytes()), bytes_sha256(copy)))
    res = train(TrainConfig(image_dir=str(root)), store=store)
    fold = {p["sha256"]: p["fold"] for p in res.metrics["predictions"]}
    assert len(set(fold.values())) > 1
    assert all(fold[original] == fold[copy] for original, copy in pairs), pairs


def test_a_large_project_starts_where_its_last_run_ended(demo_dir, store, result, monkeypatch, tmp_path):
    """Issue 22: from LARGE_N images on, a retrain starts where the previous run (same backbone and classes) ended
    (engine.learn.warm_start): its images in the same folds, each fold at its last head, the L2 search at the last
    choice, the final fit at the last head; while few images changed since the last search its L2 is kept and
    the folds are fitted at it alone. Fewer iterations, the same optimum. Smaller projects always start from the
    grid (results independent of earlier runs); an unreadable entry only means starting afresh."""
    from engine.data.dataset import Dataset
    from engine.learn import crossval, warm_start

    monkeypatch.setenv("RETRAIN_STUDIO_CACHE", str(tmp_path))
    cfg = TrainConfig(image_dir=str(demo_dir))
    train(cfg, store=store, data=result.data)
    assert not (tmp_path / warm_start.FOLDER).exists()
    monkeypatch.setattr(crossval, "LARGE_N", 1)
    first = train(cfg, store=store, data=result.data)
    kept = list((tmp_path / warm_start.FOLDER).glob("*.npz"))
    assert len(kept) == 1 and first.metrics["l2_kept"] is None
    # nothing changed: the L2 is kept, one step at it, the final head fitted in the same passes
    same = train(cfg, store=store, data=result.data)
    assert same.metrics["l2_kept"] == {"changed": 0, "limit": 0} and same.metrics["l2_rule"].startswith("kept")
    assert [r["l2"] for r in same.metrics["l2_search"]] == [first.metrics["l2"]]
    np.testing.assert_allclose(same.head.kernel, first.head.kernel, atol=2e-3)
    assert same.metrics["folds_from_last_run"] == 5 and same.metrics["l2_search"][0]["iterations"] <= 2
    # one label changed (over 0.1% of these images): a search again, around the last choice
    items = list(result.data.dataset.items)
    items[0] = dataclasses.replace(items[0], label=next(c for c in result.labels if c != items[0].label))
    moved = dataclasses.replace(result.data, dataset=Dataset(result.data.dataset.root, result.labels, items))
    again = train(cfg, store=store, data=moved)
    assert again.metrics["l2_kept"] is None
    assert again.metrics["l2_search"][0]["l2"] == first.metrics["l2"]
    assert again.metrics["evaluation"] == "cross-validation (5 folds)"
    # the same images keep their folds, and every fold starts from its last head
    assert first.metrics["folds_from_last_run"] == 0 and again.metrics["folds_from_last_run"] == 5
    fold = {p["sha256"]: p["fold"] for p in first.metrics["predictions"]}
    assert all(fold[p["sha256"]] == p["fold"] for p in again.metrics["predictions"])
    # the search's labels are now the moved ones: moving the image back is one change again, searched again
    back = train(cfg, store=store, data=result.data)
    assert back.metrics["l2_kept"] is None
    kept[0].write_bytes(b"not an npz")
    afresh = train(cfg, store=store, data=result.data)
    assert afresh.metrics["l2"] == first.metrics["l2"] and afresh.metrics["head_iterations"] > 0
    assert afresh.metrics["folds_from_last_run"] == 0 and afresh.metrics["l2_kept"] is None


def test_a_kept_fit_round_trips_and_an_older_entry_still_starts_the_search(tmp_path, monkeypatch):
    """warm_start's entry: the folds by image and the fold heads per L2 come back as kept; an entry written before
    folds were kept gives the L2 and final head only (its folds: unknown, so every fold starts from zero)."""
    from engine.learn import warm_start

    monkeypatch.setenv("RETRAIN_STUDIO_CACHE", str(tmp_path))
    rng = np.random.default_rng(0)
    shas = [hashlib.sha256(bytes([i])).hexdigest() for i in range(6)]
    heads = {c: [(rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32))
                 for _ in range(2)] for c in (1e-3, 3e-4)}
    keys = warm_start.image_keys(shas)
    fit = warm_start.with_folds(warm_start.PreviousFit(3e-4, np.ones((4, 3)), np.zeros(3)), keys,
                                np.array([0, 1, 1, 0, 1, 0]), 2, heads, np.array([2, 2, 1, 0, 0, 1]))
    warm_start.save("k", fit)
    back = warm_start.load("k")
    assert back.l2 == 3e-4 and sorted(back.fold_heads) == [3e-4, 1e-3]
    np.testing.assert_array_equal(back.fold_heads[1e-3][1][0], heads[1e-3][1][0])
    assert back.folds_of(warm_start.image_keys([shas[2], "f" * 64, shas[0]]), 2).tolist() == [1, -1, 0]
    assert back.folds_of(keys, 5) is None  # another fold count: the folds mean nothing here
    # what changed since the search: one relabelled, two removed, one added
    assert back.changed_since_search(keys, np.array([2, 2, 1, 0, 0, 1])) == 0
    fewer = warm_start.image_keys([*shas[:4], "e" * 64])
    assert back.changed_since_search(fewer, np.array([2, 0, 1, 0, 0])) == 4  # 1 + 2 + 1
    monkeypatch.setattr(warm_start, "KEEP_L2_SHARE", 0.5)
    assert back.kept_l2(keys, np.array([2, 2, 1, 0, 0, 0])) == (3e-4, 1)
    assert back.kept_l2(keys, np.array([0, 0, 0, 1, 1, 1])) is None
    np.savez(tmp_path / warm_start.FOLDER / "old.npz", l2=np.float64(1e-3), kernel=np.ones((4, 3), np.float32),
             bias=np.zeros(3, np.float32))
    old = warm_start.load("old")
    assert old.l2 == 1e-3 and old.fold_heads == {} and old.folds_of(keys, 2) is None
    assert old.kept_l2(keys, np.zeros(6, int)) is None  # no search snapshot: search
