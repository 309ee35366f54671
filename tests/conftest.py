"""Shared test fixtures: a workspace and a project of the test's own, and for the browser tests the app server, a
watch on what the browser requests and one Chromium page per module. Tests make their own images; real-data tests
skip when ../shared is absent. Helper modules beside this one: servers.py, browser_app.py, export_data.py,
curate_data.py (imported by their one name)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The app prepares backbones in a background process when it starts (engine.runs.prepare); in tests it would race
# the tests that measure that work, and outlive them. Its own tests switch it back on.
os.environ.setdefault("RETRAIN_STUDIO_PREPARE", "0")
SHARED_DATASETS = Path(os.environ.get("RETRAIN_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))


def shared_dataset(name: str) -> Path:
    """Path to ../shared/datasets/<name>, or skip the test with the reason."""
    path = SHARED_DATASETS / name
    if not path.is_dir():
        pytest.skip(f"shared dataset {name!r} not found at {path} (team material beside the repo; absent here)")
    return path


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """An empty workspace of the test's own ($RETRAIN_STUDIO_WORKSPACE points at it; jobs run the real engine)."""
    from engine.runs.jobs import COMMAND_ENV
    from engine.store.workspace import Workspace

    monkeypatch.setenv("RETRAIN_STUDIO_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.delenv(COMMAND_ENV, raising=False)
    return Workspace()


@pytest.fixture
def project(ws):
    """An empty project in `ws`; a module that needs images overrides this fixture and fills it."""
    return ws.create_project("Test project")


# ------------------------------------------------------------------------------------------------------------------
# the app in a browser (tests/browser_app.py skips a module that imports it when Playwright or Chromium is missing)
# ------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workspace_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("browser_ws")


@pytest.fixture(scope="module")
def app_server(workspace_root) -> Iterator[str]:
    """`streamlit run app.py` over `workspace_root`, one per module: its URL."""
    from servers import app_server as start_app

    with start_app(workspace_root) as url:
        yield url


@pytest.fixture(scope="module")
def watch(app_server):
    from browser_app import Watch

    return Watch(app_server)


@pytest.fixture(scope="module")
def browser_page(app_server, watch):
    from browser_app import open_page

    with open_page(watch) as page:
        yield page


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A real 3 MB file system (tmpfs) that a test can fill up; skipped where mounting one is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill_disk(folder: Path) -> None:
    """Write into `folder` until its file system has no room left."""
    with open(folder / "filler", "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError:
            pass


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001 - pytest hook signature
    """List the artefacts tests left for people to look at (browser screenshots, the reliability table)."""
    folder = REPO / "artifacts"
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    if files:
        terminalreporter.section("artifacts")
        for path in files:
            terminalreporter.write_line(f"{path.relative_to(REPO)}  ({path.stat().st_size} bytes)")
