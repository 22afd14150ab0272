"""HNSW graphs (hnswlib), one per metric: the store for collections too big to scan.

Chosen after measuring hnswlib, faiss (HNSW and IVF) and Voyager side by side (bench/search.py,
docs/performance.md). hnswlib's "cosine" space normalises the rows it is given and reports
1 - cos; its "l2" space reports squared distances. Neither is the unit the project shows, so the
graph only says *which* rows are nearest: their distances are computed again from the stored
descriptors with `exact_distances`, the exact scan's own formula, and the rows ordered by them
(ties by row id). The page then shows the exact scan's numbers for every row the graph found.

hnswlib's files record neither metric nor dimension either: the manifest's parameters say which
space each file holds, and the element count and dimension are checked on opening. A graph is
read into memory (hnswlib cannot memory-map), the first time its metric is searched.

A graph takes new rows after loading (`add_rows`): the build adds images without a full rebuild.
"""

from __future__ import annotations

import shutil
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from cbir.distances import Metric, Neighbours, exact_distances, nearest
from cbir.errors import SettingsError
from cbir.layout import IndexLoadError
from cbir.stores.base import StoreKind

HNSW_SPACES: dict[Metric, str] = {Metric.COSINE: "cosine", Metric.EUCLIDEAN: "l2"}
# From bench/results/search-1m-hnsw.md (1,000,000 x 512, 50 rows a cluster, 2 cores): see
# docs/performance.md. M = 32 links a node; ef = 400 rows examined per query unless asked otherwise.
DEFAULT_M = 32
DEFAULT_EF_CONSTRUCTION = 200
DEFAULT_EF = 400
DEFAULT_SEED = 100
INSTALL_HINT = "pip install -r requirements-scale.txt"


def file_name(metric: Metric) -> str:
    return f"{metric.value}.hnsw"


def _hnswlib():
    try:
        import hnswlib
    except ImportError:
        raise SettingsError(f"the hnsw store needs hnswlib, which is not installed: {INSTALL_HINT}") from None
    return hnswlib


def available() -> bool:
    """Whether hnswlib can be imported (the build picks this store by size only then)."""
    try:
        _hnswlib()
    except SettingsError:
        return False
    return True


