"""Every page through Streamlit's AppTest: renders without exceptions, main buttons work, errors are readable."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the pages import ui/ and engine/ from the repo root, as `streamlit run` does
    sys.path.insert(0, str(REPO))

from fake_engine import fake_command  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

from engine.config.training import TrainConfig  # noqa: E402
from engine.runs import history as run_history  # noqa: E402 (a test's own `history` is the page's table)
from engine.runs import jobs  # noqa: E402
from engine.runs import status as run_status  # noqa: E402
from engine.runs.status import RunState, process_start_time  # noqa: E402
from engine.store.names import INBOX  # noqa: E402
from engine.store.workspace import Workspace  # noqa: E402
from ui.common import literal  # noqa: E402


def png(seed: int, size: int = 20) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def ws(ws, tmp_path, monkeypatch) -> Workspace:
    """conftest's workspace, whose jobs run a fake training command (tests/data/fake_train.py)."""
    monkeypatch.setenv(jobs.COMMAND_ENV, json.dumps(fake_command(tmp_path)))
    monkeypatch.delenv("FAKE_MODE", raising=False)
    return ws


def app(project: str | None = None) -> AppTest:
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=90)
    if project:
        at.query_params["project"] = project
    return at


def ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(at: AppTest) -> str:
    parts = []
    for kind in ("markdown", "caption", "info", "warning", "error", "success", "title", "subheader"):
        parts += [str(e.value) for e in getattr(at, kind)]
    return "\n".join(parts)


def button(at: AppTest, label: str):
    for b in at.button:
        if b.label == label or b.label.startswith(label):
            return b
    raise AssertionError(f"no button {label!r} in {[b.label for b in at.button]}")


def page(at: AppTest, path: str) -> AppTest:
    return ok(at.switch_page(path).run())


def sorted_project(ws: Workspace, per_class: int = 3):
    project = ws.create_project("Pets")
    for k, cls in enumerate(("cats", "dogs")):
        project.add_files([(f"{cls}{i}.png", png(10 * k + i)) for i in range(per_class)], cls)
    return project


# ----------------------------------------------------------------------------------------------------------------
# Projects
# ----------------------------------------------------------------------------------------------------------------
def test_home_create_project(ws):
    at = ok(app().run())
    assert "No projects yet" in texts(at)
    next(t for t in at.text_input if t.label == "New project name").input("Birds at the feeder")
    ok(button(at, "Create project").click().run())
    assert [p.slug for p in ws.list_projects()] == ["birds-at-the-feeder"]
    assert at.session_state["project"] == "birds-at-the-feeder"
    assert at.query_params["project"] in ("birds-at-the-feeder", ["birds-at-the-feeder"])
    assert "Created project" in texts(at)


def test_home_demo_project(ws):
    if importlib.util.find_spec("engine.data.demo") is None:
        pytest.skip("engine.data.demo is not written yet")
    at = ok(app().run())
    ok(button(at, "Create demo project").click().run())
    (info,) = ws.list_projects()
    assert info.name == "Demo" and info.n_classes == 2 and info.n_images > 0
    assert at.session_state["project"] == info.slug


def test_project_from_url_rename_and_delete(ws):
    project = ws.create_project("Old name")
    at = ok(app(project.slug).run())
    assert at.session_state["project"] == project.slug
    next(t for t in at.text_input if t.label == "Rename to").input("New name")
    ok(button(at, "Rename").click().run())
    assert ws.open_project(project.slug).name == "New name"
    assert button(at, "Delete project").disabled
    next(c for c in at.checkbox if c.label.startswith("Yes, delete")).check()
    ok(at.run())
    ok(button(at, "Delete project").click().run())
    assert ws.list_projects() == []
    assert at.session_state["project"] is None
    assert not at.error, [e.value for e in at.error]  # not "Deleting failed: unable to open database file"
    assert literal("Deleted 'New name'.") in [s.value for s in at.success]
    assert "No projects yet" in texts(at)  # the list no longer shows it


def test_home_import_bad_zip_is_an_error(ws):
    at = ok(app().run())
    at.file_uploader[0].set_value(("broken.zip", b"this is not a zip", "application/zip"))
    ok(at.run())
    ok(button(at, "Import zip").click().run())
    assert any("zip" in e.value for e in at.error)
    assert ws.list_projects() == []  # no half-made project left behind


def test_home_import_folder(ws, tmp_path):
    src = tmp_path / "image_dir"
    for k, cls in enumerate(("cats", "dogs")):
        (src / cls).mkdir(parents=True)
        for i in range(2):
            (src / cls / f"{i}.png").write_bytes(png(10 * k + i))
    old = ws.create_project("Older")
    at = ok(app(old.slug).run())
    assert at.selectbox(key=f"home_open_pick_{old.slug}").value == old.slug
    next(t for t in at.text_input if t.label == "Path").input(str(src))
    ok(button(at, "Import from path").click().run())
    info = next(p for p in ws.list_projects() if p.slug != old.slug)
    assert info.name == "image_dir" and info.n_images == 4 and info.n_classes == 2
    # the new project is the open one and the one "Open" would open; the inputs are empty for the next import
    assert at.session_state["project"] == info.slug
    assert at.selectbox(key=f"home_open_pick_{info.slug}").value == info.slug
    assert next(t for t in at.text_input if t.label == "Path").value == ""
    assert next(t for t in at.text_input if t.label == "Project name for the import").value == ""
    ok(button(at, "Import from path").click().run())  # a second click imports nothing
    assert "Nothing found at" in texts(at) and len(ws.list_projects()) == 2


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------
def test_data_without_project_points_home(ws):
    at = page(ok(app().run()), "ui/pages/data.py")
    assert "No project is open" in texts(at)


def test_data_upload_classes_sort_and_move(ws):
    project = ws.create_project("Pets")
    at = page(ok(app(project.slug).run()), "ui/pages/data.py")
    uploader = at.file_uploader[0]
    uploader.set_value([(f"{i}.png", png(i), "image/png") for i in range(4)]
                       + [("dup.png", png(0), "image/png"), ("bad.zip", b"nope", "application/zip")])
    ok(at.run())
    ok(button(at, "Add 6 file(s)").click().run())
    assert project.counts() == {INBOX: 4}
    shown = texts(at)
    assert "4 added" in shown and "1 duplicate" in shown and "rejected" in shown
    assert any("bad.zip" in str(df.value) for df in at.dataframe)

    at.segmented_control(key="data_section").set_value("Classes")
    ok(at.run())
    for name in ("cats", "dogs"):
        next(t for t in at.text_input if t.label == "New class").input(name)
        ok(button(at, "Create class").click().run())
    assert project.classes() == ["cats", "dogs"]

    at.segmented_control(key="data_section").set_value("Sort inbox")
    ok(at.run())
    first = project.images(INBOX)[0].sha256
    ok(at.button(key="sort_to_1").click().run())  # "dogs", shortcut 2
    assert project.get(first).class_name == "dogs"
    ok(at.button(key="sort_undo_btn").click().run())
    assert project.get(first).class_name is None
    ok(at.button(key="sort_to_1").click().run())
    assert project.get(first).class_name == "dogs"
    ok(at.button(key="sort_skip").click().run())

    at.segmented_control(key="data_section").set_value("Browse")
    ok(at.run())
    at.selectbox(key="browse_view").set_value(INBOX)
    ok(at.run())
    inbox = [r.sha256 for r in project.images(INBOX)]
    at.checkbox(key=f"sel_{INBOX}-{inbox[0]}").check()
    ok(at.run())
    at.selectbox(key="browse_dest").set_value("cats")
    ok(at.run())
    ok(at.button(key="browse_move").click().run())
    assert project.get(inbox[0]).class_name == "cats"
    at.checkbox(key=f"sel_{INBOX}-{inbox[1]}").check()
    ok(at.run())
    ok(at.button(key="browse_delete").click().run())
    assert project.get(inbox[1]) is None and len(project.trashed()) == 1


