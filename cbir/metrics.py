"""Retrieval metrics for Oxford5k / Paris6k and their revisited versions: pure functions over one
query's ranked list.

Protocol shared by every function here
--------------------------------------
* ``ranking`` is a sequence of image ids, best first -- normally the FULL ranking of the
  collection, so that every positive appears somewhere in it. If it is truncated, positives
  missing from it are never found: they still count in the number of positives, so they lower
  recall and AP exactly as if they had been ranked at infinity. Ids must be unique.
* A query's ground truth is three sets of ids: ``good``, ``ok`` and ``junk``. Positives are
  ``good | ok`` (as in the official ``compute_ap.cpp``); junk images count neither for nor
  against a ranking.
* Every measure except :func:`study_scores` first deletes the junk ids from the ranking, so ranks
  are counted among non-junk images only. The ground-truth sets are disjoint in practice; should
  an id be both positive and junk, it is treated as junk when walking the ranking but still counts
  in the number of positives -- exactly what ``compute_ap.cpp`` does.
* Ties: a ranking is a list, so images with equal scores have already been put in some order by
  whoever built it. Every function scores the order it is given (no tie averaging); a caller
  that wants reproducible figures must break ties deterministically (e.g. a stable sort on a
  fixed id order) before calling.
* A query without positives has no AP (recall would be 0/0): the recall-based functions raise
  ``ValueError``, and :func:`score_query` returns ``None`` so that :func:`mean_scores` can leave
  the query out of the means and count it.

The revisited datasets (revisitop's ``python/evaluate.py``) score with the same trapezoidal AP as
:func:`ap_oxford` (ignored images removed), and with their own mP@k rule,
:func:`precision_at_k_revisitop`. One corner differs: revisitop keeps an image that is both
positive and ignored as a positive; here it is ignored. Its label sets (easy / hard / junk) are
disjoint, so no revisited figure depends on it.

Recall levels are compared with integer arithmetic (``10 * found >= level * n_positives``)
because in floating point ``3/10 < 0.1 * 3``, which would wrongly mark level 0.3 as unreached.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np

# The 11 TREC recall levels 0.0, 0.1, ..., 1.0, kept as integer tenths (see module docstring).
RECALL_LEVEL_TENTHS = np.arange(11)
DEFAULT_KS = (1, 5, 10)


@dataclass(frozen=True)
class QueryScores:
    """Every measure for one query that has at least one positive."""

    ap_oxford: float  # official Oxford compute_ap (trapezoidal), junk removed
    ap: float  # standard non-interpolated AP, junk removed, over the full ranking
    ap_11point: float  # 11-point interpolated AP, junk removed
    precision_at: dict[int, float]  # {k: precision among the first k non-junk images}
    study_ap: float  # the original study's top-G figure, junk kept (overstates AP)
    study_ap_11point: float  # the original study's "interpolated" top-G figure
    n_positives: int  # len(good | ok)
    # {k: revisitop's mP@k, dividing by min(k, rank of the last positive)}; see precision_at_k_revisitop
    precision_at_revisitop: dict[int, float] = field(default_factory=dict)


class MeanScores(TypedDict):
    """Means over the queries that have positives (``n_queries`` of them)."""

    ap_oxford: float
    ap: float
    ap_11point: float
    precision_at: dict[int, float]
    precision_at_revisitop: dict[int, float]
    study_ap: float
    study_ap_11point: float
    n_queries: int  # queries that entered the means
    n_skipped: int  # queries left out because they have no positives


# --------------------------------------------------------------------------------------------
# Helpers


def _check_unique(ranking: Sequence[str]) -> None:
    # A repeated id would be counted as two hits and could push AP above 1.
    if len(set(ranking)) != len(ranking):
        repeated = [image_id for image_id, n in Counter(ranking).items() if n > 1]
        raise ValueError(f"ranking lists these image ids more than once: {repeated[:5]}")


def _check_has_positives(positives: AbstractSet[str]) -> None:
    if not positives:
        raise ValueError("query has no positives: recall and AP are undefined")


def _hit_flags(ranking: Sequence[str], positives: AbstractSet[str]) -> np.ndarray:
    """Boolean array: True at each position of ``ranking`` that holds a positive."""
    return np.fromiter(
        (image_id in positives for image_id in ranking),
        # Equivalent mutants (pragma): float 0/1 flags sum and index the same as bools, and
        # count only sizes the buffer in advance.
        dtype=bool,  # pragma: no mutate
        count=len(ranking),  # pragma: no mutate
    )


def _eleven_point_precision(hits: np.ndarray, n_relevant: int) -> np.ndarray:
    """Interpolated precision at recall 0.0, 0.1, ..., 1.0 for the hit pattern ``hits``.

    Recall at a position is (hits so far) / ``n_relevant``; precision is (hits so far) / position.
    The value at a level is the maximum precision at any position whose recall reaches the
    level, or 0 if no position does.
    """
    if len(hits) == 0:
        return np.zeros(len(RECALL_LEVEL_TENTHS))
    found = np.cumsum(hits)
    precision = found / np.arange(1, len(hits) + 1)
    # best_from[i] = max precision at positions i, i+1, ...; recall never falls, so "recall >=
    # level" is exactly "position >= first position reaching the level".
    best_from = np.maximum.accumulate(precision[::-1])[::-1]
    first_reaching = np.searchsorted(
        10 * found,
        RECALL_LEVEL_TENTHS * n_relevant,
        side="left",  # pragma: no mutate -- numpy's default, named because the level counts AT its rank
    )
    # One place past the last rank holds 0.0: the value of a level never reached.
    return np.append(best_from, 0.0)[first_reaching]


def _mean(values: Iterable[float]) -> float:
    collected = list(values)
    return math.fsum(collected) / len(collected) if collected else math.nan


# --------------------------------------------------------------------------------------------
# Junk-removing measures (the Oxford / Paris protocol)


def remove_junk(ranking: Sequence[str], junk: AbstractSet[str]) -> list[str]:
    """The ranking with every junk id deleted, order otherwise unchanged.

    Ranks in all junk-removing measures are positions in this list, so junk placed before a
    positive does not push the positive down.
    """
    return [image_id for image_id in ranking if image_id not in junk]


def pr_curve(
    ranking: Sequence[str], positives: AbstractSet[str], junk: AbstractSet[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision at each rank of the junk-removed ranking (one entry per rank).

    recall[i] = (positives in the first i+1 non-junk images) / len(positives)
    precision[i] = (positives in the first i+1 non-junk images) / (i+1)
    Raises ValueError if ``positives`` is empty.
    """
    _check_unique(ranking)
    _check_has_positives(positives)
    found = np.cumsum(
        _hit_flags(remove_junk(ranking, junk), positives),
        dtype=float,  # pragma: no mutate -- whole counts divide to the same floats as int counts
    )
    return found / len(positives), found / np.arange(1, len(found) + 1)


