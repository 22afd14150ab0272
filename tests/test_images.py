"""cbir.images: every way an image arrives, every mode, every way it can be unusable.

All images are drawn here with Pillow/numpy, in tmp_path or in memory.
"""

from __future__ import annotations

import io
import os
import re
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw, ImageFile

from cbir.images import (
    DEFAULT_LIMITS,
    IMAGE_SUFFIXES,
    ImageError,
    ImageLimits,
    crop_box,
    load_for_network,
    load_image,
    load_region,
    to_network_input,
)

RED = (220, 30, 40)
BLUE = (30, 40, 220)
WHITE = (255, 255, 255)


def solid(colour: tuple[int, ...], size: tuple[int, int] = (40, 30), mode: str = "RGB") -> Image.Image:
    return Image.new(mode, size, colour)


def smooth_picture(width: int, height: int) -> Image.Image:
    """Gradients and shapes: photo-like content that survives JPEG and rescaling."""
    xx, yy = np.meshgrid(np.linspace(0, 1, width), np.linspace(0, 1, height))
    pixels = np.stack([xx * 255, yy * 255, (1 - xx) * (1 - yy) * 255], axis=-1).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    draw.ellipse((width // 8, height // 8, width // 2, height // 2), fill=RED)
    draw.rectangle((width // 2, height // 2, width - width // 8, height - height // 8), fill=BLUE)
    return image


def noisy_jpeg_bytes(width: int = 160, height: int = 120) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def png_with_claimed_size(width: int, height: int) -> bytes:
    """A valid 16x16 PNG whose IHDR (CRC fixed) claims width x height: the header reads fine, but
    decoding would fail because the pixel data is far too short."""
    buffer = io.BytesIO()
    solid(RED, (16, 16)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def assert_close(pixel, expected, tolerance: int = 0) -> None:
    assert all(abs(int(a) - int(b)) <= tolerance for a, b in zip(pixel, expected)), (pixel, expected)


# --- formats and frames ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suffix", "tolerance"), [(".jpg", 8), (".png", 0), (".webp", 8), (".bmp", 0), (".gif", 0)]
)
def test_each_format_round_trips_to_rgb_of_the_right_size(tmp_path, suffix, tolerance):
    path = tmp_path / f"picture{suffix}"
    solid(RED, (40, 30)).save(path)
    image = load_image(path)
    assert image.mode == "RGB"
    assert image.size == (40, 30)
    assert_close(image.getpixel((20, 15)), RED, tolerance)


def test_animated_gif_gives_the_first_frame(tmp_path):
    path = tmp_path / "animated.gif"
    frames = [solid(colour, (24, 24)) for colour in (RED, (20, 200, 30), BLUE)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(path) as check:
        assert check.n_frames == 3
    image = load_image(path)
    assert image.mode == "RGB"
    assert_close(image.getpixel((12, 12)), RED)


def test_animated_webp_gives_the_first_frame(tmp_path):
    path = tmp_path / "animated.webp"
    frames = [solid(colour, (24, 24)) for colour in (RED, BLUE)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, lossless=True)
    assert_close(load_image(path).getpixel((12, 12)), RED, 2)


def test_exif_orientation_6_rotates_the_photo_upright(tmp_path):
    stored = solid(BLUE, (40, 20))
    ImageDraw.Draw(stored).rectangle((0, 0, 9, 9), fill=RED)  # red in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif.tobytes(), quality=95)

    image = load_image(path)
    assert image.size == (20, 40)
    # Turning clockwise carries the top-left corner to the top-right.
    assert_close(image.getpixel((16, 3)), RED, 30)
    assert_close(image.getpixel((3, 3)), BLUE, 30)
    assert_close(image.getpixel((16, 36)), BLUE, 30)


# --- modes ---------------------------------------------------------------------------------------


def test_transparent_rgba_pixels_become_white(tmp_path):
    pixels = np.zeros((20, 20, 4), np.uint8)
    pixels[:, 10:] = (*RED, 255)  # right half opaque red; left half transparent black
    pixels[:10, :10, 3] = 0
    pixels[10:, :10, 3] = 128  # half-transparent black over white: mid grey
    path = tmp_path / "rgba.png"
    Image.fromarray(pixels).save(path)

    image = load_image(path)
    assert image.mode == "RGB"
    assert image.getpixel((2, 2)) == WHITE
    assert_close(image.getpixel((2, 15)), (127, 127, 127), 1)
    assert image.getpixel((15, 5)) == RED


def test_palette_image_with_transparency_becomes_white_where_transparent(tmp_path):
    image = Image.new("P", (16, 16), 0)
    image.putpalette([0, 0, 0, *RED] + [0] * (256 - 2) * 3)
    ImageDraw.Draw(image).rectangle((8, 0, 15, 15), fill=1)
    path = tmp_path / "palette.png"
    image.save(path, transparency=0)

    loaded = load_image(path)
    assert loaded.mode == "RGB"
    assert loaded.getpixel((2, 2)) == WHITE
    assert loaded.getpixel((12, 2)) == RED


def test_palette_image_without_transparency_keeps_its_colours(tmp_path):
    image = Image.new("P", (16, 16), 1)
    image.putpalette([0, 0, 0, *BLUE] + [0] * (256 - 2) * 3)
    path = tmp_path / "palette.bmp"
    image.save(path)
    assert load_image(path).getpixel((5, 5)) == BLUE


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_cmyk_becomes_rgb(tmp_path, suffix):
    path = tmp_path / f"cmyk{suffix}"
    solid((0, 255, 255, 0), (16, 16), "CMYK").save(path)  # no cyan, full magenta + yellow: red
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    image = load_image(path)
    assert image.mode == "RGB"
    assert_close(image.getpixel((8, 8)), (255, 0, 0), 8)


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    pixels = np.full((10, 20), 65535, np.uint16)
    pixels[:, 10:] = 32768
    path = tmp_path / "grey16.png"
    Image.fromarray(pixels).save(path)
    with Image.open(path) as check:
        assert check.mode.startswith("I")  # really a wide grey file, not an 8-bit one

    image = load_image(path)
    assert image.mode == "RGB"
    assert image.getpixel((2, 2)) == WHITE
    assert_close(image.getpixel((15, 2)), (128, 128, 128), 1)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.fromarray(np.full((10, 10), 65535, np.int32)), 255),  # mode I
        # Big-endian 16-bit, built from bytes: Pillow's convert("I;16B") clips values to 255.
        (Image.frombytes("I;16B", (10, 10), np.full((10, 10), 32768, ">u2").tobytes()), 128),
        (Image.fromarray(np.full((10, 10), 0.5, np.float32)), 128),  # mode F in [0, 1]
        (Image.fromarray(np.full((10, 10), 200.0, np.float32)), 200),  # mode F on the 0-255 scale
        (Image.new("1", (10, 10), 1), 255),
        (Image.new("L", (10, 10), 77), 77),
        (Image.new("LA", (10, 10), (0, 0)), 255),  # fully transparent black
        (Image.new("YCbCr", (10, 10), (128, 128, 128)), 128),
    ],
    ids=["I", "I;16B", "F-unit", "F-255", "1", "L", "LA", "YCbCr"],
)
def test_every_mode_becomes_grey_rgb_of_the_right_level(image, expected):
    assert image.mode in {"I", "I;16B", "F", "1", "L", "LA", "YCbCr"}
    loaded = load_image(image)
    assert loaded.mode == "RGB"
    assert_close(loaded.getpixel((5, 5)), (expected,) * 3, 1)


def test_a_pil_image_is_not_modified_or_returned_as_is():
    original = solid(RED, (20, 20), "RGBA")
    loaded = load_image(original)
    assert loaded is not original
    assert original.mode == "RGBA"
    assert loaded.mode == "RGB"


# --- size guard ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, size", [("wide", (20000, 10)), ("tall", (10, 20000))])
def test_a_20000_px_wide_or_tall_image_is_refused_with_its_size_and_the_limit(tmp_path, name, size):
    path = tmp_path / f"{name}.png"
    Image.new("1", size).save(path)
    with pytest.raises(ImageError, match=rf"{name}\.png") as caught:
        load_image(path)
    assert f"{size[0]} x {size[1]}" in str(caught.value)
    assert "16384" in str(caught.value)


def test_the_size_is_checked_from_the_header_before_decoding(tmp_path):
    path = tmp_path / "liar.png"
    path.write_bytes(png_with_claimed_size(20000, 10))
    with pytest.raises(ImageError, match=r"20000 x 10 px; the largest side allowed is 16384 px"):
        load_image(path)
    # With the guard relaxed the same file fails in the decoder, so above nothing was decoded.
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(path, limits=ImageLimits(max_side=30_000))


def test_too_many_pixels_is_refused_from_the_header(tmp_path):
    path = tmp_path / "square.png"
    path.write_bytes(png_with_claimed_size(9000, 9000))  # sides fine, 81 M pixels > 64 M
    with pytest.raises(ImageError, match=r"81,000,000 pixels.*64,000,000"):
        load_image(path)


def test_pillow_decompression_bomb_error_becomes_image_error(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_with_claimed_size(16000, 16000))  # > 2 x Pillow's limit: refused in Image.open
    with pytest.raises(ImageError, match=r"bomb\.png: image is too large"):
        load_image(path, limits=ImageLimits(max_pixels=10**9))


def test_images_smaller_than_min_side_are_refused(tmp_path):
    path = tmp_path / "tiny.png"
    solid(RED, (5, 30)).save(path)
    with pytest.raises(ImageError, match=r"tiny\.png: image is 5 x 30 px; images must be at least 8 x 8 px"):
        load_image(path)
    assert load_image(path, limits=ImageLimits(min_side=4)).size == (5, 30)


def test_limits_are_validated():
    assert DEFAULT_LIMITS == ImageLimits(64_000_000, 16_384, 8)
    with pytest.raises(ValueError):
        ImageLimits(min_side=0)
    with pytest.raises(ValueError):
        ImageLimits(min_side=100, max_side=50)


# --- unusable files ------------------------------------------------------------------------------


def test_truncated_jpeg_is_an_error_not_grey_padding(tmp_path):
    data = noisy_jpeg_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cut\.jpg: image data is truncated or corrupt"):
        load_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # and nobody switched the global on


def test_jpeg_cut_inside_its_header_is_called_truncated_not_a_non_image(tmp_path):
    path = tmp_path / "stub.jpg"
    path.write_bytes(noisy_jpeg_bytes()[:20])
    with pytest.raises(ImageError, match=r"stub\.jpg: image data is truncated or corrupt"):
        load_image(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.png: file is empty"):
        load_image(path)


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("hello, this is not a picture\n")
    with pytest.raises(ImageError, match=r"notes\.jpg: not an image file Pillow can read"):
        load_image(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageError, match=r"gone\.jpg: file not found"):
        load_image(tmp_path / "gone.jpg")
    with pytest.raises(ImageError, match="is a folder"):
        load_image(tmp_path)


def test_postscript_is_not_handed_to_ghostscript(tmp_path):
    path = tmp_path / "drawing.eps"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 20 20\nshowpage\n")
    with pytest.raises(ImageError, match=r"drawing\.eps: not an image file Pillow can read"):
        load_image(path)


def test_name_overrides_the_path_in_messages(tmp_path):
    path = tmp_path / "upload_0x1f.tmp"
    path.write_text("nope")
    with pytest.raises(ImageError, match=r"^holiday\.jpg: not an image file"):
        load_image(path, name="holiday.jpg")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fmt=st.sampled_from(["JPEG", "PNG", "GIF", "BMP", "WEBP"]),
    cut=st.floats(0.0, 1.0),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=6),
)
def test_damaged_files_give_an_image_or_image_error_never_a_pillow_exception(fmt, cut, flips):
    buffer = io.BytesIO()
    smooth_picture(32, 24).save(buffer, fmt)
    data = bytearray(buffer.getvalue())
    for where, value in flips:
        data[int(where * (len(data) - 1))] = value
    data = data[: int(cut * len(data))] if cut < 0.95 else data
    try:
        image = load_image(bytes(data))
    except ImageError as error:
        assert str(error).startswith("the uploaded image: ")
    else:
        assert image.mode == "RGB"
        image.tobytes()  # fully loaded: no lazy decoding left to fail later


# --- other sources -------------------------------------------------------------------------------


def test_bytes_and_streams(tmp_path):
    buffer = io.BytesIO()
    solid(BLUE, (30, 20)).save(buffer, "PNG")
    data = buffer.getvalue()

    assert load_image(data).getpixel((5, 5)) == BLUE
    assert load_image(bytearray(data)).size == (30, 20)
    assert load_image(io.BytesIO(data)).getpixel((5, 5)) == BLUE

    class Pipe(io.RawIOBase):  # a stream that cannot seek, like a socket
        def __init__(self, payload: bytes):
            self._source = io.BytesIO(payload)

        def readable(self) -> bool:
            return True

        def readinto(self, target) -> int:
            chunk = self._source.read(len(target))
            target[: len(chunk)] = chunk
            return len(chunk)

    assert load_image(io.BufferedReader(Pipe(data))).getpixel((5, 5)) == BLUE

    path = tmp_path / "stream.png"
    path.write_text("not a png")
    with open(path, "rb") as stream, pytest.raises(ImageError, match=r"stream\.png"):
        load_image(stream)
    with pytest.raises(ImageError, match="^the uploaded image: file is empty"):
        load_image(b"")
    with pytest.raises(ImageError, match="^the uploaded image: not an image file"):
        load_image(b"GIF? no")


@pytest.mark.parametrize(
    ("pixels", "expected"),
    [
        (np.full((10, 12, 3), RED, np.uint8), RED),
        (np.full((10, 12), 90, np.uint8), (90, 90, 90)),
        (np.full((10, 12, 1), 90, np.uint8), (90, 90, 90)),
        (np.full((10, 12, 4), (*RED, 0), np.uint8), WHITE),
        (np.full((10, 12, 3), 65535, np.uint16), WHITE),
        (np.full((10, 12), 32768, np.uint16), (128, 128, 128)),
        (np.full((10, 12, 3), 0.5), (128, 128, 128)),
        (np.ones((10, 12), bool), WHITE),
    ],
    ids=["rgb", "grey", "grey1", "rgba-clear", "rgb16", "grey16", "float", "bool"],
)
def test_numpy_arrays(pixels, expected):
    image = load_image(pixels)
    assert image.mode == "RGB"
    assert image.size == (12, 10)
    assert_close(image.getpixel((6, 5)), expected, 1)


def test_non_contiguous_array_view():
    pixels = np.zeros((40, 40, 3), np.uint8)
    pixels[:, :, 0] = 200
    image = load_image(pixels[::2, ::2])
    assert image.size == (20, 20)
    assert image.getpixel((3, 3)) == (200, 0, 0)


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.full((10, 10, 3), 200.0), r"float pixels must lie in \[0, 1\]"),
        (np.full((10, 10, 3), np.nan), "NaN"),
        (np.zeros((10, 10, 2), np.uint8), r"shape"),
        (np.zeros((10, 10, 3), np.int64), "not supported"),
        (np.zeros((4, 10, 3), np.uint8), "4 px"),
        (np.zeros((10, 20000), np.uint8), "20000"),
    ],
)
def test_unusable_arrays(pixels, message):
    with pytest.raises(ImageError, match=f"^the uploaded image: .*{message}"):
        load_image(pixels)


