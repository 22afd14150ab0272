"""The evaluation loop: every query of a collection's ground truth, searched with each built recipe
x metric x query mode ("cropped" to the ground-truth box, the standard protocol; and "full", the
whole query image, as a user uploading a photo would), ranked over the whole collection by exact
search (AP needs the full ranking) with the same `rank` the search uses, and scored under every
protocol the ground truth speaks (`cbir.protocols`); the top 100 returned by the index's store are
scored too, so the cost of approximate search is visible.

Each re-ranking the settings ask for (αQE, diffusion, spatial verification and their combinations:
`EvaluationSettings.rerankings`) gives rows of its own, with the added cost per query: the query's
local description when it is verified, plus the re-rankers' own time in the top-100 search."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cbir.datasets.model import ids_to_paths, image_id
from cbir.distances import Metric
from cbir.errors import CbirError
from cbir.evaluation.results import PrCurve, QueryRun, ResultRow, Results, RowKey, results_folder
from cbir.evaluation.writers import RankingExport, per_query_rows, write_results
from cbir.index import LoadedIndex, Manifest
from cbir.layout import CollectionRecord, IndexLoadError, build_command
from cbir.metrics import average_precision, interpolated_precision_11, mean_scores, score_query
from cbir.protocols import Protocol, QueryMode, protocols_for
from cbir.diffusion import Diffusion
from cbir.ranking import AlphaQueryExpansion, Ranking, Reranker
from cbir.search import SearchEngine
from cbir.verification import SpatialVerification

logger = logging.getLogger(__name__)

STORE_DEPTH = 100


class EvaluationError(CbirError):
    """A collection or index that cannot be evaluated as asked; the message says what to do."""


class MissingLocalFeatures(EvaluationError):
    """Spatial verification was asked of an index built without local features."""


@dataclass
class EvaluationSettings:
    index_dir: Path
    collection: str
    recipes: Sequence[str] | None = None  # recipe keys; None: every index built for the collection
    metrics: Sequence[Metric] = (Metric.COSINE, Metric.EUCLIDEAN)
    query_modes: Sequence[QueryMode] = (QueryMode.CROPPED, QueryMode.FULL)
    protocols: Sequence[Protocol] | None = None  # None: every protocol the ground truth speaks
    progress: bool = True
    # Rows with this re-ranking too, beside the plain ones (None: plain rows only).
    query_expansion: AlphaQueryExpansion | None = field(default_factory=AlphaQueryExpansion)
    # Rows re-ranked by diffusion too: alone, and after αQE when that is on (None: no such rows).
    diffusion: Diffusion | None = None
    # Rows re-ranked by spatial verification too: alone, then αQE from the verified ranking, and
    # diffusion seeded by it when diffusion is on (None: no such rows; the index needs local features).
    verification: SpatialVerification | None = None

    def __post_init__(self) -> None:
        self.metrics = [Metric.parse(metric) for metric in self.metrics]
        self.query_modes = [QueryMode(mode) for mode in self.query_modes]

    def rerankings(self) -> list[tuple[str, tuple[Reranker, ...]]]:
        """(label, re-rankers) of each ranking the evaluation scores: "" is the plain ranking."""
        found: list[tuple[str, tuple[Reranker, ...]]] = [("", ())]
        if self.query_expansion:
            found.append((self.query_expansion.label, (self.query_expansion,)))
        if self.diffusion:
            found.append((self.diffusion.label, (self.diffusion,)))
        if self.query_expansion and self.diffusion:
            found.append((f"{self.query_expansion.label} + {self.diffusion.label}", (self.query_expansion, self.diffusion)))
        if self.verification:
            # Verification first: what it verifies is what αQE expands with and diffusion starts from.
            found.append((self.verification.label, (self.verification,)))
            for then in (self.query_expansion, self.diffusion):
                if then:
                    found.append((f"{self.verification.label} + {then.label}", (self.verification, then)))
        return found


@dataclass
class _TimedReranker:
    """A re-ranker that adds the time it takes to `seconds`, so the evaluation measures a re-ranking
    inside the one `rank` path rather than by subtracting two noisy timings."""

    reranker: Reranker
    seconds: float = 0.0

    @property
    def depth(self) -> int:
        return getattr(self.reranker, "depth", 0)

    def __call__(self, index: LoadedIndex, query: np.ndarray, metric: Metric, ranking: Ranking) -> Ranking:
        started = time.perf_counter()
        try:
            return self.reranker(index, query, metric, ranking)
        finally:
            self.seconds += time.perf_counter() - started


def _check_local_features(loaded: LoadedIndex, collection: str, recipe: str) -> None:
    if not loaded.has_local_features:
        raise MissingLocalFeatures(
            f"{collection}/{recipe} has no local features, so --verify cannot re-rank it. Build them: "
            f"{loaded.manifest.rebuild_command(loaded.folder)} --local-features"
        )


def _query_paths(loaded: LoadedIndex, record: CollectionRecord) -> tuple[dict[str, str], frozenset[str]]:
    """Image id -> relative path over the indexed and the skipped images and the query images kept
    out of the database (the revisited datasets), and the ambiguous ids."""
    manifest = loaded.manifest
    return ids_to_paths(list(manifest.images) + [entry.image for entry in manifest.skipped] + list(record.query_images))


def evaluate_recipe(
    engine: SearchEngine,
    record: CollectionRecord,
    recipe: str,
    protocols: Sequence[Protocol],
    settings: EvaluationSettings,
    export: RankingExport | None = None,
) -> dict[RowKey, list[QueryRun]]:
    """Runs of every query, per protocol x metric x query mode, for one recipe. With `export`, the
    query descriptors and rankings revisitop's tools read are collected into it."""
    loaded = engine.index(record.name, recipe)
    ids = [image_id(relpath) for relpath in loaded.manifest.images]
    paths, ambiguous = _query_paths(loaded, record)
    rerankings = settings.rerankings()
    verifying = any(isinstance(r, SpatialVerification) for _, rerankers in rerankings for r in rerankers)
    runs: dict[RowKey, list[QueryRun]] = {
        RowKey(recipe, p.name, m.value, q.value, label): []
        for label, _ in rerankings
        for p in protocols
        for m in settings.metrics
        for q in settings.query_modes
    }
    # One untimed pass first: building the network and tracing it for single images is set-up, not
    # query time, and would otherwise land on whichever query happens to come first.
    extractor = engine.extractor_for(loaded)
    extractor.describe(np.zeros((1, extractor.input_size, extractor.input_size, 3), np.uint8))
    bar = None
    if settings.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(record.queries) * len(settings.query_modes), desc=f"evaluate {recipe}", unit="query")
    for mode in settings.query_modes:
        for query in record.queries:
            if query.image not in paths:
                why = "names several images" if query.image in ambiguous else "is not in the collection"
                raise EvaluationError(f"query image {query.image} of {query.name} {why}")
            started = time.perf_counter()
            descriptor = engine.describe(
                record.root / paths[query.image],
                collection=record.name,
                recipe=recipe,
                box=query.box if mode is QueryMode.CROPPED else None,
                name=paths[query.image],
            )
            describe_seconds = time.perf_counter() - started
            features, local_seconds = None, 0.0
            if verifying:
                started = time.perf_counter()
                features = engine.describe_locally(record.root / paths[query.image], collection=record.name, recipe=recipe,
                                                   box=query.box if mode is QueryMode.CROPPED else None,
                                                   name=paths[query.image])  # fmt: skip
                local_seconds = time.perf_counter() - started
            exported = export is not None and mode is QueryMode.CROPPED
            if exported:
                export.descriptors.append(np.asarray(descriptor, np.float32))
            for metric, (reranking, rerankers) in itertools.product(settings.metrics, rerankings):
                rerankers = tuple(r.for_query(features) if isinstance(r, SpatialVerification) else r for r in rerankers)
                started = time.perf_counter()
                full = engine.rank(loaded, descriptor, metric, None, rerankers=rerankers)
                exact_seconds = time.perf_counter() - started
                # The added cost is timed in the top-100 search, the one a user of the page waits for.
                timed = [_TimedReranker(r) for r in rerankers]
                started = time.perf_counter()
                depth = min(STORE_DEPTH, len(loaded))
                top = engine.rank(loaded, descriptor, metric, depth, exact=False, rerankers=timed)
                store_seconds = time.perf_counter() - started
                uses_features = any(isinstance(r, SpatialVerification) for r in rerankers)
                added_seconds = (local_seconds if uses_features else 0.0) + sum(t.seconds for t in timed)
                ranking = [ids[row] for row in full.rows]
                top_ranking = [ids[row] for row in top.rows]
                if exported and metric is Metric.COSINE and not reranking:
                    export.add_ranking(ranking, record.database_order)
                for protocol in protocols:
                    positives, ignored = protocol.positives(query), protocol.ignored_ids(query)
                    scores = score_query(ranking, positives, ignored)
                    ap_at_100 = eleven = None
                    if scores is not None:
                        ap_at_100 = average_precision(top_ranking, positives, ignored)
                        eleven = interpolated_precision_11(ranking, positives, ignored)
                    runs[RowKey(recipe, protocol.name, metric.value, mode.value, reranking)].append(
                        QueryRun(query.name, scores, ap_at_100, describe_seconds, exact_seconds, store_seconds, eleven,
                                 local_seconds if uses_features else 0.0, added_seconds)  # fmt: skip
                    )
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return runs


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def summarise(key: RowKey, loaded: LoadedIndex, runs: list[QueryRun]) -> ResultRow:
    """One row of the results table."""
    manifest = loaded.manifest
    means = mean_scores([run.scores for run in runs])
    describe = _mean([run.describe_seconds for run in runs])
    local_describe = _mean([run.local_describe_seconds for run in runs])
    store_search = _mean([run.store_seconds for run in runs])
    return ResultRow(
        recipe=key.recipe,
        backbone=manifest.recipe.backbone,
        protocol=key.protocol,
        metric=key.metric,
        query_mode=key.query_mode,
        weights=manifest.recipe.weights_identity,
        untrained=manifest.untrained,
        store=manifest.store.kind,
        map_oxford=means["ap_oxford"],
        map=means["ap"],
        map_11point=means["ap_11point"],
        map_at_100_store=_mean([run.ap_at_100_store for run in runs if run.ap_at_100_store is not None]),
        mp_at_1=means["precision_at"].get(1, float("nan")),
        mp_at_5=means["precision_at"].get(5, float("nan")),
        mp_at_10=means["precision_at"].get(10, float("nan")),
        mp_at_1_revisitop=means["precision_at_revisitop"].get(1, float("nan")),
        mp_at_5_revisitop=means["precision_at_revisitop"].get(5, float("nan")),
        mp_at_10_revisitop=means["precision_at_revisitop"].get(10, float("nan")),
        reranking=key.reranking,
        study_map=means["study_ap"],
        study_map_11point=means["study_ap_11point"],
        mean_query_seconds=describe + local_describe + store_search,
        mean_describe_seconds=describe,
        mean_exact_search_seconds=_mean([run.exact_seconds for run in runs]),
        mean_store_search_seconds=store_search,
        mean_local_describe_seconds=local_describe,
        mean_added_seconds=_mean([run.added_seconds for run in runs]),
        n_queries=means["n_queries"],
        n_skipped=means["n_skipped"],
        n_images=len(manifest.images),
        input_size=manifest.recipe.input_size,
        skipped_queries=[run.query for run in runs if run.scores is None],
        pooling=manifest.recipe.pooling.value,
        scales=",".join(f"{scale:g}" for scale in manifest.recipe.scales),
        whitening=_whitening_label(manifest),
        dim=manifest.dim,
    )


