"""Diffusion (Iscen et al., CVPR 2017) as a `rank` re-ranker: the graph by its definition, conjugate
gradient against the closed form, a chain of views reaching past a distractor, the graph file, and
the benchmark's quick run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from benches import run_bench
from pytest import approx

from cbir import diffusion
from cbir.diffusion import (
    GRAPH_FILE,
    Diffusion,
    Graph,
    build_graph,
    collection_graph,
    diffuse,
    query_vector,
)
from cbir.distances import Metric
from cbir.errors import SettingsError
from cbir.index import Manifest, StoreSpec, load_index, write_index
from cbir.ranking import AlphaQueryExpansion, rank
from cbir.recipe import Recipe

REPO = Path(__file__).resolve().parents[1]


def stored_index(folder: Path, descriptors: np.ndarray):
    manifest = Manifest(
        collection="demo",
        recipe=Recipe.create("xception", weights="none", input_size=96),
        images=[f"img_{row}.jpg" for row in range(len(descriptors))],
        dim=descriptors.shape[1],
        store=StoreSpec("exact", {}),
    )
    write_index(folder, np.asarray(descriptors, dtype=np.float32), manifest)
    return load_index(folder)


@pytest.fixture(autouse=True)
def no_graphs_in_memory():
    diffusion._graphs.clear()
    yield
    diffusion._graphs.clear()


def graph_by_definition(descriptors: np.ndarray, k: int, gamma: float) -> np.ndarray:
    """S = D^-1/2 W D^-1/2 of the mutual k-NN graph, dense, one pair at a time."""
    unit = descriptors / np.linalg.norm(descriptors, axis=1, keepdims=True)
    cosine = unit @ unit.T
    n = len(unit)
    nearest = [set(np.argsort(-np.where(np.eye(n, dtype=bool)[i], -np.inf, cosine[i]))[:k]) for i in range(n)]
    affinity = np.zeros((n, n))
    for i in range(n):
        for j in nearest[i]:
            if i in nearest[j]:
                affinity[i, j] = max(cosine[i, j], 0.0) ** gamma
    degree = affinity.sum(axis=1)
    scale = np.where(degree > 0, 1 / np.sqrt(np.where(degree > 0, degree, 1)), 0.0)
    return scale[:, None] * affinity * scale[None, :]


def test_the_graph_is_the_normalised_mutual_knn_graph_of_its_definition() -> None:
    descriptors = np.random.default_rng(0).normal(size=(30, 6))
    graph = build_graph(descriptors, k=4)
    assert graph.dense() == approx(graph_by_definition(descriptors, 4, 3.0), abs=1e-6)
    assert graph.dense() == approx(graph.dense().T, abs=1e-7)
    assert np.count_nonzero(graph.dense()) < 30 * 4  # some one-way neighbours were dropped


def test_the_graph_in_blocks_equals_the_graph_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    descriptors = np.random.default_rng(1).normal(size=(40, 5))
    whole = build_graph(descriptors, k=5).dense()
    monkeypatch.setattr("cbir.diffusion._BLOCK_FLOATS", 7 * 40)  # blocks of 7 rows, the last one short
    assert build_graph(descriptors, k=5).dense() == approx(whole, abs=1e-7)


# A hand-made graph of five rows: a path 0-1-2-3 and row 4 alone (last: reduceat must not read past
# the end for it); S written out in full.
HAND_S = np.array(
    [
        [0.0, 0.5, 0.0, 0.0, 0.0],
        [0.5, 0.0, 0.375, 0.0, 0.0],
        [0.0, 0.375, 0.0, 0.25, 0.0],
        [0.0, 0.0, 0.25, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 0.0],
    ]
)
HAND_GRAPH = Graph(
    row_starts=np.array([0, 1, 3, 5, 6, 6]),
    neighbours=np.array([1, 0, 2, 1, 3, 2], dtype=np.int32),
    weights=np.array([0.5, 0.5, 0.375, 0.375, 0.25, 0.25]),
    k=2,
    gamma=3.0,
)


def test_the_hand_made_graph_multiplies_as_its_matrix() -> None:
    vector = np.array([1.0, -2.0, 3.0, 0.5, 7.0])
    assert HAND_GRAPH.multiply(vector) == approx(HAND_S @ vector)


def test_a_row_without_edges_between_two_with_edges_multiplies_to_zero() -> None:
    graph = Graph(np.array([0, 1, 1, 2]), np.array([2, 0], dtype=np.int32), np.array([0.5, 0.5]), k=1, gamma=3.0)
    assert graph.multiply(np.array([1.0, 2.0, 3.0])) == approx([1.5, 0.0, 0.5])


@pytest.mark.parametrize("alpha", [0.5, 0.99])
def test_conjugate_gradient_equals_the_closed_form(alpha: float) -> None:
    y = np.array([0.0, 1.0, 0.0, 0.2, 0.6])
    closed_form = np.linalg.solve(np.eye(5) - alpha * HAND_S, y)
    assert diffuse(HAND_GRAPH, y, alpha, iterations=20, tolerance=1e-12) == approx(closed_form, rel=1e-9)


def test_conjugate_gradient_on_a_built_graph_is_close_after_twenty_steps() -> None:
    graph = build_graph(np.random.default_rng(2).normal(size=(200, 16)), k=10)
    y = query_vector(len(graph), np.array([3, 50, 120]), np.array([0.9, 0.7, 0.5]), 3.0)
    closed_form = np.linalg.solve(np.eye(200) - 0.99 * graph.dense(), y)
    found = diffuse(graph, y, 0.99, iterations=200, tolerance=1e-10)
    assert found == approx(closed_form, rel=1e-6, abs=1e-9)
    truncated = diffuse(graph, y, 0.99, iterations=1)
    assert np.linalg.norm(truncated - closed_form) > 1e-3 * np.linalg.norm(closed_form)  # the steps count


def test_the_query_vector_is_clipped_similarity_to_the_power_gamma() -> None:
    assert query_vector(4, np.array([2, 0]), np.array([0.5, -0.3]), 3.0) == approx([0.0, 0.0, 0.125, 0.0])


def test_the_reranked_order_is_that_of_the_closed_form_from_the_query_s_nearest_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    rows = rng.normal(size=(40, 8))
    query = rows[0] + 0.8 * rng.normal(size=8)
    index = stored_index(tmp_path / "index", rows)
    plain = rank(index, query, Metric.COSINE, None).rows
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    cosine = unit @ (query / np.linalg.norm(query))
    y = np.zeros(40)
    y[plain[:3]] = np.maximum(cosine[plain[:3]], 0) ** 3
    scores = np.linalg.solve(np.eye(40) - 0.99 * graph_by_definition(rows, 5, 3.0), y)
    reached = plain[np.argsort(-scores[plain], kind="stable")][: np.count_nonzero(scores > 1e-9)]
    assert len(reached) > 10
    reranker = Diffusion(k=5, query_k=3, iterations=100, tolerance=1e-12)
    assert rank(index, query, Metric.COSINE, None, rerankers=[reranker]).rows[: len(reached)].tolist() == reached.tolist()


# A chain of overlapping views: twelve rows along a quarter circle in the plane of the first two
# axes, each close to the next; the query sits just before the first. A distractor out of the plane
# resembles the query more than the far end of the chain does.
CHAIN_ANGLES = np.radians(np.linspace(0, 90, 12))
CHAIN = np.stack([np.cos(CHAIN_ANGLES), np.sin(CHAIN_ANGLES), np.zeros(12)], axis=1)
CHAIN_QUERY = np.array([np.cos(np.radians(-4)), np.sin(np.radians(-4)), 0.0])
DISTRACTOR = np.array([0.55, -0.2, 0.81])
FAR_END_ROW, DISTRACTOR_ROW = 11, 12


def test_the_far_end_of_a_chain_of_views_ranks_above_a_distractor_the_query_prefers(tmp_path: Path) -> None:
    index = stored_index(tmp_path / "chain", np.vstack([CHAIN, DISTRACTOR]))
    plain = list(rank(index, CHAIN_QUERY, Metric.COSINE, None).rows)
    assert plain.index(DISTRACTOR_ROW) < plain.index(FAR_END_ROW)
    diffused = list(rank(index, CHAIN_QUERY, Metric.COSINE, None, rerankers=[Diffusion(k=2, query_k=2)]).rows)
    assert diffused.index(FAR_END_ROW) < diffused.index(DISTRACTOR_ROW)
    assert sorted(diffused[:12]) == list(range(12))  # the whole chain before the distractor


def test_diffusion_after_query_expansion_and_at_a_small_k(tmp_path: Path) -> None:
    index = stored_index(tmp_path / "chain", np.vstack([CHAIN, DISTRACTOR]))
    both = rank(index, CHAIN_QUERY, Metric.COSINE, 5, rerankers=[AlphaQueryExpansion(n=2), Diffusion(k=2, query_k=2, depth=13)])
    assert len(both.rows) == 5 and DISTRACTOR_ROW not in both.rows
    # Each row keeps the distance the ranking it re-ordered gave it (after αQE: to the expanded query).
    expanded = rank(index, CHAIN_QUERY, Metric.COSINE, 13, rerankers=[AlphaQueryExpansion(n=2)])
    distance_of = dict(zip(expanded.rows.tolist(), expanded.distances.tolist(), strict=True))
    assert both.distances.tolist() == approx([distance_of[row] for row in both.rows.tolist()])


def test_diffusion_reorders_only_the_top_depth(tmp_path: Path) -> None:
    index = stored_index(tmp_path / "chain", np.vstack([CHAIN, DISTRACTOR]))
    plain = rank(index, CHAIN_QUERY, Metric.COSINE, 8)
    assert DISTRACTOR_ROW in plain.rows  # eighth
    shallow = rank(index, CHAIN_QUERY, Metric.COSINE, 8, rerankers=[Diffusion(k=2, query_k=2, depth=8)])
    assert sorted(shallow.rows.tolist()) == sorted(plain.rows.tolist()) and shallow.rows[-1] == DISTRACTOR_ROW
    deep = rank(index, CHAIN_QUERY, Metric.COSINE, 8, rerankers=[Diffusion(k=2, query_k=2, depth=13)])
    assert DISTRACTOR_ROW not in deep.rows and 7 in deep.rows


def test_the_graph_file_round_trips_and_is_rebuilt_when_the_rows_change(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "index"
    rows = np.random.default_rng(3).normal(size=(25, 8))
    index = stored_index(folder, rows)
    built = collection_graph(index, k=3)
    assert (folder / GRAPH_FILE).is_file()
    with np.load(folder / GRAPH_FILE, allow_pickle=False) as stored:
        assert set(stored.files) == {"format", "row_starts", "neighbours", "weights", "k", "gamma", "descriptors_sha256"}

    diffusion._graphs.clear()
    with monkeypatch.context() as patched:
        patched.setattr(diffusion, "build_graph", lambda *_, **__: pytest.fail("the stored graph should be read"))
        loaded = collection_graph(index, k=3)
    assert all(np.array_equal(getattr(loaded, name), getattr(built, name)) for name in ("row_starts", "neighbours", "weights"))

    # New rows in the same folder, with the old graph file put back beside them.
    old_graph = (folder / GRAPH_FILE).read_bytes()
    changed = rows.copy()
    changed[:5] = -changed[:5]
    index = stored_index(folder, changed)
    (folder / GRAPH_FILE).write_bytes(old_graph)
    diffusion._graphs.clear()
    rebuilt = collection_graph(index, k=3)
    assert rebuilt.dense() == approx(build_graph(changed, k=3).dense())
    assert not np.allclose(rebuilt.dense(), built.dense())
    diffusion._graphs.clear()
    with monkeypatch.context() as patched:  # and the file now holds the new graph
        patched.setattr(diffusion, "build_graph", lambda *_, **__: pytest.fail("the stored graph should be read"))
        assert collection_graph(index, k=3).dense() == approx(rebuilt.dense())


def test_another_k_or_a_damaged_file_builds_the_graph_again(tmp_path: Path) -> None:
    folder = tmp_path / "index"
    rows = np.random.default_rng(4).normal(size=(25, 8))
    index = stored_index(folder, rows)
    collection_graph(index, k=3)
    assert collection_graph(index, k=5).dense() == approx(build_graph(rows, k=5).dense())
    (folder / GRAPH_FILE).write_bytes(b"not a zip file")
    diffusion._graphs.clear()
    assert collection_graph(index, k=5).dense() == approx(build_graph(rows, k=5).dense())
    with np.load(folder / GRAPH_FILE, allow_pickle=False) as stored:
        assert int(stored["k"]) == 5


@pytest.mark.parametrize("damage", ["row starts past the edges", "row starts going back", "neighbour out of range"])
def test_a_graph_file_whose_arrays_do_not_fit_together_is_built_again(tmp_path: Path, damage: str) -> None:
    folder = tmp_path / "index"
    rows = np.random.default_rng(8).normal(size=(20, 6))
    index = stored_index(folder, rows)
    good = collection_graph(index, k=3)
    row_starts, neighbours = good.row_starts.copy(), good.neighbours.copy()
    if damage == "row starts past the edges":
        row_starts[-1] += 1
    elif damage == "row starts going back":
        row_starts[5], row_starts[6] = row_starts[6], row_starts[5] - 1
    else:
        neighbours[0] = 20
    key = diffusion.GraphKey(diffusion.sha256_file(folder / "descriptors.npy"), 3, 3.0)
    diffusion.save_graph(folder / GRAPH_FILE, Graph(row_starts, neighbours, good.weights, 3, 3.0), key)
    assert diffusion.load_graph(folder / GRAPH_FILE, key, 20) is None
    diffusion._graphs.clear()
    assert collection_graph(index, k=3).dense() == approx(good.dense())


def test_a_folder_that_cannot_be_written_keeps_the_graph_in_memory(tmp_path: Path, monkeypatch, caplog) -> None:
    index = stored_index(tmp_path / "index", np.random.default_rng(5).normal(size=(12, 4)))

    def refuse(*_, **__):
        raise PermissionError("read-only")

    monkeypatch.setattr(diffusion, "save_graph", refuse)
    graph = collection_graph(index, k=3)
    assert "kept in memory" in caplog.text and not (tmp_path / "index" / GRAPH_FILE).exists()
    assert collection_graph(index, k=3) is graph


@pytest.mark.parametrize(
    "settings", [{"k": 0}, {"alpha": 1.0}, {"alpha": -0.1}, {"gamma": float("nan")}, {"iterations": 0}, {"depth": 5}]
)
def test_diffusion_refuses_nonsense_settings(settings: dict) -> None:
    with pytest.raises(SettingsError):
        Diffusion(**settings)


def test_diffusion_of_a_one_row_collection_keeps_it(tmp_path: Path) -> None:
    index = stored_index(tmp_path / "one", np.ones((1, 4)))
    assert rank(index, np.ones(4), Metric.COSINE, None, rerankers=[Diffusion()]).rows.tolist() == [0]


def test_diffusion_benchmark_quick_run(tmp_path: Path) -> None:
    run_bench("diffusion.py", "--quick", "--out", str(tmp_path))
    report = json.loads((tmp_path / "diffusion.json").read_text())
    assert report["cpu"] and report["rows"] and report["large"]
    assert all(row["ms"] > 0 for row in report["rows"] + report["large"] if "bytes" not in row)
    assert [row["bytes"] for row in report["rows"] if "bytes" in row][0] > 0
    checked = report["cross_check"]
    assert checked["edges_ours"] > 0 and checked["edges_differing"] <= 0.001 * checked["edges_theirs"]
    assert checked["same_top_10"] >= checked["queries"] - 1
