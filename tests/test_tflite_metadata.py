"""TFLite metadata (engine.export.tflite_metadata) on the shared real export: MediaPipe Tasks' ImageClassifier loads
every variant and names the classes, with the scores LiteRT gives for the same file; LiteRT reads the file as before;
the metadata reads back, also with MediaPipe's own copy of the metadata schema; and it takes milliseconds."""

from __future__ import annotations

import io
import time
import zipfile

import mediapipe as mp
import numpy as np
import pytest
from export_data import CLASSES, SIZE, exported_once
from mediapipe.tasks.metadata import metadata_schema_py_generated as mp_schema
from mediapipe.tasks.python import vision
from mediapipe.tasks.python.core.base_options import BaseOptions

from engine.config import variants
from engine.export import compose, tflite_metadata
from engine.features.backbones import resolve
from engine.inference.predict import TFLiteModel

pytestmark = pytest.mark.slow

VARIANTS = ("float32", "dynamic", "int8")
CARD = {"name": "Retrain Studio: shapes", "description": "Tells stripes, discs, checkers, blanks and noise apart.",
        "version": "run-42", "license": "CC-BY-4.0", "author": "tests"}
# How far MediaPipe's scores may be from LiteRT's on the same file: float32 and int8 run the same kernels (measured:
# 1e-6 and 0); the dynamic-range model's hybrid kernels quantize activations on the fly, and MediaPipe's bundled
# runtime does that a little differently (measured: 0.0024).
SCORE_TOLERANCE = {"float32": 1e-4, "dynamic": 0.02, "int8": 1.0 / 256}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    exp = exported_once(tmp_path_factory)
    out = tmp_path_factory.mktemp("metadata")
    labels = (exp.out / "labels.txt").read_text(encoding="utf-8").splitlines()
    files, seconds, bare = {}, {}, {}
    resolved = resolve("efficientnet-lite0")
    for variant in VARIANTS:  # composed as the export does, before it adds its own metadata
        blob = compose.compose(compose.backbone_tflite(resolved, variant).read_bytes(), exp.head, variant,
                               compose.logit_range(exp.head, exp.f_tr) if variant == "int8" else None)
        bare[variant] = out / f"bare_{variant}.tflite"
        bare[variant].write_bytes(blob)
        took = []
        for _ in range(3):
            t0 = time.perf_counter()
            with_meta = tflite_metadata.add_metadata(blob, labels, image_size=SIZE,
                                                     input_range=variants.get(variant).input_range, **CARD)
            took.append(time.perf_counter() - t0)
        seconds[variant] = min(took)
        files[variant] = out / f"model_{variant}.tflite"
        files[variant].write_bytes(with_meta)
    # one image of each class
    pick = [int(np.flatnonzero(exp.y_val == c)[0]) for c in range(len(CLASSES))]
    return exp, labels, files, seconds, exp.x_val[pick], bare


def _litert(path, x: np.ndarray) -> np.ndarray:
    model = TFLiteModel(path)
    return np.stack([model.probabilities(img) for img in x])


@pytest.mark.parametrize("variant", VARIANTS)
def test_mediapipe_names_the_classes_with_litert_scores(setup, variant):
    _, labels, files, _, x, _ = setup
    expected = _litert(files[variant], x)
    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=str(files[variant])),
                                            max_results=-1)
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for img, probs in zip(x, expected, strict=True):
            result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(img)))
            categories = result.classifications[0].categories
            assert sorted(c.category_name for c in categories) == sorted(CLASSES)
            assert categories[0].category_name == labels[int(np.argmax(probs))]
            for c in categories:
                assert c.category_name == labels[c.index]
                assert abs(c.score - probs[c.index]) <= SCORE_TOLERANCE[variant], (c.category_name, c.score, probs)


@pytest.mark.parametrize("variant", VARIANTS)
def test_litert_reads_the_same_model(setup, variant):
    _, _, files, _, x, bare = setup
    before, after = bare[variant], files[variant]
    assert np.array_equal(_litert(before, x), _litert(after, x))
    old, new = TFLiteModel(before), TFLiteModel(after)
    for a, b in ((old._in, new._in), (old._out, new._out)):
        assert (a["dtype"], a["shape"].tolist(), a["quantization"]) == (b["dtype"], b["shape"].tolist(),
                                                                       b["quantization"])
    # the old flatbuffer is kept whole, moved by a multiple of 64 bytes (its 16-byte-aligned weights stay aligned)
    blob = after.read_bytes()
    at = blob.find(before.read_bytes())
    assert at > 0 and at % 64 == 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_metadata_reads_back(setup, variant):
    exp, labels, files, _, _, _ = setup
    blob = files[variant].read_bytes()
    meta = tflite_metadata.read_metadata(blob)
    assert {k: meta[k] for k in CARD} == CARD
    assert meta["min_parser_version"] == "1.0.0"
    assert meta["labels"] == labels == CLASSES
    assert meta["input"]["image"] == {"color_space": "RGB", "size": [SIZE, SIZE]}
    if variant == "int8":  # raw pixels in: nothing to normalize
        assert "normalization" not in meta["input"]
        assert meta["input"]["stats"] == {"max": [255.0], "min": [0.0]}
    else:  # (pixel - 0) / 255: the [0, 1] input of training
        assert meta["input"]["normalization"] == {"mean": [0.0], "std": [255.0]}
        assert meta["input"]["stats"] == {"max": [1.0], "min": [0.0]}
    assert meta["output"]["associated_files"] == [{"name": "labels.txt", "type": "TENSOR_AXIS_LABELS",
                                                    "locale": None}]
    # packed as the populator packs it: an uncompressed zip after the model, labels.txt byte for byte
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        (info,) = zf.infolist()
        assert info.compress_type == zipfile.ZIP_STORED
        assert zf.read("labels.txt") == (exp.out / "labels.txt").read_bytes()

    # MediaPipe's own generated copy of metadata_schema.fbs reads the same fields
    buf = tflite_metadata.metadata_buffer(blob)
    assert mp_schema.ModelMetadata.ModelMetadataBufferHasIdentifier(buf, 0)
    theirs = mp_schema.ModelMetadataT.InitFromObj(mp_schema.ModelMetadata.GetRootAsModelMetadata(buf, 0))
    assert (theirs.name.decode(), theirs.version.decode(), theirs.license.decode()) == (
        CARD["name"], CARD["version"], CARD["license"])
    (sub,) = theirs.subgraphMetadata
    (tin,), (tout,) = sub.inputTensorMetadata, sub.outputTensorMetadata
    assert tin.content.contentPropertiesType == mp_schema.ContentProperties.ImageProperties
    assert tin.content.contentProperties.colorSpace == mp_schema.ColorSpaceType.RGB
    size = tin.content.contentProperties.defaultSize
    assert (size.width, size.height) == (SIZE, SIZE)
    units = tin.processUnits or []
    assert [u.optionsType for u in units] == ([] if variant == "int8" else [mp_schema.ProcessUnitOptions.
                                                                            NormalizationOptions])
    (labels_file,) = tout.associatedFiles
    assert (labels_file.name, labels_file.type) == (b"labels.txt", mp_schema.AssociatedFileType.TENSOR_AXIS_LABELS)


