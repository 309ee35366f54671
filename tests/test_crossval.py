"""Cross-validation on features: the fit, the folds, the L2 search, calibration, the threshold; and the threshold
in every output (predict CLI, the bundle's predict.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import REPO

from engine.learn import crossval


def blobs(n_per_class: list[int], d: int = 16, spread: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (len(n_per_class), d))
    y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)])
    return (centres[y] + rng.normal(0, spread, (len(y), d))).astype(np.float32), y


def test_fit_matches_a_converged_sklearn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    x, y = blobs([60, 50, 40], d=8, spread=1.5)
    l2 = 1e-2
    kernel, bias, _ = crossval.fit_logreg(x, y, 3, l2, tol=1e-8)
    ref = LogisticRegression(C=1 / (2 * len(y) * l2), tol=1e-9, max_iter=5000).fit(x, y)
    # sklearn's multinomial model is identified up to a constant per feature: compare centred weights
    centre = lambda w: w - w.mean(axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(centre(kernel.T), centre(ref.coef_), atol=2e-3)
    np.testing.assert_allclose(crossval.softmax(x @ kernel + bias), ref.predict_proba(x), atol=2e-3)


def test_fits_made_together_are_the_fits_made_one_at_a_time():
    """Several fits share each pass over the rows (crossval._Batch): each still converges to its own optimum,
    a fit that lacks a class and sample weights included, whatever the row-block threads."""
    x, y = blobs([40, 35, 30, 6], d=12, spread=1.2, seed=4)
    weights = np.random.default_rng(0).uniform(0.5, 2.0, len(y))
    masks = [np.ones(len(y), bool), np.arange(len(y)) % 3 != 0, y != 3]  # the third has no class-3 row
    l2s = [1e-2, 3e-3, 1e-3]
    crossval.FIT_BLOCK, block = 32, crossval.FIT_BLOCK  # several row blocks
    try:
        fits = [crossval._Fit(x, y, 4, m, weights, c, None) for m, c in zip(masks, l2s, strict=True)]
        together = crossval.fit_together(x, y, fits, tol=1e-8, threads=2)
        alone = [crossval.fit_logreg(x[m], y[m], 4, c, sample_weight=weights[m], tol=1e-8)
                 for m, c in zip(masks, l2s, strict=True)]
    finally:
        crossval.FIT_BLOCK = block
    for (k1, b1, _), (k2, b2, _), m in zip(together, alone, masks, strict=True):
        np.testing.assert_allclose(crossval.softmax(x[m] @ k1 + b1), crossval.softmax(x[m] @ k2 + b2), atol=1e-4)
    assert (together[2][1][3] < (x @ together[2][0] + together[2][1])[:, :3].min())  # never favoured


def test_an_error_in_a_shared_evaluation_ends_every_fit_of_the_batch():
    x, y = blobs([20, 20], d=4)
    fits = [crossval._Fit(x, y, 2, np.ones(len(y), bool), None, c, None) for c in (1e-2, 1e-3)]

    def broken(theta):
        raise MemoryError("no room for the logits")

    fits[1].padded = broken
    with pytest.raises(MemoryError, match="no room"):
        crossval.fit_together(x, y, fits, tol=1e-6)


def test_a_stop_while_the_fits_start_ends_the_batch_instead_of_hanging(monkeypatch):
    """SIGTERM (the CLI's stop raises Cancelled in the main thread) can land while fit_together is still starting
    the fits: those started must not wait forever for those that never will (the process hung, and a CI run's
    test_sigterm_marks_the_run_cancelled_and_leaves_no_bundle timed out)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    x, y = blobs([20, 20], d=4)
    fits = [crossval._Fit(x, y, 2, np.ones(len(y), bool), None, c, None) for c in (1e-2, 1e-3, 1e-4)]
    real_submit, calls = ThreadPoolExecutor.submit, []

    def submit(pool, fn, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what a signal handler raising between two submits looks like
        return real_submit(pool, fn, *args, **kwargs)

    monkeypatch.setattr(ThreadPoolExecutor, "submit", submit)
    outcome = []

    def run():
        try:
            crossval.fit_together(x, y, fits, tol=1e-6)
        except KeyboardInterrupt:
            outcome.append("stopped")

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout=30)
    assert not t.is_alive(), "fit_together hung after a stop while starting its fits"
    assert outcome == ["stopped"]


def test_every_row_is_held_out_once_and_copies_share_a_fold():
    x, y = blobs([30, 30, 30])
    groups = np.arange(len(y))
    groups[[1, 2, 40, 41, 42]] = 1  # one group spanning rows of two classes (a mislabelled copy)
    groups[[60, 61]] = 60
    oof = crossval.out_of_fold(x, y, 3, groups=groups, n_folds=5, seed=3)
    assert oof.n_folds == 5 and set(oof.fold.tolist()) == set(range(5))
    assert len(set(oof.fold[[1, 2, 40, 41, 42]].tolist())) == 1 and oof.fold[60] == oof.fold[61]
    assert oof.probs.shape == (90, 3) and np.allclose(oof.probs.sum(1), 1, atol=1e-5)
    # out of fold for real: each fold's rows are predicted by a head fitted on the other folds only
    f = oof.fold[0]
    kernel, bias, _ = crossval.fit_logreg(x[oof.fold != f], y[oof.fold != f], 3, oof.l2,
                                          tol=crossval.SEARCH_TOL)
    np.testing.assert_allclose(oof.probs[oof.fold == f], crossval.softmax(x[oof.fold == f] @ kernel + bias),
                               atol=0.02)
    again = crossval.out_of_fold(x, y, 3, groups=groups, n_folds=5, seed=3)
    assert np.array_equal(again.fold, oof.fold) and np.allclose(again.probs, oof.probs)


def test_folds_are_stratified_and_balanced():
    y = np.repeat([0, 1, 2], [50, 30, 20])
    fold, k = crossval.assign_folds(y, None, 5, seed=0)
    per_fold = np.array([np.bincount(y[fold == f], minlength=3) for f in range(k)])
    assert k == 5 and (np.abs(per_fold - [10, 6, 4]) <= 1).all()
    other, _ = crossval.assign_folds(y, None, 5, seed=1)
    assert not np.array_equal(fold, other)


def test_tiny_classes_smaller_than_the_fold_count():
    x, y = blobs([25, 25, 2, 3])  # class 2: 2 images, class 3: 3 images, 5 folds
    groups = np.arange(len(y))
    groups[y == 3] = 99  # class 3's three images are one near-duplicate group: held out together
    oof = crossval.out_of_fold(x, y, 4, groups=groups, n_folds=5)
    assert oof.n_folds == 5 and np.isfinite(oof.logits).all()
    assert len(set(oof.fold[y == 2].tolist())) == 2  # split, so each is judged by a head that saw the other
    # class 3 was absent from its fold's training data: never favoured there, and no NaN
    assert (oof.probs[y == 3].argmax(1) != 3).all()


def test_fewer_distinct_images_than_folds_uses_fewer_folds_and_one_refuses():
    x, y = blobs([2, 2])
    assert crossval.out_of_fold(x, y, 2, n_folds=5).n_folds == 4  # one image per fold
    with pytest.raises(ValueError, match="at least 2 different images"):
        crossval.out_of_fold(x, y, 2, groups=np.zeros(4, int))


def test_l2_search_reports_each_point_and_steps_past_the_grid_edge():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(80, 16)).astype(np.float32), rng.integers(0, 2, 80)  # noise: strongest L2 wins
    seen = []
    oof = crossval.out_of_fold(x, y, 2, on_grid_point=seen.append)
    assert [r["l2"] for r in seen[:len(crossval.L2_GRID)]] == sorted(crossval.L2_GRID, reverse=True)
    assert oof.l2 >= 0.1 and max(r["l2"] for r in seen) > max(crossval.L2_GRID)
    assert {"step", "l2", "loss", "accuracy", "val_loss", "val_accuracy", "elapsed"} <= set(seen[0])
    assert crossval.out_of_fold(x, y, 2, l2=1e-3).grid[0]["l2"] == 1e-3  # a given L2 is used as is


