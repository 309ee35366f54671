"""Read a PyTorch legacy (non-zip) `.pth` state dict with NumPy only: no torch at run time.

Layout written by torch's legacy `_save`: pickled magic number, protocol version and sys_info; the pickled state
dict (tensors refer to storages through persistent ids `('storage', type, key, location, numel)`); the pickled list
of storage keys; then, per key, an int64 element count followed by the raw little-endian bytes.

The unpickler only resolves the handful of names a state dict needs, so a hostile file cannot run code.
"""

from __future__ import annotations

import collections
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class TorchFileError(ValueError):
    pass


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _TensorRef:
    """A tensor waiting for its storage bytes, which come after the pickled dict."""

    def __init__(self, storage_key: str, offset: int, size: tuple[int, ...], stride: tuple[int, ...]):
        self.storage_key, self.offset, self.size, self.stride = storage_key, offset, tuple(size), tuple(stride)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *_ignored):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, fh, storages: dict[str, tuple[np.dtype, int]]):
        super().__init__(fh)
        self._storages = storages

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise TorchFileError(f"refusing to load {module}.{name} from a weights file (only tensors are allowed)")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel = pid[:5]
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise TorchFileError(f"unexpected persistent id {pid!r}")
        self._storages[key] = (storage_type.dtype, int(numel))
        return key


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Return the state dict as name -> float32/int NumPy array, in the file's order."""
    path = Path(path)
    with open(path, "rb") as fh:
        if pickle.load(fh) != LEGACY_MAGIC:  # noqa: S301 - ints only; see _RestrictedUnpickler for the dict
            raise TorchFileError(f"{path.name}: not a legacy PyTorch file (zip-format files are not supported)")
        pickle.load(fh)  # protocol version
        pickle.load(fh)  # sys_info
        storages: dict[str, tuple[np.dtype, int]] = {}
        state = _RestrictedUnpickler(fh, storages).load()
        keys = _RestrictedUnpickler(fh, storages).load()
        raw = {key: _read_storage(fh, *storages[key], key) for key in keys}
        if fh.read(1):
            raise TorchFileError(f"{path.name}: trailing bytes after the last storage")
    return collections.OrderedDict((name, _materialise(ref, raw)) for name, ref in state.items())


def _read_storage(fh, dtype: np.dtype, numel: int, key: str) -> np.ndarray:
    (count,) = struct.unpack("<q", fh.read(8))
    if count != numel:
        raise TorchFileError(f"storage {key}: header says {count} elements, pickle says {numel}")
    data = fh.read(count * dtype.itemsize)
    if len(data) != count * dtype.itemsize:
        raise TorchFileError(f"storage {key}: file is truncated")
    return np.frombuffer(data, dtype=dtype.newbyteorder("<"))


def _materialise(ref: Any, raw: dict[str, np.ndarray]) -> np.ndarray:
    if not isinstance(ref, _TensorRef):
        return np.asarray(ref)
    storage = raw[ref.storage_key]
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[ref.offset :], shape=ref.size, strides=tuple(s * itemsize for s in ref.stride)
    )
    return np.array(view, dtype=storage.dtype.newbyteorder("="))
