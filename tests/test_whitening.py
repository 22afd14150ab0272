"""Tests for cbir.whitening beside tests/test_recipes.py: what it says when it cannot whiten, which
axes count as informative, and what it records and returns."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.errors import SettingsError
from cbir.whitening import Whitening, WhiteningSource, learn_whitening


def test_too_few_descriptors_are_refused_with_the_dimensions_that_would_work():
    with pytest.raises(SettingsError) as raised:
        learn_whitening(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    assert str(raised.value) == (
        "the collection gives 2 descriptors, which span only 1 dimensions; whitening to 3 dimensions needs "
        "more images than that. Learn it on a bigger collection, or keep fewer dimensions (--dim 1 or less)"
    )
    with pytest.raises(SettingsError) as too_many:
        learn_whitening(np.eye(3), dim=5)
    assert str(too_many.value) == "whitening can keep at most 3 dimensions of 3-d descriptors, not 5"


def test_an_axis_with_a_small_but_real_share_of_the_variance_counts():
    # Unit descriptors spread over +-0.01 rad: variance about 3.4e-5 along the arc and 2.3e-10
    # across it (1 - cos), a ratio of about 7e-6, far above the 1e-9 under which an axis is noise.
    theta = np.linspace(-0.01, 0.01, 201)
    rows = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    whitening = learn_whitening(rows)
    assert whitening.dim == 2
    whitened = whitening.apply(rows)
    assert np.all(np.isfinite(whitened)) and np.linalg.norm(whitened, axis=1) == pytest.approx(np.ones(201))


def test_whitening_to_one_dimension():
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(50, 4))
    whitening = learn_whitening(rows, dim=1)
    assert whitening.projection.shape == (1, 4)
    assert np.abs(whitening.apply(rows)) == pytest.approx(np.ones((50, 1)))  # unit length in 1-d


def test_whitened_rows_are_float32_like_every_index_and_refuse_another_width():
    rng = np.random.default_rng(2)
    whitening = learn_whitening(rng.normal(size=(40, 3)))
    assert whitening.apply(rng.normal(size=(5, 3))).dtype == np.float32
    assert whitening.apply(rng.normal(size=3)).shape == (3,)
    with pytest.raises(ValueError) as raised:
        whitening.apply(np.zeros((2, 4)))
    assert str(raised.value) == "this whitening takes 3-d descriptors, not 4-d"


def test_the_source_of_a_whitening_reads_back_as_written():
    source = WhiteningSource("paris6k", "xception-gem-448", 6392, "ab" * 32, same_collection=False)
    assert WhiteningSource.from_json(source.to_json()) == source
    assert WhiteningSource.from_json(
        {"collection": "oxford5k", "recipe_key": "vgg16", "n_descriptors": "12", "descriptors_sha256": "cd",
         "same_collection": 1}
    ) == WhiteningSource("oxford5k", "vgg16", 12, "cd", True)


def test_a_saved_whitening_loads_back_equal(tmp_path):
    rng = np.random.default_rng(3)
    whitening = learn_whitening(rng.normal(size=(30, 4)), dim=3)
    whitening.save(tmp_path / "whitening.npz")
    loaded = Whitening.load(tmp_path / "whitening.npz")
    assert loaded.mean.tolist() == whitening.mean.tolist()
    assert loaded.projection.tolist() == whitening.projection.tolist()
