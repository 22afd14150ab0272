"""The evaluation's re-ranked rows (cbir.evaluation): spatial verification alone and before αQE and
diffusion, for every protocol and query mode, each with its added cost; the AP of a verified ranking
worked out by hand; an index without local features refused with the command that builds them."""

from __future__ import annotations

import csv
import json
import math
import shutil
from fractions import Fraction as F
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from stubs import RECIPE, StubbedEngine, wide, write_collection
from synthetic import draw_textured_picture

from cbir import cli
from cbir.datasets import Collection, Query
from cbir.diffusion import Diffusion
from cbir.distances import Metric
from cbir.evaluation import (
    EvaluationSettings,
    MissingLocalFeatures,
    Results,
    evaluate_collection,
    format_summary,
    load_results,
    reranking_table,
    results_folder,
)
from cbir.index import Manifest, StoreSpec, write_index
from cbir.layout import IndexLayout, write_collection_record
from cbir.local_features import LocalFeatureSettings, describe_image
from cbir.protocols import STANDARD, Protocol, QueryMode
from cbir.ranking import AlphaQueryExpansion
from cbir.verification import SpatialVerification

cv2 = pytest.importorskip("cv2")

# Database angles on a circle (cosine ranks by |angle - query angle|): the query, at 0 degrees,
# ranks them c f d b e a. a is the query's own photo and b another view of its scene: verification
# finds both; f is labelled a positive ("ok") but shows another scene, so it cannot verify.
ANGLES = {"a": 100, "b": 60, "c": 0, "d": 40, "e": 80, "f": 20}
SCENE_SEED, OTHER_SEEDS = 7, {"c": 21, "d": 22, "e": 23, "f": 24}
BOX = (120.0, 90.0, 520.0, 390.0)  # the query's box on a.jpg (640 x 480)
GOOD_ONLY = Protocol("good-only", positive={"good"}, ignored={"ok", "junk"}, description="good images only")


def another_view(picture: Image.Image) -> Image.Image:
    """The same scene from elsewhere: a perspective change, and other light."""
    width, height = picture.size
    transform = np.array([[0.9, 0.12, 25.0], [-0.08, 0.93, 18.0], [1e-4, 4e-5, 1.0]])
    warped = cv2.warpPerspective(np.asarray(picture), transform, (width, height))
    return Image.fromarray(np.clip(warped.astype(np.float32) * [0.8, 0.9, 1.15], 0, 255).astype(np.uint8))


class RecordingEngine(StubbedEngine):
    """The stubbed network, and a note of every local description the evaluation asks for."""

    def __init__(self, index_dir: Path, descriptors) -> None:
        super().__init__(index_dir, descriptors)
        self.local_calls: list[tuple[str, tuple | None]] = []

    def describe_locally(self, image, *, collection, recipe, box=None, name=None):
        self.local_calls.append((Path(image).name, box))
        return super().describe_locally(image, collection=collection, recipe=recipe, box=box, name=name)


@pytest.fixture(scope="module")
def built_scene(tmp_path_factory):
    """A collection of six photos with local features, one query (a.jpg, boxed), hand-placed descriptors."""
    root = tmp_path_factory.mktemp("scene")
    photos = root / "photos"
    photos.mkdir()
    original = draw_textured_picture(SCENE_SEED)
    original.save(photos / "a.jpg", quality=95)
    another_view(original).save(photos / "b.jpg", quality=95)
    for name, seed in OTHER_SEEDS.items():
        draw_textured_picture(seed).save(photos / f"{name}.jpg", quality=95)
    images = tuple(f"{name}.jpg" for name in sorted(ANGLES))
    queries = (Query("q1", "a", BOX, {"good": {"a", "b"}, "ok": {"f"}, "junk": set()}),)
    collection = Collection("scene", photos, images, queries)
    index_dir = root / "indexes"
    write_collection_record(IndexLayout(index_dir), collection)
    settings = LocalFeatureSettings()
    manifest = Manifest(collection="scene", recipe=RECIPE, images=list(images), store=StoreSpec("exact"),
                        local_features=settings)  # fmt: skip
    rows = wide(*([math.cos(math.radians(ANGLES[n[0]])), math.sin(math.radians(ANGLES[n[0]]))] for n in images))
    local = [describe_image(photos / image, settings) for image in images]
    write_index(IndexLayout(index_dir).index_dir("scene", RECIPE.key), rows, manifest, local_features=local)
    query = wide([1.0, 0.0])[0]
    return index_dir, {("a", True): query, ("a", False): query}


