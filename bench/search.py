"""Search latency and recall against exact search, on clustered synthetic descriptors.

    python bench/search.py                    # N = 5k and 100k, d = 256, 512, 2048
    python bench/search.py --sizes 1000000 --dims 512
    python bench/search.py --quick            # N = 2,000, d = 64: a smoke run

Descriptors are drawn around a few thousand centres and L2-normalised, like pooled CNN features
after normalisation (uniform noise would make every method look bad and every index look alike).
Queries are held-out noisy points near the centres. For each (N, d):

- exact: numpy over every row (`LoadedIndex.search_exact`, what the evaluation uses);
- annoy: the project's own index and search path (`write_index`, `LoadedIndex.search_annoy`) for a
  few tree counts and candidate pools, with exact re-ranking of the candidates (the app's path) and
  without it (plain Annoy);
- hnswlib (if installed): the peer a user would pick instead, at a few `ef` values;
- study (N <= 5k): the original study's way, a Python loop of scipy's cosine distance then a sort.

Reported per row: build seconds, file size, p50/p99 query ms, recall@10 and recall@100 against
exact. Results go to bench/results/search.json and search.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cbir.index import Manifest, load_index, write_index  # noqa: E402
from bench.common import write_report  # noqa: E402


def clustered(n: int, dim: int, centres: int, seed: int, noise: float = 0.35) -> np.ndarray:
    rng = np.random.default_rng(seed)
    middle = np.random.default_rng(12345 + dim).normal(size=(centres, dim)).astype(np.float32)
    rows = middle[rng.integers(0, centres, n)] + noise * rng.normal(size=(n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return len(set(found.tolist()) & set(truth.tolist())) / len(truth)


def timed(function, queries):
    """(results, latencies in ms) of `function` over every query."""
    results, latencies = [], []
    for query in queries:
        started = time.perf_counter()
        results.append(function(query))
        latencies.append(1000 * (time.perf_counter() - started))
    return results, latencies


def summarise(name, params, latencies, found10, found100, truth10, truth100, build_s=None, size_mb=None):
    return {
        "method": name,
        "params": params,
        "build_seconds": None if build_s is None else round(build_s, 2),
        "size_mb": None if size_mb is None else round(size_mb, 1),
        "p50_ms": round(statistics.median(latencies), 3),
        "p99_ms": round(float(np.percentile(latencies, 99)), 3),
        "recall_at_10": round(float(np.mean([recall(f, t) for f, t in zip(found10, truth10)])), 4),
        "recall_at_100": round(float(np.mean([recall(f, t) for f, t in zip(found100, truth100)])), 4),
    }


def bench_one(n: int, dim: int, queries_count: int, trees: list[int], pools: list[int], scratch: Path) -> list[dict]:
    descriptors = clustered(n, dim, centres=max(20, min(2000, n // 50)), seed=1)
    queries = clustered(queries_count, dim, centres=max(20, min(2000, n // 50)), seed=2)
    rows = []
    manifest = Manifest(collection="bench", collection_root=str(scratch), backbone="bench", weights={"kind": "none"},
                        input_size=0, dim=dim, images=[str(i) for i in range(n)])  # fmt: skip
    folder = scratch / f"{n}x{dim}"

    for n_trees in trees:
        started = time.perf_counter()
        write_index(folder, descriptors, manifest, n_trees=n_trees)
        build = (time.perf_counter() - started) / 2  # write_index builds two indexes (cosine, euclidean)
        loaded = load_index(folder)
        if n_trees == trees[0]:
            exact, exact_ms = timed(lambda q: loaded.search_exact(q, "cosine", 100)[0], queries)
            truth100 = exact
            truth10 = [t[:10] for t in exact]
            rows.append(summarise("exact numpy", {}, exact_ms, truth10, truth100, truth10, truth100))
        size = (folder / "cosine.ann").stat().st_size / 2**20
        for pool in pools:
            found, latency = timed(lambda q: loaded.search_annoy(q, "cosine", 100, candidates=pool)[0], queries)
            rows.append(summarise("annoy + exact rerank", {"n_trees": n_trees, "candidates": pool}, latency,
                                  [f[:10] for f in found], found, truth10, truth100, build, size))  # fmt: skip
        index = loaded.annoy("cosine")
        for search_k in (-1, 20_000):
            found, latency = timed(lambda q: np.array(index.get_nns_by_vector(q, 100, search_k=search_k)), queries)
            rows.append(summarise("annoy plain", {"n_trees": n_trees, "search_k": search_k}, latency,
                                  [f[:10] for f in found], found, truth10, truth100, build, size))  # fmt: skip
        loaded.close()

    try:
        import hnswlib
    except ImportError:
        rows.append({"method": "hnswlib", "note": "not installed (pip install hnswlib)"})
    else:
        started = time.perf_counter()
        graph = hnswlib.Index(space="cosine", dim=dim)
        graph.init_index(max_elements=n, ef_construction=200, M=16)
        graph.add_items(descriptors, np.arange(n))
        build = time.perf_counter() - started
        for ef in (100, 200, 400):
            graph.set_ef(ef)
            found, latency = timed(lambda q: graph.knn_query(q, k=100)[0][0], queries)
            rows.append(summarise("hnswlib", {"M": 16, "ef_construction": 200, "ef": ef}, latency,
                                  [f[:10] for f in found], found, truth10, truth100, build))  # fmt: skip

    if n <= 5_000:
        try:
            from scipy.spatial.distance import cosine
        except ImportError:
            rows.append({"method": "study: scipy cosine loop", "note": "scipy not installed"})
        else:
            def study(query):
                distances = [cosine(query, row) for row in descriptors]
                return np.argsort(distances, kind="stable")[:100]

            found, latency = timed(study, queries[: max(5, queries_count // 10)])
            subset = len(found)
            rows.append(summarise("study: scipy cosine loop + sort", {}, latency, [f[:10] for f in found], found,
                                  truth10[:subset], truth100[:subset]))  # fmt: skip
    for row in rows:
        row.update({"n": n, "dim": dim})
        print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="5000,100000")
    parser.add_argument("--dims", default="256,512,2048")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--trees", default="50,100")
    parser.add_argument("--candidates", default="100,200,1000")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.sizes, arguments.dims, arguments.queries, arguments.trees = "2000", "64", 30, "20"
    command = "python bench/search.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for n in (int(x) for x in arguments.sizes.split(",")):
            for dim in (int(x) for x in arguments.dims.split(",")):
                rows += bench_one(n, dim, arguments.queries, [int(t) for t in arguments.trees.split(",")],
                                  [int(c) for c in arguments.candidates.split(",")], Path(scratch))  # fmt: skip
    report = {"benchmark": "search", "command": command.strip(), "cores": os.cpu_count(),
              "date": time.strftime("%Y-%m-%d"), "metric": "cosine", "k": 100, "rows": rows}  # fmt: skip
    table = []
    for row in rows:
        if "note" in row:
            table.append([row["n"], row["dim"], row["method"], row["note"], None, None, None, None, None, None])
            continue
        params = ", ".join(f"{key}={value}" for key, value in row["params"].items())
        table.append([row["n"], row["dim"], row["method"], params, row["build_seconds"], row["size_mb"], row["p50_ms"],
                      row["p99_ms"], row["recall_at_10"], row["recall_at_100"]])  # fmt: skip
    write_report(
        arguments.out,
        "search-quick" if arguments.quick else "search",
        report,
        f"Search, cosine, top 100 (`{report['command']}`, {report['cores']} cores, {report['date']}); recall against exact",
        ["N", "d", "method", "params", "build s", "file MB", "p50 ms", "p99 ms", "recall@10", "recall@100"],
        table,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
