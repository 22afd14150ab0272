"""Extraction on this machine: the local executor vs Ray with 1 and 2 network actors, side by side
in one run (the same photos, the same recipe; each path in a fresh process, in turn, `--rounds`
times; medians).

    python bench/ray_extract.py                      # xception at 299 px, 128 photos, 2 rounds
    python bench/ray_extract.py --quick              # 32 photos at 80 px, one round (smoke run)

Per path: wall seconds from the call to the result (Ray: starting the local cluster, the actors
importing TensorFlow and building the network; local: building the network), the images/s of that
wall time, the steady images/s (after the first rows came back), and the peak memory (RSS) of the
driver and of the whole process tree (Ray's own processes and actors included). Ray's workers run
at nice 0 here, as the local path does (Ray's default is 15; see the comment in main()).

Networks are built with random weights (weights=none): the arithmetic, and so the speed, is the
same as with ImageNet weights, which cannot be downloaded here. Results: bench/results/ray_extract.json
and ray_extract.md. Needs Ray (pip install -r requirements-scale.txt).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

PATHS = {"local": ("local", None), "ray-1": ("ray", 1), "ray-2": ("ray", 2)}


def _tree_rss(root: int) -> tuple[int, int]:
    """(RSS of `root`, RSS of `root` and every descendant), bytes, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            pages = int(Path(f"/proc/{entry}/statm").read_text().split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
        rss[int(entry)] = pages * os.sysconf("SC_PAGE_SIZE")
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return rss.get(root, 0), total


class PeakMemory:
    """Samples the process tree's RSS twice a second in a thread; keeps the peaks."""

    def __init__(self) -> None:
        self.driver = self.tree = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            driver, tree = _tree_rss(os.getpid())
            self.driver, self.tree = max(self.driver, driver), max(self.tree, tree)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_one(path: str, folder: Path, input_size: int | None, batch_size: int, save: Path) -> dict:
    """One measurement, in this (fresh) process; the descriptors go to `save` (.npy) for comparison."""
    import numpy as np
    from cbir.trunks import ExtractorCache
    from cbir.extract import extract_descriptors
    from cbir.recipe import Recipe

    executor, actors = PATHS[path]
    recipe = Recipe.create("xception", input_size=input_size, weights="none")
    names = sorted(p.name for p in folder.iterdir())
    memory = PeakMemory()
    load_before = os.getloadavg()[0]
    ticks: list[tuple[float, int]] = []
    started = time.perf_counter()

    def tick(done: int, total: int) -> None:
        ticks.append((time.perf_counter(), done))

    with tempfile.TemporaryDirectory() as checkpoints:
        common = dict(batch_size=batch_size, checkpoint_dir=Path(checkpoints), progress=False, on_progress=tick)
        if executor == "local":
            result = extract_descriptors(ExtractorCache().get(recipe), folder, names, **common)
        else:
            from cbir.distributed import connect, extract_on_ray

            connect(num_cpus=os.cpu_count())
            result = extract_on_ray(recipe, folder, names, actors=actors, **common)
    ended = time.perf_counter()
    memory.stop()
    np.save(save, result.descriptors)
    first = next((t, done) for t, done in ticks if done > 0)
    return {
        "path": path,
        "images": len(names),
        "seconds": round(ended - started, 2),
        "images_per_second": round(len(names) / (ended - started), 2),
        "first_rows_seconds": round(first[0] - started, 2),
        "steady_images_per_second": round((len(names) - first[1]) / max(ended - first[0], 1e-9), 2),
        "driver_peak_rss_mb": round(memory.driver / 2**20),
        "tree_peak_rss_mb": round(memory.tree / 2**20),
        "rows": len(result.images),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # others' work on the machine
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=128, help="photos (1024 x 768 JPEGs)")
    parser.add_argument("--rounds", type=int, default=2, help="each path this many times, in turn")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--input-size", type=int, help="build the network smaller than its own 299 px (smoke runs)")
    parser.add_argument("--quick", action="store_true", help="32 photos at 80 px, one round")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--one", choices=sorted(PATHS), help=argparse.SUPPRESS)  # a child's measurement
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--save", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.quick:
        arguments.images, arguments.rounds, arguments.input_size = 32, 1, 80
    if arguments.one:
        print(json.dumps(run_one(arguments.one, arguments.folder, arguments.input_size, arguments.batch_size,
                                 arguments.save)))
        return

    import numpy as np

    from bench.common import write_report
    from bench.extract import make_photos

    command = "python bench/ray_extract.py " + " ".join(sys.argv[1:])
    runs: dict[str, list[dict]] = {path: [] for path in PATHS}
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "photos"
        make_photos(folder, arguments.images)
        for round_ in range(arguments.rounds):
            for path in PATHS:
                saved = Path(work) / f"{path}-{round_}.npy"
                child = [sys.executable, __file__, "--one", path, "--folder", str(folder), "--save", str(saved),
                         "--batch-size", str(arguments.batch_size)]  # fmt: skip
                if arguments.input_size:
                    child += ["--input-size", str(arguments.input_size)]
                environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
                environment.pop("RAY_ADDRESS", None)  # this machine's cores only
                # Ray runs its workers at nice 15 by default: on a shared machine they would lose the
                # cores to everyone else's work, and the comparison would measure that, not Ray.
                environment["RAY_worker_niceness"] = "0"
                output = subprocess.run(child, capture_output=True, text=True, env=environment, check=False)
                if output.returncode != 0:
                    sys.exit(f"{path} failed:\n{output.stderr[-4000:]}")
                runs[path].append(json.loads(output.stdout.strip().splitlines()[-1]))
                # Agreement with the local path's rows of the same round: max |difference| / max |value|.
                local = np.load(Path(work) / f"local-{round_}.npy")
                rows = np.load(saved)
                runs[path][-1]["max_difference_vs_local"] = float(np.abs(rows - local).max() / np.abs(local).max())
                print(f"round {round_ + 1}: {runs[path][-1]}", flush=True)

    def median(path: str, key: str) -> float:
        return round(statistics.median(run[key] for run in runs[path]), 2)

    local_rate = median("local", "images_per_second")
    local_steady = median("local", "steady_images_per_second")
    table = []
    for path in PATHS:
        table.append([path, median(path, "images_per_second"), median(path, "steady_images_per_second"),
                      median(path, "first_rows_seconds"),
                      round(median(path, "images_per_second") / local_rate, 2),
                      round(median(path, "steady_images_per_second") / local_steady, 2),
                      int(median(path, "driver_peak_rss_mb")), int(median(path, "tree_peak_rss_mb")),
                      f"{max(run['max_difference_vs_local'] for run in runs[path]):.1e}"])  # fmt: skip
    import ray

    from cbir.trunks import keras_versions

    report = {
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "backbone": "xception",
        "input_size": arguments.input_size or 299,
        "weights": "none (random init: same arithmetic and speed as ImageNet's)",
        "images": arguments.images,
        "batch_size": arguments.batch_size,
        "rounds": arguments.rounds,
        "cpus": os.cpu_count(),
        "ray": ray.__version__,
        **keras_versions(),
        "runs": runs,
    }
    title = (f"Extraction, local vs Ray on one machine, xception at {report['input_size']} px, {arguments.images} "
             f"photos of 1024 x 768, images/s (`{command}`, {os.cpu_count()} cores, {report['date']}; medians of "
             f"{arguments.rounds} rounds, paths in turn; wall = from the call to the result, Ray's start and the "
             "networks' build included; steady = after the first rows came back)")  # fmt: skip
    columns = ["path", "wall images/s", "steady images/s", "first rows, s", "wall / local", "steady / local",
               "driver peak RSS, MB", "all processes peak RSS, MB", "max diff vs local"]  # fmt: skip
    write_report(arguments.out, "ray_extract", report, title, columns, table)


if __name__ == "__main__":
    main()
