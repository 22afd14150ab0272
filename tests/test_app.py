"""The page, served for real on a free local port over a synthetic collection (untrained xception),
driven through Gradio's API and in headless Chromium."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

from cbir.backbones import BACKBONES
from cbir.weights import Weights
from cbir.build import BuildSettings, build_indexes
from cbir.recipe import RecipeSettings
from cbir.datasets import folder_collection
from cbir.distances import Metric
from cbir.search import SearchEngine
from served_app import AppDidNotStart, launch_chromium, running_app
from synthetic import crop_of, make_gallery, phone_photo

REPO = Path(__file__).resolve().parents[1]


def test_build_ui_constructs_without_launching_or_building(tmp_path):
    from cbir_ui.page import build_ui

    demo = build_ui(SearchEngine(tmp_path / "empty"), tmp_path / "empty")
    assert isinstance(demo, gr.Blocks)
    config = str(demo.get_config_file())
    assert "No index is built yet" in config
    assert "search" in {dependency["api_name"] for dependency in demo.get_config_file()["dependencies"]}
    assert "page-notice" not in config
    noticed = build_ui(SearchEngine(tmp_path / "empty"), tmp_path / "empty", notice="**Set CBIR_BUNDLE** to serve one.")
    assert "**Set CBIR_BUNDLE** to serve one." in str(noticed.get_config_file())


def test_captions_and_status_line_say_rank_name_score_and_untrained():
    from cbir.search import Hit, SearchResult
    from cbir_ui.formatting import gallery_items, status_line

    result = SearchResult(
        hits=[Hit(1, "a/b/picture_001.jpg", Path("/x/a/b/picture_001.jpg"), 0.1, 0.995)],
        collection="demo", recipe="xception", metric=Metric.COSINE, exact=False,
        describe_seconds=0.120, search_seconds=0.0031, untrained=True,
    )  # fmt: skip
    served = {"a/b/picture_001.jpg": "/thumbs/0123.jpg"}
    assert gallery_items(result, served.get) == [("/thumbs/0123.jpg", "#1 picture_001 · cos 0.995")]
    line = status_line(result)
    assert "descriptor 120 ms" in line and "search 3.1 ms" in line and "untrained" in line
    assert "· demo · xception ·" in line  # the collection is named even when the page has only one


def test_query_is_the_composite_without_the_canvas_margin():
    from cbir_ui.behaviour import query_image

    canvas = Image.new("RGBA", (640, 640), (0, 0, 0, 0))
    canvas.paste(Image.new("RGBA", (640, 480), (200, 30, 30, 255)), (0, 80))
    picture = query_image({"background": None, "layers": [], "composite": canvas})
    assert picture.size == (640, 480) and picture.getpixel((0, 0)) == (200, 30, 30, 255)
    plain = Image.new("RGB", (50, 40), "blue")
    assert query_image({"background": plain, "layers": [], "composite": None}) is plain
    assert query_image({"background": None, "layers": [], "composite": Image.new("RGBA", (9, 9))}) is None
    assert query_image(None) is None


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A built synthetic collection and the app serving it in its own process."""
    root = tmp_path_factory.mktemp("app")
    photos = root / "photos"
    make_gallery(photos, 20)
    # What a real photo folder may hold beside its images, which must never be served.
    (photos / ".env").write_text("SECRET=x\n")
    (photos / ".git").mkdir()
    (photos / ".git" / "config").write_text("[remote]\n")
    (root / "secret.txt").write_text("outside the collection")
    # A name that is not UTF-8 (legal on Linux): indexed, searched and shown like any other.
    from synthetic import draw_picture

    draw_picture(99).save(os.fsdecode(bytes(photos) + b"/bad_\xff\xfe_name.jpg"), quality=92)
    index_root = root / "indexes"
    settings = BuildSettings(
        index_dir=index_root,
        progress=False,
        recipe=RecipeSettings(weights=Weights.parse("none"), input_size=96),
        store_params={"n_trees": 10},
    )
    build_indexes(folder_collection(photos, "demo"), [BACKBONES["xception"]], settings)
    metric_query_norm = add_metric_collection(index_root, photos)
    try:
        # --weights, --input-size: what the "Your photos" tab builds with.
        with running_app(index_root, "--weights", "none", "--input-size", "96", log=root / "app.log", cwd=root) as app:
            yield {"url": app.url, "photos": photos, "root": root, "metric_query_norm": metric_query_norm, "pid": app.pid}
    except AppDidNotStart as error:
        pytest.fail(str(error))


