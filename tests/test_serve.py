"""HTTP server (issue 4): real HTTP against serve.py started from an unpacked bundle on a free loopback port.

The server runs in a subprocess whose working folder is the unpacked bundle and whose PYTHONPATH does not hold the
repo, so it can only use what the bundle ships; /v1/model reports that neither TensorFlow nor the engine got
imported. The bundle is made from the export the export tests share (tests/export_data.py).
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, shared_dataset
from export_data import CLASSES, SIZE, draw, exported_once
from servers import Server, clean_env, curl_upload, free_port, multipart, request, start, start_bundle_server

from engine.data.demo import _png_header_only, bad_file_corpus
from engine.export.bundle import write_bundle
from engine.inference.bundle_files import BUNDLE_SOURCES

try:  # requirements-dev.txt; without it the spec test is skipped, the rest still runs
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
except ImportError:
    schemathesis = None

# Limits of the main test server, small so the bad-input tests stay cheap.
LIMITS = ["--max_upload_mb", "2", "--max_zip_files", "20", "--max_zip_mb", "4", "--threads", "2"]


# ----------------------------------------------------------------------------------------------------------------
# Helpers: multipart requests with the standard library only (server processes: tests/servers.py)
# ----------------------------------------------------------------------------------------------------------------
def upload(server: Server, path: str, filename: str, data: bytes, field: str = "upload") -> tuple[int, dict]:
    return request(server.url + path, *multipart({field: (filename, data)}))


def encode(rgb: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return buf.getvalue()


def assert_error(status: int, body: dict, want: int) -> None:
    assert status == want, body
    assert isinstance(body.get("error"), str) and body["error"] and body["status"] == want, body


# ----------------------------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A real bundle zip of the export the export tests share (composed, every variant: seconds, not a conversion)."""
    root = tmp_path_factory.mktemp("serve_bundle")
    return write_bundle(exported_once(tmp_path_factory).out, root / "dl" / "bundle.zip")


@pytest.fixture(scope="module")
def unpacked(bundle, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("unpacked")
    zipfile.ZipFile(bundle).extractall(folder)
    return folder


@pytest.fixture(scope="module")
def server(unpacked, tmp_path_factory):
    srv = start_bundle_server(unpacked, tmp_path_factory.mktemp("serve_log") / "server.log", *LIMITS)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def images() -> dict[int, bytes]:
    """One image per class, not model-sized, as JPEG or PNG."""
    rng = np.random.default_rng(21)
    return {c: encode(draw(c, rng, 200 + 20 * c, 260), ".png" if c % 2 else ".jpg") for c in range(len(CLASSES))}


# ----------------------------------------------------------------------------------------------------------------
# Endpoints
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_server_runs_from_the_bundle_alone(server, unpacked):
    status, info = request(server.url + "/v1/model")
    assert status == 200
    runtime = info["runtime"]
    assert runtime["tensorflow_imported"] is False and runtime["engine_imported"] is False, runtime
    assert runtime["interpreter"].startswith(("ai_edge_litert", "tflite_runtime")), runtime
    assert "tensorflow imported: False, engine imported: False" in server.output()
    assert {"serve.py", "predict.py", "requirements-serve.txt"} <= {p.name for p in unpacked.iterdir()}


@pytest.mark.slow
def test_classify_answers_in_the_seed_shape_with_both_spellings(server, images):
    for cls, data in images.items():
        name = f"class {cls}.{'png' if cls % 2 else 'jpg'}"
        status, body = upload(server, "/classify", name, data)
        assert status == 200, body
        assert list(body) == [name]
        preds = body[name]["preds"]
        # the seed shape, plus "unknown" (issue 9: the card of this bundle has no threshold, so never)
        assert list(body[name]) == ["preds", "unknown"] and len(preds) == 5 and body[name]["unknown"] is False
        assert preds[0]["tagName"] == CLASSES[cls]
        for p in preds:
            assert set(p) == {"tagName", "probablity", "probability"} and p["probablity"] == p["probability"]
        probs = [p["probability"] for p in preds]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-3)
        assert {p["tagName"] for p in preds} == set(CLASSES)


@pytest.mark.slow
def test_classify_a_zip_classifies_each_image_and_skips_the_rest_with_a_reason(server, images):
    members = {"photos/circle.png": images[1], "photos/sub/stripes.jpg": images[0], "checker.png": images[2],
               "__MACOSX/photos/._circle.png": b"\x00\x05\x16\x07", "photos/": b"",
               "../evil.jpg": images[1], "/etc/abs.png": images[1], "C:\\win.png": images[1],
               "notes.txt": b"just some text, not a picture\n" * 3}
    status, body = upload(server, "/classify", "batch.zip", zip_bytes(members))
    assert status == 200, body
    assert set(body) == {"photos/circle.png", "photos/sub/stripes.jpg", "checker.png", "../evil.jpg",
                         "/etc/abs.png", "C:\\win.png", "notes.txt"}
    assert body["photos/circle.png"]["preds"][0]["tagName"] == "red circle"
    assert body["photos/sub/stripes.jpg"]["preds"][0]["tagName"] == "stripes"
    assert body["checker.png"]["preds"][0]["tagName"] == "checker"
    for unsafe in ("../evil.jpg", "/etc/abs.png", "C:\\win.png"):
        assert body[unsafe]["preds"] == [] and "unsafe path" in body[unsafe]["error"]
    assert "not a supported image" in body["notes.txt"]["error"]


