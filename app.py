"""The web page: crop a region of a photo, pick a backbone, a distance and k, see ranked results;
a second tab shows the measured mAP tables.

    python app.py                                  # Oxford5k + Xception (built on first start)
    python app.py --images ~/photos --weights none # your own folder, no download (untrained!)

Start-up and command line only: the page is `cbir_ui`; the search, the builds and the evaluation
all live in `cbir`.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys
from pathlib import Path

from PIL import Image

from cbir.backbones import DEFAULT_BACKBONE
from cbir.errors import CbirError
from cbir.images import DEFAULT_LIMITS
from cbir.search import SearchEngine
from cbir.uploads import PrivateCollections as Uploads
from cbir_ui.page import DEFAULT_QUEUE_SIZE, launch

logger = logging.getLogger("app")


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
    launch(engine, arguments.index_dir, uploads, host=arguments.host, port=arguments.port, share=arguments.share,
           queue_size=arguments.queue_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
