"""The command line of the evaluation (the work itself is in `cbir.evaluation`):

    python -m cbir.evaluate --collection oxford5k --backbones all

mAP on a collection's ground-truth queries, written as files the app's evaluation tab reads; for a
collection without ground truth, the self-retrieval evaluation (`cbir.self_retrieval`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cbir.backbones import parse_backbones
from cbir.distances import Metric
from cbir.errors import CbirError
from cbir.evaluation.loop import EvaluationSettings, evaluate_collection
from cbir.evaluation.tables import format_summary
from cbir.layout import IndexLoadError, build_command
from cbir.pooling import Pooling
from cbir.protocols import QueryMode, get_protocol
from cbir.ranking import QUERY_EXPANSION_ALPHA, QUERY_EXPANSION_NEIGHBOURS, AlphaQueryExpansion
from cbir.search import SearchEngine

# Temporary, for the front-door change (issue 27): the names app.py, build_index.py, bench/ and
# tests/test_app.py import from here today (with EvaluationSettings, evaluate_collection and
# format_summary above, which this CLI uses too). Those import from `cbir.evaluation` in the next
# wave, and this block goes away then.
from cbir.evaluation import (  # noqa: F401
    REVISITED_PROTOCOLS,
    STUDY_MEASURE_NOTE,
    ResultRow,
    Results,
    RevisitedRow,
    load_results,
    results_folder,
    revisited_table,
    study_reported,
)

logger = logging.getLogger(__name__)


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