@pytest.mark.slow
def test_v1_predict_gives_top_k_model_name_and_latency(server, unpacked, images):
    status, body = request(server.url + "/v1/predict?top_k=2", *multipart({"upload": ("c.png", images[1])}))
    assert status == 200, body
    assert body["model"] == unpacked.name  # the bundle folder's name
    assert body["top_k"] == 2 and body["latency_ms"] > 0
    [result] = body["results"]
    assert result["filename"] == "c.png" and result["error"] is None
    assert [p["label"] for p in result["predictions"]][0] == "red circle" and len(result["predictions"]) == 2
    assert body["threshold"] == 0.0 and result["unknown"] is False  # no threshold in this bundle's card
    top = result["predictions"][0]["probability"]
    for threshold, unknown in ((min(1.0, top + 1e-4), top + 1e-4 <= 1.0), (top / 2, False)):
        status, body = request(server.url + f"/v1/predict?threshold={threshold}",
                               *multipart({"upload": ("c.png", images[1])}))
        assert status == 200 and body["threshold"] == threshold and body["results"][0]["unknown"] is unknown
    status, body = request(server.url + "/v1/predict", *multipart({"upload": ("z.zip", zip_bytes(
        {"a.jpg": images[0], "b.png": images[3]}))}))
    assert status == 200 and body["top_k"] == 5
    assert [r["predictions"][0]["label"] for r in body["results"]] == ["stripes", "blank"]
    status, body = request(server.url + "/v1/predict?top_k=0", *multipart({"upload": ("c.png", images[1])}))
    assert_error(status, body, 422)
    status, body = request(server.url + "/v1/predict?top_k=99", *multipart({"upload": ("c.png", images[1])}))
    assert status == 200 and body["top_k"] == len(CLASSES)


