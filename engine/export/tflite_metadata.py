"""TFLite metadata for an image classifier, added to any .tflite file in about a millisecond, without TensorFlow.

What MediaPipe Tasks' ImageClassifier and the TFLite Task Library read from a model to use it without code
(the schema: metadata_schema.fbs of tensorflow/tflite-support, mirrored in mediapipe/tasks/metadata; file
identifier "M001"; every field written here is in schema 1.0.0, so min_parser_version is "1.0.0"):

* a buffer named TFLITE_METADATA holding a ModelMetadata flatbuffer: name, description, version, author, license;
  one SubGraphMetadata whose input TensorMetadata has ImageProperties (RGB, default size) and, for a float input,
  NormalizationOptions (MediaPipe refuses a float input without them; a uint8 input takes raw pixels and has none),
  and whose output TensorMetadata names the labels file, an AssociatedFile of type TENSOR_AXIS_LABELS;
* the labels file itself, packed the way tflite-support's MetadataPopulator packs associated files: an uncompressed
  zip appended after the flatbuffer, its offsets counted from the start of the file (MediaPipe's
  ExtractFilesfromZipFile reads the stored bytes in place and refuses compressed members).

The model is not unpacked and repacked (that costs 20-70 ms and moves every weight): a new root Model table and new
`buffers` and `metadata` vectors are written in front of the unchanged flatbuffer, pointing forward into it, so every
tensor, operator and weight is the same bytes at the same alignment. Plain flatbuffers and the standard library;
LiteRT's generated TFLite schema only to read the model's input and output.

Call it on every exported .tflite (composed or converted) before the file is written; engine/bundle/predict.py and
every TFLite runtime read the file as before (the metadata is one more buffer, the zip trails the flatbuffer).
"""

from __future__ import annotations

import io
import struct
import zipfile
from collections.abc import Sequence
from typing import Any

import flatbuffers
from flatbuffers.table import Table

from engine.config.runfiles import LABELS
from engine.core.litert import schema as _schema  # read lazily: it imports LiteRT's schema module on use

METADATA_NAME = b"TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
MODEL_IDENTIFIER = b"TFL3"
MIN_PARSER_VERSION = "1.0.0"  # the newest schema member written here is from 1.0.0 (see metadata_version.cc)
LABELS_FILE = LABELS  # the packed labels file has the name and the bytes of the export's labels.txt
_PREFIX_ALIGN = 64  # the old flatbuffer moves by a multiple of this, so its 16-byte-aligned buffers stay aligned
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so the same model and labels always give the same bytes

# metadata_schema.fbs: field slots (a union takes two: its type, then its value) and the enum values used here
_COLOR_RGB = 1  # ColorSpaceType
_LABELS_TYPE = 2  # AssociatedFileType.TENSOR_AXIS_LABELS
_FILE_TYPES = ("UNKNOWN", "DESCRIPTIONS", "TENSOR_AXIS_LABELS", "TENSOR_VALUE_LABELS", "TENSOR_AXIS_SCORE_CALIBRATION",
               "VOCABULARY", "SCANN_INDEX_FILE")
_CONTENT_FEATURE, _CONTENT_IMAGE = 1, 2  # ContentProperties union
_UNIT_NORMALIZATION = 1  # ProcessUnitOptions union
_MM = {"name": 0, "description": 1, "version": 2, "subgraph_metadata": 3, "author": 4, "license": 5,
       "associated_files": 6, "min_parser_version": 7}
_SG_INPUTS, _SG_OUTPUTS = 2, 3  # SubGraphMetadata: name 0, description 1, input/output_tensor_metadata
_TM = {"name": 0, "description": 1, "content": 3, "process_units": 4, "stats": 5, "associated_files": 6}
_AF = {"name": 0, "description": 1, "type": 2, "locale": 3, "version": 4}

# schema.fbs (TFLite): the Model table's fields; all but `version` are offsets, which is what lets the old ones be
# pointed at as they are
# (version, operator_codes, subgraphs, description, buffers, metadata_buffer, metadata, signature_defs,
# external_buffer_groups, external_buffers)
_MODEL_FIELDS = 10
_MODEL_BUFFERS, _MODEL_METADATA, _MODEL_EXTERNAL_BUFFERS = 4, 6, 9
_TENSOR_UINT8, _TENSOR_FLOAT32 = 3, 0


