"""The web page: crop a region of a photo, pick a backbone, a distance and k, see ranked results;
a second tab shows the measured mAP tables.

    python app.py                                  # Oxford5k + Xception (built on first start)
    python app.py --images ~/photos --weights none # your own folder, no download (untrained!)

Command line only: starting the page is `cbir_ui.server`, the page `cbir_ui`; the search, the
builds and the evaluation all live in `cbir`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cbir.backbones import DEFAULT_BACKBONE
from cbir_ui.server import DEFAULT_QUEUE_SIZE


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


def main(argv: list[str] | None = None) -> int:
    from cbir_ui.server import ServeOptions, serve

    return serve(ServeOptions(**vars(parse_arguments(argv))))


if __name__ == "__main__":
    sys.exit(main())