class HnswStore:
    def __init__(self, folder: Path, descriptors: np.ndarray, params: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.descriptors = descriptors
        self.params = params
        self._graphs: dict[Metric, Any] = {}
        self._lock = threading.Lock()

    def graph(self, metric: Metric):
        hnswlib = _hnswlib()
        with self._lock:
            if metric not in self._graphs:
                path = self.folder / file_name(metric)
                graph = hnswlib.Index(space=HNSW_SPACES[metric], dim=self.descriptors.shape[1])
                try:
                    graph.load_index(str(path))
                except (OSError, RuntimeError) as error:
                    raise IndexLoadError(f"cannot load {path} ({error}).") from None
                if graph.get_current_count() != len(self.descriptors) or graph.dim != self.descriptors.shape[1]:
                    raise IndexLoadError(
                        f"{path} holds {graph.get_current_count()} rows of {graph.dim} floats but the manifest "
                        f"lists {len(self.descriptors)} images of {self.descriptors.shape[1]}."
                    )
                self._graphs[metric] = graph
            return self._graphs[metric]

    def search(self, query: np.ndarray, metric: Metric, k: int, *, candidates: int | None = None) -> Neighbours:
        """The graph examines max(k, candidates) rows (hnswlib's ef) and returns its nearest k; their
        distances are the exact scan's."""
        graph = self.graph(metric)
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        k = min(k, len(self.descriptors))
        ef = max(k, candidates or int(self.params.get("ef", DEFAULT_EF)))
        with self._lock:  # ef is the graph's state, not the query's
            graph.set_ef(ef)
            try:
                labels, _ = graph.knn_query(query, k=k, num_threads=1)
            except RuntimeError:
                # hnswlib found fewer than k rows (a sparse graph, k near the collection's size):
                # take every row it can reach.
                labels = _fewer(graph, query, k)
        rows = np.asarray(labels, dtype=np.int64).reshape(-1)
        distances = exact_distances(self.descriptors[rows], query, metric)
        return nearest(distances, len(rows), rows)

    def close(self) -> None:
        with self._lock:
            self._graphs.clear()


def _fewer(graph, query: np.ndarray, k: int) -> np.ndarray:
    for smaller in range(k - 1, 0, -1):
        try:
            return graph.knn_query(query, k=smaller, num_threads=1)[0]
        except RuntimeError:
            continue
    return np.empty((1, 0), dtype=np.int64)  # pragma: no mutate (never reached: hnswlib answers k=1 with its entry point)


def _settings(params: dict[str, Any]) -> dict[str, int]:
    settings = {
        "M": int(params.get("M", DEFAULT_M)),
        "ef_construction": int(params.get("ef_construction", DEFAULT_EF_CONSTRUCTION)),
        "ef": int(params.get("ef", DEFAULT_EF)),
        "seed": int(params.get("seed", DEFAULT_SEED)),
    }
    if settings["M"] < 2 or settings["ef_construction"] < 1 or settings["ef"] < 1:
        raise SettingsError(f"HNSW needs M >= 2, ef_construction >= 1 and ef >= 1, not {settings}")
    return settings


def build_graphs(
    folder: Path, descriptors: np.ndarray, params: dict[str, Any], metrics: tuple[Metric, ...] = tuple(HNSW_SPACES)
) -> dict[str, Any]:
    """One graph per metric in `folder`; the parameters to record. (The benchmark builds one metric.)"""
    hnswlib = _hnswlib()
    settings = _settings(params)
    seconds = {}
    for metric in metrics:
        started = time.perf_counter()
        graph = hnswlib.Index(space=HNSW_SPACES[metric], dim=descriptors.shape[1])
        graph.init_index(
            max_elements=max(1, len(descriptors)), ef_construction=settings["ef_construction"], M=settings["M"],
            random_seed=settings["seed"],
        )  # fmt: skip
        if len(descriptors):
            graph.add_items(descriptors, np.arange(len(descriptors)))
        graph.save_index(str(folder / file_name(metric)))
        seconds[metric.value] = round(time.perf_counter() - started, 3)
    return {**settings, "library": f"hnswlib {metadata.version('hnswlib')}", "build_seconds": seconds}


def add_rows(folder: Path, descriptors: np.ndarray, first_row: int, params: dict[str, Any]) -> dict[str, Any]:
    """Add `descriptors` (rows first_row, first_row + 1, ...) to the graphs in `folder`, in place; the
    parameters to record. The graphs must hold exactly rows 0 .. first_row - 1."""
    hnswlib = _hnswlib()
    seconds = {}
    for metric, space in HNSW_SPACES.items():
        started = time.perf_counter()
        path = folder / file_name(metric)
        graph = hnswlib.Index(space=space, dim=descriptors.shape[1])
        graph.load_index(str(path), max_elements=first_row + len(descriptors))
        if graph.get_current_count() != first_row:
            raise IndexLoadError(f"{path} holds {graph.get_current_count()} rows, not {first_row}")
        graph.add_items(descriptors, np.arange(first_row, first_row + len(descriptors)))
        graph.save_index(str(path))
        seconds[metric.value] = round(time.perf_counter() - started, 3)
    return {**params, "add_seconds": seconds}


def _build(folder: Path, descriptors: np.ndarray, params: dict[str, Any]) -> dict[str, Any]:
    return build_graphs(folder, descriptors, params)


def _open(folder: Path, descriptors: np.ndarray, params: dict[str, Any]) -> HnswStore:
    return HnswStore(folder, descriptors, params)


def _files(params: dict[str, Any]) -> list[str]:
    return [file_name(metric) for metric in HNSW_SPACES]


def _add(current: Path, folder: Path, descriptors: np.ndarray, first_new_row: int, params: dict[str, Any]) -> dict[str, Any]:
    """Copies of the current graphs in the new (temporary) folder, grown by the rows from `first_new_row`:
    the current folder stays searchable until the new one replaces it."""
    for metric in HNSW_SPACES:
        shutil.copyfile(Path(current) / file_name(metric), Path(folder) / file_name(metric))
    return add_rows(folder, np.asarray(descriptors[first_new_row:], dtype=np.float32), first_new_row, params)


KIND = StoreKind(
    "hnsw", "the HNSW graphs", "HNSW graphs (hnswlib; cosine and euclidean); the exact distances of the rows they find",
    _build, _open, _files, add=_add,
)  # fmt: skip
