"""The web page: crop a region of a photo, pick a backbone, a distance and k, see ranked results;
a second tab shows the measured mAP tables.

    python app.py                                  # Oxford5k + Xception (built on first start)
    python app.py --images ~/photos --weights none # your own folder, no download (untrained!)

UI only: the search, the builds and the evaluation all live in `cbir`.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import logging
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from collections import OrderedDict
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image, UnidentifiedImageError

from cbir.backbones import BACKBONES, DEFAULT_BACKBONE, Family
from cbir.datasets.model import ids_to_paths
from cbir.distances import Metric
from cbir.errors import CbirError
from cbir.evaluate import (
    REVISITED_PROTOCOLS,
    STUDY_MEASURE_NOTE,
    Results,
    ResultRow,
    RevisitedRow,
    load_results,
    results_folder,
    revisited_table,
    study_reported,
)
from cbir.images import DEFAULT_LIMITS, check_header, crop_box, load_image
from cbir.index import IndexInfo, scan_indexes
from cbir.pooling import POOLINGS
from cbir.ranking import QUERY_EXPANSION_ALPHA, QUERY_EXPANSION_NEIGHBOURS, AlphaQueryExpansion
from cbir.search import SearchEngine, SearchResult
from cbir.self_retrieval import RECALL_AT, SelfRetrievalResults, load_self_retrieval
from cbir.thumbnails import DEFAULT_MAX_SIDE, ThumbnailFolder
from cbir.uploads import PrivateCollections as Uploads

logger = logging.getLogger("app")

METRICS = [metric.value for metric in Metric]
# Bounds on what one request may cost, checked before anything is decoded (see README, "Limits").
MAX_UPLOAD = "25mb"
# Gradio's own cache of uploads and outputs: files older than this are deleted, checked as often.
CACHE_MAX_AGE_SECONDS = 3600
# Searches waiting at once, beyond the one running; past it a visitor is told at once that the app
# is busy and to retry ("Queue is full"), before any work. Searches run one at a time (a forward
# pass already uses every core), so the last in the queue waits about this many search times:
# bench/results/load.md measures them (docs/performance.md, "Load").
DEFAULT_QUEUE_SIZE = 120
DEFAULT_K = 12
# How the collection menu names a visitor's own photos (searched by their session's engine).
UPLOADED = "uploaded: "
REMEMBERED_SESSIONS = 1000  # browser sessions whose last results are kept (a few hundred bytes each)
MAX_HISTORY = 10  # previous queries kept per session for "previous query"
HISTORY_SIDE = 1024  # ... each at most this many pixels a side (the networks read at most 480)
SELECT_GRACE_SECONDS = 3.0
MAX_K = 100
EXAMPLES_SHOWN = 8
# The page's script: drawing the query box, and Enter to search (page/query.js).
PAGE_SCRIPT = f"<script>\n{(Path(__file__).resolve().parent / 'page' / 'query.js').read_text()}</script>"
# The search event's `js` hook: the box drawn on the photo is read from the page when Search is pressed.
BOX_FROM_PAGE = "(image, box, ...rest) => [image, window.cbirQueryBox ? window.cbirQueryBox() : box, ...rest]"


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
                raise gr.Error(_sentence(str(error))) from None
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


@dataclass
class BrowsingSession:
    """One browser session's results and previous queries (for browsing by result)."""

    collection: str | None = None
    shown: list[str] = field(default_factory=list)  # the images of the last results, in gallery order
    selected: int | None = None  # the result last clicked
    history: list[Image.Image] = field(default_factory=list)  # previous queries as searched, newest first


