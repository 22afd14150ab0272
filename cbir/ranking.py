"""The one ranking function: a query descriptor -> the rows of an index, nearest first.

The search engine and the evaluation both call `rank`, so whatever changes a ranking (the store,
the exact scan, a re-ranker such as query expansion) changes it for both alike. A re-ranker takes
the first ranking and returns a new one; they run in the order given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from cbir.distances import Metric, Neighbours
from cbir.index import LoadedIndex

# Descriptor floats up to which a full numpy scan is the fastest way to recall@100 >= 0.95 on
# 2 cores (bench/results/search.md, 100,000 rows: exact 21 ms vs Annoy 39 ms at 2048-d, 9.8 vs
# 17 ms at 512-d, 6.0 vs 7.3 ms at 256-d). Above it the nearest k of Annoy's 200 candidates take
# about 3 ms at 1,000,000 x 512 where a scan takes 100 ms (bench/results/search-1m-default.md).
EXACT_SEARCH_LIMIT = 100_000 * 2048


@dataclass(frozen=True)
class Ranking:
    rows: np.ndarray  # row ids of the index, nearest first
    distances: np.ndarray  # in the metric's units (angular distance for cosine)
    exact: bool  # whether the exact scan made it (before any re-ranking)


class Reranker(Protocol):
    def __call__(self, index: LoadedIndex, query: np.ndarray, metric: Metric, ranking: Ranking) -> Ranking: ...


def prefers_exact(index: LoadedIndex) -> bool:
    """Whether scanning every descriptor is faster than the index's store at the same recall."""
    return len(index) * index.manifest.dim <= EXACT_SEARCH_LIMIT


def rank(
    index: LoadedIndex,
    query: np.ndarray,
    metric: Metric | str,
    k: int | None,
    *,
    exact: bool | None = None,
    candidates: int | None = None,
    rerankers: Sequence[Reranker] = (),
) -> Ranking:
    """The k nearest rows of `index` to `query` (k=None: the whole collection, by exact scan).

    exact=None picks the exact scan up to EXACT_SEARCH_LIMIT descriptor floats and the index's
    store above; True / False force either.
    """
    metric = Metric.parse(metric)
    if k is not None and k < 1:
        raise ValueError("k must be at least 1")
    if exact is None:
        exact = k is None or prefers_exact(index)
    found: Neighbours = index.search(query, metric, k, exact=exact, candidates=candidates)
    ranking = Ranking(found.rows, found.distances, exact or k is None or index.store_is_exact)
    for reranker in rerankers:
        ranking = reranker(index, query, metric, ranking)
    return ranking