HEAD_ONLY = textwrap.dedent("""
    import sys, types
    import cv2, numpy as np
    from pathlib import Path
    from engine.config.training import TrainConfig
    from engine.data.dataset import scan_image_dir, split_dataset
    from engine.learn.prepare import PreparedData
    from engine.export.card import training_facts
    from engine.learn.train import train

    root = Path(sys.argv[1])
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            cv2.imwrite(str(root / c / f"{i}.png"), rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    ds = scan_image_dir(root)
    feats = rng.normal(0, 1, (len(ds.items), 8)).astype(np.float32) + 3 * ds.y[:, None]
    resolved = types.SimpleNamespace(handle="x", backbone_id="x", image_size=16, path="x")
    tr, va = split_dataset(ds, 0.0, 0)
    res = train(TrainConfig(image_dir=str(root)), data=PreparedData(ds, resolved, feats, tr, va))
    card = training_facts(res)
    assert res.metrics["evaluation"].startswith("cross-validation") and card["threshold"]["value"] is not None
    print([m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf_keras", "tensorflow_hub", "keras")])
""")


def test_head_only_training_imports_no_tensorflow(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", HEAD_ONLY, str(tmp_path / "d")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"


# ----------------------------------------------------------------------------------------------------------------
# The threshold in the outputs (a real exported model: the one tests/export_data.py makes once per session)
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The shared export's float32 model, labels and card, with images to classify."""
    from export_data import CLASSES, draw, exported_once, save_rgb

    exp = exported_once(tmp_path_factory)
    folder = tmp_path_factory.mktemp("threshold")
    for name in ("model_float32.tflite", "labels.txt", "model_card.json"):
        shutil.copy(exp.out / name, folder / name)
    rng = np.random.default_rng(5)
    (folder / "images").mkdir()
    imgs = [save_rgb(folder / "images" / f"{i}.png", draw(i, rng)) for i in range(len(CLASSES))]
    return folder, imgs


def _set_card_threshold(folder, value: float) -> None:
    card = json.loads((folder / "model_card.json").read_text())
    card["threshold"] = {"value": value, "target_precision": 0.95, "coverage": 0.5}
    (folder / "model_card.json").write_text(json.dumps(card))


def _between(tops: list[float]) -> float:
    """A threshold with some answers above it and some below."""
    s = sorted(tops)
    return (s[0] + s[-1]) / 2 if s[0] < s[-1] else s[0] + 1e-3


@pytest.mark.slow
def test_predict_cli_marks_answers_below_the_cards_threshold_unknown(model_dir, capsys):
    import argparse

    from engine.cli.predict import add_predict_args, run_predict

    folder, imgs = model_dir

    def run(*extra: str) -> list[dict]:
        parser = argparse.ArgumentParser()
        add_predict_args(parser)
        run_predict(parser.parse_args(["--model_file", str(folder / "model_float32.tflite"), "--json", "--image",
                                       *map(str, imgs), *extra]))
        return json.loads(capsys.readouterr().out)

    tops = [r["predictions"][0]["probability"] for r in run("--threshold", "0")]
    threshold = _between(tops)
    _set_card_threshold(folder, threshold)
    out = run()
    assert all(r["threshold"] == threshold for r in out)
    assert [r["unknown"] for r in out] == [t < threshold for t in tops] and any(t < threshold for t in tops)
    assert not any(r["unknown"] for r in run("--threshold", "0"))


@pytest.mark.slow
def test_bundle_predict_py_marks_unknown_by_the_cards_threshold(model_dir):
    folder, imgs = model_dir
    shutil.copy(REPO / "engine" / "bundle" / "predict.py", folder / "predict.py")

    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "predict.py", *extra, *map(str, imgs)], cwd=folder,
                              capture_output=True, text=True, timeout=120)

    plain = run("--json", "--threshold", "0")
    assert plain.returncode == 0, plain.stderr[-2000:]
    tops = [r["predictions"][0]["probability"] for r in json.loads(plain.stdout)]
    threshold = _between(tops)
    _set_card_threshold(folder, threshold)
    out = json.loads(run("--json").stdout)
    assert [r["unknown"] for r in out] == [t < threshold for t in tops] and out[0]["threshold"] == threshold
    text = run().stdout
    assert text.count("unknown: the top probability is below") == sum(t < threshold for t in tops)


