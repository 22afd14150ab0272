"""cbir.ranking: α-weighted query expansion as a `rank` re-ranker and database-side augmentation
(DBA) stored, reloaded and searched like any index; which search a query expansion repeats, DBA's
neighbours against a plain reference, and when `rank` prefers the exact scan."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from pytest import approx

from cbir.distances import Metric, Neighbours, exact_distances, nearest
from cbir.errors import SettingsError
from cbir.index import Manifest, StoreSpec, load_index, write_index
from cbir.ranking import (
    EXACT_SEARCH_LIMIT,
    AlphaQueryExpansion,
    Ranking,
    database_side_augmentation,
    expand_query,
    prefers_exact,
    rank,
)
from cbir.recipe import Recipe


def unit(*vector: float) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    return vector / np.linalg.norm(vector)


def stored_index(folder: Path, descriptors: np.ndarray, store: str = "exact"):
    """Descriptors written as an index folder and loaded back, as a build would leave them."""
    manifest = Manifest(
        collection="demo",
        recipe=Recipe.create("xception", weights="none", input_size=96),
        images=[f"img_{row}.jpg" for row in range(len(descriptors))],
        dim=descriptors.shape[1],
        store=StoreSpec(store, {}),
    )
    write_index(folder, np.asarray(descriptors, dtype=np.float32), manifest)
    return load_index(folder)


QUERY = unit(1, 0, 0)
# Cosine with QUERY in brackets. The right answer sits on the far side of two close relatives and
# below a distractor that only resembles the query; the relatives lead expansion to it.
RELATIVE_1 = unit(1, 0.5, 0)  # 0.894
RELATIVE_2 = unit(1, 0.6, 0)  # 0.857
DISTRACTOR = unit(1, 0, 0.9)  # 0.743
ANSWER = unit(1, 1.2, 0)  # 0.640
FAR = unit(-1, 0.3, 0.2)  # -0.94
ROWS = np.array([FAR, ANSWER, DISTRACTOR, RELATIVE_2, RELATIVE_1])  # row ids 0..4
ANSWER_ROW, DISTRACTOR_ROW = 1, 2


@pytest.mark.parametrize("metric", [Metric.COSINE, Metric.EUCLIDEAN])
def test_query_expansion_brings_the_answer_just_outside_the_top_three_into_it(tmp_path: Path, metric: Metric) -> None:
    # x100: Euclidean runs on raw descriptors, far from the unit sphere.
    index = stored_index(tmp_path / "demo" / "xception", 100 * ROWS)
    plain = rank(index, 100 * QUERY, metric, 4)
    assert plain.rows.tolist() == [4, 3, DISTRACTOR_ROW, ANSWER_ROW]  # the answer is 4th

    expanded = rank(index, 100 * QUERY, metric, 4, rerankers=[AlphaQueryExpansion(n=2, alpha=3)])

    # New query = unit(QUERY + 0.894^3 RELATIVE_1 + 0.857^3 RELATIVE_2) = (0.959, 0.283, 0):
    # cos with ANSWER 0.831, with DISTRACTOR 0.713 (Euclidean: the weighted mean points the same way).
    assert expanded.rows.tolist() == [4, 3, ANSWER_ROW, DISTRACTOR_ROW]
    assert expanded.exact


def test_query_expansion_reads_its_n_neighbours_even_when_fewer_results_are_asked_for(tmp_path: Path) -> None:
    """The page asks for the top k; expansion must still read its top n, then give back k."""
    # Cosine with the query: A 0.944, B 0.941, C 0.921. Expanded by A and B (n = 2), C lies between
    # them and comes first (0.969 against 0.968 for A); expanded by A alone it would stay third.
    rows = np.array([unit(1, 0.35, 0), unit(1, 0, 0.36), unit(1, 0.3, 0.3)])
    index = stored_index(tmp_path / "demo" / "xception", rows)
    assert rank(index, unit(1, 0, 0), Metric.COSINE, 1).rows.tolist() == [0]
    expanded = rank(index, unit(1, 0, 0), Metric.COSINE, 1, rerankers=[AlphaQueryExpansion(n=2, alpha=3)])
    assert expanded.rows.tolist() == [2] and len(expanded.distances) == 1


def test_query_expansion_keeps_a_sure_first_answer_first(tmp_path: Path) -> None:
    query = unit(1, 0, 0)
    sure = unit(1, 0.05, 0)  # cos 0.999
    # Three look-alikes at cos ~0.75 and a fourth image further along their direction (cos 0.55).
    look_alikes = [unit(0.75, 0.05 * i, 0.66) for i in (1, 2, 3)]
    along = unit(0.55, 0, 0.835)
    rows = np.array([along, *look_alikes, sure])
    index = stored_index(tmp_path / "demo" / "xception", rows)

    weighted = rank(index, query, Metric.COSINE, None, rerankers=[AlphaQueryExpansion(n=4, alpha=3)])
    # With alpha = 3 the look-alikes weigh 0.75^3 = 0.42 each against 1 + 0.997 for the query and
    # the sure answer: new cos with it 0.963, with the best look-alike 0.901.
    assert weighted.rows[0] == 4
    # Without the power (alpha = 0, plain average query expansion) the three look-alikes outvote
    # them and take rank 1 (cos 0.959 against 0.907): the weighting is what protects it.
    averaged = rank(index, query, Metric.COSINE, None, rerankers=[AlphaQueryExpansion(n=4, alpha=0)])
    assert averaged.rows[0] != 4


def test_expanded_query_by_hand() -> None:
    query = np.array([2.0, 0.0])
    neighbours = np.array([[3.0, 3.0], [0.0, 5.0]])  # cos with the query: 1/sqrt(2), 0
    weight = (1 / np.sqrt(2)) ** 2  # alpha = 2 -> 0.5; the orthogonal one weighs 0

    cosine = expand_query(query, neighbours, Metric.COSINE, alpha=2)
    # unit(query) + 0.5 unit(3, 3) = (1 + 0.354, 0.354), re-normalised.
    assert cosine == approx(unit(1 + weight / np.sqrt(2), weight / np.sqrt(2)), abs=1e-6)
    euclidean = expand_query(query, neighbours, Metric.EUCLIDEAN, alpha=2)
    # Weighted mean of the raw vectors: (query + 0.5 (3, 3)) / 1.5 = (2.333, 1.0).
    assert euclidean == approx((query + weight * neighbours[0]) / (1 + weight), abs=1e-6)


def test_query_expansion_refuses_nonsense_settings() -> None:
    with pytest.raises(SettingsError, match="at least one neighbour"):
        AlphaQueryExpansion(n=0)
    with pytest.raises(SettingsError, match="alpha"):
        AlphaQueryExpansion(alpha=-1)
    for not_a_number in (float("nan"), float("inf")):  # NaN passes `alpha < 0`; both would rank nonsense
        with pytest.raises(SettingsError, match="alpha"):
            AlphaQueryExpansion(alpha=not_a_number)


@pytest.mark.parametrize("alpha", [3.0, 0.5])
def test_a_neighbour_pointing_away_weighs_nothing_whatever_alpha(alpha: float) -> None:
    # cos = -0.6 with the query: (-0.6) ** 3 would pull the query away from it, (-0.6) ** 0.5 is NaN.
    query = np.array([1.0, 0.0])
    neighbours = np.array([[-0.6, 0.8], [0.6, 0.8]])  # cos -0.6 and 0.6
    for metric in Metric:
        expanded = expand_query(query, neighbours, metric, alpha)
        weight = 0.6**alpha  # the opposite neighbour counts 0
        if metric is Metric.COSINE:
            expected = unit(*(query + weight * neighbours[1]))
        else:
            expected = (query + weight * neighbours[1]) / (1 + weight)
        assert expanded == approx(expected, abs=1e-6), metric
    rows = np.array([[1.0, 0.0], [-0.6, 0.8]])  # each the other's only neighbour, at cos -0.6
    for metric in Metric:
        assert database_side_augmentation(rows, metric, k=1, alpha=alpha) == approx(
            rows if metric is Metric.EUCLIDEAN else rows / np.linalg.norm(rows, axis=1, keepdims=True), abs=1e-6
        )


def test_dba_by_hand_for_both_metrics() -> None:
    rows = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    # Nearest other row (k = 1). Cosine: 0 -> 1 (cos 0.707), 1 -> 0 or 2 (tie, both 0.707),
    # 2 -> 1. Euclidean: 0 -> 1 (1.0), 1 -> 0 (1.0 < 1.414), 2 -> 1 (1.414 < 2.236).
    w = 0.5 ** 1.5  # alpha = 3 on cos 0.707
    cosine = database_side_augmentation(rows, Metric.COSINE, k=1, alpha=3)
    assert cosine[0] == approx(unit(1 + w / np.sqrt(2), w / np.sqrt(2)), abs=1e-6)
    assert cosine[2] == approx(unit(w / np.sqrt(2), 1 + w / np.sqrt(2)), abs=1e-6)
    euclidean = database_side_augmentation(rows, Metric.EUCLIDEAN, k=1, alpha=3)
    assert euclidean[0] == approx((rows[0] + w * rows[1]) / (1 + w), abs=1e-6)
    assert euclidean[1] == approx((rows[1] + w * rows[0]) / (1 + w), abs=1e-6)
    assert euclidean[2] == approx((rows[2] + w * rows[1]) / (1 + w), abs=1e-6)


def test_dba_in_blocks_equals_dba_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(50, 8)).astype(np.float32)
    at_once = database_side_augmentation(rows, Metric.COSINE, k=4)
    monkeypatch.setattr("cbir.ranking._DBA_BLOCK_FLOATS", 7 * 50)  # blocks of 7 rows, the last one short
    in_blocks = database_side_augmentation(rows, Metric.COSINE, k=4)
    assert in_blocks == approx(at_once, abs=1e-6)


def test_dba_descriptors_stored_reloaded_and_searched(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    rows = rng.normal(size=(40, 6))
    query = rng.normal(size=6)
    augmented = database_side_augmentation(rows, Metric.COSINE, k=3)
    plain = stored_index(tmp_path / "demo" / "plain", rows)
    with_dba = stored_index(tmp_path / "demo" / "plain-dba", augmented)

    assert np.asarray(with_dba.descriptors) == approx(augmented, abs=1e-6)  # what was stored is read back
    found = rank(with_dba, query, Metric.COSINE, None).rows
    # The stored variant is what gets searched: its order is the augmented rows' cosine order ...
    cosine = (augmented @ query) / np.linalg.norm(augmented, axis=1)
    assert found.tolist() == np.argsort(-cosine, kind="stable").tolist()
    # ... which is not the plain index's.
    assert found.tolist() != rank(plain, query, Metric.COSINE, None).rows.tolist()


@dataclass
class RecordingIndex:
    """What a re-ranker reads of an index (its rows, its size, its search), with every search kept."""

    descriptors: np.ndarray
    searches: list[tuple[int | None, bool]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.descriptors)

    def search(self, query: np.ndarray, metric: Metric, k: int | None, *, exact: bool) -> Neighbours:
        self.searches.append((k, exact))
        return nearest(exact_distances(self.descriptors, query, metric), k)


FOUR_ROWS = np.array([unit(1, 0.1, 0), unit(1, 0.5, 0), unit(0, 1, 0), unit(0, 0, 1)], dtype=np.float32)


@pytest.mark.parametrize("first_search_exact", [True, False])
def test_query_expansion_searches_again_at_the_first_rankings_depth_by_the_same_path(first_search_exact):
    index = RecordingIndex(FOUR_ROWS)
    first = Ranking(np.array([0, 1]), np.array([0.1, 0.4]), first_search_exact)
    again = AlphaQueryExpansion(n=2)(index, unit(1, 0, 0), Metric.COSINE, first)
    assert index.searches == [(2, first_search_exact)]  # depth 2 of 4 rows: the store, not a full scan
    assert len(again.rows) == 2 and again.exact is first_search_exact


def test_query_expansion_of_a_ranking_of_every_row_scans_them_all():
    index = RecordingIndex(FOUR_ROWS)
    every_row = Ranking(np.arange(4), np.zeros(4), False)
    AlphaQueryExpansion(n=2)(index, unit(1, 0, 0), Metric.COSINE, every_row)
    assert index.searches == [(None, False)]  # k = None: every row, by the exact scan


def test_query_expansion_by_its_single_nearest_result():
    # n = 1 is a valid setting. Query (1, 0); rows at angles 16.7, 42.0 and -38.7 degrees, so the
    # first ranking is 0, 2, 1. Expanded by row 0 alone (weight cos 16.7 = 0.958, alpha = 1) the
    # query turns to 8.2 degrees, now nearer row 1 (33.8 degrees away) than row 2 (46.9).
    rows = np.array([unit(1, 0.3), unit(1, 0.9), unit(1, -0.8)], dtype=np.float32)
    first = Ranking(np.array([0, 2, 1]), np.zeros(3), True)
    again = AlphaQueryExpansion(n=1, alpha=1)(RecordingIndex(rows), np.array([1.0, 0.0]), Metric.COSINE, first)
    expanded_query = unit(1, 0) + float(unit(1, 0.3) @ unit(1, 0)) * unit(1, 0.3)
    assert again.rows.tolist() == [0, 1, 2]
    assert again.distances == approx(np.sort(exact_distances(rows, expanded_query, Metric.COSINE)), abs=1e-6)


def test_query_expansion_of_an_empty_ranking_is_that_ranking():
    empty = Ranking(np.array([], dtype=np.int64), np.array([]), True)
    assert AlphaQueryExpansion(n=3)(RecordingIndex(FOUR_ROWS), unit(1, 0, 0), Metric.COSINE, empty) is empty


def test_a_query_given_as_a_batch_of_one_expands_the_same():
    neighbours = np.array([[3.0, 3.0], [0.0, 5.0]])
    for metric in Metric:
        assert expand_query(np.array([[2.0, 0.0]]), neighbours, metric, 2) == approx(
            expand_query(np.array([2.0, 0.0]), neighbours, metric, 2)
        )


def reference_dba(rows: np.ndarray, metric: Metric, k: int, alpha: float) -> np.ndarray:
    """DBA written plainly: each row's k nearest other rows by the metric's own distance."""
    rows = np.asarray(rows, dtype=np.float64)
    result = []
    for i, row in enumerate(rows):
        distances = exact_distances(rows, row, metric).astype(np.float64)
        distances[i] = np.inf
        neighbours = rows[np.argsort(distances, kind="stable")[:k]]
        weights = np.maximum(neighbours @ row / np.linalg.norm(neighbours, axis=1) / np.linalg.norm(row), 0) ** alpha
        if metric is Metric.COSINE:
            combined = row / np.linalg.norm(row) + weights @ (neighbours / np.linalg.norm(neighbours, axis=1)[:, None])
            result.append(combined / np.linalg.norm(combined))
        else:
            result.append((row + weights @ neighbours) / (1 + weights.sum()))
    return np.array(result)


@pytest.mark.parametrize("metric", list(Metric))
@pytest.mark.parametrize(("n_rows", "k"), [(30, 1), (30, 3), (300, 1)])
def test_dba_neighbours_are_the_metrics_own_on_rows_of_different_lengths(metric, n_rows, k):
    # Lengths from 0.1 to 10: the nearest by cosine, by Euclidean distance and by dot product differ.
    # 300 rows: enough that numpy's partition leaves the rest of a row unsorted.
    rng = np.random.default_rng(11)
    rows = rng.normal(size=(n_rows, 4)) * rng.uniform(0.1, 10, size=(n_rows, 1))
    assert database_side_augmentation(rows, metric, k=k, alpha=2) == approx(
        reference_dba(rows, metric, k, 2), abs=1e-5
    )


def test_dba_by_cosine_picks_the_row_pointing_the_same_way_not_the_longest():
    # With a = (1, 0): b = (10, 1) has cos 0.995, c = (0.1, 0.1) and d = (30, 30) cos 0.707
    # (d has the largest dot product, c the smallest length): a's one neighbour is b.
    rows = np.array([[1.0, 0.0], [10.0, 1.0], [0.1, 0.1], [30.0, 30.0]])
    cos_ab = 10 / np.sqrt(101)
    augmented = database_side_augmentation(rows, Metric.COSINE, k=1, alpha=1)
    assert augmented[0] == approx(unit(*(np.array([1.0, 0.0]) + cos_ab * unit(10, 1))), abs=1e-6)


def test_dba_with_more_neighbours_asked_than_other_rows_uses_them_all():
    # Three rows, k = 10: each row is combined with both others. Euclidean, alpha = 1, row 0 = (1, 0):
    # weights cos((1,0),(1,1)) = 0.707 and cos((1,0),(0,2)) = 0 -> ((1,0) + 0.707 (1,1)) / 1.707.
    rows = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    w = 1 / np.sqrt(2)
    augmented = database_side_augmentation(rows, Metric.EUCLIDEAN, k=10, alpha=1)
    assert augmented[0] == approx((rows[0] + w * rows[1]) / (1 + w), abs=1e-6)
    # Row 1 = (1, 1): both others at cos 0.707.
    assert augmented[1] == approx((rows[1] + w * rows[0] + w * rows[2]) / (1 + 2 * w), abs=1e-6)


def test_dba_rows_are_float32_like_every_index():
    augmented = database_side_augmentation(np.eye(3, dtype=np.float64), Metric.COSINE, k=1)
    assert augmented.dtype == np.float32


class SizedIndex(SimpleNamespace):
    def __len__(self) -> int:
        return self.rows


def sized_index(rows: int, dim: int, store: str) -> SizedIndex:
    return SizedIndex(rows=rows, manifest=SimpleNamespace(dim=dim, store=SimpleNamespace(kind=store)))


def test_the_exact_scan_is_preferred_up_to_the_limit_of_descriptor_floats_inclusive():
    assert prefers_exact(sized_index(EXACT_SEARCH_LIMIT // 512, 512, "annoy"))
    assert not prefers_exact(sized_index(EXACT_SEARCH_LIMIT // 512 + 1, 512, "annoy"))


def test_a_server_store_is_asked_however_small_the_collection():
    assert not prefers_exact(sized_index(10, 512, "milvus"))


@dataclass
class SearchedIndex(RecordingIndex):
    """An index whose store is approximate, recording the candidates each search is given."""

    candidates: list[int | None] = field(default_factory=list)
    store_is_exact: bool = False

    def search(self, query, metric, k, *, exact, candidates=None):
        self.candidates.append(candidates)
        return super().search(query, metric, k, exact=exact)


def test_rank_hands_the_candidates_asked_for_to_the_index():
    index = SearchedIndex(FOUR_ROWS)
    rank(index, unit(1, 0, 0), Metric.COSINE, 2, exact=False, candidates=500)
    assert index.candidates == [500]


def test_rank_cut_to_k_after_a_reranker_keeps_whether_the_scan_was_exact():
    index = SearchedIndex(FOUR_ROWS)
    ranking = rank(index, unit(1, 0, 0), Metric.COSINE, 1, exact=True, rerankers=[AlphaQueryExpansion(n=3)])
    assert index.searches[0] == (3, True)  # the first search reads expansion's 3
    assert len(ranking.rows) == 1 and ranking.exact is True


def test_rank_takes_a_plain_function_as_a_reranker():
    # The Reranker protocol asks for a call only; `depth` is optional.
    def reverse(index, query, metric, ranking):
        return Ranking(ranking.rows[::-1], ranking.distances[::-1], ranking.exact)

    ranking = rank(SearchedIndex(FOUR_ROWS), unit(1, 0, 0), Metric.COSINE, 2, exact=True, rerankers=[reverse])
    assert ranking.rows.tolist() == [1, 0]


def test_rank_refuses_fewer_than_one_result():
    with pytest.raises(ValueError) as raised:
        rank(SearchedIndex(FOUR_ROWS), unit(1, 0, 0), Metric.COSINE, 0)
    assert str(raised.value) == "k must be at least 1"


# Verification first, then αQE or diffusion: what was verified expands the query and keeps its lead.
VERIFIED_FIRST = Ranking(np.array([2, 0, 1, 3]), np.array([0.9, 0.1, 0.4, 1.5]), True,
                         inliers=np.array([40, 3, -1, -1]), verified=1)  # fmt: skip


def test_query_expansion_after_verification_expands_with_the_verified_rows_only():
    index = RecordingIndex(FOUR_ROWS)
    query = unit(1, 0, 0)
    again = AlphaQueryExpansion(n=3, alpha=1)(index, query, Metric.COSINE, VERIFIED_FIRST)
    by_row_2_alone = expand_query(query, FOUR_ROWS[[2]], Metric.COSINE, 1)
    assert again.distances == approx(np.sort(exact_distances(FOUR_ROWS, by_row_2_alone, Metric.COSINE)), abs=1e-6)


def test_query_expansion_after_a_verification_that_verified_nothing_leaves_the_ranking():
    nothing = Ranking(np.array([0, 1]), np.array([0.1, 0.4]), True, inliers=np.array([3, 2]), verified=0)
    index = RecordingIndex(FOUR_ROWS)
    assert AlphaQueryExpansion(n=2)(index, unit(1, 0, 0), Metric.COSINE, nothing) is nothing
    assert index.searches == []


def test_a_reranker_after_verification_reorders_only_what_follows_the_verified_rows():
    def verify(index, query, metric, ranking):
        return VERIFIED_FIRST

    def reverse(index, query, metric, ranking):
        return Ranking(ranking.rows[::-1], ranking.distances[::-1], False)

    ranking = rank(SearchedIndex(FOUR_ROWS), unit(1, 0, 0), Metric.COSINE, 3, exact=True, rerankers=[verify, reverse])
    assert ranking.rows.tolist() == [2, 3, 1]  # row 2 kept first; the rest in the reversed order
    assert ranking.inliers.tolist() == [40, -1, -1]  # each row's own count
    assert ranking.distances.tolist() == [0.9, 1.5, 0.4]
    assert ranking.verified == 1 and ranking.exact is False


def test_rank_cut_to_fewer_rows_than_were_verified_keeps_the_count_right():
    two_verified = Ranking(np.array([2, 0, 1]), np.zeros(3), True, inliers=np.array([40, 30, 3]), verified=2)
    ranking = rank(SearchedIndex(FOUR_ROWS), unit(1, 0, 0), Metric.COSINE, 1, exact=True,
                   rerankers=[lambda *_: two_verified])  # fmt: skip
    assert ranking.rows.tolist() == [2] and ranking.verified == 1


def test_a_row_the_verified_ranking_never_held_comes_after_the_lead_unverified():
    # αQE's new search can bring rows the first ranking did not reach: they carry no inlier count.
    first = Ranking(np.array([2, 0]), np.array([0.9, 0.1]), True, inliers=np.array([40, 3]), verified=1)
    reranked = Ranking(np.array([3, 0, 2]), np.array([0.2, 0.3, 0.5]), True)
    ranking = rank(SearchedIndex(FOUR_ROWS), unit(1, 0, 0), Metric.COSINE, None,
                   rerankers=[lambda *_: first, lambda *_: reranked])  # fmt: skip
    assert ranking.rows.tolist() == [2, 3, 0]  # each row once
    assert ranking.inliers.tolist() == [40, -1, 3]
    assert ranking.distances.tolist() == [0.9, 0.2, 0.3]


def test_a_second_verification_orders_the_ranking_itself():
    first = Ranking(np.array([2, 0, 1]), np.zeros(3), True, inliers=np.array([40, 30, 3]), verified=2)
    again = Ranking(np.array([1, 2, 0]), np.zeros(3), True, inliers=np.array([20, 5, 4]), verified=1)
    ranking = rank(SearchedIndex(FOUR_ROWS), unit(1, 0, 0), Metric.COSINE, None,
                   rerankers=[lambda *_: first, lambda *_: again])  # fmt: skip
    assert ranking.rows.tolist() == [1, 2, 0] and ranking.verified == 1