def test_data_delete_class_moves_images_to_inbox(ws):
    project = sorted_project(ws)
    at = page(ok(app(project.slug).run()), "ui/pages/data.py")
    at.segmented_control(key="data_section").set_value("Classes")
    ok(at.run())
    form_select = [s for s in at.selectbox if s.label == "Delete class"][0]
    form_select.set_value("dogs")
    ok(button(at, "Delete class").click().run())
    assert project.counts() == {"cats": 3, "dogs": 3, INBOX: 0}  # asked first
    ok(button(at, "Yes, delete").click().run())
    assert project.counts() == {"cats": 3, INBOX: 3}


# ----------------------------------------------------------------------------------------------------------------
# Train
# ----------------------------------------------------------------------------------------------------------------
def test_train_empty_project_explains_what_to_do(ws):
    project = ws.create_project("Empty")
    at = page(ok(app(project.slug).run()), "ui/pages/train.py")
    assert "no sorted images" in texts(at)
    assert button(at, "Start training").disabled


def test_train_runs_a_job_and_shows_it(ws):
    project = sorted_project(ws)
    at = page(ok(app(project.slug).run()), "ui/pages/train.py")
    assert not button(at, "Start training").disabled
    next(n for n in at.number_input if n.label == "Max iterations").set_value(11)
    ok(button(at, "Start training").click().run())
    (row,) = run_history.list_runs(project)
    run_dir = jobs.run_path(project, row.run_id)
    assert jobs.wait(run_dir, timeout=60).state == "succeeded", run_history.log_tail(run_dir)
    assert json.loads((run_dir / "config.json").read_text())["train_epochs"] == 11
    ok(at.run())
    shown = texts(at)
    assert "Done: validation accuracy" in shown and "Run history" in shown
    assert at.session_state["run_id"] == row.run_id


def test_train_running_job_shows_its_progress_in_the_history(ws, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "sleep")
    monkeypatch.setenv("FAKE_SLEEP", "30")
    project = sorted_project(ws)
    run_id = jobs.start_training(project)
    run_dir = jobs.run_path(project, run_id)
    try:
        deadline = time.time() + 30
        while not any(e["type"] == "embed" and e["done"] == e["total"] for e in run_history.events(run_dir)):
            assert time.time() < deadline, run_history.log_tail(run_dir)
            time.sleep(0.1)
        at = page(ok(app(project.slug).run()), "ui/pages/train.py")
        history = next(df.value for df in at.dataframe if "result" in df.value)
        row = history.iloc[0]
        assert row["state"] == "running" and row["result"] == "features 6/6", row.to_dict()
        assert row["duration"].endswith("s so far")
    finally:
        jobs.cancel(run_dir)


def test_train_history_explains_the_kept_step_and_compares_runs(ws):
    project = sorted_project(ws)
    first = jobs.start_training(project, {"train_epochs": 7})
    assert jobs.wait(jobs.run_path(project, first), timeout=60).state == "succeeded"
    project.move([project.images("cats")[0].sha256], "dogs")
    second = jobs.start_training(project)
    assert jobs.wait(jobs.run_path(project, second), timeout=60).state == "succeeded"
    at = page(ok(app(project.slug).run()), "ui/pages/train.py")
    shown = texts(at)
    # the fake engine writes 5 steps in a few milliseconds, its lowest validation loss at the last one
    assert "5 training step(s)" in shown and "from step 5 (lowest validation loss" in shown
    assert "faster than this page refreshes" in shown
    assert "Compare two runs" in shown
    # (two runs started within one second may be listed in either order)
    a, b = at.selectbox(key="compare_a").value, at.selectbox(key="compare_b").value
    assert {a, b} == {first, second}
    epochs = {first: "7", second: str(TrainConfig().train_epochs)}
    settings = next(df.value for df in at.dataframe if "setting" in df.value)
    assert settings.set_index("setting").loc["train_epochs"].tolist() == [epochs[a], epochs[b]]
    assert "Now right" in [m.label for m in at.metric]


def test_train_history_names_the_l2_kept_by_the_one_standard_error_rule(ws, monkeypatch):
    """With cross-validation the steps are L2 values and the one kept need not have the lowest loss on the chart:
    the page names the kept one (from the run's result), not the lowest, in plain words."""
    monkeypatch.setenv("FAKE_MODE", "grid")
    project = sorted_project(ws)
    run_id = jobs.start_training(project)
    assert jobs.wait(jobs.run_path(project, run_id), timeout=60).state == "succeeded"
    shown = texts(page(ok(app(project.slug).run()), "ui/pages/train.py"))
    assert "5 training step(s), one per penalty strength tried" in shown
    assert "Kept: strength 2, the simplest" in shown and "lowest validation loss" not in shown
    review = texts(page(ok(app(project.slug).run()), "ui/pages/review.py"))
    assert "Backbones on these images, best first (each image judged by a model that never saw it): " \
        "efficientnet-lite2 90" in review
    assert "efficientnet-lite2 got more of them right: choose it as the backbone on the Train page" in review


def test_train_page_offers_the_bundle_as_soon_as_it_is_written(ws, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "linger")
    project = sorted_project(ws)
    run_dir = jobs.run_path(project, jobs.start_training(project))
    try:
        deadline = time.time() + 30
        while not (run_dir / "bundle.zip").exists():
            assert time.time() < deadline, run_history.log_tail(run_dir)
            time.sleep(0.05)
        assert jobs.job_status(run_dir).state == "running"
        shown = texts(page(ok(app(project.slug).run()), "ui/pages/train.py"))
        assert "The bundle is ready; the run is still comparing backbones" in shown
        assert "being exported" not in shown
    finally:
        jobs.cancel(run_dir)


def test_train_failure_is_shown_without_traceback(ws, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "fail")
    project = sorted_project(ws)
    at = page(ok(app(project.slug).run()), "ui/pages/train.py")
    ok(button(at, "Start training").click().run())
    (row,) = run_history.list_runs(project)
    jobs.wait(jobs.run_path(project, row.run_id), timeout=60)
    ok(at.run())
    assert any("Training failed: boom" in e.value for e in at.error)


# ----------------------------------------------------------------------------------------------------------------
# Review and Export
# ----------------------------------------------------------------------------------------------------------------
def trained(ws):
    project = sorted_project(ws)
    run_id = jobs.start_training(project)
    assert jobs.wait(jobs.run_path(project, run_id), timeout=60).state == "succeeded"
    return project, run_id


@pytest.mark.parametrize("path", ["ui/pages/review.py", "ui/pages/export.py"])
def test_review_and_export_without_runs(ws, path):
    project = sorted_project(ws)
    at = page(ok(app(project.slug).run()), path)
    assert "No finished training run yet" in texts(at)


