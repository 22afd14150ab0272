"""cbir_ui.upload_guard: every image the page's components would decode passes the header check
first, whichever way it came (a file, a blob sent earlier to the editor, a data URL), and the query
photo reaches the search as the bytes the visitor sent (no conversion by the component)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from gradio.components.image_editor import AcceptBlobs, EditorData
from gradio.data_classes import FileData, ImageData
from PIL import Image

from cbir.search import SearchEngine


def page_components(tmp_path: Path) -> tuple[gr.Image, gr.ImageEditor]:
    """The query photo and the API's editor, as the page builds them."""
    from cbir_ui.page import build_ui

    demo = build_ui(SearchEngine(tmp_path / "empty"), tmp_path / "empty")
    blocks = list(demo.blocks.values())
    photo = next(block for block in blocks if getattr(block, "elem_id", None) == "query-image")
    editor = next(block for block in blocks if isinstance(block, gr.ImageEditor))
    return photo, editor


def png_bytes(picture: Image.Image) -> bytes:
    out = io.BytesIO()
    picture.save(out, "PNG")
    return out.getvalue()


def claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims width x height pixels (one bit each, all zero: it compresses
    to almost nothing)."""
    return png_bytes(Image.new("1", (width, height)))


def grey_16_bit() -> Image.Image:
    ramp = np.linspace(0, 40_000, 64 * 48, dtype=np.uint16).reshape(48, 64)
    return Image.fromarray(ramp)  # mode I;16: Gradio's RGB conversion clips every value above 255


def transparent() -> Image.Image:
    rgba = np.zeros((48, 64, 4), np.uint8)
    rgba[12:36, 16:48] = (200, 30, 30, 255)  # a red square; the rest is transparent (black under alpha 0)
    return Image.fromarray(rgba, "RGBA")


@pytest.mark.parametrize("size", [(11_300, 11_300), (17_000, 8)], ids=["pixels", "side"])
def test_an_image_sent_as_a_blob_to_the_editor_is_refused_from_its_header(tmp_path, size):
    _, editor = page_components(tmp_path)
    blob = claiming(*size)
    assert len(blob) < 40_000
    editor.accept_blobs(AcceptBlobs(data={"type": "background", "index": None, "id": "hostile", "file": b""},
                                    files=[("blob", blob)]))  # fmt: skip
    with pytest.raises(gr.Error) as refused:
        editor.preprocess(EditorData(id="hostile"))
    assert "at most 64,000,000 pixels" in refused.value.message or "largest side allowed is 16384" in refused.value.message
    assert "hostile" not in editor.blob_storage  # not kept either


def test_an_image_sent_as_a_file_to_the_editor_is_refused_from_its_header(tmp_path):
    _, editor = page_components(tmp_path)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(claiming(11_300, 11_300))
    with pytest.raises(gr.Error, match="at most 64,000,000 pixels"):
        editor.preprocess(EditorData(background=FileData(path=str(bomb), orig_name="bomb.png")))


def test_a_pixel_bomb_sent_as_a_data_url_is_refused_before_decoding(tmp_path):
    photo, _ = page_components(tmp_path)
    url = "data:image/png;base64," + base64.b64encode(claiming(13_000, 13_000)).decode()
    with pytest.raises(gr.Error, match="at most 64,000,000 pixels"):
        photo.preprocess(ImageData(url=url))


@pytest.mark.parametrize("picture", [grey_16_bit, transparent], ids=["16-bit grey", "transparent"])
def test_the_query_photo_reaches_the_search_as_the_bytes_sent(tmp_path, picture):
    photo, _ = page_components(tmp_path)
    sent = png_bytes(picture())
    file = tmp_path / "query.png"
    file.write_bytes(sent)
    received = photo.preprocess(ImageData(path=str(file), orig_name="query.png"))
    assert Path(received).read_bytes() == sent
    by_url = photo.preprocess(ImageData(url="data:image/png;base64," + base64.b64encode(sent).decode()))
    assert Path(by_url).read_bytes() == sent


def test_a_file_that_is_not_an_image_is_a_message_on_every_route(tmp_path):
    photo, editor = page_components(tmp_path)
    notes = tmp_path / "notes.png"
    notes.write_text("not a picture")
    with pytest.raises(gr.Error, match="not an image file"):
        photo.preprocess(ImageData(path=str(notes), orig_name="notes.png"))
    with pytest.raises(gr.Error, match="not an image file"):
        editor.preprocess(EditorData(background=FileData(path=str(notes), orig_name="notes.png")))
    editor.accept_blobs(AcceptBlobs(data={"type": "composite", "index": None, "id": "notes", "file": b""},
                                    files=[("blob", b"not a picture")]))  # fmt: skip
    with pytest.raises(gr.Error, match="not an image file"):
        editor.preprocess(EditorData(id="notes"))


def test_blobs_sent_to_the_editor_are_bounded_in_number_and_layers(tmp_path):
    from cbir_ui.upload_guard import MAX_EDITOR_CANVASES, MAX_EDITOR_LAYERS

    _, editor = page_components(tmp_path)
    picture = png_bytes(transparent())

    def send(blob_id: str, kind: str = "background", index=None) -> None:
        editor.accept_blobs(AcceptBlobs(data={"type": kind, "index": index, "id": blob_id, "file": b""},
                                        files=[("blob", picture)]))  # fmt: skip

    # Gradio lengthens the layer list to any index a client names (8 bytes a layer: 10**9 is 8 GB).
    send("layered", "layer", str(10**7))
    assert len(getattr(editor.blob_storage.get("layered"), "layers", [])) <= MAX_EDITOR_LAYERS
    send("layered", "layer", str(MAX_EDITOR_LAYERS - 1))  # the last one allowed
    assert len(editor.blob_storage["layered"].layers) == MAX_EDITOR_LAYERS
    for number in range(MAX_EDITOR_CANVASES + 5):  # canvases sent and never searched with
        send(f"canvas-{number}")
    assert len(editor.blob_storage) == MAX_EDITOR_CANVASES
    assert f"canvas-{MAX_EDITOR_CANVASES + 4}" in editor.blob_storage and "canvas-0" not in editor.blob_storage
    assert getattr(editor.accept_blobs, "_is_server_fn", False)  # still reachable as Gradio's server function
