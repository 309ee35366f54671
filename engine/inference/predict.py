"""Classify images with an exported model: a .tflite file, a SavedModel folder, a run folder or a bundle .zip.

Preprocessing is engine.data.images.prepare, the same function training used, with the image size and centre-crop
setting read from the model card beside the model (else from the model's input shape, no crop). The command line
is engine.cli.predict.

TensorFlow is imported only when a model is loaded, so `python -m engine --help` stays fast.
"""

from __future__ import annotations

import logging
import stat
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.bundle import predict as bundle
from engine.config.runfiles import LABELS, MODEL_CARD, MODEL_PREFERENCE
from engine.core.litert import tflite_interpreter
from engine.data import images
from engine.store.ingest import MAX_ZIP_RATIO

log = logging.getLogger(__name__)

# A bundle zip is unpacked under limits like an upload's (engine.store.ingest), sized for models: few files, some big.
MAX_BUNDLE_FILES = 1_000
MAX_BUNDLE_BYTES = 2 * 1024**3  # uncompressed, all members together
RATIO_MIN_BYTES = 10 * 2**20  # members larger than this must not unpack more than MAX_ZIP_RATIO:1, as in uploads
_CHUNK = 1 << 20
_ZIP_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, RuntimeError, zlib.error)


class PredictError(ValueError):
    """A model or label file that cannot be used, in words the user can act on."""


