#!/usr/bin/env python3
"""Classify images with this bundle's TFLite model; needs only NumPy, Pillow and ai-edge-litert.

    python predict.py photo.jpg more.png a_folder/            # top-5 per image: "0.912345: label"
    python predict.py --model model_int8.tflite --json photo.jpg

labels.txt and model_card.json are read from this file's folder. Preprocessing repeats what training did:
EXIF orientation, RGB with transparency on white, optional centre crop of images longer than 1.5:1, then a
plain stretch to the model's size with the same filters as training's OpenCV resize (INTER_AREA when the image
has more pixels than the model's input, else INTER_LINEAR), re-implemented in NumPy so OpenCV is not needed.

serve.py (the HTTP server) imports this file's functions, so the bundle holds one copy of the preprocessing; the
engine imports it too (quantization, top-k, the threshold, the zip-member and bundle-path checks), so this file
must keep to the standard library, NumPy and Pillow.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:  # HEIC/HEIF photos (iPhones) when pillow-heif is installed; optional: `pip install pillow-heif`
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF = True
except ImportError:
    HEIF = False

HERE = Path(__file__).resolve().parent
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", *((".heic", ".heif") if HEIF
                                                                                        else ())}
# Pillow's plugin names for the formats training reads (engine.data.images.SUPPORTED), for load_rgb(formats=...)
TRAINING_FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "GIF", "TIFF", *(("HEIF",) if HEIF else ()))
HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1")  # engine.data.images.sniff_kind
# What Pillow raises on a file it cannot decode (UnidentifiedImageError is an OSError)
CENTER_CROP_ASPECT = 1.5  # the engine's rule (engine.config.training), restated: this file ships alone
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class TooManyPixels(ValueError):
    """The image's header gives more pixels than the limit passed to load_rgb; nothing was decoded."""


def bundle_file(folder: Path, name: object, shown: object = None, what: str = "") -> Path:
    """folder / name when name is a relative path that stays inside the folder, links followed; else ValueError in
    one line naming the bundle (`shown`, default the folder) and the path (`what` says whose path it is). A bundle
    comes from whoever made it: its model card must not point at a file elsewhere on this machine, nor a link in it
    make us read one."""
    folder, shown = Path(folder), shown or folder
    parts = safe_member_parts(name) if isinstance(name, str) else None
    if parts is None:
        raise ValueError(f"{what}{name!r} in {shown} is not a path inside the bundle (it is absolute or has '..'); "
                         "refusing to use it")
    path = folder.joinpath(*parts)
    target = path.resolve()
    if not target.is_relative_to(folder.resolve()):
        raise ValueError(f"{what}{name!r} in {shown} is a link to {target}, outside the bundle; refusing to use it")
    return path


def read_card(folder: Path = HERE, shown=None) -> dict:
    """The folder's model_card.json: a JSON object whose default_model, when it names one, is a file inside the
    folder; ValueError in one line otherwise (OSError when it cannot be read)."""
    folder, shown = Path(folder), shown or folder
    path = bundle_file(folder, "model_card.json", shown)
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
        raise ValueError(f"model_card.json in {shown} is not valid JSON ({exc})") from exc
    if not isinstance(card, dict):
        kind = {list: "an array", str: "a string", bool: "true or false", type(None): "null"}.get(type(card),
                                                                                                "a number")
        raise ValueError(f"model_card.json in {shown} is not a JSON object (it holds {kind})")
    if card.get("default_model") is not None:
        bundle_file(folder, card["default_model"], shown, "the model card's default_model ")
    return card


