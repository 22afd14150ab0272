"""Recipes beyond pooling: input shapes, scales, PCA-whitening, and their names, worked out by hand."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field

import numpy as np
import pytest

import build_index
from cbir.backbones import BACKBONES
from cbir.trunks import FeatureExtractor
from cbir.build import BuildSettings
from cbir.commands import recipe_settings
from cbir.errors import SettingsError
from cbir.index import Manifest, StoreSpec, load_index, write_index
from cbir.layout import IndexLoadError, build_command
from cbir.recipe import InputShape, Recipe, WhiteningSpec, build_options
from cbir.whitening import WHITENING_FILE, Whitening, WhiteningSource, learn_whitening

RECIPES = [
    Recipe.create("xception", weights="none"),
    Recipe.create("vgg16", weights="none"),
    Recipe.create("vgg16", pooling="mac", weights="none"),
    Recipe.create("xception", pooling="gem", scales=(1, 0.707, 0.5), weights="none"),
    Recipe.create("resnet152_v2", pooling="rmac", whiten_on="paris6k", weights="none"),
    Recipe.create("xception", pooling="gem", scales=(1, 0.5), whiten_on="my-photos", whitened_dim=512, weights="none"),
    Recipe.create("vgg16", pooling="gem", whiten_on="paris6k", whitened_dim=256, dba=10, weights="none"),
]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda recipe: recipe.key)
def test_the_build_command_of_a_folder_name_makes_that_recipe_again(recipe):
    """A message that says 'rebuild it: ...' must rebuild the same recipe, from the folder name alone."""
    command = build_command("demo", recipe.key)
    arguments = build_index.parse_arguments(shlex.split(command)[2:] + ["--weights", "none"])
    settings = BuildSettings(recipe=recipe_settings(arguments))
    assert settings.recipe_for(BACKBONES[arguments.backbones]) == recipe


def test_keys_name_pooling_scales_and_whitening():
    assert [recipe.key for recipe in RECIPES] == [
        "xception",
        "vgg16",
        "vgg16-mac",
        "xception-gem-ms1_0.707_0.5",
        "resnet152_v2-rmac-wfull-paris6k",
        "xception-gem-ms1_0.5-w512-my-photos",
        "vgg16-gem-dba10-w256-paris6k",
    ]
    assert RECIPES[-1].describe_label() == "vgg16 · GeM · whitened on paris6k · DBA k = 10 · 256-d"
    assert (RECIPES[-1].base.key, RECIPES[-1].before_dba.key) == ("vgg16-gem", "vgg16-gem-w256-paris6k")
    assert build_options("xception-gem-ms1_0.5-w512-my-photos") == (
        "--backbones xception --pooling gem --scales 1,0.5 --whiten-on my-photos --dim 512"
    )
    assert RECIPES[-2].describe_label() == "xception · GeM · 2 scales · whitened on my-photos · 512-d"
    assert RECIPES[1].describe_label() == "vgg16 · 4096-d"


def test_dimensions_follow_the_recipe():
    study, vgg_mac, whitened_full, whitened_512 = RECIPES[1], RECIPES[2], RECIPES[4], RECIPES[5]
    assert RECIPES[6].dim == 256
    assert (study.dim, vgg_mac.dim) == (4096, 512)
    assert (whitened_full.dim, whitened_full.base.dim) == (2048, 2048)
    assert (whitened_512.dim, whitened_512.base.dim, whitened_512.base.key) == (512, 2048, "xception-gem-ms1_0.5")


def test_pooled_recipes_keep_the_aspect_ratio_and_the_study_squashes():
    gem = Recipe.create("xception", pooling="gem")  # 299 px, smallest input 71
    study = Recipe.create("xception")
    assert (gem.input_shape, study.input_shape) == (InputShape.LONGER_SIDE, InputShape.SQUARE)
    assert gem.network_shape(1024, 768) == (299, 224)  # 299 * 768 / 1024 = 224.25
    assert gem.network_shape(768, 1024) == (224, 299)
    assert gem.network_shape(1024, 768, 0.5) == (150, 112)  # round(149.5) = 150 (to even); 150 * 0.75 = 112.5 -> 112
    assert gem.network_shape(4000, 100) == (299, 71)  # a panorama: the shorter side is kept at the smallest input
    assert gem.network_shape(1024, 768, 0.1) == (71, 71)
    assert study.network_shape(1024, 768) == (299, 299)
    assert study.network_shape(1024, 768, 0.5) == (150, 150)


def test_impossible_recipes_are_refused_with_what_to_do():
    with pytest.raises(SettingsError, match="choose a pooling"):
        Recipe.create("vgg16", scales=(1, 0.5))  # fc1 fixes the input size
    with pytest.raises(SettingsError, match="at most 2048 dimensions, not 4096"):
        Recipe.create("xception", whiten_on="paris6k", whitened_dim=4096)
    with pytest.raises(SettingsError, match="--whiten-on"):
        Recipe.create("xception", whitened_dim=512)
    with pytest.raises(SettingsError, match="scales must be"):
        Recipe.create("xception", pooling="gem", scales=(1, -0.5))
    with pytest.raises(SettingsError, match="scales must be"):
        Recipe.create("xception", pooling="gem", scales=(1, 1))
    with pytest.raises(SettingsError, match="collection name"):
        WhiteningSpec("../elsewhere")


def test_a_recipe_survives_json_and_pooled_recipes_written_before_shapes_were_squares():
    for recipe in RECIPES:
        assert Recipe.from_json(json.loads(json.dumps(recipe.to_json()))) == recipe
    old = RECIPES[2].to_json()
    del old["input_shape"], old["scales"], old["whitening"]
    read = Recipe.from_json(old)
    # Those indexes were built from squares: their queries must be squares too, and a build of
    # today's recipe replaces them.
    assert read.input_shape is InputShape.SQUARE and read.key == RECIPES[2].key
    assert read.identity() != RECIPES[2].identity()


# --- scales -----------------------------------------------------------------------------------------


@dataclass
class ShapeTrunk:
    """Stands in for a network: its 2 x 2 'feature map' holds (height, width, 1) of each input, so
    SPoC gives each image's network shape back; it records the batches it was given."""

    backbone: object = field(default_factory=lambda: BACKBONES["resnet152_v2"])
    batches: list[tuple[int, ...]] = field(default_factory=list)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch.shape)
        n, height, width, _ = batch.shape
        return np.broadcast_to(np.array([height, width, 1], np.float32), (n, 2, 2, 3)).copy()


