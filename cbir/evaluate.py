"""mAP on a collection's ground-truth queries, written as files the app's evaluation tab reads.

    python -m cbir.evaluate --collection oxford5k --backbones all

For every recipe x metric x query mode ("cropped" to the ground-truth box, the standard protocol;
and "full", the whole query image, as a user uploading a photo would): rank the whole collection
by exact search (AP needs the full ranking) with the same `rank` the search uses, and score it
under every protocol the ground truth speaks (`cbir.protocols`); also score the top 100 returned
by the index's store, so the cost of approximate search is visible.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from cbir import atomic
from cbir.backbones import BACKBONES, parse_backbones
from cbir.trunks import keras_versions
from cbir.datasets.model import ids_to_paths, image_id
from cbir.distances import Metric
from cbir.errors import CbirError
from cbir.index import LoadedIndex, Manifest
from cbir.layout import CollectionRecord, IndexLayout, IndexLoadError, build_command
from cbir.metrics import QueryScores, average_precision, interpolated_precision_11, mean_scores, score_query
from cbir.pooling import Pooling
from cbir.protocols import Protocol, QueryMode, get_protocol, protocols_for
from cbir.ranking import QUERY_EXPANSION_ALPHA, QUERY_EXPANSION_NEIGHBOURS, AlphaQueryExpansion, Reranker
from cbir.search import SearchEngine

logger = logging.getLogger(__name__)

RESULTS_SCHEMA_VERSION = 2
READABLE_RESULTS_SCHEMAS = (1, 2)
RESULTS_FILE = "results.json"
PER_QUERY_FILE = "per_query.csv"
PR_CURVES_FILE = "pr_curves.png"
STORE_DEPTH = 100

PROTOCOL_NOTE = (
    "Ignored images (junk) are removed from the ranking before scoring; queries without positives are "
    "left out of the means. mAP (Oxford) uses the dataset's own compute_ap (trapezoidal); mAP is standard "
    "non-interpolated AP over the full ranking; mAP 11-pt is 11-point interpolated AP. Rankings come from "
    "exact search over the whole collection; mAP@100 (store) scores the top 100 returned by the index's "
    "store (Annoy by default; positives beyond it count as missed). 'cropped' queries use the ground-truth "
    "box (standard); 'full' queries use the whole query image."
)
STUDY_MEASURE_NOTE = (
    "The study's figures score only the top G results (G = number of positives), keep junk and ignore "
    "positives missed in the top G, so they are not comparable with the standard mAP; the 'study mAP' "
    "columns recompute them with this project's descriptors for a like-for-like comparison."
)


class EvaluationError(CbirError):
    """A collection or index that cannot be evaluated as asked; the message says what to do."""


def study_reported() -> dict[str, Any]:
    """The study's own tables, as it reported them (never mixed with measured numbers)."""
    text = resources.files("cbir").joinpath("data/study_reported.json").read_text()
    return json.loads(text)


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

    def __post_init__(self) -> None:
        self.metrics = [Metric.parse(metric) for metric in self.metrics]
        self.query_modes = [QueryMode(mode) for mode in self.query_modes]

    def rerankings(self) -> list[tuple[str, tuple[Reranker, ...]]]:
        """(label, re-rankers) of each ranking the evaluation scores: "" is the plain ranking."""
        plain: list[tuple[str, tuple[Reranker, ...]]] = [("", ())]
        return plain + ([(self.query_expansion.label, (self.query_expansion,))] if self.query_expansion else [])


@dataclass
class QueryRun:
    """One query of one recipe x metric x mode under one protocol: its scores and what it cost."""

    query: str
    scores: QueryScores | None
    ap_at_100_store: float | None
    describe_seconds: float
    exact_seconds: float
    store_seconds: float
    eleven_point: np.ndarray | None  # interpolated precision at recall 0.0 .. 1.0


def _from_known_fields(cls, data: dict[str, Any]):
    """A dataclass from a JSON object, ignoring keys it does not have (written by other versions)."""
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class RowKey:
    recipe: str
    protocol: str
    metric: str
    query_mode: str
    reranking: str = ""  # "" (none) or a re-ranker's label, e.g. "αQE (n = 50, α = 3)"


