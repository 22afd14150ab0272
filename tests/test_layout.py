"""The seams of the index root: folders written before recipes still load and rank the same; a
built root moves; a store or a protocol defined outside the project is picked up as data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cbir import stores
from cbir.datasets import Collection
from cbir.distances import Metric
from cbir.index import StoreSpec, load_index
from cbir.catalogue import scan_indexes
from cbir.layout import IndexLayout, read_collection_record
from cbir.ranking import rank
from cbir.stores.exact import ExactStore
from stubs import StubbedEngine, wide, write_collection

LEGACY = Path(__file__).parent / "fixtures" / "legacy_v1"


def test_an_index_folder_written_before_recipes_loads_and_ranks_as_it_did(tmp_path):
    root = tmp_path / "indexes"
    shutil.copytree(LEGACY / "indexes", root)
    expected = json.loads((LEGACY / "expected.json").read_text())
    queries = np.load(LEGACY / "queries.npy")
    loaded = load_index(root / "demo" / "xception")
    assert loaded.manifest.schema_version == 1 and loaded.manifest.key == "xception"
    assert loaded.manifest.recipe.input_size == 96 and loaded.manifest.untrained
    assert loaded.manifest.skipped[0].image == "broken.jpg"
    for metric in ("cosine", "euclidean"):
        for i, query in enumerate(queries):
            exact = rank(loaded, query, metric, 10, exact=True)
            assert exact.rows.tolist() == expected[metric]["exact"][i]
            assert exact.distances.tolist() == pytest.approx(expected[metric]["exact_distances"][i], rel=1e-5)
            assert rank(loaded, query, metric, 5, exact=False).rows.tolist() == expected[metric]["annoy"][i]


def test_collection_records_written_before_labels_keep_their_queries(tmp_path):
    root = tmp_path / "indexes"
    shutil.copytree(LEGACY / "indexes", root)
    record = read_collection_record(IndexLayout(root), "oxford5k")
    (query,) = record.queries
    assert query.box == (10.0, 20.5, 90.0, 100.0)
    assert query.labels == {"good": {"tower_000004"}, "ok": {"tower_000005"}, "junk": {"tower_000006"}}
    # The images were on another machine: the record says so instead of pretending.
    assert not record.images_found and "/old-machine/data/oxford5k/images" in record.missing_images_message()


def test_the_search_engine_serves_a_legacy_folder_and_says_where_the_images_should_be(tmp_path):
    root = tmp_path / "indexes"
    shutil.copytree(LEGACY / "indexes", root)
    engine = StubbedEngine(root)
    engine.next = np.load(LEGACY / "queries.npy")[0]
    result = engine.search("query.jpg", collection="demo", recipe="xception", metric="cosine", k=10, exact=True)
    expected = json.loads((LEGACY / "expected.json").read_text())
    assert [hit.image for hit in result.hits] == [f"picture_{i:03d}.jpg" for i in expected["cosine"]["exact"][0]]
    assert any("are not at /old-machine/photos" in warning for warning in result.warnings)


def test_a_built_root_copied_elsewhere_with_its_images_loads_from_there(tmp_path):
    site = tmp_path / "site"
    (site / "photos").mkdir(parents=True)
    images = ("a.jpg", "b.jpg", "c.jpg")
    for name in images:
        (site / "photos" / name).write_bytes(b"x")
    write_collection(site / "indexes", Collection("mine", site / "photos", images), wide([1, 0], [0, 1], [1, 1]))
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(site, moved)
    shutil.rmtree(site)

    engine = StubbedEngine(moved / "indexes")
    engine.next = wide([0.9, 0.1])[0]
    result = engine.search("q.jpg", collection="mine", recipe="xception", k=3)
    assert [hit.image for hit in result.hits] == ["a.jpg", "c.jpg", "b.jpg"]
    assert result.hits[0].path == (moved / "photos" / "a.jpg").resolve() and result.hits[0].path.is_file()
    assert result.warnings == ()


class CountingStore:
    """A store the project has never heard of: an exact scan that counts its searches."""

    searches = 0

    def __init__(self, folder: Path, descriptors: np.ndarray, params: dict) -> None:
        self.scan = ExactStore(descriptors)
        self.offset = params["offset"]
        assert (folder / "toy.txt").read_text() == "toy"

    def search(self, query, metric, k, *, candidates=None):
        CountingStore.searches += 1
        return self.scan.search(query, metric, k)

    def close(self) -> None:
        pass


def _build_toy(folder: Path, descriptors: np.ndarray, params: dict) -> dict:
    (folder / "toy.txt").write_text("toy")
    return {"offset": params.get("offset", 7)}


@pytest.fixture
def toy_store():
    kind = stores.register(
        stores.StoreKind("toy", "the toy store", "a test's store", _build_toy, CountingStore, lambda params: ["toy.txt"])
    )
    yield kind
    del stores.STORES["toy"]


def test_a_store_registered_outside_the_project_is_chosen_by_the_manifest(tmp_path, toy_store):
    photos = tmp_path / "photos"
    photos.mkdir()
    images = ("a.jpg", "b.jpg", "c.jpg")
    folder = write_collection(
        tmp_path / "idx", Collection("mine", photos, images), wide([1, 0], [0, 1], [-1, 0]), StoreSpec("toy")
    )
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["store"] == {"kind": "toy", "params": {"offset": 7}} and "toy.txt" in manifest["files"]
    engine = StubbedEngine(tmp_path / "idx")
    engine.next = wide([0.2, 1])[0]
    before = CountingStore.searches
    result = engine.search("q.jpg", collection="mine", recipe="xception", metric=Metric.COSINE, k=2, exact=False)
    assert CountingStore.searches == before + 1
    assert [hit.image for hit in result.hits] == ["b.jpg", "a.jpg"] and result.exact is False
    # Exact stays exact: the toy store is not asked.
    engine.search("q.jpg", collection="mine", recipe="xception", k=2, exact=True)
    assert CountingStore.searches == before + 1
    # A manifest naming a store this code does not know is reported, not loaded.
    del stores.STORES["toy"]
    found, broken = scan_indexes(tmp_path / "idx")
    assert found == [] and "'toy' is not one this code knows" in broken[0].problem
    stores.register(toy_store)