def _whitening_label(manifest: Manifest) -> str:
    spec = manifest.recipe.whitening
    if spec is None:
        return ""
    same = manifest.whitening is not None and manifest.whitening.same_collection
    return f"{spec.source}{' (same collection)' if same else ''}, {manifest.dim}-d"


def evaluate_collection(settings: EvaluationSettings, engine: SearchEngine | None = None) -> Results:
    """Evaluate, write the results files (merged with earlier rows of other recipes), return them."""
    engine = engine or SearchEngine(settings.index_dir)
    record = engine.record(settings.collection)
    if not record.queries:
        raise EvaluationError(
            f"{settings.collection} has no ground-truth queries, so it has no mAP; its self-retrieval evaluation "
            f"(edited photos finding their source) runs with: python -m cbir.evaluate --collection {settings.collection}"
        )
    protocols = list(settings.protocols) if settings.protocols else protocols_for(record.queries)
    if not protocols:
        raise EvaluationError(f"no known protocol reads the labels of {settings.collection}'s ground truth")
    built = [info.key for info in engine.available() if info.collection == settings.collection]
    recipes = list(settings.recipes) if settings.recipes else built
    missing = [key for key in recipes if key not in built]
    if missing:
        backbones = ",".join(key.split("-")[0] for key in missing)
        raise IndexLoadError(
            f"no index for {', '.join(missing)} on {settings.collection}. Build it: "
            f"{build_command(settings.collection)} --backbones {backbones}"
        )
    if not recipes:
        raise IndexLoadError(f"nothing is built for {settings.collection}. Build it: {build_command(settings.collection)}")
    if not record.images_found:
        raise EvaluationError(record.missing_images_message())
    if settings.verification is not None:  # every recipe, before any query is described
        for recipe in recipes:
            _check_local_features(engine.index(settings.collection, recipe), settings.collection, recipe)
    rows, curves, per_query = [], [], []
    exports: dict[str, RankingExport] = {}
    for recipe in recipes:
        loaded = engine.index(settings.collection, recipe)
        exportable = (record.database_order and QueryMode.CROPPED in settings.query_modes
                      and Metric.COSINE in settings.metrics)  # fmt: skip
        export = exports[recipe] = RankingExport() if exportable else None
        runs = evaluate_recipe(engine, record, recipe, protocols, settings, export)
        for key, query_runs in runs.items():
            rows.append(summarise(key, loaded, query_runs))
            elevens = [run.eleven_point for run in query_runs if run.eleven_point is not None]
            precision = np.mean(elevens, axis=0).tolist() if elevens else []
            curves.append(PrCurve(key.recipe, key.protocol, key.metric, key.query_mode, loaded.manifest.untrained,
                                  precision, key.reranking))  # fmt: skip
            per_query.extend(per_query_rows(key, query_runs))
    results = write_results(settings.index_dir, settings.collection, rows, curves, per_query, protocols)
    for recipe, export in exports.items():
        if export is not None:
            written = export.write(results_folder(settings.index_dir, settings.collection), recipe)
            names = ", ".join(path.name for path in written)
            logger.info("%s: query descriptors and rankings for revisitop's tools: %s", recipe, names)
    return results