class SearchPage:
    """What the page's events call: the search engine plus the labels the page shows."""

    def __init__(self, engine: SearchEngine, index_root: Path, uploads: Uploads | None = None) -> None:
        self.engine = engine
        self.index_root = Path(index_root)
        self.uploads = uploads
        self.indexes, self.broken = scan_indexes(engine.index_dir)
        self._thumbnails: dict[tuple[Path, str], ThumbnailFolder] = {}
        # Per browser session, what "search with the selected result" and "previous query" need.
        # Kept here rather than in gr.State: a State makes the page hold a heartbeat connection open.
        # Bounded: the oldest sessions go first.
        self._sessions: OrderedDict[str, BrowsingSession] = OrderedDict()
        self._sessions_lock = threading.Lock()

    def source(self, collection: str | None, request: gr.Request | None = None) -> tuple[SearchEngine, str | None]:
        """The engine that serves a choice of the collection menu, and the collection's own name: a
        visitor's uploaded collection ("uploaded: NAME") is searched by their session's engine."""
        if collection and collection.startswith(UPLOADED):
            private = self.uploads.get(session_of(request), collection[len(UPLOADED):]) if self.uploads else None
            if private is None:
                raise gr.Error("That uploaded collection is gone (its browser session ended): add the photos again "
                               "in 'Your photos'.")  # fmt: skip
            return private.engine, private.name
        return self.engine, collection

    def served(self, collection: str, image: str, request: gr.Request | None = None) -> str | None:
        """The thumbnail the page shows for an indexed image (never the image file itself)."""
        engine, name = self.source(collection, request)
        key = (engine.index_dir, name)
        if key not in self._thumbnails:
            record = engine.record(name)
            folder = engine.layout.thumbnails_dir(name)
            if engine is not self.engine:  # a visitor's own: beside their images, away from the indexes
                folder = self.uploads.folder(session_of(request)) / "thumbnails" / name
            # A bundle's thumbnails were made at its own size: use them as they are.
            size = record.thumbnail_max_side or DEFAULT_MAX_SIDE
            self._thumbnails[key] = ThumbnailFolder(folder, name, record.root, size)
        path = self._thumbnails[key].path_for(image)
        return str(path) if path is not None else None

    def collections(self) -> list[str]:
        return sorted({info.collection for info in self.indexes})

    def collection_choices(self, request: gr.Request | None = None) -> list[str]:
        """The collection menu: the served collections, then this session's uploaded ones."""
        uploaded = self.uploads.names(session_of(request)) if self.uploads else []
        return self.collections() + [UPLOADED + name for name in uploaded]

    def _infos(self, collection: str | None, request: gr.Request | None = None) -> tuple[list[IndexInfo], str | None]:
        if collection and collection.startswith(UPLOADED):
            engine, name = self.source(collection, request)
            return [i for i in engine.available() if i.collection == name], name
        return [i for i in self.indexes if i.collection == collection], collection

    def recipe_choices(self, collection: str | None, request: gr.Request | None = None) -> list[tuple[str, str]]:
        """(label, recipe key) of the collection's indexes: the study's six, then the newer backbones, each in
        registry order."""
        order = list(BACKBONES)
        infos = sorted(
            self._infos(collection, request)[0],
            key=lambda i: (list(Family).index(BACKBONES[i.backbone].family), order.index(i.backbone), i.key),
        )
        return [(recipe_label(i), i.key) for i in infos]

    def default_recipe(self, collection: str | None, request: gr.Request | None = None) -> str | None:
        keys = [value for _, value in self.recipe_choices(collection, request)]
        return DEFAULT_BACKBONE if DEFAULT_BACKBONE in keys else (keys[0] if keys else None)

    def example_queries(
        self, collection: str | None, request: gr.Request | None = None
    ) -> list[tuple[str, str, tuple | None]]:
        """(indexed image, caption, box) for the collection's own query images, or a few of its photos."""
        infos, name = self._infos(collection, request)
        if not collection or not infos:
            return []
        try:
            engine, _ = self.source(collection, request)
            record = engine.record(name)
            images = engine.index(name, infos[0].key).manifest.images
        except CbirError as error:
            logger.warning("no examples for %s: %s", collection, error)
            return []
        if record.queries:
            paths, _ = ids_to_paths(images)
            seen, examples = set(), []
            for query in record.queries:  # one per landmark: Oxford has 5 queries of each
                landmark = query.name.rsplit("_", 1)[0]
                if landmark not in seen and query.image in paths:
                    seen.add(landmark)
                    examples.append((paths[query.image], query.name, query.box))
            return examples[:EXAMPLES_SHOWN]
        step = max(1, len(images) // EXAMPLES_SHOWN)
        return [(image, readable(Path(image).stem), None) for image in images[::step][:EXAMPLES_SHOWN]]

    def example_picture(
        self, collection: str, image: str, box: tuple | None, request: gr.Request | None = None
    ) -> Image.Image:
        """An example query as the editor gets it: the image cropped to its box. A bundle has
        thumbnails only: the box, in the original's pixels, is scaled onto the thumbnail."""
        engine, name = self.source(collection, request)
        record = engine.record(name)
        if not record.thumbnails_only:
            path = record.root / image
            return crop_box(load_image(path), box) if box else load_image(path)
        picture = load_image(self.served(collection, image, request))
        size = (record.image_sizes or {}).get(Path(image).stem)
        if box and size:
            scale_x, scale_y = picture.width / size[0], picture.height / size[1]
            box = (box[0] * scale_x, box[1] * scale_y, box[2] * scale_x, box[3] * scale_y)
            return crop_box(picture, box)
        return picture

    def search_photo(
        self,
        photo: str | None,
        box: str | None,
        collection: str | None,
        recipe: str | None,
        metric: str,
        k: float,
        expand: bool = False,
        expand_n: float = QUERY_EXPANSION_NEIGHBOURS,
        expand_alpha: float = QUERY_EXPANSION_ALPHA,
        request: gr.Request | None = None,
    ):
        """The page's search (API `/search_photo`): a photo file, the box drawn on it in the photo's
        pixels ("left,top,right,bottom"; empty: the whole photo), then as `search`."""
        if not photo:
            raise gr.Error("Add an image first: upload, paste or take a photo, then drag a box on the part to search.")
        return self._search(photo, parse_box(box), collection, recipe, metric, k, expand, expand_n, expand_alpha,
                            request)  # fmt: skip

    def search(
        self,
        editor: dict | None,
        collection: str | None,
        recipe: str | None,
        metric: str,
        k: float,
        expand: bool = False,
        expand_n: float = QUERY_EXPANSION_NEIGHBOURS,
        expand_alpha: float = QUERY_EXPANSION_ALPHA,
        request: gr.Request | None = None,
    ):
        """API `/search`, kept for clients written before `/search_photo`: the query as an image
        editor's value (its composite, else its background). Returns as `search_photo`."""
        image = query_image(editor)
        if image is None:
            raise gr.Error("Add an image first: upload, paste or take a photo, then crop the part to search.")
        return self._search(image, None, collection, recipe, metric, k, expand, expand_n, expand_alpha, request)

    def _search(
        self,
        image: str | Image.Image,
        box: tuple | None,
        collection: str | None,
        recipe: str | None,
        metric: str,
        k: float,
        expand: bool,
        expand_n: float,
        expand_alpha: float,
        request: gr.Request | None,
    ):
        """(gallery items, status line). Problems a user can fix become messages. `expand`: re-rank
        with α-weighted query expansion, reading the top `expand_n` results."""
        if not collection or not recipe:
            raise gr.Error("No index is built yet. Build one with: python build_index.py --dataset oxford5k")
        if metric not in METRICS:
            raise gr.Error(f"Choose a metric: {', '.join(METRICS)}.")
        k = int(max(1, min(MAX_K, k or DEFAULT_K)))
        try:
            expansion = AlphaQueryExpansion(int(expand_n or QUERY_EXPANSION_NEIGHBOURS),
                                            float(QUERY_EXPANSION_ALPHA if expand_alpha is None else expand_alpha))
            rerankers = (expansion,) if expand else ()
            engine, name = self.source(collection, request)
            result = engine.search(
                image, collection=name, recipe=recipe, metric=metric, k=k, box=box, name="the uploaded image",
                rerankers=rerankers,
            )  # fmt: skip
        except CbirError as error:
            raise gr.Error(_sentence(str(error))) from None
        line = status_line(result) + (f" · re-ranked by {expansion.label}" if expand else "")
        served = lambda image: self.served(collection, image, request)  # noqa: E731
        session = self._session(request)
        if session is not None:
            session.collection, session.shown = collection, [h.image for h in result.hits if served(h.image)]
            session.selected = None
        return gallery_items(result, served), line

    def _session(self, request: gr.Request | None) -> BrowsingSession | None:
        if request is None or not request.session_hash:
            return None
        with self._sessions_lock:
            session = self._sessions.setdefault(request.session_hash, BrowsingSession())
            self._sessions.move_to_end(request.session_hash)
            while len(self._sessions) > REMEMBERED_SESSIONS:
                self._sessions.popitem(last=False)
            return session

    def select_result(self, event: gr.SelectData, request: gr.Request | None = None) -> None:
        """A click on a result: remembered for 'search with the selected result'."""
        session = self._session(request)
        if session is not None:
            session.selected = event.index

    def result_as_query(self, photo: str | None, box: str | None, request: gr.Request | None = None) -> Image.Image:
        """'Search with the selected result': the clicked result becomes the query (the current one
        is kept, for 'previous query')."""
        session = self._session(request)
        # The click's own event may still be on its way (events run concurrently): give it a moment.
        deadline = time.monotonic() + SELECT_GRACE_SECONDS
        while session is not None and session.selected is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if session is None or session.selected is None or not 0 <= session.selected < len(session.shown):
            raise gr.Error("Click a result first, then 'Search with the selected result'.")
        try:
            picture = self.example_picture(session.collection, session.shown[session.selected], None, request)
        except CbirError as error:
            raise gr.Error(_sentence(str(error))) from None
        if photo:  # kept as it was searched: the photo cut to its box
            try:
                current = crop_box(load_image(photo, limits=DEFAULT_LIMITS), parse_box(box))
            except CbirError as error:
                raise gr.Error(_sentence(str(error))) from None
            current = current.convert("RGB")
            current.thumbnail((HISTORY_SIDE, HISTORY_SIDE))  # ten per session, a thousand sessions: kept small
            session.history = [current, *session.history][:MAX_HISTORY]
        return picture

    def previous_query(self, request: gr.Request | None = None) -> Image.Image:
        """'Previous query': the query before the last 'search with the selected result'."""
        session = self._session(request)
        if session is None or not session.history:
            raise gr.Error("There is no previous query: 'Search with the selected result' keeps one.")
        return session.history.pop(0)

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
        if self.uploads is None:
            raise gr.Error("Adding photos is off on this server: start it with --uploads to allow it.")
        session = session_of(request)
        if not session:
            raise gr.Error("Adding photos needs the page (a browser session).")
        if not files:
            raise gr.Error("Choose some photos (or a zip of them) first.")
        if backbone not in BACKBONES:
            raise gr.Error(f"Choose a backbone: {', '.join(BACKBONES)}.")
        progress(0, desc="Unpacking")

        def report(done: int, total: int) -> None:
            progress((done, total), desc=f"Describing with {backbone}", unit="images")

        started = time.perf_counter()
        try:
            added = self.uploads.add(session, [Path(file) for file in files], name or "my-photos",
                                     BACKBONES[backbone], report)  # fmt: skip
            skipped = added.engine.index(added.name, added.outcomes[0].key).manifest.skipped if added.outcomes else []
        except CbirError as error:
            raise gr.Error(_sentence(str(error))) from None
        described = added.outcomes[0].n_images if added.outcomes else 0
        lines = [
            f"**{added.name}**: {described} images described with {backbone} in "
            f"{time.perf_counter() - started:.0f} s, now the collection searched ("
            + ("kept on this computer)." if self.uploads.keep else "yours alone; removed when you close the page).")
        ]
        left_out = [f"{item.image}: {item.reason}" for item in skipped] + [f"{n}: {why}" for n, why in added.ignored]
        if left_out:
            lines.append(f"Left out ({len(left_out)}):\n" + "\n".join(f"- {readable(line)}" for line in left_out[:20]))
        choice = UPLOADED + added.name
        return "\n\n".join(lines), gr.update(choices=self.collection_choices(request), value=choice, visible=True)

    def end_session(self, request: gr.Request | None = None) -> None:
        """The page was closed: its uploaded collections go."""
        if self.uploads is None or self.uploads.keep or not session_of(request):
            return
        folder = self.uploads.folder(session_of(request))
        for key in [key for key in list(self._thumbnails) if key[0].is_relative_to(folder)]:
            self._thumbnails.pop(key, None)
        self.uploads.drop(session_of(request))


def session_of(request: gr.Request | None) -> str | None:
    return request.session_hash if request is not None else None


def recipe_label(info: IndexInfo) -> str:
    """How the backbone choice names an index: 'xception · GeM · whitened on paris6k · 512-d'."""
    newer = BACKBONES[info.backbone].family is Family.NEWER
    return ("newer · " if newer else "") + info.recipe.describe_label() + (" · UNTRAINED" if info.untrained else "")


def query_image(editor: dict | Image.Image | None) -> Image.Image | None:
    """The picture to search with: the editor's composite (the cropped canvas), else its background,
    without the transparent margin the fixed-size canvas puts around a picture of another shape."""
    if editor is None:
        return None
    picture = editor if isinstance(editor, Image.Image) else editor.get("composite")
    if picture is None and isinstance(editor, dict):
        picture = editor.get("background")
    if picture is None:
        return None
    if picture.mode == "RGBA":
        visible = picture.getchannel("A").getbbox()
        if visible is None:  # an empty canvas
            return None
        picture = picture.crop(visible)
    return picture


def parse_box(text: str | None) -> tuple[float, float, float, float] | None:
    """The query box as the page sends it, "left,top,right,bottom" in the photo's pixels; None for
    an empty text (the whole photo)."""
    if not text or not text.strip():
        return None
    try:
        numbers = [float(part) for part in text.split(",")]
    except ValueError:
        numbers = []
    if len(numbers) != 4 or not all(math.isfinite(n) for n in numbers):
        raise gr.Error(f"A box is four numbers, left,top,right,bottom in the photo's pixels (got {text[:40]!r}).")
    return tuple(numbers)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def gallery_items(result: SearchResult, served=lambda image: None) -> list[tuple[str, str]]:
    """(file the page may serve, caption) per hit; `served` maps an indexed image to its thumbnail.
    A hit whose image cannot be read (deleted since the build) is left out rather than failing."""
    items = []
    for hit in result.hits:
        # Short enough to fit under a thumbnail: cosine similarity, or Euclidean (L2) distance.
        score = f"cos {hit.similarity:.3f}" if result.metric is Metric.COSINE else f"L2 {hit.distance:.3g}"
        path = served(hit.image)
        if path is not None:
            items.append((path, f"#{hit.rank} {readable(Path(hit.image).stem)} · {score}"))
    return items


def readable(name: str) -> str:
    """A file name fit for the page: bytes that are not UTF-8 (legal on Linux) shown as �."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def status_line(result: SearchResult) -> str:
    total = 1000 * (result.describe_seconds + result.search_seconds)
    line = (
        f"{len(result.hits)} results in {total:.0f} ms (descriptor {1000 * result.describe_seconds:.0f} ms, "
        f"{'exact' if result.exact else 'index'} search {1000 * result.search_seconds:.1f} ms) · {result.collection} · "
        f"{result.recipe} · "
        + ("cosine similarity" if result.metric is Metric.COSINE else "Euclidean distance")
    )
    if result.untrained:
        line += " · **untrained weights: rankings are meaningless**"
    for warning in result.warnings:
        line += f"\n\n⚠ {warning}"
    return line


def measured_table(results: Results) -> list[list[Any]]:
    """The results, one row per recipe x protocol x metric x query mode; within each protocol x metric
    x mode block the recipes of one backbone sit together, the study's first."""
    order = list(BACKBONES)

    def place(row: ResultRow) -> tuple:
        backbone = order.index(row.backbone) if row.backbone in order else len(order)
        return (row.protocol, row.metric, row.query_mode, row.reranking, backbone, row.recipe != row.backbone, row.recipe)

    return [
        [
            row.backbone + (" (untrained)" if row.untrained else ""),
            POOLING_NAMES.get(row.pooling, row.pooling),
            row.scales,
            row.whitening or "-",
            row.dim or "",
            row.reranking or "-",
            row.protocol,
            row.metric,
            row.query_mode,
            round(row.map_oxford, 3),
            round(row.map, 3),
            round(row.map_11point, 3),
            round(row.map_at_100_store, 3),
            round(row.mp_at_1, 3),
            round(row.mp_at_5, 3),
            round(row.mp_at_10, 3),
            round(row.mp_at_1_revisitop, 3),
            round(row.mp_at_5_revisitop, 3),
            round(row.mp_at_10_revisitop, 3),
            round(row.study_map, 3),
            round(1000 * row.mean_query_seconds, 1),
            row.n_queries,
        ]
        for row in sorted(results.rows, key=place)
    ]


POOLING_NAMES = {row.pooling.value: row.short_label for row in POOLINGS.values()}
MEASURED_HEADERS = [
    "backbone", "pooling", "scales", "whitened on", "dim", "re-ranking", "protocol", "metric", "queries",
    "mAP (Oxford)", "mAP", "mAP 11-pt", "mAP@100 (index)", "mP@1", "mP@5", "mP@10",
    "mP@1 (revisitop)", "mP@5 (revisitop)", "mP@10 (revisitop)", "study mAP", "ms / query", "n",
]  # fmt: skip


SELF_RETRIEVAL_HEADERS = ["backbone · recipe", "metric", "edit", "recall@1", "recall@5", "recall@10", "MRR", "queries",
                          "ms / query"]  # fmt: skip


def self_retrieval_rows(results: SelfRetrievalResults) -> list[list[Any]]:
    return [
        [row.recipe + (" (untrained)" if row.untrained else ""), row.metric, row.edit]
        + [round(row.recall[k], 3) for k in RECALL_AT]
        + [round(row.mrr, 3), row.n_queries, round(1000 * row.mean_query_seconds, 1)]
        for row in results.rows
    ]


def evaluate_command(collection: str) -> str:
    """The command that evaluates every index of a collection: mAP where it has ground truth,
    self-retrieval otherwise (cbir.evaluate chooses)."""
    return f"python -m cbir.evaluate --collection {collection} --recipes all"


REVISITED_HEADERS = ["recipe", "metric", "queries", "re-ranking", "E mAP", "M mAP", "H mAP", "E mP@10", "M mP@10",
                     "H mP@10"]  # fmt: skip


def revisited_rows(lines: list[RevisitedRow]) -> list[list[Any]]:
    return [
        [line.recipe + (" (untrained)" if line.untrained else ""), line.metric, line.query_mode, line.reranking or "-"]
        + [round(100 * line.map.get(p, float("nan")), 2) for p in REVISITED_PROTOCOLS]
        + [round(100 * line.mp_at_10.get(p, float("nan")), 2) for p in REVISITED_PROTOCOLS]
        for line in lines
    ]


def evaluation_tab(page: SearchPage, collection: str) -> None:
    results = load_results(page.index_root, collection)
    gr.Markdown(f"### {collection}: measured by this code")
    self_retrieval = load_self_retrieval(page.index_root, collection)
    if self_retrieval is not None:
        gr.Markdown(
            f"**Self-retrieval** ({len(self_retrieval.sources)} of its images x {len(self_retrieval.edits)} edits, "
            f"measured {self_retrieval.created}). {self_retrieval.note}\n\n"
            + "; ".join(f"**{name}**: {text}" for name, text in self_retrieval.edits.items())
        )
        gr.Dataframe(value=self_retrieval_rows(self_retrieval), headers=SELF_RETRIEVAL_HEADERS, interactive=False)
    if results is None and self_retrieval is None:
        gr.Markdown(f"Not evaluated yet. Run `{evaluate_command(collection)}`, then restart the app.")
    elif results is not None:
        protocols = "\n".join(f"- **{name}**: {text}" for name, text in results.protocols.items())
        gr.Markdown(
            f"**Protocols.**\n{protocols}\n\n{results.note}\n\n{STUDY_MEASURE_NOTE}\n\nMeasured {results.created}."
        )
        if any(row.untrained for row in results.rows):
            gr.Markdown("**Rows marked untrained come from random weights: they test the code, not the network.**")
        revisited = revisited_table(results)
        if revisited:
            gr.Markdown(
                "**As papers print it**: mAP and mP@10 (revisitop's rule) under the Easy / Medium / Hard protocols, "
                "x 100. Compare a published table with the same protocol, cropped queries and the recipe named "
                "(papers usually describe 1024 px images: `--input-size 1024`)."
            )
            gr.Dataframe(value=revisited_rows(revisited), headers=REVISITED_HEADERS, interactive=False, wrap=True)
        gr.Dataframe(value=measured_table(results), headers=MEASURED_HEADERS, interactive=False, wrap=True)
        curves = results_folder(page.index_root, collection) / results.files["pr_curves"]
        if curves.is_file():
            gr.Image(value=str(curves), label="Mean 11-point precision / recall", interactive=False)
    reported = study_reported()
    table = reported["tables"].get(collection)
    if table:
        gr.Markdown(f"### {collection}: reported by the study (not measured here)\n\n{reported['note']}")
        gr.Dataframe(
            value=table,
            headers=["backbone", "non-interpolated mAP", "interpolated mAP", "time (s)"],
            interactive=False,
        )


def broken_notice(page: SearchPage) -> str:
    """What the page says about index folders it could not load, with the command that fixes each."""
    if not page.broken:
        return ""
    lines = [f"- **{b.collection}/{b.key}**: {b.problem}" for b in page.broken]
    return "**Not served (damaged or unreadable):**\n" + "\n".join(lines)


def build_ui(engine: SearchEngine, index_root: Path, uploads: Uploads | None = None) -> gr.Blocks:
    """The whole page, importable and constructible without launching. `uploads`: where the 'Your
    photos' tab keeps what visitors add (None: no such tab)."""
    page = SearchPage(engine, index_root, uploads)
    collections = page.collection_choices()
    first = collections[0] if collections else None

    def examples_for(collection: str | None, request: gr.Request | None = None) -> list[tuple[str, str]]:
        examples = [(page.served(collection, image, request), caption)
                    for image, caption, _ in page.example_queries(collection, request)]  # fmt: skip
        return [(path, caption) for path, caption in examples if path is not None]

    def on_collection(collection: str | None, request: gr.Request):
        return (
            gr.update(choices=page.recipe_choices(collection, request), value=page.default_recipe(collection, request)),
            gr.update(value=examples_for(collection, request)),
        )

    def on_example(collection: str | None, event: gr.SelectData, request: gr.Request):
        examples = page.example_queries(collection, request)
        if not examples or event.index is None or event.index >= len(examples):
            return gr.update()
        image, _, box = examples[event.index]
        try:
            picture = page.example_picture(collection, image, box, request)
        except CbirError as error:
            raise gr.Error(_sentence(str(error))) from None
        return picture

    with gr.Blocks(title="Building image search", delete_cache=(CACHE_MAX_AGE_SECONDS, CACHE_MAX_AGE_SECONDS)) as demo:
        gr.Markdown(
            "# Building image search\n"
            "Upload, paste or take a photo, drag a box on the part to search, and press **Search**."
        )
        with gr.Tab("Search"):
            with gr.Row():
                with gr.Column(scale=2):
                    photo = guarded_upload(gr.Image(
                        label="Query: drag a box on the photo to search that part (a click clears it)",
                        # A path: the photo is uploaded once, when chosen, and searches send only its
                        # reference and the box (page/query.js), never the pixels again.
                        type="filepath",
                        sources=["upload", "clipboard", "webcam"],
                        height=420,
                        elem_id="query-image",
                    ))  # fmt: skip
                    box = gr.Textbox(value="", visible=False)
                    examples = gr.Gallery(
                        value=examples_for(first),
                        label="Example queries from the collection (click one)",
                        columns=EXAMPLES_SHOWN // 2,
                        height="auto",  # a fixed height cut the captions off
                        allow_preview=False,
                    )
                with gr.Column(scale=1):
                    collection = gr.Dropdown(
                        choices=collections, value=first, label="Collection", visible=len(collections) != 1
                    )
                    backbone = gr.Dropdown(
                        choices=page.recipe_choices(first), value=page.default_recipe(first),
                        label="Backbone (the study's six, then newer)",
                    )
                    metric = gr.Dropdown(choices=METRICS, value="cosine", label="Distance")
                    k = gr.Slider(1, MAX_K, value=DEFAULT_K, step=1, label="Top k")
                    expand = gr.Checkbox(
                        value=False,
                        label="Query expansion (αQE)",
                        info="search again with the query averaged with its best matches: finds more views of "
                        "the same building, costs a second search",
                    )
                    with gr.Row():
                        expand_n = gr.Number(value=QUERY_EXPANSION_NEIGHBOURS, minimum=1, maximum=MAX_K * 2,
                                             precision=0, label="αQE: top n read", min_width=80)  # fmt: skip
                        expand_alpha = gr.Number(value=QUERY_EXPANSION_ALPHA, minimum=0, maximum=10,
                                                 label="αQE: α (weight = similarity^α)", min_width=80)  # fmt: skip
                    button = gr.Button("Search", variant="primary", elem_id="search-button")
                    if not collections:
                        gr.Markdown(
                            "**No index is built yet.** Build one with `python build_index.py --dataset oxford5k` "
                            "or `python build_index.py --images <folder>`, then restart the app."
                        )
            if page.broken:
                gr.Markdown(broken_notice(page), elem_id="broken-indexes")
            status = gr.Markdown(elem_id="search-status")
            gallery = gr.Gallery(label="Most similar", columns=6, height="auto", elem_id="results")
            with gr.Row():
                use_result = gr.Button("Search with the selected result", elem_id="use-result", size="sm")
                previous = gr.Button("← Previous query", elem_id="previous-query", size="sm")
        if uploads is not None:
            with gr.Tab("Your photos"):
                gr.Markdown(upload_help(uploads))
                with gr.Row():
                    with gr.Column(scale=2):
                        sent = gr.File(label="Photos, or a zip of them", file_count="multiple",
                                       file_types=["image", ".zip"], type="filepath", elem_id="upload-files")  # fmt: skip
                    with gr.Column(scale=1):
                        upload_name = gr.Textbox(value="my-photos", label="Name", max_length=40, elem_id="upload-name")
                        upload_backbone = gr.Dropdown(choices=list(BACKBONES), value=DEFAULT_BACKBONE, label="Backbone")
                        add = gr.Button("Describe and add", variant="primary", elem_id="upload-button")
                upload_status = gr.Markdown(elem_id="upload-status")
        with gr.Tab("Evaluation"):
            if not collections:
                gr.Markdown("Nothing is built or evaluated yet.")
            for name in page.collections():  # a visitor's own collections are not evaluated
                evaluation_tab(page, name)

        search_inputs = [photo, box, collection, backbone, metric, k, expand, expand_n, expand_alpha]
        button.click(
            page.search_photo,
            inputs=search_inputs,
            outputs=[gallery, status],
            js=BOX_FROM_PAGE,
            api_name="search_photo",
            concurrency_limit=1,
            concurrency_id="search",  # one forward pass at a time, whichever way it comes
        )
        # A new photo (uploaded, an example, a result searched with) starts without a box.
        photo.change(None, js="() => { if (window.cbirClearQueryBox) window.cbirClearQueryBox(); }")
        gallery.select(page.select_result, None, None, api_visibility="private")
        use_result.click(
            page.result_as_query, inputs=[photo, box], outputs=[photo], js=BOX_FROM_PAGE, api_visibility="private"
        ).success(page.search_photo, inputs=search_inputs, outputs=[gallery, status], api_visibility="private",
                  concurrency_id="search")
        previous.click(page.previous_query, inputs=None, outputs=[photo], api_visibility="private").success(
            page.search_photo, inputs=search_inputs, outputs=[gallery, status], api_visibility="private",
            concurrency_id="search",
        )
        # `/search` as it was before `/search_photo`: the query as an image editor's value. Kept for API
        # clients; not on the page (an editor re-uploads its canvas on every search).
        editor = guarded_upload(gr.ImageEditor(type="pil", image_mode="RGBA", visible=False))
        gr.Button(visible=False).click(
            page.search,
            inputs=[editor, collection, backbone, metric, k, expand, expand_n, expand_alpha],
            outputs=[gallery, status],
            api_name="search",
            concurrency_limit=1,
            concurrency_id="search",  # one forward pass at a time, whichever way it comes
        )
        collection.change(on_collection, inputs=[collection], outputs=[backbone, examples], api_visibility="private")
        if uploads is not None:
            # One collection described at a time, beside the searches (which go on meanwhile).
            add.click(page.add_photos, inputs=[sent, upload_name, upload_backbone], outputs=[upload_status, collection],
                      api_visibility="private", concurrency_limit=1, concurrency_id="add-photos")  # fmt: skip
            if not uploads.keep:
                demo.unload(page.end_session)
        examples.select(on_example, inputs=[collection], outputs=[photo], api_visibility="private")
    return demo


def upload_help(uploads: Uploads) -> str:
    where = (
        f"They are kept in `{uploads.root}` (this is a local, single-user run: `--keep-uploads`)."
        if uploads.keep
        else "They stay yours alone: no other visitor can see or search them, and they are deleted when you "
        "close the page."
    )
    return (
        "Search your own photos: send images or a zip of them, pick a backbone, and press **Describe and "
        f"add**. The collection is then the one searched on the Search tab. Limits: "
        f"{uploads.limits.describe()}; each file sent at most {MAX_UPLOAD.upper()}, each image at most "
        f"{DEFAULT_LIMITS.max_side:,} px a side and {DEFAULT_LIMITS.max_pixels / 1e6:.0f} megapixels. Images that "
        f"cannot be read are skipped and listed. {where}"
    )


def thumbnail_dirs(engine: SearchEngine, uploads: Uploads | None = None) -> list[str]:
    """The only folders the page serves files from: each served collection's thumbnails. (Visitors'
    own collections are under a temporary folder, whose thumbnails Gradio copies into its cache as
    it sends them; a kept folder, `--keep-uploads`, may be anywhere: its thumbnails are named too.)"""
    folders = []
    for collection in sorted({info.collection for info in engine.available()}):
        folder = engine.layout.thumbnails_dir(collection)
        folder.mkdir(parents=True, exist_ok=True)
        folders.append(str(folder.resolve()))
    if uploads is not None and uploads.keep:
        kept = uploads.folder(uploads.SHARED) / "thumbnails"
        kept.mkdir(parents=True, exist_ok=True)
        folders.append(str(kept.resolve()))
    return folders


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Serve the image search page over the indexes in --index-dir (building the default "
        "collection first if there are none).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--share", action="store_true", help="also open a public Gradio link")
    parser.add_argument("--index-dir", type=Path, default=Path(os.environ.get("CBIR_INDEX_DIR", "indexes")))
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("CBIR_DATA_DIR", "data")))
    parser.add_argument("--images", type=Path, help="index and serve this folder of your own photos")
    parser.add_argument("--name", help="collection name for --images (default: the folder's name)")
    parser.add_argument("--no-build", action="store_true", help="serve what is built; never build at start")
    parser.add_argument(
        "--bundle",
        default=os.environ.get("CBIR_BUNDLE"),
        help="serve a bundle made by build_index.py --export-bundle: a .tar path or an https:// URL (a Hugging "
        "Face resolve/main/... URL works); downloaded, checked and unpacked into --cache-dir once (env CBIR_BUNDLE)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("CBIR_CACHE_DIR", Path.home() / ".cache" / "cbir")),
        help="where bundles are downloaded and unpacked (env CBIR_CACHE_DIR)",
    )
    parser.add_argument("--weights", default="imagenet", help="weights for what is built: imagenet, none, or a file")
    parser.add_argument("--backbones", default=DEFAULT_BACKBONE, help="backbones to build at start, or 'all'")
    parser.add_argument("--input-size", type=int, help="build networks at this input size (smoke tests only)")
    parser.add_argument(
        "--uploads",
        choices=["auto", "on", "off"],
        default=os.environ.get("CBIR_UPLOADS", "auto"),
        help="the 'Your photos' tab, where visitors describe their own photos (CPU and disk of this server): "
        "auto is on for a local run, off with --share or on Hugging Face Spaces (env CBIR_UPLOADS)",
    )
    parser.add_argument(
        "--keep-uploads",
        type=Path,
        metavar="DIR",
        help="a local, single-user run: keep the photos added on the page, and their indexes, in DIR across "
        "sessions and restarts (default: each browser session's own, deleted when the page is closed)",
    )
    parser.add_argument(
        "--queue-size",
        type=int,
        default=int(os.environ.get("CBIR_QUEUE_SIZE", DEFAULT_QUEUE_SIZE)),
        help="searches that may wait at once; more are told the app is busy (env CBIR_QUEUE_SIZE)",
    )
    return parser.parse_args(argv)


