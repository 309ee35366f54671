"""Two people on one project, in two real browser contexts (two sessions) against one `streamlit run app.py`.

They sort the same inbox (each is shown other images: leases), act on the same stale Browse selection (the later
action is refused and named, never silently applied), undo their own step, and one trains while the other moves the
run's images (the run trains on its snapshot and succeeds). After each phase every file is checked by SHA-256:
nothing lost, nothing duplicated, index and folders agree.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import browser_app as tb  # skips this module when Playwright or Chromium is missing
import numpy as np
import pytest
from PIL import Image

from engine.runs import history, jobs
from engine.store.names import INBOX
from engine.store.workspace import Project, Workspace

pytestmark = pytest.mark.browser

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402 - after browser_app's skip checks

RUN_SEED = int.from_bytes(os.urandom(3), "little")  # new pictures each time: the run has to embed them


def png(seed: int) -> bytes:
    rng = np.random.default_rng([RUN_SEED, seed])
    arr = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
    arr[..., seed % 3] = 255  # a colour per class-ish, so training has something to learn
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def every_file(project: Project) -> list[str]:
    """SHA-256 of every image file in the project (classes, inbox, trash), duplicates included."""
    folders = [project.images_dir, project.inbox_dir, project.trash_dir]
    return sorted(hashlib.sha256(p.read_bytes()).hexdigest() for folder in folders for p in folder.rglob("*")
                  if p.is_file() and not p.name.startswith("."))


def check_nothing_lost(project: Project, originals: set[str]) -> None:
    files = every_file(project)
    assert sorted(originals) == files, "a file was lost or duplicated"
    assert project.consistency_check().ok


def versions(project: Project) -> dict[str, int]:
    with sqlite3.connect(project.db_path) as db:
        return dict(db.execute("SELECT sha256, version FROM images"))


@pytest.fixture(scope="module")
def two(app_server) -> Iterator[tuple[Page, Page]]:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=tb.CHROMIUM, args=tb.CHROMIUM_ARGS, headless=True)
        pages = []
        for _ in range(2):  # two contexts: two cookie jars, two Streamlit sessions, like two people
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.set_default_timeout(30_000)
            context.add_init_script(tb.COUNT_RUNS)
            pages.append(context.new_page())
        try:
            yield pages[0], pages[1]
        finally:
            browser.close()


def open_page(page: Page, app_server: str, path: str, slug: str) -> None:
    page.goto(f"{app_server}/{path}?project={slug}")
    expect(page.locator('[data-testid="stSidebar"]')).to_be_visible()
    tb.settle(page)


def embedding_run(project: Project, timeout: float = 60) -> tuple[Path, int]:
    """The project's new run and its process, once the run reports that it embeds its images (events.jsonl)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        run_id = jobs.active_run(project)
        if run_id is not None:
            run_dir = jobs.run_path(project, run_id)
            if any(e.get("stage") == "embed" for e in history.events(run_dir)):
                return run_dir, int(json.loads((run_dir / "status.json").read_text())["pid"])
        time.sleep(0.02)
    raise AssertionError(f"no run of {project.slug} reached its embedding stage within {timeout} s")


def section(page: Page, name: str) -> None:
    tb.click(page, page.get_by_text(name, exact=True).first)


