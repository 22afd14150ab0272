"""Drawing why a result matches (cbir.match_drawing) and the page's behaviour on selecting a result
(SearchPage.explain_result): the inlier pairs land where the true geometry puts them, in the frames
the local features were made in; no match says so; the drawing stays bounded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from stubs import RECIPE, StubbedEngine, write_collection
from synthetic import draw_textured_picture, make_gallery

from cbir.datasets import folder_collection
from cbir.index import Manifest, StoreSpec, write_index
from cbir.layout import IndexLayout, write_collection_record
from cbir.local_features import LocalFeatureSettings, describe_image, describe_picture, picture_as_described
from cbir.match_drawing import (
    BACKGROUND,
    GAP,
    MARK_RADIUS,
    MAX_HEIGHT,
    MAX_WIDTH,
    NO_MATCH_COLOUR,
    OUTLINE_COLOUR,
    draw_match,
    _mapped_outline,
    layout,
    line_colour,
)
from cbir.verification import MIN_INLIERS, NO_MATCH, Match, verify_pair
from cbir_ui.behaviour import PageError, SearchPage

cv2 = pytest.importorskip("cv2")

TRUE_MAP = np.array([[0.9, 0.15, 30.0], [-0.1, 0.95, 20.0], [1e-4, 5e-5, 1.0]])


def warp(picture: Image.Image, transform: np.ndarray) -> Image.Image:
    width, height = picture.size
    return Image.fromarray(cv2.warpPerspective(np.asarray(picture), transform, (width, height)))


def sent(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    return cv2.perspectiveTransform(np.asarray(points, np.float64).reshape(-1, 1, 2), transform).reshape(-1, 2)


def marked(drawing: Image.Image, points: np.ndarray) -> float:
    """The share of `points` (in the drawing's pixels; the i-th of inlier i) whose pixel has inlier
    i's colour, among those that no later mark (drawn over it) comes near enough to cover."""
    pixels = np.asarray(drawing)
    distances = np.linalg.norm(points[:, None] - points[None], axis=2) + np.tri(len(points)) * 1e9
    alone = np.flatnonzero(distances.min(axis=1) > 2 * MARK_RADIUS + 2)
    assert len(alone) >= 10, "too few separate marks to tell"
    found = [tuple(pixels[round(points[i, 1]), round(points[i, 0])]) == line_colour(i) for i in alone]
    return float(np.mean(found))


def side_by_side(query: Image.Image, result: Image.Image) -> np.ndarray:
    """The two pictures placed as the drawing places them, with nothing drawn on them."""
    placed = layout(query.size, result.size)
    canvas = Image.new("RGB", placed.size, BACKGROUND)
    canvas.paste(query.resize((placed.result_offset - GAP, placed.size[1]), Image.Resampling.BILINEAR, reducing_gap=2.0))
    canvas.paste(result.resize((placed.size[0] - placed.result_offset, placed.size[1]), Image.Resampling.BILINEAR,
                               reducing_gap=2.0), (placed.result_offset, 0))  # fmt: skip
    return np.asarray(canvas)


def test_each_inlier_pair_is_drawn_from_its_query_keypoint_to_where_the_true_homography_sends_it():
    query = draw_textured_picture(0, 640, 480)
    result = warp(query, TRUE_MAP)
    match = verify_pair(describe_picture(query), describe_picture(result))
    assert match.inliers >= 3 * MIN_INLIERS
    drawing = draw_match(query, result, match)
    placed = layout(query.size, result.size)
    assert drawing.size == placed.size and drawing.height == MAX_HEIGHT
    assert marked(drawing, placed.query_point(match.query_points)) > 0.9
    # The result's end of each line: where the true map (not the fitted one) sends the query's keypoint.
    assert marked(drawing, placed.result_point(sent(TRUE_MAP, match.query_points))) > 0.8
    # A line joins the two ends: its colour is on the pixels between them.
    pixels = np.asarray(drawing)
    start, end = placed.query_point(match.query_points[:1])[0], placed.result_point(match.result_points[:1])[0]
    between = [start + (end - start) * t for t in np.linspace(0.05, 0.95, 40)]
    on_line = [tuple(pixels[round(y), round(x)]) == line_colour(0) for x, y in between]
    assert np.mean(on_line) > 0.5


def test_the_query_outline_is_carried_onto_the_result_by_the_fitted_transform():
    query = draw_textured_picture(1, 640, 480)
    shrunk_into_result = np.array([[0.6, 0.0, 120.0], [0.0, 0.6, 90.0], [0.0, 0.0, 1.0]])
    result = warp(query, shrunk_into_result)
    match = verify_pair(describe_picture(query), describe_picture(result))
    placed = layout(query.size, result.size)
    corners = placed.result_point(sent(shrunk_into_result, [[0, 0], [640, 0], [640, 480], [0, 480]]))
    edges = [corners[i] + (corners[(i + 1) % 4] - corners[i]) * t for i in range(4) for t in np.linspace(0.02, 0.98, 50)]

    def white(drawing: Image.Image) -> float:
        pixels = np.asarray(drawing)
        return float(np.mean([tuple(pixels[round(y), round(x)]) == OUTLINE_COLOUR for x, y in edges]))

    assert white(draw_match(query, result, match)) > 0.7
    assert white(draw_match(query, result, match, outline=False)) < 0.2


def test_points_are_drawn_in_the_frame_the_features_were_made_in(tmp_path):
    # A large JPEG is described from its reduced decoding (half the size here), so a match's points
    # are in those pixels: the picture loaded alike, or the full one with that frame, puts them right.
    settings = LocalFeatureSettings()
    path = tmp_path / "large.jpg"
    full = draw_textured_picture(2, 2048, 1536, shapes=600)
    full.save(path, quality=92)
    described = picture_as_described(path, settings)
    features = describe_image(path, settings)
    assert described.size == (1024, 768) and features.shrink * settings.max_side == pytest.approx(1024)
    box = (600, 400, 1400, 1000)  # a box is cut from the full decoding, as a search does
    query = picture_as_described(path, settings, box)
    assert query.size == (800, 600)
    match = verify_pair(describe_picture(query, settings), features)
    assert match.inliers >= MIN_INLIERS
    in_frame = (match.query_points + box[:2]) / 2  # where each query keypoint is in the result's frame
    for result, frame in ((described, None), (Image.open(path), described.size)):
        drawing = draw_match(query, result, match, result_frame=frame)
        in_picture = in_frame * result.width / described.width
        assert marked(drawing, layout(query.size, result.size).result_point(in_picture)) > 0.8


def test_no_match_draws_no_line_and_says_so():
    query, result = draw_textured_picture(3, 640, 480), draw_textured_picture(4, 480, 640)
    plain = side_by_side(query, result)
    few = Match(5, np.array([[10, 10]] * 5, np.float32), np.array([[20, 20]] * 5, np.float32), np.eye(3))
    for match in (NO_MATCH, few):  # no fit; and too few inliers to be more than chance
        drawing = np.asarray(draw_match(query, result, match))
        assert drawing.shape == plain.shape
        upper = int(0.8 * drawing.shape[0])  # above the words
        assert np.array_equal(drawing[:upper], plain[:upper])
        assert np.all(drawing[upper:] == NO_MATCH_COLOUR, axis=2).sum() > 50
    # With a lower bar, the five are drawn.
    assert not np.array_equal(np.asarray(draw_match(query, result, few, min_inliers=4))[:upper], plain[:upper])


@pytest.mark.parametrize("query_size, result_size", [((6000, 800), (800, 6000)), ((8000, 6000), (9000, 7000)), ((40, 30), (50, 20))])
def test_the_drawing_stays_bounded_whatever_the_sizes(query_size, result_size):
    drawing = draw_match(Image.new("RGB", query_size, "gray"), Image.new("RGB", result_size, "white"), NO_MATCH)
    assert 0 < drawing.width <= MAX_WIDTH and 0 < drawing.height <= MAX_HEIGHT
    if max(query_size[0] / query_size[1], result_size[0] / result_size[1]) < 2:
        assert drawing.height == MAX_HEIGHT  # small pictures are enlarged to be seen


# --- The page: selecting a result of the session's last search ---

LARGE = "photo_00.jpg"  # 2048 x 1536: its local features were made from a half-size decoding
BOX = (500, 300, 1300, 900)
DISTRACTORS = 5


@pytest.fixture(scope="module")
def page_with_features(tmp_path_factory):
    """A page over a folder of textured photos whose index ranks at random (the stub network) but
    holds the photos' real local features."""
    root = tmp_path_factory.mktemp("matches")
    photos = root / "photos"
    photos.mkdir()
    draw_textured_picture(0, 2048, 1536, shapes=600).save(photos / LARGE, quality=92)
    for seed in range(1, DISTRACTORS + 1):
        draw_textured_picture(seed + 20, 640, 480).save(photos / f"photo_{seed:02d}.jpg", quality=90)
    collection = folder_collection(photos, "photos")
    layout_ = IndexLayout(root / "indexes")
    write_collection_record(layout_, collection)
    settings = LocalFeatureSettings()
    manifest = Manifest(collection="photos", recipe=RECIPE, images=list(collection.images), store=StoreSpec("exact"),
                        local_features=settings)  # fmt: skip
    rows = np.random.default_rng(5).normal(size=(len(collection.images), RECIPE.dim)).astype(np.float32)
    write_index(layout_.index_dir("photos", RECIPE.key), rows, manifest,
                local_features=[describe_image(photos / image, settings) for image in collection.images])  # fmt: skip
    engine = StubbedEngine(root / "indexes")
    engine.next = np.random.default_rng(7).normal(size=RECIPE.dim).astype(np.float32)
    return SearchPage(engine, root / "indexes"), engine, photos


def searched(page: SearchPage, photo: Path, session: str, *, box: str = "", verify: bool = True):
    return page.search_photo(str(photo), box, "photos", RECIPE.key, "cosine", DISTRACTORS + 1, verify=verify, session=session)


def counting_local_descriptions(engine, monkeypatch) -> list[str]:
    calls = []
    original = engine.describe_locally

    def counted(image, **options):
        calls.append(str(image))
        return original(image, **options)

    monkeypatch.setattr(engine, "describe_locally", counted)
    return calls


def test_selecting_a_verified_result_draws_its_inliers_where_the_box_lies_on_it(page_with_features, monkeypatch):
    page, engine, photos = page_with_features
    answer = searched(page, photos / LARGE, "a", box=",".join(map(str, BOX)))
    first = answer.result.hits[0]
    assert first.image == LARGE and first.inliers >= MIN_INLIERS
    calls = counting_local_descriptions(engine, monkeypatch)
    explained = page.explain_result(0, "a")
    assert calls == []  # the search's own description of the query, reused
    assert explained.caption == f"{first.inliers} inliers (homography) between your photo's box and {LARGE}"
    assert explained.match.inliers == first.inliers
    assert_drawn_where_the_box_lies(explained)


def assert_drawn_where_the_box_lies(explained) -> None:
    """The query is the box (full pixels); the result was described from its half-size decoding."""
    placed = layout((BOX[2] - BOX[0], BOX[3] - BOX[1]), (1024, 768))
    assert explained.picture.size == placed.size
    in_result = (explained.match.query_points + BOX[:2]) / 2
    assert marked(explained.picture, placed.query_point(explained.match.query_points)) > 0.9
    assert marked(explained.picture, placed.result_point(in_result)) > 0.8


def test_a_box_searched_without_verification_is_described_as_a_box(page_with_features):
    page, _, photos = page_with_features
    answer = searched(page, photos / LARGE, "g", box=",".join(map(str, BOX)), verify=False)
    explained = page.explain_result([hit.image for hit in answer.result.hits].index(LARGE), "g")
    assert explained.caption.endswith(f"inliers (homography) between your photo's box and {LARGE}")
    assert_drawn_where_the_box_lies(explained)


def test_a_result_that_does_not_verify_is_drawn_without_lines_and_said_so(page_with_features):
    page, _, photos = page_with_features
    answer = searched(page, photos / LARGE, "b")
    position = next(i for i, hit in enumerate(answer.result.hits) if hit.image != LARGE)
    explained = page.explain_result(position, "b")
    other = answer.result.hits[position].image
    assert explained.caption.startswith(f"no geometric match with {other}")
    assert explained.match.inliers < MIN_INLIERS
    assert explained.picture.width <= MAX_WIDTH and explained.picture.height <= MAX_HEIGHT


def test_without_verification_the_query_is_described_once_per_search(page_with_features, monkeypatch):
    page, engine, photos = page_with_features
    calls = counting_local_descriptions(engine, monkeypatch)
    answer = searched(page, photos / LARGE, "c", verify=False)
    assert calls == [] and all(hit.inliers is None for hit in answer.result.hits)
    position = [hit.image for hit in answer.result.hits].index(LARGE)
    explained = page.explain_result(position, "c")
    assert explained.caption.startswith(f"{explained.match.inliers} inliers (homography) between your photo and {LARGE}")
    assert explained.match.inliers >= MIN_INLIERS
    page.explain_result((position + 1) % len(answer.result.hits), "c")
    assert calls == [str(photos / LARGE)]  # two results explained, one description
    # A new search forgets the old query: one query per session.
    other = photos / "photo_03.jpg"
    shown = [hit.image for hit in searched(page, other, "c", verify=False).result.hits]
    again = page.explain_result(shown.index(other.name), "c")
    assert calls == [str(photos / LARGE), str(other)]
    assert again.caption.endswith(f"inliers (homography) between your photo and {other.name}")
    assert page.explain_result(shown.index(LARGE), "c").caption.startswith(f"no geometric match with {LARGE}")


def test_there_is_nothing_to_explain_without_a_search_a_session_or_such_a_result(page_with_features):
    page, _, photos = page_with_features
    assert page.explain_result(0, None) is None
    assert page.explain_result(0, "never-searched") is None
    searched(page, photos / LARGE, "d")
    assert page.explain_result(None, "d") is None
    assert page.explain_result(DISTRACTORS + 1, "d") is None and page.explain_result(-1, "d") is None
    # A picture sent whole (the `/search` API) is not kept: nothing to draw it from.
    page.search({"background": Image.open(photos / LARGE)}, "photos", RECIPE.key, "cosine", 3, session="d")
    assert page.explain_result(0, "d") is None


def test_the_photo_gone_from_the_server_asks_for_it_again(page_with_features, tmp_path):
    page, _, photos = page_with_features
    copy = tmp_path / "upload.jpg"
    copy.write_bytes((photos / LARGE).read_bytes())
    searched(page, copy, "e", verify=False)
    copy.unlink()
    with pytest.raises(PageError, match="no longer on the server"):
        page.explain_result(0, "e")


def test_an_index_without_local_features_names_the_build_option(tmp_path):
    make_gallery(tmp_path / "photos", 3)
    write_collection(tmp_path / "indexes", folder_collection(tmp_path / "photos", "photos"),
                     np.eye(3, RECIPE.dim, dtype=np.float32))  # fmt: skip
    engine = StubbedEngine(tmp_path / "indexes")
    engine.next = np.eye(1, RECIPE.dim, dtype=np.float32)[0]
    page = SearchPage(engine, tmp_path / "indexes")
    page.search_photo(str(tmp_path / "photos" / "picture_000.jpg"), "", "photos", RECIPE.key, "cosine", 3, session="f")
    explained = page.explain_result(0, "f")
    assert explained.picture is None and explained.match is None
    assert explained.caption.startswith("this index has no local features: build them with ")
    assert explained.caption.endswith(" --local-features")


def test_a_bundles_thumbnail_is_drawn_with_the_points_scaled_onto_it(page_with_features, tmp_path):
    # A bundle holds thumbnails, not its images: the result is drawn from its thumbnail, the points
    # of its features (made from the half-size decoding of the 2048 px original) scaled onto it.
    import json
    import shutil

    page, _, photos = page_with_features
    page.thumbnail("photos", LARGE)  # made as a bundle's export makes them
    root = tmp_path / "bundle"
    shutil.copytree(page.index_root, root)
    records = [path for path in root.rglob("*.json") if json.loads(path.read_text()).get("images_root_as_built")]
    assert len(records) == 1
    data = json.loads(records[0].read_text())
    records[0].write_text(json.dumps({**data, "thumbnails_only": True, "thumbnail_max_side": 512}))
    engine = StubbedEngine(root)
    engine.next = np.random.default_rng(7).normal(size=RECIPE.dim).astype(np.float32)
    bundled = SearchPage(engine, root)
    assert engine.record("photos").thumbnails_only
    query = tmp_path / "query.jpg"
    shutil.copy(photos / LARGE, query)  # what a visitor uploads: not the collection's file
    answer = bundled.search_photo(str(query), ",".join(map(str, BOX)), "photos", RECIPE.key, "cosine", 3, verify=True,
                                  session="h")  # fmt: skip
    explained = bundled.explain_result([hit.image for hit in answer.result.hits].index(LARGE), "h")
    assert explained.caption.startswith(f"{explained.match.inliers} inliers") and explained.match.inliers >= MIN_INLIERS
    placed = layout((BOX[2] - BOX[0], BOX[3] - BOX[1]), (512, 384))
    assert explained.picture.size == placed.size
    on_thumbnail = (explained.match.query_points + BOX[:2]) / 4
    assert marked(explained.picture, placed.result_point(on_thumbnail)) > 0.8


@pytest.mark.slow
def test_a_visitors_own_collection_says_it_has_no_matches_to_draw(tmp_path):
    from cbir.build import BuildSettings
    from cbir.recipe import RecipeSettings
    from cbir.search import SearchEngine
    from cbir.trunks import ExtractorCache
    from cbir.uploads import PrivateCollections
    from cbir.weights import Weights

    settings = BuildSettings(recipe=RecipeSettings(weights=Weights.parse("none"), input_size=96), progress=False)
    uploads = PrivateCollections(tmp_path / "uploads", settings, ExtractorCache())
    page = SearchPage(SearchEngine(tmp_path / "indexes", extractors=uploads.extractors), tmp_path / "indexes", uploads)
    photos = make_gallery(tmp_path / "mine", 2)
    page.add_photos([str(path) for path in photos], "mine", "xception", "alice")
    page.search_photo(str(photos[0]), "", "uploaded: mine", "xception", "cosine", 2, session="alice")
    explained = page.explain_result(0, "alice")
    assert explained.picture is None
    assert explained.caption == "photos added on the page have no local features: no matches to draw"


def test_the_layout_by_hand_when_both_fit_and_when_the_width_lowers_them():
    fits = layout((40, 40), (40, 20), max_height=100, max_width=1000)
    # One height of 100: the query scaled 2.5 (100 wide), the result 5 (200 wide), GAP between.
    assert (fits.query_scale, fits.result_scale, fits.result_offset) == (2.5, 5.0, 100 + GAP)
    assert fits.size == (100 + GAP + 200, 100)
    assert fits.query_point(np.array([[10.0, 20.0]])).tolist() == [[25.0, 50.0]]
    assert fits.result_point(np.array([[10.0, 20.0]])).tolist() == [[50.0 + 100 + GAP, 100.0]]
    # 3 pixels wide a pixel of height together: 480 high would be 1,440 + GAP wide, over 1,400.
    lowered = layout((200, 100), (100, 100), max_height=480, max_width=1400)
    height = (1400 - GAP) / 3
    assert lowered.query_scale == pytest.approx(height / 100) and lowered.result_scale == pytest.approx(height / 100)
    assert lowered.size == (round(2 * height) + GAP + round(height), round(height))


def test_the_outline_is_the_frames_corners_sent_by_the_transform():
    assert _mapped_outline(np.eye(3), (40, 30)).tolist() == [[0, 0], [40, 0], [40, 30], [0, 30]]
    stretch = np.array([[2.0, 0, 5], [0, 3, 7], [0, 0, 1]])
    assert _mapped_outline(stretch, (40, 30)).tolist() == [[5, 7], [85, 7], [85, 97], [5, 97]]
    halved = np.diag([1.0, 1.0, 2.0])  # homogeneous coordinates: divided by the third
    assert _mapped_outline(halved, (40, 30)).tolist() == [[0, 0], [20, 0], [20, 15], [0, 15]]


def test_line_colours_are_bright_and_a_golden_angle_apart():
    import colorsys

    colours = [line_colour(index) for index in range(6)]
    assert len(set(colours)) == 6
    assert colours[0] == (255, 38, 38)  # hue 0, saturation 0.85, value 1
    for index, colour in enumerate(colours):
        hue, saturation, value = colorsys.rgb_to_hsv(*(channel / 255 for channel in colour))
        assert value == 1.0 and saturation == pytest.approx(0.85, abs=0.01)
        assert hue == pytest.approx((index * 0.6180339887) % 1.0, abs=0.01)
