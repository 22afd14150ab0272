"""The newer backbones: DINOv2 vision transformers from keras-hub, as registry rows.

keras-hub is optional (requirements-keras-hub.txt; CI installs it). The tests that build a network
skip without it; the rest hold either way. Networks are random-init (`weights=none`, the row's own
architecture) with one transformer layer instead of 12-24, through the same constructor arguments,
and small inputs (a multiple of the 14-pixel patch), so a build takes seconds.
"""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np
import pytest

from cbir.backbones import BACKBONES, KERAS_HUB_INSTALL, Family, parse_backbones
from cbir.weights import Weights, WeightsError, WeightsKind
from cbir.trunks import ExtractorCache, MissingPackageError, build_extractor, imagenet_mean_std
from cbir.errors import SettingsError
from cbir.pooling import Pooling
from cbir.recipe import Recipe, build_options
from optional import need

DINOV2 = ["dinov2_small", "dinov2_base", "dinov2_large"]
SIZE = 56  # 4 x 4 patches


def test_rows_hold_the_published_architectures_and_are_grouped_as_newer():
    # ViT-S/14, ViT-B/14, ViT-L/14 (DINOv2's model card; keras-hub's presets of the same names).
    assert {name: (b.dim, b.architecture.patch_size, b.architecture.num_layers, b.architecture.num_heads,
                   b.architecture.intermediate_dim, b.input_size, b.preset) for name, b in BACKBONES.items()
            if b.vision_transformer} == {
        "dinov2_small": (384, 14, 12, 6, 1536, 224, "dinov2_small"),
        "dinov2_base": (768, 14, 12, 12, 3072, 224, "dinov2_base"),
        "dinov2_large": (1024, 14, 24, 16, 4096, 224, "dinov2_large"),
    }  # fmt: skip
    assert all(BACKBONES[name].family is Family.NEWER and BACKBONES[name].licence == "Apache-2.0" for name in DINOV2)
    assert [b.name for b in parse_backbones("study")] == [
        "vgg16", "xception", "inception_v3", "inception_resnet_v2", "resnet152_v2", "efficientnet_v2_l",
    ]  # fmt: skip
    assert [b.name for b in parse_backbones("all")][-3:] == DINOV2


def test_the_cls_token_is_the_rows_own_descriptor_and_gem_a_recipe():
    own, gem = Recipe.create("dinov2_base", weights="none"), Recipe.create("dinov2_base", pooling="gem", weights="none")
    assert (own.pooling, own.key, own.dim, own.input_size) == (Pooling.CLS, "dinov2_base", 768, 224)
    assert (gem.key, gem.dim) == ("dinov2_base-gem", 768)
    assert build_options(gem.key) == "--backbones dinov2_base --pooling gem"
    # Fixed square inputs: every pooling squashes, unlike the CNNs' pooled recipes.
    assert own.network_shape(1024, 768) == gem.network_shape(1024, 768) == (224, 224)
    assert Recipe.create("dinov2_small", input_size=518).input_size == 518
    # The six keep their own descriptor and keys.
    assert Recipe.create("xception").key == "xception" and Recipe.create("xception").pooling is Pooling.GAP


def test_impossible_vit_recipes_are_refused_with_what_to_do():
    with pytest.raises(SettingsError, match="multiple of 14: --input-size 224 or 238, not 230"):
        Recipe.create("dinov2_small", input_size=230)
    with pytest.raises(SettingsError, match="leave out --scales"):
        Recipe.create("dinov2_small", pooling="gem", scales=(1, 0.707))
    with pytest.raises(SettingsError, match="xception is a CNN.*dinov2_small"):
        Recipe.create("xception", pooling="cls")


def test_patch_tokens_become_a_map_without_the_cls_and_register_tokens():
    architecture = replace(BACKBONES["dinov2_small"].architecture, num_register_tokens=4)
    n, side, dim = 2, 3, 5
    patches = np.arange(n * side * side * dim, dtype=np.float32).reshape(n, side * side, dim)
    tokens = np.concatenate([np.full((n, 1 + 4, dim), -1e6, np.float32), patches], axis=1)  # [CLS, registers, ...]
    grid = architecture.patch_map(tokens)
    assert grid.shape == (n, side, side, dim)
    assert np.array_equal(grid[1, 2, 0], patches[1, 6]) and grid.min() >= 0  # row-major; CLS/registers left out