def read_labels(folder: Path = HERE, shown=None) -> list[str]:
    text = bundle_file(folder, "labels.txt", shown).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def make_interpreter(model_path: str, num_threads: int | None = None):
    """ai-edge-litert, else the older tflite-runtime, else full TensorFlow: whichever is installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            from tensorflow.lite import Interpreter
    interpreter = Interpreter(model_path=model_path, num_threads=num_threads)
    interpreter.allocate_tensors()
    return interpreter


def load_rgb(source, max_pixels: int | None = None, formats: tuple[str, ...] | None = None) -> np.ndarray:
    """HxWx3 uint8 RGB decoded as training decoded it (engine.data.images.load_image). source: a path, bytes or a binary
    file. max_pixels: refuse (TooManyPixels) an image whose header gives more pixels, before decoding it; formats:
    Pillow format names to try (None: all of Pillow's)."""
    if isinstance(source, bytes | bytearray | memoryview):
        source = io.BytesIO(source)
    try:
        im = Image.open(source, formats=formats)
    except UnidentifiedImageError as exc:
        if not HEIF and _looks_like_heic(source):
            raise UnidentifiedImageError("HEIC/HEIF needs pillow-heif: pip install pillow-heif (or convert the "
                                         "photo to JPEG)") from exc
        raise
    with im:
        if max_pixels is not None and im.width * im.height > max_pixels:
            raise TooManyPixels(f"{im.width}x{im.height} = {im.width * im.height} pixels is over the "
                                f"{max_pixels}-pixel limit")
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:  # noqa: BLE001 - a malformed EXIF tag costs the rotation, never the photo
            pass
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # high-bit-depth grey: scale to 8 bits, don't clip
            a = np.asarray(im, dtype=np.float64)
            peak = a.max() if a.size else 0.0
            top = 65535.0 if im.mode.startswith("I;16") or peak > 255 else 255.0
            top = 1.0 if im.mode == "F" and peak <= 1 else top  # float images usually hold 0..1
            return np.repeat(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")
        if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):  # transparent areas become white
            im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _looks_like_heic(source) -> bool:
    try:
        if hasattr(source, "read"):
            source.seek(0)
            head = source.read(16)
        else:
            with open(source, "rb") as fh:
                head = fh.read(16)
    except OSError:
        return False
    return head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS


def _resize_axis(a: np.ndarray, n_out: int, mode: str) -> np.ndarray:
    """Resample axis 0 of an HxWxC array the way cv2.resize does (its float rounding included), so the bundle
    sees the same pixels as training did, to within one grey level."""
    n_in, inv = a.shape[0], n_out / a.shape[0]
    scale = 1.0 / inv
    if mode == "area":  # INTER_AREA shrinking: the exact mean over each output pixel's footprint
        left = np.arange(n_out) * scale
        k = left.astype(int)
        sums = np.add.reduceat(a, k, axis=0, dtype=np.float64)  # a[k[j]:k[j+1]], the last one to the end
        integral = np.concatenate([np.zeros_like(sums[:1]), np.cumsum(sums, axis=0)])  # sum of a[:k[j]]
        at_left = integral[:-1] + (left - k)[:, None, None] * a[k]
        return np.diff(np.concatenate([at_left, integral[-1:]]), axis=0) / scale
    d = np.arange(n_out)
    if mode == "linear":  # INTER_LINEAR: two taps around the pixel centre
        f = ((d + 0.5) * scale - 0.5).astype(np.float32)
        s = np.floor(f)
        f = f - s
    else:  # INTER_AREA when one side grows: OpenCV's two-tap emulation
        s = np.floor(d * scale)
        f = ((d + 1) - (s + 1) * inv).astype(np.float32)
        f = np.where(f <= 0, 0.0, f - np.floor(f))
    f = np.where((s < 0) | (s >= n_in - 1), 0.0, f)[:, None, None]  # edges: the border pixel alone
    s0, s1 = np.clip(s, 0, n_in - 1).astype(int), np.clip(s + 1, 0, n_in - 1).astype(int)
    return a[s0] * (1 - f) + a[s1] * f


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """Plain stretch to size x size like engine.data.images.resize_for_model: cv2 INTER_AREA when the image has more
    pixels than the model's input, else INTER_LINEAR."""
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    if h * w <= size * size:
        mode = "linear"
    else:
        mode = "area" if h >= size and w >= size else "area_grow"
    x = _resize_axis(img, size, mode)
    x = _resize_axis(x.transpose(1, 0, 2), size, mode).transpose(1, 0, 2)
    return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


def prepare(source, size: int, center_crop: bool, max_pixels: int | None = None,
            formats: tuple[str, ...] | None = None) -> np.ndarray:
    """Decode (see load_rgb), optionally centre-crop, resize: uint8 size x size x 3, what classify() takes."""
    img = load_rgb(source, max_pixels=max_pixels, formats=formats)
    h, w = img.shape[:2]
    if center_crop and max(h, w) > CENTER_CROP_ASPECT * min(h, w):  # label_image's rule: crop a centred square first
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        img = img[top : top + side, left : left + side]
    return resize(img, size)


def quantize_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """Float input -> the input tensor's dtype; an integer input takes round(x / scale + zero point), clipped."""
    dtype = np.dtype(detail["dtype"])
    if not np.issubdtype(dtype, np.integer):
        return x.astype(dtype)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)


def dequantize_output(q: np.ndarray, detail: dict) -> np.ndarray:
    """The output tensor -> float32 probabilities; an integer output is (q - zero point) * scale."""
    if not np.issubdtype(np.dtype(detail["dtype"]), np.integer):
        return q.astype(np.float32)
    scale, zero = detail["quantization"]
    if not scale:  # no quantization parameters recorded: 0..255 means 0..1
        return q.astype(np.float32) / 255.0
    return (q.astype(np.float32) - zero) * scale


def classify(interpreter, pixels: np.ndarray) -> np.ndarray:
    """uint8 S x S x 3 pixels -> probabilities; float models take pixel/255, integer models quantized input."""
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    interpreter.set_tensor(inp["index"], quantize_input(pixels[None].astype(np.float32) / 255.0, inp))
    interpreter.invoke()
    return dequantize_output(interpreter.get_tensor(out["index"])[0], out)


def card_threshold(card: dict | None) -> float:
    """The model card's "unknown" threshold (0 when the card has none: every answer stands)."""
    value = ((card or {}).get("threshold") or {}).get("value")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def is_unknown(probs, threshold: float) -> bool:
    """True when the most probable class is less probable than the threshold: the model does not know.
    probs: every class's probability, or the top one alone."""
    return bool(threshold > 0 and float(np.max(probs)) < threshold)