# ----------------------------------------------------------------------------------------------------------------
# The ModelMetadata flatbuffer
# ----------------------------------------------------------------------------------------------------------------
def _table(b: flatbuffers.Builder, n_slots: int, offsets: dict[int, int], bytes_: dict[int, int] | None = None,
           uints: dict[int, int] | None = None) -> int:
    """A table with offset fields, int8 fields (enums, union types) and uint32 fields, by slot."""
    b.StartObject(n_slots)
    for slot, value in sorted((uints or {}).items()):
        b.PrependUint32Slot(slot, value, 0)
    for slot, off in sorted(offsets.items()):
        b.PrependUOffsetTRelativeSlot(slot, off, 0)
    for slot, value in sorted((bytes_ or {}).items()):
        b.PrependInt8Slot(slot, value, 0)
    return b.EndObject()


def _offsets(b: flatbuffers.Builder, items: Sequence[int]) -> int:
    b.StartVector(4, len(items), 4)
    for off in reversed(items):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def _floats(b: flatbuffers.Builder, values: Sequence[float]) -> int:
    b.StartVector(4, len(values), 4)
    for v in reversed(values):
        b.PrependFloat32(float(v))
    return b.EndVector()


def _strings(b: flatbuffers.Builder, fields: dict[str, str | None]) -> dict[str, int]:
    return {k: b.CreateString(v) for k, v in fields.items() if v}


def metadata_flatbuffer(*, n_labels: int, image_size: tuple[int, int], normalization: tuple[float, float] | None,
                        name: str, description: str = "",
                        version: str = "", author: str = "", license: str = "",
                        labels_file: str = LABELS_FILE) -> bytes:
    """The ModelMetadata flatbuffer (identifier M001) of a one-input, one-output image classifier.

    image_size: (width, height). normalization: (mean, std) applied to 0-255 pixels for a float input; None for a
    uint8 input, which takes the pixels as they are.
    """
    b = flatbuffers.Builder(1024)
    # input: the image
    size = _table(b, 2, {}, uints={0: image_size[0], 1: image_size[1]})  # ImageSize: width, height
    image_props = _table(b, 2, {1: size}, bytes_={0: _COLOR_RGB})  # ImageProperties: color_space, default_size
    content_in = _table(b, 3, {1: image_props}, bytes_={0: _CONTENT_IMAGE})
    units = []
    if normalization is not None:
        mean, std = _floats(b, [normalization[0]]), _floats(b, [normalization[1]])
        norm = _table(b, 2, {0: mean, 1: std})  # NormalizationOptions
        units.append(_table(b, 2, {1: norm}, bytes_={0: _UNIT_NORMALIZATION}))  # ProcessUnit
    if normalization is not None:
        mean, std = normalization
        lo, hi, words = -mean / std, (255.0 - mean) / std, f"float32: (pixel - {mean:g}) / {std:g}"
    else:
        lo, hi, words = 0.0, 255.0, "uint8: the pixels as they are, 0-255"
    stats_in = _table(b, 2, {0: _floats(b, [hi]), 1: _floats(b, [lo])})  # Stats: max, min
    text = _strings(b, {"name": "image", "description": f"RGB image, {image_size[0]}x{image_size[1]}, {words}"})
    fields = {_TM["name"]: text["name"], _TM["description"]: text["description"], _TM["content"]: content_in,
              _TM["stats"]: stats_in}
    if units:
        fields[_TM["process_units"]] = _offsets(b, units)
    tensor_in = _table(b, 7, fields)
    # output: the probabilities, and the labels file
    af_text = _strings(b, {"name": labels_file, "description": "Class names: line i names output i."})
    labels = _table(b, 5, {_AF["name"]: af_text["name"], _AF["description"]: af_text["description"]},
                    bytes_={_AF["type"]: _LABELS_TYPE})
    content_out = _table(b, 3, {1: _table(b, 0, {})}, bytes_={0: _CONTENT_FEATURE})  # FeatureProperties
    stats_out = _table(b, 2, {0: _floats(b, [1.0]), 1: _floats(b, [0.0])})
    text = _strings(b, {"name": "probability", "description": f"Probabilities of the {n_labels} classes, in the "
                                                              f"order of {labels_file}."})
    tensor_out = _table(b, 7, {_TM["name"]: text["name"], _TM["description"]: text["description"],
                               _TM["content"]: content_out, _TM["stats"]: stats_out,
                               _TM["associated_files"]: _offsets(b, [labels])})
    subgraph = _table(b, 10, {_SG_INPUTS: _offsets(b, [tensor_in]), _SG_OUTPUTS: _offsets(b, [tensor_out])})
    text = _strings(b, {"name": name, "description": description, "version": version, "author": author,
                        "license": license, "min_parser_version": MIN_PARSER_VERSION})
    fields = {_MM[k]: off for k, off in text.items()}
    fields[_MM["subgraph_metadata"]] = _offsets(b, [subgraph])
    b.Finish(_table(b, 8, fields), file_identifier=METADATA_IDENTIFIER)
    return bytes(b.Output())


