"""An upload's header checked against the app's limits before Gradio decodes it."""

from __future__ import annotations

import base64

import gradio as gr
from PIL import Image, UnidentifiedImageError

from cbir.errors import CbirError
from cbir.images import DEFAULT_LIMITS, check_header
from cbir_ui.errors import shown


def guarded_upload(component: gr.ImageEditor | gr.Image) -> gr.ImageEditor | gr.Image:
    """Check an upload's header against the app's limits before Gradio decodes it, and turn an
    unreadable upload into a message (Gradio's own would say only "Error").

    Gradio decodes the editor's images in the component's preprocess, before our handler runs: a
    20 KB PNG claiming 13,000 x 13,000 pixels would cost gigabytes there. Wrapping this one
    component's preprocess (not subclassing: a component subclass makes Gradio write a .pyi file
    beside this module) puts `check_header` first.
    """
    decode = component.preprocess

    def preprocess(payload):
        for part in _uploaded_parts(payload):
            try:
                check_header(part, name="the uploaded image", limits=DEFAULT_LIMITS)
            except CbirError as error:
                raise shown(error) from None
        try:
            return decode(payload)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as error:
            raise gr.Error(f"The uploaded file is not an image this app can read ({type(error).__name__}).") from None

    component.preprocess = preprocess
    return component


def _uploaded_parts(payload) -> list:
    """The files (paths) or blobs (bytes) of an upload: an image's file, or an editor's background,
    layers and composite."""
    if payload is None:
        return []
    if getattr(payload, "id", None) is not None:
        return []  # blobs Gradio already holds were checked when they arrived as files
    if not hasattr(payload, "background"):  # a plain image: one file, or (through the API) a data URL
        url = getattr(payload, "url", None) or ""
        if not getattr(payload, "path", None) and url.startswith("data:"):
            try:
                return [base64.b64decode(url.split(",", 1)[1], validate=False)]
            except (IndexError, ValueError):
                raise gr.Error("The uploaded image is not a valid data URL.") from None
        return [payload.path] if getattr(payload, "path", None) else []
    parts = [payload.background, *(payload.layers or []), payload.composite]
    found = []
    for part in parts:
        if part is None:
            continue
        found.append(part if isinstance(part, bytes) else part.path)
    return found