# ----------------------------------------------------------------------------------------------------------------
# Backends: both take normalised float32 images (n, S, S, 3) and return probabilities (n, classes)
# ----------------------------------------------------------------------------------------------------------------
class TFLiteModel:
    """One .tflite model; quantized inputs and outputs are converted with the model's own scale and zero point, by
    the bundle's predict.py functions, so the engine and the bundle cannot quantize differently."""

    def __init__(self, path: str | Path, num_threads: int | None = None):
        self.path = Path(path)
        try:
            self.interpreter = tflite_interpreter(model_path=str(self.path), num_threads=num_threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise PredictError(f"{self.path.name} is not a valid TFLite model ({exc})") from exc
        self._in = self.interpreter.get_input_details()[0]
        self._out = self.interpreter.get_output_details()[0]
        self._lock = threading.Lock()  # one interpreter is not thread-safe; the app shares a cached predictor

    @property
    def input_size(self) -> int | None:
        return int(self._in["shape"][1])

    @property
    def n_outputs(self) -> int:
        return int(self._out["shape"][-1])

    @property
    def input_dtype(self) -> str:
        return np.dtype(self._in["dtype"]).name

    @property
    def output_dtype(self) -> str:
        return np.dtype(self._out["dtype"]).name

    @property
    def input_quantization(self) -> tuple[float, int]:
        scale, zero = self._in["quantization"]
        return float(scale), int(zero)

    @property
    def output_quantization(self) -> tuple[float, int]:
        scale, zero = self._out["quantization"]
        return float(scale), int(zero)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Float32 (n, S, S, 3) normalised images -> (n, classes); runs one image at a time (batch 1 model)."""
        out = []
        for image in x:
            with self._lock:
                self.interpreter.set_tensor(self._in["index"], bundle.quantize_input(image[None], self._in))
                self.interpreter.invoke()
                q = self.interpreter.get_tensor(self._out["index"])[0]
            out.append(bundle.dequantize_output(q, self._out))
        return np.stack(out)

    def probabilities(self, image_uint8: np.ndarray) -> np.ndarray:
        """One prepared uint8 S x S image with the default normalisation (pixel / 255) -> probabilities."""
        return self(image_uint8[None].astype(np.float32) / 255.0)[0]


class SavedModelBackend:
    def __init__(self, path: str | Path):
        from engine.core.tfcompat import tf  # TensorFlow: only for a SavedModel; .tflite models need LiteRT alone

        self.path = Path(path)
        self._tf = tf
        try:
            self.loaded = tf.saved_model.load(str(self.path))
        except (OSError, ValueError, tf.errors.OpError) as exc:
            raise PredictError(f"{self.path} is not a readable SavedModel ({exc})") from exc
        if "serving_default" not in self.loaded.signatures:
            raise PredictError(f"The SavedModel {self.path} has no serving_default signature")
        self.fn = self.loaded.signatures["serving_default"]
        self.input_name, spec = next(iter(self.fn.structured_input_signature[1].items()))
        self._size = spec.shape[1]
        outputs = self.fn.structured_outputs
        self.output_name = "probabilities" if "probabilities" in outputs else next(iter(outputs))
        self.n_outputs = int(outputs[self.output_name].shape[-1])

    @property
    def input_size(self) -> int | None:
        return int(self._size) if self._size is not None else None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.fn(**{self.input_name: self._tf.constant(x, self._tf.float32)})[self.output_name]
        return out.numpy().astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Predictor
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Predictor:
    model_path: Path
    labels: list[str]
    image_size: int
    center_crop: bool
    backend: Any
    input_mean: float = 0.0  # label_image's normalisation: (pixel - mean) / std; our models expect [0, 1]
    input_std: float = 255.0
    card: dict[str, Any] | None = None
    _unpacked: Any = field(default=None, repr=False)  # keeps an unzipped bundle alive as long as the predictor

    @property
    def kind(self) -> str:
        return "tflite" if isinstance(self.backend, TFLiteModel) else "saved_model"

    @property
    def threshold(self) -> float:
        """The model card's "unknown" threshold: answers whose top probability is below it are unknown (0: none)."""
        return bundle.card_threshold(self.card)

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """Any HxWx3 uint8 RGB image -> the model's S x S input: the crop and resize of images.prepare."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"Expected an HxWx3 uint8 RGB image, got {image.dtype} {image.shape}")
        if self.center_crop:
            image = images.center_crop_if_elongated(image)
        return images.resize_for_model(image, self.image_size)

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        x = (self.prepare(image).astype(np.float32) - self.input_mean) / self.input_std
        return self.backend(x[None])[0]

    def predict(self, image: np.ndarray, top_k: int = 5) -> list[tuple[str, float]]:
        return self._top(self.probabilities(image), top_k)

    def _top(self, probs: np.ndarray, top_k: int) -> list[tuple[str, float]]:
        return [(p["label"], p["probability"]) for p in bundle.top_predictions(probs, self.labels, top_k)]

    def predict_files(self, paths, top_k: int = 5) -> list[tuple[str, list[tuple[str, float]] | None, str | None]]:
        """(path, top-k, None) per readable file, (path, None, reason) per unreadable one; never raises for a
        bad image."""
        results = []
        for path in paths:
            try:
                image = images.prepare(str(path), self.image_size, self.center_crop)
            except images.ImageError as exc:
                results.append((str(path), None, str(exc)))
                continue
            except (OSError, ValueError) as exc:
                results.append((str(path), None, f"{Path(path).name}: could not be read ({exc})"))
                continue
            results.append((str(path), self.predict(image, top_k), None))
        return results


def _read_card(*folders: Path, shown: Callable[[Path], object] = str) -> dict[str, Any] | None:
    """The first model_card.json among the folders (None when none has one); PredictError in one line when it is not
    a JSON object, is a link out of its folder, or names a default_model outside it. shown(folder): the folder in
    the user's words (the zip, not the temporary folder it was unpacked into)."""
    for folder in folders:
        path = folder / MODEL_CARD
        if not (path.is_file() or path.is_symlink()):
            continue
        try:
            return bundle.read_card(folder, shown(folder))
        except ValueError as exc:
            raise PredictError(str(exc)) from exc
        except OSError as exc:
            raise PredictError(f"{MODEL_CARD} in {shown(folder)} cannot be read ({exc.strerror or exc})") from exc
    return None


def _read_labels(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise PredictError(f"{path} is not a label file: it is not UTF-8 text ({exc.reason})") from exc
    return [line.strip() for line in lines if line.strip()]


def _size(n: int) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def unpack_bundle(path: Path, into: Path, *, max_files: int | None = None, max_bytes: int | None = None,
                  max_ratio: float | None = None) -> None:
    """Unpack a bundle zip into `into`. PredictError, in one line, for what no bundle made here holds: an unreadable
    zip, an unsafe member name (absolute, '..'), a link, more than max_files members, more than max_bytes unpacked,
    or a member over 10 MiB that unpacks more than max_ratio:1 (defaults: MAX_BUNDLE_FILES, MAX_BUNDLE_BYTES,
    MAX_ZIP_RATIO). Everything is checked on the zip's directory before anything is written, and the bytes are
    counted again while writing, since a directory can lie; what this call wrote is removed when it fails."""
    limits = (MAX_BUNDLE_FILES if max_files is None else max_files, MAX_BUNDLE_BYTES if max_bytes is None else
              max_bytes, MAX_ZIP_RATIO if max_ratio is None else max_ratio)
    written: list[Path] = []
    try:
        _unpack(path, into, *limits, written)
    except BaseException:
        for p in reversed(written):
            try:
                p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
            except OSError:
                log.warning("Could not remove %s after a failed unpack", p)
        raise


def _unpack(path: Path, into: Path, max_files: int, max_bytes: int, max_ratio: float, written: list[Path]) -> None:
    try:
        zf = zipfile.ZipFile(path)
    except (*_ZIP_READ_ERRORS, ValueError, OSError) as exc:
        raise PredictError(f"{path} is not a readable zip file ({exc})") from exc
    with zf:
        members = _checked_members(path, zf, max_files, max_bytes, max_ratio)
        total = 0
        _make_folder(into, written)
        for info, parts in members:
            target = into.joinpath(*parts)
            try:
                _make_folder(target if info.is_dir() else target.parent, written)
                if info.is_dir():
                    continue
                written.append(target)
                size = 0
                with zf.open(info) as src, open(target, "wb") as dst:
                    while chunk := src.read(_CHUNK):
                        size, total = size + len(chunk), total + len(chunk)
                        if size > info.file_size:
                            raise PredictError(f"{path}: {info.filename!r} holds more data than the zip declares; "
                                               "is it a zip bomb?")
                        if total > max_bytes:
                            raise PredictError(f"{path} unpacks to more than {_size(max_bytes)}, the limit for a "
                                               "bundle; is it a zip bomb?")
                        dst.write(chunk)
            except PredictError:
                raise
            except (*_ZIP_READ_ERRORS, ValueError) as exc:
                raise PredictError(f"{path} is not a readable zip file ({exc})") from exc
            except OSError as exc:
                raise PredictError(f"{path} could not be unpacked into {into} ({exc})") from exc


def _checked_members(path: Path, zf: zipfile.ZipFile, max_files: int, max_bytes: int,
                     max_ratio: float) -> list[tuple[zipfile.ZipInfo, list[str]]]:
    members = []
    for info in zf.infolist():
        parts = bundle.safe_member_parts(info.filename)
        if parts is None:
            raise PredictError(f"{path} holds an unsafe path ({info.filename!r}); it is not a bundle made here")
        if stat.S_ISLNK(info.external_attr >> 16):  # extractall would write it as a file holding the link's target
            raise PredictError(f"{path} holds a link ({info.filename!r}); it is not a bundle made here")
        members.append((info, parts))
    if len(members) > max_files:
        raise PredictError(f"{path} holds {len(members)} files; a bundle may hold at most {max_files}")
    declared = sum(info.file_size for info, _ in members)
    if declared > max_bytes:
        raise PredictError(f"{path} would unpack to {_size(declared)}; a bundle may unpack to at most "
                           f"{_size(max_bytes)}")
    for info, _ in members:
        ratio = info.file_size / max(1, info.compress_size)
        if info.file_size > RATIO_MIN_BYTES and ratio > max_ratio:
            raise PredictError(f"{path}: {info.filename!r} would unpack to {ratio:.0f} times its packed size "
                               f"(the limit is {max_ratio:.0f}:1); is it a zip bomb?")
    return members


def _make_folder(folder: Path, written: list[Path]) -> None:
    """folder and its missing parents, each noted in `written` so that a failed unpack removes them again."""
    missing = []
    while not folder.exists() and not folder.is_symlink():
        missing.append(folder)
        folder = folder.parent
    for f in reversed(missing):
        f.mkdir()
        written.append(f)


def _unzip(path: Path) -> tempfile.TemporaryDirectory:
    """The bundle unpacked into a temporary folder, removed again when unpacking fails."""
    tmp = tempfile.TemporaryDirectory(prefix="retrain-bundle-")
    try:
        unpack_bundle(path, Path(tmp.name))
    except BaseException:
        tmp.cleanup()
        raise
    return tmp


def _inside(folder: Path, name: str, shown: Callable[[Path], object], what: str = "") -> Path:
    """folder / name, refused (PredictError) when name or a link leads out of the folder."""
    try:
        return bundle.bundle_file(folder, name, shown(folder), what)
    except ValueError as exc:
        raise PredictError(str(exc)) from exc


def _pick_model(folder: Path, card: dict[str, Any] | None, shown: Callable[[Path], object] = str) -> Path:
    """The model a run or bundle folder offers: the card's default, else the first of MODEL_PREFERENCE; never a
    path or link leading out of the folder."""
    default = (card or {}).get("default_model")
    if default:
        path = _inside(folder, default, shown, "the model card's default_model ")
        if path.exists():
            return path
    for name in MODEL_PREFERENCE:
        path = _inside(folder, name, shown)
        if path.exists():
            return path
    tflites = sorted(folder.glob("*.tflite"))
    if tflites:
        return _inside(folder, tflites[0].name, shown)
    raise PredictError(f"{shown(folder)} holds no model: expected a .tflite file or saved_model/ inside it")


def _namer(source: Path, root: Path | None) -> Callable[[Path], object]:
    """A folder in the user's words: the zip they gave for the temporary folder it was unpacked into."""
    def shown(folder: Path) -> object:
        if root is not None and folder.is_relative_to(root):
            rel = folder.relative_to(root).as_posix()
            return source if rel == "." else f"{source}:{rel}"
        return folder
    return shown


def _resolve(path: Path) -> tuple[Path, list[Path], Any, Callable[[Path], object]]:
    """(model file or SavedModel folder, folders that may hold labels.txt / model_card.json, unpacked temp dir,
    how to name a folder to the user)."""
    if not (path.suffix == ".zip" and path.is_file()):
        return *_find_model(path, _namer(path, None)), None, _namer(path, None)
    unpacked = _unzip(path)
    shown = _namer(path, Path(unpacked.name))
    try:
        return *_find_model(Path(unpacked.name), shown), unpacked, shown
    except BaseException:
        unpacked.cleanup()
        raise


def _find_model(path: Path, shown: Callable[[Path], object]) -> tuple[Path, list[Path]]:
    if path.is_dir() and not (path / "saved_model.pb").exists():  # a run or bundle folder: its default model
        path = _pick_model(path, _read_card(path, shown=shown), shown)
    if path.is_dir():
        return path, [path / "assets", path, path.parent]
    if path.is_file() and path.suffix == ".tflite":
        return path, [path.parent]
    if not path.exists():
        raise PredictError(f"Model not found: {path}")
    raise PredictError(f"{path} is not a model: give a .tflite file, a SavedModel folder, a run folder or a "
                       "bundle .zip")


def load_predictor(model_path: str, labels_path: str | None = None, num_threads: int | None = None) -> Predictor:
    """A Predictor for a .tflite file, a SavedModel folder, a run/bundle folder or a bundle .zip."""
    model, beside, unpacked, shown = _resolve(Path(model_path).expanduser())
    try:
        card = _read_card(*beside, shown=shown)
        label_file = _label_file(labels_path, beside, shown)  # before the model loads: a refused file costs nothing
        backend = SavedModelBackend(model) if model.is_dir() else TFLiteModel(model, num_threads)
        labels = _labels(label_file, card, backend.n_outputs)
    except BaseException:
        if unpacked is not None:
            unpacked.cleanup()
        raise
    size = (card or {}).get("image_size") or backend.input_size
    if not size:
        raise PredictError(f"Cannot tell the input size of {model}: it has no model_card.json and no fixed shape")
    crop = bool(((card or {}).get("preprocessing") or {}).get("center_crop", False))
    log.info("Loaded %s (%d labels, %d px, centre crop %s)", model, len(labels), size, crop)
    return Predictor(model, labels, int(size), crop, backend, card=card, _unpacked=unpacked)


def _label_file(labels_path: str | None, beside: list[Path], shown: Callable[[Path], object]) -> Path | None:
    """The labels.txt given, else the first one beside the model (None: there is none)."""
    if labels_path:
        path = Path(labels_path).expanduser()
        if not path.is_file():
            raise PredictError(f"Label file not found: {path}")
        return path
    found = next((d for d in beside if (d / LABELS).is_file()), None)
    # one beside the model is the bundle's: a link out of its folder would show another file's lines as labels
    return _inside(found, LABELS, shown) if found else None


def _labels(label_file: Path | None, card: dict | None, n_outputs: int) -> list[str]:
    labels = _read_labels(label_file) if label_file else list((card or {}).get("labels") or [])
    if not labels:
        log.warning("No labels.txt found; naming the outputs by index")
        labels = [str(i) for i in range(n_outputs)]
    if len(labels) != n_outputs:
        raise PredictError(f"The label file has {len(labels)} labels but the model has {n_outputs} outputs; use the "
                           "labels.txt exported with this model")
    return labels
