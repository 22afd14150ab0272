"""How far two float32 computations of the same distance may differ, on any CPU.

A distance near zero cannot be compared with an absolute tolerance: d = sqrt(d²) turns one rounding
of d² (about 1e-7 for a cosine near 1) into about 3e-4 of d, and which way d² rounds depends on the
summation order a CPU's BLAS picks (the query's own row came out 0.0 from Annoy and 3.45e-4 from the
exact scan on one machine, both right). So the tests compare squared distances, within a bound
derived from float32 arithmetic rather than measured on one machine:

- A float32 dot product of length n is within gamma(n) * |x| * |y| of the true one, whatever the
  summation order, with or without fused multiply-add (Higham, Accuracy and Stability of Numerical
  Algorithms, 2nd ed., section 3.1); gamma(n) = n u / (1 - n u), u = 2**-24.
- Cosine (d² = 2 - 2 cos, the angular distance): cos = x.q / (|x| |q|) from three such products
  (the norms' relative errors halve under the square root) and a few more roundings is within
  2 gamma(n) + 4u of the true cosine; 2 - 2 cos then is within 4 gamma(n) + 12u, and squaring the
  reported d (rounded once by its sqrt) adds at most 8u (d² <= 4).
- Euclidean: d² = |x|² - 2 x.q + |q|² (the exact scan) or the sum of (x_i - q_i)² (Annoy, hnswlib):
  either is within (gamma(n + 2) + 2u) (|x| + |q|)² of the true d², and squaring the reported d adds
  at most 2u (|x| + |q|)².
"""

from __future__ import annotations

import numpy as np

from cbir.distances import Metric

UNIT_ROUNDOFF = 2.0**-24  # float32


def gamma(n: int) -> float:
    return n * UNIT_ROUNDOFF / (1 - n * UNIT_ROUNDOFF)


def squared_distance_error(metric: Metric | str, dim: int, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """The most one float32 computation of each row's squared distance to `query` can be off by."""
    u = UNIT_ROUNDOFF
    if Metric.parse(metric) is Metric.COSINE:
        return np.full(len(rows), 4 * gamma(dim) + 20 * u)
    rows, query = np.asarray(rows, np.float64), np.asarray(query, np.float64)
    scale = np.square(np.linalg.norm(rows, axis=1) + np.linalg.norm(query))
    return (gamma(dim + 2) + 4 * u) * scale


def assert_float32_distances_agree(found, expected, metric: Metric | str, rows: np.ndarray, query: np.ndarray,
                                   computations: int = 2) -> None:  # fmt: skip
    """`found` and `expected` are the same distances computed in float32 (`computations` = 2: both
    sides rounded; 1: `expected` is exact, e.g. by hand): their squares agree within the bound."""
    rows = np.atleast_2d(rows)
    found, expected = np.asarray(found, np.float64), np.asarray(expected, np.float64)
    gap = np.abs(np.square(found) - np.square(expected))
    bound = computations * squared_distance_error(metric, rows.shape[1], rows, query)
    assert np.all(gap <= bound), f"squared distances differ by {gap.tolist()}, more than float32 allows ({bound.tolist()})"
