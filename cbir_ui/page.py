"""The whole page: the tabs composed in one Blocks (`build_ui`), and serving it (`launch`)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from cbir.search import SearchEngine
from cbir.uploads import PrivateCollections as Uploads
from cbir_ui import evaluation_tab, photos_tab, search_tab
from cbir_ui.behaviour import SearchPage, thumbnail_dirs
from cbir_ui.formatting import MAX_UPLOAD

# Gradio's own cache of uploads and outputs: files older than this are deleted, checked as often.
CACHE_MAX_AGE_SECONDS = 3600
# Searches waiting at once, beyond the one running; past it a visitor is told at once that the app
# is busy and to retry ("Queue is full"), before any work. Searches run one at a time (a forward
# pass already uses every core), so the last in the queue waits about this many search times:
# bench/results/load.md measures them (docs/performance.md, "Load").
DEFAULT_QUEUE_SIZE = 120
# The page's script: drawing the query box, and Enter to search (cbir_ui/query.js, package data).
PAGE_SCRIPT = f"<script>\n{(Path(__file__).resolve().parent / 'query.js').read_text()}</script>"


def build_ui(
    engine: SearchEngine, index_root: Path, uploads: Uploads | None = None, notice: str | None = None
) -> gr.Blocks:
    """The whole page, importable and constructible without launching. `uploads`: where the 'Your
    photos' tab keeps what visitors add (None: no such tab). `notice`: markdown shown at the top."""
    page = SearchPage(engine, index_root, uploads)
    with gr.Blocks(title="Building image search", delete_cache=(CACHE_MAX_AGE_SECONDS, CACHE_MAX_AGE_SECONDS)) as demo:
        gr.Markdown(
            "# Building image search\n"
            "Upload, paste or take a photo, drag a box on the part to search, and press **Search**."
        )
        if notice:
            gr.Markdown(notice, elem_id="page-notice")
        search = search_tab.render(page)
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
    queue_size: int = DEFAULT_QUEUE_SIZE,
    notice: str | None = None,
) -> None:
    """Serve the page until stopped: one event at a time unless said otherwise, `queue_size`
    waiting at most."""
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
    )
