"""Driving the app in a real browser: Debian's Chromium through Playwright, for the browser test modules (their
fixtures, app_server, watch and browser_page, are in conftest.py).

Importing this module skips the importing test module when Playwright or Chromium is missing (no `playwright
install`: the browser is /usr/bin/chromium from `apt-get install chromium`). Every step waits for the app to be
idle (act/click/settle: no script or fragment run in flight) instead of sleeping or retrying, and every page
visited must make no request to another host (Watch) and show no traceback. Screenshots go to
artifacts/screenshots/ (gitignored).
"""

from __future__ import annotations

import importlib.util
import os
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "artifacts" / "screenshots"
CHROMIUM = os.environ.get("RETRAIN_STUDIO_CHROMIUM", "/usr/bin/chromium")
FAKE_CAMERA = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]  # a camera, no prompt
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-quic", "--disable-dev-shm-usage"]
SHARED_FLOWERS = Path(os.environ.get("RETRAIN_SHARED_DATASETS", REPO.parent / "shared" / "datasets")) / "flowers"

if importlib.util.find_spec("playwright") is None:
    pytest.skip("playwright is not installed (pip install -r requirements-browser.txt)", allow_module_level=True)
if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)", allow_module_level=True)

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402
from playwright.sync_api import TimeoutError as PlaywrightTimeout  # noqa: E402

from engine.data.demo import make_demo_dataset  # noqa: E402

# Counts script runs: each time the app's root element enters the "running" state. Lets a step wait for the rerun
# its own click caused, not just for a moment of quiet before that rerun has even started.
COUNT_RUNS = """
window.__stRuns = 0;
new MutationObserver((mutations) => {
  for (const m of mutations) {
    if (m.target.getAttribute && m.target.getAttribute('data-test-script-state') === 'running') window.__stRuns++;
  }
}).observe(document, {subtree: true, attributes: true, attributeFilter: ['data-test-script-state']});
"""
# Idle: connected, no script (or fragment) run in flight, no running indicator in the status widget.
IDLE = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  return !!app && app.getAttribute('data-test-connection-state') === 'CONNECTED'
    && app.getAttribute('data-test-script-state') === 'notRunning'
    && !document.querySelector('[data-testid="stStatusWidgetRunningIcon"]');
}"""


@contextmanager
def open_page(watch: Watch) -> Iterator[Page]:
    """One headless Chromium page for a module's steps, its requests and console watched."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        # a fake camera, allowed without a prompt: st.camera_input works headless
        args = [*CHROMIUM_ARGS, *FAKE_CAMERA]
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=args, headless=True)
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        context.set_default_timeout(30_000)
        context.add_init_script(COUNT_RUNS)
        context.on("request", watch.request)
        page = context.new_page()
        page.on("console", watch.console)
        try:
            yield page
        finally:
            context.close()
            browser.close()


class Watch:
    """What the browser did that an offline app must not do: requests to other hosts, chart warnings."""

    def __init__(self, server: str):
        self.host = urllib.parse.urlsplit(server).netloc
        self.outside: list[str] = []
        self.chart_warnings: list[str] = []

    def request(self, request) -> None:
        url = urllib.parse.urlsplit(request.url)
        if url.scheme in ("data", "blob", "about") or url.netloc == self.host:
            return
        self.outside.append(f"{request.method} {request.url}")

    def console(self, message) -> None:
        if "Infinite extent" in message.text:
            self.chart_warnings.append(message.text)

    def check(self, where: str) -> None:
        assert not self.outside, f"requests to outside hosts on {where}: {self.outside}"


def settle(page: Page, timeout: float = 60_000) -> None:
    """Wait until the app is idle, and still idle a moment later (a queued rerun starts within that moment)."""
    page.wait_for_function(IDLE, timeout=timeout, polling=50)
    page.wait_for_timeout(150)
    page.wait_for_function(IDLE, timeout=timeout, polling=50)


def act(page: Page, action, rerun: bool = True, timeout: float = 60_000) -> None:
    """Wait for idle, act, then wait for the rerun the action causes (if any) to start and finish."""
    settle(page, timeout)
    runs = page.evaluate("window.__stRuns")
    action()
    if rerun:
        try:
            page.wait_for_function(f"window.__stRuns > {runs}", timeout=3_000, polling=20)
        except PlaywrightTimeout:
            pass  # the rerun was quicker than one animation frame; settle() still waits for idle
    settle(page, timeout)


def click(page: Page, locator, rerun: bool = True) -> None:
    act(page, locator.click, rerun=rerun)


def shot(page: Page, watch: Watch, name: str, show=None) -> None:
    """A screenshot of the viewport (Streamlit scrolls inside it), scrolled to `show` when given."""
    settle(page)
    if show is not None:
        show.first.evaluate("e => e.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(100)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
    watch.check(name)


def open_expander(page: Page, label: str) -> None:
    """Open an st.expander and wait until its height animation has ended: while it runs, the content is clipped
    and may be resized again (Streamlit restarts it on a content resize), and a click on a widget inside it once
    left a multiselect chip in place (a local run of test_train_review_export)."""
    summary = page.get_by_text(label, exact=True)
    click(page, summary, rerun=False)
    details = page.locator('[data-testid="stExpander"] details').filter(has=summary)
    page.wait_for_function("d => d.open && d.getAnimations().length === 0 && d.style.height === ''",
                           arg=details.element_handle(), polling=50)


def float32_only(page: Page) -> None:
    """Export only the float32 TFLite model (each conversion costs seconds on two cores)."""
    quantize = page.locator(".st-key-cfg_quantize")
    for variant in ("dynamic", "int8"):
        remove = quantize.get_by_role("button", name=f"Remove {variant}")
        click(page, remove, rerun=False)  # a widget in a form: no rerun until the form is submitted
        expect(remove).to_have_count(0)
    expect(quantize.get_by_role("button", name="Remove float32")).to_be_visible()


def goto(page: Page, watch: Watch, app_server: str, path: str, slug: str | None = None) -> None:
    page.goto(f"{app_server}/{path}" + (f"?project={slug}" if slug else ""))
    expect(page.locator('[data-testid="stSidebar"]')).to_be_visible()
    settle(page)
    expect(page.locator('[data-testid="stException"]')).to_have_count(0)  # no traceback on any page
    watch.check(f"/{path}")


def sample_images(tmp_path: Path, per_class: int) -> dict[str, list[Path]]:
    """A few images per class: from ../shared/datasets/flowers (read only) when present, else generated."""
    if SHARED_FLOWERS.is_dir():
        classes = sorted(p for p in SHARED_FLOWERS.iterdir() if p.is_dir())[:2]
        return {c.name: sorted(c.glob("*.jpg"))[:per_class] for c in classes}
    root = make_demo_dataset(tmp_path / "demo", per_class=per_class)
    return {c.name: sorted(c.iterdir())[:per_class] for c in sorted(root.iterdir()) if c.is_dir()}


def classify_a_webcam_frame(page: Page, result, name: str) -> None:
    """The pages' webcam (engine/bundle/www/page.js) with Chromium's fake camera (FAKE_CAMERA): a frame is taken and
    classified like a photo, as `name`."""
    from playwright.sync_api import expect

    page.get_by_role("button", name="Use the webcam").click()
    page.get_by_role("button", name="Take a photo").click()  # enabled once the video has a frame
    expect(result.locator(".file")).to_have_text(name)
    expect(result.locator(".bar")).to_have_count(5)
