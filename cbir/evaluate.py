"""mAP on a collection's ground-truth queries, written as files the app's evaluation tab reads.

    python -m cbir.evaluate --collection oxford5k --backbones all

For every query of every backbone x metric x query mode ("cropped" to the ground-truth box, the
standard protocol; and "full", the whole query image, as a user uploading a photo would): rank the
whole collection by exact search (AP needs the full ranking), score it with `cbir.metrics`, and
also score the top 100 through the Annoy index so the cost of approximate search is visible.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cbir.backbones import BACKBONES, keras_versions
from cbir.build import SavedCollection, read_collection
from cbir.images import ImageError
from cbir.index import IndexLoadError, LoadedIndex, Manifest, check_metric
from cbir.metrics import QueryScores, average_precision, interpolated_precision_11, mean_scores, score_query
from cbir.search import SearchEngine

logger = logging.getLogger(__name__)

RESULTS_SCHEMA_VERSION = 1
RESULTS_FOLDER = "evaluation"
RESULTS_FILE = "results.json"
PER_QUERY_FILE = "per_query.csv"
PR_CURVES_FILE = "pr_curves.png"
QUERY_MODES = ("cropped", "full")
ANNOY_DEPTH = 100

PROTOCOL = (
    "Positives = good + ok; junk images are removed from the ranking before scoring; queries without "
    "positives are left out of the means. mAP (Oxford) uses the dataset's own compute_ap (trapezoidal); "
    "mAP is standard non-interpolated AP over the full ranking; mAP 11-pt is 11-point interpolated AP. "
    "Rankings come from exact search over the whole collection; mAP@100 (Annoy) scores the top 100 "
    "returned by the Annoy index (positives beyond it count as missed). 'cropped' queries use the "
    "ground-truth box (standard); 'full' queries use the whole query image."
)
STUDY_MEASURE_NOTE = (
    "The study's figures score only the top G results (G = number of positives), keep junk and ignore "
    "positives missed in the top G, so they are not comparable with the standard mAP; the 'study mAP' "
    "columns recompute them with this project's descriptors for a like-for-like comparison."
)


def results_folder(index_root: Path, collection: str) -> Path:
    return Path(index_root) / collection / RESULTS_FOLDER


def load_results(index_root: Path, collection: str) -> dict[str, Any] | None:
    """The results file of a collection, or None if it has not been evaluated yet."""
    path = results_folder(index_root, collection) / RESULTS_FILE
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    if data.get("schema_version") != RESULTS_SCHEMA_VERSION:
        return None
    return data


def study_reported() -> dict[str, Any]:
    """The study's own tables, as it reported them (never mixed with measured numbers)."""
    text = resources.files("cbir").joinpath("data/study_reported.json").read_text()
    return json.loads(text)


@dataclass
class EvaluationSettings:
    index_root: Path
    collection: str
    backbones: Sequence[str] | None = None  # None: every backbone with an index for the collection
    metrics: Sequence[str] = ("cosine", "euclidean")
    query_modes: Sequence[str] = QUERY_MODES
    progress: bool = True


@dataclass
class QueryRun:
    """One query of one backbone x metric x mode: its scores and what it cost."""

    query: str
    scores: QueryScores | None
    ap_at_100_annoy: float | None
    describe_seconds: float
    exact_seconds: float
    annoy_seconds: float
    eleven_point: np.ndarray | None  # interpolated precision at recall 0.0 .. 1.0


def _query_paths(loaded: LoadedIndex) -> dict[str, str]:
    """Image id (file stem, as the ground truth names images) -> relative path, skipped ones included."""
    manifest = loaded.manifest
    relpaths = list(manifest.images) + [entry["image"] for entry in manifest.skipped]
    return {Path(relpath).stem: relpath for relpath in relpaths}


