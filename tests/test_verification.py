"""Spatial verification (cbir.verification): a known homography is recovered, unrelated pictures do
not verify, and as a re-ranker in the search it brings a rotated, recoloured crop of a collection
photo to the top of a ranking that knows nothing."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from stubs import RECIPE, StubbedEngine
from synthetic import draw_textured_picture

from cbir import verification
from cbir.datasets import folder_collection
from cbir.errors import SettingsError
from cbir.index import Manifest, StoreSpec, load_index, write_index
from cbir.layout import IndexLayout, IndexLoadError, write_collection_record
from cbir.local_features import (
    ImageFeatures,
    LocalFeatureSettings,
    describe_image,
    describe_picture,
)
from cbir.ranking import AlphaQueryExpansion, Ranking, rank
from cbir.verification import (
    MIN_INLIERS,
    GeometricModel,
    Match,
    SpatialVerification,
    mutual_ratio_matches,
    verify_pair,
)

cv2 = pytest.importorskip("cv2")


def warp(picture: Image.Image, transform: np.ndarray) -> Image.Image:
    width, height = picture.size
    return Image.fromarray(cv2.warpPerspective(np.asarray(picture), transform, (width, height)))


def corner_error(found: np.ndarray, true: np.ndarray, width: int, height: int) -> float:
    """Largest distance between where the two maps send points of the picture's inner region."""
    points = np.array([[x, y, 1.0] for x in (0.2 * width, 0.8 * width) for y in (0.2 * height, 0.8 * height)]).T

    def mapped(transform: np.ndarray) -> np.ndarray:
        moved = transform @ points
        return (moved[:2] / moved[2]).T

    return float(np.linalg.norm(mapped(found) - mapped(true), axis=1).max())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_known_homography_is_recovered_within_2_px(seed):
    picture = draw_textured_picture(seed, 640, 480)
    true = np.array([[0.9, 0.15, 30.0], [-0.1, 0.95, 20.0], [1e-4, 5e-5, 1.0]])
    found = verify_pair(describe_picture(picture), describe_picture(warp(picture, true)))
    assert found.inliers >= 3 * MIN_INLIERS
    assert corner_error(found.transform, true, 640, 480) < 2.0
    # The inliers are pairs the true map sends onto each other.
    sent = cv2.perspectiveTransform(found.query_points.reshape(-1, 1, 2).astype(np.float64), true).reshape(-1, 2)
    assert np.median(np.linalg.norm(sent - found.result_points, axis=1)) < 2.0


def test_the_transform_is_in_pixels_of_the_images_as_loaded_when_both_were_shrunk():
    picture = draw_textured_picture(3, 1200, 900)
    true = np.array([[0.95, -0.2, 60.0], [0.2, 0.95, -40.0], [0.0, 0.0, 1.0]])
    settings = LocalFeatureSettings(max_side=600, max_keypoints=500)
    query, result = describe_picture(picture, settings), describe_picture(warp(picture, true), settings)
    assert query.shrink == result.shrink == pytest.approx(2.0)
    found = verify_pair(query, result)
    assert corner_error(found.transform, true, 1200, 900) < 4.0  # 2 px of the described images


def test_the_similarity_model_recovers_a_rotation_and_scale():
    picture = draw_textured_picture(4, 640, 480)
    true = np.vstack([cv2.getRotationMatrix2D((320, 240), 30, 0.8), [0, 0, 1]])
    found = verify_pair(describe_picture(picture), describe_picture(warp(picture, true)), model=GeometricModel.SIMILARITY)
    assert corner_error(found.transform, true, 640, 480) < 2.0


def test_unrelated_pictures_do_not_verify():
    features = [describe_picture(draw_textured_picture(seed, 640, 480)) for seed in range(10, 16)]
    counts = [verify_pair(a, b).inliers for i, a in enumerate(features) for b in features[i + 1 :]]
    assert max(counts) < MIN_INLIERS


