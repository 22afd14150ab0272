"""Pooling a feature map into a descriptor, on maps worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.pooling import (
    POOLINGS,
    Pooling,
    generalised_mean,
    global_average,
    max_pool,
    mean_pool,
    pool,
    regional_max,
    rmac_regions,
)


def one_map(*rows: list[float]) -> np.ndarray:
    """A (1, h, w, 1) map from rows of numbers."""
    return np.array(rows, np.float32)[None, :, :, None]


def test_every_pooling_of_a_constant_map_is_that_constant():
    constant = np.full((2, 3, 4, 5), 0.7, np.float32)
    for pool in (max_pool, mean_pool, generalised_mean, global_average):
        assert pool(constant) == pytest.approx(np.full((2, 5), 0.7), rel=1e-5)


def test_mac_and_spoc_by_hand():
    feature_map = one_map([1, 2], [3, 6])
    assert max_pool(feature_map).tolist() == [[6.0]]
    assert mean_pool(feature_map).tolist() == [[3.0]]  # (1 + 2 + 3 + 6) / 4


def test_gem_between_spoc_and_mac():
    feature_map = one_map([1, 2], [3, 6])
    assert generalised_mean(feature_map, p=1) == pytest.approx(mean_pool(feature_map))
    # p = 3: ((1 + 8 + 27 + 216) / 4) ** (1/3) = 63 ** (1/3)
    assert generalised_mean(feature_map, p=3)[0, 0] == pytest.approx(63 ** (1 / 3), rel=1e-6)
    assert generalised_mean(feature_map, p=200)[0, 0] == pytest.approx(6.0, rel=0.01)


def test_gem_clamps_negative_activations():
    # EfficientNet's swish gives small negatives: they count as ~0, never as a complex root.
    assert generalised_mean(one_map([-0.2, 0.0], [0.0, 0.0]))[0, 0] == pytest.approx(1e-6, rel=1e-3)


def test_rmac_regions_of_a_3x3_map_by_hand():
    # The whole map; level 1: one 3x3; level 2: side floor(6/3) = 2 at offsets 0, 1 per axis;
    # level 3: side floor(6/4) = 1 at offsets 0, 1, 2 per axis.
    expected = [(0, 0, -1), (0, 0, 3)]
    expected += [(t, l, 2) for t in (0, 1) for l in (0, 1)]
    expected += [(t, l, 1) for t in (0, 1, 2) for l in (0, 1, 2)]
    assert rmac_regions(3, 3) == expected


def test_rmac_regions_of_a_wide_map_add_positions_along_the_long_side():
    # 7 x 10: spacings (10 - 7) / (s - 1) for s = 2..7 give overlaps 1 - b/7; the one closest to
    # 40 % is b = 3 (s = 2): one extra region along the width. Level 1: side 7 at left 0 and 3;
    # level 2: side floor(14/3) = 4, tops 0, 3 and lefts 0, 3, 6.
    regions = rmac_regions(7, 10)
    assert regions[1:3] == [(0, 0, 7), (0, 3, 7)]
    assert regions[3:9] == [(t, l, 4) for t in (0, 3) for l in (0, 3, 6)]


def test_rmac_sums_l2_normalised_regional_maxima():
    # Two channels on a 3x3 map; channel 0 is 1 everywhere, channel 1 is 0 but for a 4 at the
    # centre. Regions holding the centre: the whole map, the 3x3, the four 2x2, the centre 1x1
    # (7 of 15): each gives (1, 4) / sqrt(17); the other 8 give (1, 0).
    feature_map = np.zeros((1, 3, 3, 2), np.float32)
    feature_map[..., 0] = 1
    feature_map[0, 1, 1, 1] = 4
    expected = 7 * np.array([1, 4]) / np.sqrt(17) + 8 * np.array([1, 0])
    assert regional_max(feature_map)[0] == pytest.approx(expected, rel=1e-6)


def test_every_pooling_has_a_row_and_a_label():
    assert set(POOLINGS) == set(Pooling)
    assert all(row.label for row in POOLINGS.values())


def test_rmac_of_a_map_one_position_high_skips_the_empty_levels():
    # A 10:1 panorama gives VGG16 or ResNet152V2 a 1 x 7 map: level 1 has side floor(2/2) = 1,
    # levels 2 and 3 side floor(2/3) = floor(2/4) = 0, which would be empty regions.
    regions = rmac_regions(1, 7)
    assert all(side != 0 for _, _, side in regions)
    assert regions[0] == (0, 0, -1) and {side for _, _, side in regions[1:]} == {1}
    feature_map = np.arange(7, dtype=np.float32).reshape(1, 1, 7, 1) + 1
    # one channel: every region's maximum normalises to 1, so R-MAC counts the regions
    assert regional_max(feature_map)[0, 0] == pytest.approx(len(regions))
    for pooling in Pooling:
        if pooling is not Pooling.CLS:
            assert np.isfinite(POOLINGS[pooling].pool(np.ones((2, 1, 7, 3), np.float32))).all()


def test_each_pooling_row_runs_its_own_function():
    # A map whose channels tell the poolings apart: max 6, mean 3, GeM(3) 63 ** (1/3).
    feature_map = one_map([1, 2], [3, 6])
    by_hand = {
        Pooling.GAP: 3.0,
        Pooling.MAC: 6.0,
        Pooling.SPOC: 3.0,
        Pooling.GEM: 63 ** (1 / 3),
        Pooling.RMAC: None,  # checked below: regions of a one-channel map each give 1
    }
    for pooling, expected in by_hand.items():
        if expected is not None:
            assert POOLINGS[pooling].pool(feature_map)[0, 0] == pytest.approx(expected, rel=1e-6), pooling
    assert POOLINGS[Pooling.RMAC].pool(feature_map)[0, 0] == pytest.approx(len(rmac_regions(2, 2)))
    tokens = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    assert POOLINGS[Pooling.CLS].pool(tokens).tolist() == [[0.0, 1.0, 2.0, 3.0]]


@pytest.mark.slow
def test_a_ten_to_one_panorama_builds_with_every_pooling(tmp_path):
    # VGG16 reads a 10:1 photo at (input size) x 32 px, its narrowest input: a map one position high.
    from cbir.backbones import BACKBONES
    from cbir.recipe import RecipeSettings
    from cbir.weights import Weights
    from cbir.build import BuildSettings, build_indexes
    from cbir.datasets import folder_collection
    from cbir.index import load_index
    from synthetic import draw_picture, make_gallery

    photos = tmp_path / "photos"
    make_gallery(photos, 3)
    draw_picture(7, width=1000, height=100).save(photos / "panorama.jpg")
    collection = folder_collection(photos, "wide")
    for pooling in (Pooling.GAP, Pooling.MAC, Pooling.SPOC, Pooling.GEM, Pooling.RMAC):
        # (gap is VGG16's fc1, which fixes the input at 224 px: the photo is squashed to a square)
        size = None if pooling is Pooling.GAP else 64
        recipe = RecipeSettings(weights=Weights.parse("none"), pooling=pooling, input_size=size)
        settings = BuildSettings(index_dir=tmp_path / "indexes", recipe=recipe, progress=False, store="exact")
        [outcome] = build_indexes(collection, [BACKBONES["vgg16"]], settings)
        loaded = load_index(outcome.folder)
        assert "panorama.jpg" in loaded.manifest.images and not loaded.manifest.skipped, pooling
        assert np.isfinite(np.asarray(loaded.descriptors)).all(), pooling


def reference_rmac_regions(height: int, width: int, levels: int = 3) -> list[tuple[int, int, int]]:
    """cnnimageretrieval-pytorch's `rmac` region loop (layers/functional.py), transliterated: the
    regions it max-pools, as (top, left, side), the whole map first (side -1)."""
    overlap = 0.4
    steps = np.array([2, 3, 4, 5, 6, 7], dtype=np.float64)
    w = min(width, height)
    b = (max(height, width) - w) / (steps - 1)
    idx = int(np.argmin(np.abs(((w**2 - w * b) / w**2) - overlap)))
    wd = idx + 1 if height < width else 0
    hd = idx + 1 if height > width else 0
    regions = [(0, 0, -1)]
    for level in range(1, levels + 1):
        wl = int(np.floor(2 * w / (level + 1)))
        wl2 = int(np.floor(wl / 2 - 1))
        b = 0 if level + wd == 1 else (width - wl) / (level + wd - 1)
        centres_w = [int(np.floor(wl2 + i * b) - wl2) for i in range(level + wd)]
        b = 0 if level + hd == 1 else (height - wl) / (level + hd - 1)
        centres_h = [int(np.floor(wl2 + i * b) - wl2) for i in range(level + hd)]
        regions += [(top, left, wl) for top in centres_h for left in centres_w if wl != 0]
    return regions


@pytest.mark.parametrize("shape", [(4, 7), (7, 4), (4, 40), (40, 4), (5, 5), (1, 5), (3, 10), (10, 3), (6, 9), (2, 30)])
def test_rmac_regions_are_the_references_for_square_wide_tall_and_flat_maps(shape):
    assert rmac_regions(*shape) == reference_rmac_regions(*shape)


def test_rmac_regions_of_a_4x7_map_by_hand():
    # Overlaps 1 - b/4 for spacings b = 3/(s - 1): closest to 40 % at s = 2: one extra column.
    # Level 1: side 4 at lefts 0, 3. Level 2: side 2, tops 0, 2, lefts 0, 2.5 -> 2, 5.
    # Level 3: side 2, tops 0, 1, 2, lefts 0, 1.67 -> 1, 3.33 -> 3, 5.
    expected = [(0, 0, -1), (0, 0, 4), (0, 3, 4)]
    expected += [(t, l, 2) for t in (0, 2) for l in (0, 2, 5)]
    expected += [(t, l, 2) for t in (0, 1, 2) for l in (0, 1, 3, 5)]
    assert rmac_regions(4, 7) == expected
    tall = rmac_regions(7, 4)  # the same regions with the axes swapped (listed row by row)
    assert tall[:3] == [(0, 0, -1), (0, 0, 4), (3, 0, 4)]
    assert sorted(tall) == sorted((left, top, side) for top, left, side in expected)


def test_rmac_of_each_image_does_not_depend_on_the_rest_of_the_batch_or_the_scale():
    rng = np.random.default_rng(2)
    batch = rng.uniform(0, 1, size=(3, 5, 6, 4)).astype(np.float32)
    batch[1] *= 100  # images of very different activation strength in one batch
    alone = np.concatenate([regional_max(image[None]) for image in batch])
    assert regional_max(batch) == pytest.approx(alone, rel=1e-5)
    # Every region is L2-normalised, so maps scaled down (weak activations) give the same R-MAC.
    assert regional_max(batch * 0.001) == pytest.approx(alone, rel=1e-4)


def test_rmac_with_one_level_is_the_whole_map_and_the_level_one_regions():
    feature_map = np.random.default_rng(4).uniform(0, 1, size=(1, 4, 7, 3)).astype(np.float32)
    expected = np.zeros(3)
    for top, left, side in [(0, 0, 7), (0, 0, 4), (0, 3, 4)]:  # the whole map as a 4 x 7 window
        region = feature_map[0, top : top + 4, left : left + side].max(axis=(0, 1)).astype(np.float64)
        expected += region / np.linalg.norm(region)
    assert regional_max(feature_map, levels=1)[0] == pytest.approx(expected, rel=1e-5)


def test_the_study_descriptor_passes_vgg_fc1_vectors_through():
    vectors = np.array([[1.0, -2.0, 3.0], [0.5, 0.0, 0.25]])
    assert global_average(vectors).tolist() == vectors.tolist()


def test_gem_with_another_power_by_hand():
    # p = 4: ((1 + 16 + 81 + 1296) / 4) ** (1/4) = 348.5 ** 0.25
    assert generalised_mean(one_map([1, 2], [3, 6]), p=4)[0] == pytest.approx([348.5**0.25], rel=1e-6)


def test_poolings_say_what_shape_they_needed():
    with pytest.raises(ValueError) as study:
        global_average(np.zeros((2, 3, 4)))
    assert str(study.value) == "expected (n, h, w, c) feature maps or (n, d) vectors, got shape (2, 3, 4)"
    with pytest.raises(ValueError) as maps:
        max_pool(np.zeros((2, 3)))
    assert str(maps.value) == "this pooling needs (n, h, w, c) feature maps, got shape (2, 3)"
    with pytest.raises(ValueError) as tokens:
        POOLINGS[Pooling.CLS].pool(np.zeros((2, 3)))
    assert str(tokens.value) == "the CLS token needs a vision transformer's (n, tokens, dim) output, not (2, 3)"


def test_every_pooling_gives_float32_descriptors():
    maps = np.random.default_rng(5).uniform(0, 1, size=(2, 4, 5, 3))  # float64, as a caller might pass
    tokens = np.random.default_rng(6).uniform(0, 1, size=(2, 7, 3))
    for pooling in Pooling:
        outputs = tokens if pooling is Pooling.CLS else maps
        assert pool(pooling, outputs).dtype == np.float32, pooling
