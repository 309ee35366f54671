"""engine.data.dataset: scanning an image_dir (labels, skipped files, errors) and the seeded stratified split."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.data import demo, images
from engine.data.dataset import Dataset, DatasetError, ImageItem, scan_image_dir, split_dataset

_counter = iter(range(1_000_000))


def _png(path: Path, value: int | None = None) -> Path:
    """A tiny PNG with unique content (unless value is given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.zeros((8, 8, 3), np.uint8)
    n = next(_counter) if value is None else value
    img.reshape(-1)[:4] = np.frombuffer(int(n).to_bytes(4, "little"), np.uint8)
    cv2.imwrite(str(path), img)
    return path


def _make(root: Path, counts: dict[str, int]) -> Path:
    for label, n in counts.items():
        for i in range(n):
            _png(root / label / f"{i:03d}.png")
    return root


def _listing(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): images.file_sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ scanning
def test_labels_are_sorted_folders_and_hidden_things_are_ignored(tmp_path):
    root = _make(tmp_path / "img", {"zebra": 2, "ant": 3})
    (root / "ant" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    _png(root / ".hidden_class" / "a.png")
    _png(root / "__MACOSX" / "ant" / "._001.png")
    _png(root / "ant" / ".thumbs" / "t.png")
    ds = scan_image_dir(root)
    assert ds.labels == ["ant", "zebra"]
    assert ds.class_counts() == {"ant": 3, "zebra": 2}
    assert ds.skipped == []
    assert ds.y.tolist() == [0, 0, 0, 1, 1] and ds.label_index("zebra") == 1
    assert all(it.sha256 == images.file_sha256(it.path) for it in ds.items)


def test_nested_folders_belong_to_the_top_class(tmp_path):
    root = _make(tmp_path / "img", {"a": 1, "b": 2})
    _png(root / "a" / "2024" / "june" / "deep.png")
    ds = scan_image_dir(root)
    deep = [it for it in ds.items if it.path.endswith("deep.png")]
    assert len(deep) == 1 and deep[0].label == "a"
    assert ds.labels == ["a", "b"]


def test_bad_and_non_image_files_are_skipped_with_reasons_and_never_deleted(tmp_path):
    root = _make(tmp_path / "img", {"good": 2})
    corpus = demo.write_bad_files(root / "odd")
    (root / "odd" / "labels.txt").write_text("cat\ndog\n")
    (root / "odd" / "meta.tsv").write_text("a\tb\n")
    (root / "odd" / "ann.xml").write_text("<annotation/>")
    before = _listing(root)
    ds = scan_image_dir(root)
    assert _listing(root) == before
    reasons = {Path(s.path).name: s.reason for s in ds.skipped}
    for name in ("labels.txt", "meta.tsv", "ann.xml", "drawing.svg"):
        assert reasons[name] == "not an image file"
    for kind, reason in [("zero_byte", "empty file"), ("truncated_jpeg", "truncated or corrupt JPEG"),
                         ("truncated_png", "truncated or corrupt PNG"), ("text_as_png", "starts with text"),
                         ("bomb_header", "pixel limit"), ("random_bytes", "not an image")]:
        name = corpus[kind].name
        assert reason in reasons[name] and reasons[name].startswith(name)
    kept = {Path(it.path).name for it in ds.items if it.label == "odd"}
    for kind in ("png_named_jpg", "cmyk_jpeg", "png_16bit", "exif_6", "animated_gif", "webp", "bmp", "tiff", "heic",
                 "one_pixel", "wide_strip", "unicode_name"):
        assert corpus[kind].name in kept
    assert not kept & set(reasons)


def test_without_checking_images_only_the_extension_and_magic_are_used(tmp_path):
    root = _make(tmp_path / "img", {"a": 2, "b": 2})
    (root / "a" / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    shutil.copy(demo.write_bad_files(tmp_path / "c")["png_named_jpg"], root / "b" / "noext")
    (root / "b" / "notes.txt").write_text("hello")
    ds = scan_image_dir(root, check_images=False)
    names = {Path(it.path).name for it in ds.items}
    assert {"cut.jpg", "noext"} <= names and "notes.txt" not in names
    assert [Path(s.path).name for s in ds.skipped] == ["notes.txt"]


def test_max_pixels_is_passed_to_the_decoder(tmp_path):
    root = _make(tmp_path / "img", {"a": 2, "b": 2})
    cv2.imwrite(str(root / "a" / "large.png"), np.zeros((100, 100, 3), np.uint8))
    ds = scan_image_dir(root, max_pixels=1000)
    assert [Path(s.path).name for s in ds.skipped] == ["large.png"]
    assert "1000-pixel limit" in ds.skipped[0].reason


@pytest.mark.skipif(os.name == "nt", reason="symlinks need privileges on Windows")
def test_links_outside_the_folder_are_skipped(tmp_path):
    root = _make(tmp_path / "img", {"a": 2, "b": 2})
    outside = _png(tmp_path / "elsewhere" / "secret.png")
    (root / "a" / "link_out.png").symlink_to(outside)
    (root / "a" / "link_in.png").symlink_to(root / "b" / "000.png")
    (root / "c").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "b" / "sub").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    ds = scan_image_dir(root)
    reasons = {Path(s.path).name: s.reason for s in ds.skipped}
    assert "outside the image folder" in reasons["link_out.png"]
    assert "outside the image folder" in reasons["c"]
    assert "not followed" in reasons["sub"]
    assert ds.labels == ["a", "b"]
    assert "link_in.png" in {Path(it.path).name for it in ds.items}
    assert not any("secret" in it.path for it in ds.items)


def test_loose_files_beside_class_folders_are_reported(tmp_path):
    root = _make(tmp_path / "img", {"a": 2, "b": 2})
    _png(root / "stray.png")
    ds = scan_image_dir(root)
    assert [(Path(s.path).name, "not in a class subfolder" in s.reason) for s in ds.skipped] == [("stray.png", True)]
    assert len(ds.items) == 4


def test_empty_class_folder_is_ignored_with_a_warning(tmp_path, caplog):
    root = _make(tmp_path / "img", {"a": 2, "b": 2})
    (root / "empty").mkdir()
    (root / "docs").mkdir()
    (root / "docs" / "readme.txt").write_text("not images")
    with caplog.at_level(logging.WARNING, logger="engine.data.dataset"):
        ds = scan_image_dir(root)
    assert ds.labels == ["a", "b"]
    assert "empty" in caplog.text and "docs" in caplog.text


def test_progress_reports_scan_events(tmp_path):
    root = _make(tmp_path / "img", {"a": 60, "b": 2})
    events = []
    scan_image_dir(root, check_images=False, progress=events.append)
    assert all(e["type"] == "scan" and e["total"] == 62 for e in events)
    done = [e["done"] for e in events]
    assert done[0] == 0 and done[-1] == 62 and done == sorted(done)
    assert len(events) <= 3  # a scan this quick reports its start and its end, not every 50 images


def test_duplicates_across_classes_are_kept_and_listed(tmp_path, caplog):
    root = _make(tmp_path / "img", {"a": 2, "b": 2})
    _png(root / "a" / "same.png", value=7)
    _png(root / "b" / "same_too.png", value=7)
    with caplog.at_level(logging.WARNING, logger="engine.data.dataset"):
        ds = scan_image_dir(root)
    assert len(ds.items) == 6
    dups = ds.duplicates()
    assert len(dups) == 1
    sha, paths = dups[0]
    assert sha == images.file_sha256(root / "a" / "same.png")
    assert sorted(Path(p).name for p in paths) == ["same.png", "same_too.png"]
    assert "same image is in classes a, b" in caplog.text


# ------------------------------------------------------------------------------------------------ errors
def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match=r"Image folder '.*nope' does not exist"):
        scan_image_dir(tmp_path / "nope")


def test_loose_images_without_class_folders(tmp_path):
    _png(tmp_path / "img" / "a.png")
    _png(tmp_path / "img" / "b.png")
    with pytest.raises(DatasetError, match=r"put each class in its own subfolder: .*img/<class>/<image>"):
        scan_image_dir(tmp_path / "img")


def test_a_single_class_is_not_enough(tmp_path):
    root = _make(tmp_path / "img", {"cats": 3})
    with pytest.raises(DatasetError, match=r"found only 1 class \('cats'\); need at least 2"):
        scan_image_dir(root)


def test_class_with_one_usable_image_is_named(tmp_path):
    root = _make(tmp_path / "img", {"cats": 3, "dogs": 1})
    with pytest.raises(DatasetError, match=r"class 'dogs' has 1 usable image; need at least 2") as err:
        scan_image_dir(root)
    assert str(root / "dogs") in str(err.value)


def test_class_whose_images_are_all_broken_names_the_class_and_why(tmp_path):
    root = _make(tmp_path / "img", {"cats": 3})
    (root / "dogs").mkdir()
    (root / "dogs" / "a.heic").write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic")
    (root / "dogs" / "b.jpg").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"class 'dogs' has 0 usable images \(2 file\(s\) skipped, e\.g\. a\.heic"):
        scan_image_dir(root)
    assert sorted(p.name for p in (root / "dogs").iterdir()) == ["a.heic", "b.jpg"]


