"""Outliers: images unlike their own class (features and labels in), and odd images (image statistics in).

Unlike its class: a low mean cosine to its k nearest same-class neighbours, judged against the class's own spread
(a robust z-score), so a varied class does not flag everything. Odd: near-blank, very dark or bright, blurry or an
extreme aspect ratio, by absolute limits on engine.features.image_stats. Rows in, row indices out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.features.image_stats import ImageStats
from engine.learn.groups import unit_rows
from engine.learn.pairs import nearest_neighbours

OUTLIER_K = 5  # same-class neighbours for the "unlike its class" score
OUTLIER_Z = 4.0  # robust z-score (median/MAD within the class) above which an image is unlike its class

# Odd-image limits, on the image at <= 256 px (levels 0..255; engine.features.image_stats.STATS_SIDE). Measured on
# flowers_large (3,461 photos): the brightest 1% (strongest channel) is >= 118 in every photo, the darkest 1%
# (luminance) <= 93 in 99% and <= 168 in all; flowers darkened to 25% have their brightest 1% at 48-64. The
# Laplacian variance is >= 28 in every photo of flowers and >= 31 in flowers_large but one (16: a daisy wholly out
# of focus); blurred with sigma 2.5 px it falls below 20 in 99.8%, with sigma 1.5 px in 35% (median 27). So these
# flag no photo of flowers and two of flowers_large (a very pale tulip close-up, the blurred daisy).
DARK_P99 = 80.0  # underexposed: even the brightest 1% of pixels is darker than this (black backgrounds are fine)
BRIGHT_P01 = 160.0  # washed out: even the darkest 1% is brighter than this (white backgrounds are fine)
BLANK_STD = 6.0  # near-blank: no colour channel varies more than this
BLUR_LAPLACIAN_VAR = 20.0
EXTREME_ASPECT = 3.0


@dataclass
class Outlier:
    index: int
    reason: str  # "unlike its class" | "near-blank" | "very dark" | "very bright" | "blurry" | "extreme aspect" | ...
    score: float  # higher: more unusual; comparable within one reason


def class_outlier_scores(features: np.ndarray, labels: np.ndarray, k: int = OUTLIER_K) -> tuple[np.ndarray,
                                                                                                 np.ndarray]:
    """Per image: mean cosine to its k nearest same-class neighbours, and that value's robust z-score within the
    class (how many MADs below the class median; high = unlike its class). Classes under k+2 images score 0."""
    x = unit_rows(features)
    labels = np.asarray(labels)
    sim_k = np.ones(len(x), np.float32)
    z = np.zeros(len(x), np.float32)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < k + 2:
            continue
        m = nearest_neighbours(x[idx], k)[1].mean(axis=1)
        med = float(np.median(m))
        mad = float(np.median(np.abs(m - med))) * 1.4826 + 1e-6
        sim_k[idx] = m
        z[idx] = (med - m) / mad
    return sim_k, z


def odd_image_reasons(stats: ImageStats) -> list[list[tuple[str, float]]]:
    """(reason, score) pairs per image from absolute limits; scores > 0, larger is odder."""
    out: list[list[tuple[str, float]]] = []
    for i in range(len(stats.mean)):
        reasons: list[tuple[str, float]] = []
        if not stats.readable[i]:
            reasons.append(("unreadable", 10.0))
        else:
            p01, p99, std = float(stats.p01[i]), float(stats.p99[i]), float(stats.std[i])
            blur, aspect = float(stats.blur[i]), float(stats.aspect[i])
            if std < BLANK_STD:
                reasons.append(("near-blank", 1.0 + (BLANK_STD - std) / BLANK_STD))
            elif blur < BLUR_LAPLACIAN_VAR:
                reasons.append(("blurry", 1.0 + (BLUR_LAPLACIAN_VAR - blur) / BLUR_LAPLACIAN_VAR))
            if p99 < DARK_P99:
                reasons.append(("very dark", 1.0 + (DARK_P99 - p99) / DARK_P99))
            elif p01 > BRIGHT_P01:
                reasons.append(("very bright", 1.0 + (p01 - BRIGHT_P01) / (255.0 - BRIGHT_P01)))
            if aspect > EXTREME_ASPECT:
                reasons.append(("extreme aspect", aspect / EXTREME_ASPECT))
        out.append(reasons)
    return out


def find_outliers(features: np.ndarray, labels: np.ndarray, stats: ImageStats | None = None) -> list[Outlier]:
    """Class outliers (z > OUTLIER_Z) and, with `stats`, odd images; odd images first, each most unusual first."""
    _, z = class_outlier_scores(features, labels)
    outliers = [Outlier(int(i), "unlike its class", float(z[i])) for i in np.flatnonzero(z > OUTLIER_Z)]
    if stats is not None:
        for i, reasons in enumerate(odd_image_reasons(stats)):
            outliers += [Outlier(i, r, s) for r, s in reasons]
    # odd images (absolute limits, score ~1-2) before class outliers (z >= 4): the former are near-certain
    return sorted(outliers, key=lambda o: (o.reason == "unlike its class", -o.score))