@pytest.fixture
def scene(built_scene, tmp_path):
    """The scene's index folder, a copy per test (each evaluation merges its rows into the results)."""
    index_dir, described = built_scene
    shutil.copytree(index_dir, tmp_path / "indexes")
    return tmp_path / "indexes", described


def evaluate(scene, **options) -> tuple[Results, RecordingEngine]:
    index_dir, described = scene
    engine = RecordingEngine(index_dir, described)
    settings = EvaluationSettings(index_dir=index_dir, collection="scene", metrics=[Metric.COSINE],
                                  protocols=[STANDARD, GOOD_ONLY], progress=False, **options)  # fmt: skip
    return evaluate_collection(settings, engine=engine), engine


def test_verification_puts_the_verified_views_first_and_the_ap_is_the_hand_worked_one(scene):
    verification = SpatialVerification()
    results, engine = evaluate(scene, query_expansion=None, verification=verification)
    rows = {(r.protocol, r.query_mode, r.reranking): r for r in results.rows}
    for mode in ("cropped", "full"):
        # Standard (positives a, b, f). Plain: c f d b e a -> f@2, b@4, a@6: AP = (1/2 + 2/4 + 3/6) / 3 = 1/2.
        # Verified: a and b (in either order) ahead of the rest in their order: a b c f d e -> 1, 2, f@4:
        # AP = (1 + 1 + 3/4) / 3 = 11/12.
        assert rows[("standard", mode, "")].map == pytest.approx(float(F(1, 2)))
        assert rows[("standard", mode, verification.label)].map == pytest.approx(float(F(11, 12)))
        # good-only (f ignored): plain c d b e a -> b@3, a@5: AP = (1/3 + 2/5) / 2 = 11/30; verified: 1.
        assert rows[("good-only", mode, "")].map == pytest.approx(float(F(11, 30)))
        assert rows[("good-only", mode, verification.label)].map == pytest.approx(1.0)
    # The local features came from the query's box in the cropped mode and from the whole photo in
    # the full one, once per query and mode (not once per protocol or metric).
    assert sorted(engine.local_calls, key=str) == sorted([("a.jpg", BOX), ("a.jpg", None)], key=str)


def test_every_protocol_and_mode_has_each_re_ranking_with_its_label_and_added_cost(scene):
    expansion, diffusion, verification = AlphaQueryExpansion(n=2), Diffusion(k=2, query_k=2), SpatialVerification()
    results, _ = evaluate(scene, query_expansion=expansion, diffusion=diffusion, verification=verification)
    labels = {
        "",
        expansion.label,
        diffusion.label,
        f"{expansion.label} + {diffusion.label}",
        verification.label,
        f"{verification.label} + {expansion.label}",
        f"{verification.label} + {diffusion.label}",
    }
    found = {(r.protocol, r.query_mode, r.reranking) for r in results.rows}
    assert found == {(p, m, label) for p in ("standard", "good-only") for m in ("cropped", "full") for label in labels}
    for row in results.rows:
        if not row.reranking:
            assert row.mean_added_seconds == 0.0 and row.mean_local_describe_seconds == 0.0
        elif row.reranking.startswith(verification.label):
            # The query's local description is part of what verification adds, and of what a user waits for.
            assert 0.0 < row.mean_local_describe_seconds < row.mean_added_seconds, row.reranking
            assert row.mean_query_seconds == pytest.approx(
                row.mean_describe_seconds + row.mean_local_describe_seconds + row.mean_store_search_seconds)
        else:
            assert row.mean_added_seconds > 0.0 and row.mean_local_describe_seconds == 0.0, row.reranking

    # Kept: results.json (readable as before: the same schema, the new numbers as extra keys), per_query.csv.
    index_dir = scene[0]
    assert load_results(index_dir, "scene") == results
    written = json.loads((results_folder(index_dir, "scene") / "results.json").read_text())
    assert written["schema_version"] == 2
    with open(results_folder(index_dir, "scene") / "per_query.csv", newline="") as handle:
        per_query = list(csv.DictReader(handle))
    verified = [r for r in per_query if r["reranking"] == verification.label]
    assert len(verified) == 4 and all(float(r["added_seconds"]) > float(r["local_describe_seconds"]) > 0 for r in verified)
    assert all(float(r["added_seconds"]) == 0.0 for r in per_query if not r["reranking"])

    # The tables: each re-ranked row beside its plain mAP, with the added milliseconds.
    lines = {(line.protocol, line.query_mode, line.reranking): line for line in reranking_table(results)}
    assert len(lines) == 2 * 2 * (len(labels) - 1)
    line = lines[("good-only", "full", verification.label)]
    assert (line.map, line.plain_map) == pytest.approx((1.0, float(F(11, 30))))
    assert line.added_seconds == results.rows[results.rows.index(next(
        r for r in results.rows if (r.protocol, r.query_mode, r.reranking) == ("good-only", "full", verification.label)
    ))].mean_added_seconds  # fmt: skip
    summary = format_summary(results)
    assert f"+ {verification.label}  good-only cosine full: mAP 1.000 (+0.633), +" in summary