@pytest.mark.slow
def test_healthz_model_and_openapi(server):
    status, health = request(server.url + "/healthz")
    assert status == 200 and health["status"] == "ok"
    status, info = request(server.url + "/v1/model")
    assert status == 200
    assert info["labels"] == CLASSES and info["num_classes"] == len(CLASSES) and info["image_size"] == SIZE
    assert info["model_file"] == "model_float32.tflite" and info["input_dtype"] == "float32"
    assert info["metrics"]["val_accuracy"] == 1.0
    assert info["limits"]["max_upload_bytes"] == 2 * 1024 * 1024 and info["limits"]["max_zip_files"] == 20
    status, spec = request(server.url + "/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.")
    assert {"/classify", "/v1/predict", "/v1/model", "/healthz"} <= set(spec["paths"])
    form = spec["paths"]["/classify"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    ref = form["$ref"].rsplit("/", 1)[-1]
    assert spec["components"]["schemas"][ref]["required"] == ["upload"]
    seed = spec["components"]["schemas"]["SeedPrediction"]["properties"]
    assert {"tagName", "probablity", "probability"} <= set(seed)
    for path in ("/classify", "/v1/predict"):
        assert {"200", "400", "413", "415", "422"} <= set(spec["paths"][path]["post"]["responses"])
    # FastAPI's /docs and /redoc load their scripts from a CDN, which an offline server cannot reach: not served
    for page in ("/docs", "/redoc"):
        assert request(server.url + page)[0] == 404


# ----------------------------------------------------------------------------------------------------------------
# The pages: the seed's upload form at / (no script), drop or webcam with bars at /app
# ----------------------------------------------------------------------------------------------------------------
class _Page(HTMLParser):
    """A page's forms with the attributes of their inputs, and its scripts."""

    def __init__(self, html: str):
        super().__init__()
        self.forms: list[dict] = []
        self.scripts = 0
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.forms.append({**attrs, "inputs": []})
        elif tag == "input" and self.forms:
            self.forms[-1]["inputs"].append(attrs)
        elif tag == "script":
            self.scripts += 1


@pytest.mark.slow
def test_the_upload_page_is_the_seeds_form_and_works_without_javascript(server, images):
    for path in ("/", "/index.html"):
        with urllib.request.urlopen(server.url + path, timeout=30) as r:
            status, headers, page = r.status, r.headers, _Page(r.read().decode())
        assert status == 200 and headers["content-type"].startswith("text/html"), (path, status, headers)
        assert "default-src 'none'" in headers["content-security-policy"]  # nothing loads from elsewhere
        [form] = page.forms
        assert (form["method"].lower(), form["enctype"], form["action"]) == ("post", "multipart/form-data", "/classify")
        files = [i for i in form["inputs"] if i.get("type") == "file"]
        assert [i.get("name") for i in files] == ["upload"] and page.scripts == 0, (path, form)
    # what a browser without JavaScript sends: the form's own action and file field, with a real photo
    url = urllib.parse.urljoin(server.url + "/", form["action"])
    status, body = request(url, *multipart({files[0]["name"]: ("circle.png", images[1])}))
    assert status == 200 and list(body) == ["circle.png"], body
    preds = body["circle.png"]["preds"]
    assert len(preds) == 5 and preds[0]["tagName"] == "red circle"
    assert all(set(p) == {"tagName", "probablity", "probability"} for p in preds)
    assert not {"/", "/index.html", "/app"} & set(request(server.url + "/openapi.json")[1]["paths"])  # pages, not API


def test_the_pages_scripts_and_style_are_files_of_the_server_and_nothing_else_of_www_is(server):
    """/app and the in-browser demo share www/page.js and page.css; no inline script runs on the server's pages."""
    www = BUNDLE_SOURCES / "www"
    for name, kind in [("page.js", "text/javascript"), ("app.js", "text/javascript"), ("page.css", "text/css")]:
        with urllib.request.urlopen(f"{server.url}/www/{name}", timeout=30) as r:
            assert r.headers["content-type"].startswith(kind) and r.read() == (www / name).read_bytes(), name
            assert "script-src 'self';" in r.headers["content-security-policy"], r.headers
    for path in ("/www/app.html", "/www/index.html", "/www/nope.js", "/www/..%2fserve.py", "/www/%2e%2e/predict.py"):
        status, body = request(server.url + path)
        assert status == 404 and body["status"] == 404, (path, status, body)


@pytest.mark.slow
@pytest.mark.browser
def test_the_app_page_classifies_a_photo_and_a_webcam_frame_in_chromium(server, images, tmp_path):
    from browser_app import (  # skips this test without Playwright/Chromium
        CHROMIUM,
        CHROMIUM_ARGS,
        FAKE_CAMERA,
        SCREENSHOTS,
        Watch,
        classify_a_webcam_frame,
    )
    from playwright.sync_api import expect, sync_playwright

    photo = tmp_path / "circle.png"
    photo.write_bytes(images[1])
    watch, errors = Watch(server.url), []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *FAKE_CAMERA], headless=True)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            page.set_default_timeout(30_000)
            page.on("request", watch.request)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server.url + "/app")
            expect(page.locator("#model")).to_contain_text(f"{len(CLASSES)} classes: stripes, red circle")
            page.locator("input[name=upload]").set_input_files(photo)  # what a click on the drop zone opens
            result = page.locator("#results .result")
            expect(result.locator(".file")).to_have_text("circle.png")
            expect(result.locator(".bar")).to_have_count(5)
            expect(result.locator(".bar .label").first).to_have_text("red circle")
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "serve-app.png"), full_page=True)
            classify_a_webcam_frame(page, result, "webcam.jpg")
        finally:
            browser.close()
    assert not errors, errors
    watch.check("/app")


# ----------------------------------------------------------------------------------------------------------------
# Bad input: always a 4xx JSON answer, and the server stays up
# ----------------------------------------------------------------------------------------------------------------
def _bad_uploads(images: dict[int, bytes]) -> dict[str, tuple[str, bytes, int, str]]:
    """case -> (file name, bytes, expected status, a word of the expected message)"""
    corpus = bad_file_corpus()
    many = zip_bytes({f"img{i}.png": images[3] for i in range(25)})
    return {
        "text file": ("notes.jpg", b"this is a text file\n" * 20, 415, "not a supported image"),
        "random bytes": (*corpus["random_bytes"], 415, "not a supported image"),
        "svg": (*corpus["svg"], 415, "not a supported image"),
        "truncated jpeg": (*corpus["truncated_jpeg"], 422, "truncated"),
        "truncated png": (*corpus["truncated_png"], 422, "truncated"),
        "empty upload": ("empty.jpg", b"", 400, "empty"),
        "pixel bomb header": (*corpus["bomb_header"], 413, "pixel"),
        # between our limit (80 Mpx) and Pillow's own refusal (twice that): only our check answers it
        "90 Mpx header": ("big.png", _png_header_only(10_000, 9_000), 413,
                          "10000x9000 = 90000000 pixels is over the 80000000-pixel limit"),
        "zip slip only": ("slip.zip", zip_bytes({"../../etc/cron.d/x.png": images[0], "/tmp/y.png": images[1]}), 400,
                          "no file in the zip"),
        "zip with too many files": ("many.zip", many, 413, "limit is 20"),
        "zip over the uncompressed total": ("bomb.zip", zip_bytes({"zeros.bmp": b"\0" * (5 * 1024 * 1024)}), 413,
                                            "uncompressed"),
        "zip member over the compression ratio": ("ratio.zip", zip_bytes({"zeros.bmp": b"\0" * (3 * 1024 * 1024)}),
                                                  413, "no file in the zip"),
        "corrupt zip": ("broken.zip", b"PK\x03\x04" + os.urandom(200), 400, "cannot be read"),
        "empty zip": ("empty.zip", zip_bytes({}), 400, "no files"),
        "nested zip only": ("outer.zip", zip_bytes({"inner.zip": zip_bytes({"a.png": images[0]})}), 415,
                            "no file in the zip"),
        "upload over the size limit": ("huge.jpg", images[0] + os.urandom(3 * 1024 * 1024), 413, "byte limit"),
    }


