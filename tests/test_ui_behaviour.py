"""The page's behaviour (cbir_ui.behaviour), called as plain Python with a session id, without
Gradio: searching, browsing by result per session, and the page's own checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synthetic import make_gallery

from cbir.errors import CbirError
from cbir_ui import behaviour
from cbir_ui.behaviour import BrowsingSessions, PageError, SearchAnswer, SearchPage, parse_box

REPO = Path(__file__).resolve().parents[1]


def test_the_behaviour_imports_no_gradio():
    code = "import sys, cbir_ui.behaviour, cbir_ui.formatting; print(sorted(m for m in sys.modules if 'gradio' in m))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_nothing_in_cbir_imports_gradio():
    importing = [str(path.relative_to(REPO)) for path in (REPO / "cbir").rglob("*.py")
                 if any(line.strip().startswith(("import gradio", "from gradio")) for line in path.read_text().splitlines())]  # fmt: skip
    assert importing == []


def test_a_box_is_four_finite_numbers_or_nothing():
    assert parse_box("") is None and parse_box("  ") is None and parse_box(None) is None
    assert parse_box("1,2.5,30,40") == (1.0, 2.5, 30.0, 40.0)
    for text in ("1,2,3", "a,b,c,d", "1,2,3,nan", "1,2,3,4,5"):
        with pytest.raises(PageError, match="A box is four numbers"):
            parse_box(text)
    assert issubclass(PageError, CbirError)  # shown as a message, never as a bug


def test_browsing_sessions_keep_the_latest_and_nothing_outside_a_browser():
    sessions = BrowsingSessions(limit=2)
    assert sessions.get(None) is None and sessions.get("") is None
    sessions.get("a").selected = 1
    sessions.get("b").selected = 2
    assert sessions.get("a").selected == 1  # "a" used last: "b" is now the oldest
    sessions.get("c")
    assert sessions.get("a").selected == 1 and sessions.get("b").selected is None  # "b" was forgotten


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A page over a small synthetic collection (untrained xception) and its photos."""
    from cbir.backbones import BACKBONES
    from cbir.recipe import RecipeSettings
    from cbir.weights import Weights
    from cbir.build import BuildSettings, build_indexes
    from cbir.datasets import folder_collection
    from cbir.search import SearchEngine

    root = tmp_path_factory.mktemp("ui")
    photos = make_gallery(root / "photos", 8)
    settings = BuildSettings(index_dir=root / "indexes", recipe=RecipeSettings(weights=Weights.parse("none"), input_size=96),
                             progress=False)  # fmt: skip
    build_indexes(folder_collection(root / "photos", "demo"), [BACKBONES["xception"]], settings)
    return SearchPage(SearchEngine(root / "indexes"), root / "indexes"), photos


@pytest.mark.slow
def test_a_search_with_a_session_returns_the_engines_result_and_what_the_page_shows(built):
    page, photos = built
    answer = page.search_photo(str(photos[3]), "", "demo", "xception", "cosine", 3, session="a")
    assert isinstance(answer, SearchAnswer)
    assert [hit.rank for hit in answer.result.hits] == [1, 2, 3]
    assert answer.result.hits[0].image == photos[3].name and answer.result.hits[0].similarity == pytest.approx(1, abs=1e-5)
    assert [caption.split(" ·")[0] for _, caption in answer.items] == [
        f"#{hit.rank} {Path(hit.image).stem}" for hit in answer.result.hits
    ]
    assert all(Path(path).is_file() and "thumbnails" in path for path, _ in answer.items)  # never the photo itself
    assert answer.status.startswith("3 results in ") and "· demo · xception ·" in answer.status
    with pytest.raises(PageError, match="Add an image first"):
        page.search_photo(None, "", "demo", "xception", "cosine", 3, session="a")
    with pytest.raises(PageError, match="Choose a metric"):
        page.search_photo(str(photos[3]), "", "demo", "xception", "manhattan", 3, session="a")


