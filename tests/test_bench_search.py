"""The search benchmark runs and writes its results; the project's default Annoy settings reach the
recall they promise against exact search."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from cbir.distances import Metric
from cbir.stores import annoy as annoy_store
from cbir.stores.annoy import DEFAULT_CANDIDATES, DEFAULT_N_TREES
from cbir.stores.exact import ExactStore

REPO = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_search", REPO / "bench" / "search.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_writes_results_with_recall_in_range(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "search.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "search-quick.json").read_text())
    assert report["cores"] >= 1 and report["cpu"]  # which machine the numbers belong to
    measured = [row for row in report["rows"] if "note" not in row]
    assert {row["method"] for row in measured} >= {"exact numpy", "annoy, k of candidates", "annoy plain",
                                                   "annoy on PCA-16 + exact rerank at 64"}  # fmt: skip
    for row in measured:
        assert 0.0 <= row["recall_at_10"] <= 1.0 and 0.0 <= row["recall_at_100"] <= 1.0
        assert row["p50_ms"] > 0 and row["p99_ms"] >= row["p50_ms"]
    exact = next(row for row in measured if row["method"] == "exact numpy")
    assert exact["recall_at_10"] == exact["recall_at_100"] == 1.0
    assert exact["resident_mb"] == exact["size_mb"] == round(2000 * 64 * 4 / 2**20, 1)  # the matrix itself
    annoy = [row for row in measured if row["method"] == "annoy, k of candidates"]
    assert all(row["size_mb"] > 0 and row["build_seconds"] > 0 for row in annoy)
    assert "| 2000 | 64 | 40 | exact numpy |" in (tmp_path / "search-quick.md").read_text()  # 2,000 / 50 centres


def test_default_annoy_settings_reach_recall_at_10_of_095(tmp_path):
    bench = load_bench()
    descriptors = bench.clustered(5000, 256, centres=100, seed=1)
    queries = bench.clustered(100, 256, centres=100, seed=2)
    params = annoy_store.KIND.build(tmp_path, descriptors, {"n_trees": DEFAULT_N_TREES})
    store = annoy_store.KIND.open(tmp_path, descriptors, params)
    exact = ExactStore(descriptors)
    recalls = []
    for query in queries:
        truth = exact.search(query, Metric.COSINE, 10).rows
        found = store.search(query, Metric.COSINE, 10, candidates=DEFAULT_CANDIDATES).rows
        recalls.append(len(set(truth.tolist()) & set(found.tolist())) / 10)
    assert np.mean(recalls) >= 0.95