@pytest.mark.slow
def test_bad_uploads_get_a_4xx_json_error_and_the_server_stays_up(server, images):
    failures = []
    for case, (name, data, want, word) in _bad_uploads(images).items():
        for path in ("/classify", "/v1/predict"):
            status, body = upload(server, path, name, data)
            if status != want or body.get("status") != want or word not in json.dumps(body):
                failures.append(f"{case} {path}: {status} {json.dumps(body)[:300]}")
    assert not failures, "\n".join(failures)
    # the per-file reasons of a rejected zip
    _, body = upload(server, "/classify", "slip.zip", zip_bytes({"../x.png": images[0]}))
    assert "unsafe path" in body["files"]["../x.png"]
    _, body = upload(server, "/classify", "ratio.zip", zip_bytes({"z.bmp": b"\0" * (3 * 1024 * 1024)}))
    assert "compression ratio" in body["files"]["z.bmp"]
    assert server.proc.poll() is None
    assert request(server.url + "/healthz")[0] == 200


@pytest.mark.slow
def test_malformed_requests_get_a_4xx_json_error(server, images):
    status, body = upload(server, "/classify", "c.png", images[1], field="image")  # wrong field name
    assert_error(status, body, 422)
    assert "upload" in body["error"]
    status, body = request(server.url + "/classify", b'{"upload": "x"}', "application/json")
    assert_error(status, body, 422)
    status, body = request(server.url + "/classify", b"--nope\r\n\r\n", "multipart/form-data; boundary=nope")
    assert 400 <= status < 500 and body["status"] == status
    status, body = request(server.url + "/classify", method="GET")
    assert_error(status, body, 405)
    status, body = request(server.url + "/nowhere")
    assert_error(status, body, 404)
    # chunked upload (no Content-Length) over the limit: counted as it arrives
    conn = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=30)
    body_bytes, ctype = multipart({"upload": ("big.jpg", os.urandom(3 * 1024 * 1024))})
    conn.request("POST", "/classify", body=iter([body_bytes[i:i + 65536] for i in range(0, len(body_bytes), 65536)]),
                 headers={"Content-Type": ctype}, encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["status"] == 413
    conn.close()
    assert server.proc.poll() is None and request(server.url + "/healthz")[0] == 200


# ----------------------------------------------------------------------------------------------------------------
# Load
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_eight_clients_fifty_requests_each_without_an_error(server, images):
    clients, per_client = 8, 50
    port = int(server.url.rsplit(":", 1)[1])
    bodies = {c: multipart({"upload": (f"{c}.img", data)}) for c, data in images.items()}
    errors: list[str] = []
    done = [0] * clients

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)  # keep-alive, as a real client would
        try:
            for n in range(per_client):
                cls = (i + n) % len(CLASSES)
                path = "/classify" if n % 2 else "/v1/predict"
                body, ctype = bodies[cls]
                try:
                    conn.request("POST", path, body=body, headers={"Content-Type": ctype})
                    resp = conn.getresponse()
                    data = json.loads(resp.read())
                except (OSError, http.client.HTTPException, ValueError) as exc:
                    errors.append(f"client {i} request {n}: {exc!r}")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                    continue
                if resp.status == 200:
                    top = (data[f"{cls}.img"]["preds"][0]["tagName"] if path == "/classify"
                           else data["results"][0]["predictions"][0]["label"])
                if resp.status != 200 or top != CLASSES[cls]:
                    errors.append(f"client {i} request {n}: {resp.status} {json.dumps(data)[:200]}")
                done[i] += 1
        finally:
            conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    elapsed = time.perf_counter() - t0
    assert not any(t.is_alive() for t in threads), "a client hung"
    assert errors == [], errors[:5]
    assert sum(done) == clients * per_client
    print(f"{clients * per_client} requests in {elapsed:.1f} s: {clients * per_client / elapsed:.0f} requests/s")
    assert server.proc.poll() is None


