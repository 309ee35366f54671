"""Backbone features for every image, computed once and kept in an on-disk SQLite store.

A feature vector is keyed by (sha256 of the file bytes, backbone id, image size, preprocessing), so renaming or
moving a file, or relabelling it, never costs a new embedding; re-running on a folder with 10 new images embeds
only those 10.

The backbone runs as a float32 TFLite model, made once per machine: the table's backbones written from their
weights (engine.features.lite_tflite), any other module converted from the `hub.KerasLayer` every handle goes
through. On CPU, LiteRT's XNNPACK kernels are about twice as fast as TF for this network, and the features agree
with the Keras model to ~1e-5 (checked in tests). Decoding runs in a worker thread ahead of inference (OpenCV and
Pillow release the GIL), so the two overlap; one decoder beats two on 2 cores, where LiteRT already uses both.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.config.backbones import BACKBONES
from engine.config.training import CENTER_CROP_ASPECT
from engine.core.cache import cache_root
from engine.core.events import EventKind, Every, ProgressCallback, emit
from engine.core.fileio import atomic_write_bytes, made_once, thread_sqlite
from engine.core.litert import tflite_interpreter
from engine.data import images
from engine.data.dataset import prepare_image
from engine.features import image_stats
from engine.features.backbones import ResolvedBackbone, resolve

log = logging.getLogger(__name__)

EMBEDDER_VERSION = "tflite-f32-1"  # part of every cache key: bump when the embedder's numerics change


@dataclass
class EmbedResult:
    features: np.ndarray  # (n_ok, D) float32, rows in the order of `ok`
    ok: list[int]  # indices into the input list that were embedded
    failed: list[tuple[int, str]] = field(default_factory=list)  # (index, reason) for images that could not be read
    cached: int = 0
    computed: int = 0
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0


def preprocess_id(image_size: int, center_crop: bool) -> str:
    return f"{EMBEDDER_VERSION}|{image_size}|{f'crop{CENTER_CROP_ASPECT:g}' if center_crop else 'stretch'}"


class EmbeddingStore:
    """SQLite table of float32 feature vectors; safe for several processes (WAL, busy timeout)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else cache_root() / "embeddings.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS features (sha256 TEXT, backbone TEXT, preprocess TEXT, dim INTEGER,"
                " vec BLOB, created REAL, PRIMARY KEY (sha256, backbone, preprocess))"
            )

    def _conn(self) -> sqlite3.Connection:
        return thread_sqlite(self._local, self.path)

    def get_many(self, shas: Sequence[str], backbone: str, preprocess: str) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        db = self._conn()
        for start in range(0, len(shas), 500):
            chunk = list(shas[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = db.execute(
                f"SELECT sha256, vec FROM features WHERE backbone=? AND preprocess=? AND sha256 IN ({marks})",
                [backbone, preprocess, *chunk],
            )
            found.update((sha, np.frombuffer(vec, dtype=np.float32)) for sha, vec in rows)
        return found

    def put_many(self, items: Iterable[tuple[str, np.ndarray]], backbone: str, preprocess: str) -> None:
        now = time.time()
        rows = [(sha, backbone, preprocess, int(v.size), np.asarray(v, np.float32).tobytes(), now) for sha, v in items]
        with self._conn() as db:
            db.executemany("INSERT OR REPLACE INTO features VALUES (?,?,?,?,?,?)", rows)

    def count(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM features").fetchone()[0]


class Embedder:
    """The backbone as a float32 TFLite model taking one [0, 1] image at a time."""

    def __init__(self, resolved: ResolvedBackbone, num_threads: int | None = None):
        self.resolved = resolved
        self.path = self.tflite_path(resolved)
        self.interpreter = tflite_interpreter(model_path=str(self.path), num_threads=num_threads)
        self.interpreter.allocate_tensors()
        self._in = self.interpreter.get_input_details()[0]["index"]
        self._out = self.interpreter.get_output_details()[0]["index"]
        self.feature_size = int(self.interpreter.get_output_details()[0]["shape"][-1])

    @staticmethod
    def cached_tflite(resolved: ResolvedBackbone) -> Path:
        return cache_root() / "embedders" / f"{resolved.backbone_id}-{resolved.image_size}-{EMBEDDER_VERSION}.tflite"

    @staticmethod
    def tflite_path(resolved: ResolvedBackbone) -> Path:
        """The float32 backbone .tflite (batch 1), compiled on first use; also the float32 export's backbone."""
        path = Embedder.cached_tflite(resolved)
        with made_once(path) as to_make:
            if to_make:
                atomic_write_bytes(path, _float32_backbone(resolved))
        return path

    def __call__(self, image_uint8: np.ndarray) -> np.ndarray:
        return self.from_unit_float(to_unit_float(image_uint8))

    def from_unit_float(self, x: np.ndarray) -> np.ndarray:
        """Features of one HxWx3 float32 image in [0, 1]."""
        self.interpreter.set_tensor(self._in, x[None])
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._out)[0].copy()


def _float32_backbone(resolved: ResolvedBackbone) -> bytes:
    """A table backbone written from its weights (~0.3 s); any other module through the TFLite converter."""
    if resolved.handle in BACKBONES:
        from engine.features import lite_graph, lite_tflite  # why: reads the 18 MB of weights, once per machine

        log.info("Writing %s at %d px as a TFLite model from its weights (once)", resolved.handle, resolved.image_size)
        return lite_tflite.float32_tflite(lite_graph.lite_graph(BACKBONES[resolved.handle]), resolved.image_size)
    log.info("Compiling %s at %d px for fast CPU embedding (once)", resolved.handle, resolved.image_size)
    from engine.features import port  # TensorFlow: only this once per module and size on a machine

    return port.float32_tflite(resolved)


def backbone_ready(handle: str, image_size: int | None = None) -> bool:
    """Whether this backbone's embedder is ready on this machine (else the first run spends ~30 s converting a
    module that is not in the table, and should say so; the table's are written from their weights in a second)."""
    if handle in BACKBONES:
        return True
    try:
        return Embedder.cached_tflite(resolve(handle, image_size)).exists()
    except Exception:  # noqa: BLE001 - an unusable handle fails later with its own clear message
        return True


def to_unit_float(image_uint8: np.ndarray) -> np.ndarray:
    return image_uint8.astype(np.float32) * np.float32(1.0 / 255.0)


def _prepare(path: str, size: int, center_crop: bool) -> tuple[np.ndarray, dict] | str:
    """Decoded, resized [0, 1] float image and the image's statistics (image_stats.stats_row, from the same decode),
    or the reason it could not be read (a worker must not raise). Read by content: an image moved since the scan
    is still found (a run trains on a snapshot)."""
    decoded: list[np.ndarray] = []
    try:
        img = to_unit_float(prepare_image(path, size, center_crop, on_decoded=decoded.append))
        return img, image_stats.stats_row(decoded[0])
    except images.ImageError as exc:
        return str(exc)
    except (OSError, ValueError) as exc:
        return f"{Path(path).name}: could not be read ({exc})"


def embed_files(
    paths: Sequence[str],
    shas: Sequence[str],
    resolved: ResolvedBackbone,
    *,
    center_crop: bool = False,
    store: EmbeddingStore | None = None,
    embedder: Embedder | None = None,
    progress: ProgressCallback | None = None,
    workers: int = 1,
) -> EmbedResult:
    """Features for each path (cached ones from the store); unreadable images are reported, not raised."""
    store = store or EmbeddingStore()
    prep = preprocess_id(resolved.image_size, center_crop)
    cached = store.get_many(list(set(shas)), resolved.backbone_id, prep)
    todo = [i for i, sha in enumerate(shas) if sha not in cached]
    vectors: dict[int, np.ndarray] = {i: cached[sha] for i, sha in enumerate(shas) if sha in cached}
    failed: list[tuple[int, str]] = []
    total, start = len(paths), time.perf_counter()
    emit(progress, EventKind.EMBED, done=len(vectors), total=total, cached=len(vectors), images_per_s=0.0)
    if todo:
        embedder = embedder or Embedder(resolved)
        vectors.update(_embed_missing(paths, shas, todo, resolved, center_crop, embedder, store, prep, failed,
                                      progress, total, len(vectors), workers))
    seconds = time.perf_counter() - start
    ok = sorted(vectors)
    dim = len(next(iter(vectors.values()))) if vectors else 0
    feats = np.stack([vectors[i] for i in ok]).astype(np.float32, copy=False) if ok else np.zeros((0, dim), np.float32)
    result = EmbedResult(feats, ok, failed, cached=len(shas) - len(todo), computed=len(todo) - len(failed),
                         seconds=seconds)
    log.info("Embedded %d images (%d cached, %d new, %d unreadable) in %.1f s", len(ok), result.cached,
             result.computed, len(failed), seconds)
    return result


def _bounded_map(pool: ThreadPoolExecutor, fn, items: Sequence, window: int = 16):
    """Like pool.map, but only `window` decodes run ahead of inference, so memory stays flat on big folders."""
    queue: deque = deque()
    for item in items:
        queue.append(pool.submit(fn, item))
        if len(queue) >= window:
            yield queue.popleft().result()
    while queue:
        yield queue.popleft().result()


def _embed_missing(paths, shas, todo, resolved, center_crop, embedder, store, prep, failed, progress, total,
                   already, workers) -> dict[int, np.ndarray]:
    out: dict[int, np.ndarray] = {}
    pending: list[tuple[str, np.ndarray]] = []
    measured: list[tuple[str, dict]] = []  # image statistics from the same decode, kept with the features
    stats = image_stats.StatsCache()

    def keep() -> None:
        store.put_many(pending, resolved.backbone_id, prep)
        stats.put_many(measured)
        pending.clear()
        measured.clear()

    t0, every = time.perf_counter(), Every()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        prepared = _bounded_map(pool, lambda i: _prepare(paths[i], resolved.image_size, center_crop), todo)
        for n, (i, img) in enumerate(zip(todo, prepared, strict=True), start=1):
            if isinstance(img, str):
                failed.append((i, img))
                log.warning("Skipping %s", img)
            else:
                out[i] = embedder.from_unit_float(img[0])
                pending.append((shas[i], out[i]))
                measured.append((shas[i], img[1]))
            if len(pending) >= 64:
                keep()
            if every.due(last=n == len(todo)):
                now = time.perf_counter()
                emit(progress, EventKind.EMBED, done=already + n, total=total, cached=already,
                     images_per_s=n / max(now - t0, 1e-9))
    if pending:
        keep()
    return out
