"""The evaluation run end to end on a miniature Oxford5k served from a local HTTP server."""

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
from cbir.datasets import DownloadSettings, prepare_dataset
from cbir.distances import Metric
from cbir.errors import CbirError
from cbir.evaluation import (
    EvaluationSettings,
    evaluate_collection,
    format_summary,
    load_results,
    results_folder,
    study_reported,
)
from cbir.metrics import average_precision, score_query
from cbir.protocols import STANDARD, QueryMode
from cbir.search import SearchEngine
from fake_datasets import make_oxford_layout, serve_directory

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def oxford(tmp_path_factory):
    """A served miniature Oxford5k (3 landmarks x 5 images, 2 queries each), built with xception."""
    root = tmp_path_factory.mktemp("oxford")
    layout = make_oxford_layout(root / "source", n_landmarks=3, images_per_landmark=5, queries_per_landmark=2)
    with serve_directory(layout["archive_dir"]) as url:
        collection = prepare_dataset(
            "oxford5k", DownloadSettings(data_dir=root / "data", mirror=url, progress=False)
        )
    index_root = root / "indexes"
    settings = BuildSettings(
        index_dir=index_root,
        progress=False,
        recipe=RecipeSettings(weights=Weights.parse("none"), input_size=80),
        store_params={"n_trees": 10},
    )
    extractors = ExtractorCache()
    build_indexes(collection, [BACKBONES["xception"]], settings, extractors=extractors)
    return {"layout": layout, "url": url, "root": root, "index_root": index_root, "collection": collection,
            "extractors": extractors}  # fmt: skip


def test_results_files_are_written_and_agree_with_the_metrics(oxford):
    index_root = oxford["index_root"]
    engine = SearchEngine(index_root, extractors=oxford["extractors"])
    results = evaluate_collection(
        EvaluationSettings(index_dir=index_root, collection="oxford5k", progress=False), engine=engine
    )
    assert load_results(index_root, "oxford5k") == results
    rows = {(r.recipe, r.metric, r.query_mode): r for r in results.rows if not r.reranking}
    assert {r.protocol for r in results.rows} == {"standard"}
    # Each plain row has its twin re-ranked by query expansion (the default).
    assert sorted((r.metric, r.query_mode) for r in results.rows if r.reranking == "αQE (n = 50, α = 3)") == sorted(
        (metric, mode) for _, metric, mode in rows
    )
    assert sorted(rows) == [
        ("xception", "cosine", "cropped"),
        ("xception", "cosine", "full"),
        ("xception", "euclidean", "cropped"),
        ("xception", "euclidean", "full"),
    ]
    for row in rows.values():
        assert row.n_queries == 6 and row.n_skipped == 0
        assert row.untrained is True and "untrained" in row.weights
        assert row.mean_query_seconds > 0

    # Recompute one row from the rankings, independently of the evaluation loop.
    collection = oxford["collection"]
    loaded = engine.index("oxford5k", "xception")
    ids = [Path(p).stem for p in loaded.manifest.images]
    expected_ap, expected_annoy = [], []
    for query in collection.queries:
        descriptor = engine.describe(
            collection.path_of(query.image), collection="oxford5k", recipe="xception", box=query.box
        )
        ranking = [ids[row] for row in loaded.search(descriptor, Metric.EUCLIDEAN, None, exact=True).rows]
        scores = score_query(ranking, STANDARD.positives(query), STANDARD.ignored_ids(query))
        expected_ap.append((scores.ap_oxford, scores.ap, scores.ap_11point, scores.precision_at[5], scores.study_ap))
        annoy = [ids[row] for row in loaded.search(descriptor, Metric.EUCLIDEAN, 100, exact=False).rows]
        expected_annoy.append(average_precision(annoy, STANDARD.positives(query), STANDARD.ignored_ids(query)))
    row = rows[("xception", "euclidean", "cropped")]
    means = np.mean(expected_ap, axis=0)
    assert [row.map_oxford, row.map, row.map_11point, row.mp_at_5, row.study_map] == pytest.approx(means)
    assert row.map_at_100_store == pytest.approx(np.mean(expected_annoy))

    folder = results_folder(index_root, "oxford5k")
    with open(folder / "per_query.csv", newline="") as handle:
        per_query = list(csv.DictReader(handle))
    assert len(per_query) == 4 * 6 * 2
    chosen = [r for r in per_query if r["metric"] == "euclidean" and r["query_mode"] == "cropped" and not r["reranking"]]
    assert [r["query"] for r in chosen] == [q.name for q in collection.queries]
    assert [float(r["ap"]) for r in chosen] == pytest.approx([e[1] for e in expected_ap])

    with Image.open(folder / "pr_curves.png") as picture:
        assert picture.format == "PNG" and picture.size[0] > 400
    curve = next(c for c in results.pr_curves if c.metric == "cosine" and c.query_mode == "cropped")
    assert len(curve.precision) == 11

    summary = format_summary(results)
    assert "xception*" in summary and "untrained" in summary