def test_a_search_started_at_a_previous_choice_ends_at_the_same_l2():
    """A retrain of a large project starts at the last choice (engine.learn.train), then takes the usual steps
    along the ladder (stronger first), so the rule still picks the same L2 wherever it starts."""
    x, y = blobs([60, 50, 40], d=16, spread=2.0)
    plain = crossval.out_of_fold(x, y, 3)
    for start in (plain.l2, 1e-4, 0.3, 2e-3):
        again = crossval.out_of_fold(x, y, 3, warm=crossval.WarmStart(start=start))
        assert again.l2 == plain.l2, start
        assert again.grid[0]["l2"] == crossval._nearest(crossval.L2_LADDER, start)
    # here the choice (0.3) lies far from the default grid: 7 steps from it, 4 from the last choice
    assert len(crossval.out_of_fold(x, y, 3, warm=crossval.WarmStart(start=plain.l2)).grid) < len(plain.grid) - 2
    assert crossval._nearest(crossval.L2_LADDER, 2e-3) == 3e-3 and crossval._nearest(crossval.L2_LADDER, 5.0) == 1.0


def test_the_search_goes_stronger_before_weaker():
    """From one point the choice is the strongest tried and the lowest loss the weakest: the stronger side is
    always needed (the one-standard-error rule looks for the strongest penalty within reach), the weaker only when
    the lowest loss is still at that end after it."""
    row = {"val_loss": 0.3}
    assert crossval._extend([dict(row, l2=1e-4)], 1e-4, 1e-4) == [3e-4]
    tried = [dict(l2=1e-4, val_loss=0.30), dict(l2=3e-4, val_loss=0.50)]
    assert crossval._extend(tried, 1e-4, 1e-4) == [3e-5]  # the choice is inside; the lowest still at the weak end
    tried = [dict(l2=1e-4, val_loss=0.30), dict(l2=3e-4, val_loss=0.28)]
    assert crossval._extend(tried, 3e-4, 3e-4) == [1e-3]  # lowest moved inside; the choice at the strong end
    assert crossval._extend([*tried, dict(l2=1e-3, val_loss=0.5)], 3e-4, 3e-4) == []