# ------------------------------------------------------------------------------------------------ hashing
def test_dataset_hash_is_stable_under_renames_moves_and_order(tmp_path):
    root = _make(tmp_path / "img", {"a": 3, "b": 3})
    first = scan_image_dir(root)
    (root / "a" / "000.png").rename(root / "a" / "renamed.png")
    (root / "b" / "nested").mkdir()
    (root / "b" / "001.png").rename(root / "b" / "nested" / "x.png")
    moved = shutil.copytree(root, tmp_path / "elsewhere")
    again = scan_image_dir(moved)
    reordered = Dataset(again.root, again.labels, again.items[::-1], [])
    assert first.dataset_hash() == again.dataset_hash() == reordered.dataset_hash()
    (moved / "a" / "002.png").rename(moved / "b" / "002.png")  # same files, different labels
    assert scan_image_dir(moved).dataset_hash() != first.dataset_hash()


def test_dataset_hash_changes_with_content(tmp_path):
    root = _make(tmp_path / "img", {"a": 2, "b": 2})
    before = scan_image_dir(root).dataset_hash()
    _png(root / "a" / "000.png")  # new pixels, same name
    assert scan_image_dir(root).dataset_hash() != before


# ------------------------------------------------------------------------------------------------ splitting
def _synthetic(counts: dict[str, int]) -> Dataset:
    items = [ImageItem(f"/d/{label}/{i}.png", label, f"{label}-{i:04d}") for label, n in counts.items()
             for i in range(n)]
    return Dataset("/d", sorted(counts), items, [])


