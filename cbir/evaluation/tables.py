"""Tables of a collection's results, as the page and the terminal show them."""

from __future__ import annotations

import math
from dataclasses import dataclass

from cbir.evaluation.results import Results


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


@dataclass(frozen=True)
class RerankingLine:
    """One re-ranked row beside the plain row it re-ranks: what the re-ranking gains and costs."""

    recipe: str
    protocol: str
    metric: str
    query_mode: str
    reranking: str
    untrained: bool
    map: float  # non-interpolated mAP over the full ranking
    plain_map: float  # the same, without re-ranking (NaN when that row is not in the results)
    added_seconds: float  # per query: local description (verification) + the re-rankers' time; NaN: not measured

    @property
    def map_change(self) -> float:
        return self.map - self.plain_map


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


def reranking_table(results: Results) -> list[RerankingLine]:
    """Every re-ranked row of the results with the mAP of its plain ranking, in the results' order."""
    plain = {(r.recipe, r.protocol, r.metric, r.query_mode): r.map for r in results.rows if not r.reranking}
    return [
        RerankingLine(row.recipe, row.protocol, row.metric, row.query_mode, row.reranking, row.untrained, row.map,
                      plain.get((row.recipe, row.protocol, row.metric, row.query_mode), float("nan")),
                      row.mean_added_seconds)  # fmt: skip
        for row in results.rows
        if row.reranking
    ]


def _milliseconds(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{1000 * seconds:.1f}"  # NaN: not measured (rows of older files)


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
    reranked = reranking_table(results)
    if reranked:
        lines.append("")
        lines.append("Re-rankings against the plain ranking: mAP, its change, and the time each adds per query")
        lines.append("(the query's local description when verified + the re-rankers' own time in a top-100 search)")
        for line in reranked:
            name = f"{line.recipe}{'*' if line.untrained else ''} + {line.reranking}"
            lines.append(f"  {name}  {line.protocol} {line.metric} {line.query_mode}: mAP {line.map:.3f} "
                         f"({line.map_change:+.3f}), +{_milliseconds(line.added_seconds)} ms/query")  # fmt: skip
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