def evaluate_backbone(
    engine: SearchEngine,
    saved: SavedCollection,
    backbone: str,
    settings: EvaluationSettings,
) -> dict[tuple[str, str], list[QueryRun]]:
    """Runs of every query, per (metric, query mode), for one backbone."""
    loaded = engine.index(saved.name, backbone)
    ids = [Path(relpath).stem for relpath in loaded.manifest.images]
    paths = _query_paths(loaded)
    runs: dict[tuple[str, str], list[QueryRun]] = {(m, q): [] for m in settings.metrics for q in settings.query_modes}
    # One untimed pass first: building the network and tracing it for single images is set-up, not
    # query time, and would otherwise land on whichever query happens to come first.
    extractor = engine.extractor_for(loaded)
    extractor.describe(np.zeros((1, extractor.input_size, extractor.input_size, 3), np.uint8))
    bar = None
    if settings.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(saved.queries) * len(settings.query_modes), desc=f"evaluate {backbone}", unit="query")
    for mode in settings.query_modes:
        for query in saved.queries:
            if query.image not in paths:
                raise RuntimeError(f"query image {query.image} of {query.name} is not in the collection")
            started = time.perf_counter()
            descriptor = engine.describe(
                saved.root / paths[query.image],
                collection=saved.name,
                backbone=backbone,
                box=query.box if mode == "cropped" else None,
                name=paths[query.image],
            )
            describe_seconds = time.perf_counter() - started
            for metric in settings.metrics:
                started = time.perf_counter()
                rows, _ = loaded.search_exact(descriptor, metric)
                exact_seconds = time.perf_counter() - started
                started = time.perf_counter()
                annoy_rows, _ = loaded.search_annoy(descriptor, metric, min(ANNOY_DEPTH, len(loaded)))
                annoy_seconds = time.perf_counter() - started
                ranking = [ids[row] for row in rows]
                scores = score_query(ranking, query.good, query.ok, query.junk)
                ap_at_100 = eleven = None
                if scores is not None:
                    ap_at_100 = average_precision([ids[row] for row in annoy_rows], query.positives, query.junk)
                    eleven = interpolated_precision_11(ranking, query.positives, query.junk)
                runs[(metric, mode)].append(
                    QueryRun(query.name, scores, ap_at_100, describe_seconds, exact_seconds, annoy_seconds, eleven)
                )
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return runs


def summarise(backbone: str, manifest: Manifest, metric: str, mode: str, runs: list[QueryRun]) -> dict[str, Any]:
    """One row of the results table."""
    means = mean_scores([run.scores for run in runs])
    annoy = [run.ap_at_100_annoy for run in runs if run.ap_at_100_annoy is not None]
    describe = float(np.mean([run.describe_seconds for run in runs])) if runs else float("nan")
    annoy_search = float(np.mean([run.annoy_seconds for run in runs])) if runs else float("nan")
    exact_search = float(np.mean([run.exact_seconds for run in runs])) if runs else float("nan")
    return {
        "backbone": backbone,
        "weights": manifest.weights_identity,
        "untrained": manifest.untrained,
        "metric": metric,
        "query_mode": mode,
        "map_oxford": means["ap_oxford"],
        "map": means["ap"],
        "map_11point": means["ap_11point"],
        "map_at_100_annoy": float(np.mean(annoy)) if annoy else float("nan"),
        "mp_at_1": means["precision_at"].get(1, float("nan")),
        "mp_at_5": means["precision_at"].get(5, float("nan")),
        "mp_at_10": means["precision_at"].get(10, float("nan")),
        "study_map": means["study_ap"],
        "study_map_11point": means["study_ap_11point"],
        # What a user of the app waits for: descriptor + Annoy search.
        "mean_query_seconds": describe + annoy_search,
        "mean_describe_seconds": describe,
        "mean_exact_search_seconds": exact_search,
        "mean_annoy_search_seconds": annoy_search,
        "n_queries": means["n_queries"],
        "n_skipped": means["n_skipped"],
        "skipped_queries": [run.query for run in runs if run.scores is None],
        "n_images": len(manifest.images),
        "input_size": manifest.input_size,
    }


