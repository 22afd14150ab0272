"""The 'Your photos' tab: a visitor sends images or a zip, picks a backbone, and their collection
becomes the one searched (theirs alone, gone when the page closes unless --keep-uploads)."""

from __future__ import annotations

import gradio as gr

from cbir.backbones import BACKBONES, DEFAULT_BACKBONE
from cbir_ui.behaviour import SearchPage
from cbir_ui.errors import user_errors
from cbir_ui.formatting import upload_help
from cbir_ui.visitor import session_of


class PhotosHandlers:
    """The tab's events, thin: the session id from the request, the behaviour's call, its errors
    shown by cbir_ui.errors."""

    def __init__(self, page: SearchPage) -> None:
        self.page = page

    @user_errors
    def add_photos(
        self,
        files: list[str] | None,
        name: str,
        backbone: str,
        request: gr.Request | None = None,
        progress: gr.Progress = gr.Progress(),
    ):
        """'Your photos': describe what a visitor sent as a collection of theirs, then make it the
        collection searched. Returns (what happened, the collection menu)."""

        def report(done: int, total: int | None) -> None:
            if total is None:
                progress(0, desc="Unpacking")
            else:
                progress((done, total), desc=f"Describing with {backbone}", unit="images")

        added = self.page.add_photos(files, name, backbone, session_of(request), report)
        return added.message, gr.update(choices=added.choices, value=added.chosen, visible=True)

    def end_session(self, request: gr.Request | None = None) -> None:
        """The page was closed: its uploaded collections go."""
        self.page.end_session(session_of(request))


def render(page: SearchPage, collection: gr.Dropdown, demo: gr.Blocks) -> None:
    """The tab, inside the current Blocks: what was added becomes `collection`'s choice; the
    session's photos go when the page is closed (`demo.unload`), unless they are kept."""
    uploads = page.uploads
    handlers = PhotosHandlers(page)
    with gr.Tab("Your photos"):
        gr.Markdown(upload_help(uploads))
        with gr.Row():
            with gr.Column(scale=2):
                sent = gr.File(label="Photos, or a zip of them", file_count="multiple",
                               file_types=["image", ".zip"], type="filepath", elem_id="upload-files")  # fmt: skip
            with gr.Column(scale=1):
                name = gr.Textbox(value="my-photos", label="Name", max_length=40, elem_id="upload-name")
                backbone = gr.Dropdown(choices=list(BACKBONES), value=DEFAULT_BACKBONE, label="Backbone")
                add = gr.Button("Describe and add", variant="primary", elem_id="upload-button")
        status = gr.Markdown(elem_id="upload-status")
    # One collection described at a time, beside the searches (which go on meanwhile).
    add.click(handlers.add_photos, inputs=[sent, name, backbone], outputs=[status, collection],
              api_visibility="private", concurrency_limit=1, concurrency_id="add-photos")  # fmt: skip
    if not uploads.keep:
        demo.unload(handlers.end_session)
