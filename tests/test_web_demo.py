"""The bundle's in-browser demo (engine/bundle/web/, issue 21): the vendored ONNX Runtime Web is the npm package's
files byte for byte, every file the page names ships in the bundle, the bundle's serve.py (and the engine's copy of
it, which sends the repository's gzipped .wasm as it is) serves the page, its runtime and the model files it loads,
and in a real Chromium the page classifies photos as the float32 TFLite model does, asking no other host."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from export_data import CLASSES, SIZE, draw, exported_once, save_rgb
from servers import clean_env, free_port, start, start_bundle_server

from engine.config.training import CENTER_CROP_ASPECT, CENTER_CROP_RULE
from engine.export import bundle as export_bundle
from engine.inference.bundle_files import BUNDLE_SOURCES

WEB = BUNDLE_SOURCES / "web"
[VENDOR] = sorted((WEB / "vendor").iterdir())  # one vendored runtime: onnxruntime-web-<version>
ROW = re.compile(r"^\| `([^`]+)` \| (\d+) \| `([0-9a-f]{64})` \|$", re.M)
WASM = "ort-wasm-simd-threaded.wasm"


def recorded() -> dict[str, tuple[int, str]]:
    """The vendored files' sizes and sha256s as the vendor README records them."""
    return {name: (int(size), sha) for name, size, sha in ROW.findall((VENDOR / "README.md").read_text())}


def vendored_bytes(name: str) -> bytes:
    """A vendored file as the npm package holds it (the .wasm is kept gzipped in the repository)."""
    path = VENDOR / name
    return path.read_bytes() if path.exists() else gzip.decompress((VENDOR / (name + ".gz")).read_bytes())


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# The files (no model, no server)
# ----------------------------------------------------------------------------------------------------------------
def test_the_vendored_runtime_is_the_npm_packages_files_as_recorded():
    files = recorded()
    assert set(files) == {"ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", WASM}, files
    for name, (size, sha) in files.items():
        data = vendored_bytes(name)
        assert (len(data), sha256(data)) == (size, sha), name
    # nothing else in the folder: the three files (the .wasm gzipped), the license and the README
    assert sorted(p.name for p in VENDOR.iterdir()) == sorted(
        ["LICENSE", "README.md", "ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", WASM + ".gz"])
    assert VENDOR.name == "onnxruntime-web-" + re.search(r"ONNX Runtime Web v([\d.]+)",
                                                          vendored_bytes("ort.wasm.min.mjs")[:200].decode())[1]
    assert (VENDOR / "LICENSE").read_text().startswith("MIT License")


def _page_references() -> set[str]:
    """Every file the page loads, as a path in the bundle: index.html's scripts and styles, demo.js's imports and
    fetches, and the runtime files ONNX Runtime Web loads from the folder demo.js points it at."""
    html, js = (WEB / "index.html").read_text(), (WEB / "demo.js").read_text()
    refs = re.findall(r'<(?:script|link)\b[^>]*\b(?:src|href)="([^"]+)"', html)
    refs += re.findall(r'^import .* from "([^"]+)";$', js, re.M)
    refs += re.findall(r'"(\.\./[^"]+)"', js)  # the model files
    [runtime] = re.findall(r'new URL\("([^"]+)", import\.meta\.url\)', js)
    refs += [runtime + name for name in recorded()]
    out = set()
    for ref in refs:
        if ref.startswith("data:"):
            continue
        parts = []
        for part in ("web/" + ref.removeprefix("./")).split("/"):
            if part == "..":
                parts.pop()
            elif part not in ("", "."):
                parts.append(part)
        out.add("/".join(parts))
    return out


def test_every_file_the_page_loads_ships_in_the_bundle_and_the_wasm_unpacked(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "labels.txt").write_text("a\nb\n")
    (out / "model_card.json").write_text(json.dumps({"labels": ["a", "b"], "image_size": 96, "tflite": {}}))
    (out / "model.onnx").write_bytes(b"\x08\x07")  # a stand-in: write_bundle ships model.onnx when the export has one
    bundle = export_bundle.write_bundle(out, tmp_path / "bundle.zip")
    refs = _page_references()
    assert {"web/demo.js", "web/demo.css", "model.onnx", "labels.txt", "model_card.json",
            f"web/vendor/{VENDOR.name}/{WASM}"} <= refs, refs
    with zipfile.ZipFile(bundle) as zf:
        names = set(zf.namelist())
        assert refs <= names, refs - names
        assert not [n for n in names if n.endswith(".gz")]
        for name, (size, sha) in recorded().items():
            data = zf.read(f"web/vendor/{VENDOR.name}/{name}")
            assert (len(data), sha256(data)) == (size, sha), name


