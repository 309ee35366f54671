"""engine.data.images: decoding by content, odd formats, refusals with the file name and the reason, resizing."""

from __future__ import annotations

import hashlib
import io
import logging
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile, features

from engine.data import demo, images
from engine.data.images import ImageError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return demo.write_bad_files(tmp_path_factory.mktemp("corpus"))


def _load(corpus, kind):
    img = images.load_image(corpus[kind])
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.flags["C_CONTIGUOUS"]
    return img


# ------------------------------------------------------------------------------------------------ formats that load
@pytest.mark.parametrize(
    "kind, shape",
    [
        ("png_named_jpg", (48, 64)),
        ("cmyk_jpeg", (32, 32)),
        ("png_16bit", (20, 20)),
        ("grayscale", (24, 32)),
        ("palette_transparent", (32, 32)),
        ("rgba_transparent", (40, 40)),
        ("animated_gif", (30, 30)),
        ("animated_webp", (30, 30)),
        ("webp", (48, 64)),
        ("bmp", (48, 64)),
        ("tiff", (48, 64)),
        ("one_pixel", (1, 1)),
        ("wide_strip", (50, 5000)),
        ("unicode_name", (48, 64)),
    ],
)
def test_odd_but_valid_images_decode_to_rgb(corpus, kind, shape):
    assert _load(corpus, kind).shape == (*shape, 3)


def test_decoding_goes_by_content_not_extension(corpus):
    assert corpus["png_named_jpg"].suffix == ".jpg"
    np.testing.assert_array_equal(_load(corpus, "png_named_jpg"), _load(corpus, "unicode_name"))
    # the gradient survives: left column black, right column white
    img = _load(corpus, "png_named_jpg")
    assert img[:, 0].max() == 0 and img[:, -1].min() == 255


def test_transparent_areas_become_white_not_black(corpus):
    img = _load(corpus, "rgba_transparent")
    np.testing.assert_array_equal(img[0, 0], [255, 255, 255])  # alpha 0 (its hidden colour is red)
    np.testing.assert_array_equal(img[20, 20], [0, 128, 0])  # opaque green square


def test_palette_transparency_becomes_white(corpus):
    img = _load(corpus, "palette_transparent")
    # index 1 (red) fills the image; index 0 is the transparent one and is unused
    np.testing.assert_array_equal(img[5, 5], [255, 0, 0])
    im = Image.new("P", (4, 4), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    buf = io.BytesIO()
    im.save(buf, "PNG", transparency=0)
    np.testing.assert_array_equal(images.load_image(buf.getvalue(), name="p.png")[0, 0], [255, 255, 255])


def test_cmyk_red_stays_red(corpus):
    r, g, b = _load(corpus, "cmyk_jpeg")[16, 16].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_16bit_grey_is_scaled_not_clipped(corpus):
    img = _load(corpus, "png_16bit")
    np.testing.assert_array_equal(img[0, 0], [255, 255, 255])  # 65535
    assert abs(int(img[0, 15, 0]) - 64) <= 1  # 16384 is a quarter of full scale


def test_32bit_and_float_grey_are_scaled():
    as_int = Image.fromarray(np.array([[0, 65535]], dtype=np.int32))
    as_float = Image.fromarray(np.array([[0.0, 0.5]], dtype=np.float32))
    assert images._to_rgb(as_int, "i")[0, :, 0].tolist() == [0, 255]
    assert images._to_rgb(as_float, "f")[0, :, 0].tolist() == [0, 128]


def test_grayscale_becomes_three_equal_channels(corpus):
    np.testing.assert_array_equal(_load(corpus, "grayscale")[3, 3], [100, 100, 100])


@pytest.mark.parametrize("kind, blue_on_top", [("exif_6", True), ("exif_8", False)])
def test_exif_orientation_is_applied(corpus, kind, blue_on_top):
    img = _load(corpus, kind)
    assert img.shape == (60, 30, 3)  # stored 60 wide x 30 high
    top, bottom = img[5, 15].astype(int), img[55, 15].astype(int)
    blue, red = (top, bottom) if blue_on_top else (bottom, top)
    assert blue[2] > 200 and blue[0] < 60
    assert red[0] > 200 and red[2] < 60


def test_animated_images_give_the_first_frame(corpus):
    for kind in ("animated_gif", "animated_webp"):
        with Image.open(corpus[kind]) as im:
            assert getattr(im, "n_frames", 1) == 2  # the corpus really holds an animation
        r, g, _ = _load(corpus, kind)[15, 15].astype(int)
        assert r > 200 and g < 60  # frame 1 is red, frame 2 green


# ------------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize(
    "kind, reason",
    [
        ("zero_byte", "empty file (0 bytes)"),
        ("truncated_jpeg", "truncated or corrupt JPEG"),
        ("truncated_png", "truncated or corrupt PNG"),
        ("random_bytes", "not an image"),
        ("text_as_png", "not an image (the file starts with text)"),
        ("svg", "SVG"),
        ("bomb_header", "80000000-pixel limit"),
    ],
)
def test_bad_files_raise_with_name_and_reason(corpus, kind, reason):
    path = corpus[kind]
    with pytest.raises(ImageError) as err:
        images.load_image(path)
    message = str(err.value)
    assert message.startswith(f"{path.name}: ") and reason in message