def unit_rows(*rows: list[float]) -> ImageFeatures:
    vectors = np.zeros((len(rows), 128), np.float32)
    for i, row in enumerate(rows):
        vectors[i, : len(row)] = row
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return ImageFeatures(np.zeros((len(rows), 2), np.float32), np.zeros(len(rows), np.float32),
                         np.zeros(len(rows), np.float32), np.rint(vectors * 255).astype(np.uint8))  # fmt: skip


def test_matches_are_mutual_nearest_neighbours_that_pass_the_ratio_test():
    query = unit_rows([1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0.05], [0, 0, 1, 0.3])
    result = unit_rows([1, 0.05, 0, 0], [0, 1, 0, 0, 0.3], [0, 0, 1, 0.1], [0, 1, 0, 0, -0.32])
    # Query 0 -> result 0: clear and mutual. Query 1's nearest (result 1) is barely nearer than its
    # second (result 3): the ratio test drops it. Queries 2 and 3 both prefer result 2, which prefers query 2:
    # query 3's match is not mutual.
    query_index, result_index = mutual_ratio_matches(query, result)
    assert query_index.tolist() == [0, 2] and result_index.tolist() == [0, 2]
    # A looser ratio keeps query 1's match.
    assert mutual_ratio_matches(query, result, ratio=1.0)[0].tolist() == [0, 1, 2]


def test_its_settings_are_checked_and_it_needs_the_query_features():
    with pytest.raises(SettingsError, match="top_n"):
        SpatialVerification(top_n=0)
    with pytest.raises(SettingsError, match="min_inliers"):
        SpatialVerification(min_inliers=3)
    with pytest.raises(SettingsError, match="ratio"):
        SpatialVerification(ratio=1.5)
    with pytest.raises(SettingsError, match="query's local features"):
        list(SpatialVerification().verify([]))


def test_verified_rows_move_ahead_by_inliers_and_the_rest_keep_their_order(monkeypatch, tmp_path):
    # Each row's features are told apart by their shrink; the verification of row r finds inliers[r].
    inliers = {0: 3, 1: 40, 2: 0, 3: 20, 4: 40, 5: 16, 6: 90}
    features = [ImageFeatures(np.zeros((2, 2), np.float32), np.zeros(2, np.float32), np.zeros(2, np.float32),
                              np.zeros((2, 128), np.uint8), shrink=float(row + 1)) for row in range(7)]  # fmt: skip
    manifest = Manifest(collection="c", recipe=RECIPE, images=[f"{row}.jpg" for row in range(7)], store=StoreSpec("exact"),
                        local_features=LocalFeatureSettings())  # fmt: skip
    write_index(tmp_path / "index", np.eye(7, RECIPE.dim, dtype=np.float32), manifest, local_features=features)
    index = load_index(tmp_path / "index")
    monkeypatch.setattr(verification, "verify_pair",
                        lambda query, result, **_: Match(inliers[int(result.shrink) - 1], np.zeros((0, 2)), np.zeros((0, 2)), None))  # fmt: skip
    first = Ranking(np.array([0, 1, 2, 3, 4, 5, 6]), np.arange(7.0), True)
    reranker = SpatialVerification(top_n=6, min_inliers=16).for_query(features[0])
    ranked = reranker(index, np.zeros(RECIPE.dim, np.float32), "cosine", first)
    # 1 and 4 tie at 40 (global order between them), then 3 (20), 5 (16); 0 and 2 below the
    # threshold, and 6 beyond the top 6 (not examined, although it would have verified).
    assert ranked.rows.tolist() == [1, 4, 3, 5, 0, 2, 6]
    assert ranked.distances.tolist() == [1.0, 4.0, 3.0, 5.0, 0.0, 2.0, 6.0]
    assert ranked.inliers.tolist() == [40, 40, 20, 16, 3, 0, -1]
    # rank() keeps the counts when it cuts to k, and asks for top_n results first.
    cut = rank(index, np.eye(1, RECIPE.dim, 6, dtype=np.float32)[0], "cosine", 2, rerankers=[reranker])
    assert len(cut.rows) == 2 and len(cut.inliers) == 2


# --- The search: a rotated, recoloured crop against a ranking that knows nothing ---

QUERIES = 8  # photos 0-7 are queried (cropped, rotated, recoloured) ...
DISTRACTORS = 22  # ... among these others, so that a random ranking puts the right one first 1 time in 30


