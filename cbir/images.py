"""Turning whatever the user or a collection hands us into RGB pixels the networks can use.

Every image goes through `load_image`: files, uploaded bytes, streams, PIL images and numpy arrays
all come out as a fully loaded RGB `PIL.Image.Image`, or fail with one `ImageError` whose message
names the file and says why in plain words. Batch extraction calls `load_for_network` per file and
records that message as the reason the file was skipped; the app shows it to the user.

Only numpy and Pillow are imported here: the module is used by the app before any network exists.
Nothing here touches Pillow's global settings (`ImageFile.LOAD_TRUNCATED_IMAGES`,
`Image.MAX_IMAGE_PIXELS`) because extraction decodes in worker threads and because a truncated photo
must be reported, not silently padded with grey.
"""

from __future__ import annotations

import io
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cbir.errors import CbirError

logger = logging.getLogger(__name__)

# Lower-case suffixes that count as images when a folder is scanned for a collection.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})

UPLOAD_NAME = "the uploaded image"

# Formats Pillow may try. An allow-list keeps uploads away from decoders we never need, EPS above
# all, whose plugin hands the file to Ghostscript. MPO is how Pillow opens many phone JPEGs.
ALLOWED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "DIB", "TIFF", "PPM", "AVIF")
JPEG_FORMATS = frozenset({"JPEG", "MPO"})

WHITE = (255, 255, 255)

# Grey modes with more than 8 bits per pixel, which Pillow's own convert("RGB") would clip rather than
# scale (a 16-bit grey of 65535 must become 255, not saturate everything above 255).
_WIDE_GREY_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})

# Float arrays a hair outside [0, 1] (rounding in the caller's arithmetic) are clipped, not refused.
_FLOAT_TOLERANCE = 1e-3

ImageSource = Union[str, os.PathLike[str], bytes, bytearray, memoryview, IO[bytes], Image.Image, np.ndarray]
Box = tuple[float, float, float, float]


class ImageError(CbirError, ValueError):
    """One clear error type for any image we cannot use; the message always names the file (or 'the uploaded image')."""


@dataclass(frozen=True)
class ImageLimits:
    """Sizes we accept. All are checked from the header, before any pixel is decoded."""

    max_pixels: int = 64_000_000  # decompression-bomb guard: ~200 MB as RGB
    max_side: int = 16_384
    min_side: int = 8  # anything smaller carries too little to describe (also applies to crops)

    def __post_init__(self) -> None:
        if self.max_pixels < 1 or self.max_side < 1 or self.min_side < 1:
            raise ValueError(f"image limits must be positive: {self}")
        if self.min_side > self.max_side:
            raise ValueError(f"min_side ({self.min_side}) is larger than max_side ({self.max_side})")


DEFAULT_LIMITS = ImageLimits()


def load_image(
    source: ImageSource,
    *,
    name: str | None = None,
    limits: ImageLimits = DEFAULT_LIMITS,
    draft_size: int | None = None,
) -> Image.Image:
    """A fully loaded RGB image from a path, bytes, a binary stream, a PIL image or a numpy array.

    Animated files give their first frame, EXIF orientation is applied, transparency is flattened on
    white, and 16-bit / float grey is scaled to 8 bits. `name` is what error messages call the
    image (default: the path, the stream's name, or 'the uploaded image').

    `draft_size`: let a JPEG decode at a reduced DCT scale (1/2, 1/4, 1/8) that still leaves each
    side >= draft_size. Ignored for other formats, and for PIL images (we do not alter the caller's).

    Raises ImageError for anything that cannot be used.
    """
    if isinstance(source, Image.Image):
        label = name or getattr(source, "filename", "") or UPLOAD_NAME
        return _decode(source, label, limits, draft_size=None)
    if isinstance(source, np.ndarray):
        return _from_array(source, name or UPLOAD_NAME, limits)
    if isinstance(source, (str, os.PathLike)):
        return _load_file(Path(source), name or os.fspath(source), limits, draft_size)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _load_stream(io.BytesIO(bytes(source)), name or UPLOAD_NAME, limits, draft_size)
    if hasattr(source, "read"):
        stream_name = getattr(source, "name", None)
        label = name or (stream_name if isinstance(stream_name, str) else UPLOAD_NAME)
        return _load_stream(source, label, limits, draft_size)
    raise ImageError(f"{name or UPLOAD_NAME}: cannot read an image from a {type(source).__name__}")