def test_review_relabel_and_confusion_cell(ws):
    project, run_id = trained(ws)
    at = page(ok(app(project.slug).run()), "ui/pages/review.py")
    assert "Validation accuracy" in [m.label for m in at.metric]
    metrics = run_history.load_metrics(jobs.run_path(project, run_id))
    mistakes = [p for p in metrics["predictions"] if p["true"] != p["predicted"]]
    assert mistakes
    first = max(mistakes, key=lambda p: p["probability"])
    ok(button(at, f"Move to {first['predicted']}").click().run())
    rec = project.find_by_filename(Path(first["path"]).name)
    assert rec.class_name == first["predicted"]
    assert "Moved" in texts(at)

    # retrain with the same settings from Review; afterwards the page says what changed
    assert "What changed" not in texts(at) and not [e for e in at.expander if "What changed" in e.label]
    ok(button(at, "Retrain now").click().run())
    new_runs = {r.run_id for r in run_history.list_runs(project)} - {run_id}
    assert len(new_runs) == 1, texts(at)
    (retrain_id,) = new_runs
    assert jobs.wait(jobs.run_path(project, retrain_id), timeout=60).state == "succeeded"
    ok(at.run())
    assert at.session_state["run_id"] == retrain_id
    (changed,) = [e for e in at.expander if e.label.startswith("What changed since run")]
    assert changed.label == f"What changed since run {run_id} (the run it was retrained from)"
    assert {"Now right", "Now wrong"} <= {m.label for m in at.metric}
    assert json.loads((jobs.run_path(project, retrain_id) / "config.json").read_text())["train_epochs"] == \
        json.loads((jobs.run_path(project, run_id) / "config.json").read_text())["train_epochs"]
    metrics = run_history.load_metrics(jobs.run_path(project, retrain_id))  # the page now shows the new run

    at.segmented_control(key="review_mode").set_value("Low confidence")
    ok(at.run())
    assert "confidence" in texts(at)
    at.segmented_control(key="review_mode").set_value("Confusion-matrix cell")
    ok(at.run())
    assert "Click a cell of the confusion matrix" in texts(at)
    # selecting a cell (row = true class, column = predicted class) shows that cell's images
    at.session_state["cm"] = {"selection": {"rows": [], "columns": [], "cells": [(0, "dogs")]}}
    ok(at.run())
    expected = sum(1 for p in metrics["predictions"] if (p["true"], p["predicted"]) == ("cats", "dogs"))
    assert f"{expected} image(s) of class 'cats' predicted as 'dogs'" in texts(at)


def test_export_offers_downloads(ws):
    project, run_id = trained(ws)
    at = page(ok(app(project.slug).run()), "ui/pages/export.py")
    labels = [b.label for b in at.get("download_button")]
    assert any(lb.startswith("Download everything (bundle.zip") for lb in labels)
    for name in ("model_float32.tflite", "model_dynamic.tflite", "model_int8.tflite", "labels.txt",
                 "model_card.json"):
        assert any(lb.startswith(name) for lb in labels), labels
    assert any(lb.startswith("SavedModel") for lb in labels)
    code = [c.value for c in at.code]
    # the bundle's own commands come first; the repository's server after them
    assert "pip install -r requirements.txt" in code[0] and "python predict.py" in code[0]
    assert "python serve.py" in code[0]
    assert any("python -m engine serve --bundle" in c for c in code[1:])


def test_export_shows_the_variants_table_and_only_files_that_exist(ws):
    project, run_id = trained(ws)
    run_dir = jobs.run_path(project, run_id)
    card = {"labels": ["cats", "dogs"], "tflite": {
        "float32": {"file": "model_float32.tflite", "bytes": 3_500_000, "val_accuracy": 0.9,
                    "agreement_top1_vs_keras": 1.0, "input": "float32", "n_validation": 10},
        "int8": {"file": "model_int8.tflite", "bytes": 1_200_000, "val_accuracy": 0.8,
                 "agreement_top1_vs_keras": 0.9, "input": "uint8", "n_validation": 10}}}
    (run_dir / "model_card.json").write_text(json.dumps(card))
    at = page(ok(app(project.slug).run()), "ui/pages/export.py")
    table = next(df.value for df in at.dataframe if "same answer as the SavedModel" in df.value)
    assert table["model"].tolist() == ["model_float32.tflite", "model_int8.tflite"]
    assert table["size"].tolist() == ["3.3 MB", "1.1 MB"]
    assert table["accuracy on the checked images"].tolist() == [0.9, 0.8]
    assert table["same answer as the SavedModel"].tolist() == [1.0, 0.9]

    # while the export is still running, files appear one by one and bundle.zip only once it is written
    (run_dir / "bundle.zip").unlink()
    (run_dir / "model_int8.tflite").unlink()
    # a live process (this one) stands in for the exporting job: its status records it as the job would
    run_status.write_status(run_dir, RunState.RUNNING, "exporting")
    at = page(ok(app(project.slug).run()), "ui/pages/export.py")
    labels = [b.label for b in at.get("download_button")]
    assert not any("bundle.zip" in lb for lb in labels) and not any(lb.startswith("SavedModel") for lb in labels)
    assert any(lb.startswith("model_float32.tflite") for lb in labels)
    assert not any(lb.startswith("model_int8.tflite") for lb in labels)
    assert "bundle.zip is written last" in texts(at)


def test_export_try_with_a_broken_model_shows_an_error(ws):
    project, run_id = trained(ws)  # the fake engine writes placeholder bytes, not real models
    at = page(ok(app(project.slug).run()), "ui/pages/export.py")
    if importlib.util.find_spec("engine.inference.predict") is None:
        assert any("engine.inference.predict is missing" in w.value for w in at.warning)
        return
    at.file_uploader(key="try_image").set_value(("x.png", png(1), "image/png"))
    ok(at.run())
    assert at.error, "a model that cannot load must give a readable error, not a traceback"


# ----------------------------------------------------------------------------------------------------------------
# Names are data (issue 19): shown as typed on every page, never rendered as Markdown
# ----------------------------------------------------------------------------------------------------------------
NASTY_PROJECT = "![t](http://127.0.0.1:8799/p.png) $x^2$ *bold*"  # a remote image, KaTeX, emphasis
NASTY_CLASS = "$x^2$"
NASTY_FILE = "![px](http://127.0.0.1:8799/f.png).png"  # long enough for Browse to shorten it and add a tooltip
RAW = ("![t](", "![px](", "$x^2$", "*bold*")  # none of these survives literal()
# the proto fields Streamlit renders as Markdown: texts, messages, titles, widget and block labels, tooltips, image
# captions, progress texts, button-group options (select box options are plain text and not listed)
MARKDOWN_FIELDS = {"body", "label", "help", "caption", "text", "content"}
PLAIN_ELEMENTS = {"Json", "Code", "Text"}  # st.json, st.code, st.text: a "body" shown as it is


def markdown_sources(at: AppTest) -> list[str]:
    """Every string of the page that the browser would render as Markdown."""
    found: list[str] = []

    def visit(name: str, value) -> None:
        if isinstance(value, str):
            if name in MARKDOWN_FIELDS:
                found.append(value)
        elif hasattr(value, "ListFields"):
            if value.DESCRIPTOR.name in PLAIN_ELEMENTS:
                return
            for field, inner in value.ListFields():
                visit(field.name, inner)
        elif not isinstance(value, bytes | int | float | bool):  # a repeated field
            for inner in value:
                visit(name, inner)

    def walk(node) -> None:
        if getattr(node, "proto", None) is not None:
            visit("", node.proto)
        for child in getattr(node, "children", {}).values():
            walk(child)

    for block in (at.main, at.sidebar):
        walk(block)
    for toast in at.toast:
        walk(toast)
    return found


