"""Tests for cbir.metrics: hand-worked examples for every definition, independent reference
implementations, and properties checked with hypothesis.

Naming in the examples: p* are positives, n* non-positives, j* junk.
"""

from __future__ import annotations

import dataclasses
import math
import random
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cbir.metrics import (
    QueryScores,
    ap_11point,
    ap_oxford,
    average_precision,
    interpolated_precision_11,
    mean_scores,
    pr_curve,
    precision_at_k,
    precision_at_k_revisitop,
    remove_junk,
    score_query,
    study_scores,
)

NO_JUNK: frozenset[str] = frozenset()
approx = pytest.approx


def junk_removing_measures(ranking, positives, junk):
    """Every measure that removes junk, as one comparable tuple."""
    recall, precision = pr_curve(ranking, positives, junk)
    return (
        ap_oxford(ranking, positives, junk),
        average_precision(ranking, positives, junk),
        ap_11point(ranking, positives, junk),
        tuple(interpolated_precision_11(ranking, positives, junk)),
        tuple(precision_at_k(ranking, positives, junk, k) for k in (1, 2, 3, 5, 10)),
        tuple(recall),
        tuple(precision),
    )


# ============================================================================================
# Hand-worked examples


def test_remove_junk_keeps_order_of_the_rest():
    assert remove_junk(["j1", "p1", "j2", "n1", "p2", "j3"], frozenset({"j1", "j2", "j3"})) == [
        "p1",
        "n1",
        "p2",
    ]


# The running example: [p1, n1, p2] with positives {p1, p2}.
RANKING = ["p1", "n1", "p2"]
POSITIVES = frozenset({"p1", "p2"})


def test_ap_oxford_hand_worked():
    # rank 0: hit,  recall 1/2, precision 1   -> + (1/2 - 0)   * (1   + 1)   / 2
    # rank 1: miss, recall 1/2, precision 1/2 -> + 0 (old_precision becomes 1/2)
    # rank 2: hit,  recall 1,   precision 2/3 -> + (1 - 1/2)   * (1/2 + 2/3) / 2
    expected = (1 / 2) * (1 + 1) / 2 + (1 - 1 / 2) * (1 / 2 + 2 / 3) / 2
    assert ap_oxford(RANKING, POSITIVES, NO_JUNK) == approx(expected)


def test_ap_oxford_averages_with_the_precision_of_the_preceding_miss():
    # compute_ap.cpp updates old_precision at every rank, so the hit at rank 1 is averaged with
    # the miss's precision 0, not with the initial 1:
    # rank 0: miss, recall 0, precision 0   -> + 0
    # rank 1: hit,  recall 1, precision 1/2 -> + (1 - 0) * (0 + 1/2) / 2
    assert ap_oxford(["n1", "p1"], frozenset({"p1"}), NO_JUNK) == approx(1 * (0 + 1 / 2) / 2)
    # Standard AP of the same ranking, for contrast: precision@2 / 1 positive.
    assert average_precision(["n1", "p1"], frozenset({"p1"}), NO_JUNK) == approx(1 / 2)


def test_average_precision_hand_worked():
    # hits at ranks 1 and 3: precision 1/1 and 2/3, over 2 positives
    assert average_precision(RANKING, POSITIVES, NO_JUNK) == approx((1 / 1 + 2 / 3) / 2)


def test_pr_curve_hand_worked():
    recall, precision = pr_curve(RANKING, POSITIVES, NO_JUNK)
    np.testing.assert_allclose(recall, [1 / 2, 1 / 2, 2 / 2])
    np.testing.assert_allclose(precision, [1 / 1, 1 / 2, 2 / 3])


