"""One contract per registry, run over every row: a new store, pooling or backbone is tested by
adding it (as keras-hub's shared `run_vision_backbone_test`). The behaviour of each row in depth is
in its own module's tests."""

from __future__ import annotations

import numpy as np
import pytest

from cbir import stores
from cbir.backbones import BACKBONES, Family
from cbir.build import BuildSettings
from cbir.distances import Metric, exact_distances
from cbir.index import Manifest, load_index, write_index
from cbir.pooling import POOLINGS, Pooling, pool
from cbir.recipe import Recipe, default_pooling
from optional import need

# The optional stores' libraries (requirements-scale.txt): absent, their rows skip (tests/optional.py).
NEEDS = {"hnsw": ("hnswlib",), "milvus": ("pymilvus", "milvus_lite")}
RECIPE = Recipe.create("xception", weights="none", input_size=96)


def clustered(rows: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    points = centres[rng.integers(0, 20, rows)] + 0.3 * rng.normal(size=(rows, dim))
    return (points * rng.uniform(0.5, 3.0, size=(rows, 1))).astype(np.float32)


def store_params(name: str, tmp_path) -> dict:
    return {"milvus_uri": str(tmp_path / "milvus.db")} if name == "milvus" else {}


def written(name: str, folder, descriptors: np.ndarray, tmp_path) -> Manifest:
    spec = BuildSettings(store=name, store_params=store_params(name, tmp_path)).store_spec("demo", RECIPE, len(descriptors))
    manifest = Manifest(collection="demo", recipe=RECIPE, images=[f"img_{i:04d}.jpg" for i in range(len(descriptors))],
                        dim=descriptors.shape[1], store=spec)  # fmt: skip
    return write_index(folder, descriptors, manifest)


@pytest.fixture(params=sorted(stores.store_kinds()))
def store_name(request) -> str:
    for module in NEEDS.get(request.param, ()):
        need(module)  # a skip naming the install, or a failure in the full run
    return request.param


@pytest.mark.slow  # the milvus row starts Milvus Lite
def test_every_store_finds_the_exact_scans_top10_with_its_distances(store_name, tmp_path):
    kind = stores.get_store_kind(store_name)
    descriptors = clustered(300, 16, seed=0)
    folder = tmp_path / "demo" / "xception"
    manifest = written(store_name, folder, descriptors, tmp_path)
    assert manifest.store.kind == store_name and kind.label
    assert all((folder / name).is_file() for name in kind.files(manifest.store.params))
    loaded = load_index(folder)
    try:
        for metric in Metric:
            for query in clustered(10, 16, seed=1):
                found = loaded.search(query, metric, 10, exact=False, candidates=300)
                truth = loaded.search(query, metric, 10, exact=True)
                assert found.rows.tolist() == truth.rows.tolist(), (store_name, metric)
                expected = exact_distances(descriptors[found.rows], query, metric)
                # Both float32 computations of the same formula: agree to float32 round-off.
                assert found.distances == pytest.approx(expected, rel=1e-5, abs=1e-5), (store_name, metric)
    finally:
        loaded.close()


@pytest.mark.slow
def test_every_store_that_can_grow_finds_the_rows_added_to_it(store_name, tmp_path):
    kind = stores.get_store_kind(store_name)
    if not kind.can_grow:
        pytest.skip(f"{store_name} cannot take rows after its build: --add rebuilds it")
    descriptors = clustered(200, 16, seed=0)
    folder = tmp_path / "demo" / "xception"
    manifest = written(store_name, folder, descriptors, tmp_path)
    grown = np.concatenate([descriptors, clustered(20, 16, seed=5)])
    manifest.images = manifest.images + [f"new_{i}.jpg" for i in range(20)]
    write_index(folder, grown, manifest, grown_from=len(descriptors))
    loaded = load_index(folder)
    try:
        for row in range(len(descriptors), len(grown)):
            assert loaded.search(grown[row], Metric.COSINE, 1, exact=False).rows[0] == row, store_name
    finally:
        loaded.close()


def _outputs(pooling: Pooling, rng) -> np.ndarray:
    """What a trunk gives a pooling: a token sequence for CLS, a (n, h, w, c) map for the others."""
    if pooling is Pooling.CLS:
        return rng.uniform(0.1, 2.0, size=(3, 1 + 5 * 7, 8)).astype(np.float32)
    return rng.uniform(0.1, 2.0, size=(3, 5, 7, 8)).astype(np.float32)


@pytest.mark.parametrize("pooling", list(Pooling))
def test_every_pooling_gives_one_finite_float32_vector_per_image(pooling):
    outputs = _outputs(pooling, np.random.default_rng(0))
    pooled = pool(pooling, outputs)
    assert pooled.shape == (3, 8) and pooled.dtype == np.float32 and np.isfinite(pooled).all()
    assert POOLINGS[pooling].label and POOLINGS[pooling].short_label
    # Each image is pooled on its own: the batch does not leak between images.
    assert pool(pooling, outputs[1:2]) == pytest.approx(pooled[1:2], rel=1e-6)
    # Scale: the mean and max poolings are homogeneous (twice the map, twice the vector); R-MAC sums
    # normalised regions, so it does not move.
    doubled = pool(pooling, 2 * outputs)
    assert doubled == pytest.approx(pooled if pooling is Pooling.RMAC else 2 * pooled, rel=1e-5)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_row_is_whole_and_makes_its_own_recipe(name):
    backbone = BACKBONES[name]
    assert backbone.min_input_size <= backbone.input_size and backbone.dim > 0 and backbone.map_channels > 0
    assert backbone.family in Family
    if backbone.family is Family.STUDY:
        import keras

        assert callable(getattr(keras.applications, backbone.constructor))
        assert callable(getattr(keras.applications, backbone.module).preprocess_input)
    else:
        assert backbone.preset and backbone.architecture is not None and backbone.licence
    recipe = Recipe.create(name, weights="none")
    assert recipe.pooling is default_pooling(backbone) and recipe.dim == backbone.dim
    assert Recipe.from_json(recipe.to_json()) == recipe