def top_predictions(probs: np.ndarray, labels: list[str], k: int) -> list[dict]:
    """[{"label", "probability"}] for the k most probable classes, most probable first (ties: label order)."""
    return [{"label": labels[i], "probability": float(probs[i])} for i in np.argsort(-probs, kind="stable")[:k]]


def safe_member_parts(name: str) -> list[str] | None:
    """A zip member's path components, or None when the name is absolute, has a drive letter or a NUL, or climbs
    out ('..'): the one check on every zip that this project unpacks or reads (serve.py's uploads, bundles, imports),
    so a member is never written or named outside its folder."""
    text = name.replace("\\", "/")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text) or "\x00" in text:
        return None
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return parts


def image_paths(items: list[str]) -> list[str]:
    """Files as given; folders searched recursively (a folder of class subfolders works), hidden entries skipped."""
    paths = []
    for item in items:
        p = Path(item)
        if not p.is_dir():
            paths.append(item)
            continue
        paths += sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
                        and not any(part.startswith(".") for part in f.relative_to(p).parts))
    return paths


def true_label(path: str, labels: list[str]) -> str | None:
    """The class an image is filed under: its folder's name, when that is one of the labels."""
    name = Path(path).parent.name
    return name if name in labels else None


def accuracy_per_class(results: list[dict]) -> str:
    """A small table for the images whose folder names their class: the quickest check on new labelled photos."""
    rows: dict[str, list[int]] = {}  # class -> [top-1 right, images, called unknown]
    for r in results:
        if r.get("true") is not None:
            right = int(bool(r["predictions"]) and r["predictions"][0]["label"] == r["true"])
            row = rows.setdefault(r["true"], [0, 0, 0])
            row[0] += right
            row[1] += 1
            row[2] += int(bool(r.get("unknown")))
    if not rows:
        return ""
    width = max(len(k) for k in [*rows, "all"])

    def line(name: str, right: int, total: int, unknown: int) -> str:
        text = f"  {name:<{width}}  {right:>5}/{total:<5} {right / total:6.1%}"
        return text + (f"   ({unknown} below the threshold: 'unknown')" if unknown else "")

    lines = ["top-1 accuracy per class (folder name = true class):"]
    lines += [line(name, *v) for name, v in sorted(rows.items())]
    lines.append(line("all", *(sum(v[i] for v in rows.values()) for i in range(3))))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        card, labels = read_card(), read_labels()
        default_model = card.get("default_model") or "model_float32.tflite"
        default_path = bundle_file(HERE, default_model)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    parser = argparse.ArgumentParser(description="Classify images with this bundle's model.")
    parser.add_argument("images", nargs="+", help="image files or folders")
    parser.add_argument("--model", default=None,
                        help=f"a .tflite file of this bundle (default: {default_model.replace('%', '%%')})")
    parser.add_argument("--top_k", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print JSON instead of '0.912345: label' lines")
    parser.add_argument("--threshold", type=float, default=card_threshold(card),
                        help="call an image 'unknown' when its top probability is below this (default: the model "
                             "card's, read off cross-validated predictions for its target precision; 0: never)")
    args = parser.parse_args(argv)

    if args.model is None:  # the card's choice: a file of this bundle, never one the current folder happens to hold
        model = default_path
    else:  # the user's own choice: any path, else a file of this bundle
        model = Path(args.model) if Path(args.model).exists() else HERE / args.model
    if not model.is_file():
        print(f"error: model not found: {args.model}", file=sys.stderr)
        return 1
    interpreter = make_interpreter(str(model))
    paths = image_paths(args.images)
    if not paths:
        print("error: no images found in " + ", ".join(args.images), file=sys.stderr)
        return 1
    results, failed = [], 0
    for path in paths:
        try:
            probs = classify(interpreter, prepare(path, card["image_size"], card["preprocessing"]["center_crop"]))
        except DECODE_ERRORS as exc:  # Pillow's errors
            print(f"error: {path}: could not be read ({exc})", file=sys.stderr)
            failed += 1
            continue
        results.append({"path": path, "predictions": top_predictions(probs, labels, args.top_k),
                        "unknown": is_unknown(probs, args.threshold), "threshold": args.threshold})
        if true_label(path, labels) is not None:
            results[-1]["true"] = true_label(path, labels)
    if args.json:
        print(json.dumps(results, indent=2))
    for r in [] if args.json else results:
        if len(paths) > 1:
            print(r["path"])
        for p in r["predictions"]:
            print(f"{p['probability']:.6f}: {p['label']}")
        if r["unknown"]:
            print(f"unknown: the top probability is below the {args.threshold:.6f} threshold")
    summary = accuracy_per_class(results) if any(Path(item).is_dir() for item in args.images) else ""
    if summary:  # on stderr with --json, so stdout stays one JSON document
        print(summary, file=sys.stderr if args.json else sys.stdout)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
