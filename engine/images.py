"""Decode any image a user may drop in, the same way everywhere (training, export, predict, the app).

Decoding goes by content, not extension; the pixel count is checked from the header before any pixel is decoded
(decompression bombs); EXIF rotation is applied; grayscale, palette, 16-bit, CMYK and alpha images all become
8-bit RGB, with transparent areas composited on white. Every failure is an ImageError naming the file.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

MAX_PIXELS = 80_000_000
SUPPORTED = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
# Pillow's own guard raises DecompressionBombError at 2x its limit; ours is checked first, with a clearer message.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

_MAGIC = [
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"PK\x03\x04", "zip"),
]


class ImageError(ValueError):
    """An image that cannot be used; the message names the file and says why, in plain words."""


def sniff_kind(source: str | Path | bytes) -> str | None:
    """Cheap magic-number check: 'jpeg', 'png', 'gif', 'webp', 'bmp', 'tiff', 'heic', 'svg', 'zip', 'text', None."""
    head = source[:64] if isinstance(source, bytes | bytearray) else _read_head(source)
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"hevc", b"avif"):
        return "heic"
    text = head.lstrip()
    if text.startswith(b"<svg") or (text.startswith(b"<?xml") and b"<svg" in head):
        return "svg"
    if head and all(32 <= c < 127 or c in (9, 10, 13) for c in head):
        return "text"
    return None


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
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                pixels = im.width * im.height
                if pixels > max_pixels:
                    raise ImageError(f"{label}: {im.width}x{im.height} = {pixels} pixels is over the {max_pixels}-"
                                     "pixel limit (decompression bomb protection); downscale it first")
                im.seek(0)  # animated GIF/WebP: the first frame
                im.load()
                return _to_rgb(ImageOps.exif_transpose(im), label)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{label}: too many pixels, over the {max_pixels}-pixel limit (decompression bomb "
                         "protection); downscale it first") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{label}: not an image Pillow or OpenCV can read ({_describe(data)})") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        kind = (sniff_kind(data) or "image").upper()
        raise ImageError(f"{label}: truncated or corrupt {kind} ({exc})") from exc


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
    if kind == "heic":
        raise ImageError(f"{label}: HEIC/HEIF images are not supported; convert it to JPEG or PNG")
    if kind == "svg":
        raise ImageError(f"{label}: SVG is a vector drawing, not a photo; export it to PNG first")
    if kind == "zip":
        raise ImageError(f"{label}: is a zip archive, not an image; upload or import it as a zip")


def _describe(data: bytes) -> str:
    kind = sniff_kind(data)
    if kind == "text":
        return "the file contains text"
    return f"unrecognised content starting with {data[:8].hex()}"


def _to_rgb(im: Image.Image, label: str) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        gray = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.size == 0:
        raise ImageError(f"{label}: could not be converted to RGB (mode {im.mode})")
    return np.ascontiguousarray(rgb)


def center_crop_if_elongated(img: np.ndarray, max_aspect: float = 1.5) -> np.ndarray:
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
        return img
    interp = cv2.INTER_AREA if h * w > size * size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def prepare(source: str | Path | bytes, size: int, center_crop: bool = False, name: str | None = None) -> np.ndarray:
    """The one preprocessing used by training, export and predict: decode, optional crop, resize."""
    img = load_image(source, name=name)
    if center_crop:
        img = center_crop_if_elongated(img)
    return resize_for_model(img, size)