# ------------------------------------------------------------------------------------------------ HEIC (iPhones)
def _heic_photo(width: int = 64, height: int = 48, exif_orientation: int | None = None) -> bytes:
    """A real HEIC written by pillow-heif (the left third blue, the rest red), as an iPhone writes them."""
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[:] = (220, 20, 20)
    rgb[:, : width // 3] = (20, 20, 220)
    kw = {}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kw["exif"] = exif.tobytes()
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "HEIF", quality=95, **kw)
    return buf.getvalue()


def test_heic_photo_decodes_like_the_same_photo_as_png():
    assert images.HEIF_SUPPORTED and {".heic", ".heif"} <= set(images.SUPPORTED)
    data = _heic_photo()
    assert images.sniff_kind(data) == "heic"
    img = images.load_image(data, name="IMG_0001.HEIC")
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8
    assert np.abs(img[:, 30:].astype(int) - (220, 20, 20)).max() < 20  # lossy HEVC, but clearly the same colours
    assert np.abs(img[:, :15].astype(int) - (20, 20, 220)).max() < 20


def test_heic_orientation_is_applied_once():
    # pillow-heif applies the HEIF rotation and resets EXIF orientation to 1: exif_transpose must not turn it again
    img = images.load_image(_heic_photo(exif_orientation=6))  # 6: turn 90 degrees clockwise to display
    assert img.shape == (64, 48, 3)
    assert img[:10, :, 2].mean() > 180 and img[-10:, :, 0].mean() > 180  # the blue left third is now on top