@pytest.mark.slow
def test_browsing_by_result_and_the_previous_query_belong_to_each_session(built, monkeypatch):
    monkeypatch.setattr(behaviour, "SELECT_GRACE_SECONDS", 0.1)
    page, photos = built
    mine = page.search_photo(str(photos[3]), "", "demo", "xception", "cosine", 4, session="a")
    page.search_photo(str(photos[5]), "", "demo", "xception", "cosine", 4, session="b")
    page.select_result(2, "a")
    picture = page.result_as_query(str(photos[3]), "", "a")
    with Image.open(photos[0].parent / mine.result.hits[2].image) as third:
        assert np.array_equal(np.asarray(picture.convert("RGB")), np.asarray(third.convert("RGB")))
    with pytest.raises(PageError, match="Click a result first"):  # "b" clicked nothing
        page.result_as_query(str(photos[5]), "", "b")
    with pytest.raises(PageError, match="There is no previous query"):
        page.previous_query("b")
    previous = page.previous_query("a")  # the photo "a" searched before, as searched
    with Image.open(photos[3]) as searched:
        assert previous.size == searched.size
        assert np.abs(np.asarray(previous, np.int16) - np.asarray(searched.convert("RGB"), np.int16)).max() == 0
    with pytest.raises(PageError, match="There is no previous query"):  # taken back once
        page.previous_query("a")
    with pytest.raises(PageError, match="Click a result first"):  # no browser session: nothing is remembered
        page.result_as_query(str(photos[3]), "", None)


@pytest.fixture
def empty_page(tmp_path) -> SearchPage:
    from cbir.search import SearchEngine

    return SearchPage(SearchEngine(tmp_path / "indexes"), tmp_path / "indexes")


@pytest.mark.parametrize(
    "k, expand_n, expand_alpha, refused",
    [
        (float("nan"), 5, 3.0, "Top k"),  # used to become 100
        (float("inf"), 5, 3.0, "Top k"),
        (-3, 5, 3.0, "Top k"),  # used to become 1
        (0, 5, 3.0, "Top k"),  # used to become 12
        (1e9, 5, 3.0, "Top k"),  # used to become 100
        (2.5, 5, 3.0, "Top k"),
        (5, float("nan"), 3.0, "αQE: top n read"),  # int(nan): a bare ValueError
        (5, float("inf"), 3.0, "αQE: top n read"),
        (5, 0, 3.0, "αQE: top n read"),
        (5, 1e6, 3.0, "αQE: top n read"),
        (5, 5, float("nan"), "αQE: α"),
        (5, 5, float("-inf"), "αQE: α"),
        (5, 5, -1.0, "αQE: α"),
        (5, 5, 11.0, "αQE: α"),
    ],
)
def test_numbers_from_clients_must_be_finite_and_in_range(empty_page, k, expand_n, expand_alpha, refused):
    with pytest.raises(PageError) as raised:
        empty_page.search_photo("query.png", "", "demo", "xception", "cosine", k, True, expand_n, expand_alpha)
    message = str(raised.value)
    assert message.startswith(refused + " must be") and "from" in message and " to " in message


def test_numbers_at_their_bounds_and_left_out_are_accepted():
    assert behaviour.TOP_K.check(1) == 1 and behaviour.TOP_K.check(100.0) == 100 and behaviour.TOP_K.check(None) is None
    assert behaviour.EXPANSION_ALPHA.check(0) == 0 and behaviour.EXPANSION_ALPHA.check(2.5) == 2.5
    assert isinstance(behaviour.TOP_K.check(12.0), int)


def test_the_status_counts_the_results_shown_and_says_which_were_left_out_and_why():
    from cbir.distances import Metric
    from cbir.search import Hit, SearchResult
    from cbir_ui.formatting import LeftOut, status_line

    hits = [Hit(rank, f"picture_{rank:03d}.jpg", Path(f"/x/picture_{rank:03d}.jpg"), 0.1, 0.9) for rank in (1, 2, 3)]
    result = SearchResult(hits=hits, collection="demo", recipe="xception", metric=Metric.COSINE, exact=True,
                          describe_seconds=0.1, search_seconds=0.001, untrained=False)  # fmt: skip
    assert status_line(result).startswith("3 results in ")
    line = status_line(result, left_out=[LeftOut("picture_002.jpg", "file not found")])
    assert line.startswith("2 results in ")
    assert "1 more found but not shown" in line and "picture_002: file not found" in line


