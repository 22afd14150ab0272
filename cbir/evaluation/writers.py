"""The files an evaluation writes beside results.json: per_query.csv, pr_curves.png, and the query
descriptors and rankings in the layout revisitop's own tools read."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cbir import atomic
from cbir.distances import Metric
from cbir.evaluation.results import (
    PER_QUERY_FILE,
    PR_CURVES_FILE,
    PrCurve,
    QueryRun,
    ResultRow,
    Results,
    RowKey,
    load_results,
    merge_results,
    results_folder,
    save_results,
)
from cbir.protocols import Protocol, QueryMode

PER_QUERY_COLUMNS = [
    "recipe", "protocol", "metric", "query_mode", "reranking", "query", "n_positives", "ap_oxford", "ap",
    "ap_11point", "ap_at_100_store", "p_at_1", "p_at_5", "p_at_10", "p_at_1_revisitop", "p_at_5_revisitop",
    "p_at_10_revisitop", "study_ap", "study_ap_11point",
    "describe_seconds", "exact_search_seconds", "store_search_seconds", "local_describe_seconds", "added_seconds",
]  # fmt: skip


def per_query_rows(key: RowKey, runs: list[QueryRun]) -> list[dict[str, Any]]:
    """The lines of per_query.csv for one recipe x protocol x metric x mode x re-ranking."""
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
                "local_describe_seconds": run.local_describe_seconds,
                "added_seconds": run.added_seconds,
            }
        )
    return rows


def _csv_key(row: dict[str, Any]) -> RowKey:
    recipe, protocol = row.get("recipe") or row["backbone"], row.get("protocol") or "standard"
    return RowKey(recipe, protocol, row["metric"], row["query_mode"], row.get("reranking") or "")


def _earlier_per_query(path: Path, fresh: set[RowKey]) -> list[dict[str, Any]]:
    """The lines of an existing per_query.csv this run does not replace, with the columns of an
    older file renamed to today's."""
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        kept = [r for r in csv.DictReader(handle) if _csv_key(r) not in fresh]
    for row in kept:
        row.setdefault("recipe", row.get("backbone"))
        row.setdefault("reranking", "")
        row.setdefault("protocol", "standard")
        row.setdefault("ap_at_100_store", row.get("ap_at_100_annoy", ""))
        row.setdefault("store_search_seconds", row.get("annoy_search_seconds", ""))
    return kept


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
    described = {protocol.name: protocol.description for protocol in protocols}
    results = merge_results(load_results(index_dir, collection), collection, rows, curves, described)
    per_query = _earlier_per_query(folder / PER_QUERY_FILE, fresh) + per_query
    per_query.sort(key=lambda r: (_csv_key(r).order(), r["query"]))
    atomic.write_file(folder / PER_QUERY_FILE, lambda path: _write_csv(path, per_query))
    atomic.write_file(folder / PR_CURVES_FILE, lambda path: plot_pr_curves(results.pr_curves, collection, path))
    # Written last, so a results file never points at a curve picture from an older run.
    save_results(folder, results)
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


@dataclass
class RankingExport:
    """What revisitop's own tools read, for one recipe: the standard (cropped) query descriptors, one
    row per query in the ground truth's order, and each one's plain cosine ranking as 0-based indices
    into the ground truth's database order, one column per query (database size x queries)."""

    descriptors: list[np.ndarray] = field(default_factory=list)
    ranks: list[np.ndarray] = field(default_factory=list)

    def add_ranking(self, ranking: Sequence[str], order: Sequence[str]) -> None:
        """A ranking of image ids as indices into `order`; images of `order` the ranking lacks (files
        that could not be read) are put last, so every column is a permutation as revisitop expects."""
        position = {image: index for index, image in enumerate(order)}
        ranked = [position[image] for image in ranking if image in position]
        seen = set(ranked)
        self.ranks.append(np.array(ranked + [index for index in range(len(order)) if index not in seen], np.int64))

    def write(self, folder: Path, recipe: str) -> list[Path]:
        paths = [folder / f"{recipe}.queries.npy", folder / f"{recipe}.ranks.npy"]
        arrays = [np.stack(self.descriptors).astype(np.float32), np.stack(self.ranks, axis=1).astype(np.int64)]
        for path, array in zip(paths, arrays):
            atomic.write_file(path, lambda temporary, array=array: np.save(temporary, array))
        return paths
