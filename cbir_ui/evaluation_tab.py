"""The Evaluation tab: per served collection, what this code measured (mAP under the named
protocols, or self-retrieval) beside what the study reported."""

from __future__ import annotations

import math
from typing import Any

import gradio as gr

from cbir.evaluation import (
    STUDY_MEASURE_NOTE,
    RerankingLine,
    load_results,
    reranking_table,
    results_folder,
    revisited_table,
    study_reported,
)
from cbir.self_retrieval import load_self_retrieval
from cbir_ui.behaviour import SearchPage
from cbir_ui.formatting import (
    MEASURED_HEADERS,
    REVISITED_HEADERS,
    SELF_RETRIEVAL_HEADERS,
    evaluate_command,
    measured_table,
    revisited_rows,
    self_retrieval_rows,
)


RERANKING_HEADERS = ["recipe", "re-ranking", "protocol", "metric", "queries", "mAP", "plain mAP", "change",
                     "added ms / query"]  # fmt: skip


def reranking_rows(lines: list[RerankingLine]) -> list[list[Any]]:
    """The re-ranked rows beside their plain ranking ("-": a cost not measured, rows of older files)."""
    return [
        [line.recipe + (" (untrained)" if line.untrained else ""), line.reranking, line.protocol, line.metric,
         line.query_mode, round(line.map, 3), round(line.plain_map, 3), round(line.map_change, 3),
         "-" if math.isnan(line.added_seconds) else round(1000 * line.added_seconds, 1)]  # fmt: skip
        for line in lines
    ]


def render(page: SearchPage) -> None:
    """The tab, inside the current Blocks (a visitor's own collections are not evaluated)."""
    with gr.Tab("Evaluation"):
        if not page.collection_choices():
            gr.Markdown("Nothing is built or evaluated yet.")
        for name in page.collections():
            collection_results(page, name)


def collection_results(page: SearchPage, collection: str) -> None:
    results = load_results(page.index_root, collection)
    gr.Markdown(f"### {collection}: measured by this code")
    self_retrieval = load_self_retrieval(page.index_root, collection)
    if self_retrieval is not None:
        gr.Markdown(
            f"**Self-retrieval** ({len(self_retrieval.sources)} of its images x {len(self_retrieval.edits)} edits, "
            f"measured {self_retrieval.created}). {self_retrieval.note}\n\n"
            + "; ".join(f"**{name}**: {text}" for name, text in self_retrieval.edits.items())
        )
        gr.Dataframe(value=self_retrieval_rows(self_retrieval), headers=SELF_RETRIEVAL_HEADERS, interactive=False)
    if results is None and self_retrieval is None:
        gr.Markdown(f"Not evaluated yet. Run `{evaluate_command(collection)}`, then restart the app.")
    elif results is not None:
        protocols = "\n".join(f"- **{name}**: {text}" for name, text in results.protocols.items())
        gr.Markdown(
            f"**Protocols.**\n{protocols}\n\n{results.note}\n\n{STUDY_MEASURE_NOTE}\n\nMeasured {results.created}."
        )
        if any(row.untrained for row in results.rows):
            gr.Markdown("**Rows marked untrained come from random weights: they test the code, not the network.**")
        revisited = revisited_table(results)
        if revisited:
            gr.Markdown(
                "**As papers print it**: mAP and mP@10 (revisitop's rule) under the Easy / Medium / Hard protocols, "
                "x 100. Compare a published table with the same protocol, cropped queries and the recipe named "
                "(papers usually describe 1024 px images: `--input-size 1024`)."
            )
            gr.Dataframe(value=revisited_rows(revisited), headers=REVISITED_HEADERS, interactive=False, wrap=True)
        gr.Dataframe(value=measured_table(results), headers=MEASURED_HEADERS, interactive=False, wrap=True)
        reranked = reranking_table(results)
        if reranked:
            gr.Markdown(
                "**Re-rankings** beside the plain ranking they start from: mAP, its change, and what each adds per "
                "query (the query's local description when verified, plus the re-rankers' own time in a top-100 "
                "search). docs/evaluation.md says how to read them."
            )
            gr.Dataframe(value=reranking_rows(reranked), headers=RERANKING_HEADERS, interactive=False, wrap=True)
        curves = results_folder(page.index_root, collection) / results.files["pr_curves"]
        if curves.is_file():
            gr.Image(value=str(curves), label="Mean 11-point precision / recall", interactive=False)
    reported = study_reported()
    table = reported["tables"].get(collection)
    if table:
        gr.Markdown(f"### {collection}: reported by the study (not measured here)\n\n{reported['note']}")
        gr.Dataframe(
            value=table,
            headers=["backbone", "non-interpolated mAP", "interpolated mAP", "time (s)"],
            interactive=False,
        )
