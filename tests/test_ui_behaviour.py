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


# --- The page's behaviour on small hand-made indexes: no network, no server, no Gradio. ---------
# Every picture is described by the same chosen vector (FixedNetworks), so each search's ranking is
# the order of the index rows' similarity to it; loading the query, ranking, thumbnails, captions
# and sessions are the project's own code.

from cbir.backbones import DEFAULT_BACKBONE  # noqa: E402
from cbir.trunks import ExtractorCache  # noqa: E402
from stubs import RECIPE, wide  # noqa: E402

QUERY = wide([1, 0])[0]


class FixedNetwork:
    def __init__(self, recipe) -> None:
        self.recipe = recipe
        self.input_size = recipe.input_size

    def describe(self, batch, *, pad_to=None) -> np.ndarray:
        return np.tile(QUERY, (len(batch), 1))


class FixedNetworks(ExtractorCache):
    def get(self, recipe) -> FixedNetwork:
        return FixedNetwork(recipe.base)


def at_angle(*cosines: float) -> np.ndarray:
    """Unit rows whose cosine similarity to QUERY is each of `cosines`."""
    return wide(*[[c, float(np.sqrt(1 - c * c))] for c in cosines])


def write_rows(index_dir: Path, collection, recipe, rows: np.ndarray) -> None:
    from cbir.index import Manifest, StoreSpec, write_index
    from cbir.layout import IndexLayout, write_collection_record

    layout = IndexLayout(index_dir)
    write_collection_record(layout, collection)
    manifest = Manifest(collection=collection.name, recipe=recipe, images=list(collection.images), store=StoreSpec("exact"))
    write_index(layout.index_dir(collection.name, recipe.key), rows, manifest)


# demo's images in collection order and the cosine of each to the query: the ranking is
# picture_003, picture_005 (no file: never shown), picture_001, big, picture_000, picture_002, picture_004.
DEMO = {"big.jpg": 0.9, "picture_000.jpg": 0.8, "picture_001.jpg": 0.95, "picture_002.jpg": 0.6,
        "picture_003.jpg": 1.0, "picture_004.jpg": 0.3, "picture_005.jpg": 0.99}  # fmt: skip
DEMO_RANKING = ["picture_003.jpg", "picture_005.jpg", "picture_001.jpg", "big.jpg", "picture_000.jpg",
                "picture_002.jpg", "picture_004.jpg"]  # fmt: skip
