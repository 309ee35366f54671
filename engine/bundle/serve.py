#!/usr/bin/env python3
"""Serve this bundle's model over HTTP; needs only requirements-serve.txt (FastAPI, uvicorn, NumPy, Pillow, LiteRT).

    pip install -r requirements-serve.txt
    python serve.py --port 8080                       # 127.0.0.1 unless --host says otherwise
    curl -F upload=@photo.jpg http://127.0.0.1:8080/classify

    POST /classify      form field `upload`: an image (JPEG, PNG, BMP, WebP, GIF, TIFF; HEIC when pillow-heif is
                        installed) or a zip of images ->
                        {"<file name>": {"preds": [{"tagName": "cat", "probablity": 0.97, "probability": 0.97}]}},
                        top 5, most probable first: the text/non-text server's answer (`probablity` spelled as it
                        was there, for drop-in compatibility, and `probability` beside it), plus "unknown": true
                        when the top probability is below the model card's threshold
    POST /v1/predict    the same upload, ?top_k=N&threshold=T -> {"model", "top_k", "threshold", "latency_ms",
                        "results": [{"filename", "predictions": [{"label", "probability"}], "unknown", "error"}]}
    GET  /v1/model      labels, input size, the model card's metrics, this server's limits and runtime
    GET  /healthz       {"status": "ok"}
    GET  /openapi.json  the OpenAPI spec (/docs renders it where the browser can load Swagger UI)
    GET  /, /index.html an upload form that posts `upload` to /classify (the text/non-text server's page; no script)
    GET  /app           drop a photo or use the webcam, the top 5 as bars (from /v1/predict); both pages are in www/
                        beside this file and load nothing from elsewhere
    GET  /www/<file>    the pages' scripts and style (www/*.js, www/*.css), which the in-browser demo shares
    GET  /web/          the same in the browser alone: web/ beside this file runs model.onnx with its vendored ONNX
                        Runtime Web (WebAssembly); the photo is never uploaded. It loads /model.onnx, /labels.txt
                        and /model_card.json, which this server hands out from the bundle folder (--no_web: none of
                        them, for a server whose model must not be downloadable)

Preprocessing and inference are predict.py's (this file's sibling), so the bundle holds one copy of them.
Every refused request is answered with a JSON body {"error": "...", "status": N}: empty upload 400, not an image
415, corrupt image 422, too many pixels 413, upload over --max_upload_mb 413, zip over its limits (files, total
uncompressed size) 413, missing `upload` field 422, too many requests in flight 503. In a zip each file is
classified or skipped with its reason (unsafe paths such as ../x.jpg or /etc/x are skipped, never used as paths);
the request fails only when no file could be classified. Zip members are read in memory, never extracted; uploads
that the multipart parser spools to disk go to a temporary folder of this server's, removed when it stops.

Each worker process holds one LiteRT interpreter per inference thread (--threads), so requests run in parallel
and never share an interpreter. Requests are not batched together: on CPU the per-image cost of a batch is the
same as one image at a time (XNNPACK), and resizing the input tensor for each batch costs more than it saves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gzip
import importlib.util
import io
import json
import logging
import os
import queue
import sys
import tempfile
import time
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field, RootModel
from starlette.exceptions import HTTPException as StarletteHTTPException

HERE = Path(__file__).resolve().parent
log = logging.getLogger("retrain_serve")
# The server writes nowhere but its temporary folder: not even __pycache__ beside predict.py (nor, for --workers,
# beside this file: see main()).
sys.dont_write_bytecode = True


def _load_predict():
    """The bundle's predict.py, this file's sibling (in the bundle and in the engine's source tree alike)."""
    name = "retrain_bundle_predict"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / "predict.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bp = _load_predict()

CONFIG_ENV = "RETRAIN_SERVE_CONFIG"  # how `--workers N` hands the configuration to its worker processes
MIB = 1024 * 1024
ZIP_RATIO_MIN_BYTES = MIB  # the compression-ratio limit applies to members larger than this
UNGUARDED = ("/healthz",)  # answered at once even while every request slot is busy with uploads
# What a client still sends after an early answer is read and dropped for this long (at most DRAIN_LIMIT bytes), so
# one that sends its whole body before reading gets the answer instead of a reset connection.
DRAIN_S, DRAIN_LIMIT = 2.0, 64 * MIB
# HEIC only where pillow-heif is installed (predict.py registers it); it is not in requirements-serve.txt
FORMATS = "JPEG, PNG, BMP, WebP, GIF, TIFF or HEIC" if bp.HEIF else \
    "JPEG, PNG, BMP, WebP, GIF or TIFF; HEIC after pip install pillow-heif"
warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit answers first, with a clear 413
WWW = HERE / "www"  # the pages come with the server's code, never from the folder of the bundle it serves
# The pages' scripts and styles are files of this server (/www/; the seed's upload form keeps its inline style): they
# may talk to this server only, and load nothing from anywhere else.
FILE_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}  # every page and file served
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' blob: data:; media-src blob: mediastream:; connect-src 'self'; "
                               "form-action 'self'; base-uri 'none'; frame-ancestors 'none'", **FILE_HEADERS}
