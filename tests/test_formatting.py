"""What the page writes (cbir_ui.formatting), word for word: the captions under the thumbnails, the
status line under the results, the backbone menu's labels, the notices and the evaluation tables.
Plain values in, plain strings out: no Gradio, no index, no network."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from cbir.catalogue import BrokenIndex, IndexInfo
from cbir.distances import Metric
from cbir.evaluation import ResultRow, Results, RevisitedRow
from cbir.recipe import Recipe
from cbir.search import Hit, SearchResult
from cbir.self_retrieval import SelfRetrievalResults, SelfRetrievalRow
from cbir_ui.formatting import (
    MEASURED_HEADERS,
    REVISITED_HEADERS,
    SELF_RETRIEVAL_HEADERS,
    LeftOut,
    broken_notice,
    evaluate_command,
    gallery_items,
    measured_table,
    readable,
    recipe_label,
    revisited_rows,
    self_retrieval_rows,
    status_line,
    upload_help,
)


def hit(rank: int, image: str, distance: float = 0.25, similarity: float = 0.96875, inliers: int | None = None) -> Hit:
    return Hit(rank, image, Path("/photos") / image, distance, similarity, inliers)


def result(hits: list[Hit], **fields) -> SearchResult:
    values = dict(collection="demo", recipe="xception", metric=Metric.COSINE, exact=True, describe_seconds=0.1234,
                  search_seconds=0.00456, untrained=False)  # fmt: skip
    return SearchResult(hits=hits, **{**values, **fields})


def test_a_caption_says_rank_name_and_cosine_similarity_to_three_places():
    found = result([hit(1, "a/b/all_souls_000013.jpg", similarity=0.98765), hit(2, "c.png", similarity=-0.5)])
    served = {"a/b/all_souls_000013.jpg": "/thumbs/1.jpg", "c.png": "/thumbs/2.jpg"}
    assert gallery_items(found, served.get) == [
        ("/thumbs/1.jpg", "#1 all_souls_000013 · cos 0.988"),
        ("/thumbs/2.jpg", "#2 c · cos -0.500"),
    ]


def test_a_caption_under_euclidean_says_the_l2_distance_to_three_significant_digits():
    found = result([hit(1, "x.jpg", distance=12.3456, similarity=0.1), hit(2, "y.jpg", distance=0.000123456)],
                   metric=Metric.EUCLIDEAN)  # fmt: skip
    assert [caption for _, caption in gallery_items(found, lambda image: "/t/" + image)] == [
        "#1 x · L2 12.3",
        "#2 y · L2 0.000123",
    ]


def test_a_verified_hit_ends_with_its_inlier_count_and_an_unexamined_one_says_nothing():
    found = result([hit(1, "p.jpg", inliers=42), hit(2, "q.jpg", inliers=0), hit(3, "r.jpg")])
    assert [caption for _, caption in gallery_items(found, lambda image: "/t/" + image)] == [
        "#1 p · cos 0.969 · 42 inliers",
        "#2 q · cos 0.969 · 0 inliers",  # examined, no match: still said
        "#3 r · cos 0.969",
    ]


def test_a_hit_without_a_thumbnail_is_left_out_of_the_gallery():
    found = result([hit(1, "gone.jpg"), hit(2, "here.jpg")])
    assert gallery_items(found, {"here.jpg": "/t/here.jpg"}.get) == [("/t/here.jpg", "#2 here · cos 0.969")]
    assert gallery_items(found) == []  # nothing served unless the caller says where


def test_a_file_name_that_is_not_utf8_is_shown_with_a_replacement_character():
    name = b"caf\xe9".decode("utf-8", "surrogateescape")  # a Latin-1 name on a Linux disk
    assert readable(name) == "caf\ufffd"
    assert readable("café ü") == "café ü"
    found = result([hit(1, name + ".jpg")])
    assert gallery_items(found, lambda image: "/t/1.jpg") == [("/t/1.jpg", "#1 caf\ufffd · cos 0.969")]


def test_the_status_line_gives_counts_times_collection_recipe_and_metric():
    found = result([hit(1, "a.jpg"), hit(2, "b.jpg"), hit(3, "c.jpg")])
    assert status_line(found) == (
        "3 results in 128 ms (descriptor 123 ms, exact search 4.6 ms) · demo · xception · cosine similarity"
    )
    approximate = result([hit(1, "a.jpg")], exact=False, metric=Metric.EUCLIDEAN, describe_seconds=0.5,
                         search_seconds=0.25, collection="oxford5k", recipe="vgg16-gem")  # fmt: skip
    assert status_line(approximate) == (
        "1 results in 750 ms (descriptor 500 ms, index search 250.0 ms) · oxford5k · vgg16-gem · Euclidean distance"
    )


def test_the_status_line_warns_of_untrained_weights_and_adds_each_warning_on_its_own_paragraph():
    found = result([hit(1, "a.jpg")], untrained=True, warnings=("first warning", "second warning"))
    lines = status_line(found).split("\n\n")
    assert lines[0].endswith(" · cosine similarity · **untrained weights: rankings are meaningless**")
    assert lines[1:] == ["⚠ first warning", "⚠ second warning"]
    assert "untrained" not in status_line(result([hit(1, "a.jpg")]))


@pytest.mark.parametrize("missing", [1, 5])
def test_the_status_line_counts_the_hits_left_out_and_names_up_to_five_with_why(missing):
    hits = [hit(rank, f"dir/p{rank}.jpg") for rank in range(1, 9)]
    left_out = [LeftOut(f"dir/p{rank}.jpg", f"reason {rank}") for rank in range(1, missing + 1)]
    first, notice = status_line(result(hits), left_out).split("\n\n")
    assert first.startswith(f"{8 - missing} results in ")
    named = "; ".join(f"p{rank}: reason {rank}" for rank in range(1, missing + 1))
    assert notice == (
        f"⚠ {missing} more found but not shown: their images cannot be read since the index was built ({named}). "
        "Rebuilding the collection drops them."
    )


@pytest.mark.parametrize("missing", [6, 7])
def test_past_five_hits_left_out_the_status_line_says_how_many_more(missing):
    hits = [hit(rank, f"p{rank}.jpg") for rank in range(1, 10)]
    left_out = [LeftOut(f"p{rank}.jpg", "file not found") for rank in range(1, missing + 1)]
    line = status_line(result(hits, warnings=("stale",)), left_out)
    first, warning, notice = line.split("\n\n")
    assert first.startswith(f"{9 - missing} results in ") and warning == "⚠ stale"
    named = "; ".join(f"p{rank}: file not found" for rank in range(1, 6))
    assert notice == (
        f"⚠ {missing} more found but not shown: their images cannot be read since the index was built ({named}; and "
        f"{missing - 5} more). "
        "Rebuilding the collection drops them."
    )


def info(recipe: Recipe, collection: str = "demo") -> IndexInfo:
    return IndexInfo(collection, recipe, 10, Path("/indexes") / collection / recipe.key)


def test_the_backbone_menu_names_the_recipe_and_marks_newer_backbones_and_untrained_weights():
    assert recipe_label(info(Recipe.create("xception", input_size=96))) == "xception · 2048-d"
    assert recipe_label(info(Recipe.create("xception", weights="none", pooling="gem"))) == "xception · GeM · 2048-d · UNTRAINED"
    assert recipe_label(info(Recipe.create("dinov2_small"))) == "newer · dinov2_small · 384-d"
    assert recipe_label(info(Recipe.create("dinov2_small", weights="none"))) == "newer · dinov2_small · 384-d · UNTRAINED"


def test_the_broken_notice_lists_each_damaged_index_with_its_problem_and_nothing_when_all_load():
    assert broken_notice([]) == ""
    broken = [BrokenIndex("demo", "xception", Path("/i/demo/xception"), "descriptors.npy is short. Rebuild it: X"),
              BrokenIndex("paris", "vgg16-gem", Path("/i/paris/vgg16-gem"), "no manifest")]  # fmt: skip
    assert broken_notice(broken) == (
        "**Not served (damaged or unreadable):**\n"
        "- **demo/xception**: descriptors.npy is short. Rebuild it: X\n"
        "- **paris/vgg16-gem**: no manifest"
    )


def test_the_upload_help_states_the_limits_and_where_photos_go(tmp_path, monkeypatch):
    from cbir.build import BuildSettings
    from cbir.trunks import ExtractorCache
    from cbir.uploads import PrivateCollections, UploadLimits

    limits = UploadLimits(max_images=7, max_bytes=3 * 2**20, max_zip_members=2500)
    private = PrivateCollections(tmp_path / "private", BuildSettings(), ExtractorCache(), limits=limits)
    start = (
        "Search your own photos: send images or a zip of them, pick a backbone, and press **Describe and add**. "
        "The collection is then the one searched on the Search tab. Limits: up to 7 images or zips of them, 3 MB in "
        "all (after unzipping), 2,500 files per zip; each file sent at most 25MB, each image at most 16,384 px a side "
        "and 64 megapixels. Images that cannot be read are skipped and listed. "
    )
    assert upload_help(private) == start + (
        "They stay yours alone: no other visitor can see or search them, and they are deleted when you close the page."
    )
    kept = PrivateCollections(tmp_path / "kept", BuildSettings(), ExtractorCache(), limits=limits, keep=True)
    assert upload_help(kept) == start + (
        f"They are kept in `{tmp_path / 'kept'}` (this is a local, single-user run: `--keep-uploads`)."
    )
    # The image limits as set, in megapixels rounded to the nearest (1.5 rounds to 2).
    from cbir import images
    from cbir_ui import formatting

    monkeypatch.setattr(formatting, "DEFAULT_LIMITS", images.ImageLimits(max_pixels=1_500_000, max_side=1200))
    assert "each image at most 1,200 px a side and 2 megapixels." in upload_help(private)


def test_the_evaluate_command_names_the_collection_and_every_recipe():
    assert evaluate_command("oxford5k") == "python -m cbir.evaluate --collection oxford5k --recipes all"


REQUIRED = {f.name: 0 for f in dataclasses.fields(ResultRow)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}  # fmt: skip


def result_row(recipe: str, backbone: str, **values) -> ResultRow:
    base = {**REQUIRED, "recipe": recipe, "backbone": backbone, "protocol": "standard", "metric": "cosine",
            "query_mode": "cropped", "untrained": False}  # fmt: skip
    return ResultRow(**{**base, **values})


def results(rows: list[ResultRow]) -> Results:
    return Results(collection="oxford5k", rows=rows, pr_curves=[], protocols={}, created="", versions={})


def test_an_evaluation_row_shows_every_measure_rounded_as_the_table_prints_it():
    row = result_row(
        "xception-gem-w512-paris6k", "xception", untrained=True, pooling="gem", scales="1,0.707", whitening="paris6k, 512-d",
        dim=512, reranking="αQE", protocol="medium", metric="euclidean", query_mode="full", map_oxford=0.123456,
        map=0.234567, map_11point=0.345678, map_at_100_store=0.456789, mp_at_1=0.567891, mp_at_5=0.678912,
        mp_at_10=0.789123, mp_at_1_revisitop=0.891234, mp_at_5_revisitop=0.912345, mp_at_10_revisitop=0.123457,
        study_map=0.654321, mean_query_seconds=0.0123456, n_queries=70,
    )  # fmt: skip
    assert measured_table(results([row])) == [[
        "xception (untrained)", "GeM", "1,0.707", "paris6k, 512-d", 512, "αQE", "medium", "euclidean", "full",
        0.123, 0.235, 0.346, 0.457, 0.568, 0.679, 0.789, 0.891, 0.912, 0.123, 0.654, 12.3, 70,
    ]]  # fmt: skip
    assert len(MEASURED_HEADERS) == len(measured_table(results([row]))[0])


def test_an_evaluation_row_without_whitening_dimension_or_reranking_shows_dashes_and_an_unknown_pooling_as_is():
    row = result_row("xception", "xception", pooling="mystery", whitening="", dim=0, reranking="")
    line = measured_table(results([row]))[0]
    assert line[:6] == ["xception", "mystery", "1", "-", "", "-"]


def test_the_evaluation_table_groups_rows_by_protocol_metric_mode_and_reranking_then_backbone_in_registry_order():
    # Each row's query count is the place it must take in the table.
    rows = [
        result_row("unknown-net", "unknown-net", n_queries=8),  # a backbone the registry no longer lists: last
        result_row("xception-gem", "xception", n_queries=6),
        result_row("xception", "xception", n_queries=5),  # the study's recipe before the backbone's others
        result_row("vgg16-mac", "vgg16", n_queries=4),
        result_row("vgg16-gem", "vgg16", n_queries=3),
        result_row("dinov2_small", "dinov2_small", n_queries=7),
        result_row("vgg16", "vgg16", reranking="αQE", n_queries=9),
        result_row("vgg16", "vgg16", query_mode="full", n_queries=10),
        result_row("vgg16", "vgg16", metric="euclidean", n_queries=11),
        result_row("vgg16", "vgg16", n_queries=2),
        result_row("vgg16", "vgg16", protocol="easy", n_queries=1),
    ]
    assert [line[-1] for line in measured_table(results(rows))] == list(range(1, 12))


def test_a_self_retrieval_row_shows_recall_at_1_5_10_and_mrr_rounded():
    rows = [
        SelfRetrievalRow("xception-gem", "cosine", "crop", 40, {1: 0.123456, 5: 0.234567, 10: 0.345678}, 0.456789,
                         untrained=True, mean_query_seconds=0.0456789),
        SelfRetrievalRow("vgg16", "euclidean", "all", 8, {1: 1.0, 5: 1.0, 10: 1.0}, 1.0, untrained=False,
                         mean_query_seconds=0.2),
    ]  # fmt: skip
    table = self_retrieval_rows(SelfRetrievalResults("mine", rows, [], 0, ""))
    assert table == [
        ["xception-gem (untrained)", "cosine", "crop", 0.123, 0.235, 0.346, 0.457, 40, 45.7],
        ["vgg16", "euclidean", "all", 1.0, 1.0, 1.0, 1.0, 8, 200.0],
    ]
    assert len(table[0]) == len(SELF_RETRIEVAL_HEADERS)


def test_a_revisited_row_shows_easy_medium_hard_in_percent_and_nan_for_a_protocol_not_evaluated():
    lines = [
        RevisitedRow("xception", "cosine", "cropped", "αQE", True, {"easy": 0.123456, "medium": 0.234567, "hard": 0.345678},
                     {"easy": 0.456789, "medium": 0.567891, "hard": 0.678912}),
        RevisitedRow("vgg16", "euclidean", "full", "", False, {"medium": 0.5}, {"hard": 0.25}),
    ]  # fmt: skip
    table = revisited_rows(lines)
    assert table[0] == ["xception (untrained)", "cosine", "cropped", "αQE", 12.35, 23.46, 34.57, 45.68, 56.79, 67.89]
    assert table[1][:4] == ["vgg16", "euclidean", "full", "-"]
    assert math.isnan(table[1][4]) and table[1][5] == 50.0 and math.isnan(table[1][6])
    assert math.isnan(table[1][7]) and math.isnan(table[1][8]) and table[1][9] == 25.0
    assert len(table[0]) == len(REVISITED_HEADERS)
