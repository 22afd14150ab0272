"""The search engine over hand-made descriptors: the metric a user picks decides ranks and scores."""

from __future__ import annotations

import math

import pytest

from cbir.datasets import Collection
from cbir.distances import Metric
from cbir.index import StoreSpec
from stubs import StubbedEngine, wide, write_collection


@pytest.fixture(params=["exact", "annoy"])
def engine(request, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    # long.jpg points the query's way but is far; near.jpg is close but at an angle.
    store = StoreSpec("annoy", {"n_trees": 3}) if request.param == "annoy" else StoreSpec("exact")
    write_collection(tmp_path / "idx", Collection("mine", photos, ("long.jpg", "near.jpg")), wide([10, 1], [0.8, 0.6]), store)
    engine = StubbedEngine(tmp_path / "idx")
    engine.next = wide([1, 0])[0]
    return engine


@pytest.mark.parametrize("exact", [True, False])
def test_cosine_and_euclidean_give_their_own_ranking_and_distances(engine, exact):
    cosine = engine.search("q.jpg", collection="mine", recipe="xception", metric="cosine", k=2, exact=exact)
    euclidean = engine.search("q.jpg", collection="mine", recipe="xception", metric="euclidean", k=2, exact=exact)
    assert [hit.image for hit in cosine.hits] == ["long.jpg", "near.jpg"]
    assert [hit.image for hit in euclidean.hits] == ["near.jpg", "long.jpg"]
    assert cosine.metric is Metric.COSINE and euclidean.metric is Metric.EUCLIDEAN
    # cosine: angular distance sqrt(2 - 2 cos), cos(long) = 10 / sqrt(101), cos(near) = 0.8
    assert [hit.distance for hit in cosine.hits] == pytest.approx(
        [math.sqrt(2 - 2 * 10 / math.sqrt(101)), math.sqrt(2 - 2 * 0.8)], rel=1e-5
    )
    # euclidean: |(0.8, 0.6) - (1, 0)| = sqrt(0.4), |(10, 1) - (1, 0)| = sqrt(82)
    assert [hit.distance for hit in euclidean.hits] == pytest.approx([math.sqrt(0.4), math.sqrt(82)], rel=1e-5)
    # Similarity is the cosine whatever the metric, so the page can show both.
    assert [hit.similarity for hit in euclidean.hits] == pytest.approx([0.8, 10 / math.sqrt(101)], rel=1e-5)


def test_an_unknown_metric_is_refused_with_the_known_ones(engine):
    from cbir.errors import SettingsError

    with pytest.raises(SettingsError, match="known metrics: cosine, euclidean"):
        engine.search("q.jpg", collection="mine", recipe="xception", metric="manhattan")


def test_small_collections_are_scanned_exactly_and_large_ones_go_through_their_store(engine, monkeypatch):
    import cbir.ranking

    assert engine.search("q.jpg", collection="mine", recipe="xception", k=1).exact is True
    monkeypatch.setattr(cbir.ranking, "EXACT_SEARCH_LIMIT", 2 * 2048 - 1)  # one float under this index
    store_kind = engine.index("mine", "xception").manifest.store.kind
    assert engine.search("q.jpg", collection="mine", recipe="xception", k=1).exact is (store_kind == "exact")