def shown_literally(at: AppTest) -> list[str]:
    ok(at)
    sources = markdown_sources(at)
    leaks = [s for s in sources if any(raw in s for raw in RAW)]
    assert not leaks, leaks
    return sources


def nasty_project(ws: Workspace):
    project = ws.create_project(NASTY_PROJECT)
    project.add_files([(f"c{i}.png", png(40 + i)) for i in range(2)] + [(NASTY_FILE, png(42))], NASTY_CLASS)
    project.add_files([(f"d{i}.png", png(50 + i)) for i in range(3)], "dogs")
    return project


def test_names_show_literally_on_projects_and_data(ws):
    project = nasty_project(ws)
    project.add_files([(NASTY_FILE, png(60)), ("b.png", png(61))])  # the inbox
    trashed = project.add_files([("![gone](x.png).png", png(62))]).added
    project.delete_images(trashed)
    name, cls, file = literal(NASTY_PROJECT), literal(NASTY_CLASS), literal(NASTY_FILE)

    at = app(project.slug).run()
    shown = shown_literally(at)
    assert f"Project “{name}”" in [s.value for s in at.subheader]
    assert f"Yes, delete '{name}' for good" in shown

    at = page(at, "ui/pages/data.py")  # the inbox has images: the sorter
    shown = shown_literally(at)
    assert at.title[0].value == f"Data · {name}"
    assert cls in [b.label for b in at.button if b.key.startswith("sort_to_")]
    assert cls in [m.label for m in at.metric]
    assert file in shown  # the caption of the photo being sorted

    at.segmented_control(key="data_section").set_value("Browse").run()
    at.selectbox(key="browse_view").set_value(NASTY_CLASS).run()
    shown = shown_literally(at)
    assert f"{cls}: 3 image(s) · page 1 of 1" in [c.value for c in at.caption]
    (box,) = [c for c in at.checkbox if c.help]
    assert box.help == file and box.label.startswith(literal("![px](htt"))
    box.check().run()
    at.selectbox(key="browse_dest").set_value("dogs").run()
    at.button(key="browse_move").click().run()
    shown_literally(at)
    at.selectbox(key="browse_view").set_value("dogs").run()
    at.checkbox(key=f"sel_dogs-{project.images('dogs')[0].sha256}").check().run()
    at.selectbox(key="browse_dest").set_value(NASTY_CLASS).run()
    at.button(key="browse_move").click().run()
    shown = shown_literally(at)
    moved = literal(f"Moved 1 image(s) to {NASTY_CLASS}.")  # the whole message is shown literally
    assert moved in [s.value for s in at.success] and moved in [t.value for t in at.toast]

    at.segmented_control(key="data_section").set_value("Add images").run()
    at.selectbox(key="upload_target").set_value(NASTY_CLASS).run()
    at.file_uploader[0].set_value([(NASTY_FILE, png(42), "image/png")])  # already there: a duplicate
    at.run()
    at.button(key="upload_go").click().run()
    shown = shown_literally(at)
    assert file in shown  # the duplicates list

    at.segmented_control(key="data_section").set_value("Classes").run()
    next(t for t in at.text_input if t.label == "New class").input("![px](a.png)")
    button(at, "Create class").click().run()
    shown = shown_literally(at)
    assert literal("Created class '![px](a.png)'.") in [s.value for s in at.success]
    assert literal("![gone](x.png).png") in shown  # the trash list


def test_names_show_literally_on_train_review_and_export(ws):
    project = nasty_project(ws)
    run_id = jobs.start_training(project)
    assert jobs.wait(jobs.run_path(project, run_id), timeout=60).state == "succeeded"
    name, cls = literal(NASTY_PROJECT), literal(NASTY_CLASS)
    at = app(project.slug).run()

    at = page(at, "ui/pages/train.py")
    shown = shown_literally(at)
    assert at.title[0].value == f"Train · {name}"
    assert f"6 images in 2 classes: {cls} (3), dogs (3)" in shown

    at = page(at, "ui/pages/review.py")
    shown = shown_literally(at)
    assert at.title[0].value == f"Review · {name}"
    assert any(s.startswith(f"true **{cls}** → predicted **dogs**") for s in shown), shown
    assert f"Move to {cls}" in [b.label for b in at.button]

    at = page(at, "ui/pages/export.py")
    shown_literally(at)
    assert at.title[0].value == f"Export & try · {name}"


def test_broken_run_folders_leave_every_page_working_and_can_be_deleted(ws):
    """One damaged or hand-edited run folder is listed as what it is; Train, Review and Export keep working for the
    project's other runs, and the run can be deleted from the Train page."""
    project, good = trained(ws)
    broken = {
        "20000101-000001-000-word": {"status.json": '{"state": "succeeded", "started": 1, "finished": "today"}'},
        "20000101-000002-000-huge": {"status.json": '{"state": "succeeded", "started": 1e308, "finished": 2}'},
        "20000101-000003-000-list": {"status.json": '{"state": "succeeded"}', "events.jsonl": "[1]\n"},
        "20000101-000004-000-utf8": {"status.json": b'{"state": "succeeded", "message": "\xff"}'},
    }
    for run_id, files in broken.items():
        run_dir = project.runs_dir / run_id
        run_dir.mkdir()
        for name, data in files.items():
            (run_dir / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    at = ok(app(project.slug).run())
    for path in ("ui/pages/train.py", "ui/pages/review.py", "ui/pages/export.py"):
        at = page(at, path)
    at = page(at, "ui/pages/train.py")
    table = next(df.value for df in at.dataframe if "run_id" in df.value.columns)
    assert set(broken) | {good} == set(table["run_id"])
    at.selectbox(key=f"run_pick_{good}").set_value("20000101-000004-000-utf8").run()
    ok(at)
    button(at, "Delete the run").click().run()
    ok(at)
    assert not (project.runs_dir / "20000101-000004-000-utf8").exists()
    assert literal("Deleted run 20000101-000004-000-utf8.") in texts(at)
    assert (project.runs_dir / good).is_dir()


def test_a_run_that_failed_for_the_machine_says_what_to_do_not_to_check_the_data(ws):
    project, run_id = trained(ws)
    run_dir = jobs.run_path(project, run_id)
    message = "Training: the disk is full (/x/model.tflite). Free some space and try again."
    run_status.write_status(run_dir, RunState.FAILED, message, cause=run_status.MACHINE)
    at = page(ok(app(project.slug).run()), "ui/pages/train.py")
    shown = [e.value for e in at.error]
    assert any("the disk is full" in e for e in shown), shown
    assert not any("Check the data" in e for e in shown), shown


# ----------------------------------------------------------------------------------------------------------------
# The Train page for someone who is not an ML engineer (issue 20)
# ----------------------------------------------------------------------------------------------------------------
def charts(at: AppTest) -> list[tuple[dict, object]]:
    """(Vega-Lite spec, its inline data as a DataFrame) of every chart on the page."""
    import pyarrow as pa

    out = []
    for chart in at.get("vega_lite_chart"):
        frames = [pa.ipc.open_stream(d.data.data).read_pandas() for d in chart.proto.datasets]
        out.append((json.loads(chart.proto.spec), frames[0] if frames else None))
    return out


def widget_keys(node) -> set[str]:
    keys = {node.key} if getattr(node, "key", None) else set()
    for child in getattr(node, "children", {}).values():
        keys |= widget_keys(child)
    return keys


def running_run(project, run_id: str, events: list[dict], **config) -> Path:
    """A finished fake run turned back into a running one with these events (this process stands in for the job,
    as in the export test above)."""
    run_dir = jobs.run_path(project, run_id)
    cfg = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**cfg, **config}))
    for name in ("metrics.json", "bundle.zip"):
        (run_dir / name).unlink(missing_ok=True)
    now = time.time()
    (run_dir / "events.jsonl").write_text("".join(json.dumps({"time": now, **e}) + "\n" for e in events))
    run_status.write_status(run_dir, RunState.RUNNING, "training", finished=None)
    return run_dir


