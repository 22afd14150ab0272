"""The HNSW store (cbir.stores.hnsw): recall against the exact scan (with a sparse graph as the
control that must fail), the exact scan's distances, reloading, the manifest, the search engine,
and the build's choice of store by collection size."""

from __future__ import annotations

import json
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from optional import need

need("hnswlib")

from cbir import build
from cbir.datasets import Collection
from cbir.distances import Metric
from cbir.errors import SettingsError
from cbir.index import IndexLoadError, Manifest, StoreSpec, load_index, write_index
from cbir.recipe import Recipe
from cbir.stores import hnsw
from rounding import assert_float32_distances_agree
from stubs import StubbedEngine, wide, write_collection

METRICS = (Metric.COSINE, Metric.EUCLIDEAN)


def clustered(n: int, dim: int, seed: int = 0, centres: int = 100) -> np.ndarray:
    """Rows around `centres` centres with norms from 0.5 to 3: cosine and euclidean rank differently."""
    rng = np.random.default_rng(seed)
    middle = np.random.default_rng(99).normal(size=(centres, dim))
    rows = middle[rng.integers(0, centres, n)] + 0.3 * rng.normal(size=(n, dim))
    return (rows * rng.uniform(0.5, 3.0, size=(n, 1))).astype(np.float32)


def write(folder, descriptors: np.ndarray, params: dict | None = None) -> Manifest:
    manifest = Manifest(
        collection="demo",
        recipe=Recipe.create("xception", weights="none", input_size=96),
        images=[f"img_{i:04d}.jpg" for i in range(len(descriptors))],
        dim=descriptors.shape[1],
        store=StoreSpec("hnsw", dict(params or {})),
    )
    return write_index(folder, descriptors, manifest)


def recall_at_10(loaded, queries: np.ndarray, metric: Metric, candidates: int | None = None) -> float:
    found = []
    for query in queries:
        truth = set(loaded.search(query, metric, 10, exact=True).rows.tolist())
        got = set(loaded.search(query, metric, 10, exact=False, candidates=candidates).rows.tolist())
        found.append(len(truth & got) / 10)
    return float(np.mean(found))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hnsw") / "demo" / "xception"
    write(folder, clustered(3000, 32))
    return folder


QUERIES = clustered(60, 32, seed=7)


def test_recall_at_10_against_the_exact_scan(built):
    loaded = load_index(built)
    for metric in METRICS:
        assert recall_at_10(loaded, QUERIES, metric) >= 0.95, metric  # measured: 1.0 for both


def test_control_a_graph_with_two_links_a_node_and_no_search_breadth_does_not_pass(tmp_path):
    # The same data through a graph of M = 2 (hnswlib's least) built and searched with ef = k: this
    # must miss neighbours, or the recall test above could not fail.
    folder = tmp_path / "demo" / "xception"
    write(folder, clustered(3000, 32), {"M": 2, "ef_construction": 10, "ef": 10})
    loaded = load_index(folder)
    for metric in METRICS:
        assert recall_at_10(loaded, QUERIES, metric, candidates=10) < 0.95, metric


def test_distances_are_the_exact_scans_and_rows_are_ordered_by_them(built):
    loaded = load_index(built)
    for metric in METRICS:
        for query in QUERIES[:10]:
            found = loaded.search(query, metric, 20, exact=False)
            truth = loaded.search(query, metric, None, exact=True)
            exact_distance = dict(zip(truth.rows.tolist(), truth.distances.tolist()))
            # angular distance for cosine (not hnswlib's 1 - cos), euclidean (not its square)
            # (the same formula on a subset of rows: float32 rounding may differ, tests/rounding.py)
            assert_float32_distances_agree(found.distances, [exact_distance[row] for row in found.rows.tolist()], metric,
                                           np.asarray(loaded.descriptors)[found.rows], query)  # fmt: skip
            assert np.all(np.diff(found.distances) >= 0)
            assert found.rows.tolist() == truth.rows[:20].tolist()


