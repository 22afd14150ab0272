"""What the page writes: captions, the status line, the backbone menu's labels, the evaluation
tables and the notices. Plain strings and lists; no Gradio."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cbir.backbones import BACKBONES, Family
from cbir.distances import Metric
from cbir.evaluation import (
    REVISITED_PROTOCOLS,
    Results,
    ResultRow,
    RevisitedRow,
)
from cbir.images import DEFAULT_LIMITS
from cbir.catalogue import BrokenIndex, IndexInfo
from cbir.pooling import POOLINGS
from cbir.search import SearchResult
from cbir.self_retrieval import RECALL_AT, SelfRetrievalResults
from cbir.uploads import PrivateCollections as Uploads

# Bounds on what one request may cost, checked before anything is decoded (see README, "Limits").
MAX_UPLOAD = "25mb"


def gallery_items(result: SearchResult, served=lambda image: None) -> list[tuple[str, str]]:
    """(file the page may serve, caption) per hit; `served` maps an indexed image to its thumbnail.
    A hit whose image cannot be read (deleted since the build) is left out rather than failing."""
    items = []
    for hit in result.hits:
        # Short enough to fit under a thumbnail: cosine similarity, or Euclidean (L2) distance.
        score = f"cos {hit.similarity:.3f}" if result.metric is Metric.COSINE else f"L2 {hit.distance:.3g}"
        path = served(hit.image)
        # Spatial verification's count, where it examined the hit: why it is (or is not) a match.
        inliers = "" if hit.inliers is None else f" · {hit.inliers} inliers"
        if path is not None:
            items.append((path, f"#{hit.rank} {readable(Path(hit.image).stem)} · {score}{inliers}"))
    return items


def readable(name: str) -> str:
    """A file name fit for the page: bytes that are not UTF-8 (legal on Linux) shown as �."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


@dataclass(frozen=True)
class LeftOut:
    """A hit the page cannot show (its image was deleted or damaged since the build), and why."""

    image: str
    reason: str


def status_line(result: SearchResult, left_out: Sequence[LeftOut] = ()) -> str:
    """The line under the results: how many are shown (hits left out are counted apart, with why),
    the time each step took, the collection, recipe and metric."""
    total = 1000 * (result.describe_seconds + result.search_seconds)
    line = (
        f"{len(result.hits) - len(left_out)} results in {total:.0f} ms (descriptor {1000 * result.describe_seconds:.0f} ms, "
        f"{'exact' if result.exact else 'index'} search {1000 * result.search_seconds:.1f} ms) · {result.collection} · "
        f"{result.recipe} · "
        + ("cosine similarity" if result.metric is Metric.COSINE else "Euclidean distance")
    )
    if result.untrained:
        line += " · **untrained weights: rankings are meaningless**"
    for warning in result.warnings:
        line += f"\n\n⚠ {warning}"
    if left_out:
        reasons = "; ".join(f"{readable(Path(item.image).stem)}: {item.reason}" for item in left_out[:5])
        more = f"; and {len(left_out) - 5} more" if len(left_out) > 5 else ""
        line += (
            f"\n\n⚠ {len(left_out)} more found but not shown: their images cannot be read since the index was "
            f"built ({reasons}{more}). Rebuilding the collection drops them."
        )
    return line


def recipe_label(info: IndexInfo) -> str:
    """How the backbone choice names an index: 'xception · GeM · whitened on paris6k · 512-d'."""
    newer = BACKBONES[info.backbone].family is Family.NEWER
    return ("newer · " if newer else "") + info.recipe.describe_label() + (" · UNTRAINED" if info.untrained else "")


def broken_notice(broken: list[BrokenIndex]) -> str:
    """What the page says about index folders it could not load, with the command that fixes each."""
    if not broken:
        return ""
    lines = [f"- **{b.collection}/{b.key}**: {b.problem}" for b in broken]
    return "**Not served (damaged or unreadable):**\n" + "\n".join(lines)