HEAD_GRID = [  # as cross-validation reports it: the training accuracy is 1.0 at every strength
    {"type": "epoch", "phase": "head", "epoch": k + 1, "l2": l2, "loss": 0.01 * (k + 1), "accuracy": 1.0,
     "val_loss": vl, "val_accuracy": va, "elapsed": 0.1 * (k + 1)}
    for k, (l2, vl, va) in enumerate([(0.1, 0.40, 0.880), (0.03, 0.30, 0.917), (0.01, 0.29, 0.905),
                                      (0.003, 0.31, 0.910)])]


def newest_run_dir(project) -> Path:
    return max(run_history.list_runs(project), key=lambda r: r.started or 0).run_dir


def test_train_preset_shows_the_backbone_it_will_train(ws):
    project = sorted_project(ws)
    at = page(ok(app(project.slug).run()), "ui/pages/train.py")
    at.selectbox(key="cfg_preset").set_value("accuracy")
    ok(at.run())
    assert at.selectbox(key="cfg_tfhub_module").value == "efficientnet-lite2"  # the field shows what will run
    assert "efficientnet-lite2" in texts(at)
    ok(button(at, "Start training").click().run())
    (row,) = run_history.list_runs(project)
    run_dir = jobs.run_path(project, row.run_id)
    assert jobs.wait(run_dir, timeout=60).state == "succeeded"
    assert json.loads((run_dir / "config.json").read_text())["tfhub_module"] == "efficientnet-lite2"

    # the backbone chosen by hand after the preset is the one that trains, not the preset's
    at.selectbox(key="cfg_tfhub_module").set_value("efficientnet-lite0")
    ok(at.run())
    ok(button(at, "Start training").click().run())
    newest = newest_run_dir(project)
    assert jobs.wait(newest, timeout=60).state == "succeeded"
    assert json.loads((newest / "config.json").read_text())["tfhub_module"] == "efficientnet-lite0"


def test_train_says_in_plain_words_which_backbone_did_better(ws, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "grid")  # this run: efficientnet-lite0 0.8; the cached lite2: 0.9
    project, _ = trained(ws)
    at = page(ok(app(project.slug).run()), "ui/pages/train.py")
    shown = texts(at)
    assert "On your images, efficientnet-lite2 did better than efficientnet-lite0 (this run's backbone)" in shown
    assert "90.0% of the images right against 80.0%" in shown
    ok(button(at, "Use efficientnet-lite2 for the next run").click().run())
    assert at.selectbox(key="cfg_tfhub_module").value == "efficientnet-lite2"


def test_train_fine_tuning_shows_epoch_and_time_left_and_separate_phases(ws):
    project, run_id = trained(ws)
    events = [{"type": "stage", "stage": "embed", "message": "Computing features"},
              {"type": "embed", "done": 6, "total": 6, "cached": 0, "images_per_s": 100.0},
              {"type": "stage", "stage": "train", "message": "Training a 2-class head"}, *HEAD_GRID,
              {"type": "stage", "stage": "fine_tune", "message": "Fine-tuning the backbone on images"},
              *({"type": "epoch", "phase": "fine_tune", "epoch": e, "loss": 0.5 / e, "accuracy": 0.8 + e / 50,
                 "val_loss": 0.4 / e, "val_accuracy": 0.85 + e / 100, "elapsed": 10.0 * e} for e in (1, 2))]
    running_run(project, run_id, events, do_fine_tuning=True, fine_tune_epochs=5)
    at = page(ok(app(project.slug).run()), "ui/pages/train.py")
    bars = [p.proto.text for p in at.get("progress")]
    assert not any("Computing features" in t for t in bars), bars  # that stage is over
    assert any("epoch 2 of 5" in t and "about 30 s left" in t for t in bars), bars
    shown = texts(at)
    assert "training step(s) (epochs)" not in shown
    # one chart per phase and quantity: the head's strengths and the fine-tuning epochs never share an axis
    drawn = charts(at)
    x_titles = [spec["encoding"]["x"].get("title") or spec["encoding"]["x"]["axis"].get("title") for spec, _ in drawn]
    assert any(t and "epoch" in t for t in x_titles) and any(t and "strength" in t for t in x_titles), x_titles
    for _, frame in drawn:
        assert len(frame.iloc[:, 0].unique()) in (2, 4), frame  # 2 epochs or 4 strengths, never 6 steps


def test_train_chart_and_headline_show_the_same_accuracy(ws, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "grid")
    project, run_id = trained(ws)
    run_dir = jobs.run_path(project, run_id)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.update(val_accuracy=0.917, cross_validated=True, l2=0.03)
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    events = [*HEAD_GRID, {"type": "result", "val_accuracy": 0.917, "metrics_file": "m", "l2": 0.03},
              {"type": "stage", "stage": "done", "message": "done"}]
    (run_dir / "events.jsonl").write_text("".join(json.dumps({"time": 1.0, **e}) + "\n" for e in events))
    at = page(ok(app(project.slug).run()), "ui/pages/train.py")
    shown = texts(at)
    assert "91.7%" in shown and "91.0%" not in shown, shown  # the kept model's accuracy, not the last point's
    assert "standard error" not in shown and "L2 0.03" not in shown  # plain words
    assert charts(at)
    for _, frame in charts(at):
        # the training accuracy is 100% at every strength: a flat line that says nothing is not drawn
        for series, rows in frame.groupby("series"):
            assert not (len(rows) > 1 and (rows["_value"] == 1.0).all()), (series, frame)


def test_train_history_says_in_words_when_a_big_projects_strength_was_kept(ws, monkeypatch):
    """A big project's retrain keeps the last search's L2 while few images changed (engine.learn.warm_start): its
    chart has one point, which the page must not describe as a search's choice."""
    monkeypatch.setenv("FAKE_MODE", "grid")
    project, run_id = trained(ws)
    run_dir = jobs.run_path(project, run_id)
    kept = {"changed": 12, "limit": 24}
    events = [HEAD_GRID[1], {"type": "result", "val_accuracy": 0.917, "metrics_file": "m", "l2": 0.03,
                             "l2_kept": kept}, {"type": "stage", "stage": "done", "message": "done"}]
    (run_dir / "events.jsonl").write_text("".join(json.dumps({"time": 1.0, **e}) + "\n" for e in events))
    shown = texts(page(ok(app(project.slug).run()), "ui/pages/train.py"))
    assert "was not searched again" in shown and "only 12 image(s) were added, removed or relabelled" in shown
    assert "once more than 24 have changed" in shown and "91.7%" in shown
    assert "one per penalty strength tried" not in shown and "Kept: strength" not in shown