def test_a_reloaded_index_answers_the_same(built):
    first = load_index(built)
    answers = {(m, i): first.search(q, m, 10, exact=False) for m in METRICS for i, q in enumerate(QUERIES[:10])}
    first.close()
    again = load_index(built)
    for (metric, i), before in answers.items():
        after = again.search(QUERIES[i], metric, 10, exact=False)
        assert after.rows.tolist() == before.rows.tolist()
        np.testing.assert_array_equal(after.distances, before.distances)


def test_the_manifest_records_the_kind_its_parameters_and_files(built):
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["store"]["kind"] == "hnsw"
    params = manifest["store"]["params"]
    assert (params["M"], params["ef_construction"], params["ef"]) == (hnsw.DEFAULT_M, hnsw.DEFAULT_EF_CONSTRUCTION, hnsw.DEFAULT_EF)
    assert params["library"].startswith("hnswlib ")
    assert set(manifest["files"]) == {"descriptors.npy", "cosine.hnsw", "euclidean.hnsw"}


def test_a_graph_of_another_size_is_refused(tmp_path):
    folder, other = tmp_path / "demo" / "xception", tmp_path / "other" / "xception"
    write(folder, clustered(50, 8))
    write(other, clustered(60, 8))
    (folder / "cosine.hnsw").write_bytes((other / "cosine.hnsw").read_bytes())
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["cosine.hnsw"] = (folder / "cosine.hnsw").stat().st_size
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexLoadError, match="holds 60 rows of 8 floats but the manifest lists 50 images"):
        load_index(folder).search(np.ones(8, np.float32), Metric.COSINE, 5, exact=False)


def test_new_rows_added_to_the_graphs_are_found(built, tmp_path):
    folder = tmp_path / "grown"
    folder.mkdir()
    old, new = clustered(500, 32), clustered(40, 32, seed=5) + 5.0
    params = hnsw.build_graphs(folder, old, {})
    params = hnsw.add_rows(folder, new, len(old), params)
    rows = np.concatenate([old, new])
    store = hnsw.KIND.open(folder, rows, params)
    for metric in METRICS:
        for offset, query in enumerate(new):
            assert store.search(query, metric, 1).rows.tolist() == [len(old) + offset]


@pytest.mark.parametrize("exact", [True, False])
def test_the_search_engine_ranks_through_it_as_through_the_exact_scan(tmp_path, exact):
    photos = tmp_path / "photos"
    photos.mkdir()
    write_collection(tmp_path / "idx", Collection("mine", photos, ("long.jpg", "near.jpg")), wide([10, 1], [0.8, 0.6]),
                     StoreSpec("hnsw", {}))  # fmt: skip
    engine = StubbedEngine(tmp_path / "idx")
    engine.next = wide([1, 0])[0]
    cosine = engine.search("q.jpg", collection="mine", recipe="xception", metric="cosine", k=2, exact=exact)
    euclidean = engine.search("q.jpg", collection="mine", recipe="xception", metric="euclidean", k=2, exact=exact)
    assert [hit.image for hit in cosine.hits] == ["long.jpg", "near.jpg"]
    assert [hit.image for hit in euclidean.hits] == ["near.jpg", "long.jpg"]
    assert [hit.distance for hit in euclidean.hits] == pytest.approx([np.sqrt(0.4), np.sqrt(82)], rel=1e-5)


@pytest.mark.parametrize("asked, examined", [(None, hnsw.DEFAULT_EF), (57, 57), (1, 2)])
def test_the_candidates_asked_for_are_what_the_graph_examines(tmp_path, asked, examined):
    # The engine's candidates reach the graph as hnswlib's ef (at least k); none asked: the
    # index's own ef, not another store's default.
    photos = tmp_path / "photos"
    photos.mkdir()
    write_collection(tmp_path / "idx", Collection("mine", photos, ("long.jpg", "near.jpg")), wide([10, 1], [0.8, 0.6]),
                     StoreSpec("hnsw", {}))  # fmt: skip
    engine = StubbedEngine(tmp_path / "idx") if asked is None else StubbedEngine(tmp_path / "idx", candidates=asked)
    engine.next = wide([1, 0])[0]
    for metric in METRICS:
        engine.search("q.jpg", collection="mine", recipe="xception", metric=metric, k=2, exact=False)
        assert engine.index("mine", "xception").store.graph(metric).ef == examined