def _paths(ds: Dataset, idx: np.ndarray) -> set[str]:
    return {ds.items[i].path for i in idx}


def test_split_is_deterministic_disjoint_and_complete():
    ds = _synthetic({"a": 30, "b": 20})
    train, val = split_dataset(ds, 0.2, seed=3)
    again = split_dataset(ds, 0.2, seed=3)
    np.testing.assert_array_equal(train, again[0])
    np.testing.assert_array_equal(val, again[1])
    assert train.dtype == val.dtype == np.int64
    assert not set(train) & set(val) and sorted([*train, *val]) == list(range(50))


def test_split_is_stratified():
    ds = _synthetic({"a": 40, "b": 10, "c": 5})
    train, val = split_dataset(ds, 0.2, seed=0)
    y = ds.y
    assert np.bincount(y[val], minlength=3).tolist() == [8, 2, 1]
    assert np.bincount(y[train], minlength=3).tolist() == [32, 8, 4]


def test_different_seed_gives_a_different_split():
    ds = _synthetic({"a": 30, "b": 30})
    assert _paths(ds, split_dataset(ds, 0.2, 1)[1]) != _paths(ds, split_dataset(ds, 0.2, 2)[1])


def test_split_does_not_depend_on_listing_order():
    ds = _synthetic({"a": 25, "b": 15})
    shuffled = Dataset(ds.root, ds.labels, list(np.random.default_rng(9).permutation(ds.items)), [])
    for seed in (0, 1):
        assert _paths(ds, split_dataset(ds, 0.3, seed)[1]) == _paths(shuffled, split_dataset(shuffled, 0.3, seed)[1])


@pytest.mark.parametrize("fraction", [0.01, 0.2, 0.5, 0.9])
def test_tiny_classes_keep_one_image_on_each_side(fraction):
    ds = _synthetic({"a": 2, "b": 2, "c": 3})
    train, val = split_dataset(ds, fraction, seed=0)
    y = ds.y
    assert all(np.bincount(y[train], minlength=3) >= 1)
    assert all(np.bincount(y[val], minlength=3) >= 1)
    assert np.bincount(y[val], minlength=3)[:2].tolist() == [1, 1]


