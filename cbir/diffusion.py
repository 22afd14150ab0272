"""Diffusion over the collection's k-NN graph: Iscen, Tolias, Avrithis, Furon & Chum, "Efficient
diffusion on region manifolds" (CVPR 2017), the global-descriptor version, as a `rank` re-ranker.

A query reaches the views of its landmark that resemble it only through other views: the ranking
scores f solve (I - αS) f = y, where S is the symmetrically normalised affinity of the collection's
mutual k-NN graph and y holds the query's similarities to its nearest rows.

The graph (built once per index, `build_graph`):
- each row's k nearest other rows by cosine similarity (exact, a block of rows at a time);
- an edge i-j is kept only when each is among the other's k nearest (the paper's mutual graph), with
  weight max(cos, 0)^γ, γ = 3; a row is not its own neighbour;
- S = D^-1/2 W D^-1/2 (D: the weights' row sums; a row with no mutual neighbour has a zero row).
It is kept as compressed rows: where each row's edges start, and the edges' neighbour row ids and
S's weights, so S f is one gather and one sum per row (no scipy: it is not a requirement of the
project).

Stored beside the index as `diffusion_graph.npz` (plain arrays, read with allow_pickle=False,
written atomically) with the sha256 of the index's descriptors.npy, k and γ: a graph whose key
differs from the index's (the rows changed, or another k or γ is asked for) is built again and
replaces the file. An index folder that cannot be written to (a read-only bundle) keeps the graph in
memory only. Within a process the graph is also kept in memory, keyed by the descriptors file's
(size, modification time, inode), so the sha256 is read once per process and index.

At query time (`Diffusion`, a re-ranker): y is max(cos(query, row), 0)^γ on the first `query_k`
rows of the ranking it is given (after αQE: the expanded query's nearest rows) and 0 elsewhere;
conjugate gradient from f = 0 runs at most `iterations` steps, stopping early when the residual falls
below `tolerance` x |y|; the ranking's rows are re-ordered by f, highest first (rows f leaves at
zero keep their order behind the rest), each with the distance the ranking gave it (after αQE:
to the expanded query). docs/evaluation.md, "Diffusion", compares all this with the authors' code.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from cbir import atomic
from cbir.digests import sha256_file
from cbir.distances import Metric, l2_normalise
from cbir.errors import SettingsError
from cbir.index import LoadedIndex
from cbir.layout import DESCRIPTORS
from cbir.ranking import Ranking

logger = logging.getLogger(__name__)

GRAPH_FILE = "diffusion_graph.npz"
GRAPH_FORMAT = 1
# The paper's settings for global descriptors (and the authors' run_test.m): graph k = 50, query
# k = 10, γ = 3, α = 0.99, 20 conjugate gradient steps, tolerance 1e-6. Their k-NN lists include the
# row itself, so their k = 50 is our k = 49 other rows; we count other rows.
GRAPH_NEIGHBOURS = 50
QUERY_NEIGHBOURS = 10
SIMILARITY_POWER = 3.0
DIFFUSION_ALPHA = 0.99
CG_ITERATIONS = 20
CG_TOLERANCE = 1e-6
# Rows re-ordered by default when `rank` is asked for the top k (the whole ranking when k is None).
DIFFUSION_DEPTH = 100
_BLOCK_FLOATS = 32 * 1024 * 1024  # similarities computed per block of rows: about 128 MB of float32
_GRAPHS_KEPT = 4  # graphs kept in memory per process (one per index searched with diffusion)


@dataclass(frozen=True, eq=False)
class Graph:
    """S of the paper as compressed rows: row i's entries are S[i, neighbours[e]] = weights[e] for e
    in row_starts[i] : row_starts[i + 1]."""

    row_starts: np.ndarray  # (rows + 1,) int64
    neighbours: np.ndarray  # (edges,) int32
    weights: np.ndarray  # (edges,) float64 (float32 would need a cast in every product)
    k: int
    gamma: float

    def __len__(self) -> int:
        return len(self.row_starts) - 1

    @cached_property
    def _rows_with_edges(self) -> np.ndarray:
        return np.flatnonzero(np.diff(self.row_starts) > 0)

    def multiply(self, vector: np.ndarray) -> np.ndarray:
        """S @ vector."""
        product = np.zeros(len(self))
        if len(self.neighbours):
            # reduceat sums from each given start to the next one: rows without edges are left out
            # (they would get the next row's first value), their product stays 0.
            starts = self.row_starts[self._rows_with_edges]
            product[self._rows_with_edges] = np.add.reduceat(self.weights * vector[self.neighbours], starts)
        return product

    def dense(self) -> np.ndarray:
        """S as a dense matrix (tests and small checks only)."""
        matrix = np.zeros((len(self), len(self)))
        sources = np.repeat(np.arange(len(self)), np.diff(self.row_starts))
        np.add.at(matrix, (sources, self.neighbours), self.weights)
        return matrix


def build_graph(descriptors: np.ndarray, k: int = GRAPH_NEIGHBOURS, gamma: float = SIMILARITY_POWER) -> Graph:
    """The normalised mutual k-NN graph of the rows (module docstring). O(rows^2 x dim) for the
    exact neighbours, a block of rows at a time."""
    unit = l2_normalise(np.asarray(descriptors, dtype=np.float32))
    n_rows = len(unit)
    k = min(k, n_rows - 1)
    if k < 1:
        return Graph(np.zeros(n_rows + 1, dtype=np.int64), np.zeros(0, np.int32), np.zeros(0), k, gamma)
    nearest = np.empty((n_rows, k), dtype=np.int32)
    similarity = np.empty((n_rows, k), dtype=np.float32)
    block = max(1, _BLOCK_FLOATS // n_rows)
    for start in range(0, n_rows, block):
        stop = min(start + block, n_rows)
        products = unit[start:stop] @ unit.T
        products[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # a row is not its own neighbour
        top = np.argpartition(-products, k - 1, axis=1)[:, :k]
        nearest[start:stop] = top
        similarity[start:stop] = np.take_along_axis(products, top, axis=1)
    return graph_from_neighbours(nearest, similarity, gamma)


def graph_from_neighbours(nearest: np.ndarray, similarity: np.ndarray, gamma: float = SIMILARITY_POWER) -> Graph:
    """The graph from each row's k nearest other rows (rows x k ids) and their cosine similarities:
    mutual edges only, weights max(cos, 0)^γ, then D^-1/2 W D^-1/2."""
    nearest = np.asarray(nearest, dtype=np.int32)
    n_rows, k = nearest.shape
    # Mutual: keep i -> j only if j -> i is also listed. Pairs coded as i * rows + j, looked up sorted.
    sources = np.repeat(np.arange(n_rows, dtype=np.int64), k)
    targets = nearest.ravel().astype(np.int64)
    codes = np.sort(sources * n_rows + targets)
    reverse = targets * n_rows + sources
    found = np.minimum(np.searchsorted(codes, reverse), len(codes) - 1)
    mutual = (codes[found] == reverse).reshape(n_rows, k)
    affinity = np.where(mutual, np.maximum(similarity, 0.0) ** gamma, 0.0).astype(np.float64)
    degree = affinity.sum(axis=1)
    scale = np.zeros(n_rows)
    np.divide(1.0, np.sqrt(degree), out=scale, where=degree > 0)
    normalised = affinity * scale[:, None] * scale[nearest]
    row_starts = np.concatenate([[0], np.cumsum(mutual.sum(axis=1))]).astype(np.int64)
    return Graph(row_starts, nearest[mutual], normalised[mutual], k, gamma)


def diffuse(graph: Graph, y: np.ndarray, alpha: float = DIFFUSION_ALPHA, iterations: int = CG_ITERATIONS,
            tolerance: float = CG_TOLERANCE) -> np.ndarray:  # fmt: skip
    """f with (I - αS) f = y by conjugate gradient from f = 0: at most `iterations` steps, fewer once
    |residual| <= tolerance x |y|. The matrix is symmetric positive definite for 0 <= α < 1."""
    y = np.asarray(y, dtype=np.float64)
    solution = np.zeros_like(y)
    residual = y.copy()
    direction = residual.copy()
    residual_norm = _dot(residual, residual)
    stop = tolerance**2 * _dot(y, y)
    for _ in range(iterations):
        if residual_norm <= stop:
            break
        product = direction - alpha * graph.multiply(direction)
        step = residual_norm / _dot(direction, product)
        solution += step * direction
        residual -= step * product
        new_norm = _dot(residual, residual)
        direction = residual + (new_norm / residual_norm) * direction
        residual_norm = new_norm
    return solution


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    # einsum, not `a @ b`: a vector dot product through threaded BLAS costs far more than its
    # arithmetic when other processes hold the cores (docs/evaluation.md, "Diffusion").
    return float(np.einsum("i,i->", a, b))


def query_vector(n_rows: int, rows: np.ndarray, similarities: np.ndarray, gamma: float) -> np.ndarray:
    """The paper's y: max(similarity, 0)^γ on the query's nearest rows, 0 elsewhere."""
    y = np.zeros(n_rows)
    y[np.asarray(rows, dtype=np.int64)] = np.maximum(np.asarray(similarities, dtype=np.float64), 0.0) ** gamma
    return y


# --- the graph file -------------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphKey:
    """What a stored graph was built from and with."""

    descriptors_sha256: str
    k: int
    gamma: float


def save_graph(path: Path, graph: Graph, key: GraphKey) -> None:
    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:
            np.savez(handle, format=np.int64(GRAPH_FORMAT), row_starts=graph.row_starts, neighbours=graph.neighbours,
                     weights=graph.weights, k=np.int64(key.k), gamma=np.float64(key.gamma),
                     descriptors_sha256=np.str_(key.descriptors_sha256))  # fmt: skip

    atomic.write_file(Path(path), write)


def load_graph(path: Path, key: GraphKey, rows: int) -> Graph | None:
    """The graph stored at `path` if it exists, is whole, and was built for `key` over `rows` rows."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            if int(stored["format"]) != GRAPH_FORMAT:
                return None
            stored_key = GraphKey(str(stored["descriptors_sha256"]), int(stored["k"]), float(stored["gamma"]))
            row_starts, neighbours, weights = stored["row_starts"], stored["neighbours"], stored["weights"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as error:  # damaged or not ours: build it again
        logger.warning("%s is unreadable (%s); building the diffusion graph again", path, error)
        return None
    if stored_key != key or row_starts.shape != (rows + 1,) or neighbours.ndim != 1 or neighbours.shape != weights.shape:
        return None
    if row_starts[0] != 0 or row_starts[-1] != len(neighbours) or np.any(np.diff(row_starts) < 0):
        return None
    if neighbours.size and (neighbours.min() < 0 or neighbours.max() >= rows):
        return None
    return Graph(row_starts.astype(np.int64, copy=False), neighbours.astype(np.int32, copy=False),
                 weights.astype(np.float64, copy=False), key.k, key.gamma)  # fmt: skip


_graphs: OrderedDict[tuple, Graph] = OrderedDict()
_graphs_lock = threading.Lock()


def collection_graph(index: LoadedIndex, k: int = GRAPH_NEIGHBOURS, gamma: float = SIMILARITY_POWER) -> Graph:
    """The index's graph: from memory, else from its graph file if that matches the rows, else built
    (and stored beside the index when the folder can be written)."""
    descriptors_path = Path(index.folder) / DESCRIPTORS
    status = os.stat(descriptors_path)
    memory_key = (str(Path(index.folder).resolve()), status.st_size, status.st_mtime_ns, status.st_ino, k, gamma)
    with _graphs_lock:
        if memory_key in _graphs:
            _graphs.move_to_end(memory_key)
            return _graphs[memory_key]
        key = GraphKey(sha256_file(descriptors_path), k, float(gamma))
        path = Path(index.folder) / GRAPH_FILE
        graph = load_graph(path, key, len(index))
        if graph is None:
            graph = build_graph(np.asarray(index.descriptors), k, gamma)
            try:
                save_graph(path, graph, key)
            except OSError as error:
                logger.warning("could not store the diffusion graph at %s (%s); it is kept in memory", path, error)
        _graphs[memory_key] = graph
        while len(_graphs) > _GRAPHS_KEPT:
            _graphs.popitem(last=False)
        return graph


# --- the re-ranker --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Diffusion:
    """Diffusion as a `rank` re-ranker (module docstring): re-orders the first `depth` results (the
    whole collection when `rank` is called with k=None) by their diffusion scores."""

    k: int = GRAPH_NEIGHBOURS
    alpha: float = DIFFUSION_ALPHA
    gamma: float = SIMILARITY_POWER
    iterations: int = CG_ITERATIONS
    query_k: int = QUERY_NEIGHBOURS
    tolerance: float = CG_TOLERANCE
    depth: int = DIFFUSION_DEPTH

    def __post_init__(self) -> None:
        if self.k < 1 or self.query_k < 1 or self.iterations < 1:
            raise SettingsError(f"diffusion needs k, query_k and iterations of at least 1, got {self}")
        if not 0 <= self.alpha < 1:
            raise SettingsError(f"diffusion's alpha must be in [0, 1), got {self.alpha}")
        if not math.isfinite(self.gamma) or self.gamma < 0:
            raise SettingsError(f"diffusion's gamma must be a number of at least 0, got {self.gamma}")
        if self.depth < self.query_k:
            raise SettingsError(f"diffusion's depth ({self.depth}) must be at least its query_k ({self.query_k})")

    @property
    def label(self) -> str:
        return f"diffusion (k = {self.k}, α = {self.alpha:g})"

    def __call__(self, index: LoadedIndex, query: np.ndarray, metric: Metric, ranking: Ranking) -> Ranking:
        rows = np.asarray(ranking.rows)
        if len(rows) == 0:
            return ranking
        graph = collection_graph(index, self.k, self.gamma)
        nearest = rows[: self.query_k]
        unit_query = l2_normalise(np.asarray(query, dtype=np.float32).reshape(-1))
        similarities = l2_normalise(np.asarray(index.descriptors[np.sort(nearest)], dtype=np.float32)) @ unit_query
        y = query_vector(len(graph), np.sort(nearest), similarities, self.gamma)
        scores = diffuse(graph, y, self.alpha, self.iterations, self.tolerance)[rows]
        order = np.argsort(-scores, kind="stable")
        return Ranking(rows[order], np.asarray(ranking.distances)[order], ranking.exact)
