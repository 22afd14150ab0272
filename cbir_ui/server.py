"""Starting the page: what `python app.py` (and `cbir serve`) does once its options are parsed.

`serve(ServeOptions(...))` opens a bundle or builds what the page needs, then serves it until
SIGTERM or SIGINT, and returns the exit code. It prints messages, never a traceback, for problems
a user can fix.

On a Hugging Face Space (`SPACE_ID` set) it never stops for want of data: with no bundle set it
serves a page saying what the Space's owner must set; with a bundle that cannot be fetched it says
why on the page and tries again when someone visits (`LateBundle`). Until a collection is there,
visitors can try their own photos.

Visitors' files live in this run's own folders (`RunFolders`: the uploads, and Gradio's cache via
GRADIO_TEMP_DIR), named after the process id: a stop by SIGTERM or SIGINT removes them, and a start
removes those of earlier runs that are no longer running (a crash, SIGKILL).

Gradio is imported only when the page is built, after GRADIO_TEMP_DIR names this run's folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cbir.backbones import DEFAULT_BACKBONE
from cbir.errors import CbirError

logger = logging.getLogger(__name__)

# Searches waiting at once, beyond the one running; past it a visitor is told at once that the app
# is busy and to retry ("Queue is full"), before any work. Searches run one at a time (a forward
# pass already uses every core), so the last in the queue waits about this many search times:
# bench/results/load.md measures them (docs/performance.md, "Load").
DEFAULT_QUEUE_SIZE = 120
# A bundle that could not be fetched is tried again on a visit, at most this often.
BUNDLE_RETRY_SECONDS = 60
# How long a visit waits for the attempt it started before the page says "still fetching".
VISIT_WAIT_SECONDS = 5
# Between a late bundle's arrival and the page restarting with it: time for that visit's answer.
RELAUNCH_DELAY_SECONDS = 2
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class ServeOptions:
    """What the page is started with; the command line builds it (environment defaults are its job)."""

    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    index_dir: Path = Path("indexes")
    data_dir: Path = Path("data")
    mirror: str | None = None
    images: Path | None = None
    name: str | None = None
    no_build: bool = False
    bundle: str | None = None
    cache_dir: Path = Path.home() / ".cache" / "cbir"
    weights: str = "imagenet"
    backbones: str = DEFAULT_BACKBONE
    input_size: int | None = None
    uploads: str = "auto"
    keep_uploads: Path | None = None
    queue_size: int = DEFAULT_QUEUE_SIZE


def on_space() -> bool:
    """Whether this runs on a Hugging Face Space (which sets SPACE_ID)."""
    return bool(os.environ.get("SPACE_ID"))


def build_at_start(options: ServeOptions) -> None:
    """Build what the page needs before serving: the user's folder, or the default collection."""
    from cbir.backbones import parse_backbones
    from cbir.build import BuildSettings, build_indexes
    from cbir.datasets import folder_collection, prepare_dataset
    from cbir.catalogue import scan_indexes

    if options.images is not None:
        collection = folder_collection(options.images, options.name or options.images.resolve().name)
    elif any(scan_indexes(options.index_dir)):  # whole or damaged: the page shows them, with the fix
        return
    else:
        logger.info("no index under %s: building Oxford5k with %s first", options.index_dir, options.backbones)
        collection = prepare_dataset("oxford5k", _download_settings(options))
    settings = BuildSettings(index_dir=options.index_dir, recipe=_recipe(options))
    build_indexes(collection, parse_backbones(options.backbones), settings)


def _recipe(options: ServeOptions):
    """The recipe choices of what this app builds: its weights (and test-only input size)."""
    from cbir.recipe import RecipeSettings
    from cbir.weights import Weights

    return RecipeSettings(weights=Weights.parse(options.weights), input_size=options.input_size)


def _download_settings(options: ServeOptions):
    from cbir.datasets import DownloadSettings

    return DownloadSettings.from_env(data_dir=options.data_dir, mirror=options.mirror)


