"""Embedding cache: keyed by file content, only new images are embedded, TFLite features match the hub layer."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from engine.data import images
from engine.data.demo import make_demo_dataset
from engine.features.backbones import resolve
from engine.features.embeddings import Embedder, EmbeddingStore, embed_files


@pytest.fixture(scope="module")
def resolved():
    return resolve("efficientnet-lite0")


@pytest.fixture(scope="module")
def embedder(resolved):
    return Embedder(resolved)


def _files(root):
    paths = sorted(str(p) for p in root.rglob("*") if p.is_file())
    return paths, [images.file_sha256(p) for p in paths]


@pytest.fixture
def demo(tmp_path):
    return make_demo_dataset(tmp_path / "demo", per_class=4, seed=3)


def test_second_run_embeds_nothing_and_new_images_only_them(tmp_path, demo, resolved, embedder):
    store = EmbeddingStore(tmp_path / "cache.sqlite")
    paths, shas = _files(demo)
    first = embed_files(paths, shas, resolved, store=store, embedder=embedder)
    assert first.computed == len(paths) and first.cached == 0
    assert first.features.shape == (len(paths), 1280)

    again = embed_files(paths, shas, resolved, store=store, embedder=embedder)
    assert again.computed == 0 and again.cached == len(paths)
    np.testing.assert_array_equal(again.features, first.features)

    extra = make_demo_dataset(tmp_path / "extra", per_class=2, seed=99)
    new_paths, new_shas = _files(extra)
    grown = embed_files(paths + new_paths, shas + new_shas, resolved, store=store, embedder=embedder)
    assert grown.computed == len(new_paths) and grown.cached == len(paths)


def test_cache_is_keyed_by_content_not_path(tmp_path, demo, resolved, embedder):
    store = EmbeddingStore(tmp_path / "cache.sqlite")
    paths, shas = _files(demo)
    embed_files(paths, shas, resolved, store=store, embedder=embedder)
    moved = tmp_path / "renamed.png"
    shutil.copy(paths[0], moved)
    res = embed_files([str(moved)], [shas[0]], resolved, store=store, embedder=embedder)
    assert res.computed == 0 and res.cached == 1


def test_preprocessing_option_is_part_of_the_key(tmp_path, demo, resolved, embedder):
    store = EmbeddingStore(tmp_path / "cache.sqlite")
    paths, shas = _files(demo)
    embed_files(paths[:2], shas[:2], resolved, store=store, embedder=embedder)
    cropped = embed_files(paths[:2], shas[:2], resolved, store=store, embedder=embedder, center_crop=True)
    assert cropped.computed == 2


def test_tflite_embedder_matches_the_keras_port(demo, resolved, embedder):
    """The embedder's file (written from the weights) against the Keras port, which tests/test_backbones.py holds to
    PyTorch and to the hub module every other handle is loaded as."""
    from engine.config.backbones import BACKBONES
    from engine.features.port import build_lite_model

    paths, _ = _files(demo)
    x = np.stack([images.prepare(p, 224, False) for p in paths[:3]])
    expected = build_lite_model(BACKBONES[resolved.handle])(x.astype(np.float32) / 255.0, training=False).numpy()
    got = np.stack([embedder(img) for img in x])
    assert np.abs(got - expected).max() < 1e-4


def test_unreadable_files_are_reported_and_the_rest_embedded(tmp_path, demo, resolved, embedder):
    paths, shas = _files(demo)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    events = []
    res = embed_files(paths + [str(bad)], shas + ["deadbeef"], resolved, store=EmbeddingStore(tmp_path / "c.sqlite"),
                      embedder=embedder, progress=events.append)
    assert res.ok == list(range(len(paths)))
    assert len(res.failed) == 1 and "broken.jpg" in res.failed[0][1]
    assert bad.exists()  # reported, never deleted
    last = [e for e in events if e["type"] == "embed"][-1]
    assert last["done"] == last["total"] == len(paths) + 1


def test_grayscale_and_huge_images_embed(tmp_path, resolved, embedder):
    gray = tmp_path / "gray.png"
    cv2.imwrite(str(gray), np.full((300, 200), 128, np.uint8))
    big = tmp_path / "big.jpg"
    cv2.imwrite(str(big), np.zeros((4000, 3000, 3), np.uint8))
    paths = [str(gray), str(big)]
    res = embed_files(paths, [images.file_sha256(p) for p in paths], resolved,
                      store=EmbeddingStore(tmp_path / "c.sqlite"), embedder=embedder)
    assert res.features.shape == (2, 1280) and not res.failed


def test_new_images_leave_their_statistics_from_the_same_decode(tmp_path, demo, resolved, embedder, monkeypatch):
    """Item 2 of issue 22: one decode per image. Embedding keeps each image's hashes and statistics, and they are
    what image_stats measures on its own (a grouping or a curation check then decodes nothing)."""
    from engine.features import image_stats as stats_module

    monkeypatch.setenv("RETRAIN_STUDIO_CACHE", str(tmp_path / "cache"))
    paths, shas = _files(demo)
    alone = stats_module.image_stats(paths, shas, cache=False)
    embed_files(paths, shas, resolved, store=EmbeddingStore(tmp_path / "emb.sqlite"), embedder=embedder)

    def no_decode(path):
        raise AssertionError(f"{path} decoded again")

    monkeypatch.setattr(stats_module, "_decode", no_decode)
    kept = stats_module.image_stats(paths, shas)
    assert kept.readable.all() and np.array_equal(kept.hashes, alone.hashes)
    np.testing.assert_allclose(kept.blur, alone.blur, rtol=1e-5)
    np.testing.assert_allclose(kept.p99, alone.p99)
