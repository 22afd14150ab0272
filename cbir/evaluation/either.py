"""Evaluating a built collection the way it allows: the one place that chooses between mAP on its
ground-truth queries and, for a collection without them, self-retrieval (edited photos finding their
source). `cbir build --evaluate` and `cbir evaluate` both call it."""

from __future__ import annotations

from cbir.evaluation.loop import EvaluationSettings, evaluate_collection
from cbir.evaluation.tables import format_summary
from cbir.search import SearchEngine
from cbir.self_retrieval import DEFAULT_QUERIES, evaluate_self_retrieval, format_self_retrieval


def evaluate_built(
    settings: EvaluationSettings, engine: SearchEngine | None = None, *, self_queries: int = DEFAULT_QUERIES
) -> str:
    """Evaluate `settings.recipes` of `settings.collection` and return the summary the terminal shows:
    mAP when the collection has ground-truth queries, else self-retrieval with `self_queries` edited
    images (the settings' metrics apply to both; query modes, protocols and re-ranking only to mAP)."""
    engine = engine if engine is not None else SearchEngine(settings.index_dir)
    if engine.record(settings.collection).queries:
        return format_summary(evaluate_collection(settings, engine))
    recipes = settings.recipes if settings.recipes is not None else [
        info.key for info in engine.available() if info.collection == settings.collection
    ]
    results = evaluate_self_retrieval(engine, settings.collection, recipes, metrics=settings.metrics,
                                      queries=self_queries, progress=settings.progress)  # fmt: skip
    return format_self_retrieval(results)
