"""Which images share a cross-validation fold (engine.learn.groups): exact copies, near-identical embeddings,
perceptual-hash matches, and the fallback to exact copies when near-duplicate groups would not fit a fold."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from curate_data import altered

from engine.learn.groups import fold_groups, groups_to_lists, near_duplicate_groups


def clusters(n_per_class: list[int], d: int = 16, spread: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (len(n_per_class), d))
    y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)])
    return (centres[y] + rng.normal(0, spread, (len(y), d))).astype(np.float32), y


def test_near_duplicate_groups_sha_cosine_and_singletons():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(6, 32)).astype(np.float32)
    f[3] = f[1] * 2 + rng.normal(scale=0.01, size=32)  # same direction: cosine ~1
    groups = near_duplicate_groups(f, ["a", "b", "c", "d", "a", "e"])
    assert groups.tolist() == [0, 1, 2, 1, 0, 3]  # ids in order of first appearance
    assert near_duplicate_groups(f, list("abcdef"), threshold=1.01).tolist() == list(range(6))
    assert near_duplicate_groups(np.zeros((0, 4)), []).tolist() == []
    with pytest.raises(ValueError, match="file hashes"):
        near_duplicate_groups(f, ["a"])


def test_near_duplicates_share_a_group_unless_the_group_would_not_fit_a_fold():
    x, _ = clusters([10, 10], d=32, spread=1.0)
    x[1] = x[0] * 1.01  # a near-copy
    shas = [f"s{i}" for i in range(20)]
    shas[5] = shas[4]  # an exact copy
    groups, how = fold_groups(x, shas, n_folds=5)
    assert groups[0] == groups[1] and groups[4] == groups[5] and "near-duplicates" in how
    look_alike = np.ones((20, 32), np.float32)  # e.g. noise frames the backbone cannot tell apart
    groups, how = fold_groups(look_alike, shas, n_folds=5)
    assert len(set(groups.tolist())) == 19 and "larger than a fold" in how


@pytest.mark.shared
def test_altered_copies_of_real_photos_join_their_originals(tmp_path):
    """The bench's target in small: real flowers, copies with all four alterations, no false group added."""
    from conftest import shared_dataset

    from engine.data.images import file_sha256
    from engine.features import backbones
    from engine.features.embeddings import embed_files
    from engine.features.image_stats import image_stats

    root = shared_dataset("flowers")
    paths = sorted(str(p) for p in root.glob("*/*.jpg"))
    picks = [paths[i] for i in (3, 77, 151, 230)]
    copies = []
    for i, src in enumerate(picks):
        (tmp_path / f"copy{i}.jpg").write_bytes(altered(cv2.imread(src)))
        copies.append(str(tmp_path / f"copy{i}.jpg"))
    everything = paths + copies
    shas = [file_sha256(p) for p in everything]
    emb = embed_files(everything, shas, backbones.resolve("efficientnet-lite0"))
    assert len(emb.ok) == len(everything)
    hashes = image_stats(everything, shas).hashes
    groups = near_duplicate_groups(emb.features, shas, hashes=hashes)
    for src, copy in zip(picks, copies, strict=True):
        assert groups[everything.index(src)] == groups[everything.index(copy)]
    untouched = groups_to_lists(groups[: len(paths)])
    assert len(untouched) <= 2  # flowers has one real duplicate (a greyscale edit of the same photo)
