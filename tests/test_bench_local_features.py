"""bench/local_features.py runs and writes what it measured, with the machine it ran on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benches import run_bench

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_run_writes_costs_and_whether_the_crops_verified(tmp_path):
    run_bench("local_features.py", "--quick", "--out", str(tmp_path), timeout=300)
    report = json.loads((tmp_path / "local_features.json").read_text())
    assert report["cpu"] and report["cores"] >= 1
    (row,) = report["rows"]
    assert row["max_side"] == 320 and row["textured_keypoints_per_image"] == 100
    assert 0 < row["plain_seconds_per_image"] < 5 and row["textured_bytes_per_image"] > 100 * 136
    assert row["found"] == "2 / 2" and row["verify_top_100_seconds"] > 0
    assert report["cpu"] in (tmp_path / "local_features.md").read_text()
