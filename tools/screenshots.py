"""The README's screenshots, taken from the app itself in headless Chromium.

    python tools/screenshots.py            # writes docs/screenshots/*.jpg

The app serves a synthetic collection (drawn pictures, untrained networks: the rankings shown are
not a measure of anything; they show the page). Needs Debian's chromium (/usr/bin/chromium).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    arguments = parser.parse_args(argv)

    from playwright.sync_api import expect, sync_playwright
    from served_app import launch_chromium, running_app
    from synthetic import make_gallery, phone_photo

    from cbir.backbones import get_backbone
    from cbir.weights import Weights
    from cbir.build import BuildSettings, build_indexes
    from cbir.recipe import RecipeSettings
    from cbir.datasets import folder_collection
    from cbir.search import SearchEngine
    from cbir.self_retrieval import evaluate_self_retrieval

    arguments.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        photos = make_gallery(scratch / "photos", 60, width=640, height=480)
        index_dir = scratch / "indexes"
        settings = BuildSettings(
            index_dir=index_dir,
            progress=False,
            recipe=RecipeSettings(weights=Weights.parse("none"), input_size=96),
        )
        build_indexes(folder_collection(scratch / "photos", "photos"), [get_backbone("xception")], settings)
        evaluate_self_retrieval(SearchEngine(index_dir), "photos", ["xception"], queries=30, progress=False)
        phone = scratch / "phone.jpg"
        box = phone_photo(phone, photos[7], photos[3])
        mine = make_gallery(scratch / "mine", 8, width=640, height=480, start_seed=500)
        archive = scratch / "trip.zip"
        with zipfile.ZipFile(archive, "w") as opened:
            for path in mine:
                opened.write(path, f"trip/{path.name}")

        # --weights, --input-size: what the "Your photos" tab builds with.
        with running_app(index_dir, "--weights", "none", "--input-size", "96") as app:
            url = app.url
            with sync_playwright() as playwright:
                browser = launch_chromium(playwright)
                for theme in ("light", "dark"):
                    page = browser.new_page(viewport={"width": 1400, "height": 1000})
                    page.goto(url + f"?__theme={theme}", wait_until="load")
                    page.locator("#search-button").wait_for()
                    page.locator("#query-image input[type=file]").set_input_files(str(phone))
                    drag(page, box)
                    page.locator("#search-button").click()
                    expect(page.locator("#results img")).to_have_count(12, timeout=120_000)
                    page.wait_for_timeout(500)
                    page.screenshot(path=str(arguments.out / f"search-box-{theme}.jpg"), full_page=True, type="jpeg", quality=80)
                    if theme == "dark":
                        break
                    # Browse by result: the fourth result becomes the query.
                    page.locator("#results img").nth(3).click()
                    page.keyboard.press("Escape")
                    page.locator("#use-result").click()
                    page.wait_for_timeout(4000)
                    page.screenshot(path=str(arguments.out / "browse-by-result.jpg"), full_page=True, type="jpeg", quality=80)
                    page.get_by_role("tab", name="Your photos").click()
                    page.locator("#upload-files input[type=file]").set_input_files(str(archive))
                    page.locator("#upload-button").click()
                    expect(page.locator("#upload-status")).to_contain_text("images described", timeout=120_000)
                    page.screenshot(path=str(arguments.out / "your-photos.jpg"), full_page=True, type="jpeg", quality=80)
                    page.get_by_role("tab", name="Evaluation").click()
                    page.wait_for_timeout(1000)
                    page.screenshot(path=str(arguments.out / "evaluation-self-retrieval.jpg"), full_page=True, type="jpeg", quality=80)
                    page.close()
                browser.close()
    for path in sorted(arguments.out.glob("*.jpg")):
        print(path, f"{path.stat().st_size / 1e3:.0f} KB")
    return 0


def drag(page, box: tuple[int, int, int, int]) -> None:
    """Drag over `box`, given in the pixels of the 4032 px wide phone photo."""
    image = page.locator("#query-image .image-frame img")
    page.wait_for_function("() => document.querySelector('#query-image .image-frame img')?.naturalWidth > 0")
    left, top, scale, natural_width = image.evaluate(
        "(img) => { const r = img.getBoundingClientRect(); "
        "const s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight); "
        "return [r.left + (r.width - img.naturalWidth * s) / 2, r.top + (r.height - img.naturalHeight * s) / 2, s, "
        "img.naturalWidth]; }"
    )
    scale *= natural_width / 4032  # the box is in the phone photo's pixels; the page sent it smaller
    page.mouse.move(left + box[0] * scale, top + box[1] * scale)
    page.mouse.down()
    page.mouse.move(left + box[2] * scale, top + box[3] * scale, steps=5)
    page.mouse.up()


if __name__ == "__main__":
    sys.exit(main())