def ap_oxford(ranking: Sequence[str], positives: AbstractSet[str], junk: AbstractSet[str]) -> float:
    """AP exactly as the Oxford Buildings ``compute_ap.cpp`` computes it (trapezoidal rule), which
    is also revisitop's ``compute_ap`` (the same sum, written per positive): the revisited mAP.

    Walking the junk-removed ranking with old_recall = 0 and old_precision = 1, every rank adds
    (recall - old_recall) * (old_precision + precision) / 2 and then sets old_recall, old_precision
    to this rank's values -- at EVERY rank, not only at positives. So a positive right after a
    miss is averaged with the miss's (lower) precision: ranking [miss, hit] with one positive
    scores 1 * (0 + 1/2) / 2 = 0.25, while standard AP gives 0.5. Positives missing from the
    ranking never add anything. The C++ works in float32; this works in float64 (differences
    ~1e-7). Raises ValueError if ``positives`` is empty.
    """
    recall, precision = pr_curve(ranking, positives, junk)
    if len(recall) == 0:
        return 0.0
    old_recall = np.concatenate(([0.0], recall[:-1]))
    old_precision = np.concatenate(([1.0], precision[:-1]))
    return float(np.sum((recall - old_recall) * (old_precision + precision) / 2))


def average_precision(
    ranking: Sequence[str], positives: AbstractSet[str], junk: AbstractSet[str]
) -> float:
    """Standard non-interpolated AP over the junk-removed ranking.

    AP = (sum of precision@r over the ranks r holding a positive) / len(positives), so every
    positive missing from the ranking contributes 0. Raises ValueError if ``positives`` is empty.
    """
    _check_unique(ranking)
    _check_has_positives(positives)
    hit_ranks = np.flatnonzero(_hit_flags(remove_junk(ranking, junk), positives)) + 1
    precision_at_hits = np.arange(1, len(hit_ranks) + 1) / hit_ranks
    return float(precision_at_hits.sum() / len(positives))