def test_truncated_heic_is_refused_as_corrupt():
    data = _heic_photo()
    with pytest.raises(ImageError, match=r"^IMG_0002\.HEIC: truncated or corrupt HEIC"):
        images.load_image(data[: len(data) // 2], name="IMG_0002.HEIC")


def test_without_pillow_heif_heic_is_refused_with_the_install_command(tmp_path):
    # A real interpreter where pillow-heif cannot be imported (as on a machine that did not install it)
    path = tmp_path / "IMG_0003.HEIC"
    path.write_bytes(_heic_photo())
    code = ("import sys; sys.modules['pillow_heif'] = None\n"
            "from engine.data import images\n"
            "try:\n    images.load_image(sys.argv[1])\nexcept images.ImageError as exc:\n    print(exc)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).parent.parent)
    assert proc.stdout.strip() == ("IMG_0003.HEIC: HEIC images need pillow-heif (pip install pillow-heif==1.8.1); or "
                                   "convert to JPEG or PNG"), proc.stderr[-2000:]


def test_truncated_images_are_not_loaded_leniently():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_bomb_is_refused_from_the_header_before_decoding(corpus):
    start = time.perf_counter()
    with pytest.raises(ImageError, match="400000000 pixels is over the 80000000-pixel limit"):
        images.load_image(corpus["bomb_header"])
    assert time.perf_counter() - start < 0.5  # decoding 400 Mpx would take seconds and 1.2 GB
    assert Image.MAX_IMAGE_PIXELS == images.MAX_PIXELS == 80_000_000


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # pytest resets our module's filter
def test_image_over_our_limit_but_under_pillows_hard_limit_is_refused():
    data = demo._png_header_only(10_000, 9_000)  # 90 Mpx: Pillow would only warn
    with pytest.raises(ImageError, match=r"big\.png: 10000x9000 = 90000000 pixels is over the 80000000-pixel"):
        images.load_image(data, name="big.png")


def test_max_pixels_argument_is_honoured(corpus):
    with pytest.raises(ImageError, match="64x48 = 3072 pixels is over the 1000-pixel limit"):
        images.load_image(corpus["unicode_name"], max_pixels=1000)
    assert images.load_image(corpus["unicode_name"], max_pixels=3072).shape == (48, 64, 3)


def test_bytes_use_the_given_name_in_messages(corpus):
    data = corpus["unicode_name"].read_bytes()
    assert images.load_image(data, name="x.png").shape == (48, 64, 3)
    with pytest.raises(ImageError, match=r"^holiday\.jpg: not an image \(the file starts with text\)"):
        images.load_image(b"Dear diary, today", name="holiday.jpg")
    with pytest.raises(ImageError, match=r"^upload: empty file"):
        images.load_image(b"")


def test_missing_file_and_folder_are_image_errors(tmp_path):
    with pytest.raises(ImageError, match=r"^gone\.jpg: file not found"):
        images.load_image(tmp_path / "gone.jpg")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ImageError, match=r"^dir\.png: "):
        images.load_image(tmp_path / "dir.png")


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow build has no AVIF codec")
def test_avif_is_decoded_not_refused():
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (0, 0, 255)).save(buf, "AVIF")
    assert images.sniff_kind(buf.getvalue()) == "avif"
    img = images.load_image(buf.getvalue(), name="phone.avif")
    assert img.shape == (12, 16, 3) and img[6, 8, 2] > 200


def test_zip_is_refused_with_a_hint():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", "hello")
    with pytest.raises(ImageError, match=r"^photos\.jpg: is a zip archive"):
        images.load_image(buf.getvalue(), name="photos.jpg")


def test_broken_exif_keeps_the_photo(corpus, monkeypatch, caplog):
    data = bytearray(corpus["exif_6"].read_bytes())
    at = data.find(b"Exif\x00\x00")
    assert at > 0
    data[at + 6 : at + 14] = b"XX\x00\x2a\x00\x00\x00\x08"  # neither II nor MM: an unreadable TIFF header
    assert images.load_image(bytes(data), name="odd_exif.jpg").shape == (30, 60, 3)  # as stored, unrotated

    def broken(im):
        raise struct.error("unpack requires a buffer of 4 bytes")

    monkeypatch.setattr(images.ImageOps, "exif_transpose", broken)
    with caplog.at_level(logging.WARNING, logger="engine.data.images"):
        assert images.load_image(corpus["exif_6"]).shape == (30, 60, 3)
    assert "rot6.jpg: EXIF orientation ignored" in caplog.text


# ------------------------------------------------------------------------------------------------ sniffing
@pytest.mark.parametrize(
    "kind, expected",
    [
        ("truncated_jpeg", "jpeg"),
        ("png_named_jpg", "png"),
        ("animated_gif", "gif"),
        ("webp", "webp"),
        ("bmp", "bmp"),
        ("tiff", "tiff"),
        ("heic", "heic"),
        ("svg", "svg"),
        ("text_as_png", "text"),
        ("random_bytes", None),
        ("zero_byte", None),
    ],
)
def test_sniff_kind_on_files(corpus, kind, expected):
    assert images.sniff_kind(corpus[kind]) == expected
    assert images.sniff_kind(corpus[kind].read_bytes()) == expected


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"PK\x03\x04rest", "zip"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00", "avif"),
        (b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1avifmiaf", "avif"),  # generic major brand
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1heic", "heic"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "svg"),
        (b"BMW and other cars, a text file that starts with BM", "text"),
        ("caf\u00e9 \u5199\u771f, not ASCII but still text".encode(), "text"),
        (b"\x00\x01\x02\x03", None),
    ],
)
def test_sniff_kind_on_bytes(data, expected):
    assert images.sniff_kind(data) == expected


