"""The evaluation for collections without ground truth: edited photos finding their source."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.backbones import BACKBONES
from cbir.weights import Weights
from cbir.trunks import ExtractorCache
from cbir.build import BuildSettings, build_indexes
from cbir.recipe import RecipeSettings
from cbir.datasets import folder_collection
from cbir.distances import Metric, exact_distances, nearest
from cbir.layout import IndexLayout
from cbir.search import SearchEngine
from cbir.self_retrieval import (
    ALL_EDITS,
    EDITS,
    SELF_RETRIEVAL_CSV,
    crop,
    edited,
    evaluate_self_retrieval,
    load_self_retrieval,
    sample_sources,
)
from synthetic import draw_picture, make_gallery

REPO = Path(__file__).resolve().parents[1]


def test_every_edit_is_repeatable_and_changes_the_picture():
    picture = draw_picture(3, 200, 150)
    for edit in EDITS:
        once, again = edited(picture, edit, seed=7), edited(picture, edit, seed=7)
        assert np.array_equal(np.asarray(once), np.asarray(again)), edit
        different_size = once.size != picture.size
        assert different_size or not np.array_equal(np.asarray(once.convert("RGB")), np.asarray(picture)), edit


def test_a_crop_keeps_30_to_70_percent_of_the_area_and_a_rotation_has_no_black_corners():
    import random

    picture = Image.new("RGB", (400, 300), "white")
    for seed in range(50):
        window = crop(picture, random.Random(seed))
        assert 0.25 <= window.width * window.height / (400 * 300) <= 0.75
        turned = np.asarray(edited(picture, "rotate", seed))
        assert turned.min() > 200  # white all over: the black corners were cut off


def test_sources_are_a_seeded_sample_in_collection_order():
    images = [f"{i:03d}.jpg" for i in range(50)]
    chosen = sample_sources(images, 10, seed=1)
    assert chosen == sample_sources(images, 10, seed=1) and chosen == sorted(chosen) and len(set(chosen)) == 10
    assert chosen != sample_sources(images, 10, seed=2)
    assert sample_sources(images[:5], 10, seed=1) == images[:5]


@pytest.mark.slow
def test_edited_photos_find_their_source_and_the_numbers_agree_with_the_stored_descriptors(tmp_path):
    make_gallery(tmp_path / "photos", 12, width=200, height=150)
    index_dir = tmp_path / "indexes"
    extractors = ExtractorCache()
    settings = BuildSettings(
        index_dir=index_dir,
        progress=False,
        store="exact",
        recipe=RecipeSettings(weights=Weights.parse("none"), input_size=96),
    )
    build_indexes(folder_collection(tmp_path / "photos", "photos"), [BACKBONES["xception"]], settings,
                  extractors=extractors)  # fmt: skip
    engine = SearchEngine(index_dir, extractors=extractors)
    results = evaluate_self_retrieval(engine, "photos", ["xception"], queries=6, seed=3, progress=False)
    assert load_self_retrieval(index_dir, "photos") == results
    assert {(row.metric, row.edit) for row in results.rows} == {
        (metric, edit) for metric in ("cosine", "euclidean") for edit in (*EDITS, ALL_EDITS)
    }
    overall = next(row for row in results.rows if row.metric == "cosine" and row.edit == ALL_EDITS)
    assert overall.n_queries == 6 * len(EDITS) and overall.recall[10] == 1.0  # 12 images: always in the top 10
    # Even an untrained network finds most edited photos' sources first on this gallery.
    assert overall.recall[1] >= 0.6 and overall.recall[1] <= overall.recall[5] <= overall.recall[10]

    # Recompute every cosine rank from the stored rows and the edited queries, outside the evaluation.
    loaded = engine.index("photos", "xception")
    rows = {image: row for row, image in enumerate(loaded.manifest.images)}
    with open(IndexLayout(index_dir).results_dir("photos") / SELF_RETRIEVAL_CSV, newline="") as handle:
        recorded = {(r["source"], r["edit"]): int(r["rank"]) for r in csv.DictReader(handle)
                    if r["metric"] == "cosine"}  # fmt: skip
    for number, source in enumerate(results.sources):
        original = Image.open(tmp_path / "photos" / source)
        for edit in EDITS:
            query = engine.describe(edited(original, edit, 3 * 1_000_003 + number), collection="photos",
                                    recipe="xception")  # fmt: skip
            order = nearest(exact_distances(np.asarray(loaded.descriptors), query, Metric.COSINE), None).rows
            assert recorded[(source, edit)] == int(np.flatnonzero(order == rows[source])[0]) + 1
    for edit in EDITS:
        row = next(r for r in results.rows if r.metric == "cosine" and r.edit == edit)
        ranks = [recorded[(source, edit)] for source in results.sources]
        assert row.mrr == pytest.approx(np.mean([1 / rank for rank in ranks]))
        assert row.recall[1] == pytest.approx(np.mean([rank == 1 for rank in ranks]))

    # The command the Evaluation tab advises works for such a collection.
    result = subprocess.run(
        [sys.executable, "-m", "cbir.evaluate", "--collection", "photos", "--recipes", "all", "--index-dir",
         str(index_dir), "--self-queries", "2", "--no-progress"],
        cwd=REPO, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "photos: self-retrieval, 2 images x 5 edits" in result.stdout and "not a landmark" not in result.stderr
    # ... and the tab shows the table, named for what it is.
    from cbir_ui.page import build_ui

    config = str(build_ui(engine, index_dir).get_config_file())
    assert "**Self-retrieval** (2 of its images x 5 edits" in config and "not comparable with an Oxford/Paris mAP" in config
