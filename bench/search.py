"""Search latency and recall against exact search, on clustered synthetic descriptors.

    python bench/search.py                    # N = 5k and 100k, d = 256, 512, 2048
    python bench/search.py --sizes 1000000 --dims 512
    python bench/search.py --quick            # N = 2,000, d = 64: a smoke run
    python bench/search.py --sizes 1000000 --dims 512,256 --trees 100 --candidates 1000,5000,20000 \
        --name search-1m                      # 1M rows, 2,000 centres (about 40 minutes on 2 cores)
    python bench/search.py --sizes 1000000 --dims 512,256 --trees 100 --candidates 1000,5000,20000 \
        --centres N/50 --name search-1m-50    # 1M rows, 50 rows a centre, as at 5k and 100k
    python bench/search.py --sizes 1000000 --dims 2048 --methods exact --name search-1m-2048
    python bench/search.py --sizes 100000 --dims 512 --methods hnswlib,voyager,faiss-hnsw,faiss-ivf,hnsw,milvus \
        --ef 100,200,400,800 --name search-100k-hnsw   # the HNSW libraries side by side (docs/performance.md)
    python bench/search.py --sizes 1000000 --dims 512 --centres N/50 --methods hnsw --hnsw-m 32 --ef 200,400,800 \
        --name search-1m-hnsw                 # the chosen store at the issue's target size

Descriptors are drawn around a few thousand centres and L2-normalised, like pooled CNN features
after normalisation (uniform noise would make every method look bad and every index look alike).
Queries are held-out noisy points near the centres. By default there are N / 50 centres, at most
2,000: so at 5k and 100k a query's cluster holds about 50 rows and half of its top 100 lies in
other clusters, while at 1M (500 rows a cluster) the top 100 lies inside its own cluster, which
is far easier for any index. `--centres N/50` keeps 50 rows a cluster at every N. For each (N, d):

- exact: numpy over every row (the `exact` store, what the evaluation uses);
- annoy: the project's own store and search path (`cbir.stores.annoy`: build, open, search) for a
  few tree counts and candidate pools (Annoy proposes that many rows, the nearest k are kept: the
  app's path) and plain Annoy asked for k rows at a few `search_k`;
- annoy on PCA: Annoy built on the descriptors projected to fewer dimensions (PCA fitted on a
  sample), its candidates re-ranked exactly at full d: smaller trees, same final distances;
- hnswlib, Voyager, faiss HNSWFlat (also loaded with IO_FLAG_MMAP, to see whether it maps) and
  faiss IVFFlat (if installed): the HNSW peers side by side, same M / ef_construction, a few `ef`
  (`--ef`, `--hnsw-m`, `--ef-construction`) or `nprobe` values;
- hnsw: the project's own HNSW store (`cbir.stores.hnsw`: its search path, exact distances of the
  rows the graph finds), the cosine graph only;
- milvus: the project's Milvus store on Milvus Lite (a file in the scratch folder);
- study (N <= 5k): the original study's way, a Python loop of scipy's cosine distance then a sort.

Reported per row: build seconds, file size, resident memory the loaded index adds to the process
after the queries (memory-mapped pages that were touched count), p50/p99 query ms, recall@10 and
recall@100 against exact. The Annoy rows' memory includes the memory-mapped descriptors (the app
holds them too); the PCA and hnswlib rows count their index alone. At a few
thousand rows the allocator reuses pages freed by earlier rows, so small values there (even 0)
only mean "too small to see"; read memory off the 100k and 1M rows. Results go to
bench/results/<name>.json and <name>.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cbir.distances import Metric, exact_distances  # noqa: E402
from cbir.stores import annoy as annoy_store  # noqa: E402
from cbir.stores.exact import ExactStore  # noqa: E402
from bench.common import write_report  # noqa: E402


METHODS = ("exact", "annoy", "pca", "hnswlib", "faiss-hnsw", "faiss-ivf", "voyager", "hnsw", "milvus", "study")
DEFAULT_EFS = (100, 200, 400)


def clustered(n: int, dim: int, centres: int, seed: int, noise: float = 0.35, chunk: int = 65_536) -> np.ndarray:
    """n L2-normalised rows around `centres` fixed centres; built in float32 chunks (1M x 2048 is 8 GB)."""
    rng = np.random.default_rng(seed)
    middle = np.random.default_rng(12345 + dim).standard_normal(size=(centres, dim), dtype=np.float32)
    rows = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        block = middle[rng.integers(0, centres, stop - start)]
        block += noise * rng.standard_normal(size=block.shape, dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        rows[start:stop] = block
    return rows


def resident_mb() -> float:
    """This process's resident set (Linux), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pca_projection(rows: np.ndarray, dim: int, sample: int = 20_000, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(mean, components d x dim) of a PCA fitted on a random sample of rows."""
    picked = rows[np.sort(np.random.default_rng(seed).choice(len(rows), min(sample, len(rows)), replace=False))]
    mean = picked.mean(axis=0)
    _, _, components = np.linalg.svd(picked - mean, full_matrices=False)
    return mean, np.ascontiguousarray(components[:dim].T)


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


