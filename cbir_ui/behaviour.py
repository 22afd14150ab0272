"""What the page does, as plain Python: each call takes the browser session's id (a str, or None
outside a browser) and returns the project's own values. Problems a visitor can fix are raised as
CbirError (PageError here); cbir_ui.errors turns them into what Gradio shows. No Gradio here.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from cbir.backbones import BACKBONES, DEFAULT_BACKBONE, Family
from cbir.datasets.model import ids_to_paths
from cbir.distances import Metric
from cbir.errors import CbirError
from cbir.images import DEFAULT_LIMITS, ImageError, crop_box, load_image
from cbir.catalogue import IndexInfo, scan_indexes
from cbir.diffusion import Diffusion
from cbir.ranking import QUERY_EXPANSION_ALPHA, QUERY_EXPANSION_NEIGHBOURS, AlphaQueryExpansion
from cbir.search import SearchEngine, SearchResult
from cbir.thumbnails import DEFAULT_MAX_SIDE, ThumbnailFolder
from cbir.uploads import PrivateCollections as Uploads
from cbir.uploads import ServedCollection, served_collection
from cbir_ui.explanations import MatchExplanation, PageError, RememberingVerification, SearchedQuery, explain
from cbir_ui.formatting import LeftOut, gallery_items, readable, recipe_label, status_line

logger = logging.getLogger(__name__)

METRICS = [metric.value for metric in Metric]
DEFAULT_K = 12
MAX_K = 100
EXAMPLES_SHOWN = 8
# How the collection menu names a visitor's own photos (searched by their session's engine).
UPLOADED = "uploaded: "
REMEMBERED_SESSIONS = 1000  # browser sessions whose last results are kept (a few hundred bytes each)
MAX_HISTORY = 10  # previous queries kept per session for "previous query"
HISTORY_SIDE = 1024  # ... each at most this many pixels a side (the networks read at most 480)
SELECT_GRACE_SECONDS = 3.0


@dataclass(frozen=True)
class NumberField:
    """A number a client sends, named as the page labels it, and the values it may take. Gradio's
    own bounds checks let NaN through (every comparison with NaN is false)."""

    label: str
    minimum: float
    maximum: float
    whole: bool = False

    def check(self, value: float | None) -> float | int | None:
        """`value` if it is a finite number in range (an int for a whole field); None if left out.
        Raises PageError."""
        if value is None:
            return None
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        in_range = math.isfinite(number) and self.minimum <= number <= self.maximum
        if not in_range or (self.whole and not number.is_integer()):
            kind = "a whole number" if self.whole else "a number"
            raise PageError(f"{self.label} must be {kind} from {self.minimum:g} to {self.maximum:g}; got {value!r}.")
        return int(number) if self.whole else number


TOP_K = NumberField("Top k", 1, MAX_K, whole=True)
EXPANSION_READ = NumberField("αQE: top n read", 1, 2 * MAX_K, whole=True)
EXPANSION_ALPHA = NumberField("αQE: α", 0, 10)


@dataclass
class BrowsingSession:
    """One browser session's results and previous queries (for browsing by result)."""

    collection: str | None = None
    shown: list[str] = field(default_factory=list)  # the images of the last results, in gallery order
    selected: int | None = None  # the result last clicked
    history: list[Image.Image] = field(default_factory=list)  # previous queries as searched, newest first
    query: SearchedQuery | None = None  # the last search's query, for drawing why a result matches


class BrowsingSessions:
    """Per browser session, what "search with the selected result" and "previous query" need; the
    oldest sessions go first past `limit`. (Kept here rather than in a gr.State: a State makes the
    page hold a heartbeat connection open.)"""

    def __init__(self, limit: int = REMEMBERED_SESSIONS) -> None:
        self.limit = limit
        self._sessions: OrderedDict[str, BrowsingSession] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session: str | None) -> BrowsingSession | None:
        """The session's state, made on first use; None without a session (no browser)."""
        if not session:
            return None
        with self._lock:
            state = self._sessions.setdefault(session, BrowsingSession())
            self._sessions.move_to_end(session)
            while len(self._sessions) > self.limit:
                self._sessions.popitem(last=False)
            return state


@dataclass(frozen=True)
class SearchAnswer:
    """A search as the page shows it: the engine's result, the (thumbnail, caption) of each hit the
    page can show, and the status line."""

    result: SearchResult
    items: list[tuple[str, str]]
    status: str


@dataclass(frozen=True)
class AddedPhotos:
    """What 'Describe and add' did: the message, the collection menu now, and the collection chosen."""

    message: str
    choices: list[str]
    chosen: str


AddProgress = Callable[[int, int | None], None]  # (images described, images in all); None: still unpacking