def build_at_start(arguments: argparse.Namespace) -> None:
    """Build what the page needs before serving: the user's folder, or the default collection."""
    from cbir.backbones import parse_backbones
    from cbir.weights import Weights
    from cbir.build import BuildSettings, build_indexes
    from cbir.recipe import RecipeSettings
    from cbir.datasets import DownloadSettings, folder_collection, prepare_dataset
    from cbir.index import scan_indexes

    if arguments.images is not None:
        collection = folder_collection(arguments.images, arguments.name or arguments.images.resolve().name)
    elif any(scan_indexes(arguments.index_dir)):  # whole or damaged: the page shows them, with the fix
        return
    else:
        logger.info("no index under %s: building Oxford5k with %s first", arguments.index_dir, arguments.backbones)
        collection = prepare_dataset("oxford5k", DownloadSettings.from_env(data_dir=arguments.data_dir))
    recipe = RecipeSettings(weights=Weights.parse(arguments.weights), input_size=arguments.input_size)
    settings = BuildSettings(index_dir=arguments.index_dir, recipe=recipe)
    build_indexes(collection, parse_backbones(arguments.backbones), settings)


def first_start_help(error: Exception, arguments: argparse.Namespace) -> str:
    """What to do when the default first start (download Oxford5k) cannot go on: three ways, each a
    command to copy."""
    return (
        f"error: {error}\n\n"
        "Three ways on:\n"
        "  1. Oxford5k itself: ask for access at https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/, then\n"
        "       CBIR_DATA_USER=... CBIR_DATA_PASSWORD=... python app.py\n"
        f"     or place the archives in {arguments.data_dir / 'oxford5k'} (or pass --mirror URL) and run python app.py\n"
        "  2. A bundle someone built (no images, no build):\n"
        "       python app.py --bundle https://.../oxford5k.tar\n"
        "  3. Your own photos:\n"
        "       python app.py --images ~/Pictures"
    )