def test_the_build_chooses_the_store_by_collection_size(monkeypatch):
    assert build.choose_store(5_063, 2048) == "exact"  # Oxford5k: the search scans it exactly anyway
    assert build.choose_store(100_000, 2048) == "exact"
    assert build.choose_store(1_000_000, 512) == "hnsw"
    auto, recipe = build.BuildSettings(store="auto"), Recipe.create("xception", weights="none", input_size=96)
    assert auto.store_spec("demo", recipe, 1_000_000) == StoreSpec("hnsw", {})
    assert auto.store_spec("demo", recipe, 5_063) == StoreSpec("exact", {})
    assert build.BuildSettings(store="hnsw").store_spec("demo", recipe, 50).kind == "hnsw"  # told: as told
    monkeypatch.setattr(hnsw, "available", lambda: False)
    assert build.choose_store(1_000_000, 512) == "annoy"


def test_the_command_line_takes_store_and_its_alias_index(monkeypatch, tmp_path):
    import build_index

    monkeypatch.delenv("CBIR_MILVUS_URI", raising=False)
    assert build_index.parse_arguments(["--images", str(tmp_path)]).store == "annoy"  # the design card's index
    assert build_index.parse_arguments(["--images", str(tmp_path), "--index", "hnsw"]).store == "hnsw"
    given = build_index.parse_arguments(["--images", str(tmp_path), "--store", "milvus", "--milvus-uri", "m.db"])
    assert (given.store, given.milvus_uri) == ("milvus", "m.db")
    with pytest.raises(SystemExit):
        build_index.parse_arguments(["--images", str(tmp_path), "--store", "milvus"])  # no URI: told at once


# -- Small graphs, built in each test (mutation testing maps a function to the tests that call it) ----


def test_the_parameters_given_are_the_ones_built_recorded_and_searched_with(tmp_path):
    rows = clustered(300, 16)
    given = {"M": 6, "ef_construction": 12, "ef": 37, "seed": 7}
    params = hnsw.build_graphs(tmp_path, rows, given)
    assert {name: params[name] for name in given} == given
    assert params["library"] == f"hnswlib {metadata.version('hnswlib')}"
    seconds = params["build_seconds"]
    assert set(seconds) == {"cosine", "euclidean"}
    assert all(isinstance(s, float) and 0 <= s < 60 and round(s, 3) == s for s in seconds.values())
    store = hnsw.KIND.open(tmp_path, rows, params)
    for metric in METRICS:
        found = store.search(rows[0], metric, 5)
        graph = store.graph(metric)
        assert (graph.ef, graph.ef_construction, graph.M) == (37, 12, 6)  # ef: the index's own, none asked
        # A query in double precision is answered as in single: the same rows, the same float32 distances.
        wide_query = store.search(rows[0].astype(np.float64), metric, 5)
        assert wide_query.rows.tolist() == found.rows.tolist() and wide_query.distances.dtype == np.float32
        np.testing.assert_array_equal(wide_query.distances, found.distances)
    # Parameters recorded without ef (as an older manifest): the default breadth.
    unrecorded = hnsw.KIND.open(tmp_path, rows, {})
    unrecorded.search(rows[0], Metric.COSINE, 5)
    assert unrecorded.graph(Metric.COSINE).ef == hnsw.DEFAULT_EF


@pytest.mark.parametrize("wrong", [{"M": 1}, {"ef_construction": 0}, {"ef": 0}])
def test_parameters_below_their_least_are_refused(tmp_path, wrong):
    least = {"M": 2, "ef_construction": 1, "ef": 1}
    assert {name: hnsw.build_graphs(tmp_path, clustered(20, 4), least)[name] for name in least} == least
    with pytest.raises(SettingsError) as refused:
        hnsw.build_graphs(tmp_path, clustered(20, 4), least | wrong)
    settings = {**least, **wrong, "seed": hnsw.DEFAULT_SEED}
    assert str(refused.value) == f"HNSW needs M >= 2, ef_construction >= 1 and ef >= 1, not {settings}"