def test_the_final_fit_starts_from_the_fold_heads():
    x, y = blobs([60, 50, 40], d=16, spread=2.0)
    oof = crossval.out_of_fold(x, y, 3, n_folds=5)
    cold = crossval.fit_logreg(x, y, 3, oof.l2)
    warm = crossval.fit_logreg(x, y, 3, oof.l2, init=oof.head_init)
    assert warm[2] < cold[2]  # fewer iterations ...
    np.testing.assert_allclose(crossval.softmax(x @ warm[0] + warm[1]), crossval.softmax(x @ cold[0] + cold[1]),
                               atol=1e-3)  # ... to the same head


def test_a_retrain_keeps_each_group_in_its_previous_fold():
    """Issue 22: after a few labels changed, the same images are held out in the same folds (so the last run's
    fold heads are fair starts); a new image is placed as before, a merged group takes its rows' usual fold."""
    y = np.repeat([0, 1, 2], [50, 30, 20])
    groups = np.arange(len(y)) // 2  # pairs of copies
    fold, k = crossval.assign_folds(y, groups, 5, seed=0)
    moved = y.copy()
    moved[[3, 40, 41, 77]] = [1, 2, 2, 0]  # relabelled: without `previous` the greedy deal shifts many groups
    assert not np.array_equal(crossval.assign_folds(moved, groups, 5, seed=0)[0], fold)
    assert np.array_equal(crossval.assign_folds(moved, groups, 5, seed=0, previous=fold)[0], fold)
    new_y = np.r_[y, [0, 1, 2, 2]]  # four new images, one a copy of image 0
    new_groups = np.r_[groups, [0, 100, 101, 102]]
    placed, _ = crossval.assign_folds(new_y, new_groups, 5, seed=0, previous=np.r_[fold, [-1] * 4])
    assert np.array_equal(placed[:100], fold) and placed[100] == fold[0]
    merged = groups.copy()
    merged[[2, 3, 4]] = 0  # rows 0-4 now one group: its rows' most common previous fold
    kept, _ = crossval.assign_folds(y, merged, 5, seed=0, previous=fold)
    votes = np.bincount(fold[:5], minlength=5)
    assert (kept[:5] == kept[0]).all() and votes[kept[0]] == votes.max()


