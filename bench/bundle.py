"""A bundle of an Oxford5k-sized collection: its size, and how long `app.py --bundle URL` takes to
serve its page from a cold cache (download, check, unpack) and from a warm one; the app's memory
after a search with each backbone.

    python bench/bundle.py                          # 5,063 images, xception, served over local HTTP
    python bench/bundle.py --backbones all          # all six index folders in one bundle
    python bench/bundle.py --quick                  # 200 images

The collection is synthetic: 1024 x 768 JPEGs (thumbnails are made from them, 512 px) and clustered
descriptors of each backbone's real width (the bundle's size depends on the widths, not on the
values); a query then runs the real network with random weights at its full input size.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bench.common import write_report  # noqa: E402
from bench.e2e import OXFORD5K_IMAGES, clustered_descriptors  # noqa: E402
from bench.load import start_app  # noqa: E402


def app_resident_megabytes(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=OXFORD5K_IMAGES)
    parser.add_argument("--backbones", default="xception")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    arguments = parser.parse_args(argv)
    name = "bundle"
    if arguments.quick:
        arguments.images, name = 200, "bundle-quick"
    command = "python bench/bundle.py " + " ".join(argv if argv is not None else sys.argv[1:])

    from fake_datasets import serve_directory
    from gradio_client import Client, handle_file
    from synthetic import make_gallery

    from cbir.backbones import parse_backbones
    from cbir.trunks import keras_versions
    from cbir.bundle import export_bundle
    from cbir.datasets import folder_collection
    from cbir.index import Manifest, StoreSpec, write_index
    from cbir.layout import IndexLayout, write_collection_record
    from cbir.recipe import Recipe

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        started = time.perf_counter()
        make_gallery(scratch / "photos", arguments.images, width=1024, height=768)
        collection = folder_collection(scratch / "photos", "bench")
        layout = IndexLayout(scratch / "indexes")
        write_collection_record(layout, collection)
        backbones = parse_backbones(arguments.backbones)
        for backbone in backbones:
            recipe = Recipe.create(backbone.name, weights="none")
            manifest = Manifest("bench", recipe, list(collection.images), store=StoreSpec("annoy", {"n_trees": 100}),
                                versions=keras_versions())  # fmt: skip
            write_index(layout.index_dir("bench", recipe.key), clustered_descriptors(len(collection.images), recipe.dim), manifest)
        prepared = time.perf_counter() - started
        served = scratch / "served"
        served.mkdir()
        started = time.perf_counter()
        export_bundle(layout.root, "bench", served / "bench.tar", source="synthetic", terms="synthetic", progress=False)
        export_seconds = time.perf_counter() - started
        size_mb = (served / "bench.tar").stat().st_size / 2**20
        query = make_gallery(scratch / "queries", 1, width=1024, height=768, start_seed=90_000)[0]
        rows = []
        with serve_directory(served) as base:
            common = ("--bundle", f"{base}/bench.tar", "--cache-dir", str(scratch / "cache"))
            for start in ("cold", "warm"):
                started = time.perf_counter()
                # An empty index folder: the page is served from the bundle only.
                process, url = start_app(scratch / "empty", scratch / f"app-{start}.log", *common)
                seconds = time.perf_counter() - started
                row = {"start": start, "seconds_to_page": round(seconds, 1), "resident_mb_at_start": app_resident_megabytes(process.pid)}
                if start == "warm":
                    client = Client(url, verbose=False, download_files=False)
                    for backbone in backbones:
                        editor = {"background": handle_file(str(query)), "layers": [], "composite": None}
                        client.predict(editor, "bench", backbone.name, "cosine", 12, api_name="/search")
                        row[f"resident_mb_after_{backbone.name}"] = app_resident_megabytes(process.pid)
                process.terminate()
                process.wait(timeout=60)
                rows.append(row)
                print(row, flush=True)
    report = {"command": command, "cores": os.cpu_count(), "images": arguments.images,
              "backbones": [b.name for b in backbones], "bundle_mb": round(size_mb, 1),
              "export_seconds": round(export_seconds, 1), "prepare_seconds": round(prepared, 1), "rows": rows}  # fmt: skip
    columns = ["start", "seconds to page", "resident MB at start", "resident MB after searching each backbone"]
    table = [[r["start"], r["seconds_to_page"], r["resident_mb_at_start"],
              ", ".join(f"{k.removeprefix('resident_mb_after_')} {v}" for k, v in r.items() if k.startswith("resident_mb_after_"))]
             for r in rows]  # fmt: skip
    title = (f"# Bundle: `{command}`\n\n{arguments.images} images, {', '.join(report['backbones'])}: bundle "
             f"{report['bundle_mb']} MB, exported in {report['export_seconds']} s (thumbnails made and checksummed), "
             f"served over local HTTP, {os.cpu_count()} cores.")  # fmt: skip
    write_report(arguments.out, name, report, title, columns, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
