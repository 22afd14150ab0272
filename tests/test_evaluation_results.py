"""The results files without running an evaluation: files of earlier versions read and merged, and
the ranking layout revisitop's tools read."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cbir.evaluation import PrCurve, ResultRow, load_results, results_folder
from cbir.evaluation.results import RESULTS_SCHEMA_VERSION, QueryRun, RowKey
from cbir.evaluation.writers import RankingExport, per_query_rows, write_results
from cbir.metrics import score_query
from cbir.protocols import STANDARD

# A row as results.json held it before recipes and protocols (schema 1): keyed by backbone, the
# store's columns still named after Annoy.
SCHEMA_1_ROW = {
    "backbone": "vgg16", "metric": "cosine", "query_mode": "cropped", "weights": "imagenet", "untrained": False,
    "map_oxford": 0.41, "map": 0.42, "map_11point": 0.43, "map_at_100_annoy": 0.39, "mp_at_1": 1.0, "mp_at_5": 0.8,
    "mp_at_10": 0.7, "study_map": 0.6, "study_map_11point": 0.61, "mean_query_seconds": 0.2,
    "mean_describe_seconds": 0.15, "mean_exact_search_seconds": 0.01, "mean_annoy_search_seconds": 0.05,
    "n_queries": 55, "n_skipped": 0, "n_images": 5063, "input_size": 224,
}  # fmt: skip


def _write_schema_1(index_dir: Path) -> Path:
    folder = results_folder(index_dir, "oxford5k")
    folder.mkdir(parents=True)
    curve = {"backbone": "vgg16", "metric": "cosine", "query_mode": "cropped", "untrained": False, "precision": [0.5] * 11}
    (folder / "results.json").write_text(json.dumps({
        "collection": "oxford5k", "schema_version": 1, "protocol": "the protocol, as schema 1 said it",
        "rows": [SCHEMA_1_ROW], "pr_curves": [curve],
    }))  # fmt: skip
    with open(folder / "per_query.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["backbone", "metric", "query_mode", "query", "ap", "ap_at_100_annoy"])
        writer.writeheader()
        writer.writerow({"backbone": "vgg16", "metric": "cosine", "query_mode": "cropped", "query": "all_souls_1",
                         "ap": 0.3, "ap_at_100_annoy": 0.2})  # fmt: skip
    return folder


def test_a_schema_1_results_file_is_read_with_todays_names(tmp_path: Path) -> None:
    _write_schema_1(tmp_path)
    results = load_results(tmp_path, "oxford5k")
    row = results.rows[0]
    assert (row.recipe, row.protocol, row.store) == ("vgg16", "standard", "annoy")
    assert (row.map_at_100_store, row.mean_store_search_seconds) == (0.39, 0.05)
    assert results.pr_curves[0].key == RowKey("vgg16", "standard", "cosine", "cropped")
    assert results.protocols == {"standard": "the protocol, as schema 1 said it"}


def test_a_results_file_of_an_unknown_schema_is_not_read(tmp_path: Path) -> None:
    folder = results_folder(tmp_path, "oxford5k")
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"collection": "oxford5k", "schema_version": 99, "rows": []}))
    assert load_results(tmp_path, "oxford5k") is None


def test_writing_over_a_schema_1_file_keeps_its_rows_renamed_in_registry_order(tmp_path: Path) -> None:
    folder = _write_schema_1(tmp_path)
    key = RowKey("inception_v3", "standard", "cosine", "cropped")
    scores = score_query(["a", "b", "c"], {"a", "c"}, set())
    runs = [QueryRun("all_souls_1", scores, 0.5, 0.1, 0.01, 0.02, np.linspace(1.0, 0.0, 11))]
    row = ResultRow("inception_v3", "inception_v3", "standard", "cosine", "cropped", "imagenet", False,
                    "annoy", *[0.5] * 9, 0.1, 0.1, 0.01, 0.02, 1, 0, 3, 299)  # fmt: skip
    curve = PrCurve("inception_v3", "standard", "cosine", "cropped", False, [1.0] * 11)

    results = write_results(tmp_path, "oxford5k", [row], [curve], per_query_rows(key, runs), [STANDARD])

    assert results.schema_version == RESULTS_SCHEMA_VERSION
    assert [r.recipe for r in results.rows] == ["vgg16", "inception_v3"]  # the registry's order, not by name
    assert [c.recipe for c in results.pr_curves] == ["vgg16", "inception_v3"]
    assert results.protocols == {"standard": STANDARD.description}
    # As JSON: the old row's revisitop columns are NaN, which no dataclass equality matches.
    assert json.dumps(load_results(tmp_path, "oxford5k").to_json()) == json.dumps(results.to_json())
    with open(folder / "per_query.csv", newline="") as handle:
        lines = list(csv.DictReader(handle))
    assert [(line["recipe"], line["protocol"], line["ap_at_100_store"]) for line in lines] == [
        ("vgg16", "standard", "0.2"),
        ("inception_v3", "standard", "0.5"),
    ]
    assert float(lines[1]["ap"]) == pytest.approx(scores.ap)
    assert (folder / "pr_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_ranking_is_exported_as_a_permutation_of_the_database_order(tmp_path: Path) -> None:
    export = RankingExport()
    export.descriptors += [np.ones(4), np.zeros(4)]
    export.add_ranking(["c", "a"], ["a", "b", "c", "d"])  # b and d could not be read: they go last
    export.add_ranking(["d", "c", "b", "a"], ["a", "b", "c", "d"])
    queries, ranks = export.write(tmp_path, "xception")
    assert np.load(ranks).tolist() == [[2, 3], [0, 2], [1, 1], [3, 0]]  # database size x queries
    assert np.load(queries).dtype == np.float32 and np.load(queries).shape == (2, 4)