def test_other_source_types_are_refused():
    with pytest.raises(ImageError, match="int"):
        load_image(42)  # type: ignore[arg-type]


# --- draft decoding ------------------------------------------------------------------------------


def test_draft_decodes_a_big_jpeg_at_a_reduced_scale_still_at_least_the_requested_size(tmp_path):
    path = tmp_path / "photo.jpg"
    smooth_picture(1024, 768).save(path, quality=90)
    assert load_image(path).size == (1024, 768)
    drafted = load_image(path, draft_size=224)
    assert drafted.size == (512, 384)  # 1/2 scale: 1/4 would leave 192 < 224 rows
    assert drafted.mode == "RGB"

    png = tmp_path / "photo.png"
    smooth_picture(1024, 768).save(png)
    assert load_image(png, draft_size=224).size == (1024, 768)  # draft is for JPEG only


def test_load_for_network_with_draft_matches_the_full_decode(tmp_path):
    path = tmp_path / "photo.jpg"
    smooth_picture(1024, 768).save(path, quality=90)
    fast = load_for_network(path, 224)
    full = to_network_input(load_image(path), 224)
    assert fast.shape == (224, 224, 3)
    assert fast.dtype == np.uint8
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 12


def phone_sized(path, orientation: int = 1) -> None:
    """A 4032 x 3024 JPEG whose red says x and green says y (as stored), with an EXIF orientation."""
    xx, yy = np.meshgrid(np.linspace(0, 255, 4032), np.linspace(0, 255, 3024))
    exif = Image.Exif()
    exif[274] = orientation
    Image.fromarray(np.stack([xx, yy, np.full_like(xx, 90)], -1).astype(np.uint8)).save(path, quality=90, exif=exif)