# ----------------------------------------------------------------------------------------------------------------
# Into the model
# ----------------------------------------------------------------------------------------------------------------
def _field_target(tab: Table, slot: int) -> int | None:
    """Absolute position of the object an offset field points at, or None when the field is absent."""
    o = tab.Offset(4 + 2 * slot)
    return tab.Indirect(tab.Pos + o) if o else None


def _vector_items(buf: bytes, vec: int | None) -> list[int]:
    """Absolute positions of the tables of a vector of tables."""
    if vec is None:
        return []
    n = struct.unpack_from("<I", buf, vec)[0]
    return [vec + 4 + 4 * i + struct.unpack_from("<I", buf, vec + 4 + 4 * i)[0] for i in range(n)]


def _flatbuffer_end(blob: bytes) -> int:
    """Where the flatbuffer ends: before the zip of associated files that an earlier call appended, if any."""
    if b"PK\x05\x06" not in blob[-(1 << 16) - 22:]:  # no end-of-central-directory record: no zip
        return len(blob)
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            starts = [info.header_offset for info in zf.infolist()]
    except (zipfile.BadZipFile, ValueError, OSError):
        return len(blob)
    return min(starts) if starts else len(blob)


def _prefix(blob: bytes, name: bytes, data: bytes) -> bytes:
    """What to write in front of the model so that it has `data` in a new buffer that its metadata entry `name` points
    at: a new root Model table and new buffers and metadata vectors pointing into the old flatbuffer, which follows
    whole, moved by a multiple of 64 bytes. An old entry of that name is dropped (its buffer stays, unreferenced)."""
    if blob[4:8] != MODEL_IDENTIFIER:
        raise ValueError("not a TFLite model (no TFL3 file identifier)")
    old = Table(blob, struct.unpack_from("<I", blob, 0)[0])
    n_slots = (struct.unpack_from("<H", blob, old.Pos - struct.unpack_from("<i", blob, old.Pos)[0])[0] - 4) // 2
    if n_slots > _MODEL_FIELDS and any(old.Offset(4 + 2 * s) for s in range(_MODEL_FIELDS, n_slots)):
        raise ValueError("the model has Model fields newer than this schema; refusing to copy them blindly")
    buffers = _vector_items(blob, _field_target(old, _MODEL_BUFFERS))
    for pos in buffers:  # Buffer.offset > 1: data stored after the flatbuffer, at a position that would move
        at = Table(blob, pos).Offset(6)
        if at and struct.unpack_from("<Q", blob, pos + at)[0] > 1:
            raise ValueError("the model keeps weights outside the flatbuffer (over 2 GB); not supported")
    if _field_target(old, _MODEL_EXTERNAL_BUFFERS) is not None:
        raise ValueError("the model uses external buffers; not supported")
    kept = []  # the model's metadata entries but one named `name`
    for pos in _vector_items(blob, _field_target(old, _MODEL_METADATA)):
        tab = Table(blob, pos)
        if not (tab.Offset(4) and tab.String(pos + tab.Offset(4)) == name):
            kept.append(pos)

    b = flatbuffers.Builder(len(data) + 256 + 8 * (len(buffers) + len(kept)))
    b.Prep(_PREFIX_ALIGN, 0)  # the minimum alignment of the whole prefix: Finish pads it to a multiple of this

    def old_ref(pos: int) -> int:
        # The builder's offsets count back from the end of its output, where the old flatbuffer will start: an
        # object `pos` bytes into it is at offset -pos, and PrependUOffsetTRelative turns that into the right uoffset.
        return -pos

    b.StartVector(1, len(data), 16)  # Buffer.data is force_align: 16 in the schema
    b.head -= len(data)
    b.Bytes[b.head:b.head + len(data)] = data
    b.vectorNumElems = len(data)
    data_vec = b.EndVector()
    b.StartObject(3)  # Buffer: data, offset, size
    b.PrependUOffsetTRelativeSlot(0, data_vec, 0)
    new_buffer = b.EndObject()
    name_off = b.CreateString(name)
    b.StartObject(2)  # Metadata: name, buffer (the new one, after the old ones)
    b.PrependUint32Slot(1, len(buffers), 0)
    b.PrependUOffsetTRelativeSlot(0, name_off, 0)
    entry = b.EndObject()
    buffers_vec = _offsets(b, [*(old_ref(p) for p in buffers), new_buffer])
    metadata_vec = _offsets(b, [*(old_ref(p) for p in kept), entry])
    b.StartObject(_MODEL_FIELDS)
    for slot in range(_MODEL_FIELDS - 1, 0, -1):
        if slot == _MODEL_BUFFERS:
            b.PrependUOffsetTRelativeSlot(slot, buffers_vec, 0)
        elif slot == _MODEL_METADATA:
            b.PrependUOffsetTRelativeSlot(slot, metadata_vec, 0)
        elif (target := _field_target(old, slot)) is not None:
            b.PrependUOffsetTRelativeSlot(slot, old_ref(target), 0)
    if old.Offset(4):
        b.PrependUint32Slot(0, old.Get(flatbuffers.number_types.Uint32Flags, old.Pos + old.Offset(4)), 0)
    b.Finish(b.EndObject(), file_identifier=MODEL_IDENTIFIER)
    return bytes(b.Output())