def test_preprocessing_is_the_presets_imagenet_mean_and_std():
    pixel = np.array([[[[255.0, 0.0, 124.0]]]], np.float32)
    out = imagenet_mean_std(pixel)["images"][0, 0, 0]
    assert out.tolist() == pytest.approx([(1 - 0.485) / 0.229, -0.456 / 0.224, (124 / 255 - 0.406) / 0.225], rel=1e-5)


def test_weights_name_a_preset_directory_by_content_and_imagenet_names_the_rows_preset(tmp_path):
    preset = tmp_path / "my_dinov2"
    preset.mkdir()
    (preset / "config.json").write_text("{}")
    (preset / "model.weights.h5").write_bytes(b"123")
    weights = Weights.parse(str(preset))
    assert weights.kind is WeightsKind.PRESET and weights.identity.startswith("keras-hub preset my_dinov2 sha256:")
    assert Weights.from_json(weights.to_json()) == weights
    (preset / "model.weights.h5").write_bytes(b"124")
    assert Weights.parse(str(preset)).identity != weights.identity
    handle = Weights.parse("hf://keras/dinov2_small")
    assert (handle.kind, handle.identity) == (WeightsKind.PRESET, "keras-hub preset hf://keras/dinov2_small")
    assert Weights.from_json(handle.to_json()) == handle
    # Every manifest records which: the default weights of a keras-hub row are its preset.
    assert Recipe.create("dinov2_small").identity()["weights"] == "keras-hub preset dinov2_small"
    assert Recipe.create("xception").identity()["weights"] == "imagenet"


def test_a_missing_keras_hub_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_hub", None)  # `import keras_hub` now raises ImportError
    with pytest.raises(MissingPackageError, match="dinov2_small comes from keras-hub") as raised:
        build_extractor(Recipe.create("dinov2_small", input_size=SIZE, weights="none"))
    assert KERAS_HUB_INSTALL in str(raised.value) and KERAS_HUB_INSTALL.startswith("pip install --no-deps -r")


# --------------------------------------------------------------------------------------------
# Built networks (keras-hub needed)


@pytest.fixture
def one_layer(monkeypatch):
    """Every DINOv2 row with a single transformer layer: the same constructor, fewer layers."""
    need("keras_hub")
    for name in DINOV2:
        row = BACKBONES[name]
        monkeypatch.setitem(BACKBONES, name, replace(row, architecture=replace(row.architecture, num_layers=1)))


def pictures(count: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)