def test_two_people_sort_browse_and_train_on_one_project(two, app_server, workspace_root):
    a, b = two
    project = Workspace(workspace_root).create_project("Together")
    for k, cls in enumerate(("red", "green")):
        project.add_files([(f"{cls}{i}.png", png(10 * i + k)) for i in range(8)], cls)
    project.add_files([(f"new{i}.png", png(500 + i)) for i in range(6)])
    originals = {r.sha256 for r in project.images()}
    inbox = [r.sha256 for r in project.images(INBOX)]

    # --- sorting at once: each session is shown an image nobody else is looking at ---------------------------------
    for page in (a, b):
        open_page(page, app_server, "data", project.slug)
        section(page, "Sort inbox")
    tb.SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    a.screenshot(path=str(tb.SCREENSHOTS / "together-1-sorter-a.png"))
    b.screenshot(path=str(tb.SCREENSHOTS / "together-1-sorter-b.png"))
    with sqlite3.connect(project.db_path) as db:
        leases = db.execute("SELECT sha256, session FROM leases").fetchall()
    assert len({s for s, _ in leases}) == 2 and len({sess for _, sess in leases}) == 2
    for _ in range(3):  # each presses a class button on the page as it is; neither page is refreshed first
        tb.click(a, a.locator(".st-key-sort_to_1 button"))  # red (classes in name order: green, red)
        tb.click(b, b.locator(".st-key-sort_to_0 button"))  # green
    assert project.count(INBOX) == 0 and project.count("red") == 11 and project.count("green") == 11
    assert all(versions(project)[s] == 1 for s in inbox)  # every image sorted exactly once: nothing overwritten
    # A's page was drawn while B still held the last image: it said so, and offers to look again
    expect(a.get_by_text("being sorted by someone else right now")).to_be_visible()
    tb.click(a, a.get_by_role("button", name="Check again"))
    expect(a.get_by_text("The inbox is empty")).to_be_visible()
    check_nothing_lost(project, originals)

    # --- a stale Browse selection: both tick the same image, A moves it, B's "Delete 1" is refused -----------------
    for page in (a, b):
        section(page, "Browse")  # shows "green", the first class, since the inbox is empty
        tb.click(page, page.locator('.st-key-browse_grid [data-testid="stCheckbox"] label').first)
    first = project.images("green")[0]
    tb.click(a, a.get_by_role("button", name="Move 1"))  # to the inbox, the first destination
    assert project.get(first.sha256).class_name is None
    expect(a.get_by_text("Moved 1 image(s) to Unsorted (inbox).").first).to_be_visible()
    tb.click(b, b.get_by_role("button", name="Delete 1"))
    expect(b.get_by_text("already moved to the inbox by someone else").first).to_be_visible()
    b.screenshot(path=str(tb.SCREENSHOTS / "together-2-browse-refused.png"), full_page=True)
    assert project.get(first.sha256).class_name is None and not project.trashed()
    # A's undo reverts A's own last step (nobody changed the image since); B's refused delete left nothing to undo
    tb.click(a, a.get_by_role("button", name=re.compile(r"^Undo \(4\)")))  # 3 sorting steps, then this move
    assert project.get(first.sha256).class_name == "green"
    expect(b.get_by_role("button", name=re.compile(r"^Undo \(3\)"))).to_be_visible()
    check_nothing_lost(project, originals)

    # --- A trains while B keeps moving the run's images ---------------------------------------------------------------
    # New pictures keep the run embedding for a second or more; it is paused (SIGSTOP) as soon as it reports that
    # stage, so B's moves land after its scan and before its end every time. It resumes, reads what is left through
    # its snapshot and must train on the labels it scanned.
    for cls, first_seed in (("red", 1000), ("green", 2000)):
        project.add_files([(f"more_{cls}{i}.png", png(first_seed + i)) for i in range(150)], cls)
    originals = {r.sha256 for r in project.images()}
    labels_at_start = project.labels()
    open_page(b, app_server, "data", project.slug)  # a fresh session for B, on Browse: green
    first_box = b.locator('.st-key-browse_grid [data-testid="stCheckbox"] label').first
    tb.click(b, first_box)
    open_page(a, app_server, "train", project.slug)
    tb.open_expander(a, "Advanced options")
    tb.float32_only(a)
    tb.settle(a)
    a.get_by_role("button", name="Start training").click()  # no waiting for the page: the run is caught below
    run_dir, pid = embedding_run(project)
    os.killpg(pid, signal.SIGSTOP)
    acted = []
    try:
        for _ in range(3):
            tb.click(b, b.get_by_role("button", name="Move 1", exact=True))  # a green image to the inbox
            acted.append(time.time())
            tb.click(b, first_box)
        section(b, "Sort inbox")  # and sorts them back: each changed place twice while the run was paused
        while project.count(INBOX):
            tb.click(b, b.locator(".st-key-sort_to_0 button"))
            acted.append(time.time())
    finally:
        os.killpg(pid, signal.SIGCONT)
    expect(a.get_by_text("Done: validation accuracy")).to_be_visible(timeout=240_000)
    status = jobs.job_status(run_dir)
    assert status.state == "succeeded", status
    scanned = next(e["time"] for e in history.events(run_dir) if e.get("type") == "scan")
    assert acted and all(scanned < t < status.finished for t in acted), ([round(t - scanned, 2) for t in acted],
                                                                         status.finished - scanned)
    snapshot = json.loads((run_dir / "snapshot.json").read_text())
    trained_on = {sha: label for sha, label, _ in snapshot["items"]}
    assert len(trained_on) >= len(labels_at_start) - 1  # at most the one image in the inbox at the scan
    assert all(labels_at_start[sha] == label for sha, label in trained_on.items())
    assert project.labels() == labels_at_start and project.count(INBOX) == 0
    check_nothing_lost(project, originals)
    assert Path(run_dir / "bundle.zip").is_file()