def first_start_help(error: Exception, options: ServeOptions) -> str:
    """What to do when the default first start (download Oxford5k) cannot go on: three ways, each a
    command to copy."""
    return (
        f"error: {error}\n\n"
        "Three ways on:\n"
        "  1. Oxford5k itself: ask for access at https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/, then\n"
        "       CBIR_DATA_USER=... CBIR_DATA_PASSWORD=... python app.py\n"
        f"     or place the archives in {options.data_dir / 'oxford5k'} (or pass --mirror URL) and run python app.py\n"
        "  2. A bundle someone built (no images, no build):\n"
        "       python app.py --bundle https://.../oxford5k.tar\n"
        "  3. Your own photos:\n"
        "       python app.py --images ~/Pictures"
    )


def uploads_enabled(options: ServeOptions, collection_served: bool = True) -> bool:
    """'Your photos' is on for a local run; a public link, a Space or a server listening beyond this
    machine would let anyone spend its CPU and disk, so there it takes --uploads on. A Space with no
    collection yet (its bundle not set or not fetched) offers it in auto: it is all the page can do."""
    if options.uploads != "auto":
        return options.uploads == "on"
    if on_space() and not collection_served:
        return True
    local = options.host in ("127.0.0.1", "localhost", "::1")
    return local and not (options.share or on_space())


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


# -- What the page says while a Space has no collection ------------------------------------------

YOUR_PHOTOS_MEANWHILE = (
    "Meanwhile you can try **your own photos**: open the **Your photos** tab, send a few images (or a zip), "
    "and search them. They are yours alone for this visit: no other visitor sees them, and they are deleted "
    "when you close the page or the server stops."
)


def space_setup_notice() -> str:
    """The page of a Space that has no bundle set: what its owner must set, and what a visitor can do."""
    return (
        "**No collection is served yet: this Space needs its bundle.** For the Space's owner: in the Space's "
        "*Settings → Variables and secrets*, add the variable `CBIR_BUNDLE`, the URL of a bundle made by "
        "`python build_index.py --export-bundle` (for example "
        "`https://huggingface.co/datasets/USER/REPO/resolve/main/oxford5k.tar`); if that repository is private, "
        "add the secret `HF_TOKEN` too (a token that can read it). The Space then restarts and serves it.\n\n"
        + YOUR_PHOTOS_MEANWHILE
    )


def build_failed_notice(error: BaseException) -> str:
    """The page of a Space whose start-up build failed."""
    return f"**No collection is served: building it failed.** {_describe(error)}\n\n" + space_setup_notice()


def shown_location(location: str) -> str:
    """A bundle's location as the page shows it: a URL without its query, fragment or credentials."""
    if "://" not in location:
        return location
    parts = urlsplit(location)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and not isinstance(error, CbirError):
        return f"{error.strerror or error}: {error.filename or ''}"
    return str(error)


class LateBundle:
    """A bundle that could not be opened at start (its server down, a token missing): each visit
    to the page tries it again, at most once per BUNDLE_RETRY_SECONDS and in the background, and
    the page says why it is not there yet. `arrived` is set once it opens; `index_dir` is then its
    index root. Implements cbir_ui.page.PageNotice."""

    def __init__(self, options: ServeOptions, error: BaseException) -> None:
        self.options = options
        self.error: BaseException | None = error
        self.arrived = threading.Event()
        self.index_dir: Path | None = None
        self._tried = time.monotonic()
        self._attempt: threading.Thread | None = None
        self._lock = threading.Lock()

    def text(self) -> str:
        location = self.options.bundle or ""
        where = f"`CBIR_BUNDLE` = `{shown_location(location)}`"
        if self.arrived.is_set():
            return "**The collection has arrived.** The page restarts with it: reload it in a few seconds."
        if self._attempt is not None:
            return f"**Fetching the collection** ({where}) now: reload the page in a minute."
        wait = max(0, round(self._tried + BUNDLE_RETRY_SECONDS - time.monotonic()))
        return (
            f"**The collection could not be fetched** ({where}): "
            f"{_describe(self.error).replace(location, shown_location(location))}\n\n"
            "The next visit to this page tries again"
            + (". " if wait == 0 else f" (once {wait} s have passed: at most once a minute). ")
            + "For the Space's owner: check the URL; a private repository needs the secret `HF_TOKEN`.\n\n"
            + YOUR_PHOTOS_MEANWHILE
        )

    def on_visit(self) -> str:
        with self._lock:
            due = time.monotonic() - self._tried >= BUNDLE_RETRY_SECONDS
            if not self.arrived.is_set() and self._attempt is None and due:
                self._attempt = threading.Thread(target=self._try, name="late-bundle", daemon=True)
                self._attempt.start()
            attempt = self._attempt
        if attempt is not None:
            attempt.join(VISIT_WAIT_SECONDS)
        return self.text()

    def _try(self) -> None:
        from cbir.bundle import open_bundle

        logger.info("trying the bundle again: %s", shown_location(self.options.bundle or ""))
        try:
            index_dir = open_bundle(self.options.bundle, self.options.cache_dir, _download_settings(self.options).http)
        except Exception as error:  # noqa: BLE001 (whatever it is, the page says it, and the next visit retries)
            if not isinstance(error, (CbirError, OSError)):
                logger.exception("the bundle could not be opened")
            with self._lock:
                self.error, self._tried, self._attempt = error, time.monotonic(), None
            return
        with self._lock:
            self.index_dir = index_dir
            self.arrived.set()
            self._attempt = None


