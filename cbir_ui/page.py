"""The whole page: the tabs composed in one Blocks (`build_ui`), and serving it (`launch`)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import gradio as gr

from cbir.search import SearchEngine
from cbir.uploads import PrivateCollections as Uploads
from cbir_ui import evaluation_tab, photos_tab, search_tab
from cbir_ui.behaviour import SearchPage, thumbnail_dirs
from cbir_ui.formatting import MAX_UPLOAD

# Gradio's own cache of uploads and outputs: files older than this are deleted, checked as often.
CACHE_MAX_AGE_SECONDS = 3600
# The page's script: drawing the query box, and Enter to search (cbir_ui/query.js, package data).
PAGE_SCRIPT = f"<script>\n{(Path(__file__).resolve().parent / 'query.js').read_text()}</script>"


class PageNotice(Protocol):
    """A notice at the top of the page that can change while the server runs (a bundle still on
    its way): `text` is what it says now; `on_visit` is called on each page load and may start
    work (a retry), then says what it says after."""

    def text(self) -> str: ...

    def on_visit(self) -> str: ...


def build_ui(
    engine: SearchEngine, index_root: Path, uploads: Uploads | None = None, notice: str | PageNotice | None = None
) -> gr.Blocks:
    """The whole page, importable and constructible without launching. `uploads`: where the 'Your
    photos' tab keeps what visitors add (None: no such tab). `notice`: markdown shown at the top,
    or a PageNotice asked again on each visit."""
    page = SearchPage(engine, index_root, uploads)
    with gr.Blocks(title="Building image search", delete_cache=(CACHE_MAX_AGE_SECONDS, CACHE_MAX_AGE_SECONDS)) as demo:
        gr.Markdown(
            "# Building image search\n"
            "Upload, paste or take a photo, drag a box on the part to search, and press **Search**."
        )
        if isinstance(notice, str) and notice:
            gr.Markdown(notice, elem_id="page-notice")
        elif notice is not None:
            shown = gr.Markdown(notice.text(), elem_id="page-notice")
            # Not queued behind searches: a visit is answered at once.
            demo.load(notice.on_visit, outputs=[shown], api_visibility="private", show_progress="hidden",
                      concurrency_limit=None)  # fmt: skip
        search = search_tab.render(page, explained=bool(notice))
        if uploads is not None:
            photos_tab.render(page, search.collection, demo)
        evaluation_tab.render(page)
    return demo


def launch(
    engine: SearchEngine,
    index_dir: Path,
    uploads: Uploads | None,
    *,
    host: str,
    port: int,
    share: bool,
    queue_size: int,
    notice: str | PageNotice | None = None,
    block: bool = True,
) -> gr.Blocks:
    """Serve the page: one event at a time unless said otherwise, `queue_size` waiting at most.
    `block`: until stopped (Ctrl-C); else return the running page at once (its `close()` stops it)."""
    demo = build_ui(engine, index_dir, uploads, notice)
    demo.queue(default_concurrency_limit=1, max_size=queue_size)
    demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        # Only thumbnail folders: never a collection's own folder, so nothing beside its images
        # (a .env, a .git) is reachable.
        allowed_paths=thumbnail_dirs(engine, uploads),
        max_file_size=MAX_UPLOAD,
        head=PAGE_SCRIPT,
        prevent_thread_lock=True,
        # Gradio's own lines would tell a user to "set share=True in launch()": --share is the way
        # here, so the page says where it is itself.
        quiet=True,
    )
    print(f"The page is at {demo.local_url}" + (f" and {demo.share_url}" if demo.share_url else "")
          + ("" if share else " (--share also opens a public link)"), flush=True)  # fmt: skip
    if block:
        demo.block_thread()
    return demo