def test_rows_added_go_into_a_copy_while_the_current_graphs_stay_searchable(tmp_path):
    current, grown = tmp_path / "current", tmp_path / "grown"
    current.mkdir()
    grown.mkdir()
    old, new = clustered(200, 16), clustered(20, 16, seed=5) + 5.0
    params = hnsw.build_graphs(current, old, {})
    before = {metric: (current / hnsw.file_name(metric)).read_bytes() for metric in METRICS}
    rows = np.concatenate([old, new]).astype(np.float64)  # as read back from a file, widened
    recorded = hnsw.KIND.add(current, grown, rows, len(old), params)
    assert {metric: (current / hnsw.file_name(metric)).read_bytes() for metric in METRICS} == before
    assert set(recorded["add_seconds"]) == {"cosine", "euclidean"}
    assert all(isinstance(s, float) and 0 <= s < 60 and round(s, 3) == s for s in recorded["add_seconds"].values())
    assert {name: recorded[name] for name in params} == params
    store = hnsw.KIND.open(grown, rows.astype(np.float32), recorded)
    for metric in METRICS:
        for offset, query in enumerate(new):
            assert store.search(query, metric, 1).rows.tolist() == [len(old) + offset]
    with pytest.raises(IndexLoadError, match=r"cosine\.hnsw holds 220 rows, not 200$"):
        hnsw.add_rows(grown, new, len(old), recorded)  # the graphs already hold them


def test_a_graph_that_reaches_fewer_rows_than_asked_returns_every_row_it_reaches(tmp_path):
    # Two links a node and no breadth when building: the graph falls apart, and hnswlib cannot
    # return as many rows as the collection holds. Built on one thread: with several, the order of
    # insertion (and so whether the graph falls apart) depends on the machine's load.
    import hnswlib

    rows = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    settings = {"M": 2, "ef_construction": 1, "seed": 0}
    for metric, space in hnsw.HNSW_SPACES.items():
        graph = hnswlib.Index(space=space, dim=rows.shape[1])
        graph.init_index(max_elements=len(rows), ef_construction=1, M=2, random_seed=0)
        graph.add_items(rows, np.arange(len(rows)), num_threads=1)
        graph.save_index(str(tmp_path / hnsw.file_name(metric)))
    store = hnsw.KIND.open(tmp_path, rows, settings)
    for metric in METRICS:
        found = store.search(rows[3], metric, len(rows))
        reached = len(found.rows)
        assert 0 < reached < len(rows) and len(set(found.rows.tolist())) == reached
        assert found.rows.dtype == np.int64  # as the exact scan's
        assert np.all(np.diff(found.distances) >= 0)
        # Every row it can reach: asking for one more gives the same rows, asking for that many too.
        for asked in (reached + 1, reached):
            assert store.search(rows[3], metric, asked).rows.tolist() == found.rows.tolist()


def test_a_graph_file_that_cannot_be_read_is_a_message_naming_it(tmp_path):
    rows = clustered(20, 4)
    params = hnsw.build_graphs(tmp_path, rows, {})
    (tmp_path / hnsw.file_name(Metric.COSINE)).write_bytes(b"not a graph")
    store = hnsw.KIND.open(tmp_path, rows, params)
    with pytest.raises(IndexLoadError, match=r"^cannot load .*cosine\.hnsw \(.+\)\.$"):
        store.search(rows[0], Metric.COSINE, 3)
    assert store.search(rows[0], Metric.EUCLIDEAN, 1).rows.tolist() == [0]


def test_without_hnswlib_the_store_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "hnswlib", None)  # import hnswlib now fails
    assert not hnsw.available()
    with pytest.raises(SettingsError) as missing:
        hnsw.build_graphs(Path("unused"), clustered(5, 4), {})
    assert str(missing.value) == "the hnsw store needs hnswlib, which is not installed: pip install -r requirements-scale.txt"


def test_graphs_of_no_rows_answer_no_rows(tmp_path):
    rows = np.zeros((0, 4), np.float32)
    store = hnsw.KIND.open(tmp_path, rows, hnsw.build_graphs(tmp_path, rows, {}))
    for metric in METRICS:
        found = store.search(np.ones(4, np.float32), metric, 5)
        assert found.rows.shape == found.distances.shape == (0,)
        assert (found.rows.dtype, found.distances.dtype) == (np.int64, np.float32)