def add_metric_collection(index_root: Path, photos: Path) -> float:
    """A second collection, "metric", of two rows made from picture_005's own descriptor q: 3q (the
    same direction, far away) and q + 0.5|q|u (u orthogonal to q: close, at an angle). Searching it
    with picture_005, cosine puts the first on top and Euclidean distance the second."""
    import numpy as np

    from cbir.datasets import Collection
    from cbir.index import Manifest, StoreSpec, write_index
    from cbir.layout import IndexLayout, write_collection_record

    engine = SearchEngine(index_root)
    query = engine.describe(photos / "picture_005.jpg", collection="demo", recipe="xception")
    other = np.random.default_rng(3).normal(size=query.shape).astype(np.float32)
    other -= (other @ query) / (query @ query) * query
    norm = float(np.linalg.norm(query))
    rows = np.stack([3 * query, query + 0.5 * norm * other / np.linalg.norm(other)])
    images = ("picture_000.jpg", "picture_001.jpg")
    write_collection_record(IndexLayout(index_root), Collection("metric", photos, images))
    recipe = engine.index("demo", "xception").manifest.recipe
    write_index(index_root / "metric" / "xception",
                rows, Manifest("metric", recipe, list(images), store=StoreSpec("exact")))  # fmt: skip
    return norm


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    return Client(served["url"], verbose=False)


def ask(client, image_path, *, collection="demo", backbone="xception", metric="cosine", k=12):
    from gradio_client import handle_file

    editor = None if image_path is None else {"background": handle_file(str(image_path)), "layers": [], "composite": None}
    return client.predict(editor, collection, backbone, metric, k, api_name="/search")


@pytest.mark.slow
def test_api_search_ranks_and_scores_by_the_metric_chosen(served, client):
    query = served["photos"] / "picture_005.jpg"
    gallery, status = ask(client, query, collection="metric", metric="cosine", k=2)
    assert [item["caption"] for item in gallery] == ["#1 picture_000 · cos 1.000", "#2 picture_001 · cos 0.894"]
    assert "cosine similarity" in status
    gallery, status = ask(client, query, collection="metric", metric="euclidean", k=2)
    first, second = (item["caption"] for item in gallery)
    assert first.startswith("#1 picture_001 · L2 ") and second.startswith("#2 picture_000 · L2 ")
    # |q - (q + 0.5|q|u)| = 0.5|q|; |q - 3q| = 2|q|
    assert float(first.split("L2 ")[1]) == pytest.approx(0.5 * served["metric_query_norm"], rel=0.01)
    assert float(second.split("L2 ")[1]) == pytest.approx(2 * served["metric_query_norm"], rel=0.01)
    assert "Euclidean distance" in status