def test_rows_of_older_files_have_no_added_cost_and_show_a_dash(scene):
    from cbir_ui.evaluation_tab import RERANKING_HEADERS, reranking_rows

    results, _ = evaluate(scene, query_expansion=AlphaQueryExpansion(n=2))
    older = json.loads(json.dumps(results.to_json()))
    for row in older["rows"]:  # a file written before the added cost was measured
        del row["mean_added_seconds"], row["mean_local_describe_seconds"]
    read = Results.from_json(older)
    assert all(math.isnan(row.mean_added_seconds) for row in read.rows)
    table = reranking_rows(reranking_table(read))
    assert table and all(len(row) == len(RERANKING_HEADERS) and row[-1] == "-" for row in table)
    assert "+- ms/query" in format_summary(read)
    fresh = reranking_rows(reranking_table(results))
    assert all(isinstance(row[-1], float) and row[-1] > 0 for row in fresh)


def test_an_index_without_local_features_is_refused_with_the_command_that_builds_them(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a", "b"):
        draw_textured_picture(ord(name)).save(photos / f"{name}.jpg")
    collection = Collection("plain", photos, ("a.jpg", "b.jpg"), (Query("q1", "a", (0, 0, 10, 10), {"good": {"b"}}),))
    write_collection(tmp_path / "idx", collection, wide([1.0, 0.0], [0.0, 1.0]))
    engine = StubbedEngine(tmp_path / "idx", {("a", False): wide([1.0, 0.0])[0]})
    settings = EvaluationSettings(index_dir=tmp_path / "idx", collection="plain", query_modes=[QueryMode.FULL],
                                  progress=False, verification=SpatialVerification())  # fmt: skip
    with pytest.raises(MissingLocalFeatures, match=r"--local-features") as refused:
        evaluate_collection(settings, engine=engine)
    assert f"plain/{RECIPE.key} has no local features" in str(refused.value)
    assert not engine.calls  # refused before any query was described

    # The command line says it in one line, without a traceback.
    code = cli.main(["evaluate", "--index-dir", str(tmp_path / "idx"), "--collection", "plain", "--recipes",
                     RECIPE.key, "--verify", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err
    assert "--verify cannot re-rank it" in err and "--force --local-features" in err


def test_the_command_line_asks_for_verification_with_its_defaults():
    arguments = cli.parse(["evaluate", "--verify", "--diffusion"])
    assert arguments.verify and arguments.diffusion
    assert not cli.parse(["evaluate"]).verify


def test_the_evaluation_tab_shows_the_re_ranked_rows_with_their_added_cost(scene):
    from types import SimpleNamespace

    import gradio as gr

    from cbir_ui.evaluation_tab import RERANKING_HEADERS, collection_results

    verification = SpatialVerification()
    evaluate(scene, query_expansion=None, verification=verification)
    with gr.Blocks() as page:
        collection_results(SimpleNamespace(index_root=scene[0]), "scene")
    [table] = [block for block in page.blocks.values()
               if isinstance(block, gr.Dataframe) and list(block.headers) == RERANKING_HEADERS]  # fmt: skip
    shown = table.value["data"]
    assert [row[1] for row in shown] == [verification.label] * 4  # 2 protocols x 2 query modes
    assert all(row[-1] > 0 for row in shown)
    assert {(row[2], row[4], row[5], row[6]) for row in shown} == {
        (protocol, mode, 1.0 if protocol == "good-only" else round(11 / 12, 3), round(11 / 30 if protocol == "good-only" else 0.5, 3))
        for protocol in ("standard", "good-only") for mode in ("cropped", "full")
    }  # fmt: skip