# The in-browser demo, from beside the server's code too: its page, script and style, and the vendored runtime. Its
# scripts are files of this server ('self', no inline script), WebAssembly is compiled ('wasm-unsafe-eval'), and it
# fetches the model from this server only.
WEB = HERE / "web"
WEB_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; "
                               "img-src 'self' blob: data:; media-src blob: mediastream:; connect-src 'self'; "
                               "form-action 'none'; base-uri 'none'; frame-ancestors 'none'", **FILE_HEADERS}
WEB_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
             ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".wasm": "application/wasm",
             ".md": "text/markdown; charset=utf-8", "": "text/plain; charset=utf-8"}  # "": LICENSE
# What the demo page loads from the bundle folder (and nothing else of it is served).
MODEL_FILES = {"model.onnx": "application/octet-stream", "labels.txt": "text/plain; charset=utf-8",
               "model_card.json": "application/json"}


@dataclass
class ServeConfig:
    bundle_dir: str = str(HERE)
    model: str | None = None  # a .tflite file of the bundle; None: the card's default_model
    name: str | None = None  # shown in /v1/model and /v1/predict; None: the bundle folder's name
    threads: int = 0  # inference threads (one interpreter each) per worker; 0: CPU cores / workers
    workers: int = 1
    top_k: int = 5
    max_upload_mb: float = 32.0
    max_zip_files: int = 500
    max_zip_mb: float = 256.0  # total uncompressed size of the images in one zip
    max_zip_ratio: float = 100.0  # uncompressed/compressed size, for members over 1 MiB
    max_pixels: int = 80_000_000  # what training accepts (engine.data.images.MAX_PIXELS)
    max_inflight: int = 32  # requests being handled at once per worker; more get a 503
    upload_grace_s: float = 10.0  # an upload may take this long before its rate counts ...
    min_upload_kbps: float = 64.0  # ... then it must average this many KiB/s, or it is cut off with a 408
    threshold: float | None = None  # "unknown" below this top probability; None: the model card's (0: never)
    web: bool = True  # the in-browser demo at /web/, with the model files it loads (model.onnx, labels, card)

    def resolved_threads(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // max(1, self.workers))


class ApiError(Exception):
    def __init__(self, status: int, message: str, files: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.files = status, message, files


def error_body(status: int, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": message, "status": status, **{k: v for k, v in extra.items() if v is not None}}


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class FileResult:
    name: str
    probs: Any = None  # np.ndarray of probabilities, or None when the file failed
    error: str | None = None
    status: int = 200


def image_error(exc: BaseException) -> tuple[int, str]:
    """A decoding failure as (HTTP status, reason)."""
    if isinstance(exc, bp.TooManyPixels | Image.DecompressionBombError):
        return 413, f"too many pixels: {exc} (decompression bomb protection); downscale it first"
    if isinstance(exc, UnidentifiedImageError):
        return 415, f"not a supported image ({FORMATS})"
    if isinstance(exc, MemoryError):
        return 413, "too large to decode"
    return 422, f"corrupt or truncated image ({exc})"


def unsafe_member_reason(name: str) -> str | None:
    if bp.safe_member_parts(name) is None:
        return "unsafe path in the zip (absolute or with '..'); skipped"
    return None


def _ignored_member(info: zipfile.ZipInfo) -> bool:
    """Folders and macOS metadata (__MACOSX/, ._name, .DS_Store) are not files the user meant to classify."""
    name = info.filename.replace("\\", "/")
    base = name.rsplit("/", 1)[-1]
    return info.is_dir() or name.startswith("__MACOSX/") or base.startswith("._") or base == ".DS_Store"


class Classifier:
    """The bundle's model with a pool of interpreters, one per inference thread."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        folder = Path(cfg.bundle_dir)
        self.card, self.labels = bp.read_card(folder), bp.read_labels(folder)
        self.size = int(self.card["image_size"])
        self.center_crop = bool((self.card.get("preprocessing") or {}).get("center_crop"))
        model = Path(cfg.model or self.card.get("default_model") or "model_float32.tflite")
        self.model_path = model if model.is_absolute() else folder / model
        self.name = cfg.name or self.card.get("name") or folder.name
        self.threshold = bp.card_threshold(self.card) if cfg.threshold is None else float(cfg.threshold)
        self.threads = cfg.resolved_threads()
        self._pool: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(self.threads):
            self._pool.put(bp.make_interpreter(str(self.model_path), num_threads=1))
        probe = self._pool.get()
        self.input_dtype = str(probe.get_input_details()[0]["dtype"].__name__)
        n_out = int(probe.get_output_details()[0]["shape"][-1])
        self.runtime = type(probe).__module__
        self._pool.put(probe)
        if n_out != len(self.labels):
            raise ValueError(f"{self.model_path.name} has {n_out} outputs but labels.txt has {len(self.labels)} labels")
        self.executor = ThreadPoolExecutor(self.threads, thread_name_prefix="classify")
        Image.MAX_IMAGE_PIXELS = cfg.max_pixels  # Pillow's own guard then stops anything over twice our limit

    # -- work done in the executor's threads --------------------------------------------------------------------
    def probabilities(self, data: bytes):
        pixels = bp.prepare(data, self.size, self.center_crop, max_pixels=self.cfg.max_pixels,
                            formats=bp.TRAINING_FORMATS)
        interpreter = self._pool.get()
        try:
            return bp.classify(interpreter, pixels)
        finally:
            self._pool.put(interpreter)

    def classify_file(self, name: str, data: bytes) -> FileResult:
        if not data:
            return FileResult(name, error="empty file (0 bytes)", status=400)
        if data[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
            return FileResult(name, error="nested zip archives are not opened", status=415)
        try:
            return FileResult(name, probs=self.probabilities(data))
        except (*bp.DECODE_ERRORS, MemoryError) as exc:
            status, reason = image_error(exc)
            return FileResult(name, error=reason, status=status)

    def open_zip(self, data: bytes) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
        """The zip's members to classify, after the limits on their number and total size."""
        try:
            zf = zipfile.ZipFile(io.BytesIO(data))
            infos = [i for i in zf.infolist() if not _ignored_member(i)]
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
            raise ApiError(400, f"the upload looks like a zip archive but cannot be read ({exc})") from exc
        cfg = self.cfg
        if len(infos) > cfg.max_zip_files:
            raise ApiError(413, f"the zip holds {len(infos)} files; the limit is {cfg.max_zip_files}")
        total = sum(i.file_size for i in infos)
        if total > cfg.max_zip_mb * MIB:
            raise ApiError(413, f"the zip's files add up to {total} bytes uncompressed; the limit is "
                                f"{int(cfg.max_zip_mb * MIB)} (zip bomb protection)")
        if not infos:
            raise ApiError(400, "the zip holds no files")
        return zf, infos

    def classify_member(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> FileResult:
        name = info.filename
        reason = unsafe_member_reason(name)
        if reason:
            return FileResult(name, error=reason, status=400)
        if info.flag_bits & 0x1:
            return FileResult(name, error="encrypted; skipped", status=400)
        ratio = info.file_size / max(1, info.compress_size)
        if info.file_size > ZIP_RATIO_MIN_BYTES and ratio > self.cfg.max_zip_ratio:
            return FileResult(name, error=f"compression ratio {ratio:.0f}:1 is over the limit of "
                                          f"{self.cfg.max_zip_ratio:.0f}:1 (zip bomb protection); skipped",
                              status=413)
        try:
            with zf.open(info) as fh:  # read in memory; zipfile stops at the size the directory declares
                data = fh.read(info.file_size + 1)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError) as exc:
            return FileResult(name, error=f"cannot be read from the zip ({exc})", status=422)
        if len(data) > info.file_size:
            return FileResult(name, error="holds more data than the zip declares; skipped", status=413)
        return self.classify_file(name, data)

    # -- called from the event loop -----------------------------------------------------------------------------
    async def classify_upload(self, data: bytes, filename: str | None) -> list[FileResult]:
        """Every file of the upload, classified or with its reason; ApiError when none could be classified."""
        loop = asyncio.get_running_loop()
        if not data:
            raise ApiError(400, f"{filename or 'upload'}: the upload is empty (0 bytes)")
        if data[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):
            result = await loop.run_in_executor(self.executor, self.classify_file, filename or "upload", data)
            if result.error:
                raise ApiError(result.status, f"{result.name}: {result.error}")
            return [result]
        zf, infos = await loop.run_in_executor(self.executor, self.open_zip, data)
        in_flight = asyncio.Semaphore(2 * self.threads)  # members in memory at once

        async def one(info: zipfile.ZipInfo) -> FileResult:
            async with in_flight:
                return await loop.run_in_executor(self.executor, self.classify_member, zf, info)

        try:
            results = await asyncio.gather(*(one(i) for i in infos))
        finally:
            zf.close()
        if not any(r.error is None for r in results):
            statuses = {r.status for r in results}
            status = statuses.pop() if len(statuses) == 1 else 422
            raise ApiError(status, "no file in the zip could be classified", {r.name: r.error for r in results})
        return list(results)

    def top(self, probs, k: int) -> list[dict[str, Any]]:
        return bp.top_predictions(probs, self.labels, k)


# ----------------------------------------------------------------------------------------------------------------
# Static files: the in-browser demo and the model files it loads
# ----------------------------------------------------------------------------------------------------------------
def web_files(folder: Path = WEB) -> dict[str, tuple[Path, bool]]:
    """The demo's files by their path below /web/ -> (file, gzipped): every file of the folder of a known type, none
    hidden. A file kept gzip-compressed (the vendored .wasm in the engine's source tree; a bundle holds it as it is)
    is listed under its name less .gz, unless the file itself is there too."""
    files: dict[str, tuple[Path, bool]] = {}
    for p in sorted(folder.rglob("*")) if folder.is_dir() else ():
        parts = p.relative_to(folder).parts
        if not p.is_file() or any(part.startswith(".") or part == "__pycache__" for part in parts):
            continue
        name, gzipped = "/".join(parts), p.suffix == ".gz"
        name = name[:-3] if gzipped else name
        if Path(name).suffix in WEB_TYPES and name not in files:  # sorted: x.wasm comes before x.wasm.gz
            files[name] = (p, gzipped)
    return files


def static_file(request: Request, path: Path, media_type: str, headers: dict[str, str],
                gzipped: bool = False) -> Response:
    """A file with its ETag (304 when the browser has it); a gzipped file as it is with Content-Encoding: gzip, or
    unpacked for a client that does not take gzip."""
    encode = gzipped and "gzip" in request.headers.get("accept-encoding", "")
    stat = path.stat()
    etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}{"-gzip" if encode else ""}"'
    headers = {**headers, "ETag": etag, **({"Vary": "Accept-Encoding"} if gzipped else {})}
    if etag in [t.strip().removeprefix("W/") for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    if encode:
        return FileResponse(path, media_type=media_type, headers={**headers, "Content-Encoding": "gzip"})
    if gzipped:
        return Response(gzip.decompress(path.read_bytes()), media_type=media_type, headers=headers)
    return FileResponse(path, media_type=media_type, headers=headers)


# ----------------------------------------------------------------------------------------------------------------
# Request limits: body size and requests in flight, before any parsing
# ----------------------------------------------------------------------------------------------------------------
class RequestGuard:
    """Pure ASGI middleware, before FastAPI parses anything: refuses a body declared over the upload limit at once
    (413, without reading it), reads the rest within a deadline that grows with what arrived (408 for a client too
    slow to be anything but a held connection), and caps the requests in flight (503). /healthz goes around it."""

    def __init__(self, app, max_body: int, max_inflight: int, grace_s: float, min_rate: float):
        self.app, self.max_body, self.max_inflight, self.inflight = app, max_body, max_inflight, 0
        self.grace_s, self.min_rate = grace_s, min_rate

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in UNGUARDED:
            return await self.app(scope, receive, send)
        if self.inflight >= self.max_inflight:
            return await _send_json(send, 503, error_body(503, "too many requests in flight; retry shortly"),
                                    [(b"retry-after", b"1")])
        self.inflight += 1
        try:
            await self._handle(scope, receive, send)
        finally:
            self.inflight -= 1

    async def _handle(self, scope, receive, send):
        declared = dict(scope["headers"]).get(b"content-length")
        too_big = error_body(413, f"the upload is over the {self.max_body}-byte limit (--max_upload_mb)")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            return await _answer_early(receive, send, 413, too_big)  # before any of the body is read
        body = await self._read_body(receive, send, too_big)
        if body is None:
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read_body(self, receive, send, too_big: dict) -> bytes | None:
        """The whole body, or None once an answer (413, 408) was sent or the client left."""
        loop = asyncio.get_running_loop()
        start, chunks, size = loop.time(), [], 0
        while True:
            left = start + self.grace_s + size / self.min_rate - loop.time()  # each byte buys 1/min_rate s
            try:
                message = await asyncio.wait_for(receive(), max(left, 0.0))
            except asyncio.TimeoutError:  # noqa: UP041 - not TimeoutError before Python 3.11 (the bundle runs on 3.10)
                await _answer_early(receive, send, 408, error_body(
                    408, f"the upload was too slow ({size} bytes in {loop.time() - start:.0f} s); send it again"),
                    drain_s=0.0)
                return None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                if message.get("more_body"):
                    await _answer_early(receive, send, 413, too_big)
                else:
                    await _send_json(send, 413, too_big)
                return None
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)


async def _answer_early(receive, send, status: int, body: dict, drain_s: float = DRAIN_S) -> None:
    """Answer before the body was read: the status line goes out at once, the rest of the body is dropped for a
    moment (see DRAIN_S), then the answer ends and so does the connection."""
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            (b"connection", b"close")]})
    loop = asyncio.get_running_loop()
    end, seen = loop.time() + drain_s, 0
    with contextlib.suppress(asyncio.TimeoutError):  # noqa: UP041 - the bundle runs on Python 3.10 too
        while seen <= DRAIN_LIMIT and loop.time() < end:
            message = await asyncio.wait_for(receive(), end - loop.time())
            if message["type"] != "http.request" or not message.get("more_body"):
                break
            seen += len(message.get("body", b""))
    await send({"type": "http.response.body", "body": data})