def interpolated_precision_11(
    ranking: Sequence[str], positives: AbstractSet[str], junk: AbstractSet[str]
) -> np.ndarray:
    """Interpolated precision at the 11 recall levels 0.0, 0.1, ..., 1.0 (junk removed).

    Value at level r = max precision at any rank whose recall >= r, or 0 if recall r is never
    reached. Averaging these arrays over queries gives a mean precision-recall curve.
    Raises ValueError if ``positives`` is empty.
    """
    _check_unique(ranking)
    _check_has_positives(positives)
    return _eleven_point_precision(_hit_flags(remove_junk(ranking, junk), positives), len(positives))


def ap_11point(ranking: Sequence[str], positives: AbstractSet[str], junk: AbstractSet[str]) -> float:
    """11-point interpolated AP: the mean of :func:`interpolated_precision_11` (junk removed)."""
    return float(interpolated_precision_11(ranking, positives, junk).mean())


def precision_at_k(
    ranking: Sequence[str], positives: AbstractSet[str], junk: AbstractSet[str], k: int
) -> float:
    """Fraction of the first ``k`` non-junk images that are positives.

    Always divides by ``k``, even when fewer than ``k`` non-junk images are ranked (the missing
    places count as misses). Defined (0.0) for a query without positives.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    _check_unique(ranking)
    top_k = remove_junk(ranking, junk)[:k]
    return int(_hit_flags(top_k, positives).sum()) / k


def precision_at_k_revisitop(
    ranking: Sequence[str], positives: AbstractSet[str], ignored: AbstractSet[str], k: int
) -> float:
    """Precision at ``k`` as revisitop's ``compute_map`` computes mP@k (ignored images removed).

    One rule differs from :func:`precision_at_k`: the cut-off is min(k, rank of the last
    positive), so a query whose positives all sit above rank k is not charged for the places
    after its last one. Three positives at ranks 1, 2, 4 give P@10 = 3/10 but revisitop's 3/4;
    positives at ranks 1, 2, 3 give 1.0. A positive missing from the ranking counts as ranked
    at infinity, so then the cut-off is k. Raises ValueError if ``positives`` is empty
    (revisitop leaves such queries out).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    _check_unique(ranking)
    _check_has_positives(positives)
    hit_ranks = np.flatnonzero(_hit_flags(remove_junk(ranking, ignored), positives)) + 1
    all_ranked = len(hit_ranks) == len(positives)
    cutoff = min(k, int(hit_ranks[-1])) if all_ranked else k
    return int((hit_ranks <= cutoff).sum()) / cutoff


# --------------------------------------------------------------------------------------------
# The original study's measure (kept only to reproduce its figures)