@pytest.mark.slow
def test_a_hit_whose_image_was_deleted_is_counted_as_left_out(tmp_path):
    from cbir.backbones import BACKBONES
    from cbir.build import BuildSettings, build_indexes
    from cbir.datasets import folder_collection
    from cbir.recipe import RecipeSettings
    from cbir.search import SearchEngine
    from cbir.weights import Weights

    photos = make_gallery(tmp_path / "photos", 4)
    settings = BuildSettings(index_dir=tmp_path / "indexes", recipe=RecipeSettings(weights=Weights.parse("none"), input_size=96),
                             progress=False, thumbnails=False)  # fmt: skip
    build_indexes(folder_collection(tmp_path / "photos", "demo"), [BACKBONES["xception"]], settings)
    page = SearchPage(SearchEngine(tmp_path / "indexes"), tmp_path / "indexes")
    query = tmp_path / "query.jpg"
    query.write_bytes(photos[2].read_bytes())
    photos[1].unlink()  # deleted after the build, before its thumbnail was made
    answer = page.search_photo(str(query), "", "demo", "xception", "cosine", 4, session="a")
    assert len(answer.result.hits) == 4 and len(answer.items) == 3
    assert answer.status.startswith("3 results in ")
    assert "1 more found but not shown" in answer.status and f"{photos[1].stem}: file not found" in answer.status
    assert str(tmp_path) not in answer.status  # the server's folders are not the visitor's business
    assert page.sessions.get("a").shown == [hit.image for hit in answer.result.hits if hit.image != photos[1].name]


@pytest.mark.slow
def test_only_thumbnail_folders_are_served_never_an_index_folder(built):
    page, _ = built
    allowed = [Path(folder) for folder in behaviour.thumbnail_dirs(page.engine)]
    index_folders = [info.folder.resolve() for info in page.engine.available()]
    assert allowed and index_folders
    for folder in allowed:
        assert not [p for p in folder.rglob("*") if p.name in ("manifest.json", "descriptors.npy")], folder
        assert all(not index.is_relative_to(folder) for index in index_folders), folder


@pytest.mark.slow
def test_two_sessions_sending_the_same_names_each_see_their_own_thumbnails(tmp_path):
    from synthetic import draw_picture

    from cbir.backbones import BACKBONES
    from cbir.build import BuildSettings
    from cbir.recipe import RecipeSettings
    from cbir.search import SearchEngine
    from cbir.trunks import ExtractorCache
    from cbir.uploads import PrivateCollections
    from cbir.weights import Weights

    settings = BuildSettings(recipe=RecipeSettings(weights=Weights.parse("none"), input_size=96), progress=False)
    uploads = PrivateCollections(tmp_path / "uploads", settings, ExtractorCache())
    page = SearchPage(SearchEngine(tmp_path / "indexes", extractors=uploads.extractors), tmp_path / "indexes", uploads)
    sent = {}
    for session, seed in (("alice", 1), ("bob", 2)):
        folder = tmp_path / session
        folder.mkdir()
        for number in range(2):  # the same file names, other pictures
            draw_picture(seed * 10 + number).save(folder / f"photo_{number}.jpg", quality=95)
        uploads.add(session, sorted(folder.iterdir()), "mine", BACKBONES["xception"])
        sent[session] = folder
    def pixels(path) -> np.ndarray:
        with Image.open(path) as picture:
            return np.asarray(picture.convert("RGB"), np.int16)

    for session, other in (("alice", "bob"), ("bob", "alice")):
        for name in ("photo_0.jpg", "photo_1.jpg"):
            shown = pixels(page.served("uploaded: mine", name, session))
            own = np.abs(shown - pixels(sent[session] / name)).mean()
            others = np.abs(shown - pixels(sent[other] / name)).mean()
            assert own < others / 4, (session, name, own, others)  # its own picture, not the other session's
    assert page.served("uploaded: mine", "photo_0.jpg", "alice") != page.served("uploaded: mine", "photo_0.jpg", "bob")