def test_adding_metadata_takes_milliseconds(setup):
    _, _, _, seconds, _, _ = setup
    print({v: f"{s * 1000:.1f} ms" for v, s in seconds.items()})
    assert max(seconds.values()) < 0.05, seconds  # measured 1-3 ms (the 13 MB float32 file: up to ~20 ms)


def test_adding_it_again_replaces_it(setup, tmp_path):
    _, labels, files, _, x, _ = setup
    blob = files["float32"].read_bytes()
    again = tflite_metadata.add_metadata(blob, list(reversed(labels)), name="renamed", input_range=(-1.0, 1.0))
    meta = tflite_metadata.read_metadata(again)
    assert meta["name"] == "renamed" and meta["version"] is None
    assert meta["labels"] == list(reversed(labels))
    assert meta["input"]["normalization"] == {"mean": [127.5], "std": [127.5]}
    fb = compose._schema()
    model = fb.Model.GetRootAsModel(again, 0)
    names = [model.Metadata(i).Name() for i in range(model.MetadataLength())]
    assert names.count(b"TFLITE_METADATA") == 1
    assert zipfile.ZipFile(io.BytesIO(again)).namelist() == ["labels.txt"]
    (tmp_path / "again.tflite").write_bytes(again)
    assert np.array_equal(_litert(files["float32"], x), _litert(tmp_path / "again.tflite", x))


def test_refuses_what_mediapipe_could_not_use(setup):
    exp, labels, _, _, _, _ = setup
    blob = exp.result.tflite["float32"].read_bytes()
    with pytest.raises(ValueError, match=r"not \[1, 4\] for 4 labels"):
        tflite_metadata.add_metadata(blob, labels[:4], name="x")
    with pytest.raises(ValueError, match="line breaks"):
        tflite_metadata.add_metadata(blob, [*labels[:4], "two\nlines"], name="x")
    with pytest.raises(ValueError, match="not 192x192"):
        tflite_metadata.add_metadata(blob, labels, name="x", image_size=192)
    with pytest.raises(ValueError, match="not a TFLite model"):
        tflite_metadata.add_metadata(b"\0" * 64, labels, name="x")


def test_dynamic_head_runs_on_older_runtimes(setup):
    """The composed dynamic head is FULLY_CONNECTED version 9 (one weight scale, asymmetric inputs), which TFLite
    runs since 2.3: within the backbone's min_runtime_version (2.4.0), unlike the converter's default version 12
    (per-channel scales, TFLite >= 2.17), which tflite-runtime 2.14 and the Task Library 0.4.4 refuse."""
    exp, _, _, _, _, _ = setup
    fb = compose._schema()
    blob = exp.result.tflite["dynamic"].read_bytes()
    model = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(blob, 0))
    sub = model.subgraphs[0]
    fcs = [op for op in sub.operators
           if model.operatorCodes[op.opcodeIndex].builtinCode == fb.BuiltinOperator.FULLY_CONNECTED]
    (fc,) = fcs
    assert model.operatorCodes[fc.opcodeIndex].version == 9
    weights = sub.tensors[fc.inputs[1]]
    assert weights.type == fb.TensorType.INT8 and len(weights.quantization.scale) == 1
    assert fc.builtinOptions.asymmetricQuantizeInputs
    runtime = {m.name: bytes(model.buffers[m.buffer].data).rstrip(b"\0") for m in model.metadata}
    assert runtime[b"min_runtime_version"] == b"2.4.0"


def test_the_export_writes_its_files_with_metadata(setup):
    """What a training run ships already carries it: MediaPipe loads the export's own files."""
    exp, labels, _, _, _, _ = setup
    for variant in VARIANTS:
        meta = tflite_metadata.read_metadata(exp.result.tflite[variant].read_bytes())
        assert meta["labels"] == labels and meta["input"]["image"]["size"] == [SIZE, SIZE], variant