# -- This run's folders, and stopping ------------------------------------------------------------


@dataclass(frozen=True)
class RunFolders:
    """Where this run keeps visitors' files: `uploads` (their collections) and `gradio_cache`
    (Gradio's copies of what they send and are sent), each a folder named after this process."""

    uploads: Path
    gradio_cache: Path

    @classmethod
    def claim(cls) -> RunFolders:
        """Sweep the folders of earlier runs that are no longer running, then make this run's. The
        uploads stay under the system's temporary folder (Gradio sends files from there); Gradio's
        cache goes under GRADIO_TEMP_DIR if it is set, else beside the uploads."""
        from cbir.uploads import run_folder, sweep_leftover_runs

        temporary = Path(tempfile.gettempdir())
        chosen = Path(os.environ["GRADIO_TEMP_DIR"]) if os.environ.get("GRADIO_TEMP_DIR") else None
        for base in (temporary, chosen) if chosen is not None else (temporary,):
            for folder in sweep_leftover_runs(base):
                logger.info("removed %s, left by a run that ended without cleaning up", folder)
        run = run_folder(temporary)
        apart = chosen is not None and chosen.resolve() != temporary.resolve()
        return cls(uploads=run / "uploads", gradio_cache=run_folder(chosen) if apart else run / "gradio")

    def remove(self) -> None:
        for folder in (self.uploads.parent, self.gradio_cache):
            shutil.rmtree(folder, ignore_errors=True)


