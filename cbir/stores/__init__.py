"""Where descriptors are searched: one module per store, behind one interface.

Every index folder holds its raw descriptors (`descriptors.npy`), so the exact scan is always
there; the manifest names one more store (`annoy`, `hnsw`, `milvus`, or `exact` for none) with its
parameters, and `LoadedIndex` opens it by that name. A new store is one module that defines a
`StoreKind` and is registered here (or by `register`, as the tests do): nothing else changes.

A store ranks by the project's metric names (`cbir.distances.Metric`) and reports distances in the
same units as the exact scan (angular distance for cosine), mapping to its own names inside.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cbir.distances import Metric, Neighbours
from cbir.errors import SettingsError


class Store(Protocol):
    def search(self, query: np.ndarray, metric: Metric, k: int, *, candidates: int | None = None) -> Neighbours:
        """The k nearest rows. `candidates`: how many rows an approximate store examines (it may
        keep the nearest k of them); the exact scan ignores it."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class StoreKind:
    name: str
    description: str
    # (temporary index folder, descriptors, parameters asked for) -> parameters to record
    build: Callable[[Path, np.ndarray, dict[str, Any]], dict[str, Any]]
    # (index folder, memory-mapped descriptors, recorded parameters) -> a store to search
    open: Callable[[Path, np.ndarray, dict[str, Any]], Store]
    # recorded parameters -> the files it keeps in the index folder
    files: Callable[[dict[str, Any]], list[str]]
    exact: bool = False  # whether its answers are the exact ranking
    # A server the user chose to search with (Milvus): it answers even where a local scan of the
    # descriptors would be as fast (cbir.ranking.prefers_exact).
    serves_every_search: bool = False
    # (current index folder, temporary index folder, every row, first new row, recorded parameters)
    # -> parameters to record: the store grown by rows added after its build, without rebuilding it.
    # None: the store cannot take rows after its build (Annoy), so `build_index.py --add` rebuilds it.
    add: Callable[[Path, Path, np.ndarray, int, dict[str, Any]], dict[str, Any]] | None = None


STORES: dict[str, StoreKind] = {}


def register(kind: StoreKind) -> StoreKind:
    STORES[kind.name] = kind
    return kind


def get_store_kind(name: str) -> StoreKind:
    try:
        return STORES[name]
    except KeyError:
        raise SettingsError(f"unknown store {name!r}; known stores: {', '.join(STORES)}") from None


from cbir.stores import annoy, exact, hnsw, milvus  # noqa: E402  (each registers itself; libraries load lazily)

__all__ = ["STORES", "Store", "StoreKind", "annoy", "exact", "get_store_kind", "hnsw", "milvus", "register"]
