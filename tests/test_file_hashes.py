"""engine.data.file_hashes: a rescan reads only the files that changed, and a broken cache never breaks a scan."""

from __future__ import annotations

import logging
import os

import cv2
import numpy as np
import pytest

from engine.data import images
from engine.data.dataset import scan_image_dir
from engine.data.file_hashes import DB_NAME


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRAIN_STUDIO_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for label in ("cats", "dogs"):
        (tmp_path / "photos" / label).mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(tmp_path / "photos" / label / f"{i}.png"), rng.integers(0, 255, (16, 16, 3), np.uint8))
    return tmp_path / "photos"


def _shas(ds) -> dict[str, str]:
    return {it.path: it.sha256 for it in ds.items}


def test_a_rescan_reads_no_unchanged_file_and_rereads_an_edited_one(folder, monkeypatch):
    first = _shas(scan_image_dir(folder, check_images=False))
    read = []
    real = images.file_sha256
    monkeypatch.setattr(images, "file_sha256", lambda p: read.append(str(p)) or real(p))
    assert _shas(scan_image_dir(folder, check_images=False)) == first and read == []
    edited = folder / "cats" / "1.png"
    st = edited.stat()
    data = bytearray(edited.read_bytes())
    data[-20] ^= 0xFF  # same size; then the modification time put back, as some tools do
    edited.write_bytes(bytes(data))
    os.utime(edited, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = _shas(scan_image_dir(folder, check_images=False))
    assert read == [str(edited)] and again[str(edited)] == real(edited) != first[str(edited)]


def test_a_damaged_cache_costs_time_not_the_scan(folder, tmp_path, caplog):
    first = _shas(scan_image_dir(folder, check_images=False))
    (tmp_path / "cache" / DB_NAME).write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (tmp_path / "cache" / (DB_NAME + suffix)).unlink(missing_ok=True)
    with caplog.at_level(logging.WARNING):
        assert _shas(scan_image_dir(folder, check_images=False)) == first
    assert "file hash cache" in caplog.text
