"""Annoy: one memory-mapped forest per metric.

Annoy files record neither metric nor dimension, and loading them with the wrong ones crashes the
process: the manifest's parameters (and the item count checked on opening) are what make loading
safe. Annoy's "angular" distance is sqrt(2 (1 - cos)), the unit the project reports for cosine.

Annoy is approximate only in *which* rows it finds: the distances it reports for them are the true
distances up to float32 round-off (tests/test_index.py states the bound). So asking it
for more candidates than k and keeping the best k is what buys recall; re-computing the candidates'
distances from the descriptors changed no ranking (the mutation run found it) and is not done.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from cbir.distances import Metric, Neighbours, nearest
from cbir.layout import IndexLoadError
from cbir.stores.base import StoreKind, StoreParameter

ANNOY_METRICS: dict[Metric, str] = {Metric.COSINE: "angular", Metric.EUCLIDEAN: "euclidean"}
DEFAULT_N_TREES = 100
DEFAULT_SEED = 42
# Annoy proposes this many candidates (at least k), of which the nearest k are kept: near-exact
# results at a fraction of the cost of a full scan (bench/results/search*.md).
DEFAULT_CANDIDATES = 200


def file_name(metric: Metric) -> str:
    return f"{metric.value}.ann"


class AnnoyStore:
    def __init__(self, folder: Path, descriptors: np.ndarray, params: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.descriptors = descriptors
        self.params = params
        self._indexes: dict[Metric, Any] = {}
        self._lock = threading.Lock()

    def forest(self, metric: Metric):
        from annoy import AnnoyIndex

        with self._lock:
            if metric not in self._indexes:
                path = self.folder / file_name(metric)
                index = AnnoyIndex(self.descriptors.shape[1], ANNOY_METRICS[metric])
                try:
                    index.load(str(path))  # memory-mapped, not read into RAM
                except OSError as error:
                    raise IndexLoadError(f"cannot load {path} ({error}).") from None
                if index.get_n_items() != len(self.descriptors):
                    raise IndexLoadError(
                        f"{path} holds {index.get_n_items()} items but the manifest lists "
                        f"{len(self.descriptors)} images."
                    )
                self._indexes[metric] = index
            return self._indexes[metric]

    def search(self, query: np.ndarray, metric: Metric, k: int, *, candidates: int | None = None) -> Neighbours:
        """Annoy proposes max(k, candidates) rows; the nearest k of them, ties by row id."""
        forest = self.forest(metric)
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        k = min(k, len(self.descriptors))
        pool = max(k, candidates or DEFAULT_CANDIDATES)
        rows, distances = forest.get_nns_by_vector(query, pool, include_distances=True)
        return nearest(np.asarray(distances, dtype=np.float32), k, np.asarray(rows, dtype=np.int64))

    def close(self) -> None:
        with self._lock:
            for index in self._indexes.values():
                index.unload()
            self._indexes.clear()


def _build(folder: Path, descriptors: np.ndarray, params: dict[str, Any]) -> dict[str, Any]:
    from annoy import AnnoyIndex

    n_trees = int(params.get("n_trees", DEFAULT_N_TREES))
    seed = int(params.get("seed", DEFAULT_SEED))
    seconds = {}
    for metric, annoy_metric in ANNOY_METRICS.items():
        started = time.perf_counter()
        index = AnnoyIndex(descriptors.shape[1], annoy_metric)
        index.set_seed(seed)
        for row, vector in enumerate(descriptors):
            index.add_item(row, vector)
        index.build(n_trees, n_jobs=-1)
        index.save(str(folder / file_name(metric)))
        index.unload()
        seconds[metric.value] = round(time.perf_counter() - started, 3)
    return {"n_trees": n_trees, "seed": seed, "build_seconds": seconds}


def _open(folder: Path, descriptors: np.ndarray, params: dict[str, Any]) -> AnnoyStore:
    return AnnoyStore(folder, descriptors, params)


def _files(params: dict[str, Any]) -> list[str]:
    return [file_name(metric) for metric in ANNOY_METRICS]


KIND = StoreKind(
    "annoy", "the Annoy trees", "Annoy forests (cosine and euclidean); the nearest k of its candidates",
    _build, _open, _files,
    parameters=(StoreParameter("n_trees", "--n-trees", int, DEFAULT_N_TREES,
                               "trees per Annoy index (more: better recall, bigger files)"),),
)  # fmt: skip