class StopRequested(BaseException):
    """SIGTERM or SIGINT: the server stops, cleaning up as it unwinds (a BaseException, as
    KeyboardInterrupt, so no `except Exception` on the way swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def stopping_on_signals() -> Iterator[None]:
    """Within: SIGTERM (how Spaces and process managers stop a server) and SIGINT raise
    StopRequested in the main thread; once one has, further ones are ignored until the clean-up
    is done. Outside the main thread (signals cannot be handled there) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, _frame):
        for number in STOP_SIGNALS:
            signal.signal(number, signal.SIG_IGN)
        raise StopRequested(signum)

    previous = {number: signal.signal(number, stop) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextmanager
def gradio_cache_in(folder: Path) -> Iterator[None]:
    """GRADIO_TEMP_DIR names `folder` within (Gradio reads it when a page is built and served)."""
    before = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = before


# -- Serving -------------------------------------------------------------------------------------


@dataclass
class StartingPoint:
    """What the first page serves: an index root, and what the page says at its top."""

    index_dir: Path
    notice: str | LateBundle | None = None


def open_collections(options: ServeOptions) -> StartingPoint:
    """Open the bundle or build what the page needs. Off a Space, failures raise; on a Space the
    page serves anyway, saying what is missing."""
    if options.bundle:
        from cbir.bundle import open_bundle

        try:
            return StartingPoint(open_bundle(options.bundle, options.cache_dir, _download_settings(options).http))
        except (CbirError, OSError) as error:
            if not on_space():
                raise
            logger.warning("the bundle could not be opened (tried again on the next visit): %s", _describe(error))
            return StartingPoint(options.index_dir, LateBundle(options, error))
    if on_space() and options.images is None:
        from cbir.catalogue import scan_indexes

        # A Space never downloads a dataset at start: it serves what is there, or says what to set.
        return StartingPoint(options.index_dir, None if any(scan_indexes(options.index_dir)) else space_setup_notice())
    if not options.no_build:
        try:
            build_at_start(options)
        except (CbirError, OSError) as error:
            if not on_space():
                raise
            return StartingPoint(options.index_dir, build_failed_notice(error))
    return StartingPoint(options.index_dir)


def serve(options: ServeOptions) -> int:
    """Serve the page until SIGTERM or SIGINT; the exit code (2: it could not start)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if port_taken(options.host, options.port):
        print(
            f"error: port {options.port} on {options.host} is in use (another app.py?): choose another with "
            f"--port {options.port + 1} or GRADIO_SERVER_PORT={options.port + 1}",
            file=sys.stderr,
        )
        return 2
    with stopping_on_signals():
        try:
            folders = RunFolders.claim()
        except StopRequested:
            return 0
        try:
            with gradio_cache_in(folders.gradio_cache):
                return _start_and_serve(options, folders)
        except StopRequested:
            logger.info("stopped: visitors' files removed")
            return 0
        finally:
            folders.remove()


def _start_and_serve(options: ServeOptions, folders: RunFolders) -> int:
    from cbir.datasets import DatasetError

    try:
        start = open_collections(options)
    except StopRequested as stop:
        print("\ninterrupted: finished work is kept; start again to resume", file=sys.stderr)
        return 128 + stop.signum
    except DatasetError as error:
        if options.images is None and not options.bundle:
            print(first_start_help(error, options), file=sys.stderr)
        else:
            print(f"error: {error}", file=sys.stderr)
        return 2
    except CbirError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk, a folder that cannot be written: say which, no traceback
        print(f"error: {_describe(error)}", file=sys.stderr)
        return 2
    _serve_pages(options, folders, start)
    return 0


def _serve_pages(options: ServeOptions, folders: RunFolders, start: StartingPoint) -> None:
    """Serve the page until a stop; when a late bundle arrives, serve a new page over it (on the
    same port, in this process: the networks stay loaded)."""
    from PIL import Image

    from cbir.images import DEFAULT_LIMITS
    from cbir.trunks import ExtractorCache
    from cbir.search import SearchEngine
    from cbir_ui.page import launch

    # Pillow's own decompression-bomb guard at the app's limit too, for anything decoded here.
    Image.MAX_IMAGE_PIXELS = DEFAULT_LIMITS.max_pixels
    extractors = ExtractorCache()
    while True:
        engine = SearchEngine(start.index_dir, extractors=extractors)
        uploads = _uploads(options, folders, engine, collection_served=bool(engine.available()))
        demo = None
        try:
            demo = launch(engine, start.index_dir, uploads, host=options.host, port=options.port,
                          share=options.share, queue_size=options.queue_size, notice=start.notice,
                          block=False)  # fmt: skip
            late = start.notice if isinstance(start.notice, LateBundle) else None
            arrived = late.arrived if late is not None else threading.Event()  # never set: serve until a stop
            while not arrived.wait(1.0):
                pass
            logger.info("the bundle has arrived: serving a new page over it")
            time.sleep(RELAUNCH_DELAY_SECONDS)
            start = StartingPoint(late.index_dir)
        finally:
            if uploads is not None:
                uploads.close()  # this page's visitors' photos go with it, first: closing the server may take seconds
            if demo is not None:
                demo.close()


def _uploads(options: ServeOptions, folders: RunFolders, engine, collection_served: bool):
    """Where the 'Your photos' tab keeps what visitors add (None: no such tab)."""
    if not uploads_enabled(options, collection_served):
        return None
    from cbir.build import BuildSettings
    from cbir.uploads import PrivateCollections

    # The same weights (and test-only input size) as the collections this app builds.
    settings = BuildSettings(recipe=_recipe(options))
    if options.keep_uploads is not None:
        return PrivateCollections(options.keep_uploads, settings, engine.extractors, keep=True)
    return PrivateCollections(folders.uploads, settings, engine.extractors)
