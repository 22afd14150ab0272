"""What guarding an index against files that change under a running server costs (issue 28).

    python bench/index_guard.py                  # 5,000 and 100,000 rows at 2048-d, 300 searches each
    python bench/index_guard.py --quick

Per size, in one run, interleaved search by search: the exact search (the app's path for these
sizes) with the per-search check of the folder's files (cbir.index: one stat per file) and without
it; and the process's resident memory after loading the index in memory (up to
cbir.index.IN_MEMORY_BYTES) and memory-mapped, before and after the first search. Results go to
bench/results/index_guard.json and index_guard.md.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import write_report  # noqa: E402
from cbir import index as index_module  # noqa: E402
from cbir.distances import Metric  # noqa: E402
from cbir.index import Manifest, StoreSpec, load_index, write_index  # noqa: E402
from cbir.recipe import Recipe  # noqa: E402


def resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write(folder: Path, rows: int, dim: int) -> None:
    rng = np.random.default_rng(rows)
    descriptors = np.abs(rng.normal(size=(rows, dim))).astype(np.float32)
    manifest = Manifest(collection="bench", recipe=Recipe.create("xception", weights="none", input_size=96),
                        images=[f"img_{i:06d}.jpg" for i in range(rows)], dim=dim, store=StoreSpec("exact", {}))  # fmt: skip
    write_index(folder, descriptors, manifest)


def loaded_memory(folder: Path, in_memory: bool) -> tuple[float, float, float]:
    """(resident MB added by loading, by the first search, seconds to load)."""
    gc.collect()
    before = resident_mb()
    index_module.IN_MEMORY_BYTES = 2**62 if in_memory else 0
    started = time.perf_counter()
    loaded = load_index(folder)
    seconds = time.perf_counter() - started
    after_load = resident_mb()
    loaded.search(np.ones(loaded.manifest.dim, np.float32), Metric.COSINE, 12, exact=True)
    after_search = resident_mb()
    del loaded
    gc.collect()
    return after_load - before, after_search - before, seconds


def latencies(folder: Path, searches: int) -> tuple[list[float], list[float]]:
    """Exact top-12 searches, with and without the per-search check, interleaved (ms)."""
    loaded = load_index(folder)
    rng = np.random.default_rng(0)
    queries = np.abs(rng.normal(size=(searches, loaded.manifest.dim))).astype(np.float32)
    checked, unchecked = [], []
    check = loaded.check_unchanged
    for query in queries:
        for times, guard in ((checked, check), (unchecked, lambda: None)):
            loaded.check_unchanged = guard
            started = time.perf_counter()
            loaded.search(query, Metric.COSINE, 12, exact=True)
            times.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    for _ in range(1000):
        check()
    check_ms = (time.perf_counter() - started)
    return checked, unchecked, check_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,100000", help="rows, comma-separated")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--searches", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="1,000 rows at 256-d, 20 searches (a smoke run)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--name", default="index_guard")
    arguments = parser.parse_args(argv)
    sizes = [1000] if arguments.quick else [int(part) for part in arguments.sizes.split(",")]
    dim, searches = (256, 20) if arguments.quick else (arguments.dim, arguments.searches)
    rows_out, report = [], {"dim": dim, "searches": searches, "in_memory_bytes": index_module.IN_MEMORY_BYTES,
                            "sizes": {}}  # fmt: skip
    default_limit = index_module.IN_MEMORY_BYTES
    with tempfile.TemporaryDirectory() as temporary:
        for rows in sizes:
            folder = Path(temporary) / "bench" / f"rows{rows}"
            write(folder, rows, dim)
            mapped = loaded_memory(folder, in_memory=False)
            memory = loaded_memory(folder, in_memory=True)
            index_module.IN_MEMORY_BYTES = default_limit
            default_in_memory = rows * dim * 4 <= default_limit
            checked, unchecked, check_ms = latencies(folder, searches)
            entry = {
                "rows": rows, "default": "in memory" if default_in_memory else "memory-mapped",
                "search_ms_p50_checked": statistics.median(checked), "search_ms_p50_unchecked": statistics.median(unchecked),
                "check_ms": check_ms, "mapped_mb_load_search": mapped[:2], "in_memory_mb_load_search": memory[:2],
                "load_seconds_mapped": mapped[2], "load_seconds_in_memory": memory[2],
            }  # fmt: skip
            report["sizes"][str(rows)] = entry
            rows_out.append([
                f"{rows:,} x {dim}", entry["default"], f"{entry['search_ms_p50_unchecked']:.2f}",
                f"{entry['search_ms_p50_checked']:.2f}", f"{check_ms * 1000:.1f}",
                f"{mapped[0]:.0f} / {mapped[1]:.0f}", f"{memory[0]:.0f} / {memory[1]:.0f}",
                f"{mapped[2]:.3f} / {memory[2]:.3f}",
            ])  # fmt: skip
            del checked, unchecked
    title = (f"The index guard's cost (`python bench/index_guard.py{' --quick' if arguments.quick else ''}`): exact "
             f"top-12 searches p50 with and without the per-search check of the folder's files, interleaved, "
             f"{searches} each; resident memory added by loading, and by then one search")
    columns = ["rows", "default load", "search ms, unchecked", "search ms, checked", "one check, µs",
               "MB mapped: loaded / after a search", "MB in memory: loaded / after a search", "load s: mapped / in memory"]
    write_report(arguments.out, arguments.name, report, title, columns, rows_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
