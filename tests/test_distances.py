"""Tests for cbir.distances: the exact scan's distances and the k nearest rows, by hand and against a
full sort."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.distances import Metric, exact_distances, nearest

ROWS = np.array([[3.0, 4.0], [0.0, 2.0], [-1.0, 0.0]], dtype=np.float32)


def test_cosine_distance_does_not_depend_on_the_lengths_of_the_vectors():
    # With the query (0.6, 0.8): cos (3, 4) = 5 / 5 = 1, cos (0, 2) = 1.6 / 2 = 0.8,
    # cos (-1, 0) = -0.6; angular distance is sqrt(2 - 2 cos). Vectors shorter than 1 (a product
    # of lengths down to 0.01) must give the same as long ones.
    expected = np.sqrt([2 - 2 * 1.0, 2 - 2 * 0.8, 2 - 2 * -0.6])
    for scale in (1.0, 0.1):
        for query in ([0.6, 0.8], [0.06, 0.08], [30.0, 40.0]):
            got = exact_distances(ROWS * scale, np.array(query), Metric.COSINE)
            assert got == pytest.approx(expected, abs=1e-6)


def test_a_zero_query_is_at_the_same_cosine_distance_from_every_row_not_nan():
    got = exact_distances(ROWS, np.zeros(2), Metric.COSINE)
    assert got == pytest.approx(np.full(3, np.sqrt(2.0)))


def test_a_query_given_as_a_batch_of_one_is_the_same_query():
    query = np.array([[1.0, 1.0]], dtype=np.float32)  # what describing one image returns
    for metric in Metric:
        assert exact_distances(ROWS, query, metric) == pytest.approx(exact_distances(ROWS, query[0], metric))
    # Euclidean by hand: |(3,4)-(1,1)| = sqrt(13), |(0,2)-(1,1)| = sqrt(2), |(-1,0)-(1,1)| = sqrt(5)
    assert exact_distances(ROWS, query, Metric.EUCLIDEAN) == pytest.approx(np.sqrt([13.0, 2.0, 5.0]))


def test_a_float64_query_is_scanned_in_the_rows_float32():
    # A float64 query would make numpy copy the whole float32 matrix to float64 for every search
    # (twice the index's memory, per query); the scan converts the query instead.
    for metric in Metric:
        assert exact_distances(ROWS, np.array([1.0, 1.0], dtype=np.float64), metric).dtype == np.float32


@pytest.mark.parametrize("k", [1, 2, 10, 999, 1000, 1001])
def test_nearest_returns_the_k_smallest_of_many_in_order(k):
    # Large enough that numpy's partition does not simply sort; repeated values test the ties.
    rng = np.random.default_rng(7)
    distances = rng.integers(0, 300, size=1000).astype(np.float32)
    expected = np.lexsort((np.arange(1000), distances))[:k]
    found = nearest(distances, k)
    assert found.rows.tolist() == expected.tolist()
    assert found.distances.tolist() == distances[expected].tolist()


def test_nearest_reports_the_callers_row_ids():
    found = nearest(np.array([0.5, 0.1, 0.3]), 2, rows=[40, 10, 30])
    assert found.rows.tolist() == [10, 30]
    assert found.distances.tolist() == [0.1, 0.3]