def summarise(name, params, latencies, found10, found100, truth10, truth100, build_s=None, size_mb=None, rss_mb=None):
    return {
        "method": name,
        "params": params,
        "build_seconds": None if build_s is None else round(build_s, 2),
        "size_mb": None if size_mb is None else round(size_mb, 1),
        "resident_mb": None if rss_mb is None else round(rss_mb, 1),
        "p50_ms": round(statistics.median(latencies), 3),
        "p99_ms": round(float(np.percentile(latencies, 99)), 3),
        "recall_at_10": round(float(np.mean([recall(f, t) for f, t in zip(found10, truth10)])), 4),
        "recall_at_100": round(float(np.mean([recall(f, t) for f, t in zip(found100, truth100)])), 4),
    }


def default_centres(n: int) -> int:
    return max(20, min(2000, n // 50))


def bench_one(n: int, dim: int, queries_count: int, trees: list[int], pools: list[int], methods: set[str],
              pca_dims: list[int], scratch: Path, centres: int | None = None, efs: tuple[int, ...] = DEFAULT_EFS,
              graph_m: int = 16, ef_construction: int = 200, nprobes: tuple[int, ...] = (16, 32, 64)) -> list[dict]:  # fmt: skip
    centres = centres or default_centres(n)
    descriptors = clustered(n, dim, centres, seed=1)
    queries = clustered(queries_count, dim, centres, seed=2)
    rows = []
    folder = scratch / f"{n}x{dim}"

    # Exact search over the matrix in memory is the truth every other row is scored against.
    in_memory = ExactStore(descriptors)
    in_memory.norms  # computed once, as the app does on first use
    exact, exact_ms = timed(lambda q: in_memory.search(q, Metric.COSINE, 100).rows, queries)
    truth100, truth10 = exact, [t[:10] for t in exact]
    rows.append(summarise("exact numpy", {}, exact_ms, truth10, truth100, truth10, truth100,
                          size_mb=descriptors.nbytes / 2**20, rss_mb=descriptors.nbytes / 2**20))  # fmt: skip
    print(json.dumps({"n": n, "dim": dim, **rows[-1]}), flush=True)

    def add(name, params, search, build_s=None, size_mb=None, rss_from=None):
        found, latency = timed(search, queries)
        rss = None if rss_from is None else resident_mb() - rss_from
        rows.append(summarise(name, params, latency, [f[:10] for f in found], found, truth10, truth100,
                              build_s, size_mb, rss))  # fmt: skip
        print(json.dumps({"n": n, "dim": dim, **rows[-1]}), flush=True)

    if "annoy" in methods:
        for n_trees in trees:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            np.save(folder / "descriptors.npy", descriptors)
            started = time.perf_counter()
            params = annoy_store.KIND.build(folder, descriptors, {"n_trees": n_trees})
            build = (time.perf_counter() - started) / 2  # the store builds two forests (cosine, euclidean)
            before = resident_mb()
            loaded = annoy_store.KIND.open(folder, np.load(folder / "descriptors.npy", mmap_mode="r"), params)
            size = (folder / "cosine.ann").stat().st_size / 2**20
            for pool in pools:
                add("annoy, k of candidates", {"n_trees": n_trees, "candidates": pool},
                    lambda q: loaded.search(q, Metric.COSINE, 100, candidates=pool).rows, build, size, before)  # fmt: skip
            index = loaded.forest(Metric.COSINE)
            for search_k in (-1, 20_000):
                add("annoy plain", {"n_trees": n_trees, "search_k": search_k},
                    lambda q: np.array(index.get_nns_by_vector(q, 100, search_k=search_k)), build, size, before)  # fmt: skip
            loaded.close()
            del loaded, index

    if "pca" in methods:
        from annoy import AnnoyIndex

        for reduced in (d for d in pca_dims if d < dim):
            started = time.perf_counter()
            mean, components = pca_projection(descriptors, reduced)
            blocks = np.array_split(descriptors, max(1, n // 65_536))  # bounded temporary memory at 1M rows
            projected = np.concatenate([(block - mean) @ components for block in blocks])
            index = AnnoyIndex(reduced, "angular")
            index.set_seed(42)
            for row, vector in enumerate(projected):
                index.add_item(row, vector)
            index.build(trees[-1], n_jobs=-1)
            path = scratch / f"pca-{n}x{dim}-{reduced}.ann"
            index.save(str(path))
            build = time.perf_counter() - started
            del projected
            before = resident_mb()

            def reduced_then_exact(query, pool):
                candidates = np.asarray(index.get_nns_by_vector((query - mean) @ components, pool), dtype=np.int64)
                distances = exact_distances(descriptors[candidates], query, Metric.COSINE,
                                            in_memory.norms[candidates])  # fmt: skip
                return candidates[np.lexsort((candidates, distances))[:100]]

            for pool in pools:
                add(f"annoy on PCA-{reduced} + exact rerank at {dim}", {"n_trees": trees[-1], "candidates": pool},
                    lambda q: reduced_then_exact(q, pool), build, path.stat().st_size / 2**20, before)  # fmt: skip
            index.unload()
            path.unlink()

    if "hnswlib" in methods:
        try:
            import hnswlib
        except ImportError:
            rows.append({"method": "hnswlib", "note": "not installed (pip install hnswlib)"})
        else:
            before = resident_mb()
            started = time.perf_counter()
            graph = hnswlib.Index(space="cosine", dim=dim)
            graph.init_index(max_elements=n, ef_construction=ef_construction, M=graph_m, random_seed=100)
            graph.add_items(descriptors, np.arange(n))
            build = time.perf_counter() - started
            graph.save_index(str(scratch / "hnsw.bin"))
            size = (scratch / "hnsw.bin").stat().st_size / 2**20
            (scratch / "hnsw.bin").unlink()
            for ef in efs:
                graph.set_ef(ef)
                add("hnswlib", {"M": graph_m, "ef_construction": ef_construction, "ef": ef},
                    lambda q: graph.knn_query(q, k=100)[0][0], build, size, before)  # fmt: skip
            del graph

    if "voyager" in methods:
        try:
            import voyager
        except ImportError:
            rows.append({"method": "voyager", "note": "not installed (pip install -r requirements-scale.txt)"})
        else:
            before = resident_mb()
            started = time.perf_counter()
            graph = voyager.Index(voyager.Space.Cosine, num_dimensions=dim, M=graph_m,
                                  ef_construction=ef_construction, random_seed=100, max_elements=n)  # fmt: skip
            graph.add_items(descriptors, np.arange(n))
            build = time.perf_counter() - started
            graph.save(str(scratch / "graph.voy"))
            size = (scratch / "graph.voy").stat().st_size / 2**20
            (scratch / "graph.voy").unlink()
            for ef in efs:
                add("voyager", {"M": graph_m, "ef_construction": ef_construction, "ef": ef},
                    lambda q: graph.query(q, k=100, query_ef=ef)[0].astype(np.int64), build, size, before)  # fmt: skip
            del graph

    if "faiss-hnsw" in methods or "faiss-ivf" in methods:
        try:
            import faiss
        except ImportError:
            faiss = None
            rows.append({"method": "faiss", "note": "not installed (pip install -r requirements-scale.txt)"})
    if "faiss-hnsw" in methods and faiss is not None:
        # Inner product on L2-normalised rows is cosine; the rows here are normalised already.
        before = resident_mb()
        started = time.perf_counter()
        graph = faiss.IndexHNSWFlat(dim, graph_m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = ef_construction
        graph.add(descriptors)
        build = time.perf_counter() - started
        path = scratch / "hnsw.faiss"
        faiss.write_index(graph, str(path))
        size = path.stat().st_size / 2**20
        for ef in efs:
            parameters = faiss.SearchParametersHNSW(efSearch=ef)
            add("faiss HNSWFlat", {"M": graph_m, "ef_construction": ef_construction, "ef": ef},
                lambda q: graph.search(q[None, :], 100, params=parameters)[1][0], build, size, before)  # fmt: skip
        del graph
        # Whether the file can be memory-mapped, measured: resident memory after loading it with IO_FLAG_MMAP.
        before = resident_mb()
        mapped = faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
        parameters = faiss.SearchParametersHNSW(efSearch=efs[-1])
        add("faiss HNSWFlat, loaded with IO_FLAG_MMAP", {"M": graph_m, "ef": efs[-1]},
            lambda q: mapped.search(q[None, :], 100, params=parameters)[1][0], None, size, before)  # fmt: skip
        del mapped
        path.unlink()
    if "faiss-ivf" in methods and faiss is not None:
        # IVF-Flat: the probed lists are scanned exactly, so its distances are exact (the re-ranking is built in).
        nlist = max(16, int(4 * np.sqrt(n)))
        before = resident_mb()
        started = time.perf_counter()
        quantizer = faiss.IndexFlatIP(dim)
        inverted = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = descriptors[np.random.default_rng(5).choice(n, min(n, 40 * nlist), replace=False)]
        inverted.train(sample)
        inverted.add(descriptors)
        build = time.perf_counter() - started
        path = scratch / "ivf.faiss"
        faiss.write_index(inverted, str(path))
        size = path.stat().st_size / 2**20
        path.unlink()
        for nprobe in nprobes:
            parameters = faiss.SearchParametersIVF(nprobe=nprobe)
            add("faiss IVFFlat", {"nlist": nlist, "nprobe": nprobe},
                lambda q: inverted.search(q[None, :], 100, params=parameters)[1][0], build, size, before)  # fmt: skip
        del inverted, quantizer

    if "hnsw" in methods and importlib.util.find_spec("hnswlib") is None:
        rows.append({"method": "hnsw store (cbir.stores.hnsw)", "note": "not installed (pip install -r requirements-scale.txt)"})
    elif "hnsw" in methods:
        # The project's own store and search path (cbir.stores.hnsw), cosine graph only (a build makes one
        # graph per metric; the bench times one).
        from cbir.stores import hnsw as hnsw_store

        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        before = resident_mb()
        started = time.perf_counter()
        params = hnsw_store.build_graphs(folder, descriptors, {"M": graph_m, "ef_construction": ef_construction},
                                         metrics=(Metric.COSINE,))  # fmt: skip
        build = time.perf_counter() - started
        loaded = hnsw_store.KIND.open(folder, descriptors, params)
        size = (folder / hnsw_store.file_name(Metric.COSINE)).stat().st_size / 2**20
        for ef in efs:
            add("hnsw store (cbir.stores.hnsw)", {"M": graph_m, "ef_construction": ef_construction, "ef": ef},
                lambda q: loaded.search(q, Metric.COSINE, 100, candidates=ef).rows, build, size, before)  # fmt: skip
        loaded.close()
        del loaded

    if "milvus" in methods:
        # The project's Milvus store on Milvus Lite (a local file, as the tests use it): the build's
        # inserts and index, then its search path (Milvus finds the rows, their distances are exact).
        try:
            from cbir.stores import milvus as milvus_store
            import milvus_lite  # noqa: F401
        except ImportError:
            rows.append({"method": "milvus lite", "note": "not installed (pip install -r requirements-scale.txt)"})
        else:
            lite = scratch / f"milvus-{n}x{dim}"
            lite.mkdir(parents=True, exist_ok=True)
            spec = {"uri": str(lite / "bench.db"), "collection_name": f"bench_{n}_{dim}", "M": graph_m,
                    "ef_construction": ef_construction}  # fmt: skip
            before = resident_mb()
            started = time.perf_counter()
            params = milvus_store.KIND.build(lite, descriptors, spec)
            build = time.perf_counter() - started
            store = milvus_store.KIND.open(lite, descriptors, params)
            size = sum(f.stat().st_size for f in lite.rglob("*") if f.is_file()) / 2**20
            for ef in efs:
                add(f"milvus lite ({params['index_type']}, cbir.stores.milvus)",
                    {"M": graph_m, "ef_construction": ef_construction, "ef": ef},
                    lambda q: store.search(q, Metric.COSINE, 100, candidates=ef).rows, build, size, before)  # fmt: skip
            store.close()
            shutil.rmtree(lite, ignore_errors=True)

    if "study" in methods and n <= 5_000:
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
        row.update({"n": n, "dim": dim, "centres": centres})
    shutil.rmtree(folder, ignore_errors=True)
    return rows


def centres_for(setting: str | None, n: int) -> int:
    if not setting:
        return default_centres(n)
    if setting.upper().startswith("N/"):
        return max(1, n // int(setting[2:]))
    return int(setting)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="5000,100000")
    parser.add_argument("--dims", default="256,512,2048")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--trees", default="50,100")
    parser.add_argument("--candidates", default="100,200,1000")
    parser.add_argument("--centres", help="cluster centres: a number, or N/<rows per centre> such as N/50 "
                        "(default: N/50, at most 2,000)")  # fmt: skip
    parser.add_argument("--methods", default=",".join(METHODS), help=f"any of {', '.join(METHODS)} (exact always runs)")
    parser.add_argument("--pca", default="64,256", help="reduced dimensions for the 'pca' method (those below d)")
    parser.add_argument("--ef", default=",".join(map(str, DEFAULT_EFS)), help="HNSW search breadths (ef) to try")
    parser.add_argument("--hnsw-m", type=int, default=16, help="HNSW links per node (M), every HNSW library")
    parser.add_argument("--ef-construction", type=int, default=200, help="HNSW build breadth, every HNSW library")
    parser.add_argument("--nprobe", default="16,32,64", help="IVF lists probed, for faiss-ivf")
    parser.add_argument("--name", default="search", help="results file stem under --out")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.sizes, arguments.dims, arguments.queries, arguments.trees = "2000", "64", 30, "20"
        arguments.pca, arguments.name = "16", "search-quick"
    methods = set(arguments.methods.split(","))
    unknown = methods - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {', '.join(sorted(unknown))}; known: {', '.join(METHODS)}")
    command = "python bench/search.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for n in (int(x) for x in arguments.sizes.split(",")):
            for dim in (int(x) for x in arguments.dims.split(",")):
                rows += bench_one(n, dim, arguments.queries, [int(t) for t in arguments.trees.split(",")],
                                  [int(c) for c in arguments.candidates.split(",")], methods,
                                  [int(d) for d in arguments.pca.split(",")], Path(scratch),
                                  centres_for(arguments.centres, n), tuple(int(e) for e in arguments.ef.split(",")),
                                  arguments.hnsw_m, arguments.ef_construction,
                                  tuple(int(p) for p in arguments.nprobe.split(",")))  # fmt: skip
    report = {"benchmark": "search", "command": command.strip(), "cores": os.cpu_count(),
              "date": time.strftime("%Y-%m-%d"), "metric": "cosine", "k": 100, "rows": rows}  # fmt: skip
    table = []
    for row in rows:
        if "note" in row:
            table.append([row["n"], row["dim"], row["centres"], row["method"], row["note"]] + [None] * 7)
            continue
        params = ", ".join(f"{key}={value}" for key, value in row["params"].items())
        table.append([row["n"], row["dim"], row["centres"], row["method"], params, row["build_seconds"], row["size_mb"], row["resident_mb"], row["p50_ms"],
                      row["p99_ms"], row["recall_at_10"], row["recall_at_100"]])  # fmt: skip
    write_report(
        arguments.out,
        arguments.name,
        report,
        f"Search, cosine, top 100 (`{report['command']}`, {report['cores']} cores, {report['date']}); recall against exact",
        ["N", "d", "centres", "method", "params", "build s", "file MB", "resident MB", "p50 ms", "p99 ms", "recall@10", "recall@100"],
        table,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
