"""engine.store.index (with engine.store.check's rebuild): a project's index that cannot be read is named as such
and rebuilt from the folders, losing nothing; on a full disk every project still opens and reads, and changes say
the disk is full."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, fill_disk
from PIL import Image
from streamlit.testing.v1 import AppTest

from engine.store import index
from engine.store.errors import DamagedIndexError, WorkspaceError
from engine.store.names import INBOX
from engine.store.workspace import Workspace


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def files(project) -> dict[str, str]:
    """sha256 -> where, of every image file in the project's folders (classes, inbox, trash)."""
    return {hashlib.sha256(p.read_bytes()).hexdigest(): str(p.relative_to(project.path).parent)
            for folder in (project.images_dir, project.inbox_dir, project.trash_dir)
            for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")}


def make_project(root: Path):
    project = Workspace(root).create_project("Birds")
    project.add_files([(f"a{i}.png", png(i)) for i in range(3)], "robins")
    project.add_files([(f"b{i}.png", png(10 + i)) for i in range(2)], "wrens")
    project.add_files([("loose.png", png(99))])
    project.delete_images([project.images("robins")[0].sha256])
    return project


DAMAGE = {
    "overwritten": lambda data: os.urandom(len(data)),
    "cut short": lambda data: data[:4096],
    "emptied": lambda data: b"",
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_index_is_named_and_rebuilt_from_the_folders(tmp_path, damage):
    project = make_project(tmp_path / "ws")
    before = files(project)
    for extra in ("-wal", "-shm"):  # as after the app closed it
        project.db_path.with_name(project.db_path.name + extra).unlink(missing_ok=True)
    project.db_path.write_bytes(DAMAGE[damage](project.db_path.read_bytes()))
    index._MIGRATED.clear()  # as in a new process
    ws = Workspace(tmp_path / "ws")
    [info] = ws.list_projects()  # still listed, with what is wrong
    assert info.slug == "birds" and "is damaged" in info.problem and "--repair" in info.problem
    with pytest.raises(DamagedIndexError, match=r"project\.db\) is damaged.*images are safe"):
        ws.open_project("birds")

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    check = subprocess.run([sys.executable, "-m", "engine", "check", str(project.path)], capture_output=True,
                           text=True, env=env, timeout=120)
    assert check.returncode == 2 and "is damaged" in check.stderr and "Traceback" not in check.stderr
    repair = subprocess.run([sys.executable, "-m", "engine", "check", str(project.path), "--repair"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert repair.returncode == 0 and "OK" in repair.stdout, repair.stdout + repair.stderr
    assert "a new index was made from the folders" in repair.stdout

    rebuilt = Workspace(tmp_path / "ws").open_project("birds")
    assert rebuilt.class_counts() == {"robins": 2, "wrens": 2} and rebuilt.count(INBOX) == 1
    assert files(rebuilt) == before  # every file where it was: nothing lost, nothing moved
    assert [p.name for p in rebuilt.path.glob("project.db.damaged-*")]  # the damaged index is kept


def test_a_full_disk_still_lists_opens_and_shows_every_project(small_disk, monkeypatch):
    project = make_project(small_disk / "ws")
    for extra in ("-wal", "-shm"):
        project.db_path.with_name(project.db_path.name + extra).unlink(missing_ok=True)
    fill_disk(small_disk)
    index._MIGRATED.clear()
    ws = Workspace(small_disk / "ws")
    [info] = ws.list_projects()
    assert info.problem is None and (info.name, info.n_images, info.n_classes) == ("Birds", 5, 2)
    opened = ws.open_project("birds")
    assert opened.class_counts() == {"robins": 2, "wrens": 2} and len(opened.images()) == 5
    assert opened.thumbnail(opened.images("wrens")[0].sha256)  # made, if not kept, without room for the cache
    with pytest.raises(WorkspaceError, match="the disk is full"):
        opened.move([opened.images("robins")[0].sha256], "wrens")
    with pytest.raises(WorkspaceError, match="the disk is full"):
        opened.create_class("owls")
    assert opened.class_counts() == {"robins": 2, "wrens": 2}  # nothing half-done

    monkeypatch.setenv("RETRAIN_STUDIO_WORKSPACE", str(small_disk / "ws"))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60).run()
    assert not at.exception, [e.value for e in at.exception]
    shown = " ".join(str(getattr(e, "value", "")) for e in at.main) + " ".join(
        str(getattr(e, "value", "")) for e in at.sidebar)
    assert "No projects yet" not in shown
    at.query_params["project"] = "birds"
    at.switch_page("ui/pages/data.py").run()
    assert not at.exception, [e.value for e in at.exception]


def test_the_app_names_a_damaged_index_and_rebuilds_it_with_one_click(tmp_path, monkeypatch):
    project = make_project(tmp_path / "ws")
    before = files(project)
    project.db_path.write_bytes(os.urandom(8192))
    index._MIGRATED.clear()
    monkeypatch.setenv("RETRAIN_STUDIO_WORKSPACE", str(tmp_path / "ws"))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60)
    at.query_params["project"] = "birds"
    at.run()
    at.switch_page("ui/pages/data.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("is damaged" in e.value for e in at.error)
    next(b for b in at.button if b.label == "Rebuild the index from the folders").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("The index was rebuilt" in s.value for s in at.success), [s.value for s in at.success]
    assert not at.error, [e.value for e in at.error]
    rebuilt = Workspace(tmp_path / "ws").open_project("birds")
    assert rebuilt.class_counts() == {"robins": 2, "wrens": 2} and files(rebuilt) == before
