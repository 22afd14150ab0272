"""How long a Space-like start takes (`SPACE_ID` set, `python app.py`), from the process's start to
its page answering: with no bundle set (the page saying what to set), and with a bundle served
over local HTTP, from a cold cache (download, check, unpack) and a warm one.

    python bench/space_start.py                 # a 5,063-image xception bundle, 3 starts of each
    python bench/space_start.py --quick         # 200 images

The bundle is made as bench/bundle.py makes it (synthetic images, clustered descriptors).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bench.common import write_report  # noqa: E402
from bench.e2e import OXFORD5K_IMAGES, clustered_descriptors  # noqa: E402


def seconds_to_page(scratch: Path, log: Path, env: dict[str, str], *options: str) -> float:
    """`SPACE_ID=... python app.py OPTIONS` on a free port: seconds until its page answers (then stopped)."""
    from served_app import free_port

    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, str(REPO / "app.py"), "--port", str(port), *options],
        cwd=scratch,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "GRADIO_ANALYTICS_ENABLED": "False", "SPACE_ID": "bench/space",
             **env},  # fmt: skip
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )
    try:
        while True:
            if process.poll() is not None:
                raise SystemExit("the app stopped: " + log.read_text()[-2000:])
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                return time.perf_counter() - started
            except OSError:
                time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(timeout=60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=OXFORD5K_IMAGES)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    arguments = parser.parse_args(argv)
    name = "space_start"
    if arguments.quick:
        arguments.images, name = 200, "space_start-quick"
    command = "python bench/space_start.py " + " ".join(argv if argv is not None else sys.argv[1:])

    from fake_datasets import serve_directory
    from synthetic import make_gallery

    from cbir.trunks import keras_versions
    from cbir.bundle import export_bundle
    from cbir.datasets import folder_collection
    from cbir.index import Manifest, StoreSpec, write_index
    from cbir.layout import IndexLayout, write_collection_record
    from cbir.recipe import Recipe

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        make_gallery(scratch / "photos", arguments.images, width=1024, height=768)
        collection = folder_collection(scratch / "photos", "bench")
        layout = IndexLayout(scratch / "indexes")
        write_collection_record(layout, collection)
        recipe = Recipe.create("xception", weights="none")
        manifest = Manifest("bench", recipe, list(collection.images), store=StoreSpec("annoy", {"n_trees": 100}),
                            versions=keras_versions())  # fmt: skip
        descriptors = clustered_descriptors(len(collection.images), recipe.dim)
        write_index(layout.index_dir("bench", recipe.key), descriptors, manifest)
        (scratch / "served").mkdir()
        export_bundle(layout.root, "bench", scratch / "served" / "bench.tar", source="synthetic", terms="synthetic",
                      progress=False)  # fmt: skip
        size_mb = (scratch / "served" / "bench.tar").stat().st_size / 2**20
        with serve_directory(scratch / "served") as base:
            bundled = {"CBIR_BUNDLE": f"{base}/bench.tar"}
            cache = ("--cache-dir", str(scratch / "cache"))
            cases = {"no bundle set": ({}, (), False), "bundle, cold cache": (bundled, cache, True),
                     "bundle, warm cache": (bundled, cache, False)}  # fmt: skip
            for case, (env, options, cold) in cases.items():
                times = []
                for run in range(arguments.repeats):
                    if cold:
                        shutil.rmtree(scratch / "cache", ignore_errors=True)
                    log = scratch / f"app-{len(rows)}-{run}.log"
                    times.append(seconds_to_page(scratch, log, env, "--index-dir", str(scratch / "empty"), *options))
                rows.append({"start": case, "median_seconds": round(statistics.median(times), 1),
                             "seconds": [round(t, 1) for t in times]})  # fmt: skip
                print(rows[-1], flush=True)
    report = {"command": command, "cores": os.cpu_count(), "images": arguments.images, "bundle_mb": round(size_mb, 1),
              "rows": rows}  # fmt: skip
    title = (f"# Space start: `{command}`\n\n`SPACE_ID` set, seconds from `python app.py` to its page answering; "
             f"bundle of {arguments.images} images (xception, {report['bundle_mb']} MB) served over local HTTP, "
             f"{os.cpu_count()} cores shared with other work.")  # fmt: skip
    table = [[row["start"], row["median_seconds"], ", ".join(map(str, row["seconds"]))] for row in rows]
    write_report(arguments.out, name, report, title, ["start", "median s", "each start, s"], table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
