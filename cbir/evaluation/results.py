"""The results of an evaluation as they are kept on disk: the schema of results.json, reading it
(files written by earlier versions included), merging a run into earlier rows and writing it."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from cbir import atomic
from cbir.backbones import BACKBONES
from cbir.trunks import keras_versions
from cbir.layout import IndexLayout
from cbir.metrics import QueryScores

RESULTS_SCHEMA_VERSION = 2
READABLE_RESULTS_SCHEMAS = (1, 2)
RESULTS_FILE = "results.json"
PER_QUERY_FILE = "per_query.csv"
PR_CURVES_FILE = "pr_curves.png"

# Both notes are stored in every results file (the page shows the stored one), so they are schema.
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


def study_reported() -> dict[str, Any]:
    """The study's own tables, as it reported them (never mixed with measured numbers)."""
    text = resources.files("cbir").joinpath("data/study_reported.json").read_text()
    return json.loads(text)


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
    local_describe_seconds: float = 0.0  # the query's local features, for spatial verification
    # What re-ranking added: the local description (if verified) and the re-rankers' time in the top-100 search.
    added_seconds: float = 0.0


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

    def order(self) -> tuple:
        """Where this row goes in the files: backbones in registry order, then by name."""
        position = {name: i for i, name in enumerate(BACKBONES)}
        backbone = position.get(self.recipe.split("-")[0], 99)
        return (backbone, self.recipe, self.protocol, self.metric, self.query_mode, self.reranking)


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
    # What the re-ranking added per query over the plain ranking (0 for a plain row): the query's
    # local description when verified, and the re-rankers' own time in the top-100 search. Rows
    # written before these were measured read as NaN (not measured).
    mean_added_seconds: float = float("nan")
    mean_local_describe_seconds: float = float("nan")

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


def merge_results(
    earlier: Results | None,
    collection: str,
    rows: list[ResultRow],
    curves: list[PrCurve],
    protocols: Mapping[str, str],
) -> Results:
    """This run's rows and curves with the earlier ones of recipe x protocol x metric x mode
    combinations it did not evaluate, in file order, stamped with now and the library versions."""
    fresh = {row.key for row in rows}
    if earlier is not None:
        rows = [r for r in earlier.rows if r.key not in fresh] + rows
        curves = [c for c in earlier.pr_curves if c.key not in fresh] + curves
    rows.sort(key=lambda r: r.key.order())
    curves.sort(key=lambda c: c.key.order())
    described = dict(earlier.protocols) if earlier is not None else {}
    described.update(protocols)
    return Results(
        collection=collection,
        rows=rows,
        pr_curves=curves,
        protocols=described,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        versions=keras_versions() | {"numpy": np.__version__},
    )


def save_results(folder: Path, results: Results) -> None:
    atomic.write_text(folder / RESULTS_FILE, json.dumps(results.to_json(), indent=1))
