"""The runtime as part of the recipe (cbir.runtime): OpenVINO f32 gives Keras' descriptors within a
stated tolerance, the conversion is kept and read back, bf16 is refused where the CPU has no bfloat16
units, Keras recipes keep their keys and manifests, and an index built with one runtime refuses
queries described by another."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from cbir.backbones import BACKBONES
from cbir.weights import Weights
from cbir.trunks import ExtractorCache, build_extractor
from cbir.build import BuildSettings, build_indexes
from cbir.recipe import RecipeSettings
from cbir.datasets import folder_collection
from cbir.errors import SettingsError
from cbir.index import load_index
from cbir.layout import IndexLoadError
from cbir.recipe import Recipe, build_options
from cbir import runtime
from cbir.runtime import Runtime
from cbir.search import SearchEngine
from optional import need
from synthetic import make_gallery

# OpenVINO f32 against Keras on the same weights, measured at 1e-9 .. 1e-6 of the largest value
# (bench/results/runtime*.md): a tenth of a thousandth is the stated tolerance.
MAX_RELATIVE_DIFFERENCE = 1e-4
MIN_COSINE = 0.99999


@pytest.fixture(scope="module")
def converted_cache(tmp_path_factory) -> Path:
    """One OpenVINO cache for the module: the second test reads the IR the first one saved."""
    return tmp_path_factory.mktemp("openvino")


def needs_openvino() -> None:
    need("openvino")


def test_keras_recipes_keep_their_keys_and_manifests_and_others_are_named():
    keras = Recipe.create("xception", weights="none", input_size=96, pooling="gem")
    assert keras.key == "xception-gem" and "runtime" not in keras.to_json() and "runtime" not in keras.identity()
    f32 = Recipe.create("xception", weights="none", input_size=96, pooling="gem", runtime="openvino-f32")
    assert f32.key == "xception-gem-ovf32" and f32.identity()["runtime"] == "openvino-f32"
    assert Recipe.from_json(f32.to_json()) == f32 and Recipe.from_json(keras.to_json()).runtime is Runtime.KERAS
    assert "OpenVINO f32" in f32.describe_label()
    assert build_options("xception-gem-ovbf16-dba5") == "--backbones xception --pooling gem --runtime openvino-bf16 --dba 5"
    with pytest.raises(SettingsError, match="known runtimes: keras, openvino-f32, openvino-bf16"):
        Recipe.create("xception", runtime="tensorrt")


def test_bf16_is_refused_where_the_cpu_has_no_bfloat16_units(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_capabilities", lambda: ["FP32", "INT8", "BIN", "EXPORT_IMPORT"])
    with pytest.raises(SettingsError, match="needs a CPU with bfloat16 units .* Use --runtime openvino-f32 or keras"):
        runtime.check_runtime(Runtime.OPENVINO_BF16)
    runtime.check_runtime(Runtime.OPENVINO_F32)
    monkeypatch.setattr(runtime, "cpu_capabilities", lambda: ["FP32", "BF16", "INT8"])
    runtime.check_runtime(Runtime.OPENVINO_BF16)


def test_a_missing_openvino_is_a_message_naming_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import fails as if not installed
    with pytest.raises(SettingsError, match="pip install -r requirements-scale.txt"):
        runtime._openvino()


@pytest.mark.slow
def test_openvino_f32_descriptors_are_keras_within_the_tolerance_and_the_conversion_is_kept(converted_cache, monkeypatch,
                                                                                            caplog):  # fmt: skip
    needs_openvino()
    monkeypatch.setenv(runtime.CACHE_ENV, str(converted_cache))
    first = not any(converted_cache.iterdir())
    keras = Recipe.create("xception", weights="none", input_size=96, pooling="gem")
    converted = Recipe.create("xception", weights="none", input_size=96, pooling="gem", runtime="openvino-f32")
    rng = np.random.default_rng(5)
    # Two shapes through one conversion: the converted trunk keeps Keras' dynamic input shape.
    images = [rng.integers(0, 256, size=shape, dtype=np.uint8) for shape in [(96, 128, 3)] * 3 + [(128, 96, 3)] * 2]
    reference = build_extractor(keras).describe(images)
    with caplog.at_level(logging.INFO, logger="cbir.runtime"):
        described = build_extractor(converted).describe(images)
        assert ("converting to OpenVINO" in caplog.text) is first
        caplog.clear()
        again = build_extractor(converted).describe(images)  # a second process would do the same
        assert "OpenVINO network read from" in caplog.text and "converting" not in caplog.text
    cosine = (reference * described).sum(1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(described, axis=1))
    assert cosine.min() >= MIN_COSINE
    assert np.abs(reference - described).max() <= MAX_RELATIVE_DIFFERENCE * np.abs(reference).max()
    np.testing.assert_array_equal(again, described)


@pytest.mark.slow
def test_an_index_built_with_one_runtime_refuses_queries_from_another(tmp_path, converted_cache, monkeypatch):
    needs_openvino()
    monkeypatch.setenv(runtime.CACHE_ENV, str(converted_cache))
    photos, index_root = tmp_path / "photos", tmp_path / "indexes"
    make_gallery(photos, 8)
    settings = BuildSettings(
        index_dir=index_root,
        progress=False,
        store="exact",
        batch_size=4,
        recipe=RecipeSettings(weights=Weights.parse("none"), input_size=96, runtime=Runtime.OPENVINO_F32),
    )
    [outcome] = build_indexes(folder_collection(photos, "demo"), [BACKBONES["xception"]], settings)
    assert outcome.key == "xception-ovf32"
    loaded = load_index(outcome.folder)
    assert loaded.manifest.recipe.runtime is Runtime.OPENVINO_F32
    keras = Recipe.create("xception", weights="none", input_size=96)
    with pytest.raises(IndexLoadError, match="described by the openvino-f32 runtime; descriptors made by keras .* "
                                             "Describe the queries with openvino-f32 \\(the recipe xception-ovf32\\)"):  # fmt: skip
        load_index(outcome.folder, expected=keras)
    # The search engine describes a query with the runtime its index records, and finds the picture.
    engine = SearchEngine(index_root, extractors=ExtractorCache())
    assert engine.extractor_for(loaded).recipe.runtime is Runtime.OPENVINO_F32
    result = engine.search(photos / "picture_004.jpg", collection="demo", recipe="xception-ovf32", k=1)
    assert result.hits[0].image == "picture_004.jpg" and result.hits[0].similarity == pytest.approx(1.0, abs=1e-5)