def test_no_validation_split_gives_an_empty_validation_set():
    ds = _synthetic({"a": 5, "b": 5})
    train, val = split_dataset(ds, 0.0, seed=0)
    assert len(train) == 10 and len(val) == 0 and val.dtype == np.int64


def test_invalid_validation_split_is_refused():
    ds = _synthetic({"a": 5, "b": 5})
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(DatasetError, match="validation_split"):
            split_dataset(ds, bad, seed=0)


def test_identical_copies_land_on_the_same_side():
    ds = _synthetic({"a": 20, "b": 20})
    for i in range(0, 6):
        ds.items[i].sha256 = "same"  # six copies of one photo in class a
    for seed in range(5):
        train, val = split_dataset(ds, 0.25, seed)
        copies = set(range(6))
        assert copies <= set(train) or copies <= set(val)
        assert len(set(train) & set(range(20))) >= 1


def test_split_of_a_scanned_folder(tmp_path):
    ds = scan_image_dir(_make(tmp_path / "img", {"x": 2, "y": 4}))
    train, val = split_dataset(ds, 0.25, seed=0)
    assert np.bincount(ds.y[val]).tolist() == [1, 1] and np.bincount(ds.y[train]).tolist() == [1, 3]


# ------------------------------------------------------------------------------------------------ snapshots
def test_images_moved_after_the_scan_are_read_by_content(tmp_path):
    from engine.data.dataset import ImageGone, Snapshot, resolve_path, write_snapshot

    root = _make(tmp_path / "img", {"a": 3, "b": 3})
    ds = scan_image_dir(root)
    snap = write_snapshot(ds, tmp_path / "run")
    first, second, third = ds.items[0], ds.items[1], ds.items[3]
    assert resolve_path(first) == first.path  # untouched: no search
    os.replace(first.path, root / "b" / "renamed.png")  # moved to another class and renamed
    (root / "c" / "deep").mkdir(parents=True)
    os.replace(third.path, root / "c" / "deep" / "x.png")
    assert resolve_path(first.path) == str(root / "b" / "renamed.png")
    assert resolve_path(third) == str(root / "c" / "deep" / "x.png")
    assert images.file_sha256(resolve_path(third)) == third.sha256
    _png(Path(second.path))  # new content under the old name: not the image the run saw
    with pytest.raises(ImageGone, match=f"{Path(second.path).name}: moved out of .* or deleted while training"):
        resolve_path(second)
    assert resolve_path(tmp_path / "never-scanned.png") == str(tmp_path / "never-scanned.png")
    # the snapshot is what the run saw, whatever happened after
    loaded = Snapshot.load(tmp_path / "run")
    assert loaded.hash == ds.dataset_hash() == snap.hash and len(loaded.items) == 6
    now = {sha: Path(rel).parts[0] for rel, sha in _listing(root).items()}
    assert loaded.changed(now) == 4  # first relabelled a -> b, third a -> c, second replaced: gone + new one
    assert Snapshot.load(tmp_path / "nothing") is None


def test_a_search_that_misses_a_moving_image_looks_again(tmp_path, monkeypatch):
    """A folder walk can miss a file moved into a folder it already walked past (another process sorting while the
    run reads): reading the image searches again before calling it gone."""
    from engine.data import dataset as dataset_module

    root = _make(tmp_path / "img", {"a": 2, "b": 2})
    item = scan_image_dir(root).items[0]
    os.replace(item.path, root / "b" / "moved.png")
    searches = []
    real = dataset_module._find_content
    monkeypatch.setattr(dataset_module, "_find_content",
                        lambda seen: searches.append(seen) or (None if len(searches) == 1 else real(seen)))
    assert dataset_module.prepare_image(item, 16).shape == (16, 16, 3) and len(searches) == 2
    Path(root / "b" / "moved.png").unlink()  # really gone: every search comes back empty, then a clear error
    searches.clear()
    with pytest.raises(dataset_module.ImageGone, match="moved out of the folder or deleted while training"):
        dataset_module.prepare_image(item, 16)
    assert len(searches) == dataset_module.READ_ATTEMPTS