def test_the_page_restates_the_centre_crop_rule_and_reads_the_cards():
    js = (WEB / "demo.js").read_text()
    assert float(re.search(r"const CENTER_CROP_ASPECT = ([\d.]+);", js)[1]) == CENTER_CROP_ASPECT
    rule = re.search(r"/more than \(\[0-9\.\]\+\)x/", js)  # the regular expression that reads the card's rule
    assert rule and float(re.search(r"more than ([0-9.]+)x", CENTER_CROP_RULE)[1]) == CENTER_CROP_ASPECT
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js  # labels and file names go in as text only
    assert "numThreads = 1" in js and "wasmPaths = RUNTIME" in js


# ----------------------------------------------------------------------------------------------------------------
# Served (the export the export tests share: tests/export_data.py)
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exp(tmp_path_factory):
    return exported_once(tmp_path_factory)


@pytest.fixture(scope="module")
def bundle(exp, tmp_path_factory) -> Path:
    return export_bundle.write_bundle(exp.out, tmp_path_factory.mktemp("web_bundle") / "dl" / "bundle.zip")


@pytest.fixture(scope="module")
def unpacked(bundle, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("web_unpacked")
    zipfile.ZipFile(bundle).extractall(folder)
    return folder


@pytest.fixture(scope="module")
def server(unpacked, tmp_path_factory):
    srv = start_bundle_server(unpacked, tmp_path_factory.mktemp("web_log") / "server.log", "--threads", "1")
    yield srv
    srv.stop()


def get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


@pytest.mark.slow
def test_the_bundles_server_serves_the_page_its_runtime_and_the_model_files(server, unpacked):
    status, headers, page = get(server.url + "/web/")
    assert status == 200 and headers["content-type"].startswith("text/html"), (status, headers)
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self' 'wasm-unsafe-eval';" in csp, csp
    assert "connect-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval'" not in csp.replace(
        "wasm-unsafe-eval'", "")
    assert page == (unpacked / "web" / "index.html").read_bytes()
    runtime = f"{server.url}/web/vendor/{VENDOR.name}/"
    for name, want in [("ort.wasm.min.mjs", "text/javascript"), ("ort-wasm-simd-threaded.mjs", "text/javascript"),
                       (WASM, "application/wasm")]:
        status, headers, data = get(runtime + name)
        assert status == 200 and headers["content-type"].startswith(want), (name, headers)
        assert sha256(data) == recorded()[name][1] and "content-encoding" not in headers, name
    for name, want in [("model.onnx", "application/octet-stream"), ("labels.txt", "text/plain"),
                       ("model_card.json", "application/json")]:
        status, headers, data = get(f"{server.url}/{name}")
        assert status == 200 and headers["content-type"].startswith(want) and data == (unpacked / name).read_bytes()
        assert get(f"{server.url}/{name}", **{"If-None-Match": headers["etag"]})[0] == 304  # cached, not resent
    status, headers, _ = get(server.url + "/web/demo.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    req = urllib.request.Request(server.url + "/web")  # redirected to the folder, where the page's links resolve
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.url == server.url + "/web/"
    for path in ("/web/nope.js", "/web/%2e%2e/serve.py", "/web/..%2fserve.py", "/predict.py", "/saved_model"):
        status, headers, body = get(server.url + path)
        assert status == 404 and json.loads(body)["status"] == 404, (path, status, body[:200])
    with urllib.request.urlopen(server.url + "/openapi.json", timeout=30) as r:
        paths = set(json.loads(r.read())["paths"])
    assert not [p for p in paths if p.startswith("/web") or p in ("/model.onnx", "/labels.txt", "/model_card.json")]


@pytest.mark.slow
def test_the_engines_server_sends_the_repositorys_gzipped_wasm_and_no_web_turns_it_off(bundle, unpacked, tmp_path):
    """`python -m engine serve` runs engine/bundle/serve.py, beside which the .wasm is only gzipped."""
    assert not (VENDOR / WASM).exists()
    port = free_port()
    srv = start([sys.executable, "-m", "engine", "serve", "--bundle", str(bundle), "--port", str(port)],
                Path(__file__).resolve().parents[1], tmp_path / "engine.log", port, env=clean_env())
    try:
        url = f"{srv.url}/web/vendor/{VENDOR.name}/{WASM}"
        status, headers, data = get(url, **{"Accept-Encoding": "gzip"})
        assert status == 200 and headers["content-encoding"] == "gzip", headers
        assert headers["content-type"] == "application/wasm" and headers["vary"] == "Accept-Encoding"
        assert sha256(gzip.decompress(data)) == recorded()[WASM][1]
        status, headers, data = get(url)  # a client that takes no gzip gets it unpacked
        assert status == 200 and "content-encoding" not in headers and sha256(data) == recorded()[WASM][1]
        assert get(srv.url + "/web/")[0] == 200
    finally:
        srv.stop()
    srv = start_bundle_server(unpacked, tmp_path / "no_web.log", "--no_web", "--threads", "1")
    try:
        for path in ("/web/", "/web", "/model.onnx", "/labels.txt", "/model_card.json", f"/web/vendor/{WASM}"):
            status, _, body = get(srv.url + path)
            assert status == 404 and "--no_web" in json.loads(body)["error"], (path, body)
        assert get(srv.url + "/app")[0] == 200  # the server's own pages stay
    finally:
        srv.stop()


@pytest.mark.slow
@pytest.mark.browser
def test_the_page_classifies_photos_in_chromium_as_the_float32_tflite_model_does(server, exp, unpacked, tmp_path):
    from browser_app import (  # skips this test without Playwright/Chromium
        CHROMIUM,
        CHROMIUM_ARGS,
        FAKE_CAMERA,
        SCREENSHOTS,
        Watch,
        classify_a_webcam_frame,
    )
    from playwright.sync_api import expect, sync_playwright

    from engine.bundle import predict as bundle_predict

    # one validation image of each class at the model's size (the page feeds its pixels as they are), and a photo
    # of another shape, which the page stretches with the browser's filter
    photos = [save_rgb(tmp_path / f"val{i}.png", exp.x_val[i])
              for i in [int(np.flatnonzero(exp.y_val == c)[0]) for c in range(len(CLASSES))]]
    photos.append(save_rgb(tmp_path / "wide circle.jpg", draw(1, np.random.default_rng(5), 300, 420)))
    interpreter = bundle_predict.make_interpreter(str(unpacked / "model_float32.tflite"), num_threads=1)
    want = {p.name: bundle_predict.classify(interpreter, bundle_predict.prepare(p, SIZE, False)) for p in photos}

    watch, errors = Watch(server.url), []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *FAKE_CAMERA], headless=True)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            page.set_default_timeout(60_000)
            page.on("request", watch.request)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
            page.goto(server.url + "/web/")
            expect(page.locator("body")).to_have_attribute("data-state", "ready")  # the model is loaded
            expect(page.locator("#model")).to_have_text(f"{len(CLASSES)} classes: " + ", ".join(CLASSES))
            for photo in photos:
                page.locator("#file").set_input_files(photo)
                result = page.locator("#results .result")
                expect(result.locator(".file")).to_have_text(photo.name)
                expect(page.locator("body")).to_have_attribute("data-state", "ready")
                bars = result.locator(".bar")
                expect(bars).to_have_count(5)
                shown = [(b.locator(".label").text_content(), float(b.get_attribute("data-probability")))
                         for b in bars.all()]
                probs = want[photo.name]
                assert shown[0][0] == CLASSES[int(np.argmax(probs))], (photo.name, shown, probs)
                # the same pixels give the same probabilities; a resized photo differs by the resizing filter only
                tol = 1e-3 if photo.suffix == ".png" else 0.05
                for label, p in shown:
                    assert abs(p - probs[CLASSES.index(label)]) < tol, (photo.name, shown, probs)
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "web-demo.png"), full_page=True)
            classify_a_webcam_frame(page, result, "webcam.png")
        finally:
            browser.close()
    assert not errors, errors
    watch.check("/web/")
