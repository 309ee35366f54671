"""Shared test fixtures. Tests make their own images; real-data tests skip when ../shared is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(os.environ.get("RETRAIN_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))


def shared_dataset(name: str) -> Path:
    """Path to ../shared/datasets/<name>, or skip the test with the reason."""
    path = SHARED_DATASETS / name
    if not path.is_dir():
        pytest.skip(f"shared dataset {name!r} not found at {path} (team material beside the repo; absent here)")
    return path


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001 - pytest hook signature
    """List the artefacts tests left for people to look at (browser screenshots, the reliability table)."""
    folder = REPO / "artifacts"
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    if files:
        terminalreporter.section("artifacts")
        for path in files:
            terminalreporter.write_line(f"{path.relative_to(REPO)}  ({path.stat().st_size} bytes)")
