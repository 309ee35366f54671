"""engine.runs.prepare: a backbone's one-time parts, made ahead of the first click (the app starts it) and once per
machine whoever asks."""

from __future__ import annotations

import os
import time
from pathlib import Path

from conftest import REPO
from streamlit.testing.v1 import AppTest

from engine.config.backbones import DEFAULT_BACKBONE
from engine.runs import prepare


def test_missing_names_every_part_on_an_empty_machine_and_nothing_for_other_modules(tmp_path, monkeypatch):
    monkeypatch.setenv("RETRAIN_STUDIO_CACHE", str(tmp_path / "cache"))
    assert prepare.missing(DEFAULT_BACKBONE, 3) == ["embedder", "dynamic", "int8", "onnx", "template"]
    assert prepare.missing(DEFAULT_BACKBONE) == ["embedder", "dynamic", "int8", "onnx"]
    assert prepare.missing(DEFAULT_BACKBONE, 3, parts=("template",)) == ["template"]
    assert prepare.missing(str(tmp_path / "a-local-savedmodel"), 3) == []  # prepared by the run that names it


def test_prepare_leaves_nothing_missing(monkeypatch):
    """On this machine's cache, which the other tests share: what it makes, they would make anyway."""
    prepare.prepare(DEFAULT_BACKBONE, 2)
    assert prepare.missing(DEFAULT_BACKBONE, 2) == []
    assert prepare.prepare(DEFAULT_BACKBONE, 2) == []  # a second call finds everything made


def _preparing(cache: Path) -> list[int]:
    """pids of `python -m engine prepare` processes working for this cache."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"prepare" in cmd and f"RETRAIN_STUDIO_CACHE={cache}".encode() in env:
            found.append(int(proc.name))
    return found


def test_opening_the_app_starts_preparing_in_the_background(ws, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("RETRAIN_STUDIO_CACHE", str(cache))
    monkeypatch.setenv(prepare.PREPARE_ENV, "1")
    project = ws.create_project("Birds")
    for name in ("robins", "wrens", "owls"):
        project.create_class(name)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60)
    at.query_params["project"] = project.slug
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    try:
        deadline = time.time() + 10
        while not _preparing(cache) and time.time() < deadline:
            time.sleep(0.1)
        pids = _preparing(cache)
        assert pids, "no background preparation started"
        cmdline = (Path("/proc") / str(pids[0]) / "cmdline").read_bytes().split(b"\0")
        assert [b"--tfhub_module", DEFAULT_BACKBONE.encode(), b"--classes", b"3"] == cmdline[-5:-1]
        at.run()  # a rerun of the page does not start another
        assert len(_preparing(cache)) == 1
    finally:
        for pid in _preparing(cache):
            os.killpg(pid, 9)


def test_a_run_on_a_new_machine_starts_the_template_ahead_and_only_then(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("RETRAIN_STUDIO_CACHE", str(cache))
    monkeypatch.setenv(prepare.PREPARE_ENV, "1")
    assert prepare.template_ahead(DEFAULT_BACKBONE, None, fine_tuning=True) is None  # its SavedModel is its own
    assert prepare.template_ahead(DEFAULT_BACKBONE, 96, fine_tuning=False) is None  # the template is for its size
    assert prepare.template_ahead(str(tmp_path / "a-local-savedmodel"), None, fine_tuning=False) is None
    pid = prepare.template_ahead(DEFAULT_BACKBONE, None, fine_tuning=False)
    try:
        deadline = time.time() + 10  # until the new process's /proc entry shows its command line and environment
        while pid not in _preparing(cache) and time.time() < deadline:
            time.sleep(0.1)
        assert pid is not None and pid in _preparing(cache)
        cmdline = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
        assert cmdline[-3:-1] == [b"--parts", b"template"]
    finally:
        if pid:
            os.killpg(pid, 9)