def test_train_advanced_options_are_grouped_for_a_person(ws):
    project = sorted_project(ws)
    at = page(ok(app(project.slug).run()), "ui/pages/train.py")
    shown = texts(at)
    for heading in ("How the model is judged", "Export"):
        assert heading in shown, heading
    (experts,) = [e for e in at.expander if e.label.startswith("For experts")]
    assert not experts.proto.expanded
    assert {"cfg_distribution_strategy", "cfg_set_memory_growth"} <= widget_keys(experts)
    assert "cfg_fine_tune_epochs" not in widget_keys(at.main)  # fine-tuning options wait until it is on
    at.checkbox(key="cfg_do_fine_tuning").check()
    ok(at.run())
    assert "Fine-tuning" in texts(at) and "cfg_fine_tune_epochs" in widget_keys(at.main)
    for widget in [*at.number_input, *at.selectbox, *at.checkbox, *at.multiselect, *at.text_input]:
        if widget.key and widget.key.startswith("cfg_") and widget.help:
            # a help text for a person; the command-line flag may follow at the end
            assert "--" not in widget.help.split("Command line:")[0], (widget.key, widget.help)


def trained_with_snapshot(project) -> str:
    """A fake run, and the snapshot.json the real engine writes (what it trained on: sha256, label, path)."""
    run_id = jobs.start_training(project)
    run_dir = jobs.run_path(project, run_id)
    assert jobs.wait(run_dir, timeout=60).state == "succeeded"
    items = sorted([sha, label, f"{label}/{sha}.png"] for sha, label in project.labels().items())
    (run_dir / "snapshot.json").write_text(json.dumps({"hash": "h", "root": str(project.image_dir()),
                                                       "created": time.time(), "items": items}))
    return run_id


def test_train_compare_defaults_to_the_latest_two_and_says_what_differs(ws):
    project = sorted_project(ws)
    first = trained_with_snapshot(project)
    second = trained_with_snapshot(project)
    at = page(ok(app(project.slug).run()), "ui/pages/train.py")
    assert (at.selectbox(key="compare_a").value, at.selectbox(key="compare_b").value) == (first, second)
    shown = texts(at)
    assert "only the data changed" not in shown
    assert "Nothing differs between the two runs" in shown

    project.move([project.images("cats")[0].sha256], "dogs")
    third = trained_with_snapshot(project)
    ok(at.run())  # the same browser session: a new run moves the comparison on
    assert (at.selectbox(key="compare_a").value, at.selectbox(key="compare_b").value) == (second, third)
    shown = texts(at)
    assert "Both runs used the same settings" in shown and "1 image(s) differ" in shown


def test_train_runs_can_be_named_and_the_state_reads_in_full(ws):
    project, run_id = trained(ws)
    at = page(ok(app(project.slug).run()), "ui/pages/train.py")
    table = next(d for d in at.dataframe if "run_id" in d.value.columns)
    assert json.loads(table.proto.columns)["state"]["width"] in ("medium", "large")
    at.text_input(key=f"run_name_{run_id}").input("before fixing *cats*")
    ok(at.run())
    assert run_history.summarize(jobs.run_path(project, run_id)).name == "before fixing *cats*"
    table = next(d.value for d in at.dataframe if "run_id" in d.value.columns)
    assert table["name"].tolist() == ["before fixing *cats*"]
    assert any("before fixing *cats*" in o for o in at.selectbox(key=f"run_pick_{run_id}").options)
    assert "*cats*" not in "".join(markdown_sources(at))  # shown literally wherever Markdown renders
    at = page(at, "ui/pages/review.py")
    assert any("before fixing *cats*" in o for s in at.selectbox for o in s.options)


def test_the_unknown_threshold_chart_spans_the_coverages_there_are(ws):
    project, run_id = trained(ws)
    run_dir = jobs.run_path(project, run_id)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    curve = [{"threshold": t, "coverage": c, "precision": p}
             for t, c, p in ((0.5, 1.0, 0.91), (0.7, 0.9, 0.95), (0.9, 0.72, 0.99))]
    metrics["threshold"] = {"value": 0.7, "target_precision": 0.95, "precision": 0.95, "coverage": 0.9,
                            "reached": True, "curve": curve}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    at = page(ok(app(project.slug).run()), "ui/pages/export.py")
    specs = [json.loads(e.proto.spec) for e in at.get("vega_lite_chart")]
    layered = next(s for s in specs if "layer" in s)
    x = layered["layer"][0]["encoding"]["x"]
    assert x["field"] == "coverage" and x["scale"]["domain"] == [0.7, 1.0], x


def test_data_upload_names_the_real_limits_next_to_the_uploader(ws):
    import streamlit as st

    from engine.store.ingest import MAX_FILE_BYTES, MAX_ZIP_FILES, MAX_ZIP_TOTAL_BYTES

    project = ws.create_project("Pets")
    at = page(ok(app(project.slug).run()), "ui/pages/data.py")
    assert at.file_uploader[0]  # the empty project opens on Add images
    upload_mb = st.get_option("server.maxUploadSize")
    upload = f"{upload_mb // 1024} GB" if upload_mb % 1024 == 0 else f"{upload_mb} MB"
    limits = (f"Limits: {MAX_FILE_BYTES // 2**20} MB per image (inside zips too); a zip up to {upload}, with at most "
              f"{MAX_ZIP_FILES:,} files and {MAX_ZIP_TOTAL_BYTES // 2**30} GB unpacked.")
    assert limits in [c.value for c in at.caption]


# ----------------------------------------------------------------------------------------------------------------
# Review for someone who is not an ML engineer (issue 20, items 8 and 9)
# ----------------------------------------------------------------------------------------------------------------
def review_nodes(node) -> list:
    """Every block and element under `node`, in the order the page shows them."""
    out = [node]
    for child in getattr(node, "children", {}).values():
        out += review_nodes(child)
    return out


def review_card(at: AppTest, key: str):
    """The smallest container that holds the widget with this key (on Review: the image's card)."""
    blocks = [n for n in review_nodes(at.main) if hasattr(n, "children")
              and any(getattr(e, "key", None) == key for e in review_nodes(n))]
    return min(blocks, key=lambda b: len(review_nodes(b)))


def review_card_texts(card) -> str:
    return "\n".join(str(n.value) for n in review_nodes(card) if getattr(n, "type", "") in (
        "markdown", "caption", "success", "info", "warning", "error") and hasattr(n, "value"))