# ------------------------------------------------------------------------------------------------ crop and resize
def _columns(h, w):
    return np.broadcast_to(np.arange(w, dtype=np.uint8)[None, :, None], (h, w, 3)).copy()


def test_center_crop_only_when_elongated():
    wide = _columns(100, 300)
    crop = images.center_crop_if_elongated(wide)
    assert crop.shape == (100, 100, 3) and crop[0, 0, 0] == 100 and crop[0, -1, 0] == 199  # centred
    tall = np.zeros((301, 100, 3), np.uint8)
    assert images.center_crop_if_elongated(tall).shape == (100, 100, 3)
    for h, w in ((100, 140), (100, 150), (150, 100)):  # aspect <= 1.5 is left alone
        img = _columns(h, w)
        assert images.center_crop_if_elongated(img) is img
    assert images.center_crop_if_elongated(_columns(100, 150), max_aspect=1.2).shape == (100, 100, 3)


def test_the_bundle_crops_by_the_engines_rule():
    """The bundle's predict.py ships without the engine, so it restates the crop rule: both must crop the same
    images the same way (a changed aspect in either place fails here)."""
    from engine.bundle import predict as bundle
    from engine.config.training import CENTER_CROP_ASPECT

    assert bundle.CENTER_CROP_ASPECT == CENTER_CROP_ASPECT
    for h, w in ((100, 150), (100, 151), (151, 100), (64, 300), (90, 90)):
        img = _columns(h, w)
        ours = images.resize_for_model(images.center_crop_if_elongated(img), 48)
        theirs = bundle.prepare(cv2.imencode(".png", img)[1].tobytes(), 48, center_crop=True)  # grey: BGR = RGB
        assert ours.shape == theirs.shape == (48, 48, 3)
        assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1, (h, w)  # resizing agrees within 1 level


def test_resize_uses_area_when_shrinking_and_linear_when_growing():
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    small = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out_big, out_small = images.resize_for_model(big, 64), images.resize_for_model(small, 64)
    assert out_big.shape == out_small.shape == (64, 64, 3) and out_big.dtype == np.uint8
    np.testing.assert_array_equal(out_big, cv2.resize(big, (64, 64), interpolation=cv2.INTER_AREA))
    np.testing.assert_array_equal(out_small, cv2.resize(small, (64, 64), interpolation=cv2.INTER_LINEAR))
    assert not np.array_equal(out_big, cv2.resize(big, (64, 64), interpolation=cv2.INTER_LINEAR))


def test_resize_stretches_without_letterbox():
    img = np.full((10, 100, 3), 200, np.uint8)
    out = images.resize_for_model(img, 32)
    assert out.shape == (32, 32, 3) and (out == 200).all()


def test_prepare_is_load_crop_resize(corpus):
    path = corpus["wide_strip"]
    expected = images.resize_for_model(images.center_crop_if_elongated(images.load_image(path)), 48)
    np.testing.assert_array_equal(images.prepare(path, 48, True), expected)
    np.testing.assert_array_equal(images.prepare(path.read_bytes(), 48, True, name="s.png"), expected)
    stretched = images.prepare(path, 48, False)
    assert stretched.shape == (48, 48, 3) and (stretched[..., 1] == 200).all()


def test_prepare_raises_image_error(corpus):
    with pytest.raises(ImageError, match="cut.png"):
        images.prepare(corpus["truncated_png"], 32, False)


# ------------------------------------------------------------------------------------------------ hashing
def test_sha256_streams_and_matches_bytes(tmp_path):
    data = np.random.default_rng(1).integers(0, 256, 3 * (1 << 20) + 17, dtype=np.uint8).tobytes()
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert images.file_sha256(path) == images.bytes_sha256(data) == expected
    assert images.file_sha256(str(path)) == expected
