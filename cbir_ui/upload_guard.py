"""Every image a visitor sends, checked from its header against the app's limits before anything
decodes it, whichever way it came: a file, a data URL, or a blob sent earlier to the editor."""

from __future__ import annotations

import base64
import binascii
import logging
import mimetypes
import threading

import gradio as gr
from gradio import processing_utils
from PIL import Image, UnidentifiedImageError

from cbir.errors import CbirError
from cbir.images import DEFAULT_LIMITS, UPLOAD_NAME, check_header
from cbir_ui.errors import shown, visitor_error

logger = logging.getLogger(__name__)

# Blobs the editor keeps (Gradio keeps every canvas a client sends until a search uses it, each up
# to the upload size limit): the oldest go first past this many canvases.
MAX_EDITOR_CANVASES = 16
# Layers one canvas may have (Gradio would lengthen its list to any index a client names).
MAX_EDITOR_LAYERS = 8

# What Pillow raises for a file whose header passed but whose data is broken (see cbir.images._explain).
DECODING_ERRORS = (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError)


def guarded_upload(component: gr.ImageEditor | gr.Image) -> gr.ImageEditor | gr.Image:
    """`component` with `check_header` in front of the one place it decodes what was sent.

    The query photo (a gr.Image of type "filepath") is not decoded by Gradio at all: its preprocess
    is replaced by one that checks the header and hands on the file as sent (a data URL's bytes are
    written to Gradio's cache as they are), so 16-bit, palette, CMYK and transparent photos reach
    `cbir.images`, whose loader reads them correctly, and not Gradio's RGB conversion.

    The editor (kept for `/search`) decodes in `convert_and_format_image`, for the files of a
    request and for the blobs sent earlier to its `accept_blobs` alike: the check goes in front of
    that method; the blobs it keeps meanwhile are bounded in number and layers.

    Instance attributes, not a subclass: a component subclass makes Gradio write a .pyi file beside
    this module.
    """
    if isinstance(component, gr.ImageEditor):
        _guard_editor(component)
    elif isinstance(component, gr.Image):
        if component.type != "filepath":
            raise ValueError("the guarded query photo must be a gr.Image(type='filepath')")
        component.preprocess = lambda payload: _query_file(component, payload)
    else:
        raise TypeError(f"no guard for a {type(component).__name__}")
    return component


def _checked(source: str | bytes) -> None:
    """The header check, as the page says it."""
    try:
        check_header(source, name=UPLOAD_NAME, limits=DEFAULT_LIMITS)
    except CbirError as error:
        raise shown(error) from None


def _query_file(component: gr.Image, payload) -> str | None:
    """The query photo's file, checked, as sent: no decoding, no conversion."""
    if payload is None:
        return None
    url = payload.url or ""
    if not payload.path and url.startswith("data:"):
        head, _, encoded = url.partition(",")
        try:
            data = base64.b64decode(encoded, validate=False)
        except (binascii.Error, ValueError):
            raise visitor_error("The uploaded image is not a valid data URL.") from None
        _checked(data)
        suffix = mimetypes.guess_extension(head[len("data:"):].split(";")[0]) or ".img"
        return processing_utils.save_bytes_to_cache(data, "query" + suffix, component.GRADIO_CACHE)
    if not payload.path:
        raise visitor_error("The uploaded image has no file.")
    _checked(payload.path)
    return str(payload.path)


def _guard_editor(editor: gr.ImageEditor) -> None:
    decode = editor.convert_and_format_image
    preprocess = editor.preprocess

    def checked_decode(file, flatten_on_white: bool = False):
        if file is not None:
            _checked(bytes(file) if isinstance(file, (bytes, bytearray, memoryview)) else file.path)
        return decode(file, flatten_on_white)

    def checked_preprocess(payload):
        try:
            return preprocess(payload)
        except gr.Error:  # (a ValueError too) already the page's sentence
            raise
        except DECODING_ERRORS as error:
            raise visitor_error(f"The uploaded file is not an image this app can read ({type(error).__name__}).") from None
        finally:
            if payload is not None and payload.id is not None:  # refused or not, a blob is used once
                editor.blob_storage.pop(payload.id, None)

    accept = editor.accept_blobs
    storing = threading.Lock()

    def bounded_accept(data):
        index = data.data.get("index")
        numbered = data.data.get("type") == "layer" and index not in (None, "null", "")
        if numbered and not 0 <= _whole(index) < MAX_EDITOR_LAYERS:
            logger.info("refused: an editor layer numbered %.20r (at most %d layers)", index, MAX_EDITOR_LAYERS)
            return
        with storing:
            accept(data)
            while len(editor.blob_storage) > MAX_EDITOR_CANVASES:
                editor.blob_storage.pop(next(iter(editor.blob_storage)))

    bounded_accept._is_server_fn = True  # what gradio.components.base.server marks: reachable by clients
    editor.convert_and_format_image = checked_decode
    editor.preprocess = checked_preprocess
    editor.accept_blobs = bounded_accept


def _whole(text) -> int:
    """A layer number as a client wrote it; -1 for anything that is not one."""
    try:
        return int(text)
    except (TypeError, ValueError):
        return -1