@pytest.fixture(scope="module")
def collection_with_features(tmp_path_factory):
    """A folder of textured photos and an index over them whose rows are random (a global ranking
    that knows nothing) but whose local features are real."""
    root = tmp_path_factory.mktemp("verified")
    photos = root / "photos"
    photos.mkdir()
    for seed in range(QUERIES + DISTRACTORS):
        size = (1024, 768) if seed < QUERIES else (640, 480)  # smaller distractors: quicker to describe
        draw_textured_picture(seed, *size).save(photos / f"photo_{seed:02d}.jpg", quality=90)
    collection = folder_collection(photos, "photos")
    write_collection_record(IndexLayout(root / "indexes"), collection)
    settings = LocalFeatureSettings()
    manifest = Manifest(collection="photos", recipe=RECIPE, images=list(collection.images), store=StoreSpec("exact"),
                        local_features=settings)  # fmt: skip
    rows = np.random.default_rng(5).normal(size=(QUERIES + DISTRACTORS, RECIPE.dim)).astype(np.float32)
    write_index(IndexLayout(root / "indexes").index_dir("photos", RECIPE.key), rows, manifest,
                local_features=[describe_image(photos / image, settings) for image in collection.images])  # fmt: skip
    return root, collection


def edited_crop(path: Path, angle: float) -> Image.Image:
    """The middle of a photo, rotated by `angle` degrees and recoloured (paler, brighter, warmer)."""
    with Image.open(path) as photo:
        photo = photo.convert("RGB")
    width, height = photo.size
    crop = photo.crop((int(0.2 * width), int(0.15 * height), int(0.8 * width), int(0.85 * height)))
    crop = crop.rotate(angle, expand=True, resample=Image.Resampling.BICUBIC, fillcolor=(128, 128, 128))
    crop = ImageEnhance.Brightness(ImageEnhance.Color(crop).enhance(0.4)).enhance(1.2)
    red, green, blue = crop.split()
    return Image.merge("RGB", (red.point(lambda v: min(255, int(v * 1.1 + 10))), green, blue.point(lambda v: int(v * 0.8))))


def first_hits(engine: StubbedEngine, collection, rerankers) -> list[bool]:
    """For each query (a crop of photo i, rotated 25-60°), whether photo i comes back first."""
    rng = np.random.default_rng(11)
    found = []
    for query, angle in zip(range(QUERIES), np.linspace(25, 60, QUERIES)):
        engine.next = rng.normal(size=RECIPE.dim).astype(np.float32)  # the global ranking knows nothing
        result = engine.search(edited_crop(Path(collection.root) / collection.images[query], angle),
                               collection="photos", recipe=RECIPE.key, k=5, rerankers=rerankers)  # fmt: skip
        found.append(result.hits[0].image == collection.images[query])
    return found


def test_a_rotated_recoloured_crop_comes_back_first_with_verification_and_rarely_without(collection_with_features):
    root, collection = collection_with_features
    engine = StubbedEngine(root / "indexes")
    without = first_hits(engine, collection, ())
    verified = first_hits(engine, collection, (SpatialVerification(),))
    assert sum(verified) >= QUERIES - 1
    assert sum(without) <= 2


