"""Overwrite tensors in a TensorFlow checkpoint (a SavedModel's `variables/`) without importing TensorFlow.

Why: a classifier's SavedModel differs from run to run only in the head's kernel and bias. Tracing and saving it
with TensorFlow costs ~10 s per run (plus ~3 s to import TF); copying a cached template and rewriting two tensors
in place costs milliseconds. Only same-shape, same-dtype rewrites are supported, so the file layout never moves.

The checkpoint ("tensor bundle") is `variables.data-*` (raw tensor bytes) plus `variables.index`, a LevelDB-format
table mapping each tensor's key to a BundleEntryProto (dtype, shape, shard, offset, size, masked CRC32C of the
bytes). TensorFlow verifies both the entry's CRC and each table block's CRC on load, so both are rewritten.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.export.protowire import read_varint  # protobuf's varints are LevelDB's too

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48
# TensorShapeProto.dim { size: <one byte> } as it is serialized: a dimension under 128 (saved_model.pb holds the same)
ONE_BYTE_DIM = b"\x12\x02\x08"
_BLOCK_TRAILER = 5  # 1 byte compression type + 4 bytes masked CRC32C


class BundleError(ValueError):
    pass


# ----------------------------------------------------------------------------------------------------------------
# CRC32C (Castagnoli), as LevelDB and TensorFlow mask it
# ----------------------------------------------------------------------------------------------------------------
def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    crc, table = 0xFFFFFFFF, _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


@dataclass
class _Entry:
    key: str
    dtype: int
    shard: int
    offset: int
    size: int
    crc_pos: int  # absolute position of the fixed32 CRC in variables.index
    block_start: int  # the data block holding the entry (for its trailer CRC)
    block_size: int
    value_start: int = 0  # the BundleEntryProto's bytes in variables.index
    value_end: int = 0


def _parse_entry(value: bytes) -> tuple[dict[int, int], int | None]:
    """BundleEntryProto scalar fields {number: value} and the offset of field 6 (crc32c, fixed32) in `value`."""
    fields: dict[int, int] = {}
    crc_at = None
    for number, (wire, start, _end) in _fields(value).items():
        if wire == 0:
            fields[number] = read_varint(value, start)[0]
        elif wire == 5:
            fields[number] = struct.unpack_from("<I", value, start)[0]
            crc_at = start if number == 6 else crc_at
    return fields, crc_at


def _block_entries(index: bytes, start: int, size: int):
    """(key, value_start, value_end) of each entry of one LevelDB block."""
    block = index[start : start + size]
    if index[start + size] != 0:
        raise BundleError("compressed checkpoint index blocks are not supported")
    n_restarts = struct.unpack_from("<I", block, size - 4)[0]
    end = size - 4 - 4 * n_restarts
    pos, key = 0, b""
    while pos < end:
        shared, pos = read_varint(block, pos)
        non_shared, pos = read_varint(block, pos)
        vlen, pos = read_varint(block, pos)
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        yield key, start + pos, start + pos + vlen
        pos += vlen


def read_index(index_path: str | Path) -> dict[str, _Entry]:
    index = Path(index_path).read_bytes()
    footer = index[-_FOOTER_SIZE:]
    if struct.unpack_from("<Q", footer, _FOOTER_SIZE - 8)[0] != _TABLE_MAGIC:
        raise BundleError(f"{index_path} is not a TensorFlow checkpoint index")
    pos = 0
    _, pos = read_varint(footer, pos)  # metaindex handle, unused
    _, pos = read_varint(footer, pos)
    idx_off, pos = read_varint(footer, pos)
    idx_size, pos = read_varint(footer, pos)
    entries: dict[str, _Entry] = {}
    for _, v0, _v1 in _block_entries(index, idx_off, idx_size):
        blk_off, p = read_varint(index, v0)
        blk_size, _ = read_varint(index, p)
        for key, s, e in _block_entries(index, blk_off, blk_size):
            if not key:
                continue  # the bundle header
            fields, crc_at = _parse_entry(index[s:e])
            if crc_at is None:
                continue
            entries[key.decode()] = _Entry(key.decode(), fields.get(1, 0), fields.get(3, 0), fields.get(4, 0),
                                           fields.get(5, 0), s + crc_at, blk_off, blk_size, s, e)
    return entries


_DTYPES = {1: np.float32}  # DT_FLOAT; the head is float32


def read_tensor(variables_prefix: str | Path, key: str) -> np.ndarray:
    """The raw values of one float32 tensor (flat), for finding keys and for tests."""
    prefix = Path(variables_prefix)
    entry = read_index(prefix.with_name(prefix.name + ".index"))[key]
    data = _data_path(prefix, entry)
    with open(data, "rb") as fh:
        fh.seek(entry.offset)
        return np.frombuffer(fh.read(entry.size), dtype=_DTYPES[entry.dtype]).copy()


def _data_path(prefix: Path, entry: _Entry) -> Path:
    shards = sorted(prefix.parent.glob(prefix.name + ".data-*"))
    matching = [p for p in shards if p.name.endswith(f"-{entry.shard:05d}-of-{len(shards):05d}")]
    if not matching:
        raise BundleError(f"checkpoint shard {entry.shard} of {prefix} is missing")
    return matching[0]


def _fields(value: bytes) -> dict[int, tuple[int, int, int]]:
    """Each field of a protobuf message: {number: (wire type, payload start, payload end)} (the last one of a
    number)."""
    fields, pos = {}, 0
    while pos < len(value):
        tag, pos = read_varint(value, pos)
        number, wire = tag >> 3, tag & 7
        start = pos
        if wire == 0:
            _, pos = read_varint(value, pos)
        elif wire == 2:
            length, pos = read_varint(value, pos)
            start, pos = pos, pos + length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise BundleError(f"unexpected protobuf wire type {wire}")
        fields[number] = (wire, start, pos)
    return fields


def _padded_varint(n: int, width: int) -> bytes:
    """n as a varint of exactly `width` bytes (continuation bits on leading zero groups: protobuf reads it)."""
    out = bytearray()
    for i in range(width):
        out.append((n & 0x7F) | (0x80 if i < width - 1 else 0))
        n >>= 7
    if n:
        raise BundleError("a value does not fit the varint it replaces")
    return bytes(out)


def shrink_last_dim(variables_prefix: str | Path, keys: list[str], old: int, new: int) -> None:
    """Give tensors a smaller last dimension (old -> new, both under 128) in place: their shape and byte size in
    variables.index change, every byte keeps its place (the data keeps the old slot, partly unused), so the index's
    layout never moves. Write the new values with overwrite_tensors afterwards."""
    if not (0 < new <= old < 128):
        raise BundleError(f"cannot shrink a dimension of {old} to {new} in place")
    prefix = Path(variables_prefix)
    index_path = prefix.with_name(prefix.name + ".index")
    entries = read_index(index_path)
    index = bytearray(index_path.read_bytes())
    dirty: set[tuple[int, int]] = set()
    for key in keys:
        if key not in entries:
            raise BundleError(f"checkpoint {prefix} has no tensor {key!r}")
        entry = entries[key]
        value = bytes(index[entry.value_start:entry.value_end])
        fields = _fields(value)
        _, shape_start, shape_end = fields[2]
        last_dim = value.rfind(ONE_BYTE_DIM + bytes([old]), shape_start, shape_end)
        if last_dim < 0 or last_dim + 4 != shape_end:
            raise BundleError(f"tensor {key!r} does not end in a dimension of {old}")
        index[entry.value_start + last_dim + 3] = new
        _, size_start, size_end = fields[5]
        index[entry.value_start + size_start:entry.value_start + size_end] = _padded_varint(
            entry.size // old * new, size_end - size_start)
        dirty.add((entry.block_start, entry.block_size))
        with open(_data_path(prefix, entry), "r+b") as fh:  # the slot's unused tail: zeros, not the old values
            fh.seek(entry.offset)
            fh.write(bytes(entry.size))
    for start, size in dirty:
        struct.pack_into("<I", index, start + size + 1, masked_crc(bytes(index[start : start + size + 1])))
    index_path.write_bytes(bytes(index))


def overwrite_tensors(variables_prefix: str | Path, values: dict[str, np.ndarray]) -> None:
    """Replace the bytes of existing tensors (same dtype and size) and fix every CRC TensorFlow checks."""
    prefix = Path(variables_prefix)
    index_path = prefix.with_name(prefix.name + ".index")
    entries = read_index(index_path)
    index = bytearray(index_path.read_bytes())
    dirty_blocks: set[tuple[int, int]] = set()
    for key, value in values.items():
        if key not in entries:
            raise BundleError(f"checkpoint {prefix} has no tensor {key!r}")
        entry = entries[key]
        if entry.dtype not in _DTYPES:
            raise BundleError(f"tensor {key!r} is not float32")
        raw = np.ascontiguousarray(value, dtype=_DTYPES[entry.dtype]).tobytes()
        if len(raw) != entry.size:
            raise BundleError(f"tensor {key!r} holds {entry.size} bytes; the new value has {len(raw)}")
        with open(_data_path(prefix, entry), "r+b") as fh:
            fh.seek(entry.offset)
            fh.write(raw)
        struct.pack_into("<I", index, entry.crc_pos, masked_crc(raw))
        dirty_blocks.add((entry.block_start, entry.block_size))
    for start, size in dirty_blocks:
        # A block's trailer CRC covers its contents and the compression-type byte.
        struct.pack_into("<I", index, start + size + 1, masked_crc(bytes(index[start : start + size + 1])))
    index_path.write_bytes(bytes(index))
