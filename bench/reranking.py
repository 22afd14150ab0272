"""What re-ranking costs at Oxford5k size: α-weighted query expansion per query, and database-side
augmentation (DBA) once per index, on synthetic clustered descriptors.

    python bench/reranking.py                 # 5,063 rows at 2048-d and 512-d, 200 queries
    python bench/reranking.py --quick

The page's search (top 12) and the evaluation's (the whole ranking) are timed plain and with αQE
(n = 50, α = 3), interleaved query by query; DBA (k = 10) is timed building the augmented rows.
Results go to bench/results/reranking.json and reranking.md.
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

from bench.common import write_report  # noqa: E402
from cbir.distances import Metric  # noqa: E402
from cbir.index import Manifest, StoreSpec, load_index, write_index  # noqa: E402
from cbir.ranking import AlphaQueryExpansion, database_side_augmentation, rank  # noqa: E402
from cbir.recipe import Recipe  # noqa: E402


def clustered(rows: int, dim: int, seed: int) -> np.ndarray:
    """Rows around rows / 5 centres (a landmark has several photos), all activations positive."""
    rng = np.random.default_rng(seed)
    centres = np.abs(rng.normal(size=(max(rows // 5, 1), dim)))
    return (centres[rng.integers(0, len(centres), rows)] + 0.5 * np.abs(rng.normal(size=(rows, dim)))).astype(np.float32)


def measure(rows: int, dim: int, queries: int, folder: Path) -> list[dict]:
    descriptors = clustered(rows, dim, seed=dim)
    manifest = Manifest("bench", Recipe.create("xception", weights="none"), [f"{i}.jpg" for i in range(rows)], dim=dim,
                        store=StoreSpec("exact"))  # fmt: skip
    write_index(folder, descriptors, manifest)
    index = load_index(folder)
    expansion = AlphaQueryExpansion()
    samples: dict[str, list[float]] = {}
    for query in clustered(queries, dim, seed=dim + 1):
        for label, k, rerankers in (("top 12", 12, ()), ("top 12 + αQE", 12, (expansion,)),
                                    ("whole ranking", None, ()), ("whole ranking + αQE", None, (expansion,))):  # fmt: skip
            started = time.perf_counter()
            rank(index, query, Metric.COSINE, k, rerankers=rerankers)
            samples.setdefault(label, []).append(time.perf_counter() - started)
    results = [
        {"rows": rows, "dim": dim, "what": label, "ms": round(1000 * statistics.median(values), 2)}
        for label, values in samples.items()
    ]
    started = time.perf_counter()
    database_side_augmentation(np.asarray(index.descriptors), Metric.COSINE, k=10)
    results.append({"rows": rows, "dim": dim, "what": "DBA k = 10, every row (once per index)",
                    "ms": round(1000 * (time.perf_counter() - started), 1)})  # fmt: skip
    for row in results:
        print(row, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5063)
    parser.add_argument("--dims", default="2048,512")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--name", default="reranking")
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.rows, arguments.dims, arguments.queries = 1000, "512", 20
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        for dim in (int(d) for d in arguments.dims.split(",")):
            rows += measure(arguments.rows, dim, arguments.queries, Path(temporary) / f"d{dim}")
    report = {"command": "python bench/reranking.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "cores": os.cpu_count(), "queries": arguments.queries, "numpy": np.__version__, "rows": rows}  # fmt: skip
    title = f"Re-ranking costs ({report['cores']} cores, median of {arguments.queries} queries): `{report['command']}`"
    write_report(arguments.out, arguments.name, report, title, ["rows", "dim", "what", "ms"],
                 [[r["rows"], r["dim"], r["what"], r["ms"]] for r in rows])  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
