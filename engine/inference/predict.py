"""Classify images with an exported model: a .tflite file, a SavedModel folder, a run folder or a bundle .zip.

Preprocessing is engine.data.images.prepare, the same function training used, with the image size and centre-crop
setting read from the model card beside the model (else from the model's input shape, no crop). The command line
is engine.cli.predict.

TensorFlow is imported only when a model is loaded, so `python -m engine --help` stays fast.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.bundle import predict as bundle
from engine.config.runfiles import LABELS, MODEL_CARD, MODEL_PREFERENCE
from engine.core.litert import tflite_interpreter
from engine.data import images

log = logging.getLogger(__name__)


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


def _read_card(*candidates: Path) -> dict[str, Any] | None:
    for p in candidates:
        if p.is_file():
            try:
                return json.loads(p.read_text(encoding="utf-8"))
            except ValueError:
                log.warning("Ignoring unreadable model card %s", p)
    return None


def _read_labels(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()]


def unpack_bundle(path: Path, into: Path) -> None:
    """Unpack a bundle zip into `into`; its members' names are checked first (no absolute paths, no '..'), so
    nothing lands outside it. PredictError when it is not a readable zip or holds an unsafe name."""
    try:
        with zipfile.ZipFile(path) as zf:
            unsafe = next((n for n in zf.namelist() if bundle.safe_member_parts(n) is None), None)
            if unsafe is not None:
                raise PredictError(f"{path} holds an unsafe path ({unsafe!r}); it is not a bundle made here")
            zf.extractall(into)
    except (zipfile.BadZipFile, OSError) as exc:
        raise PredictError(f"{path} is not a readable zip file ({exc})") from exc


def _unzip(path: Path) -> tempfile.TemporaryDirectory:
    """The bundle unpacked into a temporary folder, removed again when unpacking fails."""
    tmp = tempfile.TemporaryDirectory(prefix="retrain-bundle-")
    try:
        unpack_bundle(path, Path(tmp.name))
    except BaseException:
        tmp.cleanup()
        raise
    return tmp


def _pick_model(folder: Path, card: dict[str, Any] | None) -> Path:
    """The model a run or bundle folder offers: the card's default, else the first of MODEL_PREFERENCE."""
    names = ([card["default_model"]] if card and card.get("default_model") else []) + list(MODEL_PREFERENCE)
    for name in names:
        if (folder / name).exists():
            return folder / name
    tflites = sorted(folder.glob("*.tflite"))
    if tflites:
        return tflites[0]
    raise PredictError(f"{folder} holds no model: expected a .tflite file or saved_model/ inside it")


def _resolve(path: Path) -> tuple[Path, list[Path], Any]:
    """(model file or SavedModel folder, folders that may hold labels.txt / model_card.json, unpacked temp dir)."""
    unpacked = None
    if path.suffix == ".zip" and path.is_file():
        unpacked = _unzip(path)
        path = Path(unpacked.name)
    if path.is_dir() and not (path / "saved_model.pb").exists():  # a run or bundle folder: its default model
        path = _pick_model(path, _read_card(path / MODEL_CARD))
    if path.is_dir():
        return path, [path / "assets", path, path.parent], unpacked
    if path.is_file() and path.suffix == ".tflite":
        return path, [path.parent], unpacked
    if not path.exists():
        raise PredictError(f"Model not found: {path}")
    raise PredictError(f"{path} is not a model: give a .tflite file, a SavedModel folder, a run folder or a "
                       "bundle .zip")


def load_predictor(model_path: str, labels_path: str | None = None, num_threads: int | None = None) -> Predictor:
    """A Predictor for a .tflite file, a SavedModel folder, a run/bundle folder or a bundle .zip."""
    model, beside, unpacked = _resolve(Path(model_path).expanduser())
    card = _read_card(*(d / MODEL_CARD for d in beside))
    backend = SavedModelBackend(model) if model.is_dir() else TFLiteModel(model, num_threads)
    labels = _labels(labels_path, beside, card, backend.n_outputs)
    size = (card or {}).get("image_size") or backend.input_size
    if not size:
        raise PredictError(f"Cannot tell the input size of {model}: it has no model_card.json and no fixed shape")
    crop = bool(((card or {}).get("preprocessing") or {}).get("center_crop", False))
    log.info("Loaded %s (%d labels, %d px, centre crop %s)", model, len(labels), size, crop)
    return Predictor(model, labels, int(size), crop, backend, card=card, _unpacked=unpacked)


def _labels(labels_path: str | None, beside: list[Path], card: dict | None, n_outputs: int) -> list[str]:
    if labels_path:
        path = Path(labels_path).expanduser()
        if not path.is_file():
            raise PredictError(f"Label file not found: {path}")
        labels = _read_labels(path)
    else:
        found = next((d / LABELS for d in beside if (d / LABELS).is_file()), None)
        labels = _read_labels(found) if found else list((card or {}).get("labels") or [])
    if not labels:
        log.warning("No labels.txt found; naming the outputs by index")
        labels = [str(i) for i in range(n_outputs)]
    if len(labels) != n_outputs:
        raise PredictError(f"The label file has {len(labels)} labels but the model has {n_outputs} outputs; use the "
                           "labels.txt exported with this model")
    return labels