def check_header(source: str | os.PathLike[str] | bytes, *, name: str | None = None, limits: ImageLimits = DEFAULT_LIMITS) -> tuple[int, int]:
    """(width, height) read from the header alone, after checking them against `limits`.

    Nothing is decoded: this is what runs before anyone (Gradio included) decodes an upload, so a
    20 KB file that claims 13,000 x 13,000 pixels costs nothing. Raises ImageError.
    """
    label = name or (UPLOAD_NAME if isinstance(source, bytes) else os.fspath(source))
    try:
        stream = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    except OSError as error:
        raise ImageError(f"{label}: cannot open the file ({error.strerror or error})") from None
    with stream:
        head = stream.read(16)  # pragma: no mutate (the signatures need at most 16 bytes: reading more finds the same)
        stream.seek(0)
        if not head:
            raise ImageError(f"{label}: file is empty")
        try:
            with Image.open(stream, formats=_allowed_formats()) as image:
                size = image.size
        except Image.DecompressionBombError:
            raise _bomb(label, limits) from None
        except Exception as error:  # noqa: BLE001 - see _explain
            raise _explain(error, label, head) from error
    _check_size(size, label, limits)
    return size


def load_region(
    path: str | os.PathLike[str],
    box: Box,
    *,
    min_side: int,
    name: str | None = None,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> Image.Image:
    """The part of an image file inside `box` (pixels of the image as shown: EXIF orientation
    applied), decoded no larger than needed: a JPEG decodes at the smallest DCT scale (1/2, 1/4,
    1/8) that keeps the box's shorter side >= `min_side`, the network's input. A box drawn on a
    phone photo (4032 x 3024) then costs a quarter of the full decode, which alone took longer
    than the forward pass. Raises ImageError."""
    width, height = check_header(path, name=name, limits=limits)
    longest = max(width, height)  # the orientation is not known before decoding; this bounds the box
    left, top, right, bottom = (min(max(value, 0.0), longest) for value in box)
    shorter = min(abs(right - left), abs(bottom - top))
    draft = math.ceil(min(width, height) * min_side / shorter) if shorter > min_side else None
    picture = load_image(path, name=name, limits=limits, draft_size=draft)
    scale = max(picture.size) / longest  # the same for both sides, whichever way the photo is turned
    if scale != 1:
        box = (box[0] * scale, box[1] * scale, box[2] * scale, box[3] * scale)
    return crop_box(picture, box, limits=limits, name=name or os.fspath(path))


def _bomb(label: str, limits: ImageLimits) -> ImageError:
    """Pillow refuses in Image.open what claims over twice its MAX_IMAGE_PIXELS, before the size is
    known to us: say what is allowed, in the same words as our own check."""
    allowed = min(limits.max_pixels, Image.MAX_IMAGE_PIXELS or limits.max_pixels)
    return ImageError(f"{label}: image is too large; at most {allowed:,} pixels are allowed")


def crop_box(
    image: Image.Image,
    box: Box | None,
    *,
    limits: ImageLimits = DEFAULT_LIMITS,
    name: str = "the image",
) -> Image.Image:
    """The part of `image` inside box = (x0, y0, x1, y1), in pixel coordinates; None: `image` itself.

    Float coordinates (as in the Oxford/Paris ground truth) are widened to whole pixels (floor for
    the start, ceil for the end) so the region never loses part of the object; a swapped box is
    put right way round and the box is clamped to the image.
    """
    if box is None:
        return image
    try:
        x0, y0, x1, y1 = (float(value) for value in box)
    except (TypeError, ValueError):
        raise ImageError(f"{name}: a box is four numbers (x0, y0, x1, y1), not {box!r}") from None
    if not all(math.isfinite(value) for value in (x0, y0, x1, y1)):
        raise ImageError(f"{name}: the box {box!r} has a coordinate that is not a finite number")

    width, height = image.size
    box_left, box_right = sorted((x0, x1))
    box_top, box_bottom = sorted((y0, y1))
    left = min(max(math.floor(box_left), 0), width)
    top = min(max(math.floor(box_top), 0), height)
    right = max(min(math.ceil(box_right), width), 0)
    bottom = max(min(math.ceil(box_bottom), height), 0)

    region_width, region_height = right - left, bottom - top
    if region_width < limits.min_side or region_height < limits.min_side:
        outside = box_right <= 0 or box_bottom <= 0 or box_left >= width or box_top >= height
        where = f" (the box lies outside the {width} x {height} px image)" if outside else ""
        raise ImageError(
            f"{name}: the selected region is {region_width} x {region_height} px{where}; "
            f"select at least {limits.min_side} x {limits.min_side} px"
        )
    return image.crop((left, top, right, bottom))


def to_network_input(image: Image.Image, size: int) -> np.ndarray:
    """(size, size, 3) uint8 pixels: the image squashed to a square, as Keras applications and the
    original study feed their networks (the aspect ratio is not kept)."""
    return resize_for_network(image, size, size)


def resize_for_network(image: Image.Image, width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8 pixels, C-contiguous.

    BILINEAR, because Pillow widens the bilinear kernel when shrinking, so it averages over every
    source pixel (no aliasing, unlike Keras' default 'nearest'). No `reducing_gap`: the same image
    then gives the same pixels whichever way it got here; JPEG draft decoding already does the
    cheap coarse shrinking for collection photos.
    """
    if width < 1 or height < 1:
        raise ValueError(f"network input size must be positive, got {width} x {height}")
    rgb = _to_rgb(image, getattr(image, "filename", "") or "the image")
    resized = rgb.resize((width, height), Image.Resampling.BILINEAR)
    return np.ascontiguousarray(np.array(resized, dtype=np.uint8))


NetworkShape = Callable[[int, int], tuple[int, int]]  # image (width, height) -> network (width, height)


def load_for_network(
    path: ImageSource,
    size: int,
    *,
    shape: NetworkShape | None = None,
    limits: ImageLimits = DEFAULT_LIMITS,
    name: str | None = None,
) -> np.ndarray:
    """What batch extraction calls for each collection file: decode (JPEGs at a reduced scale that is
    still >= size on each side) and resize to the network's input: `shape(width, height)` (a
    recipe's `network_shape`), or a size x size square. Raises ImageError (naming `name` if given)."""
    image = load_image(path, name=name, limits=limits, draft_size=size)
    width, height = shape(*image.size) if shape else (size, size)
    return resize_for_network(image, width, height)


# --- reading --------------------------------------------------------------------------------------


def _load_file(path: Path, label: str, limits: ImageLimits, draft_size: int | None) -> Image.Image:
    # We open the file ourselves so the handle is closed deterministically (extraction runs many
    # threads) and so "missing", "folder" and "no permission" get their own plain messages.
    try:
        stream = open(path, "rb")
    except FileNotFoundError:
        raise ImageError(f"{label}: file not found") from None
    except IsADirectoryError:
        raise ImageError(f"{label}: is a folder, not an image file") from None
    except PermissionError:
        raise ImageError(f"{label}: cannot read the file (permission denied)") from None
    except OSError as error:
        raise ImageError(f"{label}: cannot open the file ({error.strerror or error})") from None
    with stream:
        return _load_stream(stream, label, limits, draft_size)


def _load_stream(stream: IO[bytes], label: str, limits: ImageLimits, draft_size: int | None) -> Image.Image:
    try:
        stream = _seekable(stream)
        start = stream.tell()
        head = stream.read(16)  # pragma: no mutate (the signatures need at most 16 bytes: reading more finds the same)
        stream.seek(start)
    except (OSError, ValueError) as error:
        raise ImageError(f"{label}: cannot read the data ({error})") from None
    if isinstance(head, str):
        raise ImageError(f"{label}: the stream is open in text mode; images must be read as bytes")
    if not head:
        raise ImageError(f"{label}: file is empty")
    try:
        with Image.open(stream, formats=_allowed_formats()) as image:
            return _decode(image, label, limits, draft_size)
    except ImageError:
        raise
    except Image.DecompressionBombError:  # Pillow's own guard refused it in Image.open
        raise _bomb(label, limits) from None
    except Exception as error:  # noqa: BLE001 - see _explain: malformed files make Pillow raise almost anything
        raise _explain(error, label, head) from error


def _seekable(stream: IO[bytes]) -> IO[bytes]:
    """Pillow needs to seek; a pipe or network stream is read into memory first."""
    seekable = getattr(stream, "seekable", None)
    if callable(seekable) and seekable():
        return stream
    return io.BytesIO(stream.read())


def _allowed_formats() -> tuple[str, ...]:
    # Image.open raises KeyError for a format it has no plugin for (AVIF needs libavif), so ask
    # Pillow which of ours it has. Image.init() only registers Pillow's plugins, once.
    Image.init()
    return tuple(fmt for fmt in ALLOWED_FORMATS if fmt in Image.OPEN)


def _decode(image: Image.Image, label: str, limits: ImageLimits, draft_size: int | None) -> Image.Image:
    """Check the size the header claims, then decode the first frame, orient it, and make it RGB."""
    try:
        _check_size(image.size, label, limits)  # Image.open only read the header: nothing decoded yet
        if draft_size is not None and image.format in JPEG_FORMATS:
            image.draft("RGB", (draft_size, draft_size))
        image.load()
        upright = _apply_exif_orientation(image, label)
        return _to_rgb(upright, label)
    except ImageError:
        raise
    except Exception as error:  # noqa: BLE001 - see _explain
        raise _explain(error, label, head=b"") from error


def _apply_exif_orientation(image: Image.Image, label: str) -> Image.Image:
    # A damaged EXIF block does not spoil the pixels: keep the photo unrotated rather than lose it.
    try:
        return ImageOps.exif_transpose(image)
    except Exception as error:  # noqa: BLE001 - EXIF parsing fails in many ways on odd files
        logger.warning("%s: EXIF orientation ignored (%s: %s)", label, type(error).__name__, error)  # pragma: no mutate (a log line)
        return image.copy()


def _check_size(size: tuple[int, int], label: str, limits: ImageLimits) -> None:
    width, height = size
    if width > limits.max_side or height > limits.max_side:
        raise ImageError(
            f"{label}: image is {width} x {height} px; the largest side allowed is {limits.max_side} px"
        )
    if width * height > limits.max_pixels:
        raise ImageError(
            f"{label}: image is {width} x {height} px ({width * height:,} pixels); "
            f"at most {limits.max_pixels:,} pixels are allowed"
        )
    if width < limits.min_side or height < limits.min_side:
        raise ImageError(
            f"{label}: image is {width} x {height} px; images must be at least "
            f"{limits.min_side} x {limits.min_side} px"
        )


def _explain(error: BaseException, label: str, head: bytes) -> ImageError:
    """A Pillow failure in plain words. Fuzzing has shown broken files make Pillow's plugins raise
    OSError, SyntaxError, ValueError, struct.error, IndexError, EOFError and more, so every failure
    while decoding comes through here; the plain reason comes first, Pillow's detail after."""
    detail = f"{type(error).__name__}: {error}"
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return ImageError(f"{label}: image is too large to decode safely ({error})")
    if isinstance(error, UnidentifiedImageError):
        recognised = _format_from_signature(head)
        if recognised:
            return ImageError(f"{label}: image data is truncated or corrupt (a {recognised} file whose header cannot be read)")
        return ImageError(f"{label}: not an image file Pillow can read")
    if isinstance(error, MemoryError):
        return ImageError(f"{label}: not enough memory to decode the image")
    return ImageError(f"{label}: image data is truncated or corrupt ({detail})")


def _format_from_signature(head: bytes) -> str | None:
    """Which allowed format's magic bytes `head` starts with, if any (Pillow's own checks)."""
    if not head:
        return None
    for fmt in _allowed_formats():
        accept = Image.OPEN[fmt][1]
        try:
            if accept is not None and accept(head) is True:
                return fmt
        except Exception:  # noqa: BLE001 - a signature check on odd bytes must not hide the real error
            continue  # pragma: no mutate (no allowed format's check raises on 16 bytes: `break` ends the same)
    return None


# --- pixels ---------------------------------------------------------------------------------------


def _to_rgb(image: Image.Image, label: str) -> Image.Image:
    """Any Pillow mode -> RGB: transparency flattened on white, wide grey scaled to 8 bits."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in _WIDE_GREY_MODES:
        return Image.fromarray(_wide_grey_to_uint8(np.asarray(image), mode)).convert("RGB")
    try:
        if image.has_transparency_data:
            # White, not black: product photos and logos with a transparent background are drawn
            # to be seen on white, and black would dominate their descriptor.
            return _flatten_on_white(image.convert("RGBA"))
        return image.convert("RGB")
    except ValueError:  # Pillow: "conversion from La to RGB not supported" and the like
        raise ImageError(f"{label}: colour mode {mode} is not supported") from None


def _flatten_on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, WHITE + (255,))
    background.alpha_composite(rgba)
    return background.convert("RGB")


def _wide_grey_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    if mode == "F":
        # Float grey in files has no fixed range: [0, 1] is scaled up; anything larger is taken
        # on Pillow's 0-255 scale, as Pillow's own F -> L conversion does.
        grey = np.nan_to_num(values.astype(np.float32, copy=False), nan=0.0, posinf=255.0, neginf=0.0)
        scale = 255.0 if grey.size and float(grey.max()) <= 1.0 else 1.0
        return np.rint(np.clip(grey * scale, 0.0, 255.0)).astype(np.uint8)
    # 16-bit grey (I;16*) and 32-bit int (I, how 16-bit sources often arrive) on the 16-bit scale.
    return _uint16_to_uint8(np.clip(values, 0, 65535))


def _uint16_to_uint8(values: np.ndarray) -> np.ndarray:
    # Round to nearest of v / 257 in integers (257 is odd, so there are no ties): 65535 -> 255.
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _from_array(array: np.ndarray, label: str, limits: ImageLimits) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"{label}: expected pixels of shape (H, W), (H, W, 3) or (H, W, 4), got {array.shape}")
    height, width = array.shape[:2]
    _check_size((width, height), label, limits)
    pixels = np.ascontiguousarray(_array_to_uint8(array, label))
    return _to_rgb(Image.fromarray(pixels), label)  # uint8 (H,W)/(H,W,3)/(H,W,4): L/RGB/RGBA


def _array_to_uint8(array: np.ndarray, label: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return _uint16_to_uint8(array)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise ImageError(f"{label}: the pixel array contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < -_FLOAT_TOLERANCE or high > 1.0 + _FLOAT_TOLERANCE:
            # Most likely 0-255 values in a float array; clipping would make it silently white.
            raise ImageError(
                f"{label}: float pixels must lie in [0, 1], these range from {low:g} to {high:g}"
            )
        return np.rint(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise ImageError(f"{label}: pixels of type {array.dtype} are not supported; use uint8, uint16 or float in [0, 1]")


__all__ = [
    "DEFAULT_LIMITS",
    "IMAGE_SUFFIXES",
    "ImageError",
    "ImageLimits",
    "crop_box",
    "load_for_network",
    "load_image",
    "to_network_input",
]