def evaluate_collection(settings: EvaluationSettings, engine: SearchEngine | None = None) -> dict[str, Any]:
    """Evaluate, write the results files (merged with earlier rows of other backbones), return them."""
    engine = engine or SearchEngine(settings.index_root)
    saved = read_collection(settings.index_root, settings.collection)
    if not saved.queries:
        raise ValueError(
            f"{settings.collection} has no ground-truth queries; only oxford5k and paris6k can be evaluated"
        )
    built = [info.backbone for info in engine.available() if info.collection == settings.collection]
    backbones = list(settings.backbones) if settings.backbones else built
    missing = [name for name in backbones if name not in built]
    if missing:
        raise IndexLoadError(
            f"no index for {', '.join(missing)} on {settings.collection}. Build it: python build_index.py "
            f"--dataset {settings.collection} --backbones {','.join(missing)}"
        )
    for metric in settings.metrics:
        check_metric(metric)
    rows, curves, per_query = [], [], []
    for backbone in backbones:
        manifest = engine.index(settings.collection, backbone).manifest
        runs = evaluate_backbone(engine, saved, backbone, settings)
        for (metric, mode), query_runs in runs.items():
            rows.append(summarise(backbone, manifest, metric, mode, query_runs))
            elevens = [run.eleven_point for run in query_runs if run.eleven_point is not None]
            curves.append(
                {
                    "backbone": backbone,
                    "metric": metric,
                    "query_mode": mode,
                    "untrained": manifest.untrained,
                    "precision": np.mean(elevens, axis=0).tolist() if elevens else [],
                }
            )
            per_query.extend(_per_query_rows(backbone, metric, mode, query_runs))
    return write_results(settings.index_root, settings.collection, rows, curves, per_query)


PER_QUERY_COLUMNS = [
    "backbone", "metric", "query_mode", "query", "n_positives", "ap_oxford", "ap", "ap_11point",
    "ap_at_100_annoy", "p_at_1", "p_at_5", "p_at_10", "study_ap", "study_ap_11point",
    "describe_seconds", "exact_search_seconds", "annoy_search_seconds",
]  # fmt: skip


def _per_query_rows(backbone: str, metric: str, mode: str, runs: list[QueryRun]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        s = run.scores
        rows.append(
            {
                "backbone": backbone,
                "metric": metric,
                "query_mode": mode,
                "query": run.query,
                "n_positives": s.n_positives if s else 0,
                "ap_oxford": s.ap_oxford if s else "",
                "ap": s.ap if s else "",
                "ap_11point": s.ap_11point if s else "",
                "ap_at_100_annoy": run.ap_at_100_annoy if s else "",
                "p_at_1": s.precision_at[1] if s else "",
                "p_at_5": s.precision_at[5] if s else "",
                "p_at_10": s.precision_at[10] if s else "",
                "study_ap": s.study_ap if s else "",
                "study_ap_11point": s.study_ap_11point if s else "",
                "describe_seconds": run.describe_seconds,
                "exact_search_seconds": run.exact_seconds,
                "annoy_search_seconds": run.annoy_seconds,
            }
        )
    return rows


def _key(row: dict[str, Any]) -> tuple[str, str, str]:
    return (row["backbone"], row["metric"], row["query_mode"])


def write_results(
    index_root: Path,
    collection: str,
    rows: list[dict[str, Any]],
    curves: list[dict[str, Any]],
    per_query: list[dict[str, Any]],
) -> dict[str, Any]:
    """Write results.json, per_query.csv and pr_curves.png atomically, keeping earlier rows of
    backbone x metric x mode combinations that this run did not evaluate."""
    folder = results_folder(index_root, collection)
    folder.mkdir(parents=True, exist_ok=True)
    fresh = {_key(row) for row in rows}
    earlier = load_results(index_root, collection) or {}
    rows = [r for r in earlier.get("rows", []) if _key(r) not in fresh] + rows
    curves = [c for c in earlier.get("pr_curves", []) if _key(c) not in fresh] + curves
    order = {name: i for i, name in enumerate(BACKBONES)}
    sort_key = lambda r: (order.get(r["backbone"], 99), r["metric"], r["query_mode"])  # noqa: E731
    rows.sort(key=sort_key)
    curves.sort(key=sort_key)

    per_query_path = folder / PER_QUERY_FILE
    if per_query_path.exists():
        with open(per_query_path, newline="") as handle:
            kept = [r for r in csv.DictReader(handle) if _key(r) not in fresh]
        per_query = kept + per_query
    per_query.sort(key=lambda r: (*sort_key(r), r["query"]))

    results = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "collection": collection,
        "protocol": PROTOCOL,
        "study_measure_note": STUDY_MEASURE_NOTE,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": keras_versions() | {"numpy": np.__version__},
        "rows": rows,
        "pr_curves": curves,
        "files": {"per_query": PER_QUERY_FILE, "pr_curves": PR_CURVES_FILE},
    }
    _write_atomic(folder / PER_QUERY_FILE, lambda path: _write_csv(path, per_query))
    _write_atomic(folder / PR_CURVES_FILE, lambda path: plot_pr_curves(curves, collection, path))
    # Written last, so a results file never points at a curve picture from an older run.
    _write_atomic(folder / RESULTS_FILE, lambda path: path.write_text(json.dumps(results, indent=1)))
    return results


