"""Calibration and the "unknown" threshold (engine.learn.confidence), on out-of-fold style predictions."""

from __future__ import annotations

import numpy as np
import pytest

from engine.learn import confidence, crossval


def test_temperature_scaling_fixes_an_overconfident_model():
    rng = np.random.default_rng(2)
    n, k = 2000, 4
    y = rng.integers(0, k, n)
    true_logits = rng.normal(0, 1, (n, k))
    true_logits[np.arange(n), y] += 1.5
    p = crossval.softmax(true_logits)
    y = np.array([rng.choice(k, p=row) for row in p])  # labels drawn from the calibrated probabilities
    overconfident = 4.0 * true_logits
    t = confidence.fit_temperature(overconfident, y)
    before = confidence.expected_calibration_error(crossval.softmax(overconfident), y)
    after = confidence.expected_calibration_error(crossval.softmax(overconfident / t), y)
    assert t == pytest.approx(4.0, rel=0.15)
    assert before > 0.15 and after < 0.04
    assert confidence.fit_temperature(np.eye(3) * 5, np.arange(3)) == 1.0  # no mistake: nothing to calibrate


def test_threshold_reaches_the_target_precision_with_the_most_coverage():
    conf = np.linspace(0.99, 0.5, 100)
    correct = np.ones(100, bool)
    correct[60:] = np.arange(40) % 2 == 0  # below rank 60, half wrong
    probs = np.stack([conf, 1 - conf], 1)
    y = np.where(correct, 0, 1)
    th = confidence.choose_threshold(probs, y, 0.9)
    kept = conf >= th["value"]
    assert th["reached"] and np.mean(correct[kept]) >= 0.9 and th["coverage"] == pytest.approx(kept.mean())
    assert np.mean(correct[conf >= conf[kept.sum()]]) < 0.9  # one more image and the target is missed
    assert th["curve"][0]["coverage"] == 1.0 and th["curve"][-1]["coverage"] == 0.0
    assert confidence.choose_threshold(probs, y, 0.5)["value"] == 0.0  # every answer is good enough: keep all
    impossible = confidence.choose_threshold(probs, np.ones(100, int), 0.95)
    assert not impossible["reached"]
