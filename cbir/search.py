"""Query image (+ optional box) -> ranked hits, over the indexes a build left on disk.

`SearchEngine` keeps the explicit caches of the process: built networks and loaded indexes. A
network is built on first use and kept; so is an index. The weights and input size a query is
described with are read from the index's manifest, so a query is always described the way the
collection was.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cbir.backbones import BACKBONES, ExtractorCache, FeatureExtractor, Weights, get_backbone, keras_versions
from cbir.images import DEFAULT_LIMITS, ImageLimits, crop_box, load_image, to_network_input
from cbir.index import (
    DEFAULT_CANDIDATES,
    IndexInfo,
    IndexLoadError,
    LoadedIndex,
    check_metric,
    cosine_similarity,
    exact_distances,
    index_folder,
    list_indexes,
    load_index,
    rebuild_command,
    version_warnings,
)

logger = logging.getLogger(__name__)

Box = tuple[float, float, float, float]

# Descriptor floats up to which a full numpy scan is the fastest way to recall@100 >= 0.95 on
# 2 cores (bench/results/search.md, 100,000 rows: exact 21 ms vs Annoy 39 ms at 2048-d, 9.8 vs
# 17 ms at 512-d, 6.0 vs 7.3 ms at 256-d). Above it Annoy's candidates, re-ranked exactly, take
# about 3 ms at 1,000,000 x 512 where a scan takes 100 ms (bench/results/search-1m-default.md).
EXACT_SEARCH_LIMIT = 100_000 * 2048


@dataclass(frozen=True)
class Hit:
    rank: int  # 1-based
    image: str  # path relative to the collection root, as in the manifest
    path: Path  # absolute path of the image file
    distance: float  # in the chosen metric (angular distance for cosine)
    similarity: float  # cosine similarity of the two descriptors, whatever the metric


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    collection: str
    backbone: str
    metric: str
    exact: bool
    describe_seconds: float
    search_seconds: float
    untrained: bool
    warnings: tuple[str, ...] = ()


class SearchEngine:
    """Searches the indexes under `index_root`; safe to share between threads."""

    def __init__(
        self,
        index_root: Path,
        *,
        extractors: ExtractorCache | None = None,
        limits: ImageLimits = DEFAULT_LIMITS,
        candidates: int = DEFAULT_CANDIDATES,
    ) -> None:
        self.index_root = Path(index_root)
        self.extractors = extractors or ExtractorCache()
        self.limits = limits
        self.candidates = candidates
        self._indexes: dict[tuple[str, str], LoadedIndex] = {}
        self._warnings: dict[tuple[str, str], tuple[str, ...]] = {}
        self._lock = threading.Lock()

    def available(self) -> list[IndexInfo]:
        """Finished indexes on disk, for backbones this code knows."""
        return [info for info in list_indexes(self.index_root) if info.backbone in BACKBONES]

    def index(self, collection: str, backbone: str) -> LoadedIndex:
        key = (collection, backbone)
        with self._lock:
            if key not in self._indexes:
                get_backbone(backbone)
                loaded = load_index(
                    index_folder(self.index_root, collection, backbone),
                    expected_backbone=backbone,
                    expected_dim=BACKBONES[backbone].dim,
                )
                self._warnings[key] = tuple(version_warnings(loaded.manifest, keras_versions()))
                for warning in self._warnings[key]:
                    logger.warning(warning)
                self._indexes[key] = loaded
            return self._indexes[key]

    def extractor_for(self, loaded: LoadedIndex) -> FeatureExtractor:
        manifest = loaded.manifest
        weights = Weights.from_json(manifest.weights)
        if weights.kind == "file" and (weights.path is None or not weights.path.is_file()):
            raise IndexLoadError(
                f"{manifest.collection}/{manifest.backbone} was built with the weights file {weights.path}, "
                "which is no longer there. Put it back, or rebuild: "
                + rebuild_command(manifest.collection, manifest.backbone)
            )
        return self.extractors.get(get_backbone(manifest.backbone), weights, manifest.input_size)

    def describe(
        self, image: Any, *, collection: str, backbone: str, box: Box | None = None, name: str | None = None
    ) -> np.ndarray:
        """The descriptor of an image (path, bytes, PIL image or array), cropped to `box` if given."""
        loaded = self.index(collection, backbone)
        extractor = self.extractor_for(loaded)
        # A whole file is decoded exactly as the build decoded collection files (JPEG draft
        # scaling included), so a collection photo used as a query matches its own row.
        is_file = isinstance(image, (str, Path))
        draft = extractor.input_size if box is None and is_file else None
        picture = load_image(image, name=name, limits=self.limits, draft_size=draft)
        picture = crop_box(picture, box, limits=self.limits, name=name or "the image")
        return extractor.describe(to_network_input(picture, extractor.input_size))[0]

    def search(
        self,
        image: Any,
        *,
        collection: str,
        backbone: str,
        metric: str = "cosine",
        k: int = 12,
        box: Box | None = None,
        exact: bool | None = None,
        name: str | None = None,
    ) -> SearchResult:
        """The k most similar images of `collection` to `image`, best first.

        exact=False goes through Annoy (candidates re-ranked exactly); exact=True scans every
        stored descriptor with numpy; None picks exact up to EXACT_SEARCH_LIMIT descriptor floats,
        where the scan is faster than Annoy at the same recall.
        """
        check_metric(metric)
        if k < 1:
            raise ValueError("k must be at least 1")
        loaded = self.index(collection, backbone)
        started = time.perf_counter()
        query = self.describe(image, collection=collection, backbone=backbone, box=box, name=name)
        described = time.perf_counter()
        if exact is None:
            exact = len(loaded) * loaded.manifest.dim <= EXACT_SEARCH_LIMIT
        rows, distances = self.rank(loaded, query, metric, k, exact=exact)
        searched = time.perf_counter()
        similarities = cosine_similarity(exact_distances(loaded.descriptors[rows], query, "cosine"))
        root = Path(loaded.manifest.collection_root)
        hits = [
            Hit(rank, loaded.manifest.images[row], root / loaded.manifest.images[row], float(distance), float(sim))
            for rank, (row, distance, sim) in enumerate(zip(rows, distances, similarities), start=1)
        ]
        return SearchResult(
            hits=hits,
            collection=collection,
            backbone=backbone,
            metric=metric,
            exact=exact,
            describe_seconds=described - started,
            search_seconds=searched - described,
            untrained=loaded.manifest.untrained,
            warnings=self._warnings.get((collection, backbone), ()),
        )

    def rank(
        self, loaded: LoadedIndex, query: np.ndarray, metric: str, k: int | None, *, exact: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows and distances for a descriptor; k=None (exact only) ranks the whole collection."""
        if exact or k is None:
            return loaded.search_exact(query, metric, k)
        return loaded.search_annoy(query, metric, min(k, len(loaded)), candidates=self.candidates)

