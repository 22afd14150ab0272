"""The exact scan: every stored descriptor, in numpy. No files beyond the descriptors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cbir.distances import Metric, Neighbours, exact_distances, nearest, squared_norms
from cbir.stores.base import StoreKind


class ExactStore:
    def __init__(self, descriptors: np.ndarray) -> None:
        self.descriptors = descriptors
        self._norms: np.ndarray | None = None

    @property
    def norms(self) -> np.ndarray:
        """Per-row squared norms, computed once: every search needs them."""
        if self._norms is None:
            self._norms = squared_norms(self.descriptors)
        return self._norms

    def distances(self, query: np.ndarray, metric: Metric) -> np.ndarray:
        return exact_distances(self.descriptors, query, metric, self.norms)

    def search(self, query: np.ndarray, metric: Metric, k: int | None, *, candidates: int | None = None) -> Neighbours:
        """k=None ranks every row (what AP needs)."""
        return nearest(self.distances(query, metric), k)

    def close(self) -> None:
        pass


def _build(folder: Path, descriptors: np.ndarray, params: dict[str, Any]) -> dict[str, Any]:
    return {}


def _open(folder: Path, descriptors: np.ndarray, params: dict[str, Any]) -> ExactStore:
    return ExactStore(descriptors)


def _files(params: dict[str, Any]) -> list[str]:
    return []


def _add(current: Path, folder: Path, descriptors: np.ndarray, first_new_row: int, params: dict[str, Any]) -> dict[str, Any]:
    return params  # the appended rows of descriptors.npy are the whole store


KIND = StoreKind("exact", "the exact index", "exact numpy scan over the stored descriptors", _build, _open, _files,
                 exact=True, add=_add)  # fmt: skip