def test_evaluating_again_keeps_rows_of_other_runs(oxford):
    index_root = oxford["index_root"]
    engine = SearchEngine(index_root, extractors=oxford["extractors"])
    evaluate_collection(
        EvaluationSettings(index_dir=index_root, collection="oxford5k", metrics=[Metric.COSINE],
                           query_modes=[QueryMode.CROPPED], progress=False),
        engine=engine,
    )  # fmt: skip
    results = load_results(index_root, "oxford5k")
    assert len(results.rows) == 8  # (2 metrics x 2 modes) x (plain, αQE): the six other rows survive the rerun


def test_cli_downloads_builds_and_evaluates(oxford, tmp_path):
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    with serve_directory(oxford["layout"]["archive_dir"]) as url:
        result = subprocess.run(
            [sys.executable, str(REPO / "build_index.py"), "--dataset", "oxford5k", "--mirror", url, "--data-dir",
             str(tmp_path / "data"), "--index-dir", str(tmp_path / "idx"), "--weights", "none", "--input-size",
             "80", "--evaluate", "--no-progress"],
            env=environment, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "mAP(Ox)" in result.stdout and "xception*" in result.stdout
    assert (tmp_path / "idx" / "oxford5k" / "evaluation" / "results.json").is_file()
    again = subprocess.run(
        [sys.executable, "-m", "cbir.evaluate", "--collection", "oxford5k", "--index-dir", str(tmp_path / "idx"),
         "--modes", "cropped", "--no-progress"],
        env=environment, capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "cropped" in again.stdout


def test_evaluating_a_folder_without_ground_truth_says_so(tmp_path):
    from synthetic import make_gallery

    from cbir.datasets import folder_collection

    make_gallery(tmp_path / "photos", 3)
    settings = BuildSettings(
        index_dir=tmp_path / "idx",
        progress=False,
        recipe=RecipeSettings(weights=Weights.parse("none"), input_size=80),
    )
    build_indexes(folder_collection(tmp_path / "photos", "mine"), [BACKBONES["xception"]], settings)
    with pytest.raises(CbirError, match="no ground-truth queries"):
        evaluate_collection(EvaluationSettings(index_dir=tmp_path / "idx", collection="mine", progress=False))


def test_study_table_is_data_labelled_as_reported():
    study = study_reported()
    assert "not measured by this project" in study["note"]
    oxford = {row[0]: row[1:] for row in study["tables"]["oxford5k"]}
    assert oxford["xception"] == [0.68, 0.34, 39.94]
    assert set(oxford) == {b.name for b in BACKBONES.values() if b.family.value == "the study's six"}


# --------------------------------------------------------------------------------------------
# Hand-worked: six images on a circle, two queries, every number worked out below.


def on_circle(degrees: float) -> list[float]:
    return [float(np.cos(np.radians(degrees))), float(np.sin(np.radians(degrees)))]


# Database angles: a 0, d 20, c 40, f 60, b 80, e 100 degrees. A query at angle phi ranks the
# images by |angle - phi| (cosine), so each query direction below fixes one ranking.
ANGLES = {"a": 0, "b": 80, "c": 40, "d": 20, "e": 100, "f": 60}
QUERY_ANGLES = {("a", True): 0, ("a", False): 85, ("e", True): 58, ("e", False): 100}


@pytest.fixture
def hand_made(tmp_path):
    from stubs import StubbedEngine, wide, write_collection

    from cbir.datasets import Collection, Query

    photos = tmp_path / "photos"
    photos.mkdir()
    images = tuple(f"{name}.jpg" for name in sorted(ANGLES))
    for image in images:
        (photos / image).write_bytes(b"never decoded: the network is stubbed")
    queries = (
        Query("q1", "a", (0, 0, 10, 10), {"good": {"b"}, "ok": {"c"}, "junk": {"d"}}),
        Query("q2", "e", (5, 5, 20, 20), {"good": {"f"}}),
    )
    rows = wide(*(on_circle(ANGLES[name.removesuffix(".jpg")]) for name in images))
    write_collection(tmp_path / "idx", Collection("hand", photos, images, queries), rows)
    described = {key: wide(on_circle(angle))[0] for key, angle in QUERY_ANGLES.items()}
    return StubbedEngine(tmp_path / "idx", described), tmp_path / "idx"


def test_evaluation_reproduces_hand_worked_map_in_both_query_modes(hand_made):
    from fractions import Fraction as F

    from cbir.protocols import Protocol

    engine, index_dir = hand_made
    good_only = Protocol("good-only", positive={"good"}, ignored={"ok", "junk"}, description="a test's protocol")
    results = evaluate_collection(
        EvaluationSettings(index_dir=index_dir, collection="hand", metrics=[Metric.COSINE],
                           protocols=[STANDARD, good_only], progress=False),
        engine=engine,
    )  # fmt: skip
    rows = {(r.protocol, r.query_mode): r for r in results.rows}
    # Standard protocol (positives good + ok, junk removed):
    # q1 cropped, phi 0:  a d c f b e -> without junk d: a c f b e; positives c@2, b@4.
    #   AP = (1/2 + 2/4) / 2 = 1/2. Oxford (trapezoid, previous precision updated at every rank):
    #   a: p 0; c: r 1/2, p 1/2 -> 1/2 * (0 + 1/2) / 2 = 1/8; f: p 1/3; b: r 1, p 1/2 ->
    #   1/2 * (1/3 + 1/2) / 2 = 5/24; total 1/3. P@1 0, P@5 2/5, P@10 2/10.
    # q2 cropped, phi 58: f c b d e a; positive f@1: AP 1, Oxford 1, P@1 1, P@5 1/5, P@10 1/10.
    cropped = rows[("standard", "cropped")]
    assert cropped.map == pytest.approx(float((F(1, 2) + 1) / 2))
    assert cropped.map_oxford == pytest.approx(float((F(1, 3) + 1) / 2))
    assert [cropped.mp_at_1, cropped.mp_at_5, cropped.mp_at_10] == pytest.approx([0.5, 0.3, 0.15])
    # q1 full, phi 85: b e f c d a -> without d: b e f c a; positives b@1, c@4.
    #   AP = (1 + 2/4) / 2 = 3/4. Oxford: b: 1/2 * (1 + 1) / 2 = 1/2; e, f: p 1/2, 1/3;
    #   c: 1/2 * (1/3 + 1/2) / 2 = 5/24; total 17/24. P@1 1, P@5 2/5, P@10 2/10.
    # q2 full, phi 100: e b f c d a; positive f@3: AP 1/3; Oxford: e p 0, b p 0, f: 1 * (0 + 1/3) / 2
    #   = 1/6. P@1 0, P@5 1/5, P@10 1/10.
    full = rows[("standard", "full")]
    assert full.map == pytest.approx(float((F(3, 4) + F(1, 3)) / 2))
    assert full.map_oxford == pytest.approx(float((F(17, 24) + F(1, 6)) / 2))
    assert [full.mp_at_1, full.mp_at_5, full.mp_at_10] == pytest.approx([0.5, 0.3, 0.15])
    # The protocol defined here, scored by the same code (positives good; ok and junk removed):
    # q1 cropped: a f b e -> b@3: AP 1/3; q2 cropped: f@1: AP 1.
    assert rows[("good-only", "cropped")].map == pytest.approx(float((F(1, 3) + 1) / 2))
    # The exact store answers the top 100 too, so mAP@100 (store) is the same number.
    assert cropped.map_at_100_store == pytest.approx(cropped.map)
    # Each query was described from its own file: cropped to its box, and whole.
    assert set(engine.calls) == {("a.jpg", None), ("a.jpg", (0.0, 0.0, 10.0, 10.0)),
                                 ("e.jpg", None), ("e.jpg", (5.0, 5.0, 20.0, 20.0))}  # fmt: skip
    assert results.protocols["good-only"] == "a test's protocol"