def test_interpolated_precision_11_and_ap_11point_hand_worked():
    # (recall, precision) points: (1/2, 1), (1/2, 1/2), (1, 2/3).
    # Levels 0.0..0.5 (6 levels): best precision at recall >= level is 1 (at recall 1/2).
    # Levels 0.6..1.0 (5 levels): only the point at recall 1 qualifies: 2/3.
    expected = [1.0] * 6 + [2 / 3] * 5
    np.testing.assert_allclose(interpolated_precision_11(RANKING, POSITIVES, NO_JUNK), expected)
    assert ap_11point(RANKING, POSITIVES, NO_JUNK) == approx((6 * 1 + 5 * (2 / 3)) / 11)


def test_eleven_point_level_is_reached_at_exact_recall_despite_float_rounding():
    # 3 of 10 positives found: recall 3/10 = 0.3 must reach level 0.3 (in floats 0.1 * 3 > 0.3).
    positives = frozenset(f"p{i}" for i in range(10))
    ranking = ["p0", "p1", "p2"]  # precision 1 at recall 0.1, 0.2, 0.3; levels 0.4.. unreached
    expected = [1.0] * 4 + [0.0] * 7
    np.testing.assert_array_equal(interpolated_precision_11(ranking, positives, NO_JUNK), expected)
    assert ap_11point(ranking, positives, NO_JUNK) == approx(4 / 11)


def test_junk_before_between_and_after_positives_is_removed_before_ranking():
    junk = frozenset({"j1", "j2", "j3"})
    with_junk = ["j1", "p1", "j2", "n1", "p2", "j3"]  # non-junk ranks: p1=1, n1=2, p2=3
    assert junk_removing_measures(with_junk, POSITIVES, junk) == junk_removing_measures(
        RANKING, POSITIVES, NO_JUNK
    )
    assert average_precision(with_junk, POSITIVES, junk) == approx((1 / 1 + 2 / 3) / 2)
    # Counting the junk as misses instead (raw ranks p1=2, p2=5) would give a lower figure:
    assert average_precision(with_junk, POSITIVES, NO_JUNK) == approx((1 / 2 + 2 / 5) / 2)


def test_perfect_ranking_scores_one_everywhere():
    positives = frozenset({"p1", "p2", "p3"})
    scores = score_query(["p1", "p3", "p2", "n1", "n2"], positives, NO_JUNK)
    assert scores is not None
    assert scores.ap_oxford == approx(1.0)  # 3 steps of 1/3 * (1 + 1) / 2
    assert scores.ap == approx(1.0)
    assert scores.ap_11point == approx(1.0)
    assert scores.study_ap == approx(1.0)
    assert scores.study_ap_11point == approx(1.0)
    assert scores.precision_at == {1: 1.0, 5: approx(3 / 5), 10: approx(3 / 10)}


def test_positives_missing_from_the_ranking_count_as_never_found():
    positives = frozenset({"p1", "p2", "p3", "p4"})  # p3, p4 never ranked
    ranking = ["p1", "n1", "p2"]
    assert average_precision(ranking, positives, NO_JUNK) == approx((1 / 1 + 2 / 3) / 4)
    # recall steps of 1/4; the two missing positives add no step
    expected_oxford = (1 / 4) * (1 + 1) / 2 + (1 / 4) * (1 / 2 + 2 / 3) / 2
    assert ap_oxford(ranking, positives, NO_JUNK) == approx(expected_oxford)
    # points (1/4, 1), (1/4, 1/2), (2/4, 2/3): levels 0..0.2 -> 1, 0.3..0.5 -> 2/3, 0.6..1 -> 0
    assert ap_11point(ranking, positives, NO_JUNK) == approx((3 * 1 + 3 * (2 / 3) + 5 * 0) / 11)
    recall, _ = pr_curve(ranking, positives, NO_JUNK)
    assert recall[-1] == approx(2 / 4)


