"""Time from pressing Search in the page to the ranked results shown, in headless Chromium.

    python bench/page.py               # xception at 299 px, k=12, 20 searches, 300 indexed photos
    python bench/page.py --quick       # 96 px, 5 searches, 40 photos

The app runs in its own process, exactly as `python app.py` starts it, over a synthetic collection
built with random weights (same arithmetic as ImageNet weights). Each search uploads a different
photo, presses the button and waits until the gallery shows k captioned results; the first search
(which builds the network) is reported apart, and so are the phases of the wait and the same
searches through the API (gradio_client). Needs Debian's chromium (/usr/bin/chromium).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
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

CHROMIUM = "/usr/bin/chromium"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="xception")
    parser.add_argument("--searches", type=int, default=20)
    parser.add_argument("--photos", type=int, default=300)
    parser.add_argument("--k", type=int, default=12)
    parser.add_argument("--input-size", type=int)
    parser.add_argument("--query-width", type=int, default=1024, help="width of the uploaded photos (4:3)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.searches, arguments.photos = 5, 40
        arguments.input_size = arguments.input_size or 96
    command = "python bench/page.py " + " ".join(argv if argv is not None else sys.argv[1:])

    from playwright.sync_api import sync_playwright
    from synthetic import make_gallery

    from bench.common import cpu_model
    from cbir.backbones import Weights, get_backbone
    from cbir.build import BuildSettings, build_indexes
    from cbir.datasets import folder_collection

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        photos = make_gallery(scratch / "photos", arguments.photos, width=1024, height=768)
        queries = make_gallery(scratch / "queries", arguments.searches + 1, width=arguments.query_width, height=arguments.query_width * 3 // 4, start_seed=10_000)
        settings = BuildSettings(
            index_dir=scratch / "indexes", weights=Weights.parse("none"), input_size=arguments.input_size, progress=False
        )
        build_indexes(folder_collection(scratch / "photos", "bench"), [get_backbone(arguments.backbone)], settings)
        del photos

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        app = subprocess.Popen(
            [sys.executable, str(REPO / "app.py"), "--index-dir", str(scratch / "indexes"), "--no-build", "--port", str(port)],
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", GRADIO_ANALYTICS_ENABLED="False"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}/"
        try:
            for _ in range(240):
                try:
                    urllib.request.urlopen(url, timeout=2)
                    break
                except OSError:
                    time.sleep(0.5)
            times, handler_ms, phases, uploads_per_search = [], [], [], []
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=CHROMIUM,
                    headless=True,
                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
                )
                page = browser.new_page(viewport={"width": 1400, "height": 1100})
                # Files the page uploads per search: the image editor sends its images before the event runs.
                uploads = []
                page.on("request", lambda request: uploads.append(request.url) if request.url.endswith("/upload") else None)
                page.goto(url, wait_until="networkidle")
                page.locator("input[type=range]").first.fill(str(arguments.k))
                for number, query in enumerate(queries):
                    page.locator("input[type=file]").first.set_input_files(str(query))
                    page.wait_for_timeout(1200)  # let the editor draw the upload before pressing
                    tracker = "document.querySelector('#search-status [data-testid=status-tracker]')"
                    uploads.clear()
                    started = time.perf_counter()
                    page.locator("#search-button").click()
                    # Gradio shows a progress tracker on the outputs while the event runs: wait for it
                    # to appear and to go, then for every result thumbnail to be drawn.
                    page.wait_for_function(f"() => !{tracker}.classList.contains('hide')", timeout=120_000, polling=5)
                    shown = time.perf_counter()
                    page.wait_for_function(f"() => {tracker}.classList.contains('hide')", timeout=120_000, polling=5)
                    answered = time.perf_counter()
                    page.wait_for_function(
                        "(k) => { const images = [...document.querySelectorAll('#results img')]; "
                        "return images.length === k && images.every((i) => i.complete && i.naturalWidth > 0); }",
                        arg=arguments.k,
                        timeout=120_000,
                        polling=5,
                    )
                    elapsed = time.perf_counter() - started
                    phases.append((shown - started, answered - shown, started + elapsed - answered))
                    status = page.locator("#search-status").inner_text()
                    handler_ms.append(float(re.search(r"results in (\d+) ms", status).group(1)))
                    times.append(elapsed)
                    uploads_per_search.append(len(uploads))
                    print(f"search {number}: {1000 * elapsed:.0f} ms (descriptor + search {handler_ms[-1]:.0f} ms; "
                          f"until running {1000 * phases[-1][0]:.0f}, running {1000 * phases[-1][1]:.0f}, drawing "
                          f"{1000 * phases[-1][2]:.0f})", flush=True)
                browser.close()
            # The same searches through Gradio's API (gradio_client): no canvas in the way.
            from gradio_client import Client, handle_file

            client = Client(url, verbose=False)
            api_times = []
            for query in queries[1:]:
                started = time.perf_counter()
                editor = {"background": handle_file(str(query)), "layers": [], "composite": None}
                client.predict(editor, "bench", arguments.backbone, "cosine", arguments.k, api_name="/search")
                api_times.append(time.perf_counter() - started)
        finally:
            app.terminate()
            app.wait(timeout=30)

    first, rest = times[0], times[1:]
    report = {
        "benchmark": "page",
        "command": command.strip(),
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "date": time.strftime("%Y-%m-%d"),
        "backbone": arguments.backbone,
        "input_size": arguments.input_size or get_backbone(arguments.backbone).input_size,
        "k": arguments.k,
        "indexed_photos": arguments.photos,
        "first_search_ms": round(1000 * first, 1),
        "searches": len(rest),
        "median_ms": round(1000 * statistics.median(rest), 1),
        "p90_ms": round(1000 * sorted(rest)[int(0.9 * (len(rest) - 1))], 1),
        # What the server's handler spent (descriptor + search); the rest is upload, Gradio and drawing.
        "handler_median_ms": round(statistics.median(handler_ms[1:]), 1),
        # Where the page's time goes, medians: from the click until the event runs (the browser
        # exports the editor's canvas), the event running (upload, decoding, handler, gallery), drawing.
        "phases_median_ms": {
            name: round(1000 * statistics.median(phase[i] for phase in phases[1:]), 1)
            for i, name in enumerate(("until_running", "running", "drawing"))
        },
        "api_median_ms": round(1000 * statistics.median(api_times), 1),
        "all_ms": [round(1000 * t, 1) for t in rest],
        "handler_ms": handler_ms[1:],
        # Every search, the first included: Gradio's ImageEditor uploads background, layer and
        # composite before the event runs, sometimes several times over.
        "uploads_per_search": uploads_per_search,
    }
    arguments.out.mkdir(parents=True, exist_ok=True)
    stem = "page-quick" if arguments.quick else "page"
    (arguments.out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({key: value for key, value in report.items() if key != "all_ms"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
