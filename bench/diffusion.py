"""What diffusion (cbir/diffusion.py) costs, and a cross-check against the authors' method.

    python bench/diffusion.py                 # 5,063 x 2048 (Oxford5k size), 50 queries; 100k rows
    python bench/diffusion.py --quick         # 600 x 256, 5 queries, 20k rows for the large part

At Oxford5k size, on synthetic clustered descriptors made as bench/reranking.py makes them:
- the graph: built (exact k-NN, k = 50), stored (sha256 of the rows + atomic write), read back;
- per query, interleaved: the page's search (top 12) and the whole ranking, plain and with
  `Diffusion()`; and the conjugate gradient alone.
- the cross-check: the graph and ranking of ahmetius/diffusion-retrieval's global setting
  (run_test.m: k-NN lists including the row itself with k = 50, knngraph.m's mutual edges with
  similarity^3, the diagonal zeroed, transition_matrix.m's D^-1/2 W D^-1/2, ymake.m's y over the
  query's 10 nearest rows), written out here with dense numpy matrices and solved exactly; compared
  with cbir.diffusion's (k = 49 other rows: the same lists) on the same rows and queries.
At the large size (default 100,000 x 2048): the k-NN part of the build timed on a few blocks of
rows and extrapolated (it is O(rows^2 x dim)), the rest of the build and one conjugate gradient
solve timed in full on the real sizes.
Results go to bench/results/diffusion.json and diffusion.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import cpu_model, write_report  # noqa: E402
from bench.reranking import clustered  # noqa: E402
from cbir import diffusion  # noqa: E402
from cbir.diffusion import Diffusion, build_graph, collection_graph, diffuse, graph_from_neighbours, query_vector  # noqa: E402
from cbir.distances import Metric, l2_normalise  # noqa: E402
from cbir.index import Manifest, StoreSpec, load_index, write_index  # noqa: E402
from cbir.ranking import rank  # noqa: E402
from cbir.recipe import Recipe  # noqa: E402


def seconds(function, *arguments, **keywords):
    started = time.perf_counter()
    value = function(*arguments, **keywords)
    return value, time.perf_counter() - started


def oxford_size(rows: int, dim: int, queries: int, folder: Path) -> tuple[list[dict], np.ndarray, np.ndarray]:
    descriptors = clustered(rows, dim, seed=dim)
    manifest = Manifest("bench", Recipe.create("xception", weights="none"), [f"{i}.jpg" for i in range(rows)], dim=dim,
                        store=StoreSpec("exact"))  # fmt: skip
    write_index(folder, descriptors, manifest)
    index = load_index(folder)
    results = []

    def note(what: str, ms: float) -> None:
        results.append({"rows": rows, "dim": dim, "what": what, "ms": round(ms, 2)})
        print(results[-1], flush=True)

    _, built = seconds(build_graph, descriptors)
    note("graph build (exact k-NN, k = 50), once per index", 1000 * built)
    diffusion._graphs.clear()
    graph, first_use = seconds(collection_graph, index)
    note("graph at first use: build + sha256 + atomic write", 1000 * first_use)
    diffusion._graphs.clear()
    _, reread = seconds(collection_graph, index)
    note("graph at first use in a later process: sha256 + read", 1000 * reread)
    results.append({"rows": rows, "dim": dim, "what": "graph file bytes",
                    "ms": None, "bytes": (folder / diffusion.GRAPH_FILE).stat().st_size})  # fmt: skip
    print(results[-1], flush=True)

    # Queries: new views of collection rows (a row plus as much noise again), so they have neighbours.
    rng = np.random.default_rng(dim + 1)
    query_rows = descriptors[rng.integers(0, rows, queries)]
    query_set = (query_rows + 0.5 * np.abs(rng.normal(size=query_rows.shape))).astype(np.float32)
    reranker = Diffusion()
    samples: dict[str, list[float]] = {}
    for query in query_set:
        for label, k, rerankers in (("top 12", 12, ()), ("top 12 + diffusion (depth 100)", 12, (reranker,)),
                                    ("whole ranking", None, ()), ("whole ranking + diffusion", None, (reranker,))):  # fmt: skip
            _, spent = seconds(rank, index, query, Metric.COSINE, k, rerankers=rerankers)
            samples.setdefault(label, []).append(spent)
        y = query_vector(len(graph), np.arange(10), np.full(10, 0.9), 3.0)
        _, spent = seconds(diffuse, graph, y)
        samples.setdefault("conjugate gradient alone (20 steps)", []).append(spent)
    for label, values in samples.items():
        note(f"per query: {label} (median)", 1000 * statistics.median(values))
    return results, descriptors, query_set


def authors_method(descriptors: np.ndarray, queries: np.ndarray, k: int = 50, query_k: int = 10, gamma: float = 3.0,
                   alpha: float = 0.99) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """S, y and the exact scores f (one column per query) as ahmetius/diffusion-retrieval computes them
    for global descriptors (module docstring), with dense matrices and an exact solve."""
    unit = l2_normalise(np.asarray(descriptors, dtype=np.float64))
    similarity = unit @ unit.T
    n = len(unit)
    lists = np.argsort(-similarity, axis=1, kind="stable")[:, :k]  # each row's k nearest, itself included
    listed = np.zeros((n, n), dtype=bool)
    listed[np.repeat(np.arange(n), k), lists.ravel()] = True
    affinity = np.where(listed & listed.T, np.maximum(similarity, 0.0) ** gamma, 0.0)
    np.fill_diagonal(affinity, 0.0)
    degree = affinity.sum(axis=1)
    scale = np.where(degree > 0, 1.0 / np.sqrt(np.where(degree > 0, degree, 1.0)), 0.0)
    transition = scale[:, None] * affinity * scale[None, :]
    query_similarity = l2_normalise(np.asarray(queries, dtype=np.float64)) @ unit.T
    y = np.zeros((n, len(queries)))
    for column, row_similarity in enumerate(query_similarity):
        nearest = np.argsort(-row_similarity, kind="stable")[:query_k]
        y[nearest, column] = np.maximum(row_similarity[nearest], 0.0) ** gamma
    return transition, y, np.linalg.solve(np.eye(n) - alpha * transition, y)


def cross_check(descriptors: np.ndarray, queries: np.ndarray, folder: Path) -> dict:
    rows, dim = descriptors.shape
    theirs_s, theirs_y, theirs_f = authors_method(descriptors, queries)
    ours = build_graph(descriptors, k=49)  # their k = 50 lists include the row itself
    ours_s = ours.dense()
    graph_difference = float(np.abs(ours_s - theirs_s).max())
    edges_differing = int(np.count_nonzero((ours_s > 0) != (theirs_s > 0)))
    manifest = Manifest("bench", Recipe.create("xception", weights="none"), [f"{i}.jpg" for i in range(rows)], dim=dim,
                        store=StoreSpec("exact"))  # fmt: skip
    write_index(folder, descriptors, manifest)
    index = load_index(folder)
    reranker = Diffusion(k=49)
    ours_exact = np.linalg.solve(np.eye(rows) - 0.99 * ours_s, theirs_y)
    top_same, exact_same, overlaps, worst_error = 0, 0, [], 0.0
    for column, query in enumerate(queries):
        ours_rows = rank(index, query, Metric.COSINE, None, rerankers=[reranker]).rows
        their_rows = np.argsort(-theirs_f[:, column], kind="stable")
        top_same += bool(np.array_equal(ours_rows[:10], their_rows[:10]))
        exact_same += bool(np.array_equal(np.argsort(-ours_exact[:, column], kind="stable")[:10], their_rows[:10]))
        overlaps.append(len(set(ours_rows[:100].tolist()) & set(their_rows[:100].tolist())) / min(100, rows))
        ours_f = diffuse(ours, theirs_y[:, column])
        worst_error = max(worst_error, float(np.linalg.norm(ours_f - theirs_f[:, column]) / np.linalg.norm(theirs_f[:, column])))
    report = {
        "rows": rows, "dim": dim, "queries": len(queries), "edges_theirs": int(np.count_nonzero(theirs_s)),
        "edges_ours": int(np.count_nonzero(ours_s)), "edges_differing": edges_differing,
        "graph_max_difference": graph_difference, "same_top_10": top_same, "same_top_10_both_solved_exactly": exact_same,
        "mean_top_100_overlap": round(statistics.mean(overlaps), 4),
        "worst_relative_error_20_cg_steps_vs_exact": float(f"{worst_error:.2g}"),
    }  # fmt: skip
    print("cross-check", report, flush=True)
    return report


def large_size(rows: int, dim: int, blocks: int) -> list[dict]:
    """The large collection's costs: the k-NN blocks extrapolated, the rest in full."""
    results = []

    def note(what: str, ms: float, measured: str) -> None:
        results.append({"rows": rows, "dim": dim, "what": what, "ms": round(ms, 1), "how": measured})
        print(results[-1], flush=True)

    rng = np.random.default_rng(7)
    unit = l2_normalise(rng.standard_normal(size=(rows, dim), dtype=np.float32))
    block = max(1, diffusion._BLOCK_FLOATS // rows)
    started = time.perf_counter()
    for start in range(0, block * blocks, block):
        products = unit[start : start + block] @ unit.T
        np.argpartition(-products, 49, axis=1)[:, :50]
    per_block = (time.perf_counter() - started) / blocks
    note("graph build: exact k-NN (products + top 50 per row)", 1000 * per_block * rows / block,
         f"{blocks} blocks of {block} rows timed, x {rows / block:.0f}")  # fmt: skip
    del unit, products
    # The rest of the build (mutual edges, weights, normalisation) on neighbour lists of the real size.
    # Lists scattered over the rows as a real graph's are, with as many mutual edges per row as the
    # Oxford5k-size graph keeps (about 21 of 50): row order[i] lists order[i - 11 .. i + 11] (itself
    # left out: mutual, around a ring, for a random order) and 28 random rows (one-way, nearly all).
    order = rng.permutation(rows).astype(np.int32)
    offsets = np.concatenate([np.arange(-11, 0), np.arange(1, 12)])
    nearest = np.empty((rows, 50), dtype=np.int32)
    nearest[order, :22] = order[(np.arange(rows)[:, None] + offsets) % rows]
    nearest[:, 22:] = rng.integers(0, rows, size=(rows, 28), dtype=np.int32)
    similarity = rng.uniform(0.5, 1.0, size=(rows, 50)).astype(np.float32)
    started = time.perf_counter()
    graph = graph_from_neighbours(nearest, similarity)
    note("graph build: mutual edges + weights + normalisation", 1000 * (time.perf_counter() - started),
         f"in full ({len(graph.neighbours) / rows:.1f} mutual edges per row)")  # fmt: skip
    y = query_vector(rows, rng.integers(0, rows, 10), np.full(10, 0.9), 3.0)
    spent = []
    for _ in range(3):
        _, seconds_taken = seconds(diffuse, graph, y)
        spent.append(seconds_taken)
    note("per query: conjugate gradient (20 steps)", 1000 * statistics.median(spent), "in full, median of 3")
    _, one = seconds(graph.multiply, y)
    note("per query: of which one S x f (gather + sum)", 1000 * one, "in full")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5063)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--cross-check-queries", type=int, default=20)
    parser.add_argument("--large-rows", type=int, default=100_000, help="0: skip the large collection")
    parser.add_argument("--large-blocks", type=int, default=4)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--name", default="diffusion")
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.rows, arguments.dim, arguments.queries, arguments.cross_check_queries = 600, 256, 5, 5
        arguments.large_rows, arguments.large_blocks = 20_000, 1
    with tempfile.TemporaryDirectory() as temporary:
        rows, descriptors, queries = oxford_size(arguments.rows, arguments.dim, arguments.queries, Path(temporary) / "index")
        checked = cross_check(descriptors, queries[: arguments.cross_check_queries], Path(temporary) / "checked")
    large = large_size(arguments.large_rows, arguments.dim, arguments.large_blocks) if arguments.large_rows else []
    report = {"command": "python bench/diffusion.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "cores": os.cpu_count(), "load_average": [round(load, 2) for load in os.getloadavg()],
              "queries": arguments.queries, "numpy": np.__version__, "rows": rows, "cross_check": checked,
              "large": large}  # fmt: skip
    title = (f"Diffusion costs ({cpu_model()}, {report['cores']} cores, load average {report['load_average'][0]} at the end, median of "
             f"{arguments.queries} queries): `{report['command']}`\n\n"
             f"Cross-check with the authors' method ({checked['rows']} x {checked['dim']}, {checked['queries']} queries): "
             f"graph edges (i, j) {checked['edges_theirs']:,} theirs, {checked['edges_ours']:,} ours, "
             f"{checked['edges_differing']} in one only (largest difference in S {checked['graph_max_difference']:.1e}); "
             f"identical top 10: {checked['same_top_10']} of {checked['queries']} (both graphs solved exactly: "
             f"{checked['same_top_10_both_solved_exactly']}); top-100 overlap "
             f"{checked['mean_top_100_overlap']:.3f}; 20 CG steps vs the exact solve, worst relative error "
             f"{checked['worst_relative_error_20_cg_steps_vs_exact']}")  # fmt: skip
    table = [[r["rows"], r["dim"], r["what"], r["ms"] if r["ms"] is not None else f"{r['bytes']:,} bytes", ""] for r in rows]
    table += [[r["rows"], r["dim"], r["what"], r["ms"], r["how"]] for r in large]
    write_report(arguments.out, arguments.name, report, title, ["rows", "dim", "what", "ms", "how"], table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
