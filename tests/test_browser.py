"""The app in a real browser: Debian's Chromium driven by Playwright against `streamlit run app.py`.

Screenshots of each page go to artifacts/screenshots/ (gitignored). Needs `pip install playwright` (no
`playwright install`: the browser is /usr/bin/chromium from `apt-get install chromium`); skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "artifacts" / "screenshots"
CHROMIUM = os.environ.get("RETRAIN_STUDIO_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-quic", "--disable-dev-shm-usage"]
SHARED_FLOWERS = Path(os.environ.get("RETRAIN_SHARED_DATASETS", REPO.parent / "shared" / "datasets")) / "flowers"

if importlib.util.find_spec("playwright") is None:
    pytest.skip("playwright is not installed (pip install -r requirements-browser.txt)", allow_module_level=True)
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)", allow_module_level=True)

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _engine_missing() -> str | None:
    for mod in ("engine.cli", "engine.dataset", "engine.export", "engine.demo"):
        if importlib.util.find_spec(mod) is None:
            return f"the training engine is not complete yet ({mod} is missing)"
    return None


@pytest.fixture(scope="module")
def workspace_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("browser_ws")


@pytest.fixture(scope="module")
def server(workspace_root) -> Iterator[str]:
    port = _free_port()
    env = dict(os.environ, RETRAIN_STUDIO_WORKSPACE=str(workspace_root), PYTHONUNBUFFERED="1")
    env.pop("RETRAIN_STUDIO_TRAIN_CMD", None)
    log_path = workspace_root / "streamlit.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
             "--server.headless", "true", "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"streamlit did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture(scope="module")
def browser_page(server) -> Iterator[Page]:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        context.set_default_timeout(30_000)
        page = context.new_page()
        try:
            yield page
        finally:
            context.close()
            browser.close()


def settle(page: Page, timeout: float = 30_000) -> None:
    """Wait until the script run finished (the 'Running...' status widget is gone)."""
    page.wait_for_timeout(300)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " || !document.querySelector('[data-testid=\"stStatusWidget\"]').innerText.includes('Running')",
        timeout=timeout)
    page.wait_for_timeout(200)


def shot(page: Page, name: str) -> None:
    settle(page)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def float32_only(page: Page) -> None:
    """Export only the float32 TFLite model (each conversion costs ~20 s on two cores)."""
    quantize = page.locator(".st-key-cfg_quantize")
    for variant in ("dynamic", "int8"):
        remove = quantize.get_by_role("button", name=f"Remove {variant}")
        for _ in range(3):  # a click that lands while a rerun is in flight can be lost: retry
            if remove.count() == 0:
                break
            remove.click()
            settle(page)
        expect(remove).to_have_count(0)
    expect(quantize.get_by_role("button", name="Remove float32")).to_be_visible()


def goto(page: Page, server: str, path: str, slug: str | None = None) -> None:
    page.goto(f"{server}/{path}" + (f"?project={slug}" if slug else ""))
    expect(page.locator('[data-testid="stSidebar"]')).to_be_visible()
    settle(page)


def sample_images(tmp_path: Path, per_class: int) -> dict[str, list[Path]]:
    """A few images per class: from ../shared/datasets/flowers (read only) when present, else generated."""
    if SHARED_FLOWERS.is_dir():
        classes = sorted(p for p in SHARED_FLOWERS.iterdir() if p.is_dir())[:2]
        return {c.name: sorted(c.glob("*.jpg"))[:per_class] for c in classes}
    if importlib.util.find_spec("engine.demo") is None:
        import numpy as np
        from PIL import Image

        out: dict[str, list[Path]] = {}
        for k, cls in enumerate(("red", "blue")):
            (tmp_path / cls).mkdir(parents=True)
            for i in range(per_class):
                arr = np.random.default_rng(100 * k + i).integers(0, 255, (64, 64, 3), dtype=np.uint8)
                arr[..., 2 * k] = 255
                Image.fromarray(arr).save(tmp_path / cls / f"{cls}{i}.png")
            out[cls] = sorted((tmp_path / cls).glob("*.png"))
        return out
    from engine.demo import make_demo_dataset

    root = make_demo_dataset(tmp_path / "demo", per_class=per_class)
    return {c.name: sorted(c.iterdir())[:per_class] for c in sorted(root.iterdir()) if c.is_dir()}


def test_projects_upload_and_sort(browser_page: Page, server: str, workspace_root: Path, tmp_path: Path):
    page = browser_page
    # a deep link as the very first request still goes through app.py's navigation
    goto(page, server, "data")
    expect(page.get_by_text("No project is open")).to_be_visible()
    expect(page.locator('[data-testid="stSidebarNav"]').get_by_text("Projects")).to_be_visible()
    goto(page, server, "")
    expect(page.get_by_text("No projects yet in")).to_be_visible()
    shot(page, "01-projects-empty")

    page.get_by_label("New project name").fill("Browser flowers")
    page.get_by_role("button", name="Create project").click()
    expect(page.get_by_text("Created project 'Browser flowers'")).to_be_visible()
    from engine.workspace import INBOX, Workspace

    project = Workspace(workspace_root).open_project("browser-flowers")

    # upload into the inbox
    images = sample_images(tmp_path, per_class=4)
    goto(page, server, "data", project.slug)
    files = [p for paths in images.values() for p in paths]
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files([str(p) for p in files])
    add = page.get_by_role("button", name=f"Add {len(files)} file(s)")
    expect(add).to_be_enabled()
    add.click()
    expect(page.get_by_text(f"{len(files)} added")).to_be_visible()
    assert project.counts()[INBOX] == len(files)
    shot(page, "02-data-uploaded")

    # classes, named after the folders the images came from
    page.get_by_text("Classes", exact=True).click()
    settle(page)
    for cls in images:
        page.get_by_label("New class").fill(cls)
        page.get_by_role("button", name="Create class").click()
        expect(page.get_by_text(f"Created class '{cls}'")).to_be_visible()
    assert sorted(project.classes()) == sorted(images)

    # keyboard sorting: one key per class
    page.get_by_text("Sort inbox", exact=True).click()
    settle(page)
    shot(page, "03-data-sort-inbox")
    classes = sorted(images)
    truth = {p.name: cls for cls, paths in images.items() for p in paths}
    for _ in range(3):
        rec = project.images(INBOX, limit=1)[0]
        key = str(classes.index(truth[rec.source_name]) + 1)
        page.evaluate("() => document.activeElement && document.activeElement.blur()")
        page.keyboard.press(key)
        deadline = time.time() + 20
        while project.get(rec.sha256).class_name is None and time.time() < deadline:
            time.sleep(0.2)
        assert project.get(rec.sha256).class_name == truth[rec.source_name]
        settle(page)
    # and the buttons for the rest
    while project.count(INBOX):
        rec = project.images(INBOX, limit=1)[0]
        page.locator(f".st-key-sort_to_{classes.index(truth[rec.source_name])} button").click()
        deadline = time.time() + 20
        while project.get(rec.sha256).class_name is None and time.time() < deadline:
            time.sleep(0.2)
        settle(page)
    expect(page.get_by_text("The inbox is empty")).to_be_visible()
    assert project.counts() == {**{c: len(p) for c, p in images.items()}, INBOX: 0}

    page.get_by_text("Browse", exact=True).click()
    settle(page)
    expect(page.locator('[data-testid="stImage"]').first).to_be_visible()
    shot(page, "04-data-browse")
    assert project.consistency_check().ok


def test_train_review_export(browser_page: Page, server: str, workspace_root: Path, tmp_path: Path):
    reason = _engine_missing()
    if reason:
        pytest.skip(f"training in the browser skipped: {reason}")
    from engine import jobs
    from engine.workspace import Workspace

    page = browser_page
    project = Workspace(workspace_root).create_project("Browser training")
    src = tmp_path / "image_dir"
    for cls, paths in sample_images(tmp_path / "gen", per_class=12).items():
        (src / cls).mkdir(parents=True)
        for p in paths:
            shutil.copy(p, src / cls / p.name)
    project.import_image_dir(src)

    goto(page, server, "train", project.slug)
    # advanced options: export only the float32 TFLite model (each conversion costs ~20 s on two cores)
    page.get_by_text("Advanced options").click()
    float32_only(page)
    shot(page, "05-train-form")
    page.get_by_role("button", name="Start training").click()
    expect(page.get_by_text("Done: validation accuracy")).to_be_visible(timeout=240_000)
    run_id = jobs.latest_run(project)
    assert run_id is not None
    assert json.loads((jobs.run_path(project, run_id) / "config.json").read_text())["quantize"] == ["float32"]
    expect(page.get_by_text("Loss (train / validation)")).to_be_visible()
    expect(page.locator('[data-testid="stVegaLiteChart"]').first).to_be_visible()
    shot(page, "06-train-done")

    goto(page, server, "review", project.slug)
    expect(page.get_by_text("Confusion matrix")).to_be_visible()
    page.get_by_text("Low confidence", exact=True).click()
    settle(page)
    shot(page, "07-review")

    # Fix a label from the Review page, then retrain: the features come from the cache, so it takes seconds.
    page.get_by_role("slider").first.focus()
    page.keyboard.press("End")  # confidence below 100%: every validation image is listed
    settle(page)
    card_buttons = page.get_by_role("button", name="Move", exact=True)
    expect(card_buttons.first).to_be_visible()
    labels_before = {r.sha256: r.class_name for r in project.images(limit=10_000)}
    card_buttons.first.click()
    settle(page)
    for _ in range(50):  # the move lands when the click's rerun runs
        labels_after = {r.sha256: r.class_name for r in project.images(limit=10_000)}
        if labels_after != labels_before:
            break
        page.wait_for_timeout(200)
    shot(page, "07b-review-relabelled")
    assert sum(labels_before[k] != labels_after[k] for k in labels_before) == 1
    assert project.consistency_check().ok

    goto(page, server, "train", project.slug)
    settle(page)
    page.get_by_text("Advanced options").click()
    float32_only(page)
    page.get_by_role("button", name="Start training").click()
    deadline = time.time() + 240
    while time.time() < deadline and jobs.latest_run(project) == run_id:
        page.wait_for_timeout(500)
    retrain_id = jobs.latest_run(project)
    assert retrain_id != run_id, "the retrain did not finish"
    expect(page.get_by_text("Done: validation accuracy")).to_be_visible(timeout=30_000)
    retrain_events = jobs.events(jobs.run_path(project, retrain_id))
    last_embed = [e for e in retrain_events if e.get("type") == "embed"][-1]
    assert last_embed["cached"] == last_embed["total"]  # nothing re-embedded after the relabel

    goto(page, server, "export", project.slug)
    button = page.get_by_role("button", name="Download everything (bundle.zip")
    expect(button).to_be_visible()
    shot(page, "08-export")
    with page.expect_download(timeout=60_000) as dl:
        button.click()
    target = tmp_path / "bundle.zip"
    dl.value.save_as(target)
    with zipfile.ZipFile(target) as zf:
        names = zf.namelist()
    assert any(n.endswith("labels.txt") for n in names), names
    assert any(n.endswith(".tflite") for n in names), names
    assert any("saved_model" in n for n in names), names

    if importlib.util.find_spec("engine.predict") is not None:
        sample = next(p for p in sorted(src.rglob("*")) if p.is_file())
        page.locator('.st-key-try_image [data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(sample))
        expect(page.get_by_text("Prediction", exact=True)).to_be_visible(timeout=60_000)
        shot(page, "09-export-try")