class _Shifted(io.BytesIO):
    """A stream that says it starts `start` bytes in: zipfile records every header offset from the file's start."""

    def __init__(self, start: int):
        super().__init__()
        self.start = start

    def tell(self) -> int:
        return super().tell() + self.start

    def seek(self, pos: int, whence: int = 0) -> int:
        return super().seek(pos - self.start if whence == 0 else pos, whence) + self.start


def _zip(files: dict[str, bytes], start: int) -> bytes:
    """An uncompressed zip of the files, its offsets counted from `start` bytes before it (the model's length)."""
    out = _Shifted(start)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
        for file_name, content in files.items():
            zf.writestr(zipfile.ZipInfo(file_name, date_time=_ZIP_TIME), content)
    return out.getvalue()


def _model_io(blob: bytes) -> tuple[int, list[int], list[int]]:
    """(input tensor type, input shape, output shape) of a one-subgraph, one-input, one-output model."""
    if blob[4:8] != MODEL_IDENTIFIER:
        raise ValueError("not a TFLite model (no TFL3 file identifier)")
    fb = _schema()
    model = fb.Model.GetRootAsModel(blob, 0)
    if model.SubgraphsLength() != 1:
        raise ValueError(f"an image classifier has one subgraph; this model has {model.SubgraphsLength()}")
    sub = model.Subgraphs(0)
    if sub.InputsLength() != 1 or sub.OutputsLength() != 1:
        raise ValueError(f"an image classifier has one input and one output; this model has {sub.InputsLength()} "
                         f"and {sub.OutputsLength()}")
    t_in, t_out = sub.Tensors(int(sub.Inputs(0))), sub.Tensors(int(sub.Outputs(0)))
    return t_in.Type(), t_in.ShapeAsNumpy().tolist(), t_out.ShapeAsNumpy().tolist()