def uploads_enabled(arguments: argparse.Namespace) -> bool:
    """'Your photos' is on for a local run; a public link, a Space or a server listening beyond this
    machine would let anyone spend its CPU and disk, so there it takes --uploads on."""
    if arguments.uploads != "auto":
        return arguments.uploads == "on"
    local = arguments.host in ("127.0.0.1", "localhost", "::1")
    return local and not (arguments.share or os.environ.get("SPACE_ID"))


def port_taken(host: str, port: int) -> bool:
    """Whether another program already listens on host:port (checked before any network loads)."""
    import socket

    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    from cbir.datasets import DatasetError

    if port_taken(arguments.host, arguments.port):
        print(
            f"error: port {arguments.port} on {arguments.host} is in use (another app.py?): choose another with "
            f"--port {arguments.port + 1} or GRADIO_SERVER_PORT={arguments.port + 1}",
            file=sys.stderr,
        )
        return 2

    try:
        if arguments.bundle:
            from cbir.bundle import open_bundle
            from cbir.datasets import DownloadSettings

            http = DownloadSettings.from_env(data_dir=arguments.data_dir).http
            arguments.index_dir = open_bundle(arguments.bundle, arguments.cache_dir, http)
        elif not arguments.no_build:
            build_at_start(arguments)
    except KeyboardInterrupt:
        print("\ninterrupted: finished work is kept; start again to resume", file=sys.stderr)
        return 130
    except DatasetError as error:
        if arguments.images is None and not arguments.bundle:
            print(first_start_help(error, arguments), file=sys.stderr)
        else:
            print(f"error: {error}", file=sys.stderr)
        return 2
    except CbirError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk, a folder that cannot be written: say which, no traceback
        print(f"error: {error.strerror or error}: {error.filename or ''}", file=sys.stderr)
        return 2
    # Pillow's own decompression-bomb guard at the app's limit too, for anything decoded here.
    Image.MAX_IMAGE_PIXELS = DEFAULT_LIMITS.max_pixels
    engine = SearchEngine(arguments.index_dir)
    uploads = None
    if uploads_enabled(arguments):
        from cbir.weights import Weights
        from cbir.build import BuildSettings
        from cbir.recipe import RecipeSettings

        # The same weights (and test-only input size) as the collections this app builds.
        settings = BuildSettings(
            recipe=RecipeSettings(weights=Weights.parse(arguments.weights), input_size=arguments.input_size),
        )
        uploads = Uploads(arguments.keep_uploads, settings, engine.extractors, keep=arguments.keep_uploads is not None)
        atexit.register(uploads.close)  # visitors' photos do not outlive the server
    demo = build_ui(engine, arguments.index_dir, uploads)
    demo.queue(default_concurrency_limit=1, max_size=arguments.queue_size)
    demo.launch(
        server_name=arguments.host,
        server_port=arguments.port,
        share=arguments.share,
        # Only thumbnail folders: never a collection's own folder, so nothing beside its images
        # (a .env, a .git) is reachable.
        allowed_paths=thumbnail_dirs(engine, uploads),
        max_file_size=MAX_UPLOAD,
        head=PAGE_SCRIPT,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