async def _send_json(send, status: int, body: dict, headers: list | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": data})


# ----------------------------------------------------------------------------------------------------------------
# The API's shapes (they make the OpenAPI spec)
# ----------------------------------------------------------------------------------------------------------------
class SeedPrediction(BaseModel):
    tagName: str = Field(description="the label")  # noqa: N815 - the seed server's (and Custom Vision's) key
    probablity: float = Field(description="the seed server's spelling, kept for drop-in compatibility")
    probability: float


class SeedResult(BaseModel):
    preds: list[SeedPrediction] = Field(description="top classes, most probable first; empty when the file failed")
    unknown: bool | None = Field(None, description="true when the top probability is below the model's threshold "
                                                   "(absent when the file failed)")
    error: str | None = Field(None, description="why this file was not classified (absent when it was)")


class ClassifyResponse(RootModel[dict[str, SeedResult]]):
    """file name (zip member path for a zip) -> its top classes"""


class Prediction(BaseModel):
    label: str
    probability: float


class FilePrediction(BaseModel):
    filename: str
    predictions: list[Prediction]
    unknown: bool | None = Field(None, description="true when the top probability is below `threshold`; null when "
                                                   "the file failed")
    error: str | None = None


class PredictResponse(BaseModel):
    model: str
    top_k: int
    threshold: float = Field(description="answers whose top probability is below this are unknown (0: none); the "
                                         "model card's unless the request or --threshold gave one")
    latency_ms: float = Field(description="server time for this request once its upload was received: unzipping, "
                                          "decoding, preprocessing and inference")
    results: list[FilePrediction]


class ModelInfo(BaseModel):
    name: str
    labels: list[str]
    num_classes: int
    image_size: int
    input_dtype: str
    model_file: str
    center_crop: bool
    created: str | None = None
    engine_version: str | None = None
    metrics: dict[str, Any] | None = None
    threshold: float = Field(description="the \"unknown\" threshold answers use by default")
    limits: dict[str, float | int]
    runtime: dict[str, Any]


class Health(BaseModel):
    status: str
    model: str
    uptime_s: float


class ErrorBody(BaseModel):
    error: str
    status: int
    files: dict[str, str] | None = Field(None, description="zip uploads: each file's reason")
    details: list[dict[str, Any]] | None = None


UPLOAD_ERRORS = {
    400: {"model": ErrorBody, "description": "empty upload, unreadable zip, zip with only unsafe paths"},
    413: {"model": ErrorBody, "description": "upload, zip (files, total or ratio) or pixel count over the limit"},
    415: {"model": ErrorBody, "description": f"not a supported image ({FORMATS})"},
    422: {"model": ErrorBody, "description": "corrupt image, or no `upload` form field"},
    503: {"model": ErrorBody, "description": "too many requests in flight"},
}
Upload = Annotated[UploadFile, File(description=f"an image ({FORMATS}) or a .zip of images")]


# ----------------------------------------------------------------------------------------------------------------
# The app
# ----------------------------------------------------------------------------------------------------------------
def create_app(cfg: ServeConfig | None = None) -> FastAPI:
    """The ASGI app; without cfg, the configuration comes from $RETRAIN_SERVE_CONFIG (uvicorn's worker processes)."""
    if cfg is None:
        cfg = ServeConfig(**json.loads(os.environ.get(CONFIG_ENV, "{}")))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    clf = Classifier(cfg)
    # Uploads the multipart parser spools to disk (parts over 1 MiB) land here, and nowhere else.
    scratch = tempfile.TemporaryDirectory(prefix="retrain-serve-")
    tempfile.tempdir = scratch.name
    started = time.time()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        log.info("Serving %s: %d classes, %dx%d, %s via %s, %d inference threads in process %d; tensorflow "
                 "imported: %s, engine imported: %s", clf.name, len(clf.labels), clf.size, clf.size,
                 clf.model_path.name, clf.runtime, clf.threads, os.getpid(), "tensorflow" in sys.modules,
                 "engine" in sys.modules)
        try:
            yield
        finally:
            clf.executor.shutdown(wait=True, cancel_futures=True)
            scratch.cleanup()

    # no /docs or /redoc: FastAPI's pages load Swagger UI / ReDoc from a CDN, which an offline server cannot reach;
    # the spec itself is at /openapi.json
    app = FastAPI(title=f"Image classifier: {clf.name}", version="1", docs_url=None, redoc_url=None,
                  description="Retrain Studio model server. `POST /classify` answers like the text/non-text "
                              "server it replaces; `/v1/*` is the versioned API.", lifespan=lifespan)
    app.state.classifier = clf

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError):
        return JSONResponse(error_body(exc.status, exc.message, files=exc.files), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        return JSONResponse(error_body(exc.status_code, str(exc.detail)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError):
        details = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in exc.errors()]
        missing = any(e.get("type") == "missing" and "upload" in e.get("loc", ()) for e in exc.errors())
        message = ("no `upload` form field: send the image or zip as multipart/form-data field `upload`" if missing
                   else "invalid request: " + "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details))
        return JSONResponse(error_body(422, message, details=details), status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception):
        log.exception("unexpected error: %s", exc)
        return JSONResponse(error_body(500, "internal server error"), status_code=500)

    async def _read(upload: UploadFile) -> bytes:
        try:
            return await upload.read()
        finally:
            await upload.close()

    @app.post("/classify", response_model=ClassifyResponse, responses=UPLOAD_ERRORS,
              summary="Top classes per image, in the text/non-text server's shape")
    async def classify(upload: Upload) -> JSONResponse:
        results = await clf.classify_upload(await _read(upload), upload.filename)
        out: dict[str, Any] = {}
        for r in results:
            key, n = r.name, 1
            while key in out:  # the same path twice in a zip
                n += 1
                key = f"{r.name} ({n})"
            if r.error is None:
                out[key] = {"preds": [{"tagName": p["label"], "probablity": p["probability"],
                                       "probability": p["probability"]} for p in clf.top(r.probs, cfg.top_k)],
                            "unknown": bp.is_unknown(r.probs, clf.threshold)}
            else:
                out[key] = {"preds": [], "error": r.error}
        return JSONResponse(out)

    @app.post("/v1/predict", response_model=PredictResponse, responses=UPLOAD_ERRORS,
              summary="Top-k classes per image, with the model's name and the server's latency")
    async def predict(upload: Upload,
                      top_k: Annotated[int | None, Query(ge=1, le=1000, description="default: --top_k")] = None,
                      threshold: Annotated[float | None, Query(ge=0, le=1, description="unknown below this top "
                                                               "probability; default: the model card's")] = None
                      ) -> JSONResponse:
        t0 = time.perf_counter()
        k = min(top_k or cfg.top_k, len(clf.labels))
        thr = clf.threshold if threshold is None else float(threshold)
        results = await clf.classify_upload(await _read(upload), upload.filename)
        body = {"model": clf.name, "top_k": k, "threshold": thr, "latency_ms": 0.0,
                "results": [{"filename": r.name, "predictions": [] if r.error else clf.top(r.probs, k),
                             "unknown": None if r.error else bp.is_unknown(r.probs, thr), "error": r.error}
                            for r in results]}
        body["latency_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        return JSONResponse(body)

    @app.get("/v1/model", response_model=ModelInfo, summary="Labels, input size, metrics, limits")
    async def model_info() -> ModelInfo:
        card = clf.card
        return ModelInfo(
            name=clf.name, labels=clf.labels, num_classes=len(clf.labels), image_size=clf.size,
            input_dtype=clf.input_dtype, model_file=clf.model_path.name, center_crop=clf.center_crop,
            created=card.get("created"), engine_version=card.get("engine_version"), metrics=card.get("metrics"),
            threshold=clf.threshold,
            limits={"max_upload_bytes": int(cfg.max_upload_mb * MIB), "max_zip_files": cfg.max_zip_files,
                    "max_zip_uncompressed_bytes": int(cfg.max_zip_mb * MIB), "max_zip_ratio": cfg.max_zip_ratio,
                    "max_pixels": cfg.max_pixels, "max_inflight": cfg.max_inflight, "top_k": cfg.top_k},
            runtime={"interpreter": clf.runtime, "threads": clf.threads, "workers": cfg.workers, "pid": os.getpid(),
                     "tensorflow_imported": "tensorflow" in sys.modules, "engine_imported": "engine" in sys.modules})

    @app.get("/healthz", response_model=Health, summary="Liveness: the model is loaded and answering")
    async def healthz() -> Health:
        return Health(status="ok", model=clf.name, uptime_s=round(time.time() - started, 3))

    pages = {p.name: p.read_bytes() for p in sorted(WWW.glob("*.html"))} if WWW.is_dir() else {}

    def page(name: str) -> HTMLResponse:
        if name not in pages:
            raise ApiError(404, f"www/{name} is missing beside serve.py: copy the bundle's www/ folder there")
        return HTMLResponse(pages[name], headers=PAGE_HEADERS)

    # Pages, not API operations: left out of the OpenAPI spec.
    @app.get("/", include_in_schema=False)
    @app.get("/index.html", include_in_schema=False)
    async def upload_page() -> HTMLResponse:
        return page("index.html")

    @app.get("/app", include_in_schema=False)
    async def app_page() -> HTMLResponse:
        return page("app.html")

    assets = {p.name: p for p in sorted(WWW.iterdir()) if p.is_file() and p.suffix in (".css", ".js")
              and not p.name.startswith(".")} if WWW.is_dir() else {}

    @app.get("/www/{name}", include_in_schema=False)
    async def page_asset(name: str, request: Request) -> Response:
        if name not in assets:
            raise ApiError(404, f"www/{name} is not a script or style of the server's pages")
        return static_file(request, assets[name], WEB_TYPES[assets[name].suffix], PAGE_HEADERS)

    web = web_files() if cfg.web else {}

    def web_off() -> ApiError:
        return ApiError(404, "the in-browser demo is off (--no_web)" if not cfg.web else
                        "web/ is missing beside serve.py: copy the bundle's web/ folder there")

    @app.get("/web", include_in_schema=False)
    async def web_root() -> Response:
        if "index.html" not in web:
            raise web_off()
        return RedirectResponse("/web/", status_code=308)  # the page's links are relative to its folder

    @app.get("/web/{path:path}", include_in_schema=False)
    async def web_file(path: str, request: Request) -> Response:
        name = path or "index.html"
        if name not in web:
            raise web_off() if not web else ApiError(404, f"web/{name} is not a file of the in-browser demo")
        file, gzipped = web[name]
        return static_file(request, file, WEB_TYPES[Path(name).suffix], WEB_HEADERS, gzipped)

    def model_file(name: str):
        """The route of one file the demo loads from the bundle: this name only, and only inside the folder."""
        async def send(request: Request) -> Response:
            if not cfg.web:
                raise web_off()
            try:
                file = bp.bundle_file(Path(cfg.bundle_dir), name)
            except ValueError as exc:
                raise ApiError(404, f"{name} is not served: {exc}") from exc
            if not file.is_file():
                raise ApiError(404, f"{name} is not in this bundle" + (" (model_card.json's onnx entry says why)"
                                                                       if name == "model.onnx" else ""))
            return static_file(request, file, MODEL_FILES[name], FILE_HEADERS)
        return send

    for name in MODEL_FILES:
        app.add_api_route(f"/{name}", model_file(name), methods=["GET"], include_in_schema=False)

    app.add_middleware(RequestGuard, max_body=int(cfg.max_upload_mb * MIB), max_inflight=cfg.max_inflight,
                       grace_s=cfg.upload_grace_s, min_rate=cfg.min_upload_kbps * 1024)
    return app


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    d = ServeConfig()
    p = argparse.ArgumentParser(description="Serve this bundle's model over HTTP (POST /classify, /v1/predict).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on; 0.0.0.0 for every interface")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=d.workers, help="server processes, each with its own model")
    p.add_argument("--threads", type=int, default=d.threads,
                   help="inference threads (one interpreter each) per worker; 0: CPU cores / workers")
    p.add_argument("--bundle_dir", default=d.bundle_dir, help="folder with model_card.json, labels.txt, *.tflite")
    p.add_argument("--model", default=None, help="a .tflite file of the bundle (default: the card's default_model)")
    p.add_argument("--name", default=None, help="model name shown by the API (default: the bundle folder's name)")
    p.add_argument("--top_k", type=int, default=d.top_k, help="classes per image in /classify; /v1/predict's default")
    p.add_argument("--threshold", type=float, default=None,
                   help="answers whose top probability is below this are marked unknown (default: the model card's "
                        "threshold, read off cross-validated predictions; 0: never)")
    p.add_argument("--max_upload_mb", type=float, default=d.max_upload_mb, help="largest request body")
    p.add_argument("--max_zip_files", type=int, default=d.max_zip_files, help="most files in one zip")
    p.add_argument("--max_zip_mb", type=float, default=d.max_zip_mb, help="largest total uncompressed size of a zip")
    p.add_argument("--max_zip_ratio", type=float, default=d.max_zip_ratio,
                   help="largest compression ratio of a zip member over 1 MiB")
    p.add_argument("--max_pixels", type=int, default=d.max_pixels, help="largest image, in pixels")
    p.add_argument("--max_inflight", type=int, default=d.max_inflight, help="requests handled at once per worker")
    p.add_argument("--upload_grace_s", type=float, default=d.upload_grace_s,
                   help="seconds an upload may take before --min_upload_kbps applies")
    p.add_argument("--min_upload_kbps", type=float, default=d.min_upload_kbps,
                   help="slowest average upload rate after the grace period (KiB/s); slower uploads get a 408")
    p.add_argument("--no_web", dest="web", action="store_false",
                   help="do not serve the in-browser demo at /web/, nor the model files it loads (model.onnx, "
                        "labels.txt, model_card.json): for a server whose model must not be downloadable")
    p.add_argument("--log_level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    args = build_parser().parse_args(argv)
    if args.top_k < 1 or args.workers < 1 or args.threads < 0 or args.max_upload_mb <= 0 \
            or args.min_upload_kbps <= 0 or args.upload_grace_s < 0:
        raise SystemExit("error: --top_k and --workers must be at least 1, --threads 0 or more, "
                         "--max_upload_mb and --min_upload_kbps positive, --upload_grace_s 0 or more")
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    fields = {f.name for f in dataclasses.fields(ServeConfig)}
    cfg = ServeConfig(**{k: v for k, v in vars(args).items() if k in fields})
    cfg.bundle_dir = str(Path(cfg.bundle_dir).resolve())
    common = {"host": args.host, "port": args.port, "log_level": args.log_level, "server_header": False,
              "timeout_graceful_shutdown": 10}
    if cfg.workers == 1:
        uvicorn.run(create_app(cfg), **common)
    else:  # each worker process imports this module and builds its app from the environment
        os.environ[CONFIG_ENV] = json.dumps(dataclasses.asdict(cfg))
        os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
        if str(HERE) not in sys.path:
            sys.path.append(str(HERE))
        _run_workers(uvicorn.Config(f"{Path(__file__).stem}:create_app", factory=True, workers=cfg.workers,
                                    **common))
    return 0


def _run_workers(config) -> None:
    """uvicorn.run's multi-process path, with one fix: uvicorn binds the shared socket with proto 0, so asyncio
    never sets TCP_NODELAY on the connections it accepts and every keep-alive response waits ~40 ms for the
    client's delayed ACK (uvicorn issue 3149). Rebuilding the socket object with proto TCP restores NODELAY."""
    import socket

    from uvicorn.supervisors import Multiprocess

    sock = config.bind_socket()
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
        sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
    try:
        Multiprocess(config, sockets=[sock]).run()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