def test_precision_at_k_counts_non_junk_and_divides_by_k_even_for_short_lists():
    positives = frozenset({"p1", "p2", "p3"})
    junk = frozenset({"j1", "j2"})
    ranking = ["j1", "p1", "n1", "j2", "p2", "n2", "p3"]  # non-junk: p1 n1 p2 n2 p3
    assert precision_at_k(ranking, positives, junk, 1) == 1 / 1
    assert precision_at_k(ranking, positives, junk, 2) == approx(1 / 2)
    assert precision_at_k(ranking, positives, junk, 3) == approx(2 / 3)
    assert precision_at_k(ranking, positives, junk, 5) == approx(3 / 5)
    assert precision_at_k(ranking, positives, junk, 10) == approx(3 / 10)  # only 5 ranked
    assert precision_at_k([], positives, junk, 5) == 0.0
    assert precision_at_k(["j1", "j2"], positives, junk, 1) == 0.0  # nothing left after junk
    assert precision_at_k(ranking, frozenset(), junk, 1) == 0.0  # defined without positives
    with pytest.raises(ValueError):
        precision_at_k(ranking, positives, junk, 0)


def test_study_measure_overstates_standard_ap():
    positives = frozenset({"a", "b", "c", "d"})  # G = 4: the study looks at the top 4 only
    ranking = ["a", "x", "y", "b", "z", "c", "w", "v", "u", "d"]
    study_ap, study_11 = study_scores(ranking, positives)
    # Top 4 = a x y b: hits at positions 1 and 4; c and d (outside) do not count against it.
    assert study_ap == approx((1 / 1 + 2 / 4) / 2)  # 0.75
    # Standard AP sees all four hits (ranks 1, 4, 6, 10) and divides by 4 positives.
    assert average_precision(ranking, positives, NO_JUNK) == approx(
        (1 / 1 + 2 / 4 + 3 / 6 + 4 / 10) / 4
    )  # 0.60
    assert study_ap > average_precision(ranking, positives, NO_JUNK)
    # "Interpolated": top-4 points (recall vs G=4, precision) = (1/4, 1), (1/4, 1/2), (1/4, 1/3),
    # (2/4, 1/2). Levels 0..0.2 -> 1; 0.3..0.5 -> 1/2; 0.6..1.0 never reached -> 0.
    assert study_11 == approx((3 * 1 + 3 * (1 / 2) + 5 * 0) / 11)


def test_study_measure_ignores_positives_outside_top_g():
    positives = frozenset({"a", "b", "c", "d"})
    ranking = ["a", "x", "y", "z", "n1", "n2"]  # 1 of 4 found, at rank 1; b c d never ranked
    study_ap, study_11 = study_scores(ranking, positives)
    assert study_ap == 1.0  # mean of precision@1 = 1/1 over the single hit
    assert average_precision(ranking, positives, NO_JUNK) == approx((1 / 1) / 4)  # 0.25
    # only recall 1/4 reached: levels 0, 0.1, 0.2 -> 1; the other 8 levels unreached -> 0
    assert study_11 == approx(3 / 11)


def test_study_measure_keeps_junk_as_misses():
    positives = frozenset({"a", "b"})
    junk = frozenset({"j"})
    ranking = ["j", "a", "b"]  # G = 2: top 2 = j a, so b is cut off by the junk image
    study_ap, study_11 = study_scores(ranking, positives)
    assert study_ap == approx((1 / 2) / 1)  # one hit, at position 2
    # points (0, 0), (1/2, 1/2): levels 0..0.5 -> 1/2, 0.6..1.0 unreached -> 0
    assert study_11 == approx(6 * (1 / 2) / 11)
    assert average_precision(ranking, positives, junk) == 1.0  # junk removed: a=1, b=2


def test_study_measure_with_nothing_found_in_top_g():
    assert study_scores(["n1", "n2", "p1", "p2"], frozenset({"p1", "p2"})) == (0.0, 0.0)
    assert study_scores(["n1"], frozenset()) == (0.0, 0.0)


