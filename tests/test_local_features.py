"""Local features (cbir.local_features): RootSIFT made and bounded as settings say, the features file
round-trips, is recorded in the manifest like every index file, and a damaged one is reported."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from stubs import RECIPE
from synthetic import draw_textured_picture

from cbir.build import BuildSettings, _why_rebuild
from cbir.cli import parse
from cbir.commands import by_field
from cbir.datasets import folder_collection
from cbir.catalogue import scan_indexes
from cbir.index import Manifest, StoreSpec, damage, load_index, write_index
from cbir.layout import IndexLayout, IndexLoadError, write_collection_record
from cbir.local_features import (
    LOCAL_FEATURES_FILE,
    ImageFeatures,
    LocalFeaturesError,
    LocalFeatureSettings,
    describe_image,
    describe_picture,
    no_features,
    quantise,
    read_features,
    root_sift,
    write_features,
)

SMALL = LocalFeatureSettings(max_side=320, max_keypoints=60)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gallery")
    for seed in range(3):
        draw_textured_picture(seed, 400, 300).save(folder / f"picture_{seed}.jpg", quality=92)
    return folder


@pytest.fixture(scope="module")
def described(gallery) -> list[ImageFeatures]:
    return [describe_image(path, SMALL) for path in sorted(gallery.glob("*.jpg"))]


def test_root_sift_is_the_square_root_of_the_l1_normalised_descriptor():
    sift = np.zeros((1, 128), np.float32)
    sift[0, :2] = [1.0, 3.0]
    expected = np.zeros(128, np.float32)
    expected[:2] = [0.5, np.sqrt(0.75)]
    np.testing.assert_allclose(root_sift(sift)[0], expected, rtol=1e-6)
    assert quantise(root_sift(sift))[0, :2].tolist() == [128, 221]


def test_features_are_bounded_quantised_unit_vectors_and_the_strongest_come_first():
    picture = draw_textured_picture(7, 1024, 768)
    many = describe_picture(picture, LocalFeatureSettings(max_side=512, max_keypoints=200))
    few = describe_picture(picture, LocalFeatureSettings(max_side=512, max_keypoints=50))
    assert 150 < len(many) <= 200 and len(few) == 50
    assert many.shrink == pytest.approx(2.0)
    assert many.positions.max() < 512 and many.positions.min() >= 0
    assert many.descriptors.dtype == np.uint8
    np.testing.assert_allclose(np.linalg.norm(many.unit_descriptors(), axis=1), 1.0, atol=0.02)
    # The 50 kept of a bound of 50 are the 50 strongest of the 200.
    np.testing.assert_array_equal(few.positions, many.positions[:50])
    cv2 = pytest.importorskip("cv2")
    shrunk = picture.convert("L").resize((512, 384), Image.Resampling.BILINEAR, reducing_gap=2.0)
    every = cv2.SIFT_create().detect(np.asarray(shrunk), None)
    strongest = sorted(every, key=lambda point: -point.response)[:50]
    assert {point.pt for point in strongest} == {tuple(map(float, xy)) for xy in few.positions}
    np.testing.assert_allclose(many.original_positions().max(), many.positions.max() * 2.0)


def test_a_picture_without_texture_has_no_keypoints():
    assert len(describe_picture(Image.new("RGB", (200, 100), (90, 90, 90)))) == 0


def test_the_features_file_round_trips_without_pickle(described, tmp_path):
    features = [described[0], no_features(1.5), described[1]]
    path = tmp_path / LOCAL_FEATURES_FILE
    write_features(path, features)
    with np.load(path, allow_pickle=False) as plain:  # an ordinary .npz, no Python objects
        assert plain["offsets"].tolist() == [0, len(described[0]), len(described[0]), len(described[0]) + len(described[1])]
        assert plain["positions"].dtype == np.float16
    read = read_features(path, n_images=3)
    assert len(read) == 3 and read.n_keypoints == len(described[0]) + len(described[1])
    for row, original in enumerate(features):
        back = read.image(row)
        assert len(back) == len(original) and back.shrink == original.shrink
        np.testing.assert_array_equal(back.descriptors, original.descriptors)
        np.testing.assert_allclose(back.positions, original.positions, atol=0.25)  # float16 below 512 px
        np.testing.assert_allclose(back.scales, original.scales, rtol=1e-3)
        np.testing.assert_allclose(back.orientations, original.orientations, atol=0.25)
    with pytest.raises(IndexError):
        read.image(3)
    with pytest.raises(LocalFeaturesError, match="3 images, the index has 4"):
        read_features(path, n_images=4)


def test_read_in_memory_it_no_longer_depends_on_the_file_and_mapped_it_does(described, tmp_path):
    path = tmp_path / LOCAL_FEATURES_FILE
    write_features(path, described)
    in_memory, mapped = read_features(path, in_memory=True), read_features(path)
    with open(path, "r+b") as file:  # rewritten in place: a mapping sees it, a copy does not
        file.write(bytes(path.stat().st_size))
    np.testing.assert_array_equal(in_memory.image(1).descriptors, described[1].descriptors)
    assert not mapped.image(1).descriptors.any()


def test_a_features_file_of_other_arrays_is_refused(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, offsets=np.array([0, 5]), descriptors=np.zeros((4, 128), np.uint8))
    with pytest.raises(LocalFeaturesError, match="lacks"):
        read_features(path)
    np.savez(path, offsets=np.array([0, 5]), positions=np.zeros((5, 2), np.float16), scales=np.zeros(5, np.float16),
             orientations=np.zeros(5, np.float16), descriptors=np.zeros((4, 128), np.uint8), shrink=np.ones(1, np.float32))  # fmt: skip
    with pytest.raises(LocalFeaturesError, match="descriptors of shape"):
        read_features(path)
    path.write_bytes(b"not a zip at all")
    with pytest.raises(LocalFeaturesError, match="not a readable features file"):
        read_features(path)


def write_gallery_index(index_dir: Path, gallery: Path, features: list[ImageFeatures] | None) -> Path:
    collection = folder_collection(gallery, "gallery")
    write_collection_record(IndexLayout(index_dir), collection)
    manifest = Manifest(collection="gallery", recipe=RECIPE, images=list(collection.images), store=StoreSpec("exact"),
                        local_features=SMALL if features is not None else None)  # fmt: skip
    folder = IndexLayout(index_dir).index_dir("gallery", RECIPE.key)
    rows = np.random.default_rng(0).normal(size=(len(collection.images), RECIPE.dim)).astype(np.float32)
    write_index(folder, rows, manifest, local_features=features)
    return folder


def test_the_index_writes_them_and_the_manifest_records_their_size_and_settings(gallery, described, tmp_path):
    folder = write_gallery_index(tmp_path / "indexes", gallery, described)
    manifest = Manifest.read(folder)
    assert manifest.files[LOCAL_FEATURES_FILE] == (folder / LOCAL_FEATURES_FILE).stat().st_size
    assert manifest.local_features == SMALL
    assert json.loads((folder / "manifest.json").read_text())["local_features"] == {
        "method": "rootsift", "max_side": 320, "max_keypoints": 60}  # fmt: skip
    loaded = load_index(folder)
    assert loaded.has_local_features
    np.testing.assert_array_equal(loaded.local_features.image(2).descriptors, described[2].descriptors)


def test_an_index_without_them_keeps_its_manifest_as_before(gallery, tmp_path):
    folder = write_gallery_index(tmp_path / "indexes", gallery, None)
    assert "local_features" not in json.loads((folder / "manifest.json").read_text())
    assert not (folder / LOCAL_FEATURES_FILE).exists()
    loaded = load_index(folder)
    with pytest.raises(IndexLoadError, match="no local features.*--local-features"):
        loaded.local_features  # noqa: B018


def test_features_and_their_settings_are_written_together_or_not_at_all(gallery, described, tmp_path):
    collection = folder_collection(gallery, "gallery")
    rows = np.zeros((3, RECIPE.dim), np.float32)
    without_settings = Manifest(collection="gallery", recipe=RECIPE, images=list(collection.images), store=StoreSpec("exact"))
    with pytest.raises(ValueError, match="local features"):
        write_index(tmp_path / "a", rows, without_settings, local_features=described)
    with_settings = Manifest(collection="gallery", recipe=RECIPE, images=list(collection.images), store=StoreSpec("exact"),
                             local_features=SMALL)  # fmt: skip
    with pytest.raises(ValueError, match="local features"):
        write_index(tmp_path / "b", rows, with_settings)
    with pytest.raises(ValueError, match="2 images' local features for 3"):
        write_index(tmp_path / "c", rows, with_settings, local_features=described[:2])


def test_a_damaged_features_file_is_reported_like_any_damaged_index_file(gallery, described, tmp_path):
    folder = write_gallery_index(tmp_path / "indexes", gallery, described)
    path = folder / LOCAL_FEATURES_FILE
    path.write_bytes(path.read_bytes()[:-100])  # cut short
    manifest = Manifest.read(folder)
    assert damage(folder, manifest) == [
        f"{LOCAL_FEATURES_FILE} has {path.stat().st_size} bytes, the manifest recorded {manifest.files[LOCAL_FEATURES_FILE]}"
    ]
    with pytest.raises(IndexLoadError, match=r"is damaged: local_features\.npz has .* --force --local-features"):
        load_index(folder)
    found, broken = scan_indexes(tmp_path / "indexes")
    assert not found and "local_features.npz" in broken[0].problem
    path.unlink()
    assert damage(folder, manifest) == [f"{LOCAL_FEATURES_FILE} is missing"]


def test_an_index_reads_a_small_features_file_whole(gallery, described, tmp_path):
    folder = write_gallery_index(tmp_path / "indexes", gallery, described)
    features = load_index(folder).local_features
    with open(folder / LOCAL_FEATURES_FILE, "r+b") as file:  # rewritten in place after it was opened
        file.write(bytes((folder / LOCAL_FEATURES_FILE).stat().st_size))
    np.testing.assert_array_equal(features.image(0).descriptors, described[0].descriptors)


def test_a_features_file_garbled_at_its_recorded_size_is_refused_when_read(gallery, described, tmp_path):
    folder = write_gallery_index(tmp_path / "indexes", gallery, described)
    path = folder / LOCAL_FEATURES_FILE
    path.write_bytes(bytes(path.stat().st_size))
    loaded = load_index(folder)  # the size matches: only reading it tells
    with pytest.raises(IndexLoadError, match="not a readable features file.*--local-features"):
        loaded.local_features  # noqa: B018


def test_the_build_option_reaches_the_build_settings(tmp_path):
    arguments = parse(["--images", str(tmp_path), "--local-features"], command="build")
    assert by_field(BuildSettings, arguments).local_features is True
    assert by_field(BuildSettings, parse(["--images", str(tmp_path)], command="build")).local_features is False


def test_a_build_asking_for_them_rebuilds_an_index_without_them_and_one_without_the_flag_keeps_them(
    gallery, described, tmp_path
):
    index_dir = tmp_path / "indexes"
    folder = write_gallery_index(index_dir, gallery, None)
    collection = folder_collection(gallery, "gallery")
    plain = BuildSettings(index_dir=index_dir, store="exact")
    wanted = BuildSettings(index_dir=index_dir, store="exact", local_features=True, local_feature_settings=SMALL)
    assert _why_rebuild(folder, collection, RECIPE, plain, False) is None
    assert _why_rebuild(folder, collection, RECIPE, wanted, False) == "local features wanted"
    folder = write_gallery_index(index_dir, gallery, described)
    assert _why_rebuild(folder, collection, RECIPE, wanted, False) is None
    assert _why_rebuild(folder, collection, RECIPE, plain, False) is None
    other = BuildSettings(index_dir=index_dir, store="exact", local_features=True)
    assert _why_rebuild(folder, collection, RECIPE, other, False) == "other local feature settings"


def test_build_index_py_takes_the_option_too(tmp_path):
    import build_index

    assert build_index.parse_arguments(["--images", str(tmp_path), "--local-features"]).local_features is True


@pytest.mark.slow
def test_a_build_with_them_stores_each_rows_features_carries_them_to_dba_and_the_search_verifies(tmp_path, extractors):
    from stubs import build_settings
    from test_verification import edited_crop

    from cbir.backbones import BACKBONES
    from cbir.build import build_indexes
    from cbir.search import SearchEngine
    from cbir.verification import MIN_INLIERS, SpatialVerification
    from cbir.weights import Weights

    photos = tmp_path / "photos"
    photos.mkdir()
    for seed in range(6):
        draw_textured_picture(seed, 640, 480).save(photos / f"photo_{seed}.jpg", quality=90)
    (photos / "empty.jpg").write_bytes(b"")  # skipped by the build: the rows must not shift
    settings = build_settings(index_dir=tmp_path / "indexes", weights=Weights.parse("none"), input_size=96, dba=2,
                              progress=False, store="exact", local_features=True, local_feature_settings=SMALL)  # fmt: skip
    outcomes = build_indexes(folder_collection(photos, "photos"), [BACKBONES["xception"]], settings, extractors=extractors)
    assert len(outcomes) == 2  # the recipe, and the recipe with DBA
    base, augmented = (load_index(outcome.folder) for outcome in outcomes)
    assert base.manifest.local_features == augmented.manifest.local_features == SMALL
    assert "local_features_seconds" in base.manifest.timings
    assert len(base.local_features) == len(base.manifest.images) == 6
    for row, image in enumerate(base.manifest.images):
        np.testing.assert_array_equal(base.local_features.image(row).descriptors,
                                      describe_image(photos / image, SMALL).descriptors)  # fmt: skip
    assert (augmented.folder / LOCAL_FEATURES_FILE).read_bytes() == (base.folder / LOCAL_FEATURES_FILE).read_bytes()
    # Built again with the same settings: nothing to do.
    again = build_indexes(folder_collection(photos, "photos"), [BACKBONES["xception"]], settings, extractors=extractors)
    assert [outcome.status.value for outcome in again] == ["up to date", "up to date"]
    engine = SearchEngine(tmp_path / "indexes", extractors=extractors)
    query = edited_crop(photos / "photo_3.jpg", 35)
    result = engine.search(query, collection="photos", recipe=outcomes[1].key, k=3, rerankers=(SpatialVerification(),))
    assert result.hits[0].image == "photo_3.jpg" and result.hits[0].inliers >= MIN_INLIERS


@pytest.mark.slow
def test_added_images_get_their_features_in_every_index_that_has_them(tmp_path, extractors):
    from stubs import build_settings

    from cbir.add import AddSettings, add_images
    from cbir.backbones import BACKBONES
    from cbir.build import build_indexes
    from cbir.weights import Weights

    photos, new = tmp_path / "photos", tmp_path / "new"
    for folder, seeds in ((photos, range(5)), (new, range(100, 103))):
        folder.mkdir()
        for seed in seeds:
            draw_textured_picture(seed, 400, 300).save(folder / f"photo_{seed}.jpg", quality=90)
    (new / "broken.jpg").write_bytes(b"not a picture")
    settings = build_settings(index_dir=tmp_path / "indexes", weights=Weights.parse("none"), input_size=96, progress=False,
                              store="exact", whiten_on="demo", whitened_dim=3, dba=2, local_features=True,
                              local_feature_settings=SMALL)  # fmt: skip
    outcomes = build_indexes(folder_collection(photos, "demo"), [BACKBONES["xception"]], settings, extractors=extractors)
    before = load_index(outcomes[0].folder)
    old_features = [before.local_features.image(row) for row in range(5)]
    add_images(tmp_path / "indexes", "demo", photos, new, AddSettings(progress=False), extractors=extractors)
    grown = [load_index(outcome.folder) for outcome in outcomes]
    base = grown[0]
    assert base.manifest.images[5:] == [f"../new/photo_{seed}.jpg" for seed in range(100, 103)]
    for index in grown:
        assert index.manifest.local_features == SMALL and len(index.local_features) == 8
        assert not damage(index.folder, index.manifest)
        assert (index.folder / LOCAL_FEATURES_FILE).read_bytes() == (base.folder / LOCAL_FEATURES_FILE).read_bytes()
    for row in range(5):  # old rows: not described again
        np.testing.assert_array_equal(base.local_features.image(row).descriptors, old_features[row].descriptors)
    for row, image in enumerate(base.manifest.images[5:], start=5):
        np.testing.assert_array_equal(base.local_features.image(row).descriptors,
                                      describe_image(photos / image, SMALL).descriptors)  # fmt: skip
