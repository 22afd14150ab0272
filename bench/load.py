"""Concurrent visitors: queries/s and latency at 1, 10 and 100 clients, and what happens past the queue.

    python bench/load.py            # xception at 299 px over 200 photos; 1, 10, 100 clients; queue 120
    python bench/load.py --quick    # 96 px, 30 photos, 1 and 4 clients, a queue of 4

The app runs in its own process as `python app.py --no-build --queue-size N` starts it, over a
synthetic collection built with random weights (same arithmetic as ImageNet weights). Each client
is a `gradio_client.Client` in its own thread that sends searches one after the other through
`/search` (a 640 x 480 JPEG each). Reported per client count: answers, busy refusals (gradio's
"Queue is full"), other errors, throughput, and p50 / p95 / max latency. Then `queue size + 50`
clients at once: every one must get an answer or the busy message, none anything else. Last, the
network alone at batch 1, 4 and 8: the most that Gradio's event batching (several queries in one
forward pass) could add to the throughput.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bench.common import write_report  # noqa: E402


def start_app(index_dir: Path, log: Path, *options: str) -> tuple[subprocess.Popen, str]:
    """`python app.py --index-dir DIR --no-build OPTIONS` on a free port; returns once it answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, str(REPO / "app.py"), "--index-dir", str(index_dir), "--no-build", "--port", str(port),
         *options],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", GRADIO_ANALYTICS_ENABLED="False"),
        stdout=open(log, "w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    for _ in range(4800):
        if process.poll() is not None:
            raise SystemExit("the app stopped: " + log.read_text()[-2000:])
        try:
            urllib.request.urlopen(url, timeout=2)
            return process, url
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the app did not start: " + log.read_text()[-2000:])


def run_clients(url: str, queries: list[Path], clients: int, per_client: int, collection: str, backbone: str) -> dict:
    """`clients` threads, each its own gradio_client, each sending `per_client` searches in turn."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    # Captions and scores only: a browser fetches the thumbnails itself, in parallel (bench/page.py).
    # gradio_client gives an upload 5 s by default; a browser waits as long as it takes.
    connections = [Client(url, verbose=False, download_files=False, httpx_kwargs={"timeout": 120})
                   for _ in range(clients)]  # fmt: skip
    latencies: list[float] = []
    outcomes = {"answered": 0, "busy": 0, "other": 0}
    others: list[str] = []
    lock = threading.Lock()
    start_line = threading.Barrier(clients)

    def client(number: int) -> None:
        start_line.wait()
        for request in range(per_client):
            query = queries[(number * per_client + request) % len(queries)]
            editor = {"background": handle_file(str(query)), "layers": [], "composite": None}
            started = time.perf_counter()
            try:
                gallery, _ = connections[number].predict(editor, collection, backbone, "cosine", 12, api_name="/search")
                kind = "answered" if len(gallery) == 12 else "other"
            except Exception as error:  # noqa: BLE001 - every failure is counted and named
                busy = "queue is full" in str(error).lower()
                kind = "busy" if busy else "other"
                if not busy:
                    where = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in traceback.extract_tb(error.__traceback__)
                             if "gradio_client" in f.filename]  # fmt: skip
                    others.append(f"{type(error).__name__}: {error} (in {where[-1] if where else '?'})"[:300])
                if isinstance(error, AppError) and not busy:
                    kind = "other"
            elapsed = time.perf_counter() - started
            with lock:
                outcomes[kind] += 1
                if kind == "answered":
                    latencies.append(elapsed)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    for connection in connections:
        connection.close()
    ordered = sorted(latencies)

    def percentile(p: float) -> float | None:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 3) if ordered else None

    return {
        "clients": clients,
        "requests": clients * per_client,
        **outcomes,
        "queries_per_second": round(outcomes["answered"] / wall, 2),
        "p50_seconds": round(statistics.median(ordered), 3) if ordered else None,
        "p95_seconds": percentile(0.95),
        "max_seconds": round(ordered[-1], 3) if ordered else None,
        "wall_seconds": round(wall, 1),
        "other_errors": others[:5],
    }


def largest_image_cost(url: str, pid: int, scratch: Path, repeats: int = 3) -> dict:
    """Resident memory of the app before and after searches with the largest image it accepts
    (8,000 x 8,000 = 64,000,000 pixels, a JPEG), and the time each took."""
    from gradio_client import Client, handle_file
    from PIL import Image

    def resident(field: str = "VmRSS") -> float:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    path = scratch / "largest.jpg"
    Image.new("RGB", (8000, 8000), (120, 130, 140)).save(path, quality=90)
    client = Client(url, verbose=False, download_files=False, httpx_kwargs={"timeout": 300})
    before, peak_before = resident(), resident("VmHWM")
    seconds, peaks = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        client.predict({"background": handle_file(str(path)), "layers": [], "composite": None}, "bench",
                       "xception", "cosine", 12, api_name="/search")  # fmt: skip
        seconds.append(time.perf_counter() - started)
        peaks.append(resident())
    client.close()
    return {"image": "8000 x 8000 JPEG", "bytes": path.stat().st_size, "resident_mb_before": round(before, 1),
            "resident_mb_after_each": [round(p, 1) for p in peaks], "peak_mb_before": round(peak_before, 1),
            "peak_mb_after": round(resident("VmHWM"), 1), "seconds_each": [round(s, 2) for s in seconds]}  # fmt: skip


def network_batches(backbone: str, input_size: int | None, repeats: int = 5) -> list[dict]:
    """Images/s of the bare network at batch 1, 4, 8: the ceiling on what event batching adds."""
    import numpy as np

    from cbir.trunks import build_extractor
    from cbir.recipe import Recipe

    extractor = build_extractor(Recipe.create(backbone, weights="none", input_size=input_size))
    size = extractor.input_size
    rows = []
    for batch in (1, 4, 8):
        pixels = np.random.default_rng(1).integers(0, 256, size=(batch, size, size, 3), dtype=np.uint8)
        extractor.describe(pixels)
        rates = []
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(max(1, 16 // batch)):
                extractor.describe(pixels)
            rates.append(max(1, 16 // batch) * batch / (time.perf_counter() - started))
        rows.append({"batch": batch, "images_per_second": round(statistics.median(rates), 2)})
    for row in rows:
        row["over_batch_1"] = round(row["images_per_second"] / rows[0]["images_per_second"], 2)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="xception")
    parser.add_argument("--input-size", type=int)
    parser.add_argument("--photos", type=int, default=200)
    parser.add_argument("--clients", default="1,10,100")
    parser.add_argument("--requests", type=int, default=20, help="searches in all per client count (at least one each)")
    parser.add_argument("--queue-size", type=int, default=120)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--largest-only", action="store_true", help="only the largest accepted image's cost")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--name", default="load")
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.input_size = arguments.input_size or 96
        arguments.photos, arguments.clients, arguments.requests, arguments.queue_size = 30, "1,4", 8, 4
        arguments.name = "load-quick"
    command = "python bench/load.py " + " ".join(argv if argv is not None else sys.argv[1:])

    from synthetic import make_gallery

    from cbir.backbones import get_backbone
    from cbir.weights import Weights
    from cbir.build import BuildSettings, build_indexes
    from cbir.recipe import RecipeSettings
    from cbir.datasets import folder_collection

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        make_gallery(scratch / "photos", arguments.photos, width=640, height=480)
        queries = make_gallery(scratch / "queries", 40, width=640, height=480, start_seed=50_000)
        settings = BuildSettings(
            index_dir=scratch / "indexes",
            progress=False,
            recipe=RecipeSettings(weights=Weights.parse("none"), input_size=arguments.input_size),
        )
        build_indexes(folder_collection(scratch / "photos", "bench"), [get_backbone(arguments.backbone)], settings)
        process, url = start_app(scratch / "indexes", scratch / "app.log", "--queue-size", str(arguments.queue_size))
        rows = []
        try:
            run_clients(url, queries, 1, 2, "bench", arguments.backbone)  # builds the network: not measured
            for clients in (int(c) for c in arguments.clients.split(",") if not arguments.largest_only):
                per_client = max(1, arguments.requests // clients)
                rows.append(run_clients(url, queries, clients, per_client, "bench", arguments.backbone))
                print(rows[-1], flush=True)
            if not arguments.largest_only:
                over = run_clients(url, queries, arguments.queue_size + 50, 1, "bench", arguments.backbone)
                over["note"] = "queue size + 50 clients at once"
                rows.append(over)
                print(over, flush=True)
            largest = largest_image_cost(url, process.pid, scratch)
            print(largest, flush=True)
        finally:
            process.terminate()
            process.wait(timeout=60)
    if arguments.largest_only:
        report = {"command": command, "cores": os.cpu_count(), "largest_image": largest}
        title = f"# Largest accepted image: `{command}`"
        write_report(arguments.out, arguments.name, report, title, list(largest), [list(largest.values())])
        return 0
    batches = network_batches(arguments.backbone, arguments.input_size)
    report = {"command": command, "cores": os.cpu_count(), "backbone": arguments.backbone,
              "input_size": arguments.input_size or get_backbone(arguments.backbone).input_size,
              "queue_size": arguments.queue_size, "rows": rows, "network_batches": batches,
              "largest_image": largest}  # fmt: skip
    columns = ["clients", "requests", "answered", "busy", "other", "queries/s", "p50 s", "p95 s", "max s"]
    table = [[r["clients"], r["requests"], r["answered"], r["busy"], r["other"], r["queries_per_second"],
              r["p50_seconds"], r["p95_seconds"], r["max_seconds"]] for r in rows]  # fmt: skip
    batching = ", ".join(f"batch {b['batch']}: {b['images_per_second']} images/s ({b['over_batch_1']} x)" for b in batches)
    title = (f"# Load: `{command}`\n\n{arguments.backbone} at {report['input_size']} px, queue size "
             f"{arguments.queue_size}, {os.cpu_count()} cores. Network alone, {batching}.")  # fmt: skip
    write_report(arguments.out, arguments.name, report, title, columns, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