def test_score_query_hand_worked_with_good_ok_and_junk():
    from cbir.datasets import Query
    from cbir.protocols import STANDARD

    ranking = ["a", "j", "x", "b"]  # non-junk: a x b
    query = Query("q", "a", (0, 0, 1, 1), {"good": {"a"}, "ok": {"b"}, "junk": {"j"}})
    scores = score_query(ranking, STANDARD.positives(query), STANDARD.ignored_ids(query))
    assert scores is not None
    assert scores.n_positives == 2  # ok counts as positive
    assert scores.ap == approx((1 / 1 + 2 / 3) / 2)
    assert scores.ap_oxford == approx((1 / 2) * (1 + 1) / 2 + (1 / 2) * (1 / 2 + 2 / 3) / 2)
    assert scores.ap_11point == approx((6 * 1 + 5 * (2 / 3)) / 11)
    assert scores.precision_at == {1: 1.0, 5: approx(2 / 5), 10: approx(2 / 10)}
    # Study: G = 2, junk kept, top 2 = a j -> one hit at position 1: AP = 1/1.
    # points (1/2, 1), (1/2, 1/2): levels 0..0.5 -> 1, 0.6..1 unreached -> 0.
    assert scores.study_ap == 1.0
    assert scores.study_ap_11point == approx(6 / 11)


def test_query_without_positives_is_skipped_and_counted():
    assert score_query(["a", "b"], frozenset(), frozenset({"a"})) is None
    first = QueryScores(0.5, 0.6, 0.7, {1: 1.0, 5: 0.4}, 0.8, 0.3, 2)
    second = QueryScores(0.25, 0.2, 0.1, {1: 0.0, 5: 0.2}, 0.4, 0.1, 5)
    means = mean_scores([first, None, second])
    assert means["n_queries"] == 2
    assert means["n_skipped"] == 1
    assert means["ap_oxford"] == approx((0.5 + 0.25) / 2)
    assert means["ap"] == approx((0.6 + 0.2) / 2)
    assert means["ap_11point"] == approx((0.7 + 0.1) / 2)
    assert means["precision_at"] == {1: approx((1.0 + 0.0) / 2), 5: approx((0.4 + 0.2) / 2)}
    assert means["study_ap"] == approx((0.8 + 0.4) / 2)
    assert means["study_ap_11point"] == approx((0.3 + 0.1) / 2)


def test_mean_scores_with_no_scored_query_is_nan():
    means = mean_scores([None, None])
    assert (means["n_queries"], means["n_skipped"]) == (0, 2)
    # 4 - 1, where 4 ^ 1 would be 5 (cosmic-ray's mutant; 3 - 2 == 3 ^ 2 let it pass elsewhere).
    scored = QueryScores(1.0, 1.0, 1.0, {1: 1.0}, 1.0, 1.0, 1)
    assert mean_scores([None, None, None, scored])["n_skipped"] == 3
    assert math.isnan(means["ap"]) and means["precision_at"] == {}


def test_mean_scores_rejects_mixed_cutoffs():
    first = QueryScores(1.0, 1.0, 1.0, {1: 1.0}, 1.0, 1.0, 1)
    second = QueryScores(1.0, 1.0, 1.0, {5: 1.0}, 1.0, 1.0, 1)
    with pytest.raises(ValueError):
        mean_scores([first, second])


def test_recall_based_measures_reject_queries_without_positives():
    for measure in (ap_oxford, average_precision, ap_11point, interpolated_precision_11, pr_curve):
        with pytest.raises(ValueError):
            measure(["a"], frozenset(), NO_JUNK)


def test_duplicate_ids_in_ranking_are_rejected():
    # p1 twice would otherwise count as two hits and give AP > 1
    with pytest.raises(ValueError):
        average_precision(["p1", "p1"], frozenset({"p1"}), NO_JUNK)
    with pytest.raises(ValueError):
        study_scores(["p1", "p1"], frozenset({"p1"}))


