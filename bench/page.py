"""Time from pressing Search in the page to the ranked results shown, in headless Chromium, beside
the search's own time (the handler's: decode, descriptor, search) for the same searches.

    python bench/page.py                          # 640 x 480, 1024 x 768, 4032 x 3024 photos, 10 each
    python bench/page.py --query-widths 4032 --searches 5
    python bench/page.py --quick                  # 96 px network, 3 searches, 40 photos
    python bench/page.py --no-verify              # without the verified searches (and local features)

The app runs in its own process, exactly as `python app.py` starts it, over a synthetic collection
built with random weights (same arithmetic as ImageNet weights). Each search chooses a different
photo (the page uploads it then, once: timed apart as "upload"), drags a box over its middle 60 %,
presses Search and waits until the gallery shows k thumbnails. Reported per photo size: medians of
the page's time (by the page's own clock, from the button's click event to the last thumbnail
drawn; "driver" is the same from Playwright's click call), the handler's time (the status line's
"N results in T ms": decode, descriptor, search) and their difference, the bytes the server
received for the photo, the requests the page sent to /upload during the searches (0: nothing is
re-sent), and the same searches through the API (gradio_client, `/search_photo`). A warm-up search
first builds the network. Needs Debian's chromium (/usr/bin/chromium).

The verified case (unless --no-verify): the collection is built with --local-features (default
settings) from textured pictures (tests/synthetic.py's `draw_textured_picture`: keypoints up to
the bound, as on real photos; the plain pictures have few), and the same number of searches per
photo size are made with "Verify with local features" ticked, each query a collection picture
drawn again at the query's size: the handler's time then includes the query's local description
and the verification of the top 100 (rows "verified").
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

BOX_FRACTION = 0.6  # the box drawn: the middle 60 % of each side


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="xception")
    parser.add_argument("--searches", type=int, default=10, help="timed searches per photo size")
    parser.add_argument("--photos", type=int, default=300, help="indexed photos")
    parser.add_argument("--k", type=int, default=12)
    parser.add_argument("--input-size", type=int)
    parser.add_argument("--query-widths", default="640,1024,4032", help="widths of the uploaded photos (4:3)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-verify", action="store_true", help="skip the searches with verification")
    parser.add_argument("--name", default=None, help="results file stem (default page, or page-quick)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.searches, arguments.photos = 3, 40
        arguments.input_size = arguments.input_size or 96
    widths = [int(width) for width in arguments.query_widths.split(",")]
    command = "python bench/page.py " + " ".join(argv if argv is not None else sys.argv[1:])

    from playwright.sync_api import sync_playwright
    from served_app import launch_chromium, running_app
    from synthetic import draw_textured_picture, make_gallery

    from bench.common import write_report
    from cbir.backbones import get_backbone
    from cbir.weights import Weights
    from cbir.build import BuildSettings, build_indexes
    from cbir.recipe import RecipeSettings
    from cbir.datasets import folder_collection

    verify = not arguments.no_verify
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        if verify:
            (scratch / "photos").mkdir()
            for seed in range(arguments.photos):
                draw_textured_picture(seed, 1024, 768).save(scratch / "photos" / f"picture_{seed:03d}.jpg", quality=92)
        else:
            make_gallery(scratch / "photos", arguments.photos, width=1024, height=768)
        queries = {
            width: make_gallery(scratch / f"queries-{width}", arguments.searches, width=width, height=width * 3 // 4,
                                start_seed=10_000 + width)  # fmt: skip
            for width in widths
        }
        verified_queries = {}
        if verify:
            for width in widths:
                (scratch / f"verified-{width}").mkdir()
                verified_queries[width] = []
                for number in range(arguments.searches):
                    path = scratch / f"verified-{width}" / f"picture_{number:03d}.jpg"
                    draw_textured_picture((7 * number) % arguments.photos, width, width * 3 // 4).save(path, quality=92)
                    verified_queries[width].append(path)
        warm_up = make_gallery(scratch / "warm-up", 1, width=800, height=600, start_seed=9_999)[0]
        settings = BuildSettings(
            index_dir=scratch / "indexes",
            progress=False,
            recipe=RecipeSettings(weights=Weights.parse("none"), input_size=arguments.input_size),
            local_features=verify,
        )
        build_indexes(folder_collection(scratch / "photos", "bench"), [get_backbone(arguments.backbone)], settings)

        measured: dict[int, dict[str, list[float]]] = {}
        with running_app(scratch / "indexes") as app:
            url = app.url
            with sync_playwright() as playwright:
                browser = launch_chromium(playwright)
                page = browser.new_page(viewport={"width": 1400, "height": 1100})
                uploads: list[str] = []
                page.on("request", lambda request: uploads.append(request.url) if "/upload" in request.url else None)
                page.goto(url, wait_until="load")
                page.locator("#search-button").wait_for()
                page.locator("input[type=range]").first.fill(str(arguments.k))
                search(page, warm_up, arguments.k)  # builds and traces the network: set-up, not search time
                cases = [(width, False) for width in widths] + [(width, True) for width in verified_queries]
                for width, verified in cases:
                    if verified:
                        page.locator("#verify input[type=checkbox]").check()
                    runs = measured[(width, verified)] = {"page": [], "driver": [], "handler": [], "upload": [],
                                                          "uploads_during": [], "uploaded_bytes": []}  # fmt: skip
                    for number, query in enumerate((verified_queries if verified else queries)[width]):
                        uploads.clear()
                        upload, elapsed, driver, handler, during = search(page, query, arguments.k, uploads)
                        # The file the server received (the page shows it from Gradio's cache).
                        shown = page.evaluate("() => document.querySelector('#query-image .image-frame img').src")
                        received = Path(urllib.parse.unquote(shown.split("file=", 1)[1]))
                        runs["uploaded_bytes"].append(received.stat().st_size)
                        for key, value in (("page", elapsed), ("driver", driver), ("handler", handler),
                                           ("upload", upload), ("uploads_during", during)):  # fmt: skip
                            runs[key].append(value)
                        print(f"{width} px{' verified' if verified else ''}, search {number}: page {1000 * elapsed:.0f} ms (driver {1000 * driver:.0f}), "
                              f"handler {1000 * handler:.0f}"
                              f" ms, upload when chosen {1000 * upload:.0f} ms, {during} uploads during the search",
                              flush=True)  # fmt: skip
                browser.close()
            # The same searches through Gradio's API (gradio_client): the file, the box, the rest.
            from gradio_client import Client, handle_file

            client = Client(url, verbose=False)
            for width, verified in measured:
                measured[(width, verified)]["api"] = []
                for query in (verified_queries if verified else queries)[width]:
                    height = width * 3 // 4
                    box = middle_box(width, height)
                    started = time.perf_counter()
                    client.predict(handle_file(str(query)), ",".join(map(str, box)), "bench", arguments.backbone,
                                   "cosine", arguments.k, verify=verified, api_name="/search_photo")  # fmt: skip
                    measured[(width, verified)]["api"].append(time.perf_counter() - started)
        file_sizes = {case: statistics.median(path.stat().st_size for path in (verified_queries if case[1] else queries)[case[0]])
                      for case in measured}  # fmt: skip

    def median_ms(values: list[float]) -> float:
        return round(1000 * statistics.median(values), 1)

    rows, sizes = [], []
    for width, verified in measured:
        runs = measured[(width, verified)]
        page_ms, handler_ms = median_ms(runs["page"]), median_ms(runs["handler"])
        overheads = [page - handler for page, handler in zip(runs["page"], runs["handler"])]
        size = {
            "photo": f"{width} x {width * 3 // 4}",
            "verified": verified,
            "jpeg_bytes": int(file_sizes[(width, verified)]),
            "searches": len(runs["page"]),
            "page_median_ms": page_ms,
            "handler_median_ms": handler_ms,
            "page_minus_handler_median_ms": median_ms(overheads),
            "page_over_handler": round(page_ms / handler_ms, 2),
            "page_p90_ms": round(1000 * sorted(runs["page"])[int(0.9 * (len(runs["page"]) - 1))], 1),
            # The same searches timed from Playwright's click call (it first checks the button is
            # visible and still): what the old figures measured.
            "driver_median_ms": median_ms(runs["driver"]),
            "upload_when_chosen_median_ms": median_ms(runs["upload"]),
            # What the server received for the photo: smaller than the file past 2,048 px a side.
            "uploaded_bytes_median": int(statistics.median(runs["uploaded_bytes"])),
            "uploads_during_searches": int(sum(runs["uploads_during"])),
            "api_median_ms": median_ms(runs["api"]),
            "page_ms": [round(1000 * t, 1) for t in runs["page"]],
            "handler_ms": [round(1000 * t, 1) for t in runs["handler"]],
        }
        sizes.append(size)
        rows.append([size["photo"] + (", verified" if verified else ""), f"{size['jpeg_bytes'] / 1e6:.2f} MB",
                     f"{size['uploaded_bytes_median'] / 1e6:.2f} MB", size["searches"], page_ms, handler_ms,
                     size["page_minus_handler_median_ms"], size["page_over_handler"], size["driver_median_ms"],
                     size["uploads_during_searches"], size["upload_when_chosen_median_ms"], size["api_median_ms"]])  # fmt: skip
    report = {
        "benchmark": "page",
        "command": command.strip(),
        "cores": os.cpu_count(),
        "load_average_end": round(os.getloadavg()[0], 2),
        "date": time.strftime("%Y-%m-%d"),
        "backbone": arguments.backbone,
        "input_size": arguments.input_size or get_backbone(arguments.backbone).input_size,
        "k": arguments.k,
        "indexed_photos": arguments.photos,
        "local_features": verify,
        "box": f"the middle {BOX_FRACTION:.0%} of each side, drawn with the mouse",
        "sizes": sizes,
    }
    stem = arguments.name or ("page-quick" if arguments.quick else "page")
    write_report(
        arguments.out, stem, report,
        f"Click to results in headless Chromium vs the handler's own time, medians of {arguments.searches} "
        f"(`{report['command']}`, {arguments.backbone} at {report['input_size']} px, {arguments.photos} photos, k "
        f"{arguments.k}, a box drawn on each photo; {report['date']}, {report['cores']} cores, load average "
        f"{report['load_average_end']} at the end)"
        + ("; rows \"verified\": the same with \"Verify with local features\" ticked (an index built with "
           "--local-features, textured pictures)" if verify else ""),
        ["photo", "JPEG", "uploaded", "searches", "page ms", "handler ms", "page - handler ms", "page / handler",
         "driver ms", "uploads during searches", "upload when chosen ms", "API ms"],
        rows,
    )  # fmt: skip
    return 0


def middle_box(width: int, height: int) -> tuple[int, int, int, int]:
    margin_x, margin_y = round(width * (1 - BOX_FRACTION) / 2), round(height * (1 - BOX_FRACTION) / 2)
    return (margin_x, margin_y, width - margin_x, height - margin_y)


def search(page, photo: Path, k: int, uploads: list[str] | None = None) -> tuple[float, float, float, float, int]:
    """Choose `photo`, drag the middle box, press Search: (seconds from choosing to the photo shown,
    seconds from the click event to k thumbnails drawn by the page's clock, the same from the
    driver's click call, the handler's seconds, uploads during the search)."""
    before = page.evaluate("() => document.querySelector('#query-image .image-frame img')?.src || ''")
    started = time.perf_counter()
    page.locator("#query-image input[type=file]").set_input_files(str(photo))
    page.wait_for_function(  # the new photo, uploaded and drawn
        "(before) => { const i = document.querySelector('#query-image .image-frame img'); "
        "return i && i.src !== before && i.complete && i.naturalWidth > 0; }",
        arg=before,
        timeout=120_000,
        polling=5,
    )
    chosen = time.perf_counter() - started
    image = page.locator("#query-image .image-frame img")
    left, top, scale, width, height = image.evaluate(
        "(img) => { const r = img.getBoundingClientRect(); "
        "const s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight); "
        "return [r.left + (r.width - img.naturalWidth * s) / 2, r.top + (r.height - img.naturalHeight * s) / 2, s, "
        "img.naturalWidth, img.naturalHeight]; }"
    )
    box = middle_box(width, height)
    page.mouse.move(left + box[0] * scale, top + box[1] * scale)
    page.mouse.down()
    page.mouse.move(left + box[2] * scale, top + box[3] * scale, steps=5)
    page.mouse.up()
    uploads_before = len(uploads) if uploads is not None else 0
    tracker = "document.querySelector('#search-status [data-testid=status-tracker]')"
    # The page's own clock, from the click event the visitor's press makes (what Playwright does
    # before it, checking that the button is there and still, is the driver's time, not the page's).
    page.evaluate("() => document.querySelector('#search-button').addEventListener("
                  "'click', () => { window.benchClickedAt = performance.now(); }, {capture: true, once: true})")
    started = time.perf_counter()
    page.locator("#search-button").click()
    # Gradio shows a progress tracker on the outputs while the event runs: wait for it to appear and
    # to go, then for every result thumbnail to be drawn.
    page.wait_for_function(f"() => !{tracker}.classList.contains('hide')", timeout=120_000, polling=5)
    page.wait_for_function(f"() => {tracker}.classList.contains('hide')", timeout=120_000, polling=5)
    drawn_at = page.wait_for_function(
        "(k) => { const images = [...document.querySelectorAll('#results img')]; "
        "return images.length === k && images.every((i) => i.complete && i.naturalWidth > 0) && performance.now(); }",
        arg=k,
        timeout=120_000,
        polling=5,
    ).json_value()
    driver = time.perf_counter() - started
    in_page = (drawn_at - page.evaluate("() => window.benchClickedAt")) / 1000
    status = page.locator("#search-status").inner_text()
    handler = float(re.search(r"results in (\d+) ms", status).group(1)) / 1000
    return chosen, in_page, driver, handler, (len(uploads) - uploads_before) if uploads is not None else 0


if __name__ == "__main__":
    sys.exit(main())