def _write_atomic(path: Path, write) -> None:
    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=PER_QUERY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def plot_pr_curves(curves: list[dict[str, Any]], collection: str, path: Path) -> None:
    """Mean 11-point interpolated precision/recall, one line per backbone, a panel per query mode
    (cosine metric, the app's default)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [mode for mode in QUERY_MODES if any(c["query_mode"] == mode for c in curves)] or ["cropped"]
    figure, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4.2), squeeze=False)
    recall = np.linspace(0.0, 1.0, 11)
    for axis, mode in zip(axes[0], modes):
        for curve in curves:
            if curve["query_mode"] != mode or curve["metric"] != "cosine" or not curve["precision"]:
                continue
            label = curve["backbone"] + (" (untrained)" if curve["untrained"] else "")
            axis.plot(recall, curve["precision"], marker="o", markersize=3, label=label)
        axis.set(xlabel="recall", ylabel="interpolated precision", xlim=(0, 1), ylim=(0, 1.02))
        axis.set_title(f"{collection}: {mode} queries, cosine")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=110)
    plt.close(figure)


def format_summary(results: dict[str, Any]) -> str:
    """A table a person can read, one row per backbone x metric x query mode."""
    header = (
        f"{'backbone':<20} {'metric':<9} {'queries':<7} {'mAP(Ox)':>8} {'mAP':>7} {'mAP11':>7} "
        f"{'mAP@100A':>9} {'mP@1':>6} {'mP@10':>6} {'studyAP':>8} {'ms/query':>9}"
    )
    lines = [f"{results['collection']}: {len(results['rows'])} rows", header, "-" * len(header)]
    for row in results["rows"]:
        name = row["backbone"] + ("*" if row["untrained"] else "")
        lines.append(
            f"{name:<20} {row['metric']:<9} {row['query_mode']:<7} {row['map_oxford']:>8.3f} {row['map']:>7.3f} "
            f"{row['map_11point']:>7.3f} {row['map_at_100_annoy']:>9.3f} {row['mp_at_1']:>6.3f} "
            f"{row['mp_at_10']:>6.3f} {row['study_map']:>8.3f} {1000 * row['mean_query_seconds']:>9.1f}"
        )
    if any(row["untrained"] for row in results["rows"]):
        lines.append("* untrained (random) weights: these numbers measure nothing but the code path")
    lines.append(f"files: {results['files']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cbir.evaluate",
        description="mAP of built indexes on a collection's ground-truth queries; writes results files "
        "under INDEX_DIR/COLLECTION/evaluation/ that the app shows.",
    )
    parser.add_argument("--collection", default="oxford5k", help="oxford5k or paris6k (must be built)")
    parser.add_argument("--backbones", default="all", help="comma-separated backbones, or 'all' built ones")
    parser.add_argument("--index-dir", type=Path, default=Path(os.environ.get("CBIR_INDEX_DIR", "indexes")))
    parser.add_argument("--metrics", default="cosine,euclidean")
    parser.add_argument("--modes", default=",".join(QUERY_MODES), help="cropped (standard), full, or both")
    parser.add_argument("--no-progress", action="store_true")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    backbones = None if arguments.backbones == "all" else [b.strip() for b in arguments.backbones.split(",")]
    modes = [m.strip() for m in arguments.modes.split(",") if m.strip()]
    if any(mode not in QUERY_MODES for mode in modes):
        parser.error(f"--modes takes {', '.join(QUERY_MODES)}")
    settings = EvaluationSettings(
        index_root=arguments.index_dir,
        collection=arguments.collection,
        backbones=backbones,
        metrics=[m.strip() for m in arguments.metrics.split(",") if m.strip()],
        query_modes=modes,
        progress=not arguments.no_progress,
    )
    try:
        results = evaluate_collection(settings)
    except (IndexLoadError, ImageError, ValueError, RuntimeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
