"""Per-image statistics (engine.features.image_stats): perceptual hashes that find an altered copy, and the cache
keyed by SHA-256 that spares a second decode."""

from __future__ import annotations

import numpy as np
from curate_data import altered, drawing, jpeg

from engine.features import image_stats as image_stats_module
from engine.features.image_stats import HASH_SCALES, image_stats
from engine.learn.groups import near_duplicate_groups


def test_perceptual_hash_groups_an_altered_copy_and_not_a_different_photo(tmp_path):
    original, other = drawing("red", 1, 256), drawing("green", 2, 256)
    paths = []
    for name, data in (("orig.jpg", jpeg(original)), ("copy.jpg", altered(original)), ("other.jpg", jpeg(other))):
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    stats = image_stats(paths, ["s1", "s2", "s3"], cache=False)
    assert stats.readable.all() and stats.hashes.shape == (3, len(HASH_SCALES), 63)
    # embeddings that agree only loosely (cosine 0.6), as a shrunken copy's do: the hash decides
    f = np.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.6, 0.0, 0.8]], np.float32)
    groups = near_duplicate_groups(f, ["s1", "s2", "s3"], hashes=stats.hashes)
    assert groups[0] == groups[1] and groups[2] != groups[0]
    assert len(set(near_duplicate_groups(f, ["s1", "s2", "s3"]).tolist())) == 3  # without hashes: apart
    # the hash alone is not enough: a veto when the embeddings disagree
    far = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.0, 0.8]], np.float32)
    assert len(set(near_duplicate_groups(far, ["s1", "s2", "s3"], hashes=stats.hashes).tolist())) == 3


def test_stats_are_cached_by_sha256(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRAIN_STUDIO_CACHE", str(tmp_path / "cache"))
    (tmp_path / "a.jpg").write_bytes(jpeg(drawing("blue", 3, 256)))
    first = image_stats([str(tmp_path / "a.jpg")], ["sha-a"])
    assert (tmp_path / "cache" / "curate_stats.sqlite").exists()

    def no_decode(path):
        raise AssertionError(f"{path} decoded again")

    monkeypatch.setattr(image_stats_module, "_decode", no_decode)
    again = image_stats([str(tmp_path / "a.jpg")], ["sha-a"])
    assert np.array_equal(first.hashes, again.hashes) and np.allclose(first.blur, again.blur)