def test_a_fold_starts_from_a_previous_head_only_if_that_head_never_saw_its_rows():
    """The last run's fold heads start this run's folds when every row a fold holds out was held out by the same
    fold then (or is new): an unchanged retrain converges at once to the same answers. A fold holding out a row
    that head was trained on starts from zero: at a weak L2 a fit stops near its start and would judge a row it
    had learnt (a leak)."""
    x, y = blobs([60, 50, 40], d=16, spread=2.0)
    first = crossval.out_of_fold(x, y, 3, warm=crossval.WarmStart(start=1e-2))
    again = crossval.out_of_fold(x, y, 3, warm=crossval.WarmStart(first.l2, first.fold, first.fold_heads))
    assert again.warm_folds == first.n_folds and again.l2 == first.l2
    assert sum(r["iterations"] for r in again.grid) < sum(r["iterations"] for r in first.grid) / 3
    np.testing.assert_allclose(again.probs, first.probs, atol=2e-3)
    # a row of fold 1 becomes a near-copy of a row of fold 0: the merged group is held out by fold 0 (ties go to the
    # lower fold), whose last head was trained on that row, so fold 0 starts from zero; the others still may
    r0, r1 = np.flatnonzero(first.fold == 0)[0], np.flatnonzero(first.fold == 1)[0]
    groups = np.arange(len(y))
    groups[r1] = r0
    merged = crossval.out_of_fold(x, y, 3, groups=groups,
                                  warm=crossval.WarmStart(first.l2, first.fold, first.fold_heads))
    assert merged.fold[r1] == merged.fold[r0] == 0 and merged.warm_folds == first.n_folds - 1
    one_row = first.fold.copy()
    one_row[np.flatnonzero(first.fold == 0)[0]] = 1  # one row of fold 0 was a training row of fold 0's head
    assert crossval._fair_starts(first.fold, first.n_folds, one_row, first.fold_heads)[0] == [1, 2, 3, 4]
    new = np.full(len(y), -1)
    new[:10] = first.fold[:10]  # the others are new images: no head saw them
    assert crossval._fair_starts(first.fold, first.n_folds, new, first.fold_heads)[0] == list(range(5))


def test_a_search_moving_away_from_the_last_choice_starts_from_that_runs_heads():
    """A fair fold starts at an L2 the last run did not fit from that run's head at the nearest L2 it did fit, not
    from zero (issue 22: 60 labels moved in 24,227 photos, 55 iterations from zero, 23-29 from a neighbour)."""
    x, y = blobs([60, 50, 40], d=16, spread=2.0)
    last = crossval.out_of_fold(x, y, 3, l2=0.1)  # a kept-L2 run: heads at one L2
    fresh = crossval.out_of_fold(x, y, 3, l2=0.03, warm=crossval.WarmStart(folds=last.fold))
    warm = crossval.out_of_fold(x, y, 3, l2=0.03,
                                 warm=crossval.WarmStart(folds=last.fold, heads=last.fold_heads))
    assert warm.warm_folds == last.n_folds and fresh.warm_folds == 0
    assert warm.grid[0]["iterations"] < fresh.grid[0]["iterations"]
    np.testing.assert_allclose(warm.probs, fresh.probs, atol=2e-3)
    fits = crossval._FoldFits(x, y, 3, last.fold, last.n_folds, None, crossval.SEARCH_TOL, 1,
                              ([1, 2], last.fold_heads))
    inits = fits._inits(0.03)
    assert inits[0] is None and inits[1][0] is last.fold_heads[0.1][1][0]  # the unfair fold 0 from zero
    fits.heads[0.01] = [(np.ones((16, 3)), np.zeros(3))] * last.n_folds  # this run's, as near: it wins the tie
    assert fits._inits(0.03)[1][0] is fits.heads[0.01][1][0]


def test_the_final_head_fitted_with_the_folds_is_the_one_fitted_alone():
    """WarmStart.final (a kept L2): the head on every row shares the folds' passes over the rows; the same head as
    fit_logreg's, to FINAL_TOL, whatever the folds' tolerance. Refused while searching (no L2 known yet)."""
    x, y = blobs([60, 50, 40], d=16, spread=2.0)
    zero = crossval.WarmStart(final=(np.zeros((16, 3), np.float32), np.zeros(3, np.float32)))
    oof = crossval.out_of_fold(x, y, 3, l2=1e-3, tol=crossval.SEARCH_TOL, warm=zero)
    alone = crossval.fit_logreg(x, y, 3, 1e-3)
    kernel, bias, iterations = oof.final
    assert iterations > 0
    np.testing.assert_allclose(crossval.softmax(x @ kernel + bias), crossval.softmax(x @ alone[0] + alone[1]),
                               atol=1e-3)
    plain = crossval.out_of_fold(x, y, 3, l2=1e-3, tol=crossval.SEARCH_TOL)
    np.testing.assert_array_equal(oof.logits, plain.logits)  # the folds are untouched by the extra fit
    with pytest.raises(ValueError, match="given l2"):
        crossval.out_of_fold(x, y, 3, warm=zero)