@pytest.mark.parametrize("orientation", [1, 6])  # 6: the camera was held upright, shown turned 90 degrees
def test_a_box_on_a_phone_photo_decodes_only_the_pixels_the_network_reads(tmp_path, orientation):
    path = tmp_path / "phone.jpg"
    phone_sized(path, orientation)
    full = load_image(path)  # as shown: EXIF orientation applied
    width, height = full.size
    box = (width // 4, height // 3, width // 4 + 1612, height // 3 + 1210)
    region = load_region(path, box, min_side=299)
    # A quarter-scale decode: 1612 x 1210 -> 403 x 303, still >= 299 on the shorter side (1/8 would not be).
    assert region.size == (403, 303)
    reference = crop_box(full, box).resize(region.size, Image.Resampling.BOX)
    assert np.abs(np.asarray(region, int) - np.asarray(reference, int)).mean() < 3  # the same part of the photo
    # A box smaller than the network's input is cut from the full-resolution image.
    small = (100, 200, 300, 350)
    assert np.array_equal(np.asarray(load_region(path, small, min_side=299)), np.asarray(crop_box(full, small)))


def test_load_for_network_raises_image_error(tmp_path):
    path = tmp_path / "bad.jpg"
    path.write_bytes(noisy_jpeg_bytes()[:500])
    with pytest.raises(ImageError, match=r"bad\.jpg"):
        load_for_network(path, 64)


# --- cropping ------------------------------------------------------------------------------------


@pytest.fixture
def gradient() -> Image.Image:
    """100 x 80 image where every pixel's colour encodes its position: (x, y, 0)."""
    xx, yy = np.meshgrid(np.arange(100), np.arange(80))
    return Image.fromarray(np.stack([xx, yy, np.zeros_like(xx)], -1).astype(np.uint8))


def test_no_box_returns_the_image_itself(gradient):
    assert crop_box(gradient, None) is gradient


def test_box_partly_outside_is_clamped(gradient):
    region = crop_box(gradient, (-10, -5, 30, 40))
    assert region.size == (30, 40)
    assert region.getpixel((0, 0)) == (0, 0, 0)
    region = crop_box(gradient, (90, 70, 150, 120))
    assert region.size == (10, 10)
    assert region.getpixel((0, 0)) == (90, 70, 0)


def test_float_box_is_widened_to_whole_pixels(gradient):
    region = crop_box(gradient, (10.7, 20.7, 30.2, 40.1))
    assert region.size == (21, 21)  # x 10..31, y 20..41
    assert region.getpixel((0, 0)) == (10, 20, 0)
    assert region.getpixel((20, 20)) == (30, 40, 0)


def test_swapped_box_is_normalised(gradient):
    assert np.array_equal(np.array(crop_box(gradient, (30, 40, 10, 20))), np.array(crop_box(gradient, (10, 20, 30, 40))))


def test_tiny_box_says_how_big_it_is(gradient):
    with pytest.raises(ImageError, match=r"^query\.jpg: the selected region is 3 x 5 px; select at least 8 x 8 px$"):
        crop_box(gradient, (10, 10, 13, 15), name="query.jpg")


def test_box_entirely_outside(gradient):
    with pytest.raises(ImageError, match=r"0 x 0 px \(the box lies outside the 100 x 80 px image\)"):
        crop_box(gradient, (200, 200, 300, 300))
    with pytest.raises(ImageError, match="outside"):
        crop_box(gradient, (-50, 10, -20, 40))


def test_box_that_is_not_four_numbers(gradient):
    with pytest.raises(ImageError, match="four numbers"):
        crop_box(gradient, (1, 2, 3))  # type: ignore[arg-type]
    with pytest.raises(ImageError, match="finite"):
        crop_box(gradient, (0, 0, float("nan"), 50))


# --- network input -------------------------------------------------------------------------------


def test_to_network_input_squashes_to_a_square_uint8_array():
    image = solid(RED, (120, 40))
    ImageDraw.Draw(image).rectangle((60, 0, 119, 39), fill=BLUE)
    pixels = to_network_input(image, 32)
    assert pixels.shape == (32, 32, 3)
    assert pixels.dtype == np.uint8
    assert pixels.flags["C_CONTIGUOUS"]
    assert pixels.flags["WRITEABLE"]
    assert tuple(pixels[16, 2]) == RED  # left half stays left: squashed, not cropped
    assert tuple(pixels[16, 29]) == BLUE


def test_to_network_input_accepts_other_modes():
    pixels = to_network_input(solid((0, 0, 0, 0), (20, 20), "RGBA"), 8)
    assert pixels.shape == (8, 8, 3)
    assert (pixels == 255).all()  # transparent flattened on white, as load_image does


def test_image_suffixes_are_lower_case_with_a_dot():
    assert {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"} == IMAGE_SUFFIXES
    assert all(suffix == suffix.lower() and suffix.startswith(".") for suffix in IMAGE_SUFFIXES)


# --- limits, by hand ---------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["max_pixels", "max_side", "min_side"])
def test_each_limit_must_be_at_least_one(field):
    with pytest.raises(ValueError, match=rf"^image limits must be positive: ImageLimits\(.*{field}=0"):
        ImageLimits(**{field: 0})
    ImageLimits(**{field: 1}, **({"min_side": 1} if field == "max_side" else {}))  # one is allowed


def test_the_smallest_side_may_equal_the_largest_but_not_exceed_it():
    assert ImageLimits(max_pixels=1, max_side=1, min_side=1).max_side == 1
    assert ImageLimits(min_side=50, max_side=50).min_side == 50
    with pytest.raises(ValueError, match=r"^min_side \(51\) is larger than max_side \(50\)$"):
        ImageLimits(min_side=51, max_side=50)


# --- the header alone (what runs before an upload is decoded) ---------------------------------


def test_check_header_gives_the_size_of_a_file_or_of_bytes_without_decoding(tmp_path):
    from cbir.images import check_header

    path = tmp_path / "liar.png"
    path.write_bytes(png_with_claimed_size(300, 200))  # the pixels could not be decoded
    assert check_header(path) == (300, 200)
    assert check_header(str(path)) == (300, 200)
    assert check_header(png_with_claimed_size(30, 20)) == (30, 20)


@pytest.mark.parametrize("size", [(10, 20000), (20000, 10)], ids=["tall", "wide"])
def test_check_header_refuses_a_tall_or_wide_header_naming_the_file_or_the_upload(tmp_path, size):
    from cbir.images import check_header

    path = tmp_path / "liar.png"
    path.write_bytes(png_with_claimed_size(*size))
    expected = f"image is {size[0]} x {size[1]} px; the largest side allowed is 16384 px$"
    with pytest.raises(ImageError, match=f"^{re.escape(str(path))}: {expected}"):
        check_header(path)
    with pytest.raises(ImageError, match=f"^the uploaded image: {expected}"):
        check_header(path.read_bytes())
    with pytest.raises(ImageError, match=f"^holiday.png: {expected}"):
        check_header(path, name="holiday.png")
    assert check_header(path, limits=ImageLimits(max_side=20000)) == size


def test_check_header_says_why_a_file_is_unusable(tmp_path):
    from cbir.images import check_header

    with pytest.raises(ImageError, match=f"^{re.escape(str(tmp_path / 'gone.png'))}: cannot open the file \\(No such file or directory\\)$"):
        check_header(tmp_path / "gone.png")
    with pytest.raises(ImageError, match="^the uploaded image: file is empty$"):
        check_header(b"")
    (tmp_path / "notes.png").write_text("hello, this is not a picture\n")
    with pytest.raises(ImageError, match=r"notes\.png: not an image file Pillow can read$"):
        check_header(tmp_path / "notes.png")
    with pytest.raises(ImageError, match=r"^the uploaded image: image data is truncated or corrupt \(a JPEG file whose header cannot be read\)$"):
        check_header(noisy_jpeg_bytes()[:20])
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 20 20\nshowpage\n"  # never handed to Ghostscript
    with pytest.raises(ImageError, match="^the uploaded image: not an image file Pillow can read$"):
        check_header(eps)
    with pytest.raises(ImageError, match=r"^the uploaded image: image is 5 x 30 px; images must be at least 8 x 8 px$"):
        check_header(png_with_claimed_size(5, 30))


def test_a_header_over_twice_pillows_limit_says_the_smaller_of_both_limits(tmp_path):
    from cbir.images import check_header

    data = png_with_claimed_size(16000, 16000)  # > 2 x Pillow's limit: refused in Image.open
    pillows = f"{Image.MAX_IMAGE_PIXELS:,}"
    with pytest.raises(ImageError, match=f"^the uploaded image: image is too large; at most {pillows} pixels are allowed$"):
        check_header(data, limits=ImageLimits(max_pixels=10**9))
    with pytest.raises(ImageError, match="^bomb.png: image is too large; at most 1,000 pixels are allowed$"):
        check_header(data, name="bomb.png", limits=ImageLimits(max_pixels=1000))
    with pytest.raises(ImageError, match=f"^the uploaded image: image is too large; at most {pillows} pixels are allowed$"):
        load_image(data, limits=ImageLimits(max_pixels=10**9))


def test_a_header_just_over_pillows_limit_is_refused_too_when_its_warning_is_an_error(tmp_path):
    import warnings

    data = png_with_claimed_size(10000, 10000)  # between Pillow's limit and twice it: a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageError, match="^the uploaded image: image is too large to decode safely \\(Image size"):
            load_image(data, limits=ImageLimits(max_pixels=10**9))


# --- wide grey, worked out by hand ---------------------------------------------------------------


def grey_levels(image: Image.Image) -> list[int]:
    """The first row's grey levels of a loaded (RGB) image, checking that it is grey."""
    pixels = np.asarray(load_image(image))[0]
    assert (pixels == pixels[:, :1]).all()
    return pixels[:, 0].tolist()


def row(values, dtype, width: int = 8) -> np.ndarray:
    """An 8-row image whose rows are `values`, padded to `width` with the first value."""
    values = list(values) + [values[0]] * (width - len(values))
    return np.tile(np.asarray(values, dtype), (8, 1))


def test_16_bit_grey_rounds_to_the_nearest_of_v_over_257():
    # 128 / 257 = 0.498 -> 0; 129 / 257 = 0.502 -> 1; 385 / 257 = 1.498 -> 1; 386 -> 2;
    # 65406 / 257 = 254.498 -> 254; 65535 -> 255.
    values = [0, 128, 129, 385, 386, 32768, 65406, 65535]
    expected = [0, 0, 1, 1, 2, 128, 254, 255]
    assert grey_levels(Image.fromarray(row(values, np.uint16))) == expected  # mode I;16
    assert grey_levels(Image.fromarray(row(values, np.int32))) == expected  # mode I
    assert grey_levels(row(values, np.uint16)) == expected  # a numpy array


def test_32_bit_grey_outside_the_16_bit_range_is_clipped_not_wrapped():
    image = Image.fromarray(row([-1000, 70000, 65535, -1, 0], np.int32))
    assert image.mode == "I"
    assert grey_levels(image)[:5] == [0, 255, 255, 0, 0]


def test_float_grey_in_0_1_is_scaled_to_255_and_anything_else_read_on_pillows_0_255_scale():
    def levels(values):
        image = Image.fromarray(row(values, np.float32))
        assert image.mode == "F"
        return grey_levels(image)[: len(values)]

    # In [0, 1] (1.0 included): x 255, rounded. 0.6 * 255 = 153 (not 0.6 * 256 = 153.6).
    assert levels([0.0, 0.6, 1.0, 0.5]) == [0, 153, 255, 128]
    # NaN and -inf are black and leave a [0, 1] image on its scale; +inf is white (255 on Pillow's scale).
    assert levels([0.6, np.nan, -np.inf]) == [153, 0, 0]
    assert levels([100.0, np.inf, np.nan, -np.inf]) == [100, 255, 0, 0]
    # Above 1: already on the 0-255 scale, clipped to it (a dark 0-2 image stays dark).
    assert levels([2.0, 1.0, 0.0]) == [2, 1, 0]
    assert levels([-5.0, 100.0, 300.0, 255.0]) == [0, 100, 255, 255]
    assert levels([-0.5, 0.5]) == [0, 128]


# --- numpy arrays, worked out by hand ------------------------------------------------------------


def test_float_arrays_in_0_1_are_scaled_by_255_and_a_hair_outside_is_clipped():
    tolerance = 1e-3  # rounding in the caller's arithmetic
    assert grey_levels(row([0.0, 0.6, 1.0, 0.5], np.float32))[:4] == [0, 153, 255, 128]
    assert grey_levels(row([-tolerance, 1.0 + tolerance, 0.6], np.float64))[:3] == [0, 255, 153]


@pytest.mark.parametrize(("low", "high"), [(0.0, 1.5), (-0.01, 1.0), (0.0, 1.0011)])
def test_float_arrays_beyond_the_tolerance_are_refused_with_their_range(low, high):
    with pytest.raises(ImageError, match=rf"^the uploaded image: float pixels must lie in \[0, 1\], these range from {low:g} to {high:g}$"):
        load_image(row([low, high], np.float64))


def test_a_boolean_array_is_black_and_white():
    assert grey_levels(row([False, True], bool))[:2] == [0, 255]


# --- regions of files ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("box", "size"),
    [
        # 800 x 800 JPEG, network input 100: the scale is the smallest that keeps the box's shorter
        # side >= 100 px. 400 px at 1/4 is exactly 100: 1/4; one pixel less would need 1/2.
        ((0, 0, 400, 400), (100, 100)),
        ((200, 0, 600, 800), (100, 200)),  # shorter side across: 400 -> 1/4
        ((0, 200, 800, 600), (200, 100)),  # shorter side down: 400 -> 1/4
        ((400, 400, 800, 800), (100, 100)),
        ((0, 0, 200, 800), (100, 400)),  # 200 -> 1/2
        ((100, 100, 180, 300), (80, 200)),  # under 100 px: the full-resolution pixels
    ],
)
def test_a_region_is_decoded_at_the_smallest_scale_that_keeps_its_shorter_side_for_the_network(tmp_path, box, size):
    path = tmp_path / "photo.jpg"
    smooth_picture(800, 800).save(path, quality=90)
    assert load_region(path, box, min_side=100).size == size


def test_a_region_of_no_width_says_how_big_a_box_must_be(tmp_path):
    path = tmp_path / "photo.jpg"
    smooth_picture(800, 800).save(path, quality=90)
    with pytest.raises(ImageError, match=r"photo\.jpg: the selected region is 0 x 40 px; select at least 8 x 8 px$"):
        load_region(path, (100, 100, 100, 140), min_side=100)


def test_a_region_of_a_file_cut_short_is_refused_under_the_callers_name(tmp_path):
    path = tmp_path / "upload_0x1f.tmp"
    data = noisy_jpeg_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header is whole: the pixels are cut
    with pytest.raises(ImageError, match=r"^holiday\.jpg: image data is truncated or corrupt"):
        load_region(path, (0, 0, 100, 100), min_side=50, name="holiday.jpg")


def test_a_region_obeys_the_callers_limits_and_name(tmp_path):
    path = tmp_path / "upload_0x1f.tmp"
    solid(RED, (5, 30)).save(path, "PNG")
    assert load_region(path, (0, 0, 5, 30), min_side=4, limits=ImageLimits(min_side=4)).size == (5, 30)
    with pytest.raises(ImageError, match=r"^holiday\.png: image is 5 x 30 px; images must be at least 8 x 8 px$"):
        load_region(path, (0, 0, 5, 30), min_side=4, name="holiday.png")
    liar = tmp_path / "liar.png"
    liar.write_bytes(png_with_claimed_size(20000, 10))
    with pytest.raises(ImageError, match=r"^holiday\.png: image is 20000 x 10 px; the largest side"):
        load_region(liar, (0, 0, 5, 5), min_side=4, name="holiday.png")


# --- network input ---------------------------------------------------------------------------------


def test_network_input_is_the_bilinear_average_worked_out_by_hand():
    # A step from 0 to 255 halfway, shrunk from 4 to 2 columns: the bilinear kernel, widened to two
    # source pixels, weighs the pixels at distance 0.5 by 0.75 and at 1.5 by 0.25 (the one at 2.5
    # is outside): 255 x 0.25 / 1.75 = 36.4 -> 36, and 255 - 36 = 219 on the other side.
    step = Image.fromarray(np.tile(np.array([0, 0, 255, 255], np.uint8), (4, 1))).convert("RGB")
    pixels = to_network_input(step, 2)
    assert pixels.dtype == np.uint8 and pixels.flags.c_contiguous
    assert pixels[:, :, 0].tolist() == [[36, 219], [36, 219]]


@pytest.mark.parametrize(("width", "height"), [(0, 10), (10, 0), (-1, -1)])
def test_a_network_input_of_no_pixels_is_refused(width, height):
    from cbir.images import resize_for_network

    with pytest.raises(ValueError, match=rf"^network input size must be positive, got {width} x {height}$"):
        resize_for_network(solid(RED), width, height)


def test_the_smallest_network_input_is_one_pixel():
    from cbir.images import resize_for_network

    assert resize_for_network(solid(RED), 1, 1).tolist() == [[list(RED)]]
    assert resize_for_network(solid(RED), 3, 1).shape == (1, 3, 3)
    assert resize_for_network(solid(RED), 1, 3).shape == (3, 1, 3)


def test_an_image_of_an_unusable_colour_mode_is_named_in_the_message():
    with pytest.raises(ImageError, match="^the image: colour mode La is not supported$"):
        to_network_input(Image.new("La", (10, 10)), 4)


def test_a_collection_photo_reaches_the_network_with_the_pixels_a_query_of_it_gets(tmp_path):
    # The search engine decodes a whole query file at the network's input size (JPEG draft) so a
    # collection photo used as a query matches its own row: batch extraction must do the same.
    from cbir.images import resize_for_network

    path = tmp_path / "photo.jpg"
    smooth_picture(1024, 768).save(path, quality=90)

    def shape(width: int, height: int) -> tuple[int, int]:  # as a recipe's network_shape
        return width // 4, height // 4

    query = load_image(path, draft_size=224)
    assert np.array_equal(load_for_network(path, 224, shape=shape), resize_for_network(query, *shape(*query.size)))
    assert load_for_network(path, 224, shape=shape).shape == (96, 128, 3)  # 512 x 384 at 1/2, then / 4


def test_load_for_network_obeys_the_callers_limits_and_name(tmp_path):
    path = tmp_path / "upload_0x1f.tmp"
    solid(RED, (5, 30)).save(path, "PNG")
    assert load_for_network(path, 4, limits=ImageLimits(min_side=4)).shape == (4, 4, 3)
    with pytest.raises(ImageError, match=r"^holiday/beach\.png: image is 5 x 30 px"):
        load_for_network(path, 4, name="holiday/beach.png")


# --- plain reasons -------------------------------------------------------------------------------


def test_a_truncated_file_names_pillows_detail_after_the_plain_reason(tmp_path):
    data = noisy_jpeg_bytes()
    with pytest.raises(ImageError, match=r"^cut\.jpg: image data is truncated or corrupt \(OSError: image file is truncated"):
        load_image(data[: len(data) // 2], name="cut.jpg")


def test_running_out_of_memory_while_decoding_is_said_plainly(tmp_path, monkeypatch):
    from PIL import ImageFile as PillowImageFile

    def no_memory(self):
        raise MemoryError

    path = tmp_path / "huge.png"
    solid(RED).save(path)
    monkeypatch.setattr(PillowImageFile.ImageFile, "load", no_memory)
    with pytest.raises(ImageError, match=r"^.*huge\.png: not enough memory to decode the image$"):
        load_image(path)


# --- every kind of source: its name in messages, the caller's limits and draft ---------------------


def test_a_pil_image_is_named_by_its_file_or_as_an_upload_and_obeys_the_limits(tmp_path):
    path = tmp_path / "tiny.png"
    solid(RED, (5, 30)).save(path)
    too_small = "image is 5 x 30 px; images must be at least 8 x 8 px$"
    with Image.open(path) as opened, pytest.raises(ImageError, match=f"^{re.escape(str(path))}: {too_small}"):
        load_image(opened)
    with Image.open(path) as opened, pytest.raises(ImageError, match=f"^holiday.png: {too_small}"):
        load_image(opened, name="holiday.png")
    with pytest.raises(ImageError, match=f"^the uploaded image: {too_small}"):
        load_image(solid(RED, (5, 30)))
    assert load_image(solid(RED, (5, 30)), limits=ImageLimits(min_side=4)).size == (5, 30)


def test_an_array_is_named_as_asked_and_obeys_the_limits():
    pixels = np.zeros((30, 5, 3), np.uint8)
    with pytest.raises(ImageError, match="^holiday.png: image is 5 x 30 px"):
        load_image(pixels, name="holiday.png")
    assert load_image(pixels, limits=ImageLimits(min_side=4)).size == (5, 30)


def jpeg_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    smooth_picture(width, height).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_bytes_and_streams_obey_the_name_the_limits_and_the_draft(tmp_path):
    data = jpeg_bytes(1024, 768)
    assert load_image(data, draft_size=224).size == (512, 384)
    assert load_image(memoryview(data), draft_size=224).size == (512, 384)
    assert load_image(io.BytesIO(data), draft_size=224).size == (512, 384)
    tiny = io.BytesIO()
    solid(RED, (5, 30)).save(tiny, "PNG")
    with pytest.raises(ImageError, match="^holiday.png: image is 5 x 30 px"):
        load_image(tiny.getvalue(), name="holiday.png")
    with pytest.raises(ImageError, match="^holiday.png: image is 5 x 30 px"):
        load_image(io.BytesIO(tiny.getvalue()), name="holiday.png")
    assert load_image(tiny.getvalue(), limits=ImageLimits(min_side=4)).size == (5, 30)
    assert load_image(io.BytesIO(tiny.getvalue()), limits=ImageLimits(min_side=4)).size == (5, 30)
    path = tmp_path / "tiny.png"
    path.write_bytes(tiny.getvalue())
    with open(path, "rb") as stream, pytest.raises(ImageError, match=f"^{re.escape(str(path))}: image is 5 x 30 px"):
        load_image(stream)  # a file's stream is named by its path
    with open(os.open(path, os.O_RDONLY), "rb") as stream, pytest.raises(ImageError, match="^the uploaded image: image is 5 x 30"):
        load_image(stream)  # opened from a descriptor: its name is a number


def test_anything_with_a_read_method_is_a_stream():
    buffer = io.BytesIO()
    solid(BLUE, (30, 20)).save(buffer, "PNG")

    class Reader:  # no seek, no seekable: a socket-like object
        def __init__(self, payload: bytes):
            self.payload = payload

        def read(self, size: int = -1) -> bytes:
            chunk, self.payload = (self.payload, b"") if size < 0 else (self.payload[:size], self.payload[size:])
            return chunk

    assert load_image(Reader(buffer.getvalue())).getpixel((5, 5)) == BLUE


def test_a_closed_or_text_stream_is_refused_with_a_reason(tmp_path):
    path = tmp_path / "photo.png"
    solid(BLUE, (30, 20)).save(path)
    closed = io.BytesIO(path.read_bytes())
    closed.close()
    with pytest.raises(ImageError, match=r"^the uploaded image: cannot read the data \(I/O operation on closed file\.?\)$"):
        load_image(closed)
    with open(path, encoding="latin-1") as text, pytest.raises(
        ImageError, match=f"^{re.escape(str(path))}: the stream is open in text mode; images must be read as bytes$"
    ):
        load_image(text)


def test_other_sources_are_refused_naming_their_type():
    with pytest.raises(ImageError, match="^the uploaded image: cannot read an image from a int$"):
        load_image(42)  # type: ignore[arg-type]
    with pytest.raises(ImageError, match="^holiday.png: cannot read an image from a list$"):
        load_image([1, 2], name="holiday.png")  # type: ignore[arg-type]


def test_a_file_that_cannot_be_opened_says_why(tmp_path, monkeypatch):
    import cbir.images

    with pytest.raises(ImageError, match=f"^{re.escape(str(tmp_path / 'gone.jpg'))}: file not found$"):
        load_image(tmp_path / "gone.jpg")
    with pytest.raises(ImageError, match=f"^{re.escape(str(tmp_path))}: is a folder, not an image file$"):
        load_image(tmp_path)
    long_name = tmp_path / ("x" * 300 + ".jpg")
    with pytest.raises(ImageError, match=r"x\.jpg: cannot open the file \(File name too long\)$"):
        load_image(long_name)

    def refused(path, mode="r"):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cbir.images, "open", refused, raising=False)  # root reads any file: pretend
    with pytest.raises(ImageError, match=r"^secret\.jpg: cannot read the file \(permission denied\)$"):
        load_image(tmp_path / "secret.jpg", name="secret.jpg")


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ((41, 30), "image is 41 x 30 px; the largest side allowed is 40 px"),
        ((30, 41), "image is 30 x 41 px; the largest side allowed is 40 px"),
        ((40, 31), "image is 40 x 31 px (1,240 pixels); at most 1,200 pixels are allowed"),
        ((7, 10), "image is 7 x 10 px; images must be at least 8 x 8 px"),
        ((10, 7), "image is 10 x 7 px; images must be at least 8 x 8 px"),
    ],
)
def test_sizes_are_refused_one_pixel_past_each_limit(size, message):
    limits = ImageLimits(max_pixels=1200, max_side=40, min_side=8)
    for allowed in ((40, 30), (30, 40), (8, 8)):
        assert load_image(solid(RED, allowed), limits=limits).size == allowed
    with pytest.raises(ImageError, match=f"^the uploaded image: {re.escape(message)}$"):
        load_image(solid(RED, size), limits=limits)