@dataclass
class ResultRow:
    """One row of the results table: the means over a protocol's queries."""

    recipe: str
    backbone: str
    protocol: str
    metric: str
    query_mode: str
    weights: str
    untrained: bool
    store: str
    map_oxford: float
    map: float
    map_11point: float
    map_at_100_store: float
    mp_at_1: float
    mp_at_5: float
    mp_at_10: float
    study_map: float
    study_map_11point: float
    mean_query_seconds: float  # what a user of the app waits for: descriptor + store search
    mean_describe_seconds: float
    mean_exact_search_seconds: float
    mean_store_search_seconds: float
    n_queries: int
    n_skipped: int
    n_images: int
    input_size: int
    skipped_queries: list[str] = field(default_factory=list)
    # revisitop's mP@k (cut-off at the last positive when that comes earlier: cbir.metrics)
    mp_at_1_revisitop: float = float("nan")
    mp_at_5_revisitop: float = float("nan")
    mp_at_10_revisitop: float = float("nan")
    reranking: str = ""
    # The recipe, column by column (rows written before recipes were the study's descriptor).
    pooling: str = "gap"
    scales: str = "1"
    whitening: str = ""  # "paris6k, 512-d"; "" for none; "(same collection)" when learned on itself
    dim: int = 0

    @property
    def key(self) -> RowKey:
        return RowKey(self.recipe, self.protocol, self.metric, self.query_mode, self.reranking)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ResultRow:
        data = dict(data)
        if "recipe" not in data:  # results written before recipes and protocols (schema 1)
            data.update(recipe=data["backbone"], protocol="standard", store="annoy")
            data["map_at_100_store"] = data.pop("map_at_100_annoy", float("nan"))
            data["mean_store_search_seconds"] = data.pop("mean_annoy_search_seconds", float("nan"))
        return _from_known_fields(cls, data)


@dataclass
class PrCurve:
    recipe: str
    protocol: str
    metric: str
    query_mode: str
    untrained: bool
    precision: list[float]  # mean 11-point interpolated precision at recall 0.0 .. 1.0
    reranking: str = ""

    @property
    def key(self) -> RowKey:
        return RowKey(self.recipe, self.protocol, self.metric, self.query_mode, self.reranking)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PrCurve:
        data = dict(data)
        if "recipe" not in data:
            data.update(recipe=data["backbone"], protocol="standard")
        return _from_known_fields(cls, data)


@dataclass
class Results:
    collection: str
    rows: list[ResultRow]
    pr_curves: list[PrCurve]
    protocols: dict[str, str]  # protocol name -> description
    created: str
    versions: dict[str, str]
    note: str = PROTOCOL_NOTE
    study_measure_note: str = STUDY_MEASURE_NOTE
    files: dict[str, str] = field(default_factory=lambda: {"per_query": PER_QUERY_FILE, "pr_curves": PR_CURVES_FILE})
    schema_version: int = RESULTS_SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Results:
        return cls(
            collection=data["collection"],
            rows=[ResultRow.from_json(row) for row in data.get("rows", [])],
            pr_curves=[PrCurve.from_json(curve) for curve in data.get("pr_curves", [])],
            protocols=data.get("protocols", {"standard": data.get("protocol", "")}),
            created=data.get("created", ""),
            versions=data.get("versions", {}),
            note=data.get("note", data.get("protocol", PROTOCOL_NOTE)),
            files=data.get("files", {"per_query": PER_QUERY_FILE, "pr_curves": PR_CURVES_FILE}),
            schema_version=data.get("schema_version", RESULTS_SCHEMA_VERSION),
        )


def results_folder(index_dir: Path, collection: str) -> Path:
    return IndexLayout(index_dir).results_dir(collection)


def load_results(index_dir: Path, collection: str) -> Results | None:
    """The results of a collection, or None if it has not been evaluated (or not readably)."""
    path = results_folder(index_dir, collection) / RESULTS_FILE
    try:
        data = json.loads(path.read_text())
        if data.get("schema_version") not in READABLE_RESULTS_SCHEMAS:
            return None
        return Results.from_json(data)
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def _query_paths(loaded: LoadedIndex, record: CollectionRecord) -> tuple[dict[str, str], frozenset[str]]:
    """Image id -> relative path over the indexed and the skipped images and the query images kept
    out of the database (the revisited datasets), and the ambiguous ids."""
    manifest = loaded.manifest
    return ids_to_paths(list(manifest.images) + [entry.image for entry in manifest.skipped] + list(record.query_images))


