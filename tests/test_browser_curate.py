"""The Curate page in a real browser (issue 10): findings with thumbnails, one fix by click, the map.

The server and browser come from conftest.py, the idle-waiting helpers from tests/browser_app.py; screenshots go
to artifacts/screenshots/curate-*.png.
"""

from __future__ import annotations

import pytest
from browser_app import click, expect, goto, shot  # skips this module when Playwright or Chromium is missing
from curate_data import KINDS, altered, drawing, fake_run, jpeg

pytestmark = pytest.mark.browser


def test_curate_page(browser_page, app_server, watch, workspace_root, tmp_path):
    import numpy as np

    from engine.store.workspace import Workspace

    src = tmp_path / "shapes"
    for k, kind in enumerate(("red", "blue", "green")):
        (src / kind).mkdir(parents=True)
        for i in range(8):
            (src / kind / f"{kind}{i}.jpg").write_bytes(jpeg(drawing(kind, 100 * k + i)))
    (src / "blue" / "mislabelled.jpg").write_bytes(jpeg(drawing("red", 999)))
    (src / "green" / "copy_of_red0.jpg").write_bytes(altered(drawing("red", 0)))
    (src / "red" / "blank.jpg").write_bytes(jpeg(np.full((128, 128, 3), 128, np.uint8)))
    project = Workspace(workspace_root).create_project("Curate shapes")
    project.import_image_dir(src)

    page = browser_page
    goto(page, watch, app_server, "curate", project.slug)
    click(page, page.get_by_role("button", name="Check the data"))
    expect(page.get_by_text("looks like red").first).to_be_visible()
    shot(page, watch, "curate-1-label-issues")

    mislabelled = project.find_by_filename("mislabelled.jpg") or next(
        r for r in project.images() if r.source_name == "mislabelled.jpg")
    click(page, page.locator(f".st-key-li_move_{mislabelled.sha256} button"))
    expect(page.get_by_text("Moved 1 image(s) to 'red'")).to_be_visible()
    assert project.get(mislabelled.sha256).class_name == "red"

    sections = page.locator(".st-key-curate_section")
    click(page, sections.get_by_text("Duplicates (1)"))
    expect(page.get_by_text("Label conflict").first).to_be_visible()
    shot(page, watch, "curate-2-duplicates")

    click(page, sections.get_by_text("Map"))
    expect(page.locator('[data-testid="stVegaLiteChart"]').first).to_be_visible()
    page.wait_for_timeout(500)  # let Vega draw before the picture
    shot(page, watch, "curate-3-map")

    # the model-assisted inbox: a trained head (as a run leaves it) suggests classes for unsorted images
    from engine.curate.model import embed_records, project_model
    from engine.learn.crossval import fit_logreg
    from engine.store.names import INBOX

    unsorted = [project.find_by_filename(f"{kind}{i}.jpg") for kind in KINDS for i in (6, 7)]
    project.act([r.sha256 for r in unsorted], INBOX)
    labelled = [r for r in project.images() if r.class_name]
    feats, ok = embed_records(labelled, project_model(project))
    y = np.array([KINDS.index(labelled[i].class_name) for i in ok])
    kernel, bias, _ = fit_logreg(feats, y, 3, 1e-3)
    fake_run(project, list(KINDS), kernel, bias)
    goto(page, watch, app_server, "data", project.slug)
    click(page, page.locator(".st-key-data_section").get_by_text("Sort inbox"))
    click(page, page.locator(".st-key-sort_order").get_by_text("Least confident first"))
    accept = page.locator(".st-key-sort_accept button").first
    expect(accept).to_be_visible()
    page.get_by_text("Accept many suggestions at once").click()
    shot(page, watch, "curate-4-sorter-suggestions")
    before = project.count(INBOX)
    click(page, accept)
    assert project.count(INBOX) == before - 1
