"""Query image (+ optional box) -> ranked hits, over the indexes a build left on disk.

`SearchEngine` keeps the explicit caches of the process: built networks, loaded indexes and
collection records. A query is always described by the recipe its index records (backbone,
pooling, weights, input size), so it is comparable with the collection's descriptors.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cbir.weights import WeightsKind
from cbir.trunks import ExtractorCache, FeatureExtractor, keras_versions
from cbir.datasets.model import Box
from cbir.distances import Metric, cosine_similarity, exact_distances
from cbir.images import DEFAULT_LIMITS, ImageLimits, crop_box, load_image, load_region, resize_for_network
from cbir.index import LoadedIndex, load_index, version_warnings
from cbir.catalogue import BrokenIndex, IndexInfo, scan_indexes
from cbir.layout import CollectionRecord, IndexLayout, IndexLoadError, read_collection_record
from cbir.local_features import ImageFeatures, describe_picture, picture_as_described
from cbir.ranking import Ranking, Reranker, rank
from cbir.verification import SpatialVerification


@dataclass(frozen=True)
class Hit:
    rank: int  # 1-based
    image: str  # path relative to the collection's images folder, as in the manifest
    path: Path  # absolute path of the image file
    distance: float  # in the chosen metric (angular distance for cosine)
    similarity: float  # cosine similarity of the two descriptors, whatever the metric
    inliers: int | None = None  # spatial verification's count, when it examined this hit (cbir.verification)


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    collection: str
    recipe: str  # the recipe key of the index searched
    metric: Metric
    exact: bool
    describe_seconds: float
    search_seconds: float
    untrained: bool
    warnings: tuple[str, ...] = ()


logger = logging.getLogger(__name__)


class SearchEngine:
    """Searches the indexes under `index_dir`; safe to share between threads. `candidates`: how many
    rows an approximate store examines per search (None: each store's own default)."""

    def __init__(
        self,
        index_dir: Path,
        *,
        extractors: ExtractorCache | None = None,
        limits: ImageLimits = DEFAULT_LIMITS,
        candidates: int | None = None,
    ) -> None:
        self.layout = IndexLayout(index_dir)
        self.extractors = extractors if extractors is not None else ExtractorCache()
        self.limits = limits
        self.candidates = candidates
        self._indexes: dict[tuple[str, str], LoadedIndex] = {}
        self._records: dict[str, CollectionRecord] = {}
        self._warnings: dict[tuple[str, str], tuple[str, ...]] = {}
        self._lock = threading.Lock()

    @property
    def index_dir(self) -> Path:
        return self.layout.root

    def available(self) -> list[IndexInfo]:
        """Finished, whole indexes on disk."""
        return scan_indexes(self.layout.root)[0]

    def broken(self) -> list[BrokenIndex]:
        """Index folders that cannot be loaded, with what is wrong and the command that fixes it."""
        return scan_indexes(self.layout.root)[1]

    def record(self, collection: str) -> CollectionRecord:
        with self._lock:
            if collection not in self._records:
                self._records[collection] = read_collection_record(self.layout, collection)
            return self._records[collection]

    def index(self, collection: str, recipe: str) -> LoadedIndex:
        key = (collection, recipe)
        with self._lock:
            cached = self._indexes.get(key)
            if cached is not None and cached.changed_files():
                # Replaced by a rebuild, or damaged in place: load it afresh (a damaged folder is refused).
                # Not closed here: a search in another thread may still hold it.
                logger.warning("%s changed on disk since it was loaded: loading it again", cached.folder)
                del self._indexes[key]
            if key not in self._indexes:
                loaded = load_index(self.layout.index_dir(collection, recipe))
                if loaded.manifest.dim != loaded.manifest.recipe.dim:
                    raise IndexLoadError(
                        f"{loaded.folder} holds {loaded.manifest.dim}-d rows, but its recipe gives "
                        f"{loaded.manifest.recipe.dim}-d descriptors. Rebuild it: {loaded.manifest.rebuild_command(loaded.folder)}"
                    )
                if loaded.manifest.key != recipe or loaded.manifest.collection != collection:
                    raise IndexLoadError(
                        f"{loaded.folder} holds {loaded.manifest.collection}/{loaded.manifest.key}, not "
                        f"{collection}/{recipe}. Rebuild it: {loaded.manifest.rebuild_command(loaded.folder)}"
                    )
                self._warnings[key] = tuple(version_warnings(loaded.manifest, keras_versions()))
                for warning in self._warnings[key]:
                    logger.warning(warning)
                self._indexes[key] = loaded
            return self._indexes[key]

    def extractor_for(self, loaded: LoadedIndex) -> FeatureExtractor:
        recipe = loaded.manifest.recipe
        weights = recipe.weights
        if weights.kind is WeightsKind.FILE and (weights.path is None or not weights.path.is_file()):
            raise IndexLoadError(
                f"{loaded.manifest.collection}/{recipe.key} was built with the weights file {weights.path}, "
                f"which is no longer there. Put it back, or rebuild: {loaded.manifest.rebuild_command(loaded.folder)}"
            )
        return self.extractors.get(recipe)

    def describe(
        self,
        image: Any,
        *,
        collection: str,
        recipe: str,
        box: Box | None = None,
        name: str | None = None,
        reduced_decode: bool = False,
    ) -> np.ndarray:
        """The descriptor of an image (path, bytes, PIL image or array), cropped to `box` if given.

        `reduced_decode`: a box on a JPEG file is decoded at the smallest DCT scale that still gives
        the network all the pixels it reads (a search's choice: a fraction of the time on a phone
        photo). Off, the box is cut from the full-resolution image, as the study's evaluation did.
        """
        loaded = self.index(collection, recipe)
        extractor = self.extractor_for(loaded)
        # A whole file is decoded exactly as the build decoded collection files (JPEG draft
        # scaling included), so a collection photo used as a query matches its own row.
        is_file = isinstance(image, (str, Path))
        if is_file and box is not None and reduced_decode:
            picture = load_region(image, box, min_side=extractor.input_size, name=name, limits=self.limits)
        else:
            draft = extractor.input_size if is_file and box is None else None
            picture = load_image(image, name=name, limits=self.limits, draft_size=draft)
            picture = crop_box(picture, box, limits=self.limits, name=name or "the image")
        pixels = resize_for_network(picture, *extractor.recipe.network_shape(*picture.size))
        return loaded.query_descriptor(extractor.describe(pixels)[0])

    def describe_locally(
        self, image: Any, *, collection: str, recipe: str, box: Box | None = None, name: str | None = None
    ) -> ImageFeatures:
        """The query's local features, made as the index's were (its manifest's settings), from the
        image cropped to `box` if given. IndexLoadError when the index has none."""
        loaded = self.index(collection, recipe)
        if not loaded.has_local_features:
            raise IndexLoadError(f"{collection}/{recipe} has no local features to verify with. Build them: "
                                 f"{loaded.manifest.rebuild_command(loaded.folder)} --local-features")  # fmt: skip
        settings = loaded.manifest.local_features
        return describe_picture(picture_as_described(image, settings, box, name=name, limits=self.limits), settings)

    def rank(
        self,
        loaded: LoadedIndex,
        query: np.ndarray,
        metric: Metric | str,
        k: int | None,
        *,
        exact: bool | None = None,
        rerankers: Sequence[Reranker] = (),
    ) -> Ranking:
        return rank(loaded, query, metric, k, exact=exact, candidates=self.candidates, rerankers=rerankers)

    def search(
        self,
        image: Any,
        *,
        collection: str,
        recipe: str,
        metric: Metric | str = Metric.COSINE,
        k: int = 12,
        box: Box | None = None,
        exact: bool | None = None,
        name: str | None = None,
        rerankers: Sequence[Reranker] = (),
    ) -> SearchResult:
        """The k most similar images of `collection` to `image`, best first.

        `recipe` is the key of one of the collection's indexes (for the study's descriptor, the
        backbone's name). exact=None scans exactly when that is the faster way (cbir.ranking).
        A `SpatialVerification` among the `rerankers` gets the query's local features here
        (`describe_locally`), and each hit it examined its inlier count.
        """
        metric = Metric.parse(metric)
        if k < 1:
            raise ValueError("k must be at least 1")
        loaded = self.index(collection, recipe)
        started = time.perf_counter()
        verifying = any(isinstance(r, SpatialVerification) and r.query_features is None for r in rerankers)
        if verifying and hasattr(image, "read"):
            image = image.read()  # a stream is read once; the bytes serve both descriptions
        query = self.describe(image, collection=collection, recipe=recipe, box=box, name=name, reduced_decode=True)
        if verifying:
            features = self.describe_locally(image, collection=collection, recipe=recipe, box=box, name=name)
            rerankers = [r.for_query(features) if isinstance(r, SpatialVerification) and r.query_features is None
                         else r for r in rerankers]  # fmt: skip
        described = time.perf_counter()
        ranking = self.rank(loaded, query, metric, k, exact=exact, rerankers=rerankers)
        searched = time.perf_counter()
        rows = ranking.rows
        similarities = cosine_similarity(exact_distances(loaded.descriptors[rows], query, Metric.COSINE))
        record = self.record(collection)
        warnings = self._warnings.get((collection, recipe), ())
        if not record.images_found and not record.thumbnails_only:
            warnings += (record.missing_images_message(),)
        images = loaded.manifest.images
        inliers = [None] * len(rows) if ranking.inliers is None else [int(n) if n >= 0 else None for n in ranking.inliers]
        hits = [
            Hit(position, images[row], record.root / images[row], float(distance), float(similarity), count)
            for position, (row, distance, similarity, count) in enumerate(
                zip(rows, ranking.distances, similarities, inliers), start=1
            )
        ]
        return SearchResult(
            hits=hits,
            collection=collection,
            recipe=recipe,
            metric=metric,
            exact=ranking.exact,
            describe_seconds=described - started,
            search_seconds=searched - described,
            untrained=loaded.manifest.untrained,
            warnings=warnings,
        )