class SearchPage:
    """What the page's events call: the search engine plus the labels the page shows."""

    def __init__(self, engine: SearchEngine, index_root: Path, uploads: Uploads | None = None) -> None:
        self.engine = engine
        self.index_root = Path(index_root)
        self.uploads = uploads
        self.indexes, self.broken = scan_indexes(engine.index_dir)
        self._thumbnails: dict[tuple[Path, str], ThumbnailFolder] = {}
        self.sessions = BrowsingSessions()

    def source(self, collection: str | None, session: str | None = None) -> ServedCollection:
        """The engine that serves a choice of the collection menu, the collection's own name there,
        and its thumbnails' folder: a visitor's uploaded collection ("uploaded: NAME") is searched
        by their session's engine."""
        uploaded = bool(collection) and collection.startswith(UPLOADED)
        name = collection[len(UPLOADED):] if uploaded else collection
        return served_collection(self.engine, self.uploads, session, name, uploaded=uploaded)

    def served(self, collection: str, image: str, session: str | None = None) -> str | None:
        """The thumbnail the page shows for an indexed image (never the image file itself); None if
        the image cannot be read."""
        try:
            return self.thumbnail(collection, image, session)
        except ImageError as error:
            logger.warning("no thumbnail for %s/%s: %s", collection, image, error)
            return None

    def thumbnail(self, collection: str, image: str, session: str | None = None) -> str:
        """The thumbnail of an indexed image, made if needed. Raises ImageError."""
        source = self.source(collection, session)
        key = (source.engine.index_dir, source.name)
        if key not in self._thumbnails:
            record = source.engine.record(source.name)
            # A bundle's thumbnails were made at its own size: use them as they are.
            size = record.thumbnail_max_side or DEFAULT_MAX_SIDE
            self._thumbnails[key] = ThumbnailFolder(source.thumbnails, source.name, record.root, size)
        return str(self._thumbnails[key].thumbnail(image))

    def collections(self) -> list[str]:
        return sorted({info.collection for info in self.indexes})

    def collection_choices(self, session: str | None = None) -> list[str]:
        """The collection menu: the served collections, then this session's uploaded ones."""
        uploaded = self.uploads.names(session) if self.uploads else []
        return self.collections() + [UPLOADED + name for name in uploaded]

    def _infos(self, collection: str | None, session: str | None = None) -> tuple[list[IndexInfo], str | None]:
        if collection and collection.startswith(UPLOADED):
            source = self.source(collection, session)
            return [i for i in source.engine.available() if i.collection == source.name], source.name
        return [i for i in self.indexes if i.collection == collection], collection

    def recipe_choices(self, collection: str | None, session: str | None = None) -> list[tuple[str, str]]:
        """(label, recipe key) of the collection's indexes: the study's six, then the newer backbones, each in
        registry order."""
        order = list(BACKBONES)
        infos = sorted(
            self._infos(collection, session)[0],
            key=lambda i: (list(Family).index(BACKBONES[i.backbone].family), order.index(i.backbone), i.key),
        )
        return [(recipe_label(i), i.key) for i in infos]

    def can_verify(self, collection: str | None, recipe: str | None, session: str | None = None) -> bool:
        """Whether the index was built with local features (the page offers verification only there)."""
        if not collection or not recipe:
            return False
        try:
            source = self.source(collection, session)
            return source.engine.index(source.name, recipe).manifest.local_features is not None
        except CbirError:
            return False

    def default_recipe(self, collection: str | None, session: str | None = None) -> str | None:
        keys = [value for _, value in self.recipe_choices(collection, session)]
        return DEFAULT_BACKBONE if DEFAULT_BACKBONE in keys else (keys[0] if keys else None)

    def example_queries(self, collection: str | None, session: str | None = None) -> list[tuple[str, str, tuple | None]]:
        """(indexed image, caption, box) for the collection's own query images, or a few of its photos."""
        infos, name = self._infos(collection, session)
        if not collection or not infos:
            return []
        try:
            engine = self.source(collection, session).engine
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

    def example_gallery(self, collection: str | None, session: str | None = None) -> list[tuple[str, str]]:
        """(thumbnail, caption) of each example query the page can show."""
        examples = [(self.served(collection, image, session), caption)
                    for image, caption, _ in self.example_queries(collection, session)]  # fmt: skip
        return [(path, caption) for path, caption in examples if path is not None]

    def example_picture(self, collection: str, image: str, box: tuple | None, session: str | None = None) -> Image.Image:
        """An example query as the editor gets it: the image cropped to its box. A bundle has
        thumbnails only: the box, in the original's pixels, is scaled onto the thumbnail."""
        source = self.source(collection, session)
        record = source.engine.record(source.name)
        if not record.thumbnails_only:
            path = record.root / image
            return crop_box(load_image(path), box) if box else load_image(path)
        picture = load_image(self.served(collection, image, session))
        size = (record.image_sizes or {}).get(Path(image).stem)
        if box and size:
            scale_x, scale_y = picture.width / size[0], picture.height / size[1]
            box = (box[0] * scale_x, box[1] * scale_y, box[2] * scale_x, box[3] * scale_y)
            return crop_box(picture, box)
        return picture

    def example_chosen(self, collection: str | None, index: int | None, session: str | None = None) -> Image.Image | None:
        """The example query clicked (its position in the examples), as the query photo; None if
        there is no such example (the examples changed meanwhile)."""
        examples = self.example_queries(collection, session)
        if not examples or index is None or index >= len(examples):
            return None
        image, _, box = examples[index]
        return self.example_picture(collection, image, box, session)

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
        verify: bool = False,
        diffusion: bool = False,
        session: str | None = None,
    ) -> SearchAnswer:
        """The page's search (API `/search_photo`): a photo file, the box drawn on it in the photo's
        pixels ("left,top,right,bottom"; empty: the whole photo), then as `search`. `verify`: re-rank
        the top 100 by spatial verification with local features (indexes built with them);
        `diffusion`: re-rank by diffusion over the collection's k-NN graph."""
        if not photo:
            raise PageError("Add an image first: upload, paste or take a photo, then drag a box on the part to search.")
        return self._search(photo, parse_box(box), collection, recipe, metric, k, expand, expand_n, expand_alpha,
                            session, verify=verify, diffusion=diffusion)  # fmt: skip

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
        session: str | None = None,
    ) -> SearchAnswer:
        """API `/search`, kept for clients written before `/search_photo`: the query as an image
        editor's value (its composite, else its background). Returns as `search_photo`."""
        image = query_image(editor)
        if image is None:
            raise PageError("Add an image first: upload, paste or take a photo, then crop the part to search.")
        return self._search(image, None, collection, recipe, metric, k, expand, expand_n, expand_alpha, session)

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
        session: str | None,
        *,
        verify: bool = False,
        diffusion: bool = False,
    ) -> SearchAnswer:
        """Problems a user can fix are CbirErrors. `expand`: re-rank with α-weighted query
        expansion, reading the top `expand_n` results; `verify` and `diffusion` as `search_photo`.
        In that order: verified first, expanded with the verified, then diffused."""
        if not collection or not recipe:
            raise PageError("No index is built yet. Build one with: python build_index.py --dataset oxford5k")
        if metric not in METRICS:
            raise PageError(f"Choose a metric: {', '.join(METRICS)}.")
        k, expand_n, expand_alpha = TOP_K.check(k), EXPANSION_READ.check(expand_n), EXPANSION_ALPHA.check(expand_alpha)
        k = DEFAULT_K if k is None else k
        expansion = AlphaQueryExpansion(QUERY_EXPANSION_NEIGHBOURS if expand_n is None else expand_n,
                                        QUERY_EXPANSION_ALPHA if expand_alpha is None else expand_alpha)  # fmt: skip
        source = self.source(collection, session)
        searched = SearchedQuery(image if isinstance(image, str) else None, box, collection, recipe)
        rerankers: list = []
        if verify:
            loaded = source.engine.index(source.name, recipe)
            if loaded.manifest.local_features is None:
                raise PageError(f"{recipe} of {source.name} has no local features to verify with: build it with "
                                f"them: {loaded.manifest.rebuild_command(loaded.folder)} --local-features")  # fmt: skip
            rerankers.append(RememberingVerification(remember=searched.remember))
        if expand:
            rerankers.append(expansion)
        if diffusion:
            rerankers.append(Diffusion())
        result = source.engine.search(
            image, collection=source.name, recipe=recipe, metric=metric, k=k, box=box, name="the uploaded image",
            rerankers=tuple(rerankers),
        )  # fmt: skip
        thumbnails, left_out = {}, []
        for hit in result.hits:
            try:
                thumbnails[hit.image] = self.thumbnail(collection, hit.image, session)
            except ImageError as error:  # deleted or damaged since the build: counted apart, with why
                left_out.append(LeftOut(hit.image, str(error).removeprefix(f"{hit.image}: ")))
        if left_out:
            logger.warning("%s: %d hits not shown, first: %s", collection, len(left_out), left_out[0])
        line = status_line(result, left_out)
        if rerankers:  # on the first line, before any warning
            first, _, rest = line.partition("\n")
            labels = " then ".join(reranker.label for reranker in rerankers)
            line = f"{first} · re-ranked by {labels}" + (f"\n{rest}" if rest else "")
        browsing = self.sessions.get(session)
        if browsing is not None:
            browsing.collection, browsing.shown = collection, [h.image for h in result.hits if h.image in thumbnails]
            browsing.selected = None
            browsing.query = searched
        return SearchAnswer(result, gallery_items(result, thumbnails.get), line)

    def select_result(self, index: int | None, session: str | None = None) -> None:
        """A click on a result: remembered for 'search with the selected result'."""
        browsing = self.sessions.get(session)
        if browsing is not None:
            browsing.selected = index

    def result_as_query(self, photo: str | None, box: str | None, session: str | None = None) -> Image.Image:
        """'Search with the selected result': the clicked result becomes the query (the current one
        is kept, for 'previous query')."""
        browsing = self.sessions.get(session)
        # The click's own event may still be on its way (events run concurrently): give it a moment.
        deadline = time.monotonic() + SELECT_GRACE_SECONDS
        while browsing is not None and browsing.selected is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if browsing is None or browsing.selected is None or not 0 <= browsing.selected < len(browsing.shown):
            raise PageError("Click a result first, then 'Search with the selected result'.")
        picture = self.example_picture(browsing.collection, browsing.shown[browsing.selected], None, session)
        if photo:  # kept as it was searched: the photo cut to its box
            current = crop_box(load_image(photo, limits=DEFAULT_LIMITS), parse_box(box)).convert("RGB")
            current.thumbnail((HISTORY_SIDE, HISTORY_SIDE))  # ten per session, a thousand sessions: kept small
            browsing.history = [current, *browsing.history][:MAX_HISTORY]
        return picture

    def previous_query(self, session: str | None = None) -> Image.Image:
        """'Previous query': the query before the last 'search with the selected result'."""
        browsing = self.sessions.get(session)
        if browsing is None or not browsing.history:
            raise PageError("There is no previous query: 'Search with the selected result' keeps one.")
        return browsing.history.pop(0)

    def add_photos(
        self, files: list[str] | None, name: str, backbone: str, session: str | None, on_progress: AddProgress | None = None
    ) -> AddedPhotos:
        """'Your photos': describe what a visitor sent as a collection of theirs, then make it the
        collection searched."""
        if self.uploads is None:
            raise PageError("Adding photos is off on this server: start it with --uploads to allow it.")
        if not session:
            raise PageError("Adding photos needs the page (a browser session).")
        if not files:
            raise PageError("Choose some photos (or a zip of them) first.")
        if backbone not in BACKBONES:
            raise PageError(f"Choose a backbone: {', '.join(BACKBONES)}.")
        report = on_progress or (lambda done, total: None)
        report(0, None)
        started = time.perf_counter()
        added = self.uploads.add(session, [Path(file) for file in files], name or "my-photos", BACKBONES[backbone], report)
        skipped = added.engine.index(added.name, added.outcomes[0].key).manifest.skipped if added.outcomes else []
        described = added.outcomes[0].n_images if added.outcomes else 0
        lines = [
            f"**{added.name}**: {described} images described with {backbone} in "
            f"{time.perf_counter() - started:.0f} s, now the collection searched ("
            + ("kept on this computer)." if self.uploads.keep else "yours alone; removed when you close the page).")
        ]
        left_out = [f"{item.image}: {item.reason}" for item in skipped] + [f"{n}: {why}" for n, why in added.ignored]
        if left_out:
            lines.append(f"Left out ({len(left_out)}):\n" + "\n".join(f"- {readable(line)}" for line in left_out[:20]))
        return AddedPhotos("\n\n".join(lines), self.collection_choices(session), UPLOADED + added.name)

    def end_session(self, session: str | None) -> None:
        """The page was closed: its uploaded collections go."""
        if self.uploads is None or self.uploads.keep or not session:
            return
        folder = self.uploads.folder(session)
        for key in [key for key in list(self._thumbnails) if key[0].is_relative_to(folder)]:
            self._thumbnails.pop(key, None)
        self.uploads.drop(session)

    def explain_result(self, index: int | None, session: str | None = None) -> MatchExplanation | None:
        """Why the result at `index` (gallery order) of the session's last search matches
        (cbir_ui.explanations). None when there is nothing to explain (no search with a photo in
        this session, or no such result). The result's picture is read from the indexed image the
        session was shown, never from a path a client sent."""
        browsing = self.sessions.get(session)
        searched = None if browsing is None else browsing.query
        if searched is None or searched.photo is None or index is None or not 0 <= index < len(browsing.shown):
            return None
        return explain(self, searched, browsing.shown[index], session, visitors=searched.collection.startswith(UPLOADED))


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
        raise PageError(f"A box is four numbers, left,top,right,bottom in the photo's pixels (got {text[:40]!r}).")
    return tuple(numbers)


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
