"""Protocol Buffers' wire format, the little of it that appending a head to a cached ONNX graph needs.

A run's model.onnx is the cached backbone's bytes with a few messages added (engine.export.onnx_model). Building
them with the `onnx` package cost every training run ~0.7 s of import (onnx -> ml_dtypes) and a parse of the 13 MB
graph; written here, composing is a copy of the bytes. Reading splits a message into its top-level fields only, so
a field's payload (a 5 MB initializer, a whole graph) is sliced, never decoded.
Reference: https://protobuf.dev/programming-guides/encoding/
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

VARINT, I64, LEN, I32 = 0, 1, 2, 5  # the wire types a proto2/proto3 message may hold (groups are not used by ONNX)


def varint(n: int) -> bytes:
    """n as a base-128 varint; a negative int64 as its 64-bit two's complement (10 bytes), as protobuf writes it."""
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def int_field(number: int, value: int) -> bytes:
    return tag(number, VARINT) + varint(value)


def bytes_field(number: int, payload: bytes | str) -> bytes:
    """A length-delimited field: a string, bytes or an embedded message's serialization."""
    data = payload.encode() if isinstance(payload, str) else payload
    return tag(number, LEN) + varint(len(data)) + data


@dataclass(frozen=True)
class Field:
    number: int
    wire_type: int
    raw: bytes  # the whole field as it was written: tag, length and payload
    value: int | bytes  # a varint's value (unsigned), or the payload of any other wire type


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it)."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def fields(buf: bytes) -> Iterator[Field]:
    """The top-level fields of a serialized message, in the order they were written."""
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == VARINT:
            value, pos = read_varint(buf, pos)
        elif wire_type == LEN:
            size, pos = read_varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire_type in (I64, I32):
            size = 8 if wire_type == I64 else 4
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise ValueError(f"unsupported wire type {wire_type} (field {number})")
        if pos > len(buf):
            raise ValueError(f"truncated message (field {number})")
        yield Field(number, wire_type, buf[start:pos], value)


def first(buf: bytes, number: int) -> Field | None:
    """The first field with that number, or None."""
    return next((f for f in fields(buf) if f.number == number), None)