@pytest.mark.slow
@pytest.mark.parametrize("name", DINOV2)
def test_each_row_builds_and_gives_descriptors_of_its_dimension(name, one_layer):
    cache = ExtractorCache()
    cls = cache.get(Recipe.create(name, input_size=SIZE, weights="none"))
    gem = cache.get(Recipe.create(name, pooling="gem", input_size=SIZE, weights="none"))
    assert gem.trunk is cls.trunk and len(cache) == 1  # one network serves both recipes of a size
    batch = pictures(3)
    by_cls, by_gem = cls.describe(batch), gem.describe(batch)
    dim = BACKBONES[name].dim
    assert by_cls.shape == by_gem.shape == (3, dim) and np.isfinite(by_cls).all() and np.isfinite(by_gem).all()
    # The trunk's output is [CLS, patches] after the final norm; the two recipes read different tokens.
    assert cls.trunk.forward(batch[:1]).shape == (1, 1 + (SIZE // 14) ** 2, dim)
    assert not np.allclose(by_cls, by_gem, atol=1e-3)
    assert not np.allclose(by_cls[0], by_cls[1])
    if name == "dinov2_small":
        # Built for one input size: another size is another network (its position embeddings resized).
        bigger = cache.get(Recipe.create(name, input_size=2 * SIZE, weights="none"))
        assert bigger.trunk is not cls.trunk and bigger.describe(pictures(1, 2 * SIZE)).shape == (1, dim)


@pytest.mark.slow
def test_a_preset_saved_to_a_directory_loads_offline_with_the_same_descriptors(tmp_path, one_layer):
    source = build_extractor(Recipe.create("dinov2_small", input_size=SIZE, weights="none"))
    source.model.save_to_preset(str(tmp_path / "preset"))  # keras-hub's own offline format
    recipe = Recipe.create("dinov2_small", input_size=SIZE, weights=str(tmp_path / "preset"))
    loaded = build_extractor(recipe)
    assert loaded.weights.kind is WeightsKind.PRESET and not recipe.untrained
    assert recipe.identity()["weights"].startswith("keras-hub preset preset sha256:")
    batch = pictures(2, seed=1)
    assert np.allclose(loaded.describe(batch), source.describe(batch), rtol=1e-5, atol=1e-5)
    # A preset of another size is refused by name, not loaded into the wrong row.
    with pytest.raises(WeightsError, match="384-d network, but dinov2_base is 768-d"):
        build_extractor(Recipe.create("dinov2_base", input_size=SIZE, weights=str(tmp_path / "preset")))


@pytest.mark.slow
def test_a_folder_built_with_a_dinov2_row_is_searched_and_guarded_like_any_other(tmp_path, one_layer):
    from cbir.build import BuildSettings, build_indexes
    from cbir.recipe import RecipeSettings
    from cbir.datasets import folder_collection
    from cbir.index import load_index
    from cbir.layout import IndexLoadError
    from cbir.search import SearchEngine
    from synthetic import crop_of, make_gallery

    make_gallery(tmp_path / "photos", 16)
    settings = BuildSettings(
        index_dir=tmp_path / "indexes",
        progress=False,
        batch_size=8,
        recipe=RecipeSettings(weights=Weights.parse("none"), input_size=SIZE),
    )
    cache = ExtractorCache()
    built = build_indexes(folder_collection(tmp_path / "photos", "demo"), [BACKBONES["dinov2_small"]], settings,
                          extractors=cache)  # fmt: skip
    assert [outcome.recipe.key for outcome in built] == ["dinov2_small"]
    engine = SearchEngine(tmp_path / "indexes", extractors=cache)
    for index in (0, 7, 13):
        source = f"picture_{index:03d}.jpg"
        query = crop_of(tmp_path / "photos" / source, fraction=0.8, scale=1.2)
        for metric in ("cosine", "euclidean"):
            result = engine.search(query, collection="demo", recipe="dinov2_small", metric=metric, k=3)
            assert result.hits[0].image == source and result.untrained, (metric, [h.image for h in result.hits])
    index = load_index(tmp_path / "indexes" / "demo" / "dinov2_small")
    assert index.manifest.recipe.identity() == Recipe.create("dinov2_small", input_size=SIZE, weights="none").identity()
    assert index.manifest.recipe.pooling is Pooling.CLS and index.manifest.dim == 384
    # Queries described by another backbone (or another input size) are refused, with the rebuild command.
    with pytest.raises(IndexLoadError, match="built by dinov2_small, not xception"):
        load_index(tmp_path / "indexes" / "demo" / "dinov2_small", expected=Recipe.create("xception", weights="none"))
    with pytest.raises(IndexLoadError, match="input_size 56 \\(expected 112\\)"):
        load_index(tmp_path / "indexes" / "demo" / "dinov2_small",
                   expected=Recipe.create("dinov2_small", input_size=112, weights="none"))  # fmt: skip


@pytest.mark.parametrize("key", ["dinov2_base", "dinov2_small-gem"])
def test_the_rebuild_command_of_a_dinov2_folder_makes_that_recipe_again(key):
    import shlex

    import build_index
    from cbir.build import BuildSettings
    from cbir.commands import recipe_settings
    from cbir.layout import build_command

    arguments = build_index.parse_arguments(shlex.split(build_command("demo", key))[2:] + ["--weights", "none"])
    settings = BuildSettings(recipe=recipe_settings(arguments))
    # No --pooling: the row's own descriptor, the CLS token (not the study's gap).
    assert settings.recipe_for(BACKBONES[arguments.backbones]).key == key


def test_the_page_offers_the_studys_six_first_then_the_newer_ones(tmp_path):
    from cbir.catalogue import IndexInfo
    from cbir_ui.behaviour import SearchPage

    page = SearchPage.__new__(SearchPage)  # the choices need only the list of built indexes
    recipes = [Recipe.create(name, pooling=pooling, weights="none") for name, pooling in
               [("dinov2_small", None), ("xception", "gem"), ("dinov2_base", None), ("xception", None), ("vgg16", None)]]  # fmt: skip
    page.indexes = [IndexInfo("demo", recipe, 10, tmp_path) for recipe in recipes]
    assert page.recipe_choices("demo") == [
        ("vgg16 · 4096-d · UNTRAINED", "vgg16"),
        ("xception · 2048-d · UNTRAINED", "xception"),
        ("xception · GeM · 2048-d · UNTRAINED", "xception-gem"),
        ("newer · dinov2_small · 384-d · UNTRAINED", "dinov2_small"),
        ("newer · dinov2_base · 768-d · UNTRAINED", "dinov2_base"),
    ]
    assert page.default_recipe("demo") == "xception"  # the default backbone stays the study's