@pytest.mark.slow
def test_api_search_photo_searches_the_box_drawn_on_a_phone_photo(served, client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    photo = tmp_path / "phone.jpg"
    box = phone_photo(photo, served["photos"] / "picture_007.jpg", served["photos"] / "picture_003.jpg")
    whole, _ = client.predict(handle_file(str(photo)), "", "demo", "xception", "cosine", 3, api_name="/search_photo")
    assert whole[0]["caption"].startswith("#1 picture_003 ·")  # the photo as a whole: what is around the box
    boxed, status = client.predict(handle_file(str(photo)), ",".join(map(str, box)), "demo", "xception", "cosine", 3,
                                   api_name="/search_photo")  # fmt: skip
    assert boxed[0]["caption"].startswith("#1 picture_007 ·") and "3 results" in status
    with pytest.raises(AppError, match="four numbers"):
        client.predict(handle_file(str(photo)), "1,2,3", "demo", "xception", "cosine", 3, api_name="/search_photo")


@pytest.mark.slow
def test_api_search_with_query_expansion_names_its_settings_and_refuses_nonsense(served, client):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    editor = {"background": handle_file(str(served["photos"] / "picture_005.jpg")), "layers": [], "composite": None}
    gallery, status = client.predict(editor, "demo", "xception", "cosine", 5, True, 3, 2.0, api_name="/search")
    assert len(gallery) == 5 and gallery[0]["caption"].startswith("#1 picture_005 ·")
    assert status.endswith("re-ranked by αQE (n = 3, α = 2)")
    with pytest.raises(AppError, match="top n read must be a whole number from 1 to 200"):  # refused before the search
        client.predict(editor, "demo", "xception", "cosine", 5, True, 0, 2.0, api_name="/search")


@pytest.mark.slow
def test_api_search_finds_the_source_of_a_crop_at_rank_1(served, client, tmp_path):
    query = tmp_path / "crop.png"
    crop_of(served["photos"] / "picture_007.jpg", fraction=0.8, scale=1.2).save(query)
    gallery, status = ask(client, query, k=5)
    assert len(gallery) == 5
    assert gallery[0]["caption"].startswith("#1 picture_007 · cos ")
    assert [item["caption"].split()[0] for item in gallery] == ["#1", "#2", "#3", "#4", "#5"]
    assert "5 results" in status and "untrained" in status
    gallery, _ = ask(client, query, metric="euclidean", k=3)
    assert gallery[0]["caption"].startswith("#1 picture_007 · L2 ")


@pytest.mark.slow
def test_bad_inputs_give_readable_messages(served, client, tmp_path):
    from gradio_client.exceptions import AppError

    def message_for(path, **options) -> str:
        with pytest.raises(AppError) as raised:
            ask(client, path, **options)
        text = str(raised.value)
        assert "Traceback" not in text
        return text

    assert "Add an image first" in message_for(None)
    text_file = tmp_path / "notes.png"
    text_file.write_text("not a picture")
    assert "not an image file" in message_for(text_file)
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (5, 4), "red").save(tiny)
    assert "at least 8 x 8 px" in message_for(tiny)
    wide = tmp_path / "wide.png"
    Image.new("L", (20_000, 10)).save(wide)
    assert "20000" in message_for(wide) and "16384" in message_for(wide)


@pytest.mark.slow
def test_an_index_that_vanished_after_start_gives_the_build_command(served, tmp_path):
    from cbir_ui.behaviour import SearchPage
    from cbir_ui.errors import user_errors

    index_root = tmp_path / "indexes"
    shutil.copytree(served["root"] / "indexes", index_root)
    page = SearchPage(SearchEngine(index_root), index_root)
    assert page.recipe_choices("demo") == [("xception · 2048-d · UNTRAINED", "xception")]
    shutil.rmtree(index_root / "demo" / "xception")
    picture = Image.open(served["photos"] / "picture_001.jpg")
    with pytest.raises(gr.Error) as raised:  # as the page shows it
        user_errors(page.search)({"background": picture, "layers": [], "composite": None}, "demo", "xception", "cosine", 12)
    assert "No index at" in raised.value.message and "python build_index.py" in raised.value.message


@pytest.mark.slow
def test_only_thumbnails_of_indexed_images_are_served(served, client, tmp_path):
    import numpy as np

    gallery, _ = ask(client, served["photos"] / "picture_002.jpg", k=1)
    with Image.open(gallery[0]["image"]) as thumbnail, Image.open(served["photos"] / "picture_002.jpg") as original:
        assert thumbnail.format == "JPEG" and thumbnail.size == original.size  # 160 px: under 512, not shrunk
        difference = np.abs(np.asarray(thumbnail, np.int16) - np.asarray(original.convert("RGB"), np.int16))
        assert difference.mean() < 3
    secrets = [served["photos"] / ".env", served["photos"] / ".git" / "config", served["root"] / "secret.txt"]
    for target in (*secrets, served["photos"] / "picture_002.jpg", Path("/etc/passwd"), REPO / "app.py"):
        for route in ("gradio_api/file=", "file="):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(served["url"] + route + str(target), timeout=10)
            assert refused.value.code in (403, 404), (route, target)


def drag_box(page, box: tuple[int, int, int, int], photo_width: int | None = None) -> None:
    """Drag the mouse over `box` on the query photo, as a visitor would. `box` is in the pixels of
    the photo as chosen, `photo_width` wide (the page may have made it smaller before uploading)."""
    image = page.locator("#query-image img")
    image.wait_for()
    page.wait_for_function("() => document.querySelector('#query-image img').naturalWidth > 0")
    left, top, scale, natural_width = image.evaluate(
        "(img) => { const r = img.getBoundingClientRect(); "
        "const s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight); "
        "return [r.left + (r.width - img.naturalWidth * s) / 2, r.top + (r.height - img.naturalHeight * s) / 2, s, "
        "img.naturalWidth]; }"
    )
    scale *= natural_width / (photo_width or natural_width)
    page.mouse.move(left + box[0] * scale, top + box[1] * scale)
    page.mouse.down()
    page.mouse.move(left + (box[0] + box[2]) / 2 * scale, top + (box[1] + box[3]) / 2 * scale, steps=4)
    page.mouse.move(left + box[2] * scale, top + box[3] * scale, steps=4)
    page.mouse.up()


