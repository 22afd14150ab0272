"""The one ranking function: a query descriptor -> the rows of an index, nearest first.

The search engine and the evaluation both call `rank`, so whatever changes a ranking (the store,
the exact scan, a re-ranker such as query expansion) changes it for both alike. A re-ranker takes
the first ranking and returns a new one; they run in the order given. Spatial verification
(cbir.verification.SpatialVerification, for indexes built with local features) is one too.

Two training-free refinements from the literature live here: α-weighted query expansion
(`AlphaQueryExpansion`, a re-ranker) and database-side augmentation (`database_side_augmentation`,
descriptors a build stores as a variant of an index). Both replace a vector by the similarity^α
weighted combination of itself and its nearest neighbours.
Diffusion over the collection's k-NN graph is a third, a re-ranker in cbir/diffusion.py (which
imports this module, not the other way round).

How the metric enters: the weights are always cosine similarities, clipped at 0 (the power α is
meant for a similarity in [0, 1], and a Euclidean distance has no such scale). Under cosine the
vectors are L2-normalised, summed and re-normalised, as the definitions say. Under Euclidean the
raw vectors are averaged with the same weights (sum / total weight) instead: re-normalising would
move the query onto the unit sphere, far from unnormalised database rows, where Euclidean
distances no longer compare like with like; the weighted mean stays at the rows' own scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

from cbir.distances import Metric, Neighbours, l2_normalise
from cbir.errors import SettingsError
from cbir.index import LoadedIndex
from cbir.stores import get_store_kind

# Descriptor floats up to which a full numpy scan is the fastest way to recall@100 >= 0.95 on two
# cores; above it an approximate store is faster (measured: docs/performance.md, "Store by
# collection size").
EXACT_SEARCH_LIMIT = 100_000 * 2048


@dataclass(frozen=True)
class Ranking:
    rows: np.ndarray  # row ids of the index, nearest first
    distances: np.ndarray  # in the metric's units (angular distance for cosine)
    exact: bool  # whether the exact scan made it (before any re-ranking)
    # Spatial verification's inlier count per row, in the same order (-1: not verified); None when
    # no verification ran (cbir.verification).
    inliers: np.ndarray | None = None
    # The first `verified` rows passed spatial verification: they lead, most inliers first.
    verified: int = 0


class Reranker(Protocol):
    def __call__(self, index: LoadedIndex, query: np.ndarray, metric: Metric, ranking: Ranking) -> Ranking: ...


# α = 3 as Radenović, Tolias & Chum, "Fine-tuning CNN image retrieval with no human annotation"
# (TPAMI 2018), who introduced αQE; with α = 3 a neighbour at cosine 0.5 weighs 1/8, so the result
# depends little on n. n = 50 is our recollection of their setting, not checked against the paper.
QUERY_EXPANSION_ALPHA = 3.0
QUERY_EXPANSION_NEIGHBOURS = 50
# DBA's k is not taken from a paper: a small neighbourhood, to tune on held-out queries.
DBA_NEIGHBOURS = 10
_DBA_BLOCK_FLOATS = 32 * 1024 * 1024  # distances computed per block of rows: about 128 MB of float32


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    # Equivalent mutants: float64 here changes a weight only in its last float32 bits.
    return l2_normalise(np.asarray(vectors, dtype=np.float32))  # pragma: no mutate


def similarity_weights(anchor: np.ndarray, neighbours: np.ndarray, alpha: float) -> np.ndarray:
    """max(cos(anchor, neighbour), 0) ** alpha for each neighbour row (module docstring: why cosine)."""
    cosine = _unit_rows(neighbours) @ _unit_rows(anchor)
    return np.maximum(cosine, 0.0) ** alpha


def combine(anchor: np.ndarray, neighbours: np.ndarray, weights: np.ndarray, metric: Metric) -> np.ndarray:
    """The anchor (weight 1) plus its weighted neighbours: re-normalised sum of unit vectors under
    cosine, weighted mean of the raw vectors under Euclidean (module docstring)."""
    if Metric.parse(metric) is Metric.COSINE:
        return _unit_rows(_unit_rows(anchor) + weights @ _unit_rows(neighbours))
    # Equivalent mutants: a float64 anchor gives a float64 mean, which every store converts back.
    anchor = np.asarray(anchor, dtype=np.float32)  # pragma: no mutate
    return (anchor + weights @ np.asarray(neighbours, dtype=np.float32)) / (1.0 + weights.sum())


def expand_query(query: np.ndarray, neighbours: np.ndarray, metric: Metric | str, alpha: float) -> np.ndarray:
    """αQE's new query from the query and the descriptors of its top results."""
    query = np.asarray(query, dtype=np.float32).reshape(-1)
    neighbours = np.asarray(neighbours, dtype=np.float32).reshape(-1, len(query))
    return combine(query, neighbours, similarity_weights(query, neighbours, alpha), Metric.parse(metric))


