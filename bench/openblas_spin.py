"""CPU a process keeps burning after spatial verification's descriptor products return: OpenBLAS's
worker threads spin-wait for more work before they sleep, which on 2 cores takes CPU from whatever
runs next (the page's round trip, the browser). Measured in a fresh process per setting of
OPENBLAS_THREAD_TIMEOUT (read by OpenBLAS when numpy loads it): the default, and 4 (the shortest).

    python bench/openblas_spin.py
    python bench/openblas_spin.py --quick

Per repeat: the products of one verification (a 500 x 128 query by 128 x 8,192 result keypoints,
7 times: about 100 results of 450 keypoints), then the process's CPU time during a 200 ms sleep.
Results go to bench/results/openblas_spin.json and openblas_spin.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import write_report  # noqa: E402

PROBE = """
import json, sys, time
import numpy as np
repeats = int(sys.argv[1])
rng = np.random.default_rng(0)
query = rng.random((500, 128), dtype=np.float32)
results = rng.random((128, 8192), dtype=np.float32)
spun, products = [], []
for _ in range(repeats):
    time.sleep(0.4)
    started = time.perf_counter()
    for _ in range(7):
        query @ results
    products.append(time.perf_counter() - started)
    cpu = time.process_time()
    time.sleep(0.2)
    spun.append(time.process_time() - cpu)
print(json.dumps({"spun": spun, "products": products}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--name", default="openblas_spin")
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.repeats = 2
    load_before = os.getloadavg()[0]
    rows = []
    for timeout in (None, "4"):
        environment = {key: value for key, value in os.environ.items() if key != "OPENBLAS_THREAD_TIMEOUT"}
        if timeout is not None:
            environment["OPENBLAS_THREAD_TIMEOUT"] = timeout
        output = subprocess.run([sys.executable, "-c", PROBE, str(arguments.repeats)], env=environment,
                                capture_output=True, text=True, check=True).stdout  # fmt: skip
        measured = json.loads(output.strip().splitlines()[-1])
        rows.append({
            "openblas_thread_timeout": timeout or "default",
            "cpu_ms_in_200_ms_after_median": round(1000 * statistics.median(measured["spun"]), 1),
            "cpu_ms_in_200_ms_after_max": round(1000 * max(measured["spun"]), 1),
            "products_ms_median": round(1000 * statistics.median(measured["products"]), 1),
        })  # fmt: skip
        print(rows[-1], flush=True)
    report = {
        "benchmark": "openblas_spin",
        "command": ("python bench/openblas_spin.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip(),
        "date": time.strftime("%Y-%m-%d"),
        "cores": os.cpu_count(),
        "load_average_start": round(load_before, 2),
        "load_average_end": round(os.getloadavg()[0], 2),
        "repeats": arguments.repeats,
        "rows": rows,
    }
    title = (f"CPU the process burns in the 200 ms after one verification's descriptor products (7 x 500 x 128 by "
             f"128 x 8,192), medians of {arguments.repeats}, on {report['cores']} cores (load average "
             f"{report['load_average_start']} at the start, {report['load_average_end']} at the end; {report['date']}): "
             f"`{report['command']}`")  # fmt: skip
    columns = ["OPENBLAS_THREAD_TIMEOUT", "CPU ms in the 200 ms after (median)", "max", "the products, ms (median)"]
    table = [[r["openblas_thread_timeout"], r["cpu_ms_in_200_ms_after_median"], r["cpu_ms_in_200_ms_after_max"],
              r["products_ms_median"]] for r in rows]  # fmt: skip
    write_report(arguments.out, arguments.name, report, title, columns, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
