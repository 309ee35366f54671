"""engine.data.demo: the synthetic demo dataset (deterministic, right counts, usable) and the bad-file corpus."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from engine.data import demo, images
from engine.data.dataset import scan_image_dir


def _hashes(root):
    return {str(p.relative_to(root)): images.file_sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return demo.make_demo_dataset(tmp_path_factory.mktemp("demo"), per_class=9, seed=4,
                                  classes=("text", "shapes", "blank"))


def test_counts_and_layout(demo_root):
    ds = scan_image_dir(demo_root)
    assert ds.labels == ["blank", "shapes", "text"]
    assert ds.class_counts() == {"blank": 9, "shapes": 9, "text": 9}
    assert ds.skipped == []
    suffixes = {p.suffix for p in demo_root.rglob("*") if p.is_file()}
    assert suffixes == {".png", ".jpg"}


def test_default_classes_and_size(tmp_path):
    root = demo.make_demo_dataset(tmp_path / "d")
    assert root == tmp_path / "d"
    assert sorted(p.name for p in root.iterdir()) == ["shapes", "text"]
    assert [len(list((root / c).iterdir())) for c in ("shapes", "text")] == [24, 24]


def test_images_have_varied_sizes_in_range(demo_root):
    shapes = [images.load_image(p).shape[:2] for p in sorted(demo_root.rglob("*.*"))]
    sides = np.array(shapes)
    assert sides.min() >= 120 and sides.max() <= 400
    assert len(set(shapes)) > len(shapes) // 2


def test_deterministic_from_seed(tmp_path, demo_root):
    again = demo.make_demo_dataset(tmp_path / "again", per_class=9, seed=4, classes=("text", "shapes", "blank"))
    assert _hashes(again) == _hashes(demo_root)
    other = demo.make_demo_dataset(tmp_path / "other", per_class=9, seed=5, classes=("text", "shapes", "blank"))
    assert set(_hashes(other).values()).isdisjoint(_hashes(demo_root).values())


def test_unknown_class_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown demo class 'cats'"):
        demo.make_demo_dataset(tmp_path, classes=("text", "cats"))


def test_classes_look_different(demo_root):
    """A cheap stand-in for the ImageNet-feature check in test_train: text is thin dark strokes on a light page,
    shapes are large filled areas, blank has no edges at all."""

    def stats(label):
        edge, cover = [], []
        for p in sorted((demo_root / label).iterdir()):
            img = images.prepare(p, 128, False)
            median = np.median(img.reshape(-1, 3), axis=0)
            cover.append((np.abs(img.astype(int) - median).sum(-1) > 60).mean())
            edge.append((cv2.Canny(img, 80, 160) > 0).mean())
        return np.median(edge), np.median(cover)

    (text_edge, text_cover), (shape_edge, shape_cover), (blank_edge, _) = map(stats, ("text", "shapes", "blank"))
    assert blank_edge < 0.01 < text_edge
    assert shape_cover > 2 * text_cover


def test_bad_file_corpus_is_complete(tmp_path):
    files = demo.write_bad_files(tmp_path / "bad")
    expected = {"zero_byte", "truncated_jpeg", "truncated_png", "random_bytes", "text_as_png", "png_named_jpg",
                "cmyk_jpeg", "png_16bit", "grayscale", "palette_transparent", "rgba_transparent", "exif_6", "exif_8",
                "animated_gif", "animated_webp", "webp", "bmp", "tiff", "svg", "heic", "one_pixel", "bomb_header",
                "wide_strip", "unicode_name"}
    assert set(files) == expected
    assert all(p.is_file() and p.parent == tmp_path / "bad" for p in files.values())
    assert files["zero_byte"].stat().st_size == 0
    assert files["bomb_header"].stat().st_size < 1000  # claims 20000x20000 yet tiny on disk
    assert " " in files["unicode_name"].name and not files["unicode_name"].name.isascii()
    assert files["png_named_jpg"].suffix == ".jpg" and images.sniff_kind(files["png_named_jpg"]) == "png"
    assert demo.write_bad_files(tmp_path / "bad2")["cmyk_jpeg"].read_bytes() == files["cmyk_jpeg"].read_bytes()
