"""Local features through the file paths a user takes (issue 29): a rebuild after an image changed
under the same name, `cbir add`, a bundle opened by the page. The network is the stand-in of
tests/test_stand_in_network.py (every step after describing a picture is the project's own code);
SIFT, the features file and the verification are real.

A damaged local_features.npz (cut short, garbled at its recorded size, missing) is tested in
tests/test_local_features.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from stubs import StubbedEngine
from synthetic import draw_textured_picture
from test_stand_in_network import XCEPTION, StandInExtractors, settings
from test_verification import edited_crop

import build_index
from cbir.add import AddSettings, add_images
from cbir.build import BuildStatus, build_indexes, changed_images
from cbir.bundle import export_bundle, open_bundle
from cbir.commands import by_field
from cbir.datasets import folder_collection
from cbir.download import HttpSettings
from cbir.errors import SettingsError
from cbir.index import Manifest, load_index
from cbir.local_features import LocalFeatureSettings, describe_image, describe_picture
from cbir.search import SearchEngine
from cbir.verification import MIN_INLIERS, SpatialVerification, verify_pair
from cbir_ui.behaviour import SearchPage
from fake_datasets import serve_directory

FEATURES = LocalFeatureSettings(max_side=320, max_keypoints=150)


def textured_folder(folder: Path, seeds) -> Path:
    folder.mkdir()
    for seed in seeds:
        draw_textured_picture(seed, 640, 480).save(folder / f"photo_{seed}.jpg", quality=90)
    return folder


def build(photos: Path, index_root: Path, extractors: StandInExtractors, **overrides):
    [outcome] = build_indexes(folder_collection(photos, "demo"), [XCEPTION],
                              settings(index_root, **{"store": "exact", "local_features": True,
                                                      "local_feature_settings": FEATURES, **overrides}),
                              extractors=extractors)  # fmt: skip
    return outcome


def test_an_image_changed_under_its_name_is_described_again_by_the_next_build_and_the_others_are_kept(tmp_path):
    photos = textured_folder(tmp_path / "photos", range(4))
    index_root, extractors = tmp_path / "indexes", StandInExtractors()
    built = build(photos, index_root, extractors)
    before = load_index(built.folder)
    images = list(before.manifest.images)
    old_rows = np.array(before.descriptors)
    old_features = [before.local_features.image(row) for row in range(len(before))]
    old_picture = tmp_path / "old_photo_2.jpg"
    shutil.copy2(photos / "photo_2.jpg", old_picture)

    draw_textured_picture(50, 640, 480).save(photos / "photo_2.jpg", quality=90)  # another picture, same name
    assert changed_images(photos, Manifest.read(built.folder)) == ["photo_2.jpg"]
    again = build(photos, index_root, extractors)  # the same command again, as a user would run it
    assert again.status is BuildStatus.BUILT and again.reason == "1 image changed since it was built (first: photo_2.jpg)"

    after = load_index(again.folder)
    assert after.manifest.images == images and len(after.local_features) == len(images)
    changed = images.index("photo_2.jpg")
    stored = after.local_features.image(changed)
    new_query = describe_picture(edited_crop(photos / "photo_2.jpg", 35), FEATURES)
    old_query = describe_picture(edited_crop(old_picture, 35), FEATURES)
    assert verify_pair(new_query, stored).inliers >= MIN_INLIERS
    assert verify_pair(old_query, stored).inliers < MIN_INLIERS
    assert not np.allclose(after.descriptors[changed], old_rows[changed])  # its global row too
    for row in set(range(len(images))) - {changed}:
        np.testing.assert_array_equal(after.descriptors[row], old_rows[row])
        np.testing.assert_array_equal(after.local_features.image(row).descriptors, old_features[row].descriptors)
        np.testing.assert_array_equal(after.local_features.image(row).positions, old_features[row].positions)

    # Built from what it now holds: nothing to do the next time.
    assert build(photos, index_root, extractors).status is BuildStatus.UP_TO_DATE


def test_added_images_get_local_features_and_verification_finds_an_added_photo(tmp_path):
    photos = textured_folder(tmp_path / "photos", range(4))
    new = textured_folder(tmp_path / "new", (100, 101))
    (new / "broken.jpg").write_bytes(b"not a picture")  # skipped: the rows must not shift
    index_root, extractors = tmp_path / "indexes", StandInExtractors()
    built = build(photos, index_root, extractors)
    arguments = build_index.parse_arguments(["--images", str(photos), "--name", "demo", "--add", str(new),
                                             "--local-features", "--index-dir", str(index_root)])  # fmt: skip
    [added] = add_images(index_root, "demo", photos, new, by_field(AddSettings, arguments), extractors=extractors)
    assert added.n_added == 2 and added.n_skipped == 1

    grown = load_index(built.folder)
    assert grown.manifest.local_features == FEATURES
    assert len(grown.local_features) == len(grown) == 6
    for row, image in enumerate(grown.manifest.images[4:], start=4):
        np.testing.assert_array_equal(grown.local_features.image(row).descriptors,
                                      describe_image(photos / image, FEATURES).descriptors)  # fmt: skip
    engine = SearchEngine(index_root, extractors=extractors)
    result = engine.search(edited_crop(new / "photo_101.jpg", 40), collection="demo", recipe=built.key, k=6,
                           rerankers=(SpatialVerification(),))  # fmt: skip
    assert result.hits[0].image == "../new/photo_101.jpg" and result.hits[0].inliers >= MIN_INLIERS
    # The added images are watched like the built ones: one changed later is seen by the next build.
    draw_textured_picture(60, 640, 480).save(new / "photo_100.jpg", quality=90)
    assert changed_images(photos, Manifest.read(built.folder)) == ["../new/photo_100.jpg"]


def test_adding_with_local_features_to_an_index_without_them_is_refused_with_the_command_that_builds_them(tmp_path):
    photos = textured_folder(tmp_path / "photos", range(3))
    new = textured_folder(tmp_path / "new", (100,))
    index_root, extractors = tmp_path / "indexes", StandInExtractors()
    built = build(photos, index_root, extractors, local_features=False)
    with pytest.raises(SettingsError, match=r"demo/xception\S* has no local features.* --force --local-features; then add"):
        add_images(index_root, "demo", photos, new, AddSettings(progress=False, local_features=True), extractors=extractors)
    assert len(load_index(built.folder)) == 3  # refused before anything was done
    # Without the flag, an index without local features grows without them (as it always did).
    add_images(index_root, "demo", photos, new, AddSettings(progress=False), extractors=extractors)
    grown = load_index(built.folder)
    assert len(grown) == 4 and not grown.has_local_features


def test_a_bundle_carries_the_local_features_and_the_page_verifies_from_it(tmp_path):
    photos = textured_folder(tmp_path / "photos", range(5))
    index_root = tmp_path / "indexes"
    built = build(photos, index_root, StandInExtractors())
    query = tmp_path / "query.jpg"
    edited_crop(photos / "photo_3.jpg", 40).save(query, quality=92)
    export_bundle(index_root, "demo", tmp_path / "served" / "demo.tar", progress=False)
    # The other machine: no images, no index; the bundle over HTTP.
    shutil.move(photos, tmp_path / "photos-elsewhere")
    shutil.rmtree(index_root)
    with serve_directory(tmp_path / "served") as base:
        root = open_bundle(f"{base}/demo.tar", tmp_path / "cache", HttpSettings(progress=False, timeout=5))
    engine = StubbedEngine(root)
    loaded = engine.index("demo", built.key)
    assert loaded.has_local_features and len(loaded.local_features) == 5
    target = loaded.manifest.images.index("photo_3.jpg")
    engine.next = np.array(loaded.descriptors[(target + 1) % 5])  # the global ranking puts another photo first
    page = SearchPage(engine, root)
    assert page.can_verify("demo", built.key)
    plain = page.search_photo(str(query), "", "demo", built.key, "cosine", 5, session="s")
    assert plain.result.hits[0].image != "photo_3.jpg"
    verified = page.search_photo(str(query), "", "demo", built.key, "cosine", 5, verify=True, session="s")
    first = verified.result.hits[0]
    assert first.image == "photo_3.jpg" and first.inliers >= MIN_INLIERS
    assert verified.items[0][1].endswith(f"· {first.inliers} inliers")
    assert Path(verified.items[0][0]).is_relative_to(root)  # its thumbnail, from the bundle
    assert "re-ranked by spatial verification" in verified.status.splitlines()[0]