def test_the_error_for_repeated_ids_names_the_first_five_repeated_ones_only():
    # a b d e f g appear more than once (b three times), c once: the message lists the first five
    # repeated ids in the order they first appear, never c.
    ranking = ["a", "a", "b", "b", "b", "c", "d", "d", "e", "e", "f", "f", "g", "g"]
    with pytest.raises(ValueError) as raised:
        average_precision(ranking, frozenset({"a"}), NO_JUNK)
    assert str(raised.value) == "ranking lists these image ids more than once: ['a', 'b', 'd', 'e', 'f']"


def test_errors_say_what_is_wrong_with_the_query():
    with pytest.raises(ValueError) as no_positives:
        ap_oxford(["a"], frozenset(), NO_JUNK)
    assert str(no_positives.value) == "query has no positives: recall and AP are undefined"
    for precision in (precision_at_k, precision_at_k_revisitop):
        with pytest.raises(ValueError) as zero_k:
            precision(["a"], frozenset({"a"}), NO_JUNK, 0)
        assert str(zero_k.value) == "k must be at least 1, got 0"


def test_precision_at_k_revisitop_hand_worked():
    positives = frozenset({"p1", "p2", "p3"})
    # Positives at ranks 1, 2, 4 (n1 at 3): the cut-off is min(k, 4).
    ranking = ["p1", "p2", "n1", "p3", "n2", "n3"]
    assert precision_at_k_revisitop(ranking, positives, NO_JUNK, 10) == approx(3 / 4)
    assert precision_at_k_revisitop(ranking, positives, NO_JUNK, 4) == approx(3 / 4)
    assert precision_at_k_revisitop(ranking, positives, NO_JUNK, 3) == approx(2 / 3)
    assert precision_at_k_revisitop(ranking, positives, NO_JUNK, 2) == 1.0
    # Ignored images are removed before counting ranks: j1 does not push p3 to rank 5.
    with_junk = ["p1", "j1", "p2", "n1", "p3"]
    assert precision_at_k_revisitop(with_junk, positives, frozenset({"j1"}), 10) == approx(3 / 4)
    # p3 never ranked: it sits at infinity, so the cut-off stays k.
    assert precision_at_k_revisitop(["p1", "p2", "n1"], positives, NO_JUNK, 10) == approx(2 / 10)


def test_score_query_and_mean_scores_carry_revisitop_precision():
    positives = frozenset({"p1", "p2", "p3"})
    first = score_query(["p1", "p2", "n1", "p3"], positives, NO_JUNK, ks=(2, 10))
    second = score_query(["n1", "p1", "p2", "p3"], positives, NO_JUNK, ks=(2, 10))
    assert first is not None and second is not None
    assert first.precision_at_revisitop == {2: 1.0, 10: approx(3 / 4)}
    assert second.precision_at_revisitop == {2: approx(1 / 2), 10: approx(3 / 4)}
    means = mean_scores([first, second])
    assert means["precision_at_revisitop"] == {2: approx((1.0 + 1 / 2) / 2), 10: approx(3 / 4)}


def test_mean_scores_rejects_mixed_revisitop_cutoffs_and_names_them():
    first = QueryScores(1.0, 1.0, 1.0, {1: 1.0}, 1.0, 1.0, 1, precision_at_revisitop={1: 1.0})
    second = dataclasses.replace(first, precision_at_revisitop={10: 1.0})
    with pytest.raises(ValueError) as raised:
        mean_scores([first, second])
    message = str(raised.value)
    assert message.startswith("queries were scored with different precision cut-offs: ")
    assert "(1,)" in message and "(10,)" in message


def test_a_ranking_of_one_or_no_image():
    positives = frozenset({"p1"})
    assert ap_oxford(["p1"], positives, NO_JUNK) == 1.0  # 1 * (1 + 1) / 2
    assert ap_oxford(["n1"], positives, NO_JUNK) == 0.0
    assert ap_oxford([], positives, NO_JUNK) == 0.0
    assert ap_11point([], positives, NO_JUNK) == 0.0