def spoc_recipe(scales) -> Recipe:
    # resnet152_v2 takes inputs down to 32 px.
    return Recipe.create("resnet152_v2", pooling="spoc", input_size=128, scales=scales, weights="none")


def test_several_scales_average_the_normalised_descriptors_of_each(monkeypatch):
    monkeypatch.setattr(FeatureExtractor, "dim", property(lambda self: 3))  # the stand-in map has 3 channels
    trunk = ShapeTrunk()
    extractor = FeatureExtractor(spoc_recipe((1, 0.5)), trunk)
    image = np.zeros((96, 128, 3), np.uint8)  # a 128 x 96 image, already at the recipe's scale 1
    descriptor = extractor.describe([image])[0]
    # Scale 1 sees 128 x 96, scale 0.5 sees 64 x 48.
    assert trunk.batches == [(1, 96, 128, 3), (1, 48, 64, 3)]
    at_one = np.array([96, 128, 1]) / np.sqrt(96**2 + 128**2 + 1)
    at_half = np.array([48, 64, 1]) / np.sqrt(48**2 + 64**2 + 1)
    expected = (at_one + at_half) / 2
    assert descriptor == pytest.approx(expected / np.linalg.norm(expected), abs=1e-6)


def test_one_scale_is_the_pooled_map_itself_and_images_of_several_shapes_keep_their_rows(monkeypatch):
    trunk = ShapeTrunk()
    monkeypatch.setattr(FeatureExtractor, "dim", property(lambda self: 3))
    extractor = FeatureExtractor(spoc_recipe(None), trunk)
    landscape, portrait = np.zeros((96, 128, 3), np.uint8), np.zeros((128, 96, 3), np.uint8)
    rows = extractor.describe([landscape, portrait, landscape], pad_to=4)
    assert rows.tolist() == [[96, 128, 1], [128, 96, 1], [96, 128, 1]]  # not normalised: one scale is as pooled
    # One batch per shape, not padded (padding is for a batch of a single shape).
    assert sorted(trunk.batches) == [(1, 128, 96, 3), (2, 96, 128, 3)]
    trunk.batches.clear()
    extractor.describe([landscape, landscape], pad_to=4)
    assert trunk.batches == [(4, 96, 128, 3)]


# --- whitening --------------------------------------------------------------------------------------


def anisotropic(count: int, seed: int = 0) -> np.ndarray:
    """Descriptors whose 6 dimensions have very different spreads, mixed by a random rotation."""
    rng = np.random.default_rng(seed)
    rotation = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    return (rng.normal(size=(count, 6)) * [8, 4, 2, 1, 0.5, 0.25]) @ rotation + 5


