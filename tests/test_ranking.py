"""Tests for cbir.ranking beside tests/test_reranking.py: which search a query expansion repeats,
DBA's neighbours checked against a plain reference, and when `rank` prefers the exact scan."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest
from pytest import approx

from cbir.distances import Metric, Neighbours, exact_distances, nearest
from cbir.ranking import (
    EXACT_SEARCH_LIMIT,
    AlphaQueryExpansion,
    Ranking,
    database_side_augmentation,
    expand_query,
    prefers_exact,
    rank,
)


def unit(*vector: float) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    return vector / np.linalg.norm(vector)


@dataclass
class RecordingIndex:
    """What a re-ranker reads of an index (its rows, its size, its search), with every search kept."""

    descriptors: np.ndarray
    searches: list[tuple[int | None, bool]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.descriptors)

    def search(self, query: np.ndarray, metric: Metric, k: int | None, *, exact: bool) -> Neighbours:
        self.searches.append((k, exact))
        return nearest(exact_distances(self.descriptors, query, metric), k)


ROWS = np.array([unit(1, 0.1, 0), unit(1, 0.5, 0), unit(0, 1, 0), unit(0, 0, 1)], dtype=np.float32)


@pytest.mark.parametrize("first_search_exact", [True, False])
def test_query_expansion_searches_again_at_the_first_rankings_depth_by_the_same_path(first_search_exact):
    index = RecordingIndex(ROWS)
    first = Ranking(np.array([0, 1]), np.array([0.1, 0.4]), first_search_exact)
    again = AlphaQueryExpansion(n=2)(index, unit(1, 0, 0), Metric.COSINE, first)
    assert index.searches == [(2, first_search_exact)]  # depth 2 of 4 rows: the store, not a full scan
    assert len(again.rows) == 2 and again.exact is first_search_exact


def test_query_expansion_of_a_ranking_of_every_row_scans_them_all():
    index = RecordingIndex(ROWS)
    every_row = Ranking(np.arange(4), np.zeros(4), False)
    AlphaQueryExpansion(n=2)(index, unit(1, 0, 0), Metric.COSINE, every_row)
    assert index.searches == [(None, False)]  # k = None: every row, by the exact scan


def test_query_expansion_by_its_single_nearest_result():
    # n = 1 is a valid setting. Query (1, 0); rows at angles 16.7, 42.0 and -38.7 degrees, so the
    # first ranking is 0, 2, 1. Expanded by row 0 alone (weight cos 16.7 = 0.958, alpha = 1) the
    # query turns to 8.2 degrees, now nearer row 1 (33.8 degrees away) than row 2 (46.9).
    rows = np.array([unit(1, 0.3), unit(1, 0.9), unit(1, -0.8)], dtype=np.float32)
    first = Ranking(np.array([0, 2, 1]), np.zeros(3), True)
    again = AlphaQueryExpansion(n=1, alpha=1)(RecordingIndex(rows), np.array([1.0, 0.0]), Metric.COSINE, first)
    expanded_query = unit(1, 0) + float(unit(1, 0.3) @ unit(1, 0)) * unit(1, 0.3)
    assert again.rows.tolist() == [0, 1, 2]
    assert again.distances == approx(np.sort(exact_distances(rows, expanded_query, Metric.COSINE)), abs=1e-6)


def test_query_expansion_of_an_empty_ranking_is_that_ranking():
    empty = Ranking(np.array([], dtype=np.int64), np.array([]), True)
    assert AlphaQueryExpansion(n=3)(RecordingIndex(ROWS), unit(1, 0, 0), Metric.COSINE, empty) is empty


def test_a_query_given_as_a_batch_of_one_expands_the_same():
    neighbours = np.array([[3.0, 3.0], [0.0, 5.0]])
    for metric in Metric:
        assert expand_query(np.array([[2.0, 0.0]]), neighbours, metric, 2) == approx(
            expand_query(np.array([2.0, 0.0]), neighbours, metric, 2)
        )


def reference_dba(rows: np.ndarray, metric: Metric, k: int, alpha: float) -> np.ndarray:
    """DBA written plainly: each row's k nearest other rows by the metric's own distance."""
    rows = np.asarray(rows, dtype=np.float64)
    result = []
    for i, row in enumerate(rows):
        distances = exact_distances(rows, row, metric).astype(np.float64)
        distances[i] = np.inf
        neighbours = rows[np.argsort(distances, kind="stable")[:k]]
        weights = np.maximum(neighbours @ row / np.linalg.norm(neighbours, axis=1) / np.linalg.norm(row), 0) ** alpha
        if metric is Metric.COSINE:
            combined = row / np.linalg.norm(row) + weights @ (neighbours / np.linalg.norm(neighbours, axis=1)[:, None])
            result.append(combined / np.linalg.norm(combined))
        else:
            result.append((row + weights @ neighbours) / (1 + weights.sum()))
    return np.array(result)


@pytest.mark.parametrize("metric", list(Metric))
@pytest.mark.parametrize(("n_rows", "k"), [(30, 1), (30, 3), (300, 1)])
def test_dba_neighbours_are_the_metrics_own_on_rows_of_different_lengths(metric, n_rows, k):
    # Lengths from 0.1 to 10: the nearest by cosine, by Euclidean distance and by dot product differ.
    # 300 rows: enough that numpy's partition leaves the rest of a row unsorted.
    rng = np.random.default_rng(11)
    rows = rng.normal(size=(n_rows, 4)) * rng.uniform(0.1, 10, size=(n_rows, 1))
    assert database_side_augmentation(rows, metric, k=k, alpha=2) == approx(
        reference_dba(rows, metric, k, 2), abs=1e-5
    )


def test_dba_by_cosine_picks_the_row_pointing_the_same_way_not_the_longest():
    # With a = (1, 0): b = (10, 1) has cos 0.995, c = (0.1, 0.1) and d = (30, 30) cos 0.707
    # (d has the largest dot product, c the smallest length): a's one neighbour is b.
    rows = np.array([[1.0, 0.0], [10.0, 1.0], [0.1, 0.1], [30.0, 30.0]])
    cos_ab = 10 / np.sqrt(101)
    augmented = database_side_augmentation(rows, Metric.COSINE, k=1, alpha=1)
    assert augmented[0] == approx(unit(*(np.array([1.0, 0.0]) + cos_ab * unit(10, 1))), abs=1e-6)


def test_dba_with_more_neighbours_asked_than_other_rows_uses_them_all():
    # Three rows, k = 10: each row is combined with both others. Euclidean, alpha = 1, row 0 = (1, 0):
    # weights cos((1,0),(1,1)) = 0.707 and cos((1,0),(0,2)) = 0 -> ((1,0) + 0.707 (1,1)) / 1.707.
    rows = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    w = 1 / np.sqrt(2)
    augmented = database_side_augmentation(rows, Metric.EUCLIDEAN, k=10, alpha=1)
    assert augmented[0] == approx((rows[0] + w * rows[1]) / (1 + w), abs=1e-6)
    # Row 1 = (1, 1): both others at cos 0.707.
    assert augmented[1] == approx((rows[1] + w * rows[0] + w * rows[2]) / (1 + 2 * w), abs=1e-6)


def test_dba_rows_are_float32_like_every_index():
    augmented = database_side_augmentation(np.eye(3, dtype=np.float64), Metric.COSINE, k=1)
    assert augmented.dtype == np.float32


class SizedIndex(SimpleNamespace):
    def __len__(self) -> int:
        return self.rows


def sized_index(rows: int, dim: int, store: str) -> SizedIndex:
    return SizedIndex(rows=rows, manifest=SimpleNamespace(dim=dim, store=SimpleNamespace(kind=store)))


def test_the_exact_scan_is_preferred_up_to_the_limit_of_descriptor_floats_inclusive():
    assert prefers_exact(sized_index(EXACT_SEARCH_LIMIT // 512, 512, "annoy"))
    assert not prefers_exact(sized_index(EXACT_SEARCH_LIMIT // 512 + 1, 512, "annoy"))


def test_a_server_store_is_asked_however_small_the_collection():
    assert not prefers_exact(sized_index(10, 512, "milvus"))


@dataclass
class SearchedIndex(RecordingIndex):
    """An index whose store is approximate, recording the candidates each search is given."""

    candidates: list[int | None] = field(default_factory=list)
    store_is_exact: bool = False

    def search(self, query, metric, k, *, exact, candidates=None):
        self.candidates.append(candidates)
        return super().search(query, metric, k, exact=exact)


def test_rank_hands_the_candidates_asked_for_to_the_index():
    index = SearchedIndex(ROWS)
    rank(index, unit(1, 0, 0), Metric.COSINE, 2, exact=False, candidates=500)
    assert index.candidates == [500]


def test_rank_cut_to_k_after_a_reranker_keeps_whether_the_scan_was_exact():
    index = SearchedIndex(ROWS)
    ranking = rank(index, unit(1, 0, 0), Metric.COSINE, 1, exact=True, rerankers=[AlphaQueryExpansion(n=3)])
    assert index.searches[0] == (3, True)  # the first search reads expansion's 3
    assert len(ranking.rows) == 1 and ranking.exact is True


def test_rank_takes_a_plain_function_as_a_reranker():
    # The Reranker protocol asks for a call only; `depth` is optional.
    def reverse(index, query, metric, ranking):
        return Ranking(ranking.rows[::-1], ranking.distances[::-1], ranking.exact)

    ranking = rank(SearchedIndex(ROWS), unit(1, 0, 0), Metric.COSINE, 2, exact=True, rerankers=[reverse])
    assert ranking.rows.tolist() == [1, 0]


def test_rank_refuses_fewer_than_one_result():
    with pytest.raises(ValueError) as raised:
        rank(SearchedIndex(ROWS), unit(1, 0, 0), Metric.COSINE, 0)
    assert str(raised.value) == "k must be at least 1"