def test_a_project_image_moved_or_trashed_during_a_run_is_found_through_the_index(tmp_path):
    from engine.data.dataset import resolve_path
    from engine.store.workspace import Workspace

    project = Workspace(tmp_path / "ws").create_project("p")
    for label in ("a", "b"):
        project.add_files([_png(tmp_path / "src" / label / f"{i}.png") for i in range(3)], label)
    ds = scan_image_dir(project.image_dir())
    moved, trashed = ds.items[0], ds.items[4]
    project.move([moved.sha256], "b")
    project.delete_images([trashed.sha256])
    assert resolve_path(moved) == str(project.images_dir / "b" / Path(moved.path).name)
    assert resolve_path(trashed) == str(project.trash_dir / Path(trashed.path).name)


def test_a_file_moved_between_class_folders_during_the_scan_counts_once(tmp_path, monkeypatch):
    from engine.data import dataset

    root = _make(tmp_path / "img", {"a": 3, "b": 3})
    real = dataset._class_files

    def list_then_move(root_, class_dir, skipped):
        found = real(root_, class_dir, skipped)
        if class_dir.name == "a":  # someone moves a file of 'a' to 'b' right after 'a' was listed
            os.replace(found[0], root / "b" / "zz-moved.png")
        return found

    monkeypatch.setattr(dataset, "_class_files", list_then_move)
    ds = scan_image_dir(root)
    assert len(ds.items) == 5 + 1 and len({it.sha256 for it in ds.items}) == 6
    assert ds.class_counts() == {"a": 2, "b": 4}
    assert [s.reason for s in ds.skipped] == ["moved or deleted while the folder was being read"]


MOVER = r"""
import json, os, random, sys, time
from pathlib import Path
root, run_dir, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
rng = random.Random(7)
deadline = time.time() + 240
events = run_dir / "events.jsonl"
while time.time() < deadline and not (events.exists() and '"embed"' in events.read_text()):
    time.sleep(0.02)
moves, n = 0, 0

def move_all():
    # every photo to another class folder, under a new name: no path the run saw at the start still works
    global moves, n
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    for cls in classes:
        for f in sorted(cls.iterdir()):
            other = classes[(classes.index(cls) + 1 + rng.randrange(len(classes) - 1)) % len(classes)]
            n += 1
            os.replace(f, other / f"moved{n}-{f.name.split('-')[-1]}")
            moves += 1

move_all()
first = time.time()
while time.time() < deadline:
    state = json.loads((run_dir / "status.json").read_text() or "{}").get("state")
    if state in ("succeeded", "failed", "cancelled"):
        break
    move_all()
    time.sleep(0.05)
out.write_text(json.dumps({"moves": moves, "first_pass_at": first}))
"""


@pytest.mark.slow
def test_cli_training_succeeds_while_another_process_moves_its_photos(tmp_path):
    """`python -m engine train` on a folder while another process moves every photo between its class folders:
    the run trains on what it saw at the start (the snapshot) and reads each image by content."""
    import json
    import subprocess
    import sys

    from conftest import REPO

    root = demo.make_demo_dataset(tmp_path / "photos", per_class=12, seed=int.from_bytes(os.urandom(2), "little"))
    before = {it.sha256: it.label for it in scan_image_dir(root).items}
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    mover_script = tmp_path / "mover.py"
    mover_script.write_text(MOVER)
    mover = subprocess.Popen([sys.executable, str(mover_script), str(root), str(run_dir), str(tmp_path / "moved")])
    try:
        proc = subprocess.run([sys.executable, "-m", "engine", "train", "--image_dir", str(root), "--run_dir",
                               str(run_dir), "--quantize", "float32"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)
        mover.wait(timeout=60)
    finally:
        if mover.poll() is None:
            mover.kill()
    assert proc.returncode == 0, proc.stderr[-3000:]
    moved = json.loads((tmp_path / "moved").read_text())
    assert moved["moves"] >= len(before)  # every photo moved at least once while the run was going
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "succeeded" and moved["first_pass_at"] < status["finished"]
    snapshot = json.loads((run_dir / "snapshot.json").read_text())
    assert {sha: label for sha, label, _ in snapshot["items"]} == before  # trained on what it saw at the start
    card = json.loads((run_dir / "model_card.json").read_text())
    assert card["dataset_hash"] == snapshot["hash"]
    assert sorted(images.file_sha256(p) for p in root.rglob("*") if p.is_file()) == sorted(before)  # none lost