def test_review_mistakes_are_neutral_label_is_correct_and_undo_on_the_card(ws):
    from engine.curate.decisions import Decisions

    project, run_id = trained(ws)
    metrics = run_history.load_metrics(jobs.run_path(project, run_id))
    mistakes = sorted((p for p in metrics["predictions"] if p["true"] != p["predicted"]),
                      key=lambda p: -p["probability"])
    assert len(mistakes) >= 2
    first, second = (project.find_by_filename(Path(p["path"]).name) for p in mistakes[:2])
    at = page(ok(app(project.slug).run()), "ui/pages/review.py")
    card_buttons = [b for b in at.button if b.key.startswith("rv_")]
    assert card_buttons and not [b.label for b in card_buttons if b.proto.type == "primary"]  # no suggested move
    assert "labelling errors" not in texts(at)

    # "Label is correct": kept in the project, said on the card, undone from there
    ok(at.button(key=f"rv_ok_{first.sha256[:16]}").click().run())
    decision = f"correct:{first.sha256}:{first.class_name}"
    assert decision in Decisions(project.path).kept()
    card = review_card(at, "rv_undo")
    assert any(getattr(n, "key", None) == f"rv_trash_{first.sha256[:16]}" for n in review_nodes(card))
    assert "is the right label of" in review_card_texts(card)
    assert not [s for s in at.main.children.values() if getattr(s, "type", "") == "success"]  # not at the top
    ok(at.button(key="rv_undo").click().run())
    assert decision not in Decisions(project.path).kept()
    assert "listed as a mistake again" in review_card_texts(review_card(at, f"rv_ok_{first.sha256[:16]}"))
    ok(at.button(key=f"rv_ok_{first.sha256[:16]}").click().run())

    # the next action: the confirmed image is no longer listed; the move is said on its own card, and undone
    ok(at.button(key=f"rv_pred_{second.sha256[:16]}").click().run())
    assert project.get(second.sha256).class_name == mistakes[1]["predicted"]
    keys = {b.key for b in at.button}
    assert f"rv_trash_{first.sha256[:16]}" not in keys and f"rv_trash_{second.sha256[:16]}" in keys
    shown = texts(at)
    assert f"{len(mistakes) - 1} misclassified" in shown
    assert "1 more whose label you said is correct are not shown" in shown
    card = review_card(at, "rv_undo")
    assert any(getattr(n, "key", None) == f"rv_trash_{second.sha256[:16]}" for n in review_nodes(card))
    assert literal(f"Moved {second.filename} to '{mistakes[1]['predicted']}'.") in review_card_texts(card)
    ok(at.button(key="rv_undo").click().run())
    assert project.get(second.sha256).class_name == mistakes[1]["true"]
    assert "Undone" in review_card_texts(review_card(at, f"rv_trash_{second.sha256[:16]}"))
    ok(at.button(key=f"rv_trash_{second.sha256[:16]}").click().run())  # a trashed image's card says so too
    assert project.get(second.sha256) is None
    assert "trash/ folder" in review_card_texts(review_card(at, "rv_undo"))
    ok(at.button(key="rv_undo").click().run())
    assert project.get(second.sha256).class_name == mistakes[1]["true"]


def test_review_a_clicked_cells_images_come_right_after_the_matrix(ws):
    project, run_id = trained(ws)
    project.move([project.images("cats")[0].sha256], "dogs")
    retrain = jobs.start_training(project, retrained_from=run_id)
    assert jobs.wait(jobs.run_path(project, retrain), timeout=60).state == "succeeded"
    at = page(ok(app(project.slug).run()), "ui/pages/review.py")
    assert [e for e in at.expander if e.label.startswith("What changed since run")]  # the open section
    at.session_state["cm"] = {"selection": {"rows": [], "columns": [], "cells": [(0, "dogs")]}}
    ok(at.run())
    nodes = review_nodes(at.main)
    matrix = next(i for i, n in enumerate(nodes) if getattr(n, "type", "") == "subheader"
                  and n.value == "Confusion matrix")
    cell = next(i for i, n in enumerate(nodes) if getattr(n, "type", "") == "caption"
                and "image(s) of class 'cats' predicted as 'dogs'" in n.value)
    retrain_button = next(i for i, n in enumerate(nodes) if getattr(n, "key", None) == "review_retrain")
    changed = next(i for i, n in enumerate(nodes) if getattr(n, "type", "") == "expander")
    assert matrix < cell < retrain_button < changed


# ----------------------------------------------------------------------------------------------------------------
# Export per target (issue 21): one tab per place the product runs, its snippet with this run's files, its files alone
# ----------------------------------------------------------------------------------------------------------------
TARGET_TABS = ("Android / iOS", "Web page", "Python", "ONNX Runtime", "TF Serving", "TF.js", "Core ML")


@pytest.fixture
def deferred(monkeypatch):
    """The bytes behind a download button whose data is built when it is clicked: deferred(button) -> bytes."""
    from streamlit.runtime.media_file_manager import MediaFileManager

    made = {}
    original = MediaFileManager.add_deferred

    def add_deferred(self, data_callable, *args, **kwargs):
        file_id = original(self, data_callable, *args, **kwargs)
        made[file_id] = data_callable
        return file_id

    monkeypatch.setattr(MediaFileManager, "add_deferred", add_deferred)
    return lambda b: made[b.proto.deferred_file_id]()


def zipped(data: bytes) -> dict[str, bytes]:
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def target_tab(at: AppTest, label: str):
    return next(t for t in at.tabs if t.label == label)


def tab_code(at: AppTest, label: str) -> str:
    return "\n".join(c.value for c in target_tab(at, label).code)


def tab_texts(at: AppTest, label: str) -> str:
    tab = target_tab(at, label)
    return "\n".join(str(e.value) for kind in ("markdown", "caption", "info", "warning", "error", "success")
                     for e in getattr(tab, kind))


def bundle_own(folder: str) -> set[str]:
    """The names engine/bundle/<folder>/ ships under in a bundle (a file kept gzipped ships unpacked, less .gz)."""
    root = REPO / "engine" / "bundle"
    return {p.relative_to(root).as_posix().removesuffix(".gz") for p in (root / folder).rglob("*")
            if p.is_file() and not any(x.startswith(".") or x == "__pycache__" for x in p.relative_to(root).parts)}


def bundle_own_bytes(name: str) -> bytes:
    import gzip

    path = REPO / "engine" / "bundle" / name
    return path.read_bytes() if path.exists() else gzip.decompress(path.with_name(path.name + ".gz").read_bytes())


def target_download(at: AppTest, key: str):
    found = [b for b in at.get("download_button") if b.key == f"dl_target_{key}"]
    return found[0] if found else None


def exported_run(ws, onnx: dict | None):
    """A fake-engine run whose card says what a real export's does (size, SavedModel signatures, ONNX)."""
    project, run_id = trained(ws)
    run_dir = jobs.run_path(project, run_id)
    card = json.loads((run_dir / "model_card.json").read_text())
    card.update(image_size=260, preprocessing={"center_crop": True},
                saved_model={"dir": "saved_model", "bytes_signature": {"name": "serving_bytes"}})
    if onnx is not None:
        card["onnx"] = onnx
    (run_dir / "model_card.json").write_text(json.dumps(card))
    if onnx and onnx.get("file"):
        (run_dir / "model.onnx").write_bytes(b"ONNX model")
    return project, run_dir