LANDMARK_QUERIES = [  # (query name, image id, box) as a ground truth lists them: Oxford has several per landmark
    ("all_souls_1", "picture_002", (10, 20, 90, 100)),
    ("all_souls_2", "picture_003", (0, 0, 50, 50)),  # the same landmark: not a second example
    ("all_saints_1", "gone_001", (0, 0, 10, 10)),  # not in the index: the landmark's next query stands in
    ("all_saints_2", "big", (100, 200, 700, 800)),
    ("bridge_1", "picture_001", (0, 0, 80, 60)),
    ("magdalen_1", "picture_000", (1, 2, 31, 42)),
    ("pitt_rivers_1", "picture_005", (5, 6, 37, 48)),  # its file is gone: no thumbnail, left out of the gallery
    ("radcliffe_camera_1", "picture_004", (9, 10, 41, 52)),
    ("ashmolean_1", "picture_000", (13, 14, 45, 56)),
    ("balliol_1", "picture_001", (17, 18, 57, 48)),
    ("cornmarket_1", "picture_002", (21, 22, 53, 64)),  # the ninth landmark: past the eight shown
]
PLAIN = [f"p{number:02d}.jpg" for number in range(17)]
OTHER_RECIPES = ["vgg16", "vgg16-gem"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Three collections: demo (Oxford-like queries, four recipes, one photo deleted since the build),
    plain (17 photos, no queries) and other (two vgg16 recipes, no photos on disk)."""
    from synthetic import draw_picture

    from cbir.datasets import Collection
    from cbir.datasets.model import Query
    from cbir.recipe import Recipe

    root = tmp_path_factory.mktemp("site")
    photos = root / "demo-photos"
    make_gallery(photos, 6)
    (photos / "picture_005.jpg").unlink()  # deleted after the build
    draw_picture(99, 1200, 900).save(photos / "big.jpg", quality=90)
    queries = tuple(Query(name, image, box) for name, image, box in LANDMARK_QUERIES)
    demo = Collection("demo", photos, tuple(DEMO), queries)
    index_dir = root / "indexes"
    write_rows(index_dir, demo, RECIPE, at_angle(*DEMO.values()))
    rng = np.random.default_rng(0)
    for recipe in (Recipe.create("vgg16", weights="none"), Recipe.create("dinov2_small", weights="none"),
                   Recipe.create("xception", weights="none", input_size=96, pooling="gem")):  # fmt: skip
        write_rows(index_dir, demo, recipe, rng.normal(size=(len(DEMO), recipe.dim)).astype(np.float32))
    plain_photos = root / "plain-photos"
    make_gallery(plain_photos, 17, width=48, height=40)
    for number, path in enumerate(sorted(plain_photos.iterdir())):
        path.rename(plain_photos / PLAIN[number])
    write_rows(index_dir, Collection("plain", plain_photos, tuple(PLAIN)), RECIPE, at_angle(*np.linspace(0.99, 0.1, 17)))
    other = Collection("other", root / "nowhere", ("a.jpg", "b.jpg", "c.jpg"))
    for pooling in (None, "gem"):
        recipe = Recipe.create("vgg16", weights="none", **({"pooling": pooling} if pooling else {}))
        write_rows(index_dir, other, recipe, rng.normal(size=(3, recipe.dim)).astype(np.float32))
    engine = SearchEngine(index_dir, extractors=FixedNetworks())
    return SimpleNamespace(page=SearchPage(engine, index_dir), photos=photos, plain=plain_photos, root=root)


from types import SimpleNamespace  # noqa: E402

from cbir.search import SearchEngine  # noqa: E402


def pixels(picture) -> np.ndarray:
    if not isinstance(picture, Image.Image):
        with Image.open(picture) as opened:
            return np.asarray(opened.convert("RGB"), np.int16)
    return np.asarray(picture.convert("RGB"), np.int16)


def test_the_collection_menu_lists_each_collection_once_in_name_order(site):
    assert site.page.collections() == ["demo", "other", "plain"]
    assert site.page.collection_choices("anyone") == ["demo", "other", "plain"]  # no uploads on this page
    assert site.page.index_root == site.root / "indexes"


def test_the_recipe_menu_offers_the_studys_backbones_in_registry_order_then_the_newer_ones(site):
    choices = site.page.recipe_choices("demo")
    assert [key for _, key in choices] == ["vgg16", "xception", "xception-gem", "dinov2_small"]
    assert choices[0] == ("vgg16 · 4096-d · UNTRAINED", "vgg16")
    assert choices[-1] == ("newer · dinov2_small · 384-d · UNTRAINED", "dinov2_small")
    assert site.page.recipe_choices("other") == [("vgg16 · 4096-d · UNTRAINED", "vgg16"),
                                                 ("vgg16 · GeM · 512-d · UNTRAINED", "vgg16-gem")]  # fmt: skip
    assert site.page.recipe_choices("nothing-built") == [] and site.page.recipe_choices(None) == []


def test_the_default_recipe_is_the_default_backbone_else_the_first_offered(site):
    assert DEFAULT_BACKBONE == "xception"
    assert site.page.default_recipe("demo") == "xception"
    assert site.page.default_recipe("other") == "vgg16"
    assert site.page.default_recipe("nothing-built") is None


def test_verification_is_offered_only_for_an_index_with_local_features(site):
    page = site.page
    assert not page.can_verify("demo", "xception")  # built without them
    assert not page.can_verify("demo", "not-built") and not page.can_verify("not-built", "xception")
    assert not page.can_verify(None, "xception") and not page.can_verify("demo", None) and not page.can_verify("", "")


def test_the_examples_are_one_query_per_landmark_in_the_ground_truths_order_at_most_eight(site):
    examples = site.page.example_queries("demo")
    assert examples == [
        ("picture_002.jpg", "all_souls_1", (10.0, 20.0, 90.0, 100.0)),
        ("big.jpg", "all_saints_2", (100.0, 200.0, 700.0, 800.0)),
        ("picture_001.jpg", "bridge_1", (0.0, 0.0, 80.0, 60.0)),
        ("picture_000.jpg", "magdalen_1", (1.0, 2.0, 31.0, 42.0)),
        ("picture_005.jpg", "pitt_rivers_1", (5.0, 6.0, 37.0, 48.0)),
        ("picture_004.jpg", "radcliffe_camera_1", (9.0, 10.0, 41.0, 52.0)),
        ("picture_000.jpg", "ashmolean_1", (13.0, 14.0, 45.0, 56.0)),
        ("picture_001.jpg", "balliol_1", (17.0, 18.0, 57.0, 48.0)),
    ]


def test_without_queries_the_examples_are_photos_spread_over_the_collection(site):
    assert site.page.example_queries("plain") == [(name, name[:-4], None) for name in PLAIN[::2][:8]]
    assert site.page.example_queries("other") == [("a.jpg", "a", None), ("b.jpg", "b", None), ("c.jpg", "c", None)]
    assert site.page.example_queries("nothing-built") == [] and site.page.example_queries(None) == []


def test_the_example_gallery_shows_a_thumbnail_of_each_example_whose_image_can_be_read(site):
    gallery = site.page.example_gallery("demo")
    names = [name for _, name, _ in site.page.example_queries("demo") if name != "pitt_rivers_1"]
    assert [caption for _, caption in gallery] == names
    for (path, _), (image, _, _) in zip(gallery, [e for e in site.page.example_queries("demo") if e[1] != "pitt_rivers_1"]):
        assert Path(path).is_relative_to(site.root / "indexes" / "demo" / "thumbnails"), path
        with Image.open(path) as thumbnail, Image.open(site.photos / image) as photo:
            assert max(thumbnail.size) == min(512, max(photo.size))  # big.jpg shrinks to the page's 512 px
            assert thumbnail.size[0] / thumbnail.size[1] == pytest.approx(photo.size[0] / photo.size[1], rel=0.02)
    assert site.page.example_gallery("nothing-built") == []


def test_an_example_clicked_becomes_the_query_cut_to_its_box(site):
    page = site.page
    chosen = page.example_chosen("demo", 1)  # all_saints_2: big.jpg, box (100, 200, 700, 800)
    with Image.open(site.photos / "big.jpg") as photo:
        expected = photo.convert("RGB").crop((100, 200, 700, 800))
    assert chosen.size == (600, 600) and np.array_equal(pixels(chosen), pixels(expected))
    assert page.example_chosen("demo", 7).size == (40, 30)  # balliol_1: box (17, 18, 57, 48)
    assert page.example_chosen("demo", 8) is None and page.example_chosen("demo", 99) is None  # examples changed
    assert page.example_chosen("demo", None) is None and page.example_chosen("nothing-built", 0) is None
    whole = page.example_picture("plain", "p03.jpg", None)  # no box: the whole photo
    assert np.array_equal(pixels(whole), pixels(site.plain / "p03.jpg"))


def test_a_search_shows_each_readable_hit_with_rank_name_and_score_and_counts_the_rest_apart(site):
    answer = site.page.search_photo(str(site.photos / "picture_003.jpg"), "", "demo", "xception", "cosine", 4,
                                    session="shown")  # fmt: skip
    assert [hit.image for hit in answer.result.hits] == DEMO_RANKING[:4]
    assert [caption for _, caption in answer.items] == ["#1 picture_003 · cos 1.000", "#3 picture_001 · cos 0.950",
                                                        "#4 big · cos 0.900"]  # fmt: skip
    assert all(Path(path).is_file() and Path(path).is_relative_to(site.root / "indexes" / "demo") for path, _ in answer.items)
    first, notice = answer.status.split("\n\n")
    assert first.startswith("3 results in ") and first.endswith(" · demo · xception · cosine similarity · "
                                                                "**untrained weights: rankings are meaningless**")  # fmt: skip
    assert notice.startswith("⚠ 1 more found but not shown: their images cannot be read since the index was built "
                             "(picture_005: file not found)")  # fmt: skip
    assert str(site.root) not in answer.status


def test_top_k_left_out_is_twelve_and_a_box_reaches_the_search(site):
    answer = site.page.search_photo(str(site.plain / "p00.jpg"), None, "plain", "xception", "euclidean", None)
    assert [hit.image for hit in answer.result.hits] == PLAIN[:12]
    assert answer.items[0][1].startswith("#1 p00 · L2 ") and answer.status.startswith("12 results in ")
    assert "· plain · xception · Euclidean distance" in answer.status
    boxed = site.page.search_photo(str(site.plain / "p00.jpg"), "1,2,30,20", "plain", "xception", "cosine", 2.0)
    assert [hit.rank for hit in boxed.result.hits] == [1, 2]
    with pytest.raises(CbirError, match="the selected region is 4 x 4 px; select at least 8 x 8 px"):  # the box is used
        site.page.search_photo(str(site.plain / "p00.jpg"), "0,0,4,4", "plain", "xception", "cosine", 2)


def test_re_rankings_are_named_on_the_first_line_in_the_order_they_ran(site):
    photo = str(site.photos / "picture_003.jpg")
    expanded = site.page.search_photo(photo, "", "demo", "xception", "cosine", 4, True, 3, 1.5, session="rr")
    first, rest = expanded.status.split("\n", 1)
    assert first.endswith("**untrained weights: rankings are meaningless** · re-ranked by αQE (n = 3, α = 1.5)")
    assert rest.startswith("\n⚠ 1 more found but not shown")  # the notice stays below
    both = site.page.search_photo(photo, "", "plain", "xception", "cosine", 4, expand=True, diffusion=True)
    assert both.status.endswith("**untrained weights: rankings are meaningless** · re-ranked by αQE (n = 50, α = 3) then "
                                "diffusion (k = 50, α = 0.99)")  # fmt: skip
    defaults = site.page.search_photo(photo, "", "plain", "xception", "cosine", 4, True, None, None)
    assert defaults.status.endswith(" · re-ranked by αQE (n = 50, α = 3)")
    plain = site.page.search_photo(photo, "", "plain", "xception", "cosine", 4)
    assert "re-ranked" not in plain.status and "\n" not in plain.status


def test_the_legacy_search_takes_an_editors_picture_and_searches_it_whole(site):
    with Image.open(site.photos / "picture_003.jpg") as photo:
        picture = photo.convert("RGB")
    answer = site.page.search({"background": picture, "layers": [], "composite": None}, "demo", "xception", "cosine", 2,
                              session="legacy")  # fmt: skip
    assert [hit.image for hit in answer.result.hits] == DEMO_RANKING[:2]
    assert answer.status.startswith("1 results in ")  # picture_005 is left out
    expanded = site.page.search(picture, "plain", "xception", "cosine", 3, True, 4, 2.0, session="legacy")
    assert expanded.status.endswith(" · re-ranked by αQE (n = 4, α = 2)")
    site.page.select_result(1, "legacy")
    shown = expanded.result.hits[1].image
    assert np.array_equal(pixels(site.page.result_as_query(None, None, "legacy")), pixels(site.plain / shown))
    assert behaviour.query_image(picture) is picture  # a picture given as it is
    with pytest.raises(PageError) as raised:
        site.page.search(None, "demo", "xception", "cosine", 2)
    assert str(raised.value) == "Add an image first: upload, paste or take a photo, then crop the part to search."


def test_what_a_search_cannot_do_is_a_message_saying_what_to_do(site, tmp_path):
    page, photo = site.page, str(site.photos / "picture_003.jpg")
    expected = {
        (None, "demo", "xception", "cosine"): "Add an image first: upload, paste or take a photo, then drag a box on "
                                              "the part to search.",
        ("", "demo", "xception", "cosine"): "Add an image first: upload, paste or take a photo, then drag a box on the "
                                            "part to search.",
        (photo, None, "xception", "cosine"): "No index is built yet. Build one with: python build_index.py --dataset "
                                             "oxford5k",
        (photo, "demo", "", "cosine"): "No index is built yet. Build one with: python build_index.py --dataset oxford5k",
        (photo, "demo", "xception", "dot"): "Choose a metric: cosine, euclidean.",
    }  # fmt: skip
    for (query, collection, recipe, metric), message in expected.items():
        with pytest.raises(PageError) as raised:
            page.search_photo(query, "", collection, recipe, metric, 3)
        assert str(raised.value) == message
    with pytest.raises(PageError) as raised:
        page.search_photo(photo, "", "demo", "xception", "cosine", 3, verify=True)
    assert str(raised.value) == (  # the command that builds them, naming the images folder the index came from
        "xception of demo has no local features to verify with: build it with them: python build_index.py --images "
        f"{site.photos} --name demo --backbones xception --force --local-features"
    )
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a picture")
    with pytest.raises(CbirError, match="^the uploaded image: "):  # the visitor's file, not the server's path
        page.search_photo(str(broken), "", "demo", "xception", "cosine", 3)


def test_numbers_out_of_range_say_the_field_the_range_and_what_came():
    assert behaviour.TOP_K.check("7") == 7 and behaviour.EXPANSION_READ.check(200) == 200
    assert behaviour.EXPANSION_ALPHA.check(10) == 10 and isinstance(behaviour.EXPANSION_ALPHA.check(3), float)
    cases = [
        (behaviour.TOP_K, 101, "Top k must be a whole number from 1 to 100; got 101."),
        (behaviour.TOP_K, "abc", "Top k must be a whole number from 1 to 100; got 'abc'."),
        (behaviour.TOP_K, [3], "Top k must be a whole number from 1 to 100; got [3]."),
        (behaviour.EXPANSION_READ, 201, "αQE: top n read must be a whole number from 1 to 200; got 201."),
        (behaviour.EXPANSION_ALPHA, 10.5, "αQE: α must be a number from 0 to 10; got 10.5."),
        (behaviour.EXPANSION_ALPHA, -0.01, "αQE: α must be a number from 0 to 10; got -0.01."),
    ]
    for field, value, message in cases:
        with pytest.raises(PageError) as raised:
            field.check(value)
        assert str(raised.value) == message


def test_a_box_that_is_not_four_numbers_is_quoted_back_cut_to_forty_characters():
    with pytest.raises(PageError) as raised:
        parse_box("1,2,3,x" + "9" * 60)
    assert str(raised.value) == ("A box is four numbers, left,top,right,bottom in the photo's pixels (got "
                                 f"{('1,2,3,x' + '9' * 60)[:40]!r}).")  # fmt: skip
    assert parse_box(" 1, 2 ,3,4 ") == (1.0, 2.0, 3.0, 4.0)
    with pytest.raises(PageError):
        parse_box("1,2,3,inf")


def test_the_browsing_sessions_remember_a_thousand_by_default():
    sessions = BrowsingSessions()
    sessions.get("first").selected = 5
    for number in range(999):
        sessions.get(f"s{number}")
    assert sessions.get("first").selected == 5  # the thousandth: still there (and now the newest)
    for number in range(1000):
        sessions.get(f"t{number}")
    assert sessions.get("first").selected is None  # a thousand newer ones pushed it out
    assert sessions.get("t999") is sessions.get("t999")


def test_the_selected_result_becomes_the_query_and_the_searched_photo_the_previous_one(site, tmp_path, monkeypatch):
    monkeypatch.setattr(behaviour, "SELECT_GRACE_SECONDS", 0.05)
    page = site.page
    big = tmp_path / "big-query.png"
    Image.open(site.photos / "big.jpg").convert("L").resize((1600, 1200)).save(big)  # greyscale, wider than kept
    page.search_photo(str(big), "", "demo", "xception", "cosine", 5, session="one")
    page.select_result(1, "one")  # the second result shown: picture_001 (picture_005 is not shown)
    picture = page.result_as_query(str(big), "0,0,1400,700", "one")
    assert np.array_equal(pixels(picture), pixels(site.photos / "picture_001.jpg"))
    previous = page.previous_query("one")
    assert previous.mode == "RGB" and previous.size == (1024, 512)  # kept small: the box, at most 1024 px a side
    with Image.open(big) as searched:
        expected = searched.convert("RGB").crop((0, 0, 1400, 700))
        expected.thumbnail((1024, 1024))
    assert np.abs(pixels(previous) - pixels(expected)).max() <= 1
    with pytest.raises(PageError) as raised:
        page.previous_query("one")
    assert str(raised.value) == "There is no previous query: 'Search with the selected result' keeps one."


def test_each_search_forgets_the_last_click_and_clicks_past_the_results_are_refused(site, monkeypatch):
    monkeypatch.setattr(behaviour, "SELECT_GRACE_SECONDS", 0.05)
    page, photo = site.page, str(site.photos / "picture_003.jpg")
    page.search_photo(photo, "", "demo", "xception", "cosine", 4, session="two")  # three shown
    for index in (3, -1):
        page.select_result(index, "two")
        with pytest.raises(PageError) as raised:
            page.result_as_query(photo, "", "two")
        assert str(raised.value) == "Click a result first, then 'Search with the selected result'."
    page.select_result(2, "two")
    assert np.array_equal(pixels(page.result_as_query(photo, "", "two")), pixels(site.photos / "big.jpg"))
    page.search_photo(photo, "", "demo", "xception", "cosine", 4, session="two")
    with pytest.raises(PageError, match="Click a result first"):
        page.result_as_query(photo, "", "two")
    page.select_result(0, None)  # no browser session: nothing to remember, nothing fails


def test_a_click_still_on_its_way_is_waited_for(site, monkeypatch):
    import threading
    import time

    monkeypatch.setattr(behaviour, "SELECT_GRACE_SECONDS", 5.0)
    page, photo = site.page, str(site.photos / "picture_003.jpg")
    page.search_photo(photo, "", "demo", "xception", "cosine", 4, session="late")
    threading.Timer(0.2, page.select_result, (0, "late")).start()  # the click's event arrives after the button's
    started = time.monotonic()
    picture = page.result_as_query("", "", "late")
    assert np.array_equal(pixels(picture), pixels(site.photos / "picture_003.jpg"))
    assert time.monotonic() - started < 1.0  # answered as soon as the click came, not at the end of the grace
    with pytest.raises(PageError, match="There is no previous query"):  # no photo was searched: none kept
        page.previous_query("late")


def test_previous_queries_come_back_newest_first_at_most_ten(site, tmp_path, monkeypatch):
    monkeypatch.setattr(behaviour, "SELECT_GRACE_SECONDS", 0.05)
    page = site.page
    queries = []
    for number in range(12):
        path = tmp_path / f"query_{number}.png"
        Image.new("RGB", (20 + number, 16), (10 * number, 0, 0)).save(path)
        queries.append(path)
        page.search_photo(str(path), "", "demo", "xception", "cosine", 2, session="many")
        page.select_result(0, "many")
        page.result_as_query(str(path), "", "many")
    widths = []
    for _ in range(10):
        widths.append(page.previous_query("many").size[0])
    assert widths == [20 + number for number in range(11, 1, -1)]
    with pytest.raises(PageError, match="There is no previous query"):
        page.previous_query("many")


def test_two_sessions_browse_apart(site, monkeypatch):
    monkeypatch.setattr(behaviour, "SELECT_GRACE_SECONDS", 0.05)
    page = site.page
    page.search_photo(str(site.photos / "picture_003.jpg"), "", "demo", "xception", "cosine", 4, session="alice")
    page.search_photo(str(site.plain / "p00.jpg"), "", "plain", "xception", "cosine", 4, session="bob")
    page.select_result(0, "alice")
    page.select_result(3, "bob")
    assert np.array_equal(pixels(page.result_as_query("", "", "bob")), pixels(site.plain / "p03.jpg"))
    assert np.array_equal(pixels(page.result_as_query("", "", "alice")), pixels(site.photos / "picture_003.jpg"))
    with pytest.raises(PageError, match="Click a result first"):
        page.result_as_query("", "", "carol")
    with pytest.raises(PageError, match="Click a result first"):
        page.result_as_query("", "", None)
    with pytest.raises(PageError, match="There is no previous query"):
        page.previous_query(None)


def built_as_sent(collection, backbones, settings, extractors=None, on_progress=None):
    """Stands in for cbir.uploads' build_indexes: an index of the photos sent (those named broken*
    skipped, as a build skips an unreadable file), with rows the test knows and local features."""
    from cbir.build import BuildOutcome, BuildStatus
    from cbir.index import Manifest, Skipped, StoreSpec, write_index
    from cbir.layout import IndexLayout, write_collection_record
    from cbir.local_features import LocalFeatureSettings, describe_images

    assert [backbone.name for backbone in backbones] == ["xception"]
    layout = IndexLayout(settings.index_dir)
    write_collection_record(layout, collection)
    images = [image for image in collection.images if not image.startswith("broken")]
    skipped = [Skipped(image, "the file is damaged") for image in collection.images if image.startswith("broken")]
    features = LocalFeatureSettings(max_side=64, max_keypoints=50)
    manifest = Manifest(collection=collection.name, recipe=RECIPE, images=images, store=StoreSpec("exact"), skipped=skipped,
                        local_features=features)  # fmt: skip
    folder = layout.index_dir(collection.name, RECIPE.key)
    write_index(folder, at_angle(*np.linspace(1.0, 0.5, len(images))), manifest,
                local_features=describe_images(collection.root, images, features))  # fmt: skip
    if on_progress:
        on_progress(RECIPE.key, len(images), len(images))
    return [BuildOutcome(RECIPE, folder, BuildStatus.BUILT, len(images), len(skipped))]


@pytest.fixture
def sent(site, tmp_path, monkeypatch):
    """What a visitor sends: two photos, a damaged one, a note, a file name that is not UTF-8."""
    import cbir.uploads

    monkeypatch.setattr(cbir.uploads, "build_indexes", built_as_sent)
    folder = tmp_path / "sent"
    folder.mkdir()
    for name in ("picture_001.jpg", "picture_003.jpg"):
        (folder / name).write_bytes((site.photos / name).read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    (folder / "notes.txt").write_text("not a photo")
    (folder / b"caf\xe9.txt".decode("utf-8", "surrogateescape")).write_text("a Latin-1 name")
    return sorted(folder.iterdir())


def uploads_page(site, root: Path, keep: bool = False) -> SearchPage:
    from cbir.build import BuildSettings
    from cbir.uploads import PrivateCollections

    uploads = PrivateCollections(root, BuildSettings(progress=False), FixedNetworks(), keep=keep)
    return SearchPage(site.page.engine, site.root / "indexes", uploads)


def test_photos_added_become_the_sessions_own_collection_and_say_what_was_left_out(site, sent, tmp_path):
    from cbir.uploads import UploadError

    page = uploads_page(site, tmp_path / "uploads")
    first_photo = next(path for path in sent if path.name == "picture_001.jpg")
    progress = []
    added = page.add_photos([str(path) for path in sent], "mine", "xception", "me", lambda *done: progress.append(done))
    assert progress == [(0, None), (2, 2)]  # "still unpacking" first, then the build's own count
    first, left_out = added.message.split("\n\n")
    seconds = first.removeprefix("**mine**: 2 images described with xception in ").split(" s, ")[0]
    assert seconds.isdigit() and int(seconds) < 60
    assert first.endswith(" s, now the collection searched (yours alone; removed when you close the page).")
    assert left_out.splitlines() == ["Left out (3):", "- broken.jpg: the file is damaged",
                                     "- caf\ufffd.txt: not an image or a zip", "- notes.txt: not an image or a zip"]  # fmt: skip
    assert added.choices == ["demo", "other", "plain", "uploaded: mine"] and added.chosen == "uploaded: mine"
    assert page.collection_choices("you") == ["demo", "other", "plain"]  # nobody else sees it

    assert page.recipe_choices("uploaded: mine", "me") == [("xception · 2048-d · UNTRAINED", "xception")]
    assert page.default_recipe("uploaded: mine", "me") == "xception"
    assert page.can_verify("uploaded: mine", "xception", "me") and not page.can_verify("uploaded: mine", "xception", "you")
    gallery = page.example_gallery("uploaded: mine", "me")
    assert [caption for _, caption in gallery] == ["picture_001", "picture_003"]
    assert gallery[1][0] == page.served("uploaded: mine", "picture_003.jpg", "me")
    assert np.array_equal(pixels(gallery[1][0]), pixels(page.thumbnail("uploaded: mine", "picture_003.jpg", "me")))
    assert page.example_queries("uploaded: mine", "me") == [("picture_001.jpg", "picture_001", None),
                                                          ("picture_003.jpg", "picture_003", None)]  # fmt: skip
    answer = page.search_photo(str(first_photo), "", "uploaded: mine", "xception", "cosine", 2, session="me")
    assert answer.result.collection == "mine" and "· mine · xception ·" in answer.status
    assert [caption for _, caption in answer.items] == ["#1 picture_001 · cos 1.000", "#2 picture_003 · cos 0.500"]
    own = page.uploads.folder("me") / "thumbnails" / "mine"
    assert all(Path(path).parent == own for path, _ in answer.items)  # beside the visitor's photos, no index folder
    assert Path(gallery[0][0]).parent == own
    page.select_result(1, "me")  # browsing by result in the visitor's own collection
    assert np.array_equal(pixels(page.result_as_query(str(first_photo), "", "me")), pixels(sent[-1]))
    assert np.array_equal(pixels(page.example_chosen("uploaded: mine", 1, "me")), pixels(first_photo.with_name("picture_003.jpg")))
    for session in ("you", None):
        with pytest.raises(UploadError, match="that uploaded collection is gone"):
            page.recipe_choices("uploaded: mine", session)
        with pytest.raises(UploadError, match="that uploaded collection is gone"):
            page.search_photo(str(first_photo), "", "uploaded: mine", "xception", "cosine", 2, session=session)
        with pytest.raises(UploadError, match="that uploaded collection is gone"):
            page.served("uploaded: mine", "picture_001.jpg", session)
    assert page.served("demo", "picture_001.jpg", "me").startswith(str(site.root / "indexes" / "demo" / "thumbnails"))
    assert page.served("demo", "picture_005.jpg", "me") is None  # deleted since the build: no thumbnail

    page.end_session("me")  # the page was closed
    assert not page.uploads.folder("me").exists() and page.collection_choices("me") == ["demo", "other", "plain"]
    assert not [key for key in page._thumbnails if key[0].is_relative_to(page.uploads.folder("me"))]  # nor held in memory
    with pytest.raises(UploadError, match="that uploaded collection is gone"):
        page.served("uploaded: mine", "picture_001.jpg", "me")


def test_a_collection_added_without_a_name_or_progress_is_my_photos_and_lists_at_most_twenty_left_out(site, sent, tmp_path):
    for number in range(22):
        (sent[0].parent / f"note_{number:02d}.txt").write_text("not a photo")
    page = uploads_page(site, tmp_path / "uploads")
    files = [str(path) for path in sorted(sent[0].parent.iterdir())]
    added = page.add_photos(files, "", "xception", "me")
    first, left_out = added.message.split("\n\n")
    assert first.startswith("**my-photos**: 2 images described") and added.chosen == "uploaded: my-photos"
    lines = left_out.splitlines()
    assert lines[0] == "Left out (25):" and len(lines) == 21 and lines[-1] == "- note_17.txt: not an image or a zip"


def test_kept_photos_say_so_and_stay_when_the_page_closes(site, sent, tmp_path):
    page = uploads_page(site, tmp_path / "kept", keep=True)
    added = page.add_photos([str(path) for path in sent], "mine", "xception", "me")
    assert added.message.split("\n\n")[0].endswith(" s, now the collection searched (kept on this computer).")
    page.search_photo(str(sent[-1]), "", "uploaded: mine", "xception", "cosine", 2, session="me")
    page.end_session("me")
    assert page.collection_choices("someone") == ["demo", "other", "plain", "uploaded: mine"]  # one shared set
    assert Path(page.served("uploaded: mine", "picture_003.jpg", "someone")).is_file()
    assert (tmp_path / "kept" / "kept" / "images" / "mine" / "picture_001.jpg").is_file()


def test_adding_photos_that_cannot_be_added_is_a_message_saying_what_to_do(site, sent, tmp_path):
    from cbir.backbones import BACKBONES

    page = uploads_page(site, tmp_path / "uploads")
    files = [str(path) for path in sent]
    cases = [
        (site.page, files, "xception", "me", "Adding photos is off on this server: start it with --uploads to allow it."),
        (page, files, "xception", None, "Adding photos needs the page (a browser session)."),
        (page, files, "xception", "", "Adding photos needs the page (a browser session)."),
        (page, [], "xception", "me", "Choose some photos (or a zip of them) first."),
        (page, None, "xception", "me", "Choose some photos (or a zip of them) first."),
        (page, files, "resnet", "me", f"Choose a backbone: {', '.join(BACKBONES)}."),
    ]
    for on, chosen, backbone, session, message in cases:
        with pytest.raises(PageError) as raised:
            on.add_photos(chosen, "mine", backbone, session)
        assert str(raised.value) == message
    assert not (tmp_path / "uploads").exists() or not any((tmp_path / "uploads").rglob("*.jpg"))
    site.page.end_session("me")  # a page without uploads: nothing to do
    page.end_session(None)


def test_the_page_serves_files_only_from_thumbnail_folders(site, tmp_path):
    from cbir.build import BuildSettings
    from cbir.uploads import PrivateCollections

    thumbnails = [site.root / "indexes" / name / "thumbnails" for name in ("demo", "other", "plain")]
    assert behaviour.thumbnail_dirs(site.page.engine) == [str(folder.resolve()) for folder in thumbnails]
    assert all(folder.is_dir() for folder in thumbnails)  # made, so the server can name them
    private = PrivateCollections(tmp_path / "private", BuildSettings(), FixedNetworks())
    assert behaviour.thumbnail_dirs(site.page.engine, private) == [str(folder.resolve()) for folder in thumbnails]
    kept = PrivateCollections(tmp_path / "a" / "kept", BuildSettings(), FixedNetworks(), keep=True)
    allowed = behaviour.thumbnail_dirs(site.page.engine, kept)
    assert behaviour.thumbnail_dirs(site.page.engine, kept) == allowed  # again, as at the next start
    assert allowed[:3] == [str(folder.resolve()) for folder in thumbnails]
    assert allowed[3:] == [str((tmp_path / "a" / "kept" / "kept" / "thumbnails").resolve())]
    assert Path(allowed[3]).is_dir()


def test_a_bundles_example_is_cut_from_its_thumbnail_with_the_box_scaled_from_the_original(site, tmp_path):
    import json

    from cbir.layout import IndexLayout
    from cbir.thumbnails import thumbnail_name

    layout = IndexLayout(tmp_path / "bundle")
    record = layout.record_path("bundled")
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"schema_version": 2, "name": "bundled", "n_images": 2, "queries": [],
                                  "thumbnails_only": True, "image_sizes": {"big": [1200, 600]},
                                  "thumbnail_max_side": 320}))  # fmt: skip
    folder = layout.thumbnails_dir("bundled")
    folder.mkdir(parents=True)
    with Image.open(site.photos / "big.jpg") as photo:
        photo.convert("RGB").resize((320, 240)).save(folder / thumbnail_name("bundled", "big.jpg", 320), quality=95)
        photo.convert("RGB").resize((160, 120)).save(folder / thumbnail_name("bundled", "small.jpg", 320), quality=95)
    page = SearchPage(SearchEngine(tmp_path / "bundle", extractors=FixedNetworks()), tmp_path / "bundle")
    thumbnail = pixels(folder / thumbnail_name("bundled", "big.jpg", 320))
    # The box is in the original's pixels: x scaled by 320 / 1200, y by 240 / 600 (the sizes recorded).
    cut = page.example_picture("bundled", "big.jpg", (300, 100, 900, 500))  # on the thumbnail: (80, 40, 240, 200)
    assert cut.size == (160, 160) and np.array_equal(pixels(cut), thumbnail[40:200, 80:240])
    assert np.array_equal(pixels(page.example_picture("bundled", "big.jpg", None)), thumbnail)
    small = page.example_picture("bundled", "small.jpg", (10, 10, 50, 50))  # no size recorded: the whole thumbnail
    assert small.size == (160, 120)


def test_the_log_says_which_thumbnails_hits_and_examples_the_page_could_not_show(site, tmp_path, caplog):
    import logging

    from cbir.datasets import Collection
    from cbir.layout import IndexLayout

    caplog.set_level(logging.WARNING, logger="cbir_ui.behaviour")
    site.page.example_gallery("demo")
    site.page.search_photo(str(site.photos / "picture_003.jpg"), "", "demo", "xception", "cosine", 3)
    write_rows(tmp_path / "indexes", Collection("unrecorded", tmp_path, ("a.jpg",)), RECIPE, wide([1]))
    IndexLayout(tmp_path / "indexes").record_path("unrecorded").unlink()  # the index stays, its record is gone
    page = SearchPage(SearchEngine(tmp_path / "indexes", extractors=FixedNetworks()), tmp_path / "indexes")
    assert page.collections() == ["unrecorded"] and page.example_queries("unrecorded") == []
    # A collection whose record stays but whose only index is gone (deleted, or damaged) offers no examples.
    import shutil

    write_rows(tmp_path / "indexes", Collection("unindexed", tmp_path, ("a.jpg",)), RECIPE, wide([1]))
    shutil.rmtree(IndexLayout(tmp_path / "indexes").index_dir("unindexed", RECIPE.key))
    assert page.example_queries("unindexed") == [] and page.recipe_choices("unindexed") == []
    messages = [record.getMessage() for record in caplog.records]
    assert "no thumbnail for demo/picture_005.jpg: picture_005.jpg: file not found" in messages
    assert "demo: 1 hits not shown, first: LeftOut(image='picture_005.jpg', reason='file not found')" in messages
    assert [m for m in messages if m.startswith("no examples for unrecorded: no collection 'unrecorded' under ")]


def test_a_build_that_described_nothing_says_so(site, sent, tmp_path, monkeypatch):
    import cbir.uploads

    monkeypatch.setattr(cbir.uploads, "build_indexes", lambda *args, **kwargs: [])
    page = uploads_page(site, tmp_path / "uploads")
    added = page.add_photos([str(path) for path in sent], "mine", "xception", "me")
    first, left_out = added.message.split("\n\n")
    assert first.startswith("**mine**: 0 images described with xception in ")
    assert left_out.splitlines()[0] == "Left out (2):"  # the files the upload itself refused