def upload_help(uploads: Uploads) -> str:
    where = (
        f"They are kept in `{uploads.root}` (this is a local, single-user run: `--keep-uploads`)."
        if uploads.keep
        else "They stay yours alone: no other visitor can see or search them, and they are deleted when you "
        "close the page."
    )
    return (
        "Search your own photos: send images or a zip of them, pick a backbone, and press **Describe and "
        f"add**. The collection is then the one searched on the Search tab. Limits: "
        f"{uploads.limits.describe()}; each file sent at most {MAX_UPLOAD.upper()}, each image at most "
        f"{DEFAULT_LIMITS.max_side:,} px a side and {DEFAULT_LIMITS.max_pixels / 1e6:.0f} megapixels. Images that "
        f"cannot be read are skipped and listed. {where}"
    )


def evaluate_command(collection: str) -> str:
    """The command that evaluates every index of a collection: mAP where it has ground truth,
    self-retrieval otherwise (cbir.evaluation.either chooses)."""
    return f"python -m cbir.evaluate --collection {collection} --recipes all"


POOLING_NAMES = {row.pooling.value: row.short_label for row in POOLINGS.values()}
MEASURED_HEADERS = [
    "backbone", "pooling", "scales", "whitened on", "dim", "re-ranking", "protocol", "metric", "queries",
    "mAP (Oxford)", "mAP", "mAP 11-pt", "mAP@100 (index)", "mP@1", "mP@5", "mP@10",
    "mP@1 (revisitop)", "mP@5 (revisitop)", "mP@10 (revisitop)", "study mAP", "ms / query", "n",
]  # fmt: skip


def measured_table(results: Results) -> list[list[Any]]:
    """The results, one row per recipe x protocol x metric x query mode; within each protocol x metric
    x mode block the recipes of one backbone sit together, the study's first."""
    order = list(BACKBONES)

    def place(row: ResultRow) -> tuple:
        backbone = order.index(row.backbone) if row.backbone in order else len(order)
        return (row.protocol, row.metric, row.query_mode, row.reranking, backbone, row.recipe != row.backbone, row.recipe)

    return [
        [
            row.backbone + (" (untrained)" if row.untrained else ""),
            POOLING_NAMES.get(row.pooling, row.pooling),
            row.scales,
            row.whitening or "-",
            row.dim or "",
            row.reranking or "-",
            row.protocol,
            row.metric,
            row.query_mode,
            round(row.map_oxford, 3),
            round(row.map, 3),
            round(row.map_11point, 3),
            round(row.map_at_100_store, 3),
            round(row.mp_at_1, 3),
            round(row.mp_at_5, 3),
            round(row.mp_at_10, 3),
            round(row.mp_at_1_revisitop, 3),
            round(row.mp_at_5_revisitop, 3),
            round(row.mp_at_10_revisitop, 3),
            round(row.study_map, 3),
            round(1000 * row.mean_query_seconds, 1),
            row.n_queries,
        ]
        for row in sorted(results.rows, key=place)
    ]


SELF_RETRIEVAL_HEADERS = ["backbone · recipe", "metric", "edit", "recall@1", "recall@5", "recall@10", "MRR", "queries",
                          "ms / query"]  # fmt: skip


def self_retrieval_rows(results: SelfRetrievalResults) -> list[list[Any]]:
    return [
        [row.recipe + (" (untrained)" if row.untrained else ""), row.metric, row.edit]
        + [round(row.recall[k], 3) for k in RECALL_AT]
        + [round(row.mrr, 3), row.n_queries, round(1000 * row.mean_query_seconds, 1)]
        for row in results.rows
    ]


REVISITED_HEADERS = ["recipe", "metric", "queries", "re-ranking", "E mAP", "M mAP", "H mAP", "E mP@10", "M mP@10",
                     "H mP@10"]  # fmt: skip


def revisited_rows(lines: list[RevisitedRow]) -> list[list[Any]]:
    return [
        [line.recipe + (" (untrained)" if line.untrained else ""), line.metric, line.query_mode, line.reranking or "-"]
        + [round(100 * line.map.get(p, float("nan")), 2) for p in REVISITED_PROTOCOLS]
        + [round(100 * line.mp_at_10.get(p, float("nan")), 2) for p in REVISITED_PROTOCOLS]
        for line in lines
    ]