def test_an_rgb_png_with_a_transparent_colour_shows_it_white(tmp_path):
    picture = solid(BLUE, (20, 20))
    ImageDraw.Draw(picture).rectangle((0, 0, 9, 19), fill=RED)
    path = tmp_path / "keyed.png"
    picture.save(path, transparency=RED)
    loaded = load_image(path)
    assert loaded.getpixel((5, 5)) == WHITE and loaded.getpixel((15, 5)) == BLUE


def test_a_damaged_exif_block_keeps_the_photo_unrotated(tmp_path, monkeypatch, caplog):
    from PIL import ImageOps

    def broken(image):
        raise SyntaxError("not a TIFF file")

    path = tmp_path / "photo.jpg"
    solid(BLUE, (40, 20)).save(path)
    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    assert load_image(path).size == (40, 20)


# --- boxes at the image's edges --------------------------------------------------------------------

OUTSIDE = " (the box lies outside the 100 x 80 px image)"


@pytest.mark.parametrize(
    ("box", "region", "where"),
    [
        ((-20, 10, 0, 30), "0 x 20", OUTSIDE),  # ends at the left edge
        ((-20, 10, 1, 30), "1 x 20", ""),  # one column inside
        ((10, -20, 30, 0), "20 x 0", OUTSIDE),  # ends at the top edge
        ((10, -20, 30, 1), "20 x 1", ""),
        ((100, 10, 120, 30), "0 x 20", OUTSIDE),  # starts at the right edge
        ((99, 10, 120, 30), "1 x 20", ""),
        ((10, 80, 30, 100), "20 x 0", OUTSIDE),  # starts at the bottom edge
        ((10, 79, 30, 100), "20 x 1", ""),
        ((-40, -40, -20, -20), "0 x 0", OUTSIDE),
    ],
)
def test_a_box_at_an_edge_says_its_size_and_whether_it_misses_the_image(gradient, box, region, where):
    with pytest.raises(ImageError, match=f"^the image: the selected region is {region} px{re.escape(where)}; select at least 8 x 8 px$"):
        crop_box(gradient, box)


def test_a_box_of_exactly_the_smallest_side_is_enough(gradient):
    assert crop_box(gradient, (0, 0, 8, 8)).size == (8, 8)
    assert crop_box(gradient, (92, 72, 100, 80)).size == (8, 8)
    for box in ((0, 0, 7, 8), (0, 0, 8, 7)):
        with pytest.raises(ImageError, match="select at least 8 x 8 px"):
            crop_box(gradient, box)