def test_a_store_registered_in_a_test_is_offered_and_searched_by_the_page(tmp_path):
    # The store seam seen from the page: a collection whose index uses a store the project does not
    # list is in the recipe menu and answers searches (issue 27: one module plus one registry line).
    from stubs import TOY_STORE, StubbedEngine, wide, write_collection

    from cbir import stores
    from cbir.datasets import Collection
    from cbir.index import StoreSpec

    stores.register(TOY_STORE)
    try:
        photos = tmp_path / "photos"
        make_gallery(photos, 2)
        write_collection(tmp_path / "idx", Collection("mine", photos, ("picture_000.jpg", "picture_001.jpg")),
                         wide([1, 0], [0, 1]), StoreSpec("toy", {"toy_leaves": 3}))  # fmt: skip
        engine = StubbedEngine(tmp_path / "idx")
        engine.next = wide([0.1, 1])[0]
        page = SearchPage(engine, tmp_path / "idx")
        assert page.collections() == ["mine"] and [key for _, key in page.recipe_choices("mine")] == ["xception"]
        answer = page.search_photo(str(photos / "picture_000.jpg"), "", "mine", "xception", "cosine", 2, session="s")
        assert [hit.image for hit in answer.result.hits] == ["picture_001.jpg", "picture_000.jpg"]
        assert (tmp_path / "idx" / "mine" / "xception" / "toy.txt").is_file()
    finally:
        del stores.STORES["toy"]


def test_the_page_verifies_with_local_features_where_the_index_has_them_and_diffuses(tmp_path):
    # Issue 29 on the page: the option only where the index has local features, the inlier counts in
    # the captions, the re-rankings named in the status; an index without them says how to build them.
    from stubs import RECIPE, StubbedEngine
    from synthetic import draw_textured_picture

    from cbir.datasets import folder_collection
    from cbir.index import Manifest, StoreSpec, write_index
    from cbir.layout import IndexLayout, write_collection_record
    from cbir.local_features import LocalFeatureSettings, describe_image

    photos = tmp_path / "photos"
    photos.mkdir()
    for seed in range(4):
        draw_textured_picture(seed, 640, 480).save(photos / f"photo_{seed}.jpg", quality=90)
    layout = IndexLayout(tmp_path / "indexes")
    rows = np.random.default_rng(5).normal(size=(4, RECIPE.dim)).astype(np.float32)
    for name, features in (("verified", LocalFeatureSettings()), ("plain", None)):
        collection = folder_collection(photos, name)
        write_collection_record(layout, collection)
        manifest = Manifest(collection=name, recipe=RECIPE, images=list(collection.images), store=StoreSpec("exact"),
                            local_features=features)  # fmt: skip
        described = [describe_image(photos / image, features) for image in collection.images] if features else None
        write_index(layout.index_dir(name, RECIPE.key), rows, manifest, local_features=described)
    engine = StubbedEngine(tmp_path / "indexes")
    engine.next = rows[0] + 0.01  # the global ranking puts photo_0 first; the query is a crop of photo_2
    page = SearchPage(engine, tmp_path / "indexes")
    with Image.open(photos / "photo_2.jpg") as source:
        source.crop((100, 80, 560, 420)).rotate(35, expand=True, fillcolor=(128, 128, 128)).save(tmp_path / "q.jpg")
    query = str(tmp_path / "q.jpg")
    assert page.can_verify("verified", RECIPE.key) and not page.can_verify("plain", RECIPE.key)
    plain = page.search_photo(query, "", "verified", RECIPE.key, "cosine", 4, session="s")
    assert plain.result.hits[0].image == "photo_0.jpg" and "inliers" not in plain.items[0][1]
    verified = page.search_photo(query, "", "verified", RECIPE.key, "cosine", 4, verify=True, session="s")
    assert verified.result.hits[0].image == "photo_2.jpg" and verified.result.hits[0].inliers >= 15
    assert verified.items[0][1].endswith(f"· {verified.result.hits[0].inliers} inliers")
    assert "re-ranked by spatial verification" in verified.status.splitlines()[0]
    both = page.search_photo(query, "", "verified", RECIPE.key, "cosine", 4, verify=True, diffusion=True, session="s")
    assert "spatial verification" in both.status and " then diffusion" in both.status
    with pytest.raises(PageError, match=r"no local features to verify with.*--local-features"):
        page.search_photo(query, "", "plain", RECIPE.key, "cosine", 4, verify=True, session="s")
