"""The store registry (cbir.stores): what each store declares of itself, as the build, `--add` and
the command line read it; and what an Annoy build records."""

from __future__ import annotations

import time

import numpy as np
import pytest

from cbir import stores
from cbir.build import BuildSettings
from cbir.distances import Metric
from cbir.errors import SettingsError
from cbir.index import StoreSpec
from cbir.layout import IndexLoadError
from cbir.recipe import Recipe
from cbir.stores import milvus
from cbir.stores.annoy import DEFAULT_N_TREES, AnnoyStore, _build
from stubs import TOY_STORE


@pytest.fixture
def toy():
    yield stores.register(TOY_STORE)
    del stores.STORES["toy"]


def test_the_registry_offers_auto_then_every_store():
    assert stores.store_choices() == ["auto", "exact", "annoy", "hnsw", "milvus"]
    assert {name: kind.label for name, kind in stores.store_kinds().items()} == {
        "exact": "the exact index", "annoy": "the Annoy trees", "hnsw": "the HNSW graphs",
        "milvus": "the Milvus collection",
    }  # fmt: skip
    assert {name: kind.can_grow for name, kind in stores.store_kinds().items()} == {
        "exact": True, "annoy": False, "hnsw": True, "milvus": True,
    }  # fmt: skip


def test_each_store_declares_its_build_parameters():
    by_flag = {parameter.flag: parameter for parameter in stores.store_parameters()}
    assert set(by_flag) == {"--n-trees", "--milvus-uri"}
    n_trees, uri = by_flag["--n-trees"], by_flag["--milvus-uri"]
    assert (n_trees.name, n_trees.type, n_trees.default, n_trees.required) == ("n_trees", int, DEFAULT_N_TREES, False)
    assert (uri.name, uri.type, uri.env, uri.required) == ("milvus_uri", str, "CBIR_MILVUS_URI", True)


def test_a_default_build_asks_for_annoy_with_its_default_trees():
    settings = BuildSettings()
    recipe = Recipe.create("xception", weights="none", input_size=96)
    assert settings.store == stores.DEFAULT_STORE == "annoy"
    # Any size: the design card's index is built for small collections too.
    assert settings.store_spec("demo", recipe, 10) == StoreSpec("annoy", {"n_trees": DEFAULT_N_TREES})
    assert settings.store_spec("demo", recipe, 10_000_000) == StoreSpec("annoy", {"n_trees": DEFAULT_N_TREES})
    given = BuildSettings(store_params={"n_trees": 5, "milvus_uri": "ignored.db"})
    assert given.store_spec("demo", recipe, 10) == StoreSpec("annoy", {"n_trees": 5})  # only its own parameters


def test_milvus_needs_its_uri_and_names_its_collection_from_the_index(monkeypatch, tmp_path):
    recipe = Recipe.create("xception", weights="none", input_size=96)
    monkeypatch.delenv("CBIR_MILVUS_URI", raising=False)
    with pytest.raises(SettingsError, match="--store milvus needs --milvus-uri"):
        BuildSettings(store="milvus").store_spec("demo", recipe, 10)
    monkeypatch.setenv("CBIR_MILVUS_URI", str(tmp_path / "m.db"))
    spec = BuildSettings(store="milvus").store_spec("demo", recipe, 10)
    assert spec.kind == "milvus" and spec.params == {
        "uri": str(tmp_path / "m.db"),
        "collection_name": milvus.collection_name("demo", recipe.key),
        "identity": {"collection": "demo", "recipe": recipe.key, "weights": recipe.weights_identity},
    }


def test_a_registered_store_is_offered_with_its_parameters(toy):
    assert stores.store_choices()[-1] == "toy" and stores.get_store_kind("toy") is toy
    assert [parameter.flag for parameter in stores.store_parameters()][-1] == "--toy-leaves"
    recipe = Recipe.create("xception", weights="none", input_size=96)
    assert BuildSettings(store="toy").store_spec("demo", recipe, 10) == StoreSpec("toy", {"toy_leaves": 7})
    assert BuildSettings(store="toy", store_params={"toy_leaves": 3}).store_spec().params == {"toy_leaves": 3}


def test_an_annoy_build_records_its_trees_seed_and_seconds_and_seeds_its_forests(tmp_path, monkeypatch):
    import annoy

    seeds = []

    class RecordingAnnoyIndex(annoy.AnnoyIndex):
        def set_seed(self, seed):
            seeds.append(seed)
            return super().set_seed(seed)

    # Seeded, not byte-identical: Annoy builds its trees on several threads.
    monkeypatch.setattr(annoy, "AnnoyIndex", RecordingAnnoyIndex)
    descriptors = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    started = time.perf_counter()
    recorded = _build(tmp_path, descriptors, {"n_trees": 3, "seed": 7})
    elapsed = time.perf_counter() - started
    assert seeds == [7, 7]  # one forest per metric, each seeded as asked
    assert (recorded["n_trees"], recorded["seed"]) == (3, 7)
    assert set(recorded["build_seconds"]) == {"cosine", "euclidean"}
    for seconds in recorded["build_seconds"].values():
        # Rounded to the millisecond: at most half a millisecond above the time measured around it.
        assert isinstance(seconds, float) and 0 <= seconds <= elapsed + 0.0005 and round(seconds, 3) == seconds
    assert _build(tmp_path, descriptors, {})["n_trees"] == DEFAULT_N_TREES


def test_an_annoy_store_without_its_files_says_which_file_it_cannot_load(tmp_path):
    store = AnnoyStore(tmp_path, np.zeros((3, 4), np.float32), {})
    with pytest.raises(IndexLoadError) as raised:
        store.search(np.ones(4), Metric.COSINE, 1)
    assert str(raised.value).startswith(f"cannot load {tmp_path / 'cosine.ann'} (")


def test_annoy_and_the_exact_store_answer_a_batch_of_one_like_a_vector(tmp_path):
    # Describing one image gives a (1, d) array; every store must read it as the vector it holds.
    descriptors = np.random.default_rng(1).normal(size=(30, 6)).astype(np.float32)
    _build(tmp_path, descriptors, {"n_trees": 5})
    query = descriptors[4] + 0.01
    for kind in ("annoy", "exact"):
        store = stores.get_store_kind(kind).open(tmp_path, descriptors, {})
        as_batch = store.search(query[None, :], Metric.COSINE, 3)
        as_vector = store.search(query, Metric.COSINE, 3)
        assert as_batch.rows.tolist() == as_vector.rows.tolist() and as_vector.rows[0] == 4, kind
        store.close()
