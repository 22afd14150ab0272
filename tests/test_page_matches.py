"""The page in Chromium: a rotated, recoloured crop of a collection photo searched with "Verify with
local features", the inlier counts in the captions, and a click on the first result drawing why it
matches. Also takes docs/screenshots/matches.png:

    python tests/test_page_matches.py            # writes docs/screenshots/matches.png

(a synthetic collection, untrained network: the global ranking knows nothing, the verification finds
the photo). Needs Debian's chromium (/usr/bin/chromium)."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from served_app import launch_chromium, running_app
from synthetic import draw_textured_picture

PHOTOS = 12
SOUGHT = "photo_03"
ANGLE = 35


def build_collection(root: Path) -> tuple[Path, Path]:
    """(the index folder, the query file): textured photos indexed with local features, and an
    edited crop of one of them."""
    from test_verification import edited_crop

    from cbir.backbones import BACKBONES
    from cbir.build import BuildSettings, build_indexes
    from cbir.datasets import folder_collection
    from cbir.recipe import RecipeSettings
    from cbir.weights import Weights

    photos = root / "photos"
    photos.mkdir(parents=True)
    for seed in range(PHOTOS):
        draw_textured_picture(seed, 800, 600).save(photos / f"photo_{seed:02d}.jpg", quality=90)
    index_dir = root / "indexes"
    settings = BuildSettings(index_dir=index_dir, progress=False, store="exact", local_features=True,
                             recipe=RecipeSettings(weights=Weights.parse("none"), input_size=96))  # fmt: skip
    build_indexes(folder_collection(photos, "photos"), [BACKBONES["xception"]], settings)
    query = root / "query.jpg"
    edited_crop(photos / f"{SOUGHT}.jpg", ANGLE).save(query, quality=90)
    return index_dir, query


def explain_in_browser(index_dir: Path, query: Path, screenshot: Path) -> dict:
    """Search with verification, click the first result; what the page showed (and the screenshot)."""
    from playwright.sync_api import expect, sync_playwright

    with running_app(index_dir, "--weights", "none", "--input-size", "96") as app, sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app.url, wait_until="load")
            page.locator("#search-button").wait_for()
            expect(page.locator("#matches")).to_have_count(0)  # nothing to show yet: not on the page
            page.locator("#query-image input[type=file]").set_input_files(str(query))
            page.wait_for_function("() => document.querySelector('#query-image img')?.naturalWidth > 0")
            page.locator("#verify input").check()
            page.locator("#search-button").click()
            expect(page.locator("#search-status")).to_contain_text("spatial verification", timeout=120_000)
            expect(page.locator("#results img")).to_have_count(12, timeout=60_000)
            captions = page.locator("#results").inner_text()
            page.locator("#results img").first.click()
            page.keyboard.press("Escape")  # close the preview the click opened
            expect(page.locator("#matches img")).to_be_visible(timeout=60_000)
            page.wait_for_function("() => document.querySelector('#matches img')?.naturalWidth > 0")
            size = page.evaluate("() => { const i = document.querySelector('#matches img'); return [i.naturalWidth, i.naturalHeight]; }")
            caption = page.locator("#matches-caption").inner_text()
            page.wait_for_timeout(300)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            # From the results to the drawing (page coordinates: measured unscrolled).
            page.evaluate("() => window.scrollTo(0, 0)")
            top, bottom = page.locator("#search-status").bounding_box(), page.locator("#matches").bounding_box()
            page.screenshot(path=str(screenshot), full_page=True,
                            clip={"x": 0, "y": top["y"] - 8, "width": 1400, "height": bottom["y"] + bottom["height"] - top["y"] + 16})  # fmt: skip
            # 'Search with the selected result' still works, and new results take the drawing away.
            page.locator("#use-result").click()
            expect(page.locator("#results")).to_contain_text(f"#1 {SOUGHT} ·", timeout=120_000)
            expect(page.locator("#matches")).to_have_count(0, timeout=30_000)
            return {"captions": captions, "size": size, "caption": caption}
        finally:
            browser.close()


@pytest.mark.slow
@pytest.mark.browser  # skips without Playwright or Chromium, fails then in the full CI run (conftest.py)
def test_clicking_a_verified_result_draws_its_matches(tmp_path):
    index_dir, query = build_collection(tmp_path)
    shown = explain_in_browser(index_dir, query, tmp_path / "matches.png")
    assert f"#1 {SOUGHT} ·" in shown["captions"] and " inliers" in shown["captions"]
    first_inliers = int(shown["captions"].split(f"#1 {SOUGHT} ·")[1].split(" inliers")[0].split("·")[-1])
    assert shown["caption"].strip() == f"{first_inliers} inliers (homography) between your photo and {SOUGHT}.jpg"
    width, height = shown["size"]
    assert height == 480 and 480 < width <= 1400
    assert (tmp_path / "matches.png").stat().st_size > 20_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots" / "matches.png")
    arguments = parser.parse_args(argv)
    from PIL import Image

    with tempfile.TemporaryDirectory() as scratch:
        index_dir, query = build_collection(Path(scratch))
        shown = explain_in_browser(index_dir, query, arguments.out)
    with Image.open(arguments.out) as taken:  # 256 colours: drawn pictures, a quarter of the bytes
        taken.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(arguments.out, optimize=True)
    print(shown["caption"], f"({shown['size'][0]} x {shown['size'][1]});", arguments.out,
          f"{arguments.out.stat().st_size / 1e3:.0f} KB")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