def test_ties_are_broken_by_the_order_passed():
    # p1 and n1 tie on score; a stable sort keeps whichever order they were given in, and the
    # metrics score exactly that order.
    scores = {"p1": 0.5, "n1": 0.5, "n2": 0.1}
    positives = frozenset({"p1"})
    positive_first = sorted(["p1", "n1", "n2"], key=lambda i: -scores[i])
    negative_first = sorted(["n1", "p1", "n2"], key=lambda i: -scores[i])
    assert positive_first == ["p1", "n1", "n2"] and negative_first == ["n1", "p1", "n2"]
    assert average_precision(positive_first, positives, NO_JUNK) == 1 / 1
    assert average_precision(negative_first, positives, NO_JUNK) == approx(1 / 2)
    assert ap_oxford(positive_first, positives, NO_JUNK) == approx(1 * (1 + 1) / 2)
    assert ap_oxford(negative_first, positives, NO_JUNK) == approx(1 * (0 + 1 / 2) / 2)


# ============================================================================================
# Independent reference implementations, written in a different style


def reference_compute_ap(pos, amb, ranked_list):
    """Line-by-line transliteration of compute_ap.cpp's compute_ap (in float64)."""
    old_recall = 0.0
    old_precision = 1.0
    ap = 0.0
    intersect_size = 0
    j = 0
    for i in range(len(ranked_list)):
        if ranked_list[i] in amb:
            continue
        if ranked_list[i] in pos:
            intersect_size += 1
        recall = intersect_size / float(len(pos))
        precision = intersect_size / (j + 1.0)
        ap += (recall - old_recall) * ((old_precision + precision) / 2.0)
        old_recall = recall
        old_precision = precision
        j += 1
    return ap


def reference_average_precision(ranking, positives, junk):
    """Sum of precision@k (counted from scratch) at each hit, over the number of positives."""
    kept = [i for i in ranking if i not in junk]
    total = 0.0
    for k in range(1, len(kept) + 1):
        if kept[k - 1] in positives:
            total += sum(1 for i in kept[:k] if i in positives) / k
    return total / len(positives)


def reference_interpolated_precision_11(ranking, positives, junk):
    """Exact rational arithmetic: no float rounding at the level boundaries."""
    kept = [i for i in ranking if i not in junk]
    points = []
    for k in range(1, len(kept) + 1):
        found = sum(1 for i in kept[:k] if i in positives)
        points.append((Fraction(found, len(positives)), Fraction(found, k)))
    values = []
    for tenths in range(11):
        level = Fraction(tenths, 10)
        qualifying = [precision for recall, precision in points if recall >= level]
        values.append(float(max(qualifying)) if qualifying else 0.0)
    return values


def random_query(rng: random.Random):
    n = rng.randint(0, 40)
    labels = [rng.choice("pppnnnj") for _ in range(n)]
    ranking = [f"img{i}" for i in range(n)]
    rng.shuffle(ranking)
    positives = {img for img, label in zip(ranking, labels) if label == "p"}
    positives |= {f"missing{i}" for i in range(rng.randint(0, 2))}
    positives = positives or {"missing_only"}
    junk = {img for img, label in zip(ranking, labels) if label == "j"}
    return ranking, frozenset(positives), frozenset(junk)


def test_ap_oxford_matches_transliterated_cpp_on_random_rankings():
    rng = random.Random(20240611)
    for _ in range(500):
        ranking, positives, junk = random_query(rng)
        assert ap_oxford(ranking, positives, junk) == approx(
            reference_compute_ap(positives, junk, ranking), abs=1e-12
        )


def test_standard_and_11point_match_references_on_random_rankings():
    rng = random.Random(7)
    for _ in range(300):
        ranking, positives, junk = random_query(rng)
        assert average_precision(ranking, positives, junk) == approx(
            reference_average_precision(ranking, positives, junk), abs=1e-12
        )
        np.testing.assert_allclose(
            interpolated_precision_11(ranking, positives, junk),
            reference_interpolated_precision_11(ranking, positives, junk),
            atol=1e-12,
        )


# ============================================================================================
# Properties

