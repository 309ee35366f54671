"""Synthetic images drawn with OpenCV: the app's demo project, test datasets, and a corpus of odd/bad files."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from engine.data.images import HEIF_SUPPORTED  # importing it registers the HEIF plugin (pillow-heif)

WORDS = ["invoice", "HELLO", "total 42", "Stop", "menu", "Retrain", "open 9-5", "SALE", "page 3", "Dear Sir",
         "exit", "warning", "lorem ipsum", "No 17", "cafe", "TEXT", "A B C", "2026", "label", "studio"]
FONTS = [cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX,
         cv2.FONT_HERSHEY_PLAIN, cv2.FONT_ITALIC | cv2.FONT_HERSHEY_SIMPLEX]


def _background(rng: np.random.Generator, h: int, w: int, light: bool = True) -> np.ndarray:
    base = rng.integers(170, 255, 3) if light else rng.integers(0, 255, 3)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = base
    noise = rng.normal(0, 6, (h, w, 3))
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def draw_text(rng: np.random.Generator) -> np.ndarray:
    h, w = int(rng.integers(120, 300)), int(rng.integers(200, 400))
    img = _background(rng, h, w)
    for row in range(int(rng.integers(2, 6))):
        word = " ".join(rng.choice(WORDS, int(rng.integers(1, 3))))
        scale = float(rng.uniform(0.6, 1.4))
        colour = tuple(int(c) for c in rng.integers(0, 90, 3))
        y = int(30 + row * (h - 30) / 5 + rng.integers(0, 10))
        cv2.putText(img, word, (int(rng.integers(5, 40)), y), int(rng.choice(FONTS)), scale, colour,
                    int(rng.integers(1, 3)), cv2.LINE_AA)
    return img


def draw_shapes(rng: np.random.Generator) -> np.ndarray:
    side = int(rng.integers(120, 320))
    width = int(np.clip(side + rng.integers(-40, 40), 120, 400))
    img = _background(rng, side, width, light=bool(rng.integers(0, 2)))
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(2, 6))):
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        kind = rng.integers(0, 4)
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(15, max(16, min(h, w) // 2)))
        if kind == 0:
            cv2.circle(img, (cx, cy), r, colour, -1, cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(img, (cx - r, cy - r // 2), (cx + r, cy + r), colour, -1)
        elif kind == 2:
            pts = rng.integers(0, [w, h], (3, 2)).astype(np.int32)
            cv2.fillPoly(img, [pts], colour, cv2.LINE_AA)
        else:
            cv2.line(img, (cx, cy), (int(rng.integers(0, w)), int(rng.integers(0, h))), colour,
                     int(rng.integers(3, 12)), cv2.LINE_AA)
    return img


def draw_blank(rng: np.random.Generator) -> np.ndarray:
    h, w = int(rng.integers(120, 300)), int(rng.integers(120, 300))
    ramp = np.linspace(0, 1, w)[None, :, None] * rng.integers(0, 255, 3)[None, None, :]
    return np.clip(_background(rng, h, w, light=False) * 0.5 + ramp * 0.5, 0, 255).astype(np.uint8)


DRAWERS = {"text": draw_text, "shapes": draw_shapes, "blank": draw_blank}


def make_demo_dataset(root: str | Path, per_class: int = 24, seed: int = 0,
                      classes: tuple[str, ...] = ("text", "shapes")) -> Path:
    """Write root/<class>/<n>.png|jpg; deterministic from seed; visually easy to separate."""
    unknown = [c for c in classes if c not in DRAWERS]
    if unknown:
        raise ValueError(f"unknown demo class {unknown[0]!r}; choose from {', '.join(DRAWERS)}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    for label in classes:
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rgb = DRAWERS[label](rng)
            ext = ".jpg" if i % 3 == 2 else ".png"
            cv2.imwrite(str(folder / f"{label}_{seed}_{i:03d}{ext}"), rgb[:, :, ::-1])
    return root


# -------------------------------------------------------------------------------------------- bad and odd inputs
def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height: enough to trip a pixel limit without allocating anything."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND",
                                                                                                          b"")


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _exif_rotated(orientation: int) -> bytes:
    im = Image.new("RGB", (60, 30), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 30, 30))  # left half blue: shows which way it turned
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(im, "JPEG", exif=exif.tobytes())


def _heic(im: Image.Image) -> bytes:
    """An iPhone-style HEIC photo (pillow-heif); where pillow-heif is missing, a HEIC header that nothing decodes."""
    if HEIF_SUPPORTED:
        return _encode(im, "HEIF", quality=90)
    return b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\0" * 64


def bad_file_corpus() -> dict[str, tuple[str, bytes]]:
    """kind -> (file name, bytes) for the odd and broken inputs users bring."""
    rgb = Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (48, 1, 3)))
    jpeg, png = _encode(rgb, "JPEG"), _encode(rgb, "PNG")
    rgba = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    rgba.paste((0, 128, 0, 255), (10, 10, 30, 30))
    palette = Image.new("P", (32, 32), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    frames = [Image.new("RGB", (30, 30), c) for c in ((255, 0, 0), (0, 255, 0))]
    animated = {fmt: _encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
                for fmt in ("GIF", "WEBP")}
    deep = np.full((20, 20), 65535, np.uint16)
    deep[:, 10:] = 16384  # a quarter of full scale: 64 when scaled, 255 if clipped, 0 if the low byte is kept
    return {
        "zero_byte": ("empty.jpg", b""),
        "truncated_jpeg": ("cut.jpg", jpeg[: len(jpeg) // 2]),
        "truncated_png": ("cut.png", png[: len(png) // 2]),
        "random_bytes": ("noise.jpg", np.random.default_rng(0).integers(0, 256, 2048, dtype=np.uint8).tobytes()),
        "text_as_png": ("notes.png", b"this is a text file, not a picture\n" * 5),
        "png_named_jpg": ("really_png.jpg", png),
        "cmyk_jpeg": ("cmyk.jpg", _encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG")),
        "png_16bit": ("deep.png", _encode(Image.fromarray(deep), "PNG")),
        "grayscale": ("gray.png", _encode(Image.new("L", (32, 24), 100), "PNG")),
        "palette_transparent": ("palette.png", _encode(palette, "PNG", transparency=0)),
        "rgba_transparent": ("alpha.png", _encode(rgba, "PNG")),
        "exif_6": ("rot6.jpg", _exif_rotated(6)),
        "exif_8": ("rot8.jpg", _exif_rotated(8)),
        "animated_gif": ("anim.gif", animated["GIF"]),
        "animated_webp": ("anim.webp", animated["WEBP"]),
        "webp": ("pic.webp", _encode(rgb, "WEBP")),
        "bmp": ("pic.bmp", _encode(rgb, "BMP")),
        "tiff": ("pic.tiff", _encode(rgb, "TIFF")),
        "svg": ("drawing.svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'),
        "heic": ("phone.heic", _heic(Image.fromarray(np.ascontiguousarray(np.asarray(rgb)[:, ::-1])))),
        "one_pixel": ("dot.png", _encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG")),
        "bomb_header": ("bomb.png", _png_header_only(20000, 20000)),
        "wide_strip": ("strip.png", _encode(Image.new("RGB", (5000, 50), (0, 200, 0)), "PNG")),
        "unicode_name": ("façade été 写真 (1).png", png),
    }


def write_bad_files(folder: str | Path) -> dict[str, Path]:
    """Write bad_file_corpus() into folder; kind -> path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for kind, (name, data) in bad_file_corpus().items():
        path = folder / name
        path.write_bytes(data)
        out[kind] = path
    return out
