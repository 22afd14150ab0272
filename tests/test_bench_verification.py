"""bench/verification.py and bench/openblas_spin.py run and write what they measured, with the machine
they ran on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benches import run_bench

REPO = Path(__file__).resolve().parents[1]
STEPS = ("read rows", "unpack to float", "descriptor products", "matching", "RANSAC")


@pytest.mark.slow
def test_quick_run_writes_the_costs_of_both_sizes_and_their_steps(tmp_path):
    run_bench("verification.py", "--quick", "--out", str(tmp_path))
    report = json.loads((tmp_path / "verification.json").read_text())
    assert report["cpu"] and report["cores"] >= 1 and report["load_average_end"] >= 0
    assert report["settings"] == {"method": "rootsift", "max_side": 512, "max_keypoints": 500}
    small, large = report["files"]
    assert small["rows"] == 300 and large["rows"] == 3000
    assert 100 * 136 < small["bytes_per_image"] < 500 * 140  # keypoints of 136 bytes, at most 500 of them
    assert report["query_describe_median_ms"] > 0
    as_index, other, cold = report["rows"]
    assert as_index["features"].endswith("(as the index reads them)") and cold["rows"] == 3000
    for row in (as_index, other):
        assert row["own_picture_first"] == "3 / 3" and row["verify_top_100_median_ms"] > 0
        # The steps are parts of the whole (the whole also sorts; the machine is shared: a margin).
        assert 0 < sum(row[f"{step}_median_ms"] for step in STEPS) < 2 * row["verify_top_100_median_ms"]
    assert cold["own_picture_most_inliers"] == "3 / 3" and cold["cold_total_median_ms"] > 0
    assert report["cpu"] in (tmp_path / "verification.md").read_text()


@pytest.mark.slow
def test_openblas_spin_quick_run_writes_both_settings(tmp_path):
    run_bench("openblas_spin.py", "--quick", "--out", str(tmp_path), timeout=300)
    report = json.loads((tmp_path / "openblas_spin.json").read_text())
    default, shortest = report["rows"]
    assert (default["openblas_thread_timeout"], shortest["openblas_thread_timeout"]) == ("default", "4")
    assert all(row["products_ms_median"] > 0 and row["cpu_ms_in_200_ms_after_median"] >= 0 for row in report["rows"])
    assert report["cpu"] in (tmp_path / "openblas_spin.md").read_text()