@dataclass(frozen=True)
class AlphaQueryExpansion:
    """α-weighted query expansion (αQE) as a re-ranker: the query and its top `n` results, weighted
    by similarity^α, make a new query, which is searched again at the first ranking's depth.

    The re-search uses the exact scan if the first ranking did, the index's store otherwise.
    After spatial verification, only the verified rows expand the query (up to `n` of them; none
    verified, no expansion), as Chum et al. ("Total recall", ICCV 2007) expand with verified results
    only: an unverified neighbour of a query whose global vector knows little is mostly another
    scene. The verified rows keep their lead (`rank`).
    """

    n: int = QUERY_EXPANSION_NEIGHBOURS
    alpha: float = QUERY_EXPANSION_ALPHA

    def __post_init__(self) -> None:
        if self.n < 1:
            raise SettingsError(f"query expansion needs at least one neighbour, got n={self.n}")
        if not math.isfinite(self.alpha) or self.alpha < 0:
            raise SettingsError(f"query expansion's alpha must be a number of at least 0, got {self.alpha}")

    @property
    def label(self) -> str:
        return f"αQE (n = {self.n}, α = {self.alpha:g})"

    @property
    def depth(self) -> int:
        """Results the first search must return for this re-ranker (`rank` asks for at least these)."""
        return self.n

    def __call__(self, index: LoadedIndex, query: np.ndarray, metric: Metric, ranking: Ranking) -> Ranking:
        expanding = self.n if ranking.inliers is None else min(self.n, ranking.verified)
        top = np.asarray(ranking.rows[:expanding])
        if len(top) == 0:
            return ranking
        expanded = expand_query(query, np.asarray(index.descriptors[np.sort(top)]), metric, self.alpha)
        depth = len(ranking.rows)
        k = None if depth >= len(index) else depth
        found = index.search(expanded, Metric.parse(metric), k, exact=ranking.exact)
        return Ranking(found.rows, found.distances, ranking.exact)


def database_side_augmentation(
    descriptors: np.ndarray,
    metric: Metric | str,
    k: int = DBA_NEIGHBOURS,
    alpha: float = QUERY_EXPANSION_ALPHA,
) -> np.ndarray:
    """DBA: every row replaced by the combination of itself and its `k` nearest other rows (under
    `metric`), weighted by similarity^α; a build stores the result as a variant of the index.

    Exact neighbours, computed a block of rows at a time: O(rows^2 x dim), seconds at Oxford5k size;
    a million rows would need neighbours from an approximate store instead.
    """
    metric = Metric.parse(metric)
    descriptors = np.asarray(descriptors, dtype=np.float32)
    n_rows = len(descriptors)
    k = min(k, n_rows - 1)
    if k < 1:
        return descriptors.copy()
    # Cosine neighbours are the largest products of unit rows; Euclidean ones the smallest
    # |x|^2 - 2 x.y (|y|^2, the same along a row, does not change the order).
    searched = _unit_rows(descriptors) if metric is Metric.COSINE else descriptors
    squared = np.einsum(
        "ij,ij->i",  # pragma: no mutate -- einsum reads upper-case subscripts the same
        descriptors,
        descriptors,
    )
    augmented = np.empty_like(descriptors)
    # Equivalent mutants: the block size changes the memory used, never the result.
    block = max(1, _DBA_BLOCK_FLOATS // max(n_rows, 1))  # pragma: no mutate
    for start in range(0, n_rows, block):
        stop = min(start + block, n_rows)
        products = searched[start:stop] @ searched.T
        cost = -products if metric is Metric.COSINE else squared[None, :] - 2.0 * products
        cost[np.arange(stop - start), np.arange(start, stop)] = np.inf  # a row is not its own neighbour
        nearest_rows = np.argpartition(cost, k - 1, axis=1)[:, :k]
        for offset, neighbour_rows in enumerate(nearest_rows):
            row = descriptors[start + offset]
            neighbours = descriptors[neighbour_rows]
            augmented[start + offset] = combine(row, neighbours, similarity_weights(row, neighbours, alpha), metric)
    return augmented


def prefers_exact(index: LoadedIndex) -> bool:
    """Whether scanning every descriptor is faster than the index's store at the same recall (a
    server store such as Milvus is asked anyway: it is what the user chose to search with)."""
    if get_store_kind(index.manifest.store.kind).serves_every_search:
        return False
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
    # A re-ranker may read more results than are asked for (query expansion reads its top n).
    depth = None if k is None else min(max([k] + [getattr(r, "depth", 0) for r in rerankers]), len(index))
    found: Neighbours = index.search(query, metric, depth, exact=exact, candidates=candidates)
    ranking = Ranking(found.rows, found.distances, exact or k is None or index.store_is_exact)
    for reranker in rerankers:
        ranking = keep_verified_lead(ranking, reranker(index, query, metric, ranking))
    if k is not None and len(ranking.rows) > k:
        inliers = None if ranking.inliers is None else ranking.inliers[:k]
        ranking = Ranking(ranking.rows[:k], ranking.distances[:k], ranking.exact, inliers, min(ranking.verified, k))
    return ranking


def keep_verified_lead(before: Ranking, after: Ranking) -> Ranking:
    """`after` (a re-ranker's output) with the rows spatial verification proved in `before` put
    back ahead, in their order: geometry is stronger evidence than any re-ordering of global
    vectors (αQE, diffusion), which keep the order of the rest. Each row keeps its inlier count."""
    if before.verified == 0 or after.verified > 0:
        return after
    lead = np.asarray(before.rows[: before.verified])
    rest = ~np.isin(after.rows, lead)
    rows = np.concatenate([lead, np.asarray(after.rows)[rest]])
    distances = np.concatenate([np.asarray(before.distances[: before.verified]), np.asarray(after.distances)[rest]])
    counted = dict(zip(np.asarray(before.rows).tolist(), np.asarray(before.inliers).tolist()))
    inliers = np.array([counted.get(row, -1) for row in rows.tolist()], dtype=np.int64)
    return Ranking(rows, distances, after.exact, inliers, before.verified)