PROPERTY_SETTINGS = settings(max_examples=150, deadline=None)


@st.composite
def queries(draw):
    """(ranking, positives, junk): ranking order = label order; some positives may be missing."""
    labels = draw(st.lists(st.sampled_from("pnj"), max_size=25))
    ranking = [f"img{i}" for i in range(len(labels))]
    positives = {img for img, label in zip(ranking, labels) if label == "p"}
    # at least one positive, ranked or missing, so every query is scorable
    n_missing = draw(st.integers(0 if positives else 1, 3))
    positives |= {f"missing{i}" for i in range(n_missing)}
    junk = {img for img, label in zip(ranking, labels) if label == "j"}
    return ranking, frozenset(positives), frozenset(junk)


@PROPERTY_SETTINGS
@given(queries())
def test_all_measures_lie_in_unit_interval(query):
    ranking, positives, junk = query
    scores = score_query(ranking, positives, junk, ks=(1, 3, 10))
    assert scores is not None
    values = [
        scores.ap_oxford,
        scores.ap,
        scores.ap_11point,
        scores.study_ap,
        scores.study_ap_11point,
        *scores.precision_at.values(),
        *interpolated_precision_11(ranking, positives, junk),
    ]
    assert all(0.0 <= v <= 1.0 + 1e-12 for v in values), values


@PROPERTY_SETTINGS
@given(queries(), st.data())
def test_moving_a_positive_one_place_earlier_never_lowers_ap(query, data):
    ranking, positives, junk = query
    movable = [
        i
        for i in range(1, len(ranking))
        if ranking[i] in positives and ranking[i - 1] not in positives | junk
    ]
    assume(movable)
    i = data.draw(st.sampled_from(movable))
    improved = ranking[: i - 1] + [ranking[i], ranking[i - 1]] + ranking[i + 1 :]
    for measure in (ap_oxford, average_precision, ap_11point):
        before = measure(ranking, positives, junk)
        after = measure(improved, positives, junk)
        assert after >= before - 1e-12, (measure.__name__, before, after)


@PROPERTY_SETTINGS
@given(queries(), st.data())
def test_shuffling_the_tail_after_the_last_positive_changes_nothing(query, data):
    ranking, positives, junk = query
    last_hit = max((i for i, img in enumerate(ranking) if img in positives), default=-1)
    head, tail = ranking[: last_hit + 1], ranking[last_hit + 1 :]
    shuffled = head + data.draw(st.permutations(tail))
    assert score_query(shuffled, positives, junk) == score_query(ranking, positives, junk)


@PROPERTY_SETTINGS
@given(queries(), st.lists(st.integers(0, 30), max_size=6))
def test_inserting_junk_anywhere_changes_nothing(query, insert_at):
    ranking, positives, junk = query
    with_more_junk = list(ranking)
    extra_junk = set()
    for n, position in enumerate(insert_at):
        extra_junk.add(f"junk{n}")
        with_more_junk.insert(min(position, len(with_more_junk)), f"junk{n}")
    assert junk_removing_measures(
        with_more_junk, positives, junk | extra_junk
    ) == junk_removing_measures(ranking, positives, junk)


@PROPERTY_SETTINGS
@given(queries())
def test_putting_every_positive_first_scores_one(query):
    ranking, positives, junk = query
    perfect = sorted(positives) + [img for img in ranking if img not in positives]
    scores = score_query(perfect, positives, junk)
    assert scores is not None
    for value in (scores.ap_oxford, scores.ap, scores.ap_11point):
        assert value == approx(1.0)
    assert (scores.study_ap, scores.study_ap_11point) == (approx(1.0), approx(1.0))


@PROPERTY_SETTINGS
@given(queries())
def test_ap_oxford_matches_transliterated_cpp(query):
    ranking, positives, junk = query
    assert ap_oxford(ranking, positives, junk) == approx(
        reference_compute_ap(positives, junk, ranking), abs=1e-12
    )
