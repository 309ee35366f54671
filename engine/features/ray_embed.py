"""When one machine is not enough to embed: backbone features on a Ray cluster (see docs/scaling.md).

The images are listed on the driver (a local folder, or any path pyarrow/fsspec reads, e.g.
`s3://bucket/photos` when its credentials are set), hashed and then read and decoded in Ray tasks, and embedded by
`map_batches` on a fixed pool of actors, each holding one LiteRT interpreter of the same float32 backbone file the
local path uses. Every finished block becomes a Parquet shard keyed exactly like the local cache (sha256, backbone
id, image size, preprocessing id) and is merged into the EmbeddingStore at once, so a later training run finds the
vectors, and re-running after an interruption embeds only what is missing. Decoding is `engine.data.images.prepare`
with the local path's error handling, so vectors and refusal messages are the same on both paths.

Nothing here imports Ray or TensorFlow at module level: `python -m engine --help` stays fast, the Ray workers
never load TensorFlow, and Ray is optional (requirements-ray.txt). Fine-tuning across devices is
engine.learn.strategy.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from engine.config.backbones import DEFAULT_BACKBONE
from engine.core.events import EventKind, ProgressCallback, emit
from engine.core.files import has_hidden_part, is_hidden
from engine.data import images
from engine.features.backbones import resolve
from engine.features.embeddings import Embedder, EmbeddingStore, embed_files, preprocess_id

log = logging.getLogger(__name__)

SHARD_COLUMNS = ("sha256", "backbone", "image_size", "preprocess", "dim", "vector")
HASH_BATCH = 64  # files per hashing task: enough to amortise a task's overhead (~1 ms), small enough to spread


class DistributedError(ValueError):
    """A cluster or strategy setting that cannot work, worded for the user (what to install, start or set); a
    ValueError so the CLI reports it like any other bad option."""


@dataclass
class EmbedReport:
    """What an `embed` run did; the vectors themselves are in the EmbeddingStore (and the Parquet shards)."""

    paths: list[str]
    shas: list[str | None]  # per path; None when the file could not be read at all
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), as the local path words them
    cached: int = 0  # images whose vectors were already in the store (or in shards from an earlier run)
    computed: int = 0  # images embedded by this run
    merged: int = 0  # vectors taken from shards that were not in the store yet
    seconds: float = 0.0  # embedding time (listing and hashing excluded)
    backend: str = "local"

    @property
    def images_per_s(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0


# ----------------------------------------------------------------------------------------------------------------
# Files: local folders or anything pyarrow / fsspec reads
# ----------------------------------------------------------------------------------------------------------------
def filesystem(uri: str | Path):
    """(pyarrow FileSystem, path inside it) for a local path, a pyarrow URI (s3://, gs://, hdfs://) or any fsspec
    URL (pyarrow wraps it); pyarrow filesystems pickle, so Ray tasks on other nodes can read through them."""
    import pyarrow.fs as pafs

    text = str(uri)
    if "://" not in text:
        return pafs.LocalFileSystem(), str(Path(text).expanduser().resolve())
    try:
        return pafs.FileSystem.from_uri(text)
    except Exception:  # noqa: BLE001 - pyarrow raises ArrowInvalid/ValueError/OSError for schemes it lacks
        import fsspec

        fs, path = fsspec.core.url_to_fs(text)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def list_images(image_dir: str | Path) -> tuple[Any, list[str]]:
    """The filesystem and the sorted image files under image_dir (recursive; hidden files and folders and
    __MACOSX skipped, as the dataset scanner does). Goes by extension: sniffing every object in a bucket would
    cost one request per file."""
    import pyarrow.fs as pafs

    fs, root = filesystem(image_dir)
    info = fs.get_file_info(root)
    if info.type != pafs.FileType.Directory:
        raise DistributedError(f"Image folder '{image_dir}' does not exist (or is not a folder)")
    found = []
    for entry in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if entry.type != pafs.FileType.File:
            continue
        rel = PurePosixPath(entry.path[len(root):].lstrip("/"))
        if not has_hidden_part(rel.parts) and rel.suffix.lower() in images.SUPPORTED:
            found.append(entry.path)
    return fs, sorted(found)


def file_name(path: str) -> str:
    return PurePosixPath(path).name


def _read(fs, path: str) -> bytes:
    with fs.open_input_stream(path) as fh:
        return fh.read()


def _hash(fs, path: str) -> tuple[str, str]:
    """(sha256, "") or ("", reason) worded like the dataset scanner's."""
    try:
        return images.bytes_sha256(_read(fs, path)), ""
    except OSError as exc:
        return "", f"{file_name(path)}: cannot be read ({exc.strerror or exc})"


def _to_unit_float(image_uint8: np.ndarray) -> np.ndarray:
    # Same arithmetic as engine.features.embeddings.to_unit_float, which Ray workers must not import: that module loads
    # TensorFlow (seconds and ~1 GB per worker). tests/test_scaling.py checks both paths agree to 1e-6.
    return image_uint8.astype(np.float32) * np.float32(1.0 / 255.0)


def _decode(data: bytes, name: str, size: int, center_crop: bool) -> np.ndarray | str:
    """engine.features.embeddings._prepare for bytes: the uint8 image, or the reason in the local path's words."""
    try:
        return images.prepare(data, size, center_crop, name=name)
    except images.ImageError as exc:
        return str(exc)
    except (OSError, ValueError) as exc:
        return f"{name}: could not be read ({exc})"


# ----------------------------------------------------------------------------------------------------------------
# Parquet shards: the portable form of the cache
# ----------------------------------------------------------------------------------------------------------------
def default_shard_dir(store) -> str:
    return str(Path(store.path).parent / "shards")


def write_shard(shard_dir: str, shas: list[str], vectors: np.ndarray, backbone: str, image_size: int,
                preprocess: str) -> str:
    """One Parquet file, written under a temporary name and then renamed, so a reader never sees half of it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, root = filesystem(shard_dir)
    fs.create_dir(root, recursive=True)
    n, dim = vectors.shape
    table = pa.table({
        "sha256": pa.array(shas, pa.string()),
        "backbone": pa.array([backbone] * n, pa.string()),
        "image_size": pa.array([image_size] * n, pa.int32()),
        "preprocess": pa.array([preprocess] * n, pa.string()),
        "dim": pa.array([dim] * n, pa.int32()),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float32).ravel()), dim),
    })
    name = f"{backbone}-{hashlib.sha256(preprocess.encode()).hexdigest()[:8]}-{uuid.uuid4().hex[:12]}.parquet"
    tmp, final = f"{root}/.{name}.tmp", f"{root}/{name}"
    pq.write_table(table, tmp, filesystem=fs)
    fs.move(tmp, final)
    return final


def merge_shards(shard_dir: str, store) -> int:
    """Copy into the store every shard row it lacks (any backbone and preprocessing); returns the count.

    Only the key columns are read unless a shard holds something new, so re-merging a large folder is cheap.
    An unreadable shard (a foreign or damaged file) is reported and skipped: its images are simply embedded again.
    """
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, root = filesystem(shard_dir)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return 0
    merged = 0
    for entry in sorted(fs.get_file_info(pafs.FileSelector(root)), key=lambda e: e.path):
        if not entry.path.endswith(".parquet") or is_hidden(file_name(entry.path)):
            continue
        try:
            keys = pq.read_table(entry.path, filesystem=fs, columns=["sha256", "backbone", "preprocess"])
            groups: dict[tuple[str, str], list[int]] = {}
            for i, (bb, prep) in enumerate(zip(keys["backbone"].to_pylist(), keys["preprocess"].to_pylist(),
                                               strict=True)):
                groups.setdefault((bb, prep), []).append(i)
            shas = keys["sha256"].to_pylist()
            full = None
            for (bb, prep), rows in groups.items():
                have = store.get_many([shas[i] for i in rows], bb, prep)
                new = [i for i in rows if shas[i] not in have]
                if not new:
                    continue
                if full is None:
                    full = pq.read_table(entry.path, filesystem=fs, columns=["vector"])["vector"].combine_chunks()
                vecs = full.take(new).flatten().to_numpy().reshape(len(new), -1)
                store.put_many(((shas[i], v) for i, v in zip(new, vecs, strict=True)), bb, prep)
                merged += len(new)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a bad file
            log.warning("Skipping unreadable embedding shard %s (%s)", entry.path, exc)
    if merged:
        log.info("Merged %d vectors from the shards in %s", merged, shard_dir)
    return merged


# ----------------------------------------------------------------------------------------------------------------
# Embedding: local (engine.features.embeddings.embed_files) or on Ray
# ----------------------------------------------------------------------------------------------------------------
def _setup(image_dir, backbone, image_size, center_crop, store, cache_dir):

    resolved = resolve(backbone, image_size)
    if store is None:
        store = EmbeddingStore(Path(cache_dir) / "embeddings.sqlite" if cache_dir else None)
    fs, paths = list_images(image_dir)
    return resolved, preprocess_id(resolved.image_size, center_crop), store, fs, paths


def embed_local(image_dir: str | Path, backbone: str | None = None, image_size: int | None = None, *,
                center_crop: bool = False, store=None, cache_dir: str | None = None, shard_dir: str | None = None,
                threads: int | None = None, progress: ProgressCallback | None = None) -> EmbedReport:
    """Embed every image under a local image_dir with the training code path (engine.features.embeddings); `threads` is
    LiteRT's thread count (default: all cores), decoding runs in one thread beside it."""
    import pyarrow.fs as pafs


    resolved, _prep, store, fs, paths = _setup(image_dir, backbone or DEFAULT_BACKBONE, image_size, center_crop,
                                               store, cache_dir)
    if not isinstance(fs, pafs.LocalFileSystem):
        raise DistributedError(f"'{image_dir}' is not a local folder: embed it on a cluster with --ray ADDRESS")
    merged = merge_shards(shard_dir or default_shard_dir(store), store)
    hashed = [_hash(fs, p) for p in paths]
    failed = [(p, reason) for p, (_, reason) in zip(paths, hashed, strict=True) if reason]
    ok = [i for i, (sha, _) in enumerate(hashed) if sha]
    local_paths = [paths[i] for i in ok]
    embedder = Embedder(resolved, num_threads=threads) if threads else None
    res = embed_files(local_paths, [hashed[i][0] for i in ok], resolved, center_crop=center_crop, store=store,
                      embedder=embedder, progress=progress)
    failed += [(local_paths[i], reason) for i, reason in res.failed]
    return EmbedReport(paths, [sha or None for sha, _ in hashed], sorted(failed), cached=res.cached,
                       computed=res.computed, merged=merged, seconds=res.seconds, backend="local")


class _EmbedActor:
    """One LiteRT interpreter per actor (Ray Data calls __call__ on one batch at a time per actor)."""

    def __init__(self, model: list, threads: int):
        import ray

        model = ray.get(model[0])  # a reference in a list: Ray passes it through unresolved, the bytes move once
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # pragma: no cover - depends on what the cluster's nodes have installed
            from tensorflow.lite import Interpreter
        self.interpreter = Interpreter(model_content=model, num_threads=threads)
        self.interpreter.allocate_tensors()
        self._in = self.interpreter.get_input_details()[0]["index"]
        out = self.interpreter.get_output_details()[0]
        self._out, self.dim = out["index"], int(out["shape"][-1])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        errors = batch["error"]
        vectors = np.zeros((len(errors), self.dim), np.float32)
        for i, err in enumerate(errors):
            if not err:
                self.interpreter.set_tensor(self._in, _to_unit_float(batch["image"][i])[None])
                self.interpreter.invoke()
                vectors[i] = self.interpreter.get_tensor(self._out)[0]
        return {"path": batch["path"], "sha256": batch["sha256"], "error": errors, "vector": vectors}


def _hash_batch(batch: dict[str, np.ndarray], fs) -> dict[str, np.ndarray]:
    done = [_hash(fs, p) for p in batch["path"]]
    return {"path": batch["path"], "sha256": np.array([s for s, _ in done], dtype=object),
            "error": np.array([e for _, e in done], dtype=object)}


def _decode_batch(batch: dict[str, np.ndarray], fs, size: int, center_crop: bool) -> dict[str, np.ndarray]:
    n = len(batch["path"])
    out = np.zeros((n, size, size, 3), np.uint8)
    errors = []
    for i, path in enumerate(batch["path"]):
        try:
            img = _decode(_read(fs, path), file_name(path), size, center_crop)
        except OSError as exc:
            img = f"{file_name(path)}: could not be read ({exc})"
        if isinstance(img, str):
            errors.append(img)
        else:
            out[i] = img
            errors.append("")
    return {"path": batch["path"], "sha256": batch["sha256"], "error": np.array(errors, dtype=object), "image": out}


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """The running Ray (tests, notebooks), or a connection to `address` ('auto', 'ray://head:10001', host:port),
    or a local one-machine cluster when address is None; only a session started here is shut down here."""
    try:
        import ray
    except ImportError as exc:
        raise DistributedError("Ray is not installed: pip install -r requirements-ray.txt (on every node)") from exc
    if address and address.startswith("ray://"):
        # Ray Data's streaming executor needs a real driver (Ray 2.60 fails inside it under Ray Client).
        raise DistributedError(f"Ray Data cannot run through Ray Client ('{address}'): run the command on a node of "
                               "the cluster with --ray auto, or submit it there as a Ray job (docs/scaling.md)")
    started = False
    if not ray.is_initialized():
        # Remote nodes get this engine package from the driver; they need only the pinned requirements.
        here = {"num_cpus": num_cpus, "include_dashboard": False} if not address else {
            "runtime_env": {"py_modules": [str(Path(__file__).resolve().parents[1])]}}
        try:
            # "local": a new one-machine cluster, never one found through /tmp/ray or RAY_ADDRESS by accident.
            ray.init(address=address or "local", log_to_driver=False, logging_level=logging.WARNING, **here)
        except ConnectionError as exc:
            raise DistributedError(
                f"Could not connect to the Ray cluster at '{address}' ({exc}). Is it started (`ray start --head`)? "
                "Ray's token authentication also needs RAY_AUTH_MODE=token and the cluster's token "
                "(~/.ray/auth_token or RAY_AUTH_TOKEN) when an address is given; --ray auto finds both on a node "
                "of the cluster (docs/scaling.md)") from exc
        started = True
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the CLI draws one bar for the whole job
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def embed_with_ray(image_dir: str | Path, backbone: str | None = None, image_size: int | None = None, *,
                   center_crop: bool = False, address: str | None = None, actors: int | None = None,
                   threads_per_actor: int = 1, decode_cpus: float = 1.0, fuse_decode: bool = False,
                   batch_size: int = 32, store=None,
                   cache_dir: str | None = None, shard_dir: str | None = None,
                   progress: ProgressCallback | None = None,
                   on_shard: Callable[[str], None] | None = None) -> EmbedReport:
    """Embed every image under image_dir on a Ray cluster; vectors land in shards and in the local store.

    actors x threads_per_actor CPUs embed (default: all the cluster's CPUs but decode_cpus, one thread each);
    each decode task reserves decode_cpus. With fuse_decode the actors read and decode themselves (no decoded
    images cross the object store; what a CPU-only cluster wants, see docs/scaling.md). batch_size images make
    one block, one actor call and one shard. `on_shard(path)` runs after each shard is merged (tests interrupt
    there; a progress callback may as well raise KeyboardInterrupt).
    """

    resolved, prep, store, fs, paths = _setup(image_dir, backbone or DEFAULT_BACKBONE, image_size, center_crop,
                                              store, cache_dir)
    shard_dir = shard_dir or default_shard_dir(store)
    merged = merge_shards(shard_dir, store)
    # The float32 backbone file the local path uses (converted once, by TF, on this machine); actors get its
    # bytes through Ray, so worker nodes need neither TensorFlow nor a shared cache folder.
    model = Embedder.tflite_path(resolved).read_bytes()
    with ray_session(address) as ray:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        decode_cpus = 0.0 if fuse_decode else decode_cpus
        actors = actors or max(1, int(cpus - decode_cpus) // threads_per_actor)
        if actors * threads_per_actor + decode_cpus > cpus:
            raise DistributedError(
                f"{actors} actor(s) x {threads_per_actor} thread(s) + {decode_cpus:g} CPU for decoding need more "
                f"than the cluster's {cpus} CPUs; use fewer --actors, or --fuse_decode to decode in the actors")
        if not fuse_decode and decode_cpus <= 0:
            # 0-CPU tasks are not throttled: Ray starts a worker process per task and the machine thrashes.
            raise DistributedError("--decode_cpus must be above 0 (fractions such as 0.5 work)")
        # Pass 1: hash every file in parallel; the cache is keyed by content, so nothing else decides what is new.
        blocks = max(1, -(-len(paths) // HASH_BATCH))
        hashed = (ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks)
                  .map_batches(_hash_batch, batch_size=None, batch_format="numpy", fn_kwargs={"fs": fs})
                  .take_all()) if paths else []
        sha_of = {row["path"]: row["sha256"] for row in hashed}
        failed = [(row["path"], row["error"]) for row in hashed if row["error"]]
        have = store.get_many(sorted({s for s in sha_of.values() if s}), resolved.backbone_id, prep)
        first: dict[str, str] = {}  # one file per new sha256: a photo stored twice is embedded once
        for p in paths:
            if sha_of.get(p) and sha_of[p] not in have:
                first.setdefault(sha_of[p], p)
        todo = [{"path": p, "sha256": s} for s, p in first.items()]
        cached = sum(1 for p in paths if sha_of.get(p) in have)
        total, done, computed = len(paths), cached + len(failed), 0
        emit(progress, EventKind.EMBED, done=done, total=total, cached=cached, images_per_s=0.0)
        start = time.perf_counter()
        if todo:
            # Decoding stays in its own tasks: Ray Data fuses a task step into the next actor step when their
            # remote arguments are equal, and the embedders would then wait for every decode. max_calls=0 (no
            # limit, a CPU task's default) makes them differ without changing what the tasks do.
            decode_args = {"num_cpus": decode_cpus, "max_calls": 0} if not fuse_decode \
                else {"num_cpus": threads_per_actor}
            ds = (ray.data.from_items(todo, override_num_blocks=max(1, -(-len(todo) // batch_size)))
                  .map_batches(_decode_batch, batch_size=None, batch_format="numpy", **decode_args,
                               fn_kwargs={"fs": fs, "size": resolved.image_size, "center_crop": center_crop})
                  .map_batches(_EmbedActor, batch_size=None, batch_format="numpy",
                               compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=threads_per_actor,
                               fn_constructor_kwargs={"model": [ray.put(model)], "threads": threads_per_actor}))
            copies = _copies(paths, sha_of)
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                ok = [i for i, e in enumerate(batch["error"]) if not e]
                bad = [(str(batch["path"][i]), str(batch["error"][i])) for i, e in enumerate(batch["error"]) if e]
                shas = [str(batch["sha256"][i]) for i in ok]
                if ok:
                    vecs = np.asarray(batch["vector"][ok], np.float32)
                    shard = write_shard(shard_dir, shas, vecs, resolved.backbone_id, resolved.image_size, prep)
                    store.put_many(zip(shas, vecs, strict=True), resolved.backbone_id, prep)
                    if on_shard:
                        on_shard(shard)
                for path, reason in bad:  # a bad file's copies are just as bad
                    failed += [(p, reason.replace(file_name(path), file_name(p), 1)) for p in copies[sha_of[path]]]
                    log.warning("Skipping %s", reason)
                computed += sum(len(copies[s]) for s in shas)
                done += sum(len(copies[s]) for s in shas) + sum(len(copies[sha_of[p]]) for p, _ in bad)
                emit(progress, EventKind.EMBED, done=done, total=total, cached=cached,
                     images_per_s=computed / max(time.perf_counter() - start, 1e-9))
        seconds = time.perf_counter() - start
    log.info("Embedded %d images on Ray (%d cached, %d new, %d unreadable) in %.1f s", len(paths), cached, computed,
             len(failed), seconds)
    return EmbedReport(paths, [sha_of.get(p) or None for p in paths], sorted(failed), cached=cached,
                       computed=computed, merged=merged, seconds=seconds, backend="ray")


def _copies(paths: list[str], sha_of: dict[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p in paths:
        if sha_of.get(p):
            out.setdefault(sha_of[p], []).append(p)
    return out
