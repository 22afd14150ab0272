"""Distances between descriptors, in the project's own metric names.

Each store maps these names to its own (Annoy: "angular" / "euclidean") inside the store. Cosine
distances are reported as Annoy reports them, the angular distance sqrt(2 (1 - cos)), so a ranking
reads the same whichever store made it; `cosine_similarity` turns one back.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

import numpy as np

from cbir.errors import SettingsError


class Metric(str, Enum):
    COSINE = "cosine"  # on L2-normalised descriptors
    EUCLIDEAN = "euclidean"  # on the raw (or whitened, unnormalised) descriptors

    @classmethod
    def parse(cls, value: str | Metric) -> Metric:
        try:
            return cls(value)
        except ValueError:
            known = ", ".join(m.value for m in cls)
            raise SettingsError(f"unknown metric {value!r}; known metrics: {known}") from None


class Neighbours(NamedTuple):
    """Row ids and their distances, nearest first."""

    rows: np.ndarray
    distances: np.ndarray


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Each vector (the last axis) divided by its length; a zero vector stays zero. Keeps the dtype."""
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def squared_norms(descriptors: np.ndarray) -> np.ndarray:
    return np.einsum(
        "ij,ij->i",  # pragma: no mutate -- einsum reads upper-case subscripts the same
        descriptors,
        descriptors,
    )


def exact_distances(
    descriptors: np.ndarray, query: np.ndarray, metric: Metric | str, norms: np.ndarray | None = None
) -> np.ndarray:
    """Distance from `query` to every row.

    `norms` (squared, one per row) may be passed in when the rows are searched again and again: it
    saves a second pass over the whole matrix per query.
    """
    metric = Metric.parse(metric)
    # Equivalent mutant, left unmarked to keep the others on this line: numpy reads any negative
    # size in reshape as "the rest", so reshape(-2) is reshape(-1).
    query = np.asarray(query, dtype=np.float32).reshape(-1)
    if norms is None:
        norms = squared_norms(descriptors)
    products = descriptors @ query
    if metric is Metric.COSINE:
        cosine = products / np.maximum(np.sqrt(norms) * np.linalg.norm(query), 1e-12)
        return np.sqrt(np.maximum(2.0 - 2.0 * cosine, 0.0))
    return np.sqrt(np.maximum(norms - 2.0 * products + float(query @ query), 0.0))


def cosine_similarity(distance: np.ndarray | float) -> np.ndarray | float:
    """An angular distance back to cosine similarity."""
    return 1.0 - np.square(distance) / 2.0


def nearest(distances: np.ndarray, k: int | None, rows: np.ndarray | None = None) -> Neighbours:
    """The k smallest distances (all if k is None), ties broken by row id so rankings are stable."""
    if rows is None:
        rows = np.arange(len(distances))
    else:
        # Equivalent mutant (pragma): any integer dtype orders the same; int64 is what callers get.
        rows = np.asarray(rows, dtype=np.int64)  # pragma: no mutate
    if k is None or (
        k >= len(distances)  # pragma: no mutate -- at k == len both branches give the same order
    ):
        order = np.lexsort((rows, distances))
    else:
        # Every row as near as the k-th, not just k of them: a tie across the k-th place must still
        # go to the lowest row ids, as in the full ranking.
        kth_distance = np.partition(
            distances,
            k - 1,  # pragma: no mutate -- another place gives a larger bound: more candidates, same top k
        )[k - 1]
        candidates = np.flatnonzero(distances <= kth_distance)
        order = candidates[np.lexsort((rows[candidates], distances[candidates]))][:k]
    return Neighbours(rows[order], distances[order])