# ----------------------------------------------------------------------------------------------------------------
# The OpenAPI spec, fuzzed
# ----------------------------------------------------------------------------------------------------------------
def _fuzz(operation, mode, base_url: str, seen: set[int]) -> None:
    @settings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case):
        # The spec can say "a file", not "a decodable image": random bytes that match it are rightly refused (415,
        # 422), so the check that schema-valid data is accepted is left out for the uploads.
        excluded = [schemathesis.checks.positive_data_acceptance] if operation.method.upper() == "POST" else []
        response = case.call_and_validate(base_url=base_url, timeout=30, excluded_checks=excluded)
        assert response.status_code < 500
        seen.add(response.status_code)

    try:
        check()
    except Unsatisfiable:
        if mode != schemathesis.GenerationMode.NEGATIVE:
            raise  # an operation without parameters (GET /healthz) has no invalid request to make


@pytest.mark.slow
def test_the_api_conforms_to_its_openapi_spec(server):
    """schemathesis against the served spec: generated requests, valid and invalid, for every operation; each
    answer must have a documented status code, content type and body, and never be a 5xx. (Driven through
    Hypothesis directly: schemathesis' pytest integration does not run under pytest 9.)"""
    if schemathesis is None:
        pytest.skip("schemathesis is not installed (requirements-dev.txt)")
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} == {"POST /classify", "POST /v1/predict", "GET /v1/model", "GET /healthz"}
    statuses: dict[str, set[int]] = {}
    for operation in operations:
        for mode in schemathesis.GenerationMode:
            _fuzz(operation, mode, server.url, statuses.setdefault(operation.label, set()))
    assert 200 in statuses["GET /healthz"] and 200 in statuses["GET /v1/model"]
    assert any(400 <= s < 500 for s in statuses["POST /classify"]), statuses
    assert server.proc.poll() is None


