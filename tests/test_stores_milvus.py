"""The Milvus store (cbir.stores.milvus) on Milvus Lite in a temporary file: built, then searched
through Python and the search engine with the exact scan's ranking and scores; a Milvus collection
that holds another index is refused; a dead server is a message, not a hang."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from optional import need

need("pymilvus")
need("milvus_lite")

from cbir.build import BuildSettings
from cbir.datasets import Collection
from cbir.distances import Metric
from cbir.errors import CbirError
from cbir.index import IndexLoadError, Manifest, StoreSpec, load_index, write_index
from cbir.recipe import Recipe
from cbir.stores import milvus
from rounding import assert_float32_distances_agree
from stubs import RECIPE, StubbedEngine, wide, write_collection

pytestmark = pytest.mark.slow  # each test starts a Milvus Lite server (about a second)

METRICS = (Metric.COSINE, Metric.EUCLIDEAN)
DEAD = "http://127.0.0.1:9"  # nothing listens on the discard port


def clustered(n: int, dim: int, seed: int = 0, centres: int = 20) -> np.ndarray:
    """Rows around `centres` centres with norms from 0.5 to 3: cosine and euclidean rank differently."""
    rng = np.random.default_rng(seed)
    middle = np.random.default_rng(99).normal(size=(centres, dim))
    rows = middle[rng.integers(0, centres, n)] + 0.3 * rng.normal(size=(n, dim))
    return (rows * rng.uniform(0.5, 3.0, size=(n, 1))).astype(np.float32)


def spec(uri, collection: str = "demo", recipe: Recipe | None = None) -> StoreSpec:
    """What `build_index.py --store milvus --milvus-uri URI` asks for."""
    recipe = recipe or Recipe.create("xception", weights="none", input_size=96)
    return BuildSettings(store="milvus", store_params={"milvus_uri": str(uri)}).store_spec(collection, recipe, 0)


def write(folder, descriptors: np.ndarray, store: StoreSpec, backbone: str = "xception") -> Manifest:
    manifest = Manifest(
        collection="demo",
        recipe=Recipe.create(backbone, weights="none", input_size=None if backbone == "vgg16" else 96),
        images=[f"img_{i:04d}.jpg" for i in range(len(descriptors))],
        dim=descriptors.shape[1],
        store=store,
    )
    return write_index(folder, descriptors, manifest)


@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    root = tmp_path_factory.mktemp("milvus")
    descriptors = clustered(400, 16)
    folder = root / "indexes" / "demo" / "xception"
    write(folder, descriptors, spec(root / "milvus.db"))
    return root, folder, descriptors


def test_build_then_search_gives_the_exact_scans_ranking_and_scores(lite):
    _, folder, descriptors = lite
    loaded = load_index(folder)
    for metric in METRICS:
        for query in clustered(15, 16, seed=3):
            found = loaded.search(query, metric, 25, exact=False)
            truth = loaded.search(query, metric, 25, exact=True)
            assert found.rows.tolist() == truth.rows.tolist(), metric
            assert_float32_distances_agree(found.distances, truth.distances, metric, descriptors[found.rows], query)
    loaded.close()


def test_the_manifest_is_written_locally_and_names_the_milvus_collection(lite):
    root, folder, _ = lite
    manifest = json.loads((folder / "manifest.json").read_text())
    params = manifest["store"]["params"]
    assert manifest["store"]["kind"] == "milvus" and set(manifest["files"]) == {"descriptors.npy"}
    assert params["uri"] == str((root / "milvus.db").resolve())
    key = Recipe.create("xception", weights="none", input_size=96).key
    assert params["collection_name"] == milvus.collection_name("demo", key)
    assert params["identity"] == {"collection": "demo", "recipe": key, "weights": manifest["recipe"]["weights"]["identity"]}
    assert params["index_type"] in ("HNSW", "FLAT") and params["identity_stored"]["dim"] == 16
    assert "token" not in json.dumps(manifest).lower()


@pytest.mark.parametrize("exact", [True, False])
def test_the_search_engine_shows_the_exact_scans_hits_through_milvus(tmp_path, exact):
    photos = tmp_path / "photos"
    photos.mkdir()
    collection = Collection("mine", photos, ("a_long.jpg", "b_near.jpg", "c_far.jpg"))  # rows in this order
    store = spec(tmp_path / "milvus.db", "mine", RECIPE)
    write_collection(tmp_path / "idx", collection, wide([10, 1], [0.8, 0.6], [-1, 2]), store)
    engine = StubbedEngine(tmp_path / "idx")
    engine.next = wide([1, 0])[0]
    cosine = engine.search("q.jpg", collection="mine", recipe="xception", metric="cosine", k=3, exact=exact)
    euclidean = engine.search("q.jpg", collection="mine", recipe="xception", metric="euclidean", k=3, exact=exact)
    assert [hit.image for hit in cosine.hits] == ["a_long.jpg", "b_near.jpg", "c_far.jpg"]
    assert [hit.image for hit in euclidean.hits] == ["b_near.jpg", "c_far.jpg", "a_long.jpg"]
    # angular distance sqrt(2 - 2 cos) for cosine (not Milvus's similarity), euclidean (not its square)
    assert [hit.distance for hit in cosine.hits] == pytest.approx(
        [np.sqrt(2 - 2 * 10 / np.sqrt(101)), np.sqrt(2 - 2 * 0.8), np.sqrt(2 + 2 / np.sqrt(5))], rel=1e-5
    )
    assert [hit.distance for hit in euclidean.hits] == pytest.approx([np.sqrt(0.4), np.sqrt(8), np.sqrt(82)], rel=1e-5)


def test_a_small_milvus_index_is_still_searched_through_milvus_by_default(tmp_path):
    """A local scan would be as fast at this size, but the user chose Milvus to search with."""
    photos = tmp_path / "photos"
    photos.mkdir()
    collection = Collection("mine", photos, ("a_long.jpg", "b_near.jpg", "c_far.jpg"))
    write_collection(tmp_path / "idx", collection, wide([10, 1], [0.8, 0.6], [-1, 2]),
                     spec(tmp_path / "milvus.db", "mine", RECIPE))  # fmt: skip
    engine = StubbedEngine(tmp_path / "idx")
    engine.next = wide([1, 0])[0]
    result = engine.search("q.jpg", collection="mine", recipe="xception", metric="cosine", k=2)
    assert result.exact is False and [hit.image for hit in result.hits] == ["a_long.jpg", "b_near.jpg"]


def test_a_milvus_collection_of_another_dimension_is_refused(tmp_path):
    uri = tmp_path / "milvus.db"
    wide_folder, narrow_folder = tmp_path / "i" / "demo" / "xception", tmp_path / "i" / "other" / "xception"
    built = write(wide_folder, clustered(30, 16), spec(uri))
    write(narrow_folder, clustered(30, 8), spec(uri, collection="other"))
    # The narrow index's manifest now names the 16-d Milvus collection (a copied folder, a renamed collection).
    manifest = json.loads((narrow_folder / "manifest.json").read_text())
    manifest["store"]["params"]["collection_name"] = built.store.params["collection_name"]
    (narrow_folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexLoadError, match=r"holds another index: 30 rows of 16 floats \(expected 30 of 8\)"):
        load_index(narrow_folder).search(np.ones(8, np.float32), Metric.COSINE, 5, exact=False)


def test_a_milvus_collection_rebuilt_by_another_backbone_is_refused(tmp_path):
    uri = tmp_path / "milvus.db"
    first = tmp_path / "a" / "demo" / "xception"
    built = write(first, clustered(30, 16), spec(uri))
    # Another build writes the same Milvus collection (the same name, given by hand) with another backbone's rows.
    other = spec(uri, recipe=Recipe.create("vgg16", weights="none"))
    other.params["collection_name"] = built.store.params["collection_name"]
    write(tmp_path / "b" / "demo" / "vgg16", clustered(30, 16, seed=1), other, backbone="vgg16")
    with pytest.raises(IndexLoadError, match="holds another index: .*recipe 'vgg16'.*Rebuild it"):
        load_index(first).search(np.ones(16, np.float32), Metric.COSINE, 5, exact=False)


def test_a_dead_server_is_a_message_not_a_hang(tmp_path):
    started = time.perf_counter()
    with pytest.raises(milvus.MilvusUnavailable, match=f"cannot reach Milvus at {DEAD}") as raised:
        write(tmp_path / "demo" / "xception", clustered(10, 4), spec(DEAD))
    assert isinstance(raised.value, CbirError) and "start it" in str(raised.value) and "--milvus-uri" in str(raised.value)
    assert time.perf_counter() - started < milvus.CONNECT_SECONDS + 5


def test_a_server_that_died_after_the_build_is_a_message_on_search(lite, tmp_path):
    _, folder, _ = lite
    manifest = json.loads((folder / "manifest.json").read_text())
    moved = tmp_path / "demo" / "xception"
    moved.mkdir(parents=True)
    (moved / "descriptors.npy").write_bytes((folder / "descriptors.npy").read_bytes())
    manifest["store"]["params"]["uri"] = DEAD
    (moved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(milvus.MilvusUnavailable, match="cannot reach Milvus"):
        load_index(moved).search(np.ones(16, np.float32), Metric.COSINE, 5, exact=False)


def test_milvus_collection_names_are_valid_and_distinct():
    names = {milvus.collection_name(c, r) for c, r in [("holiday", "xception"), ("holi-day", "xception"), ("holi_day", "xception")]}
    assert len(names) == 3 and all(name.replace("_", "").isalnum() for name in names)


def test_a_milvus_collection_overwritten_by_another_build_of_the_same_recipe_and_size_is_refused(tmp_path):
    uri = tmp_path / "milvus.db"
    first = tmp_path / "a" / "demo" / "xception"
    write(first, clustered(30, 16), spec(uri))
    # The same collection and recipe built again elsewhere (another index root): the same Milvus
    # collection name, the same rows and dimension, other descriptors.
    write(tmp_path / "b" / "demo" / "xception", clustered(30, 16, seed=1), spec(uri))
    with pytest.raises(IndexLoadError, match="holds another index: descriptors_sha256"):
        load_index(first).search(np.ones(16, np.float32), Metric.COSINE, 5, exact=False)


def test_after_an_interrupted_add_the_folder_searches_only_its_own_rows(tmp_path):
    uri = tmp_path / "milvus.db"
    folder = tmp_path / "i" / "demo" / "xception"
    descriptors = clustered(40, 16)
    built = write(folder, descriptors, spec(uri))
    # `--add` inserted new rows into Milvus, then died before its grown folder replaced this one.
    new = clustered(5, 16, seed=7)
    grown = np.concatenate([descriptors, new])
    milvus.KIND.add(folder, tmp_path / "grown", grown, len(descriptors), dict(built.store.params))
    loaded = load_index(folder)
    for metric in METRICS:
        for query in new:  # each new row is its own nearest neighbour in Milvus
            found = loaded.search(query, metric, len(descriptors), exact=False)
            assert found.rows.max() < len(descriptors)
            assert found.rows.tolist() == loaded.search(query, metric, len(descriptors), exact=True).rows.tolist()
    loaded.close()