def study_scores(ranking: Sequence[str], positives: AbstractSet[str]) -> tuple[float, float]:
    """The original study's (AP, "interpolated AP"), reproduced like for like. NOT standard.

    Protocol: keep only the top G results, G = len(positives) (good + ok); junk is NOT removed,
    so a junk image in the top G is a miss.

    * AP = mean of precision@i over the 1-based positions i <= G holding a positive, or 0 if
      there are none. Positives outside the top G do not count against it, so it overstates AP:
      finding 1 of 4 positives at rank 1 and nothing else scores 1.0.
    * "interpolated" = mean over the 11 recall levels 0.0..1.0 of the max precision at any of
      the top-G positions whose recall (hits so far / G) reaches the level; an unreached level
      counts as 0.

    Returns (0.0, 0.0) for a query without positives (G = 0: nothing kept, nothing found).
    """
    _check_unique(ranking)
    n_positives = len(positives)
    if n_positives == 0:
        return 0.0, 0.0
    hits = _hit_flags(ranking[:n_positives], positives)
    hit_positions = np.flatnonzero(hits) + 1
    if len(hit_positions) == 0:
        return 0.0, 0.0
    study_ap = float(np.mean(np.arange(1, len(hit_positions) + 1) / hit_positions))
    return study_ap, float(_eleven_point_precision(hits, n_positives).mean())


# --------------------------------------------------------------------------------------------
# Per query and over queries


def score_query(
    ranking: Sequence[str],
    positives: AbstractSet[str],
    ignored: AbstractSet[str],
    ks: Sequence[int] = DEFAULT_KS,
) -> QueryScores | None:
    """Every measure for one query; None when the query has no positives.

    Which images are positives and which are ignored is a protocol's choice (`cbir.protocols`:
    for Oxford/Paris, good | ok and junk). Ignored images are removed for all but the study
    figures (module docstring).
    """
    positives = frozenset(positives)
    if not positives:
        return None
    study_ap, study_ap_11point = study_scores(ranking, positives)
    return QueryScores(
        ap_oxford=ap_oxford(ranking, positives, ignored),
        ap=average_precision(ranking, positives, ignored),
        ap_11point=ap_11point(ranking, positives, ignored),
        precision_at={k: precision_at_k(ranking, positives, ignored, k) for k in ks},
        study_ap=study_ap,
        study_ap_11point=study_ap_11point,
        n_positives=len(positives),
        precision_at_revisitop={k: precision_at_k_revisitop(ranking, positives, ignored, k) for k in ks},
    )


def mean_scores(scores: Sequence[QueryScores | None]) -> MeanScores:
    """Mean of every measure over the queries that have positives (the non-None entries).

    ``n_queries`` is how many queries entered the means, ``n_skipped`` how many were left out
    for having no positives (so ``len(scores) == n_queries + n_skipped``). With no scored query
    every mean is NaN. All scored queries must use the same precision cut-offs ``ks``.
    """
    scored = [s for s in scores if s is not None]
    cutoffs = {tuple(s.precision_at) for s in scored}
    revisitop_cutoffs = {tuple(s.precision_at_revisitop) for s in scored}
    if len(cutoffs) > 1 or len(revisitop_cutoffs) > 1:
        raise ValueError(f"queries were scored with different precision cut-offs: {cutoffs | revisitop_cutoffs}")
    ks = next(iter(cutoffs), ())
    revisitop_ks = next(iter(revisitop_cutoffs), ())
    return MeanScores(
        ap_oxford=_mean(s.ap_oxford for s in scored),
        ap=_mean(s.ap for s in scored),
        ap_11point=_mean(s.ap_11point for s in scored),
        precision_at={k: _mean(s.precision_at[k] for s in scored) for k in ks},
        precision_at_revisitop={k: _mean(s.precision_at_revisitop[k] for s in scored) for k in revisitop_ks},
        study_ap=_mean(s.study_ap for s in scored),
        study_ap_11point=_mean(s.study_ap_11point for s in scored),
        n_queries=len(scored),
        n_skipped=len(scores) - len(scored),
    )
