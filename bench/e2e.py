"""End to end: query image -> ranked hits, per backbone, at Oxford5k size.

    python bench/e2e.py               # every backbone, 20 queries each, 5,063 indexed images
    python bench/e2e.py --quick       # xception only, small input, 5 queries

For each backbone an index of Oxford5k's size is written with the project's own writer
(descriptors drawn around cluster centres: search cost depends on N and the dimension, not on what
the vectors mean, and describing 5,063 photos with six networks would take hours on 2 cores).
Queries are real 1024 x 768 JPEGs described by the real network (random weights: same arithmetic as
ImageNet weights). Reported per backbone: median descriptor time, median search time of the app's
default path (`SearchEngine.search`, which scans exactly at this size) and of Annoy with exact
re-ranking (the path for larger collections), each as a share of the descriptor time, and the
resident memory of the process after that backbone has been used once.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from cbir.backbones import parse_backbones, resolve_input_size  # noqa: E402
from cbir.trunks import keras_versions  # noqa: E402
from cbir.datasets import Collection  # noqa: E402
from cbir.distances import Metric  # noqa: E402
from cbir.index import Manifest, StoreSpec, write_index  # noqa: E402
from cbir.layout import IndexLayout, write_collection_record  # noqa: E402
from cbir.recipe import Recipe  # noqa: E402
from cbir.search import SearchEngine  # noqa: E402
from cbir.stores.annoy import DEFAULT_CANDIDATES, DEFAULT_N_TREES  # noqa: E402
from bench.common import write_report  # noqa: E402

OXFORD5K_IMAGES = 5063


def resident_megabytes() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def clustered_descriptors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Non-negative, clustered, like pooled ReLU features."""
    rng = np.random.default_rng(seed)
    centres = rng.gamma(1.0, 1.0, size=(max(8, n // 50), dim)).astype(np.float32)
    rows = centres[rng.integers(0, len(centres), n)]
    return np.abs(rows + rng.normal(0, 0.3, size=(n, dim)).astype(np.float32))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="all")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--images", type=int, default=OXFORD5K_IMAGES, help="indexed images")
    parser.add_argument("--k", type=int, default=12)
    parser.add_argument("--quick", action="store_true", help="xception at 96 px, 5 queries, 2,000 images")
    parser.add_argument("--input-size", type=int, help="build networks smaller than their own size (smoke runs)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    arguments = parser.parse_args(argv)
    if arguments.quick:
        if arguments.backbones == "all":
            arguments.backbones = "xception"
        arguments.queries = 5
        if arguments.images == OXFORD5K_IMAGES:
            arguments.images = 2000
        arguments.input_size = arguments.input_size or 96
    command = "python bench/e2e.py " + " ".join(argv if argv is not None else sys.argv[1:])

    from synthetic import make_gallery

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        queries = make_gallery(scratch / "queries", arguments.queries, width=1024, height=768)
        index_root = scratch / "indexes"
        engine = SearchEngine(index_root)
        baseline_memory = resident_megabytes()
        for backbone in parse_backbones(arguments.backbones):
            size = resolve_input_size(
                backbone,
                None if backbone.fixed_input_size or not arguments.input_size else max(arguments.input_size, backbone.min_input_size),
            )
            descriptors = clustered_descriptors(arguments.images, backbone.dim)
            images = [f"image_{i:05d}.jpg" for i in range(arguments.images)]
            write_collection_record(IndexLayout(index_root), Collection("bench", scratch, tuple(images)))
            manifest = Manifest(
                collection="bench",
                recipe=Recipe.create(backbone.name, weights="none", input_size=size),
                images=images,
                store=StoreSpec("annoy", {"n_trees": DEFAULT_N_TREES}),
                versions=keras_versions(),
            )
            started = time.perf_counter()
            write_index(index_root / "bench" / backbone.name, descriptors, manifest)
            build_seconds = time.perf_counter() - started
            del descriptors

            describe, annoy, exact, total = [], [], [], []
            # The first query builds the network and maps the index: reported apart, not in the medians.
            started = time.perf_counter()
            engine.search(queries[0], collection="bench", recipe=backbone.name, k=arguments.k)
            first_query = time.perf_counter() - started
            loaded = engine.index("bench", backbone.name)
            default_is_exact = None
            for query in queries:
                started = time.perf_counter()
                result = engine.search(query, collection="bench", recipe=backbone.name, k=arguments.k)
                total.append(time.perf_counter() - started)
                describe.append(result.describe_seconds)
                exact.append(result.search_seconds)
                default_is_exact = result.exact
                vector = engine.describe(query, collection="bench", recipe=backbone.name)
                started = time.perf_counter()
                loaded.search(vector, Metric.COSINE, arguments.k, exact=False, candidates=DEFAULT_CANDIDATES)
                annoy.append(time.perf_counter() - started)
            row = {
                "backbone": backbone.name,
                "input_size": size,
                "dim": backbone.dim,
                "indexed_images": arguments.images,
                "index_build_seconds": round(build_seconds, 2),
                "first_query_seconds": round(first_query, 2),
                "describe_ms_median": round(1000 * statistics.median(describe), 2),
                "default_search_is_exact": default_is_exact,
                "exact_search_ms_median": round(1000 * statistics.median(exact), 3),
                "annoy_search_ms_median": round(1000 * statistics.median(annoy), 3),
                "total_ms_median": round(1000 * statistics.median(total), 2),
                "search_share_of_describe": round(statistics.median(exact) / statistics.median(describe), 4),
                "annoy_share_of_describe": round(statistics.median(annoy) / statistics.median(describe), 4),
                "resident_mb_after_use": round(resident_megabytes(), 1),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)

    report = {
        "benchmark": "e2e",
        "command": command.strip(),
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "versions": keras_versions(),
        "date": time.strftime("%Y-%m-%d"),
        "settings": {"k": arguments.k, "queries": arguments.queries, "n_trees": DEFAULT_N_TREES,
                     "candidates": DEFAULT_CANDIDATES, "metric": "cosine"},  # fmt: skip
        "resident_mb_before_any_backbone": round(baseline_memory, 1),
        "rows": rows,
    }
    write_report(
        arguments.out,
        "e2e-quick" if arguments.quick else "e2e",
        report,
        f"End to end, query image -> ranked hits, k={arguments.k}, {arguments.images} indexed images, median of "
        f"{arguments.queries} (`{report['command']}`, {report['cores']} cores, {report['date']})",
        ["backbone", "input", "descriptor ms", "exact search ms (default)", "share", "Annoy+rerank ms", "share",
         "total ms", "RSS after use MB"],
        [[row["backbone"], row["input_size"], row["describe_ms_median"], row["exact_search_ms_median"],
          f"{100 * row['search_share_of_describe']:.2f}%", row["annoy_search_ms_median"],
          f"{100 * row['annoy_share_of_describe']:.2f}%", row["total_ms_median"], row["resident_mb_after_use"]]
         for row in rows],
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