def normalised(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_whitening_gives_identity_covariance_on_what_it_learned_on():
    training = anisotropic(2000)
    whitening = learn_whitening(training)
    projected = (normalised(training) - whitening.mean) @ whitening.projection.T  # before the final L2 norm
    assert np.cov(projected.T, bias=True) == pytest.approx(np.eye(6), abs=1e-8)
    # Reduced: the 3 axes of largest variance, still white.
    reduced = learn_whitening(training, 3)
    assert reduced.projection.shape == (3, 6)
    kept = (normalised(training) - reduced.mean) @ reduced.projection.T
    assert np.cov(kept.T, bias=True) == pytest.approx(np.eye(3), abs=1e-8)
    # Applied: centred and projected as learned, then L2-normalised.
    assert reduced.apply(training) == pytest.approx(normalised(kept), abs=1e-6)


def test_whitening_applies_the_same_transform_to_one_query_as_to_the_rows():
    whitening = learn_whitening(anisotropic(500), 4)
    rows = whitening.apply(anisotropic(10, seed=1))
    assert whitening.apply(anisotropic(10, seed=1)[3]) == pytest.approx(rows[3], abs=1e-6)


def test_whitening_needs_more_descriptors_than_dimensions_and_says_so():
    with pytest.raises(SettingsError, match=r"5 descriptors.*--dim 4 or less"):
        learn_whitening(anisotropic(5), 6)  # 5 centred points span at most 4 dimensions


def recipe_whitened(dim: int) -> Recipe:
    return Recipe.create("vgg16", pooling="mac", input_size=64, whiten_on="other", whitened_dim=dim, weights="none")


def write_whitened(folder, dim: int = 4) -> tuple[Whitening, np.ndarray]:
    base = np.abs(np.random.default_rng(3).normal(size=(40, 512))).astype(np.float32)
    whitening = learn_whitening(base, dim)
    manifest = Manifest(
        collection="demo",
        recipe=recipe_whitened(dim),
        images=[f"{i}.jpg" for i in range(40)],
        store=StoreSpec("exact"),
        whitening=WhiteningSource("other", "vgg16-mac", 40, "ab" * 32, same_collection=False),
    )
    write_index(folder, whitening.apply(base), manifest, whitening=whitening)
    return whitening, base


def test_a_reduced_index_loads_with_its_whitening_and_turns_queries_into_its_rows(tmp_path):
    whitening, base = write_whitened(tmp_path / "demo" / "vgg16-mac-w4-other")
    loaded = load_index(tmp_path / "demo" / "vgg16-mac-w4-other", expected=recipe_whitened(4))
    assert loaded.descriptors.shape == (40, 4) and loaded.manifest.whitening.collection == "other"
    # A query described as the database was (the unwhitened 512-d descriptor) lands on its row.
    assert loaded.query_descriptor(base[7]) == pytest.approx(np.asarray(loaded.descriptors[7]), abs=1e-6)
    assert loaded.exact.search(loaded.query_descriptor(base[7]), "cosine", 1).rows.tolist() == [7]
    with pytest.raises(IndexLoadError, match="holds vgg16-mac-w4-other descriptors, not vgg16-mac-w8-other"):
        load_index(tmp_path / "demo" / "vgg16-mac-w4-other", expected=recipe_whitened(8))
    # Same name, other input shape (squares, as pooled indexes were built before shapes were kept):
    square = Recipe(**{**recipe_whitened(4).__dict__, "input_shape": InputShape.SQUARE})
    with pytest.raises(IndexLoadError, match=r"input_shape longer side \(expected square\).*--force"):
        load_index(tmp_path / "demo" / "vgg16-mac-w4-other", expected=square)


def test_an_index_whose_whitening_is_missing_or_not_plain_arrays_is_refused(tmp_path):
    folder = tmp_path / "demo" / "vgg16-mac-w4-other"
    write_whitened(folder)
    (folder / WHITENING_FILE).unlink()
    with pytest.raises(IndexLoadError, match="whitening.npz is missing"):
        load_index(folder)
    write_whitened(folder)
    with open(folder / WHITENING_FILE, "wb") as handle:  # same size on disk would pass the size check:
        np.savez(handle, mean=np.array([object()], dtype=object), projection=np.zeros((4, 512)))  # a pickle
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][WHITENING_FILE] = (folder / WHITENING_FILE).stat().st_size
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexLoadError, match="whitening.npz is unreadable"):
        load_index(folder)
