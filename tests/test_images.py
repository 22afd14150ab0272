"""cbir.images: every way an image arrives, every mode, every way it can be unusable.

All images are drawn here with Pillow/numpy, in tmp_path or in memory.
"""

from __future__ import annotations

import io
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