def normalization_for(input_range: tuple[float, float]) -> tuple[float, float]:
    """(mean, std) that map 0-255 pixels onto input_range: (pixel - mean) / std, as MediaPipe applies it."""
    lo, hi = float(input_range[0]), float(input_range[1])
    if not hi > lo:
        raise ValueError(f"input range {input_range} is empty")
    std = 255.0 / (hi - lo)
    return -lo * std + 0.0, std  # + 0.0: -0.0 becomes 0.0


def add_metadata(blob: bytes, labels: Sequence[str], *, name: str, description: str = "", version: str = "",
                 license: str = "", author: str = "", image_size: int | None = None,
                 input_range: tuple[float, float] = (0.0, 1.0)) -> bytes:
    """The .tflite model `blob` with image-classifier metadata and its labels packed in (MediaPipe Tasks, Task Library).

    labels: line i names output i (packed as labels.txt, TENSOR_AXIS_LABELS). name, description, version, license,
    author: the ModelMetadata's words (empty: left out). image_size: checked against the model's input when given.
    input_range: what a float input expects, e.g. (0, 1) for pixel/255, written as NormalizationOptions
    mean = -lo * 255 / (hi - lo), std = 255 / (hi - lo); a uint8 input takes raw pixels and gets none.
    Metadata and packed files from an earlier call are replaced. ValueError when the model is not a one-input
    (1 x H x W x 3, float32 or uint8), one-output (1 x len(labels)) classifier, or a label is empty or has a line
    break.
    """
    labels = [str(label) for label in labels]
    bad = [label for label in labels if not label or "\n" in label or "\r" in label]
    if not labels or bad:
        raise ValueError("labels must be one or more non-empty names without line breaks" +
                         (f"; got {bad[0]!r}" if bad else ""))
    end = _flatbuffer_end(blob)
    model = blob if end == len(blob) else blob[:end]
    in_type, in_shape, out_shape = _model_io(model)
    if len(in_shape) != 4 or in_shape[0] != 1 or in_shape[3] != 3:
        raise ValueError(f"the model's input is {in_shape}; an image classifier takes [1, H, W, 3]")
    if in_type not in (_TENSOR_FLOAT32, _TENSOR_UINT8):
        raise ValueError("MediaPipe and the Task Library take float32 or uint8 images; this model's input is "
                         f"tensor type {in_type}")
    if image_size is not None and in_shape[1:3] != [image_size, image_size]:
        raise ValueError(f"the model's input is {in_shape[2]}x{in_shape[1]}, not {image_size}x{image_size}")
    if out_shape[-1:] != [len(labels)] or len(out_shape) != 2 or out_shape[0] != 1:
        raise ValueError(f"the model's output is {out_shape}, not [1, {len(labels)}] for {len(labels)} labels")
    meta = metadata_flatbuffer(n_labels=len(labels), image_size=(in_shape[2], in_shape[1]),
                               normalization=normalization_for(input_range) if in_type == _TENSOR_FLOAT32 else None,
                               name=name, description=description, version=version, author=author, license=license)
    prefix = _prefix(model, METADATA_NAME, meta)
    packed = _zip({LABELS_FILE: ("\n".join(labels) + "\n").encode("utf-8")}, len(prefix) + len(model))
    return b"".join((prefix, model, packed))


