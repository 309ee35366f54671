"""Decode any image a user may drop in, the same way everywhere (training, export, predict, the app).

Decoding goes by content, not extension; the pixel count is checked from the header before any pixel is decoded
(decompression bombs); EXIF rotation is applied; grayscale, palette, 16-bit, CMYK and alpha images all become
8-bit RGB, with transparent areas composited on white. HEIC/HEIF photos (iPhones) are read through pillow-heif's
Pillow plugin when it is installed (requirements.txt). Every failure is an ImageError naming the file.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import struct
import warnings
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.config.training import CENTER_CROP_ASPECT

log = logging.getLogger(__name__)

MAX_PIXELS = 80_000_000
SUPPORTED = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".heic", ".heif")
HEIF_PIN = "pillow-heif==1.8.1"  # as in requirements.txt: named in the message when it is missing


def _register_heif() -> bool:
    """Teach Pillow HEIC/HEIF once, at import (registering while a thread pool decodes would race)."""
    try:
        import pillow_heif
    except ImportError:
        log.info("pillow-heif is not installed: HEIC/HEIF images are refused (pip install %s)", HEIF_PIN)
        return False
    pillow_heif.register_heif_opener()
    return True


HEIF_SUPPORTED = _register_heif()
# Pillow's own guard warns above its limit and raises DecompressionBombError above twice it. Our check (same limit,
# clearer message) replaces the warning; it is silenced once here because warnings.catch_warnings() is not
# thread-safe and images are decoded in a thread pool.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# Pillow plugins raise many exception types on malformed input; any of them means "this file is broken".
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, TypeError)

_MAGIC = [
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"PK\x03\x04", "zip"),
]


class ImageError(ValueError):
    """An image that cannot be used; the message names the file and says why, in plain words."""


def sniff_kind(source: str | Path | bytes) -> str | None:
    """Cheap magic-number check: 'jpeg', 'png', 'gif', 'webp', 'bmp', 'tiff', 'heic', 'avif', 'svg', 'zip', 'text'
    or None."""
    head = bytes(source[:64]) if isinstance(source, bytes | bytearray) else _read_head(source)
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if _is_bmp(head):
        return "bmp"
    if head[4:8] == b"ftyp":
        # AVIF (which Pillow reads) and HEIC share the HEIF container; an AVIF may carry the generic mif1 major
        # brand, so the compatible brands that follow decide.
        brands = head[8 : max(16, int.from_bytes(head[:4], "big"))]
        if b"avif" in brands or b"avis" in brands:
            return "avif"
        if brands[:4] in (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"):
            return "heic"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in head):
        return "svg"
    return "text" if _looks_like_text(head) else None


_DIB_HEADER_SIZES = (12, 40, 52, 56, 64, 108, 124)


def _is_bmp(head: bytes) -> bool:
    # "BM" alone would also match text such as "BMW..."; the DIB header size at offset 14 pins it down.
    return head[:2] == b"BM" and len(head) >= 18 and struct.unpack("<I", head[14:18])[0] in _DIB_HEADER_SIZES


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # a multi-byte character cut by the 64-byte window is still text
            return False
        decoded = head[: exc.start].decode("utf-8")
    return all(ch.isprintable() or ch in "\t\n\r\f" for ch in decoded)


def _read_head(path: str | Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(64)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_image(source: str | Path | bytes, name: str | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """HxWx3 uint8 RGB, or ImageError with the file name and the reason."""
    label = name or (Path(source).name if not isinstance(source, bytes | bytearray) else "upload")
    data = _read_bytes(source, label)
    _refuse_unsupported(data, label)
    try:
        with Image.open(io.BytesIO(data)) as im:  # lazy: only the header is parsed here
            _check_pixels(im.width, im.height, max_pixels, label)
            im.seek(0)  # animated GIF/WebP: the first frame
            im.load()
            return _to_rgb(_exif_transpose(im, label), label)
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{label}: {_bomb_pixels(exc)} is over the {min(max_pixels, 2 * MAX_PIXELS)}-pixel limit "
                         "(decompression bomb protection); downscale it first") from exc
    except UnidentifiedImageError as exc:
        if sniff_kind(data) == "heic":  # pillow-heif does not claim a HEIF box structure it cannot parse
            raise ImageError(f"{label}: truncated or corrupt HEIC (its structure cannot be read)") from exc
        raise ImageError(f"{label}: not an image ({_describe(data)})") from exc
    except ImageError:
        raise
    except _DECODE_ERRORS as exc:
        kind = (sniff_kind(data) or "image").upper()
        raise ImageError(f"{label}: truncated or corrupt {kind} ({exc})") from exc


def _check_pixels(width: int, height: int, max_pixels: int, label: str) -> None:
    if width * height > max_pixels:
        raise ImageError(f"{label}: {width}x{height} = {width * height} pixels is over the {max_pixels}-pixel limit "
                         "(decompression bomb protection); downscale it first")


def _bomb_pixels(exc: Exception) -> str:
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return f"{found.group(1)} pixels" if found else "too many pixels"


def _exif_transpose(im: Image.Image, label: str) -> Image.Image:
    # EXIF is optional metadata: a malformed tag costs the rotation, never the photo.
    try:
        return ImageOps.exif_transpose(im)
    except _DECODE_ERRORS as exc:
        log.warning("%s: EXIF orientation ignored (%s)", label, exc)
        return im


def _read_bytes(source: str | Path | bytes, label: str) -> bytes:
    if isinstance(source, bytes | bytearray):
        data = bytes(source)
    else:
        try:
            data = Path(source).read_bytes()
        except FileNotFoundError as exc:
            raise ImageError(f"{label}: file not found") from exc
        except IsADirectoryError as exc:
            raise ImageError(f"{label}: is a folder, not an image") from exc
        except OSError as exc:
            raise ImageError(f"{label}: cannot be read ({exc.strerror or exc})") from exc
    if not data:
        raise ImageError(f"{label}: empty file (0 bytes)")
    return data


def _refuse_unsupported(data: bytes, label: str) -> None:
    kind = sniff_kind(data)
    if kind == "heic" and not HEIF_SUPPORTED:
        raise ImageError(f"{label}: HEIC images need pillow-heif (pip install {HEIF_PIN}); or convert to JPEG or PNG")
    if kind == "svg":
        raise ImageError(f"{label}: SVG is a vector drawing, not a photo; export it to PNG first")
    if kind == "zip":
        raise ImageError(f"{label}: is a zip archive, not an image; upload or import it as a zip")


def _describe(data: bytes) -> str:
    kind = sniff_kind(data)
    if kind == "text":
        return "the file starts with text"
    return f"unrecognised content starting with {data[:8].hex()}"


def _to_rgb(im: Image.Image, label: str) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return np.repeat(_gray_to_uint8(im)[:, :, None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Composite on white: transparent areas would otherwise come out black (their hidden RGB is often 0).
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im.convert("RGBA"))
    try:
        rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except ValueError as exc:
        raise ImageError(f"{label}: colour mode {im.mode} is not supported; save it as an RGB JPEG or PNG") from exc
    return np.ascontiguousarray(rgb)


def _gray_to_uint8(im: Image.Image) -> np.ndarray:
    """Scale high-bit-depth grey to 0..255 (clipping or dropping the high byte would wreck the contrast)."""
    arr = np.asarray(im, dtype=np.float64)
    peak = float(arr.max()) if arr.size else 0.0
    if im.mode.startswith("I;16") or peak > 255:
        top = 65535.0
    elif im.mode == "F" and peak <= 1.0:
        top = 1.0  # float images usually hold 0..1
    else:
        top = 255.0
    return np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)


def center_crop_if_elongated(img: np.ndarray, max_aspect: float = CENTER_CROP_ASPECT) -> np.ndarray:
    """Crop an image longer than max_aspect:1 to a centred square, as TF's label_image example does."""
    h, w = img.shape[:2]
    if max(h, w) <= max_aspect * min(h, w):
        return img
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return img[top : top + side, left : left + side]


def resize_for_model(img: np.ndarray, size: int) -> np.ndarray:
    """Plain stretch to size x size (as make_image_classifier does): area filter when shrinking."""
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return np.ascontiguousarray(img)
    # The bundle's predict.py (engine/bundle/) repeats this rule in NumPy: tests keep them in step.
    interp = cv2.INTER_AREA if h * w > size * size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def prepare(source: str | Path | bytes, size: int, center_crop: bool = False, name: str | None = None,
            on_decoded: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
    """The one preprocessing used by training, export and predict: decode, optional crop, resize. on_decoded gets
    the decoded image first (engine.features.image_stats measures it there instead of decoding it again)."""
    img = load_image(source, name=name)
    if on_decoded is not None:
        on_decoded(img)
    if center_crop:
        img = center_crop_if_elongated(img)
    return resize_for_model(img, size)