def test_export_has_a_tab_per_target_with_its_snippet_and_only_its_files(ws, deferred):
    project, run_dir = exported_run(ws, {"file": "model.onnx", "opset": 15})
    at = page(ok(app(project.slug).run()), "ui/pages/export.py")
    assert [t.label for t in at.tabs] == list(TARGET_TABS)

    mobile = tab_code(at, "Android / iOS")
    assert 'ImageClassifier.createFromFile(context, "model_float32.tflite")' in mobile  # Kotlin
    assert 'path(forResource: "model_float32", ofType: "tflite")' in mobile  # Swift
    assert 'create_from_model_path("model_float32.tflite")' in mobile  # Python
    assert '"cats" or "dogs"' in mobile
    web = tab_code(at, "Web page")
    assert "python serve.py --port 8080" in web and "http://127.0.0.1:8080/app" in web
    in_browser = (REPO / "engine" / "bundle" / "web" / "index.html").exists()  # the bundle's in-browser page
    assert ("http://127.0.0.1:8080/web/" in web) == in_browser
    assert 'ort.InferenceSession.create("model.onnx")' in web and "[1, 260, 260, 3]" in web
    assert "python -m engine serve --bundle" in web
    python = tab_code(at, "Python")
    assert "python predict.py photo.jpg" in python
    assert 'predict.make_interpreter("model_float32.tflite")' in python
    assert 'predict.prepare("photo.jpg", 260, center_crop=True)' in python
    onnx = tab_code(at, "ONNX Runtime")
    assert 'ort.InferenceSession("model.onnx")' in onnx and '{"images": x}' in onnx and "resize((260, 260))" in onnx
    assert "cropped to a centred square" in tab_texts(at, "ONNX Runtime")
    serving = tab_code(at, "TF Serving")
    assert '"$PWD/saved_model:/models/classifier/1"' in serving and "tensorflow/serving" in serving
    assert '"signature_name": "serving_bytes"' in serving and "/v1/models/classifier:predict" in serving
    assert "p(cats), p(dogs)" in serving

    # each download holds exactly its files, with the run's bytes
    models = {"model_float32.tflite", "model_dynamic.tflite", "model_int8.tflite"}
    www = {f"www/{p.name}" for p in (REPO / "engine" / "bundle" / "www").iterdir()
           if p.is_file() and not p.name.startswith(".")}
    www |= bundle_own("web") if in_browser else set()  # with model.onnx, which the in-browser page runs
    expected = {
        "mobile": models | {"labels.txt"},
        "python": models | {"labels.txt", "model_card.json", "predict.py", "requirements.txt"},
        "web": models | www | {"labels.txt", "model_card.json", "predict.py", "serve.py", "requirements.txt",
                               "requirements-serve.txt", "Dockerfile", "model.onnx"},
        "onnx": {"model.onnx", "labels.txt", "model_card.json"},
        "tfserving": {"saved_model/saved_model.pb", "labels.txt"},
    }
    for key, names in expected.items():
        button = target_download(at, key)
        assert button is not None, key
        files = zipped(deferred(button))
        assert set(files) == names, key
        for name, data in files.items():
            assert data == ((run_dir / name).read_bytes() if (run_dir / name).exists() else bundle_own_bytes(name)), \
                (key, name)
    # the whole bundle is still offered above the tabs
    assert any(b.label.startswith("Download everything (bundle.zip") for b in at.get("download_button"))


@pytest.mark.parametrize("onnx, says", [
    ({"file": None, "why_not": "the backbone could not be converted to ONNX (ValueError: op *Foo*)"},
     "This run has no model.onnx: the backbone could not be converted to ONNX (ValueError: op *Foo*)."),
    (None, "This run has no model.onnx: it was exported before Retrain Studio made ONNX models"),
])
def test_export_without_model_onnx_says_why_instead_of_a_download(ws, deferred, onnx, says):
    project, run_dir = exported_run(ws, onnx)
    at = page(ok(app(project.slug).run()), "ui/pages/export.py")
    assert literal(says) in tab_texts(at, "ONNX Runtime")
    assert target_download(at, "onnx") is None and tab_code(at, "ONNX Runtime") == ""  # no snippet for no file
    assert "which this run lacks" in tab_texts(at, "Web page")
    assert "onnxruntime-web" not in tab_code(at, "Web page") and "/web/" not in tab_code(at, "Web page")
    served = set(zipped(deferred(target_download(at, "web"))))  # the server and its pages, not the in-browser one
    assert "serve.py" in served and not [n for n in served if n.startswith("web/") or n == "model.onnx"]
    assert target_download(at, "mobile") is not None  # the other targets are offered as before


def test_export_targets_without_a_saved_model_or_tflite_say_so(ws):
    import shutil

    project, run_dir = exported_run(ws, {"file": "model.onnx"})
    shutil.rmtree(run_dir / "saved_model")
    for name in ("model_float32.tflite", "model_dynamic.tflite", "model_int8.tflite"):
        (run_dir / name).unlink()
    at = page(ok(app(project.slug).run()), "ui/pages/export.py")
    assert literal("This run has no saved_model/ folder.") in tab_texts(at, "TF Serving")
    assert literal("This run has no .tflite model.") in tab_texts(at, "Android / iOS")
    assert [k for k in ("mobile", "python", "web", "tfserving") if target_download(at, k)] == []
    assert target_download(at, "onnx") is not None


@pytest.fixture
def extras_started(monkeypatch):
    """start_extra records the request and stores a "running" status as the background process would (the real
    conversions run in tests/test_extras.py); statuses are the real files the page reads."""
    from engine.export import extras
    from engine.runs import extras as background

    started = []

    def start_extra(run_dir, name):
        if name == "coreml":
            raise ValueError("Making Core ML models needs coremltools==9.0: pip install coremltools==9.0")
        started.append((Path(run_dir), name))
        return extras.write_status(run_dir, name, state="running", progress=0.4, message="Converting the SavedModel",
                                   files=[], started=time.time(), pid=os.getpid(),
                                   proc_start=process_start_time(os.getpid()))

    monkeypatch.setattr(background, "start_extra", start_extra)
    return started


def test_export_makes_tfjs_and_core_ml_on_request(ws, deferred, extras_started):
    from engine.export import extras

    project, run_dir = exported_run(ws, {"file": "model.onnx"})
    at = page(ok(app(project.slug).run()), "ui/pages/export.py")
    assert at.button(key="make_tfjs").label == "Make it" and at.button(key="make_coreml").label == "Make it"
    assert "tf.loadGraphModel(" in tab_code(at, "TF.js") and "ct.models.MLModel(" in tab_code(at, "Core ML")
    assert target_download(at, "tfjs") is None

    ok(at.button(key="make_tfjs").click().run())
    assert extras_started == [(run_dir, "tfjs")]
    (bar,) = target_tab(at, "TF.js").get("progress")
    assert bar.proto.value == 40 and "Converting the SavedModel" in bar.proto.text
    assert not [b for b in at.button if b.key == "make_tfjs"]  # no second start while it runs

    (run_dir / "tfjs").mkdir()
    (run_dir / "tfjs" / "model.json").write_text("{}")
    (run_dir / "tfjs" / "group1-shard1of1.bin").write_bytes(b"weights")
    extras.write_status(run_dir, "tfjs", state="done", message="The TensorFlow.js model is ready (made in 20 s).",
                        files=["tfjs/model.json", "tfjs/group1-shard1of1.bin"], progress=1.0)
    ok(at.run())
    assert literal("The TensorFlow.js model is ready (made in 20 s).") in tab_texts(at, "TF.js")
    assert 'tf.loadGraphModel("tfjs/model.json")' in tab_code(at, "TF.js")
    assert set(zipped(deferred(target_download(at, "tfjs")))) == {"tfjs/model.json", "tfjs/group1-shard1of1.bin",
                                                                  "labels.txt"}

    # a refusal says so where the button is; the page goes on
    ok(at.button(key="make_coreml").click().run())
    assert literal("Making Core ML models needs coremltools==9.0") in tab_texts(at, "Core ML")
    # a failure is shown with its words, and "Make it" is offered again
    extras.write_status(run_dir, "coreml", state="failed", message="Making the Core ML model failed: out of memory",
                        files=[], progress=None)
    ok(at.run())
    assert literal("Making the Core ML model failed: out of memory") in tab_texts(at, "Core ML")
    assert not at.button(key="make_coreml").disabled


def test_export_without_coremltools_says_what_to_install(ws, monkeypatch):
    from engine.export import coreml_model

    monkeypatch.setattr(coreml_model, "converter_installed", lambda: False)
    project, run_dir = exported_run(ws, {"file": "model.onnx"})
    at = page(ok(app(project.slug).run()), "ui/pages/export.py")
    assert literal("pip install coremltools==9.0") in tab_texts(at, "Core ML")
    assert at.button(key="make_coreml").disabled
    assert "Core ML" in tab_texts(at, "Core ML")  # when to pick it is said all the same
    assert not at.button(key="make_tfjs").disabled  # TF.js needs only TensorFlow
