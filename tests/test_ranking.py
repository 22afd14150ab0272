"""Re-ranking: α-weighted query expansion as a `rank` re-ranker, and database-side augmentation (DBA)
as descriptors stored, reloaded and searched like any index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pytest import approx

from cbir.distances import Metric
from cbir.errors import SettingsError
from cbir.index import Manifest, StoreSpec, load_index, write_index
from cbir.ranking import AlphaQueryExpansion, database_side_augmentation, expand_query, rank
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
