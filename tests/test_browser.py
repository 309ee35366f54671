"""The app in a real browser: Debian's Chromium driven by Playwright against `streamlit run app.py` (helpers:
tests/browser_app.py; the app_server and browser fixtures: conftest.py).

The app_server runs with the shipped .streamlit/config.toml (only the port is given). Screenshots of each page go to
artifacts/screenshots/ (gitignored).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from browser_app import (
    REPO,
    Page,
    Watch,
    act,
    click,
    expect,
    float32_only,
    goto,
    open_expander,
    sample_images,
    settle,
    shot,
)

pytestmark = pytest.mark.browser


def test_projects_upload_and_sort(browser_page: Page, app_server: str, watch: Watch, workspace_root: Path,
                                  tmp_path: Path):
    page = browser_page
    # a deep link as the very first request still goes through app.py's navigation
    goto(page, watch, app_server, "data")
    expect(page.get_by_text("No project is open")).to_be_visible()
    expect(page.locator('[data-testid="stSidebarNav"]').get_by_text("Projects")).to_be_visible()
    goto(page, watch, app_server, "")
    expect(page.get_by_text("No projects yet in")).to_be_visible()
    # the page icon is drawn locally (a data: URL), not fetched from a font CDN
    assert page.locator("link[rel='shortcut icon']").get_attribute("href").startswith("data:")
    shot(page, watch, "01-projects-empty")

    page.get_by_label("New project name").fill("Browser flowers")
    click(page, page.get_by_role("button", name="Create project"))
    expect(page.get_by_text("Created project 'Browser flowers'")).to_be_visible()
    from engine.store.names import INBOX
    from engine.store.workspace import Workspace

    ws = Workspace(workspace_root)
    project = ws.open_project("browser-flowers")
    images = sample_images(tmp_path, per_class=4)

    # import a folder: the new project is opened and preselected, the inputs are emptied (no duplicate import)
    src = tmp_path / "import_me"
    for cls, paths in images.items():
        (src / cls).mkdir(parents=True)
        for p in paths[:2]:
            shutil.copy(p, src / cls / p.name)
    page.get_by_label("Path", exact=True).fill(str(src))
    click(page, page.get_by_role("button", name="Import from path"))
    expect(page.get_by_text("Imported into 'import_me'")).to_be_visible()
    expect(page.get_by_role("combobox", name="Open a project")).to_have_value(re.compile(r"import_me"))
    expect(page.get_by_label("Path", exact=True)).to_have_value("")
    expect(page.get_by_label("Project name for the import")).to_have_value("")
    shot(page, watch, "01b-projects-imported")
    click(page, page.get_by_role("button", name="Import from path"))
    expect(page.get_by_text("Nothing found at")).to_be_visible()
    assert sorted(p.slug for p in ws.list_projects()) == ["browser-flowers", "import-me"]

    # upload into the inbox
    goto(page, watch, app_server, "data", project.slug)
    files = [p for paths in images.values() for p in paths]
    act(page, lambda: page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(
        [str(p) for p in files]))
    add = page.get_by_role("button", name=f"Add {len(files)} file(s)")
    expect(add).to_be_enabled()
    click(page, add)
    expect(page.get_by_text(f"{len(files)} added")).to_be_visible()
    assert project.counts()[INBOX] == len(files)
    shot(page, watch, "02-data-uploaded")

    # classes, named after the folders the images came from
    click(page, page.get_by_text("Classes", exact=True))
    for cls in images:
        page.get_by_label("New class").fill(cls)
        click(page, page.get_by_role("button", name="Create class"))
        expect(page.get_by_text(f"Created class '{cls}'")).to_be_visible()
    assert sorted(project.classes()) == sorted(images)

    # keyboard sorting: one key per class
    click(page, page.get_by_text("Sort inbox", exact=True))
    shot(page, watch, "03-data-sort-inbox")
    classes = sorted(images)
    truth = {p.name: cls for cls, paths in images.items() for p in paths}

    def sorted_now(sha: str) -> None:
        deadline = time.time() + 20
        while project.get(sha).class_name is None and time.time() < deadline:
            time.sleep(0.1)

    for _ in range(3):
        rec = project.images(INBOX, limit=1)[0]
        key = str(classes.index(truth[rec.source_name]) + 1)
        page.evaluate("() => document.activeElement && document.activeElement.blur()")
        act(page, lambda key=key: page.keyboard.press(key))
        sorted_now(rec.sha256)
        assert project.get(rec.sha256).class_name == truth[rec.source_name]
    # and the buttons for the rest
    while project.count(INBOX):
        rec = project.images(INBOX, limit=1)[0]
        click(page, page.locator(f".st-key-sort_to_{classes.index(truth[rec.source_name])} button"))
        sorted_now(rec.sha256)
    settle(page)
    expect(page.get_by_text("The inbox is empty")).to_be_visible()
    assert project.counts() == {**{c: len(p) for c, p in images.items()}, INBOX: 0}

    click(page, page.get_by_text("Browse", exact=True))
    expect(page.locator('[data-testid="stImage"]').first).to_be_visible()
    shot(page, watch, "04-data-browse")
    assert project.consistency_check().ok
    watch.check("the Data page")


def test_train_review_export(browser_page: Page, app_server: str, watch: Watch, workspace_root: Path, tmp_path: Path):
    from engine.runs import history, jobs
    from engine.store.names import INBOX
    from engine.store.workspace import Workspace

    page = browser_page
    project = Workspace(workspace_root).create_project("Browser training")
    src = tmp_path / "image_dir"
    for cls, paths in sample_images(tmp_path / "gen", per_class=12).items():
        (src / cls).mkdir(parents=True)
        for p in paths:
            shutil.copy(p, src / cls / p.name)
    project.import_image_dir(src)

    goto(page, watch, app_server, "train", project.slug)
    # advanced options: export only the float32 TFLite model (each conversion costs seconds)
    open_expander(page, "Advanced options")
    float32_only(page)
    shot(page, watch, "05-train-form")
    click(page, page.get_by_role("button", name="Start training"))
    expect(page.get_by_text("Done: validation accuracy")).to_be_visible(timeout=240_000)
    run_id = history.latest_run(project)
    assert run_id is not None
    assert json.loads((jobs.run_path(project, run_id) / "config.json").read_text())["quantize"] == ["float32"]
    expect(page.get_by_text("Loss (train / validation)")).to_be_visible()
    expect(page.locator('[data-testid="stVegaLiteChart"]').first).to_be_visible()
    # the chart's caption says which step was kept, and that a run this quick could not be watched live
    expect(page.get_by_text("training step(s)")).to_be_visible()
    shot(page, watch, "06-train-done", show=page.get_by_text("Loss (train / validation)"))

    goto(page, watch, app_server, "review", project.slug)
    expect(page.get_by_text("Confusion matrix")).to_be_visible()
    expect(page.get_by_role("button", name="Retrain now")).to_be_enabled()
    click(page, page.get_by_text("Low confidence", exact=True))
    shot(page, watch, "07-review")

    # Fix a label from the Review page, then retrain from there: features come from the cache, so it takes seconds.
    act(page, lambda: (page.get_by_role("slider").first.focus(), page.keyboard.press("End")))  # every image
    card_buttons = page.get_by_role("button", name="Move", exact=True)
    expect(card_buttons.first).to_be_visible()
    labels_before = {r.sha256: r.class_name for r in project.images(limit=10_000)}
    click(page, card_buttons.first)
    labels_after = {r.sha256: r.class_name for r in project.images(limit=10_000)}
    shot(page, watch, "07b-review-relabelled")
    assert sum(labels_before[k] != labels_after[k] for k in labels_before) == 1
    assert project.consistency_check().ok

    click(page, page.get_by_role("button", name="Retrain now"))
    changed = page.get_by_text("What changed since run")
    expect(changed).to_be_visible(timeout=240_000)
    (retrain_id,) = {r.run_id for r in history.list_runs(project)} - {run_id}
    assert run_id in changed.inner_text()
    expect(page.get_by_text("Now right", exact=True)).to_be_visible()
    retrain_dir = jobs.run_path(project, retrain_id)
    assert json.loads((retrain_dir / "config.json").read_text())["quantize"] == ["float32"]  # the same settings
    shot(page, watch, "07c-review-what-changed", show=changed)
    assert jobs.wait(retrain_dir, timeout=240).state == "succeeded", history.log_tail(retrain_dir)
    last_embed = [e for e in history.events(retrain_dir) if e.get("type") == "embed"][-1]
    assert last_embed["cached"] == last_embed["total"]  # nothing re-embedded after the relabel

    if (REPO / "ui" / "pages" / "curate.py").exists():  # every page renders, offline, without a traceback
        goto(page, watch, app_server, "curate", project.slug)
    goto(page, watch, app_server, "train", project.slug)
    expect(page.get_by_text("Compare two runs")).to_be_visible()
    shot(page, watch, "08-train-history-compare", show=page.get_by_text("Run history"))
    shot(page, watch, "08b-train-compare-matrices", show=page.get_by_text("Confusion matrices"))

    goto(page, watch, app_server, "export", project.slug)
    button = page.get_by_role("button", name="Download everything (bundle.zip")
    expect(button).to_be_visible()
    expect(page.get_by_text("pip install -r requirements.txt")).to_be_visible()
    if json.loads((retrain_dir / "model_card.json").read_text()).get("tflite"):
        expect(page.get_by_text("Each exported file run on a few labelled images")).to_be_visible()
    shot(page, watch, "09-export")
    with page.expect_download(timeout=60_000) as dl:
        button.click()
    target = tmp_path / "bundle.zip"
    dl.value.save_as(target)
    with zipfile.ZipFile(target) as zf:
        names = zf.namelist()
    assert any(n.endswith("labels.txt") for n in names), names
    assert any(n.endswith(".tflite") for n in names), names
    assert any("saved_model" in n for n in names), names
    # the bundle's own predict.py on a folder of class subfolders: recursive, with the accuracy per class
    unpacked = tmp_path / "bundle"
    with zipfile.ZipFile(target) as zf:
        zf.extractall(unpacked)
    predict_py = next(unpacked.rglob("predict.py"))
    run = subprocess.run([sys.executable, str(predict_py), "--top_k", "1", str(src)], cwd=predict_py.parent,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = run.stdout[run.stdout.index("accuracy per class"):].splitlines()
    assert [line.split()[0] for line in summary[1:]] == [*sorted(p.name for p in src.iterdir()), "all"], summary

    if importlib.util.find_spec("engine.inference.predict") is not None:
        # try a photo, then add it to the data under the class the model predicted (preselected)
        from PIL import Image

        sample = tmp_path / "new_photo.jpg"  # a new photo: re-encoded, so its bytes are not in the project yet
        with Image.open(next(p for p in sorted(src.rglob("*")) if p.is_file())) as im:
            im.convert("RGB").save(sample, quality=80)
        upload = page.locator('.st-key-try_image [data-testid="stFileUploaderDropzoneInput"]')
        act(page, lambda: upload.set_input_files(str(sample)))
        expect(page.get_by_text("Prediction", exact=True)).to_be_visible(timeout=60_000)
        predicted = page.locator('[data-testid="stMetricValue"]').first.inner_text().strip()
        n_before = project.count(predicted)
        add = page.get_by_role("button", name="Add this photo to the data", exact=True)
        click(page, add)
        expect(page.get_by_text(f"Added new_photo.jpg to '{predicted}'")).to_be_visible()
        assert project.count(predicted) == n_before + 1
        shot(page, watch, "10-export-try-add", show=page.get_by_text("Prediction", exact=True))

        # the webcam as a source: Chromium's fake camera
        click(page, page.get_by_text("Camera", exact=True))
        take = page.get_by_role("button", name="Take Photo")
        expect(take).to_be_enabled(timeout=30_000)
        click(page, take)
        expect(page.get_by_text("Prediction", exact=True)).to_be_visible(timeout=60_000)
        n_inbox = project.count(INBOX)
        choose = page.get_by_role("combobox", name="Add this photo to the data as")
        click(page, choose, rerun=False)
        click(page, page.get_by_role("option", name="Unsorted (inbox)"))
        expect(choose).to_have_value("Unsorted (inbox)")
        click(page, page.get_by_role("button", name="Add this photo to the data", exact=True))
        expect(page.get_by_text("to 'Unsorted (inbox)'")).to_be_visible()
        assert project.count(INBOX) == n_inbox + 1
        shot(page, watch, "11-export-camera", show=page.get_by_text("Take a photo"))
        shot(page, watch, "12-export-use-elsewhere", show=page.get_by_text("Use it elsewhere"))
    watch.check("the Export page")
    assert not watch.chart_warnings, watch.chart_warnings[:3]
