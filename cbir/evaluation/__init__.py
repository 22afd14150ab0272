"""mAP of built indexes on a collection's ground-truth queries, written as files the app's
evaluation tab reads (`cbir evaluate` is its command line).

    results   the schema of results.json, reading it (older versions too) and writing it
    loop      evaluating recipes on a collection
    writers   per_query.csv, pr_curves.png and the rankings revisitop's tools read
    tables    the results as the page and the terminal show them
    either    mAP where there is ground truth, else self-retrieval: the one place that chooses
"""

from cbir.evaluation.results import (
    STUDY_MEASURE_NOTE,
    PrCurve,
    ResultRow,
    Results,
    RowKey,
    load_results,
    results_folder,
    study_reported,
)
from cbir.evaluation.loop import EvaluationError, EvaluationSettings, MissingLocalFeatures, evaluate_collection
from cbir.evaluation.tables import (
    REVISITED_PROTOCOLS,
    RerankingLine,
    RevisitedRow,
    format_summary,
    reranking_table,
    revisited_table,
)

__all__ = [
    "REVISITED_PROTOCOLS",
    "STUDY_MEASURE_NOTE",
    "EvaluationError",
    "EvaluationSettings",
    "MissingLocalFeatures",
    "PrCurve",
    "ResultRow",
    "RerankingLine",
    "Results",
    "RevisitedRow",
    "RowKey",
    "evaluate_collection",
    "format_summary",
    "load_results",
    "reranking_table",
    "results_folder",
    "revisited_table",
    "study_reported",
]