# ----------------------------------------------------------------------------------------------------------------
# Slow and oversized clients: they are cut off, and never hold up /healthz
# ----------------------------------------------------------------------------------------------------------------
def _raw_post(url: str, length: int, body: bytes = b"") -> socket.socket:
    """A POST /classify that announces `length` bytes of body and sends only `body` of it (the rest never comes)."""
    host, port = urllib.parse.urlsplit(url).netloc.split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(f"POST /classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                 f"Content-Length: {length}\r\n\r\n".encode() + body)
    return sock


def _status_line(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    try:
        return sock.recv(64).split(b"\r\n", 1)[0]
    except TimeoutError:
        return b"(no answer within %.1f s)" % timeout
    finally:
        sock.close()


@pytest.mark.slow
def test_a_body_declared_over_the_limit_is_refused_before_any_of_it_is_read(server):
    limit = 2 * 1024 * 1024  # LIMITS: --max_upload_mb 2
    for declared in (limit + 1, 2 ** 31):  # one byte over, and 2 GiB announced with 10 bytes sent
        t0 = time.monotonic()
        answer = _status_line(_raw_post(server.url, declared, b"0123456789"[: 10 * (declared > limit + 1)]), 5)
        assert answer == b"HTTP/1.1 413 Request Entity Too Large" and time.monotonic() - t0 < 1.0, (declared, answer)
    assert server.proc.poll() is None


@pytest.mark.slow
def test_slow_uploads_are_cut_off_and_never_hold_up_health(unpacked, tmp_path, images):
    srv = start_bundle_server(unpacked, tmp_path / "log", "--max_inflight", "4", "--upload_grace_s", "2",
                              "--min_upload_kbps", "64", "--threads", "1")
    try:
        slow = [_raw_post(srv.url, 100_000, b"--b") for _ in range(64)]  # 3 of 100,000 bytes, then nothing
        time.sleep(0.3)  # they are all being read now: every request slot is taken
        for _ in range(5):
            t0 = time.monotonic()
            status, body = request(srv.url + "/healthz")
            assert status == 200 and body["status"] == "ok" and time.monotonic() - t0 < 1.0
        status, body = upload(srv, "/classify", "busy.png", images[0])
        assert status == 503 and body["status"] == 503  # upload slots are busy, said at once
        answers = [_status_line(sock, timeout=10) for sock in slow]
        assert answers.count(b"HTTP/1.1 408 Request Timeout") == 4, answers  # the 4 being read: cut off
        assert all(a.startswith(b"HTTP/1.1 503") for a in answers if b"408" not in a), answers
        status, body = upload(srv, "/classify", "after.png", images[0])  # the slots are free again
        assert status == 200 and body["after.png"]["preds"][0]["tagName"] == CLASSES[0]
    finally:
        srv.stop()
    assert "Traceback" not in srv.output()


# ----------------------------------------------------------------------------------------------------------------
# Lifecycle: nothing left behind; the engine's `serve` command
# ----------------------------------------------------------------------------------------------------------------
def _listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_spooled_uploads_stay_in_the_servers_temp_folder_which_goes_on_shutdown(unpacked, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    before = _listing(unpacked)
    port = free_port()
    srv = start([sys.executable, "serve.py", "--port", str(port), "--threads", "1"], unpacked, tmp_path / "log",
                port, env=clean_env(TMPDIR=str(tmp)))
    try:
        [scratch] = list(tmp.iterdir())  # the server's own temporary folder, and nothing else
        assert scratch.name.startswith("retrain-serve-")
        big = encode(np.random.default_rng(0).integers(0, 256, (900, 900, 3), dtype=np.uint8), ".png")
        assert len(big) > 1024 * 1024  # the multipart parser spools parts over 1 MiB to disk
        status, body = upload(srv, "/classify", "noise.png", big)
        assert status == 200 and body["noise.png"]["preds"][0]["tagName"] == "noise"
        assert [p.name for p in tmp.iterdir()] == [scratch.name]
    finally:
        rc = srv.stop(signal.SIGINT)
    assert rc == 0, srv.output()[-2000:]
    assert list(tmp.iterdir()) == []
    assert _listing(unpacked) == before and not list(unpacked.rglob("__pycache__"))
    assert "Traceback" not in srv.output()


@pytest.mark.slow
def test_two_worker_processes_serve_and_shut_down_cleanly(unpacked, tmp_path, images):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    port = free_port()
    srv = start([sys.executable, "serve.py", "--port", str(port), "--workers", "2"], unpacked, tmp_path / "log", port,
                env=clean_env(TMPDIR=str(tmp)))
    try:
        status, info = request(srv.url + "/v1/model")
        assert status == 200 and info["runtime"]["workers"] == 2 and info["runtime"]["threads"] >= 1
        assert info["runtime"]["tensorflow_imported"] is False
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # keep-alive: one worker, many requests
        body, ctype = multipart({"upload": ("c.png", images[1])})
        for _ in range(10):
            conn.request("POST", "/classify", body=body, headers={"Content-Type": ctype})
            resp = conn.getresponse()
            assert resp.status == 200 and json.loads(resp.read())["c.png"]["preds"][0]["tagName"] == "red circle"
        conn.close()
    finally:
        srv.stop(signal.SIGINT)
    assert list(tmp.iterdir()) == [] and not list(unpacked.rglob("__pycache__"))
    assert "Traceback" not in srv.output()


@pytest.mark.slow
def test_engine_serve_unpacks_a_zip_serves_it_and_removes_it(bundle, tmp_path, images):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    port = free_port()
    srv = start([sys.executable, "-m", "engine", "serve", "--bundle", str(bundle), "--port", str(port), "--top_k", "3"],
                REPO, tmp_path / "log", port, env=clean_env(TMPDIR=str(tmp)))
    try:
        assert any(p.name.startswith("retrain-bundle-") for p in tmp.iterdir())
        status, body = upload(srv, "/classify", "s.jpg", images[0])
        assert status == 200 and [p["tagName"] for p in body["s.jpg"]["preds"]][0] == "stripes"
        assert len(body["s.jpg"]["preds"]) == 3
        status, info = request(srv.url + "/v1/model")
        assert info["name"] == "dl" and info["runtime"]["engine_imported"] is False  # bundle.zip in dl/
    finally:
        rc = srv.stop(signal.SIGTERM)
    assert rc == 0, srv.output()[-2000:]
    assert list(tmp.iterdir()) == []


def test_engine_serve_refuses_what_is_not_a_bundle(tmp_path):
    from engine.cli.main import main

    assert main(["serve", "--bundle", str(tmp_path / "missing.zip")]) == 1
    (tmp_path / "folder").mkdir()
    assert main(["serve", "--bundle", str(tmp_path / "folder")]) == 1
    (tmp_path / "not.zip").write_bytes(b"hello")
    assert main(["serve", "--bundle", str(tmp_path / "not.zip")]) == 1


def test_engine_serve_refuses_a_zip_with_an_unsafe_member(tmp_path):
    from engine.inference import serve

    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("serve.py", "")
        zf.writestr("sub/../../x", "")
    with pytest.raises(serve.ServeError, match="unsafe path"):
        serve.unpack(bad, tmp_path / "into")
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------------------------------------
# Untrusted bundles (issue 19): the engine's own server code, model paths inside the bundle, one line per refusal
# ----------------------------------------------------------------------------------------------------------------
MARKER_SCRIPT = "import pathlib\npathlib.Path({marker!r}).write_text(__file__)\n"


def _bundle_folder(root: Path, card: dict | str, name: str = "bundle") -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "model_card.json").write_text(card if isinstance(card, str) else json.dumps(card))
    (folder / "labels.txt").write_text("a\nb\n")
    (folder / "model_float32.tflite").write_bytes(b"\x00" * 64)  # the server would fail on it: never started here
    return folder


def test_engine_serve_runs_the_engines_server_on_the_bundles_files_not_its_serve_py(tmp_path, monkeypatch):
    from engine.inference import serve

    folder = _bundle_folder(tmp_path, {"default_model": "model_float32.tflite", "image_size": 8}, "mine")
    for name in ("serve.py", "predict.py"):
        (folder / name).write_text(MARKER_SCRIPT.format(marker=str(tmp_path / "marker")))
    runs = []

    class FakePopen:
        def __init__(self, cmd, cwd, env, **_kwargs):
            runs.append((cmd, Path(cwd), env))

        def wait(self):
            return 0

        def poll(self):
            return 0

    monkeypatch.setattr(serve.subprocess, "Popen", FakePopen)
    assert serve.serve_bundle(folder, ["--port", "9"]) == 0
    [(cmd, cwd, env)] = runs
    assert cmd[:4] == [sys.executable, str(BUNDLE_SOURCES / "serve.py"), "--bundle_dir", str(folder.resolve())]
    assert cmd[4:] == ["--port", "9", "--name", "mine"]
    # the bundle's folder is not the working folder, where a worker process would import what it finds first
    assert cwd == BUNDLE_SOURCES and env["PYTHONDONTWRITEBYTECODE"] == "1"


@pytest.mark.slow
def test_engine_serve_never_runs_or_imports_code_from_the_bundle(bundle, tmp_path, images):
    """A bundle whose serve.py and predict.py were replaced (and with modules named like the server's imports) is
    served by the engine's server code, with two worker processes, and none of its scripts runs; nor does the
    server leave bytecode behind (written under a prefix here, so that it would show)."""
    marker = tmp_path / "marker"
    replaced = tmp_path / "dl" / "replaced.zip"
    replaced.parent.mkdir()
    with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(replaced, "w") as dst:
        for info in src.infolist():
            if info.filename not in ("serve.py", "predict.py"):
                dst.writestr(info, src.read(info))
        for name in ("serve.py", "predict.py", "fastapi.py", "uvicorn.py", "multiprocessing.py"):
            dst.writestr(name, MARKER_SCRIPT.format(marker=str(marker)))
    pycache = tmp_path / "pycache"
    env = clean_env(PYTHONPYCACHEPREFIX=str(pycache))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    port = free_port()
    srv = start([sys.executable, "-m", "engine", "serve", "--bundle", str(replaced), "--port", str(port),
                 "--workers", "2"], REPO, tmp_path / "log", port, env=env)
    try:
        status, body = upload(srv, "/classify", "c.png", images[1])
        assert status == 200 and body["c.png"]["preds"][0]["tagName"] == "red circle"
        assert request(srv.url + "/v1/model")[1]["name"] == "replaced"
    finally:
        rc = srv.stop(signal.SIGTERM)
    assert rc == 0, srv.output()[-2000:]
    assert not marker.exists(), marker.read_text()
    # the engine's own process imports engine.bundle.predict as any module; the server processes write nothing
    assert not list((pycache / BUNDLE_SOURCES.relative_to(BUNDLE_SOURCES.anchor)).glob("serve.*.pyc"))


@pytest.mark.parametrize("how", ["absolute", "dotdot", "linked model", "linked card", "linked labels"])
def test_engine_serve_refuses_a_path_out_of_the_bundle_in_one_line(tmp_path, capsys, how):
    from engine.cli.main import main

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "model.tflite").write_bytes(b"\x00" * 64)
    (outside / "card.json").write_text(json.dumps({"image_size": 8}))
    (outside / "labels.txt").write_text("root\ndaemon\n")
    name = {"absolute": str(outside / "model.tflite"), "dotdot": "../outside/model.tflite"}.get(how,
                                                                                               "model_float32.tflite")
    folder = _bundle_folder(tmp_path, {"default_model": name, "image_size": 8})
    link, target = {"linked model": ("model_float32.tflite", "model.tflite"), "linked card": ("model_card.json",
                    "card.json"), "linked labels": ("labels.txt", "labels.txt")}.get(how, (None, None))
    if link:
        (folder / link).unlink()
        (folder / link).symlink_to(outside / target)
    assert main(["serve", "--bundle", str(folder)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    want = rf"'{re.escape(link)}' in .* is a link to {re.escape(str(outside))}" if link else \
        rf"default_model '{re.escape(name)}' in {re.escape(str(folder))} is not a path inside the bundle"
    assert re.search(want, err), err


@pytest.mark.parametrize("bad", ["invalid card", "card linked in the zip", "zip bomb"])
def test_engine_serve_refuses_a_broken_bundle_in_one_line_without_a_traceback(tmp_path, bad):
    if bad == "invalid card":
        bundle_path = _bundle_folder(tmp_path, '{"image_size": 8,')
        want = rf"error: model_card.json in {re.escape(str(bundle_path))} is not valid JSON \(Expecting"
    else:
        bundle_path = tmp_path / "bundle.zip"
        with zipfile.ZipFile(bundle_path, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("labels.txt", "a\nb\n")
            if bad == "zip bomb":
                zf.writestr("model_card.json", "{}")
                zf.writestr("model_float32.tflite", bytes(64 << 20))
                want = r"error: .*bundle.zip: 'model_float32.tflite' would unpack to \d+ times its packed size"
            else:
                zf.writestr("model_float32.tflite", b"\x00" * 64)
                info = zipfile.ZipInfo("model_card.json")
                info.external_attr = (0o120777) << 16  # a symbolic link
                zf.writestr(info, "/etc/hostname")
                want = r"error: .*bundle.zip holds a link \('model_card.json'\); it is not a bundle made here"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    proc = subprocess.run([sys.executable, "-m", "engine", "serve", "--bundle", str(bundle_path), "--port",
                           str(free_port())], cwd=REPO, env=clean_env(TMPDIR=str(tmp)), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.count("\n") == 1 and re.match(want, proc.stderr), proc.stderr
    assert list(tmp.iterdir()) == []


def test_engine_serve_passes_on_only_the_flags_given_so_the_servers_defaults_apply():
    import argparse

    from engine.bundle import serve as bundle_serve
    from engine.cli import serve

    parser = argparse.ArgumentParser()
    serve.add_serve_args(parser)
    assert serve.forwarded_args(parser.parse_args(["--bundle", "b.zip"])) == []
    argv = serve.forwarded_args(parser.parse_args(["--bundle", "b.zip", "--top_k", "3", "--port", "9000"]))
    assert argv == ["--port", "9000", "--top_k", "3"]
    every = parser.parse_args(["--bundle", "b.zip", "--host", "0.0.0.0", "--port", "1", "--workers", "2",
                               "--max_upload_mb", "4.5", "--top_k", "6"])
    args = bundle_serve.build_parser().parse_args(serve.forwarded_args(every))  # the server takes every one
    assert (args.host, args.port, args.workers, args.max_upload_mb, args.top_k) == ("0.0.0.0", 1, 2, 4.5, 6)


# ----------------------------------------------------------------------------------------------------------------
# Real data, and a fresh virtual environment with only the bundle's requirements
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.shared
def test_a_model_trained_on_text_nontext_serves_the_right_class(tmp_path):
    data = shared_dataset("text_nontext")
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "engine", "train", "--image_dir", str(data), "--run_dir", str(run),
                           "--quantize", "float32"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    # validation images the trained model got right, most confident first: the server must agree on them
    right = sorted((p for p in metrics["predictions"] if p["true"] == p["predicted"]), key=lambda p: -p["probability"])
    picks = [next(p for p in right if p["true"] == label) for label in ("non_text", "text")]
    port = free_port()
    srv = start([sys.executable, "-m", "engine", "serve", "--bundle", str(run / "bundle.zip"), "--port", str(port)],
                REPO, tmp_path / "log", port)
    try:
        for pick in picks:
            path = Path(pick["path"])
            body = curl_upload(srv.url + "/classify", path)
            assert body[path.name]["preds"][0]["tagName"] == pick["true"], body
    finally:
        srv.stop(signal.SIGTERM)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RETRAIN_STUDIO_FRESH_VENV_TEST") != "1",
                    reason="set RETRAIN_STUDIO_FRESH_VENV_TEST=1: installs the bundle's requirements from the registry")
def test_a_fresh_venv_with_only_the_bundles_requirements_serves_it(unpacked, tmp_path, images):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-r", "requirements-serve.txt"], cwd=unpacked,
                         capture_output=True, text=True, timeout=900)
    if pip.returncode != 0:
        pytest.skip(f"could not install the bundle's requirements from the package registry: {pip.stderr[-500:]}")
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import importlib.util as u; "
                            "print([m for m in ('tensorflow', 'cv2', 'engine') if u.find_spec(m)])"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "[]", probe.stdout  # nothing but the bundle's requirements
    port = free_port()
    srv = start([str(venv / "bin" / "python"), "serve.py", "--port", str(port)], unpacked, tmp_path / "log", port)
    try:
        src = tmp_path / "circle.jpg"
        src.write_bytes(images[1])
        body = curl_upload(srv.url + "/classify", src)
        assert body["circle.jpg"]["preds"][0]["tagName"] == "red circle"
    finally:
        srv.stop()