@dataclass
class RankingExport:
    """What revisitop's own tools read, for one recipe: the standard (cropped) query descriptors, one
    row per query in the ground truth's order, and each one's plain cosine ranking as 0-based indices
    into the ground truth's database order, one column per query (database size x queries)."""

    descriptors: list[np.ndarray] = field(default_factory=list)
    ranks: list[np.ndarray] = field(default_factory=list)

    def write(self, folder: Path, recipe: str) -> list[Path]:
        paths = [folder / f"{recipe}.queries.npy", folder / f"{recipe}.ranks.npy"]
        arrays = [np.stack(self.descriptors).astype(np.float32), np.stack(self.ranks, axis=1).astype(np.int64)]
        for path, array in zip(paths, arrays):
            atomic.write_file(path, lambda temporary, array=array: np.save(temporary, array))
        return paths


def _database_positions(ranking: Sequence[str], order: Sequence[str]) -> np.ndarray:
    """A ranking of image ids as indices into `order`; images of `order` the ranking lacks (files
    that could not be read) are put last, so every column is a permutation as revisitop expects."""
    position = {image: index for index, image in enumerate(order)}
    ranked = [position[image] for image in ranking if image in position]
    seen = set(ranked)
    return np.array(ranked + [index for index in range(len(order)) if index not in seen], np.int64)


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
            exported = export is not None and mode is QueryMode.CROPPED
            if exported:
                export.descriptors.append(np.asarray(descriptor, np.float32))
            for metric, (reranking, rerankers) in itertools.product(settings.metrics, rerankings):
                started = time.perf_counter()
                full = engine.rank(loaded, descriptor, metric, None, rerankers=rerankers)
                exact_seconds = time.perf_counter() - started
                started = time.perf_counter()
                depth = min(STORE_DEPTH, len(loaded))
                top = engine.rank(loaded, descriptor, metric, depth, exact=False, rerankers=rerankers)
                store_seconds = time.perf_counter() - started
                ranking = [ids[row] for row in full.rows]
                top_ranking = [ids[row] for row in top.rows]
                if exported and metric is Metric.COSINE and not reranking:
                    export.ranks.append(_database_positions(ranking, record.database_order))
                for protocol in protocols:
                    positives, ignored = protocol.positives(query), protocol.ignored_ids(query)
                    scores = score_query(ranking, positives, ignored)
                    ap_at_100 = eleven = None
                    if scores is not None:
                        ap_at_100 = average_precision(top_ranking, positives, ignored)
                        eleven = interpolated_precision_11(ranking, positives, ignored)
                    runs[RowKey(recipe, protocol.name, metric.value, mode.value, reranking)].append(
                        QueryRun(query.name, scores, ap_at_100, describe_seconds, exact_seconds, store_seconds, eleven)
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
        mean_query_seconds=describe + store_search,
        mean_describe_seconds=describe,
        mean_exact_search_seconds=_mean([run.exact_seconds for run in runs]),
        mean_store_search_seconds=store_search,
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
            per_query.extend(_per_query_rows(key, query_runs))
    results = write_results(settings.index_dir, settings.collection, rows, curves, per_query, protocols)
    for recipe, export in exports.items():
        if export is not None:
            written = export.write(results_folder(settings.index_dir, settings.collection), recipe)
            names = ", ".join(path.name for path in written)
            logger.info("%s: query descriptors and rankings for revisitop's tools: %s", recipe, names)
    return results


PER_QUERY_COLUMNS = [
    "recipe", "protocol", "metric", "query_mode", "reranking", "query", "n_positives", "ap_oxford", "ap",
    "ap_11point", "ap_at_100_store", "p_at_1", "p_at_5", "p_at_10", "p_at_1_revisitop", "p_at_5_revisitop",
    "p_at_10_revisitop", "study_ap", "study_ap_11point",
    "describe_seconds", "exact_search_seconds", "store_search_seconds",
]  # fmt: skip


def _per_query_rows(key: RowKey, runs: list[QueryRun]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        s = run.scores
        rows.append(
            {
                "recipe": key.recipe,
                "protocol": key.protocol,
                "metric": key.metric,
                "query_mode": key.query_mode,
                "reranking": key.reranking,
                "query": run.query,
                "n_positives": s.n_positives if s else 0,
                "ap_oxford": s.ap_oxford if s else "",
                "ap": s.ap if s else "",
                "ap_11point": s.ap_11point if s else "",
                "ap_at_100_store": run.ap_at_100_store if s else "",
                "p_at_1": s.precision_at[1] if s else "",
                "p_at_5": s.precision_at[5] if s else "",
                "p_at_10": s.precision_at[10] if s else "",
                "p_at_1_revisitop": s.precision_at_revisitop[1] if s else "",
                "p_at_5_revisitop": s.precision_at_revisitop[5] if s else "",
                "p_at_10_revisitop": s.precision_at_revisitop[10] if s else "",
                "study_ap": s.study_ap if s else "",
                "study_ap_11point": s.study_ap_11point if s else "",
                "describe_seconds": run.describe_seconds,
                "exact_search_seconds": run.exact_seconds,
                "store_search_seconds": run.store_seconds,
            }
        )
    return rows


def _csv_key(row: dict[str, Any]) -> RowKey:
    recipe, protocol = row.get("recipe") or row["backbone"], row.get("protocol") or "standard"
    return RowKey(recipe, protocol, row["metric"], row["query_mode"], row.get("reranking") or "")


def _sort_key(key: RowKey) -> tuple:
    order = {name: i for i, name in enumerate(BACKBONES)}
    return (order.get(key.recipe.split("-")[0], 99), key.recipe, key.protocol, key.metric, key.query_mode, key.reranking)


def write_results(
    index_dir: Path,
    collection: str,
    rows: list[ResultRow],
    curves: list[PrCurve],
    per_query: list[dict[str, Any]],
    protocols: Sequence[Protocol],
) -> Results:
    """Write results.json, per_query.csv and pr_curves.png atomically, keeping earlier rows of
    recipe x protocol x metric x mode combinations that this run did not evaluate."""
    folder = results_folder(index_dir, collection)
    folder.mkdir(parents=True, exist_ok=True)
    fresh = {row.key for row in rows}
    earlier = load_results(index_dir, collection)
    if earlier is not None:
        rows = [r for r in earlier.rows if r.key not in fresh] + rows
        curves = [c for c in earlier.pr_curves if c.key not in fresh] + curves
    rows.sort(key=lambda r: _sort_key(r.key))
    curves.sort(key=lambda c: _sort_key(c.key))

    per_query_path = folder / PER_QUERY_FILE
    if per_query_path.exists():
        with open(per_query_path, newline="") as handle:
            kept = [r for r in csv.DictReader(handle) if _csv_key(r) not in fresh]
        for row in kept:  # rows of an older file get the columns this one has
            row.setdefault("recipe", row.get("backbone"))
            row.setdefault("reranking", "")
            row.setdefault("protocol", "standard")
            row.setdefault("ap_at_100_store", row.get("ap_at_100_annoy", ""))
            row.setdefault("store_search_seconds", row.get("annoy_search_seconds", ""))
        per_query = kept + per_query
    per_query.sort(key=lambda r: (_sort_key(_csv_key(r)), r["query"]))

    described = dict(earlier.protocols) if earlier is not None else {}
    described.update({protocol.name: protocol.description for protocol in protocols})
    results = Results(
        collection=collection,
        rows=rows,
        pr_curves=curves,
        protocols=described,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        versions=keras_versions() | {"numpy": np.__version__},
    )
    atomic.write_file(folder / PER_QUERY_FILE, lambda path: _write_csv(path, per_query))
    atomic.write_file(folder / PR_CURVES_FILE, lambda path: plot_pr_curves(curves, collection, path))
    # Written last, so a results file never points at a curve picture from an older run.
    atomic.write_text(folder / RESULTS_FILE, json.dumps(results.to_json(), indent=1))
    return results


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=PER_QUERY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot_pr_curves(curves: list[PrCurve], collection: str, path: Path) -> None:
    """Mean 11-point interpolated precision/recall, one line per recipe (and protocol, where a
    collection has several), a panel per query mode (cosine metric, the app's default)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [mode.value for mode in QueryMode if any(c.query_mode == mode.value for c in curves)] or ["cropped"]
    several = len({c.protocol for c in curves}) > 1
    figure, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4.2), squeeze=False)
    recall = np.linspace(0.0, 1.0, 11)
    for axis, mode in zip(axes[0], modes):
        for curve in curves:
            if curve.query_mode != mode or curve.metric != Metric.COSINE.value or not curve.precision:
                continue
            label = curve.recipe + (f" ({curve.protocol})" if several else "") + (" (untrained)" if curve.untrained else "")
            axis.plot(recall, curve.precision, marker="o", markersize=3, label=label)
        axis.set(xlabel="recall", ylabel="interpolated precision", xlim=(0, 1), ylim=(0, 1.02))
        axis.set_title(f"{collection}: {mode} queries, cosine")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    with open(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)
    plt.close(figure)


@dataclass(frozen=True)
class RevisitedRow:
    """One line of the table papers print for ROxford / RParis: E / M / H mAP and mP@10 (revisitop's
    rule) of one recipe x metric x query mode x re-ranking."""

    recipe: str
    metric: str
    query_mode: str
    reranking: str
    untrained: bool
    map: dict[str, float]  # protocol -> mAP (revisitop's compute_ap, the trapezoidal one)
    mp_at_10: dict[str, float]  # protocol -> mP@10, revisitop's rule


REVISITED_PROTOCOLS = ("easy", "medium", "hard")


def revisited_table(results: Results) -> list[RevisitedRow]:
    """The results of a revisited collection as papers print them (empty for other collections)."""
    lines: dict[tuple[str, str, str, str], RevisitedRow] = {}
    for row in results.rows:
        if row.protocol not in REVISITED_PROTOCOLS:
            continue
        key = (row.recipe, row.metric, row.query_mode, row.reranking)
        line = lines.setdefault(key, RevisitedRow(*key, row.untrained, {}, {}))
        line.map[row.protocol] = row.map_oxford
        line.mp_at_10[row.protocol] = row.mp_at_10_revisitop
    return list(lines.values())


def format_summary(results: Results) -> str:
    """A table a person can read, one row per recipe x protocol x metric x query mode."""
    names = {id(row): row.recipe + (f" + {row.reranking}" if row.reranking else "") + ("*" if row.untrained else "")
             for row in results.rows}  # fmt: skip
    width = max([20] + [len(name) + 1 for name in names.values()])
    header = (
        f"{'recipe':<{width}} {'protocol':<9} {'metric':<9} {'queries':<7} {'mAP(Ox)':>8} {'mAP':>7} {'mAP11':>7} "
        f"{'mAP@100S':>9} {'mP@1':>6} {'mP@10':>6} {'studyAP':>8} {'ms/query':>9}"
    )
    lines = [f"{results.collection}: {len(results.rows)} rows", header, "-" * len(header)]
    for row in results.rows:
        name = names[id(row)]
        lines.append(
            f"{name:<{width}} {row.protocol:<9} {row.metric:<9} {row.query_mode:<7} {row.map_oxford:>8.3f} {row.map:>7.3f} "
            f"{row.map_11point:>7.3f} {row.map_at_100_store:>9.3f} {row.mp_at_1:>6.3f} "
            f"{row.mp_at_10:>6.3f} {row.study_map:>8.3f} {1000 * row.mean_query_seconds:>9.1f}"
        )
    if any(row.untrained for row in results.rows):
        lines.append("* untrained (random) weights: these numbers measure nothing but the code path")
    lines.append("mAP@100S: mAP of the top 100 returned by the index's store (Annoy by default)")
    revisited = revisited_table(results)
    if revisited:
        lines.append("")
        lines.append("As papers print it (revisitop's mAP and mP@10): E / M / H")
        for line in revisited:
            name = line.recipe + (f" + {line.reranking}" if line.reranking else "") + ("*" if line.untrained else "")
            cells = " ".join(f"{100 * line.map.get(p, float('nan')):6.2f}" for p in REVISITED_PROTOCOLS)
            precision = " ".join(f"{100 * line.mp_at_10.get(p, float('nan')):6.2f}" for p in REVISITED_PROTOCOLS)
            lines.append(f"{name:<{width}} {line.metric:<9} {line.query_mode:<7} mAP {cells}   mP@10 {precision}")
    lines.append(f"files: {results.files}")
    return "\n".join(lines)


def recipes_to_evaluate(text: str, pooling: Pooling | None, built: Sequence[str]) -> tuple[list[str], list[str]]:
    """(recipe keys to evaluate, keys asked for that are not built) for a --backbones value.

    'all' means every backbone of the registry, as in build_index.py: the ones not built are
    reported and left out. Backbones named one by one must be built.
    """
    from cbir.recipe import Recipe

    keys = [Recipe.create(b.name, pooling=pooling, weights="none").key for b in parse_backbones(text)]
    if text.strip().lower() == "all":
        return [k for k in keys if k in built], [k for k in keys if k not in built]
    return keys, []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cbir.evaluate",
        description="mAP of built indexes on a collection's ground-truth queries (for a collection without ground "
        "truth: the self-retrieval evaluation, edited photos finding their source); writes results files "
        "under INDEX_DIR/COLLECTION/evaluation/ that the app shows.",
    )
    parser.add_argument(
        "--collection", "--dataset", "--name", dest="collection", default="oxford5k",
        help="the collection to evaluate (oxford5k, paris6k, or the --name it was built with)",
    )  # fmt: skip
    parser.add_argument(
        "--backbones",
        default="all",
        help="comma-separated backbones, or 'all' (every backbone, as in build_index.py; those not built "
        "for the collection are listed and left out)",
    )
    parser.add_argument("--pooling", choices=[p.value for p in Pooling],
                        help="default: each backbone's own descriptor (gap for the study's six, cls for a ViT)")
    parser.add_argument(
        "--recipes",
        help="comma-separated recipe keys (index folder names such as xception-gem-w512-paris6k), or 'all': every "
        "index built for the collection. Replaces --backbones and --pooling",
    )
    parser.add_argument("--index-dir", type=Path, default=Path(os.environ.get("CBIR_INDEX_DIR", "indexes")))
    parser.add_argument("--metrics", default="cosine,euclidean")
    parser.add_argument("--modes", default="cropped,full", help="cropped (standard), full, or both")
    parser.add_argument("--protocols", help="comma-separated protocols (default: every one the ground truth has)")
    parser.add_argument(
        "--no-query-expansion", action="store_true", help="plain rankings only (default: also rows with αQE)"
    )
    parser.add_argument("--qe-n", type=int, default=QUERY_EXPANSION_NEIGHBOURS, help="αQE: top results averaged in")
    parser.add_argument("--qe-alpha", type=float, default=QUERY_EXPANSION_ALPHA, help="αQE: weight = similarity^α")
    parser.add_argument(
        "--self-queries",
        type=int,
        default=100,
        help="collections without ground truth: images edited into queries (self-retrieval evaluation)",
    )
    parser.add_argument("--no-progress", action="store_true")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        modes = [QueryMode(m.strip()) for m in arguments.modes.split(",") if m.strip()]
    except ValueError:
        parser.error(f"--modes takes {', '.join(m.value for m in QueryMode)}")
    try:
        return run(arguments, modes)
    except CbirError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def run(arguments: argparse.Namespace, modes: list[QueryMode]) -> int:
    engine = SearchEngine(arguments.index_dir)
    built = [info.key for info in engine.available() if info.collection == arguments.collection]
    if arguments.recipes:
        asked = [key.strip() for key in arguments.recipes.split(",") if key.strip()]
        recipes = built if arguments.recipes.strip().lower() == "all" else asked
        not_built = [key for key in asked if key not in built and key.lower() != "all"]
        if not_built:
            raise IndexLoadError(
                f"not built for {arguments.collection}: {', '.join(not_built)}. Built: {', '.join(built) or 'nothing'}"
            )
    else:
        recipes, not_built = recipes_to_evaluate(arguments.backbones, arguments.pooling and Pooling(arguments.pooling), built)
    if not_built and recipes:
        logger.info("not built for %s, left out: %s", arguments.collection, ", ".join(not_built))
    if not recipes:
        raise IndexLoadError(
            f"nothing is built for {arguments.collection}. Build it: {build_command(arguments.collection)}"
        )
    if not engine.record(arguments.collection).queries:
        from cbir.self_retrieval import evaluate_self_retrieval, format_self_retrieval

        metrics = [Metric.parse(m.strip()) for m in arguments.metrics.split(",") if m.strip()]
        results = evaluate_self_retrieval(engine, arguments.collection, recipes, metrics=metrics,
                                          queries=arguments.self_queries, progress=not arguments.no_progress)  # fmt: skip
        print(format_self_retrieval(results))
        return 0
    settings = EvaluationSettings(
        index_dir=arguments.index_dir,
        collection=arguments.collection,
        recipes=recipes,
        metrics=[Metric.parse(m.strip()) for m in arguments.metrics.split(",") if m.strip()],
        query_modes=modes,
        protocols=[get_protocol(p.strip()) for p in arguments.protocols.split(",")] if arguments.protocols else None,
        progress=not arguments.no_progress,
        query_expansion=None if arguments.no_query_expansion else AlphaQueryExpansion(arguments.qe_n, arguments.qe_alpha),
    )
    print(format_summary(evaluate_collection(settings, engine)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