# ----------------------------------------------------------------------------------------------------------------
# Reading it back
# ----------------------------------------------------------------------------------------------------------------
def metadata_buffer(blob: bytes) -> bytes | None:
    """The TFLITE_METADATA buffer of a .tflite model, or None when it has none."""
    fb = _schema()
    model = fb.Model.GetRootAsModel(blob, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == METADATA_NAME:
            data = model.Buffers(entry.Buffer()).DataAsNumpy()
            return None if isinstance(data, int) else data.tobytes()
    return None


def packed_files(blob: bytes) -> dict[str, bytes]:
    """The associated files packed after the model (name -> bytes); {} when there are none."""
    if _flatbuffer_end(blob) == len(blob):
        return {}
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def _string(tab: Table, slot: int) -> str | None:
    o = tab.Offset(4 + 2 * slot)
    return tab.String(tab.Pos + o).decode("utf-8") if o else None


def _sub(tab: Table, slot: int) -> Table | None:
    o = tab.Offset(4 + 2 * slot)
    return Table(tab.Bytes, tab.Indirect(tab.Pos + o)) if o else None


def _subs(tab: Table, slot: int) -> list[Table]:
    o = tab.Offset(4 + 2 * slot)
    if not o:
        return []
    start = tab.Vector(o)
    return [Table(tab.Bytes, tab.Indirect(start + 4 * i)) for i in range(tab.VectorLen(o))]


def _float_list(tab: Table | None, slot: int) -> list[float] | None:
    o = tab.Offset(4 + 2 * slot) if tab is not None else 0
    if not o:
        return None
    start = tab.Vector(o)
    return [tab.Get(flatbuffers.number_types.Float32Flags, start + 4 * i) for i in range(tab.VectorLen(o))]


def _scalar(tab: Table | None, slot: int, flags, default=0):
    o = tab.Offset(4 + 2 * slot) if tab is not None else 0
    return tab.Get(flags, tab.Pos + o) if o else default


def _tensor(tab: Table) -> dict[str, Any]:
    content = _sub(tab, _TM["content"])
    kind = _scalar(content, 0, flatbuffers.number_types.Uint8Flags)
    out: dict[str, Any] = {"name": _string(tab, _TM["name"]), "description": _string(tab, _TM["description"])}
    if kind == _CONTENT_IMAGE:
        props = _sub(content, 1)
        size = _sub(props, 1)
        out["image"] = {"color_space": {1: "RGB", 2: "GRAYSCALE"}.get(
            _scalar(props, 0, flatbuffers.number_types.Int8Flags), "UNKNOWN"),
            "size": [_scalar(size, i, flatbuffers.number_types.Uint32Flags) for i in (0, 1)] if size else None}
    for unit in _subs(tab, _TM["process_units"]):
        if _scalar(unit, 0, flatbuffers.number_types.Uint8Flags) == _UNIT_NORMALIZATION:
            norm = _sub(unit, 1)
            out["normalization"] = {"mean": _float_list(norm, 0), "std": _float_list(norm, 1)}
    stats = _sub(tab, _TM["stats"])
    if stats is not None:
        out["stats"] = {"max": _float_list(stats, 0), "min": _float_list(stats, 1)}
    files = []
    for f in _subs(tab, _TM["associated_files"]):
        kind = _scalar(f, _AF["type"], flatbuffers.number_types.Int8Flags)
        files.append({"name": _string(f, _AF["name"]), "type": _FILE_TYPES[kind] if 0 <= kind < len(_FILE_TYPES)
                      else kind, "locale": _string(f, _AF["locale"])})
    if files:
        out["associated_files"] = files
    return out


def read_metadata(blob: bytes) -> dict[str, Any] | None:
    """The image-classifier metadata of a .tflite model as plain data, labels included; None when it has none.

    {name, description, version, author, license, min_parser_version, input: {name, description, image:
    {color_space, size [w, h]}, normalization: {mean, std}, stats}, output: {..., associated_files: [{name, type,
    locale}]}, labels: [...] (from the TENSOR_AXIS_LABELS file, when packed)}."""
    buf = metadata_buffer(blob)
    if buf is None:
        return None
    if buf[4:8] != METADATA_IDENTIFIER:
        raise ValueError(f"the TFLITE_METADATA buffer is not ModelMetadata (identifier {buf[4:8]!r})")
    root = Table(buf, struct.unpack_from("<I", buf, 0)[0])
    out: dict[str, Any] = {k: _string(root, _MM[k]) for k in (
        "name", "description", "version", "author", "license", "min_parser_version")}
    subgraphs = _subs(root, _MM["subgraph_metadata"])
    if subgraphs:
        inputs, outputs = _subs(subgraphs[0], _SG_INPUTS), _subs(subgraphs[0], _SG_OUTPUTS)
        out["input"] = _tensor(inputs[0]) if inputs else None
        out["output"] = _tensor(outputs[0]) if outputs else None
        names = [f["name"] for f in (out["output"] or {}).get("associated_files", [])
                 if f["type"] == _FILE_TYPES[_LABELS_TYPE]]
        files = packed_files(blob)
        if names and names[0] in files:
            text = files[names[0]].decode("utf-8").split("\n")
            out["labels"] = text[:-1] if text and text[-1] == "" else text
    return out