@pytest.mark.slow
@pytest.mark.browser  # skips without Playwright or Chromium, fails then in the full CI run (conftest.py)
def test_page_in_a_real_browser_shows_k_captioned_results(served, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    query = tmp_path / "query.jpg"
    shutil.copy(served["photos"] / "picture_011.jpg", query)
    phone = tmp_path / "phone.jpg"
    box = phone_photo(phone, served["photos"] / "picture_007.jpg", served["photos"] / "picture_003.jpg")
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(served["url"], wait_until="load")
            page.locator("#search-button").wait_for()
            # A 4032 x 3024 phone photo and a box drawn on it: the box's picture comes first.
            page.locator("input[type=file]").first.set_input_files(str(phone))
            drag_box(page, box, photo_width=4032)
            expect(page.locator("#query-box")).to_be_visible()
            # Made 2048 px wide in the browser before it was sent (the networks read at most 480).
            assert page.evaluate("() => document.querySelector('#query-image img').naturalWidth") == 2048
            page.locator("#search-button").click()
            expect(page.locator("#search-status")).to_contain_text("12 results", timeout=60_000)
            expect(page.locator("#results")).to_contain_text("#1 picture_007 ·", timeout=30_000)
            # A click without a drag clears the box: the whole photo is searched, and looks like picture_003.
            drag_box(page, (100, 100, 101, 101))
            expect(page.locator("#query-box")).to_have_count(0)
            page.locator("#search-button").click()
            expect(page.locator("#results")).to_contain_text("#1 picture_003 ·", timeout=60_000)

            page.locator("input[type=file]").first.set_input_files(str(query))
            page.wait_for_function(
                "() => { const i = document.querySelector('#query-image img'); return i && i.src.endsWith('query.jpg'); }"
            )
            page.locator("#search-button").click()
            expect(page.locator("#results")).to_contain_text("#1 picture_011 ·", timeout=60_000)
            thumbnails = page.locator("#results img")
            expect(thumbnails).to_have_count(12, timeout=30_000)
            captions = page.locator("#results").inner_text()
            assert "#1 picture_011" in captions and "#12 " in captions
            page.screenshot(path=str(tmp_path / "search.png"), full_page=True)

            # Browse by result: the fourth result becomes the query and comes back first; then back.
            fourth = captions.split("#4 ")[1].split(" ·")[0]
            thumbnails.nth(3).click()
            page.keyboard.press("Escape")  # close the preview the click opened
            page.locator("#use-result").click()
            expect(page.locator("#results")).to_contain_text(f"#1 {fourth} ·", timeout=60_000)
            page.locator("#previous-query").click()
            expect(page.locator("#results")).to_contain_text("#1 picture_011 ·", timeout=60_000)

            page.get_by_role("tab", name="Evaluation").click()
            expect(page.get_by_text("Not evaluated yet").first).to_be_visible()

            # Both themes are legible: the query's area and the text follow the theme (an image
            # editor's canvas stayed white in dark mode).
            for theme, dark in (("light", False), ("dark", True)):
                themed = browser.new_page(viewport={"width": 1400, "height": 1100})
                themed.goto(served["url"] + f"?__theme={theme}", wait_until="load")
                themed.locator("#search-button").wait_for()
                area, text = themed.evaluate(
                    "() => [getComputedStyle(document.querySelector('#query-image')).backgroundColor, "
                    "getComputedStyle(document.querySelector('h1')).color]"
                )
                assert (luminance(area) < 0.3) is dark and (luminance(text) > 0.6) is dark, (theme, area, text)
                themed.screenshot(path=str(tmp_path / f"{theme}.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "search.png").stat().st_size > 10_000


def luminance(css_colour: str) -> float:
    """0 (black) to 1 (white) for a CSS 'rgb(r, g, b)' or 'rgba(...)' colour."""
    red, green, blue = (float(part) for part in re.findall(r"[\d.]+", css_colour)[:3])
    return (0.2126 * red + 0.7152 * green + 0.0722 * blue) / 255


@pytest.mark.slow
@pytest.mark.browser
def test_your_photos_are_described_searchable_and_seen_by_no_other_session(served, tmp_path):
    import zipfile

    from playwright.sync_api import expect, sync_playwright

    mine = make_gallery(tmp_path / "mine", 4, start_seed=500)
    archive = tmp_path / "trip.zip"
    with zipfile.ZipFile(archive, "w") as opened:
        for path in mine:
            opened.write(path, f"trip/mine_{path.name}")
        opened.writestr("trip/corrupt.jpg", mine[0].read_bytes()[:300])
    unsafe = tmp_path / "unsafe.zip"
    with zipfile.ZipFile(unsafe, "w") as opened:
        opened.writestr("../escape.jpg", mine[0].read_bytes())
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(served["url"], wait_until="load")
            page.get_by_role("tab", name="Your photos").click()
            files = page.locator("#upload-files input[type=file]")
            files.set_input_files(str(unsafe))
            page.locator("#upload-button").click()
            expect(page.get_by_text("would be written outside its folder").first).to_be_visible(timeout=30_000)
            page.locator("#upload-files button[aria-label='Clear']").first.click()
            files.set_input_files(str(archive))
            page.locator("#upload-name input, #upload-name textarea").first.fill("trip")
            page.locator("#upload-button").click()
            status = page.locator("#upload-status")
            expect(status).to_contain_text("4 images described with xception", timeout=120_000)
            expect(status).to_contain_text("corrupt.jpg")  # skipped, and said

            # The Search tab now searches the new collection.
            page.get_by_role("tab", name="Search").click()
            page.locator("#query-image input[type=file]").set_input_files(str(mine[2]))
            page.wait_for_function("() => document.querySelector('#query-image img')?.naturalWidth > 0")
            page.locator("#search-button").click()
            expect(page.locator("#results")).to_contain_text("#1 mine_picture_002 ·", timeout=60_000)
            expect(page.locator("#search-status")).to_contain_text("trip")

            # Another visitor (another browser session) is not offered it, and cannot search it.
            other = browser.new_context().new_page()
            other.goto(served["url"], wait_until="load")
            other.locator("#search-button").wait_for()
            config = other.evaluate("() => JSON.stringify(window.gradio_config)")
            assert "uploaded: trip" not in config and "demo" in config
        finally:
            browser.close()
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError):  # (Gradio's own check refuses a choice the menu never offered; the app's: test_uploads)
        Client(served["url"], verbose=False).predict(
            handle_file(str(mine[2])), "", "uploaded: trip", "xception", "cosine", 3, api_name="/search_photo"
        )


@pytest.mark.slow
def test_a_file_name_that_is_not_utf8_is_searchable_and_shown(served, client, tmp_path):
    from synthetic import draw_picture

    query = tmp_path / "query.png"
    draw_picture(99).save(query)
    gallery, status = ask(client, query, k=3)
    assert gallery[0]["caption"].startswith("#1 bad_\ufffd\ufffd_name · cos ")
    with Image.open(gallery[0]["image"]) as thumbnail:
        assert thumbnail.format == "JPEG"


def resident_megabytes(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")




@pytest.mark.slow
def test_pixel_bombs_are_refused_from_their_header_at_no_memory_cost(served, client, tmp_path):
    from gradio_client.exceptions import AppError

    bomb = tmp_path / "bomb.png"
    Image.new("1", (13_000, 13_000)).save(bomb)  # 20 KB on disk, 169 megapixels
    huge = tmp_path / "huge.jpg"
    Image.new("L", (12_000, 12_000), 128).save(huge, quality=50)
    assert bomb.stat().st_size < 100_000
    before = resident_megabytes(served["pid"])
    for _ in range(3):
        for path in (bomb, huge):
            with pytest.raises(AppError) as raised:
                ask(client, path)
            assert "at most 64,000,000 pixels are allowed" in str(raised.value)
            assert "Traceback" not in str(raised.value)
    assert resident_megabytes(served["pid"]) - before < 200


@pytest.mark.slow
def test_an_upload_over_the_size_limit_is_refused_by_the_server(served, client, tmp_path):
    import httpx

    big = b"\xff\xd8\xff" + os.urandom(26 * 1024 * 1024)
    # gradio_client refuses it before sending (it reads the limit from the page's config) ...
    path = tmp_path / "big.jpg"
    path.write_bytes(big)
    with pytest.raises(ValueError, match="exceeds the maximum file size of 26214400 bytes"):
        ask(client, path)
    # ... and the server refuses it from any other client.
    answer = httpx.post(served["url"] + "gradio_api/upload", files={"files": ("big.jpg", big, "image/jpeg")}, timeout=60)
    assert answer.status_code in (400, 413) and "maximum" in answer.text.lower()


@pytest.mark.slow
def test_a_damaged_index_is_reported_on_the_page_and_the_others_are_served(served, tmp_path):
    from cbir_ui.behaviour import SearchPage
    from cbir_ui.formatting import broken_notice
    from cbir_ui.page import build_ui

    root = tmp_path / "indexes"
    shutil.copytree(served["root"] / "indexes", root)
    damaged = root / "metric" / "xception" / "descriptors.npy"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    page = SearchPage(SearchEngine(root), root)
    assert page.collections() == ["demo"]
    notice = broken_notice(page.broken)
    assert "metric/xception" in notice and "descriptors.npy has 1000 bytes" in notice
    # The rebuild command names the folder the collection was built from (its record), not a placeholder.
    folder = shlex.quote(str(served["photos"].resolve()))
    assert f"python build_index.py --images {folder} --name metric --backbones xception --force" in notice
    demo = build_ui(SearchEngine(root), root)  # what `python app.py --no-build` builds: no exception
    assert "Not served (damaged or unreadable)" in str(demo.get_config_file())
    picture = Image.open(served["photos"] / "picture_003.jpg")
    answer = page.search({"background": picture, "layers": [], "composite": None}, "demo", "xception", "cosine", 3)
    assert answer.items[0][1].startswith("#1 picture_003 ")


@pytest.mark.slow
def test_a_hundred_concurrent_visitors_all_get_their_answer(served):
    sys.path.insert(0, str(REPO))
    from bench.load import run_clients

    queries = sorted(served["photos"].glob("picture_01*.jpg"))
    row = run_clients(served["url"], queries, clients=100, per_client=1, collection="demo", backbone="xception")
    assert row["answered"] == 100 and row["busy"] == 0 and row["other"] == 0, row


def test_the_evaluation_table_shows_each_recipe_column_by_column_with_a_backbones_recipes_together():
    import dataclasses

    from cbir.evaluation import ResultRow, Results
    from cbir_ui.formatting import MEASURED_HEADERS, measured_table

    required = {f.name: 0 for f in dataclasses.fields(ResultRow) if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING}  # fmt: skip

    def row(recipe: str, backbone: str, map_value: float, **recipe_columns) -> ResultRow:
        values = {**required, "recipe": recipe, "backbone": backbone, "protocol": "standard", "metric": "cosine",
                  "query_mode": "cropped", "untrained": False, "map_oxford": map_value, "n_queries": 55}  # fmt: skip
        return ResultRow(**values, **recipe_columns)

    results = Results(
        collection="oxford5k",
        rows=[
            row("xception-gem-w512-paris6k", "xception", 0.7, pooling="gem", whitening="paris6k, 512-d", dim=512),
            row("vgg16", "vgg16", 0.4, dim=4096),
            row("xception", "xception", 0.6, dim=2048),
            row("vgg16-rmac-ms1_0.707_0.5", "vgg16", 0.65, pooling="rmac", scales="1,0.707,0.5", dim=512),
        ],
        pr_curves=[], protocols={}, created="", versions={},
    )  # fmt: skip
    table = measured_table(results)
    headers = MEASURED_HEADERS
    assert headers[:5] == ["backbone", "pooling", "scales", "whitened on", "dim"]
    columns = [[line[i] for i in range(5)] + [line[headers.index("mAP (Oxford)")]] for line in table]
    assert columns == [
        ["vgg16", "GAP", "1", "-", 4096, 0.4],  # registry order; the study's recipe first
        ["vgg16", "R-MAC", "1,0.707,0.5", "-", 512, 0.65],
        ["xception", "GAP", "1", "-", 2048, 0.6],
        ["xception", "GeM", "1", "paris6k, 512-d", 512, 0.7],
    ]