def test_the_hits_carry_their_inlier_counts_and_verification_runs_with_query_expansion(collection_with_features, monkeypatch):
    root, collection = collection_with_features
    engine = StubbedEngine(root / "indexes")
    engine.next = np.random.default_rng(3).normal(size=RECIPE.dim).astype(np.float32)
    query = edited_crop(Path(collection.root) / collection.images[2], 40)
    result = engine.search(query, collection="photos", recipe=RECIPE.key, k=4, rerankers=(SpatialVerification(),))
    assert result.hits[0].image == collection.images[2] and result.hits[0].inliers >= MIN_INLIERS
    assert all(hit.inliers is not None and hit.inliers < MIN_INLIERS for hit in result.hits[1:])
    stream = io.BytesIO()
    query.save(stream, format="PNG")
    stream.seek(0)
    stubbed = engine.describe

    def describe_reading_the_stream(image, **options):  # as the real one does: the stream is then spent
        if hasattr(image, "read"):
            image.read()
        return stubbed(image, **options)

    monkeypatch.setattr(engine, "describe", describe_reading_the_stream)
    from_stream = engine.search(stream, collection="photos", recipe=RECIPE.key, k=4, rerankers=(SpatialVerification(),))
    assert [hit.inliers for hit in from_stream.hits] == [hit.inliers for hit in result.hits]  # read once, used twice
    plain = engine.search(query, collection="photos", recipe=RECIPE.key, k=4)
    assert all(hit.inliers is None for hit in plain.hits)
    # Expanding first, then verifying: the verified photo still leads.
    expanded = engine.search(query, collection="photos", recipe=RECIPE.key, k=4,
                             rerankers=(AlphaQueryExpansion(n=2), SpatialVerification()))  # fmt: skip
    assert expanded.hits[0].image == collection.images[2]
    # Verifying first, then expanding with the verified top: it runs, and the verified photo's row
    # took part in the new query.
    then_expanded = engine.search(query, collection="photos", recipe=RECIPE.key, k=4,
                                  rerankers=(SpatialVerification(), AlphaQueryExpansion(n=1, alpha=0)))  # fmt: skip
    assert then_expanded.hits[0].image == collection.images[2]


def test_searching_with_verification_an_index_without_local_features_names_the_build_option(tmp_path):
    from stubs import write_collection
    from synthetic import make_gallery

    make_gallery(tmp_path / "photos", 2)
    write_collection(tmp_path / "indexes", folder_collection(tmp_path / "photos", "photos"),
                     np.eye(2, RECIPE.dim, dtype=np.float32))  # fmt: skip
    engine = StubbedEngine(tmp_path / "indexes")
    engine.next = np.eye(1, RECIPE.dim, dtype=np.float32)[0]
    with pytest.raises(IndexLoadError, match="no local features.*--local-features"):
        engine.search(tmp_path / "photos" / "picture_000.jpg", collection="photos", recipe=RECIPE.key,
                      rerankers=(SpatialVerification(),))  # fmt: skip


@pytest.mark.parametrize(
    ("transform", "plausible"),
    [
        (np.eye(3), True),
        (np.diag([5.0, 5.0, 1.0]), True),  # area x 25: a closer view
        (np.diag([6.0, 6.0, 1.0]), False),  # area x 36: beyond MAX_AREA_CHANGE (30)
        (np.diag([1 / 5, 1 / 5, 1.0]), True),
        (np.diag([1 / 6, 1 / 6, 1.0]), False),
        (np.diag([-1.0, 1.0, 1.0]), False),  # a mirror image folds the picture
        (np.diag([2.0, 2.0, 0.25]), False),  # homogeneous: the linear part is diag(8, 8), area x 64
        (np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1e-13]]), False),  # the whole plane sent to infinity
        (np.array([[np.nan, 0, 0], [0, 1, 0], [0, 0, 1]]), False),
        (np.array([[np.inf, 0, 0], [0, 1, 0], [0, 0, 1]]), False),
    ],
)
def test_a_fit_that_folds_squashes_or_leaves_the_plane_is_refused(transform, plausible):
    assert verification._plausible(transform) is plausible


def test_the_re_ranker_fits_the_model_it_was_given():
    picture = draw_textured_picture(4, 640, 480)
    true = np.vstack([cv2.getRotationMatrix2D((320, 240), 30, 0.8), [0, 0, 1]])
    reranker = SpatialVerification(model=GeometricModel.SIMILARITY).for_query(describe_picture(picture))
    (found,) = reranker.verify([describe_picture(warp(picture, true))])
    linear = found.transform[:2, :2]
    # A similarity: no perspective, a rotation times one scale (a homography fit has neither exactly).
    assert found.transform[2].tolist() == [0.0, 0.0, 1.0]
    assert linear[0, 0] == pytest.approx(linear[1, 1], abs=1e-9) and linear[0, 1] == pytest.approx(-linear[1, 0], abs=1e-9)
    assert corner_error(found.transform, true, 640, 480) < 2.0
