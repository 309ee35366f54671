"""engine.learn.kept_groups: the near-duplicate groups and pairs of a set of images, kept between runs."""

from __future__ import annotations

import types

import numpy as np

from engine.data.dataset import Dataset, ImageItem
from engine.learn import groups, kept_groups
from engine.learn.prepare import PreparedData


def test_fold_groups_are_kept_per_set_of_images(tmp_path, monkeypatch):
    """A retrain of the same images (in another order: moved between classes) reads its groups instead of
    searching 24,000 images for copies again; other features, or a damaged file, group again."""
    monkeypatch.setenv("RETRAIN_STUDIO_CACHE", str(tmp_path))
    rng = np.random.default_rng(0)
    f = rng.normal(size=(40, 16)).astype(np.float32)
    f[7], f[30] = f[3], f[3] + 1e-4  # near-copies of row 3
    shas = [f"{i:064x}" for i in range(40)]

    def data(order):
        items = [ImageItem(str(tmp_path / f"{i}.png"), "a" if i % 2 else "b", shas[i]) for i in order]
        resolved = types.SimpleNamespace(backbone_id="x", image_size=8)
        return PreparedData(Dataset(str(tmp_path), ["a", "b"], items), resolved, f[order], np.arange(40), np.arange(0))

    first, how = kept_groups.fold_groups_of(data(list(range(40))), 5, "p")
    assert first[3] == first[7] == first[30] and len(set(first.tolist())) == 38
    calls = []
    monkeypatch.setattr(kept_groups, "fold_groups", lambda *a, **k: calls.append(1) or (np.arange(40), "searched"))
    order = rng.permutation(40).tolist()
    again, how_again = kept_groups.fold_groups_of(data(order), 5, "p")
    assert not calls and how_again == how
    assert np.array_equal(again == again[order.index(3)], np.isin(order, [3, 7, 30]))
    firsts = np.unique(again, return_index=True)[1].tolist()  # id g first appears before id g + 1, as fold_groups
    assert firsts == sorted(firsts) and len(firsts) == 38
    (kept,) = (tmp_path / kept_groups.GROUPS_DIR).glob("*.npz")
    with np.load(kept) as z:
        assert z["shas"].dtype == np.dtype("S64")  # 64 bytes a SHA-256 (NumPy text: 256)
        older = {k: z[k] for k in z.files}
    np.savez(kept, **{**older, "shas": older["shas"].astype("U64")})  # text, as written before: still read
    assert np.array_equal(kept_groups.fold_groups_of(data(order), 5, "p")[0], again) and not calls
    kept_groups.fold_groups_of(data(list(range(40))), 3, "p")  # another fold count: searched again
    assert calls == [1]
    for cached in (tmp_path / kept_groups.GROUPS_DIR).glob("*.npz"):
        cached.write_bytes(b"not an npz")
    kept_groups.fold_groups_of(data(list(range(40))), 5, "p")
    assert calls == [1, 1]
    # new perceptual hashes (image_stats.STATS_VERSION): grouped again, not read from groups of the old ones
    monkeypatch.setattr(kept_groups, "STATS_VERSION", "another")
    kept_groups.fold_groups_of(data(list(range(40))), 5, "p")
    assert calls == [1, 1, 1]
    # no hashes at all (the statistics could not be read): grouped by embedding, and not kept for the next run
    def no_hashes(*_):
        raise OSError("disk gone")

    monkeypatch.setattr(kept_groups, "image_hashes", no_hashes)
    monkeypatch.setattr(kept_groups, "STATS_VERSION", "a third")
    for expected in ([1, 1, 1, 1], [1, 1, 1, 1, 1]):
        kept_groups.fold_groups_of(data(list(range(40))), 5, "p")
        assert calls == expected


def test_pairs_are_kept_per_set_of_images_and_read_in_any_order(tmp_path, monkeypatch):
    """Above ALL_PAIRS_MAX rows a Curate check reads the pairs the run searched (15 s at 100,000 photos), in its own
    order of the rows: the same list duplicate_pairs gives on that order. Below, and without hashes, not kept."""
    monkeypatch.setenv("RETRAIN_STUDIO_CACHE", str(tmp_path))
    rng = np.random.default_rng(0)
    f = rng.normal(size=(60, 16)).astype(np.float32)
    f[7], f[30], f[41] = f[3], f[3] + 1e-4, f[12] + 1e-4  # near-copies of rows 3 and 12
    hashes = rng.random((60, 3, 63)) < 0.5
    hashes[50] = hashes[51]  # a hash match (its cosine decides whether it is a pair)
    f[51] = f[50] * 0.3 + rng.normal(size=16).astype(np.float32)
    shas = [f"{i:064x}" for i in range(60)]
    shas[13] = shas[12]  # one file twice
    f[13] = f[12]
    monkeypatch.setattr(kept_groups, "ALL_PAIRS_MAX", 10)
    first = kept_groups.duplicate_pairs_of(f, shas, hashes)
    assert first == groups.duplicate_pairs(f, hashes) and len(first) >= 5
    calls = []
    real = kept_groups.duplicate_pairs
    monkeypatch.setattr(kept_groups, "duplicate_pairs", lambda *a, **k: calls.append(1) or real(*a, **k))
    order = rng.permutation(60)
    again = kept_groups.duplicate_pairs_of(f[order], [shas[i] for i in order], hashes[order])
    assert not calls and again == real(f[order], hashes[order])
    kept_groups.duplicate_pairs_of(f[:59], shas[:59], hashes[:59])  # another set of images: searched
    kept_groups.duplicate_pairs_of(f, shas, None)  # no hashes: searched, not kept
    kept_groups.duplicate_pairs_of(f, shas, None)
    assert calls == [1, 1, 1]
    for kept in (tmp_path / kept_groups.PAIRS_DIR).glob("*.npz"):
        kept.write_bytes(b"not an npz")
    assert kept_groups.duplicate_pairs_of(f, shas, hashes) == first and calls == [1, 1, 1, 1]
    monkeypatch.setattr(kept_groups, "ALL_PAIRS_MAX", 100)  # a small set: compared, never kept
    files = sorted((tmp_path / kept_groups.PAIRS_DIR).glob("*.npz"))
    kept_groups.duplicate_pairs_of(f[:40], shas[:40], hashes[:40])
    assert sorted((tmp_path / kept_groups.PAIRS_DIR).glob("*.npz")) == files
