"""bench/reranking_oxford.py runs (a smoke run) and reports every re-ranking with its mAP and added cost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benches import run_bench

REPO = Path(__file__).resolve().parents[1]
RERANKINGS = {"plain", "αQE", "verification", "verification + αQE", "diffusion", "αQE + diffusion",
              "verification + diffusion"}  # fmt: skip


@pytest.mark.slow
def test_quick_run_reports_each_re_ranking_per_protocol_and_mode(tmp_path):
    run_bench("reranking_oxford.py", "--quick", "--out", str(tmp_path))
    report = json.loads((tmp_path / "reranking-oxford-quick.json").read_text())
    assert report["cpu"] and report["command"].startswith("python bench/reranking_oxford.py --quick")
    rows = report["rows"]
    assert {(r["reranking"], r["query_mode"]) for r in rows} == {(name, mode) for name in RERANKINGS for mode in ("cropped", "full")}
    for row in rows:
        assert row["n_queries"] == 6 and 0.0 < row["map"] <= 1.0
        assert (row["added_ms_per_query"] > 0) == (row["reranking"] != "plain"), row
        assert (row["local_describe_ms_per_query"] > 0) == row["reranking"].startswith("verification"), row
    # The views of a scene verify where the untrained network confuses them: verification alone never loses.
    for mode in ("cropped", "full"):
        by_name = {r["reranking"]: r for r in rows if r["query_mode"] == mode}
        assert by_name["verification"]["map"] >= by_name["plain"]["map"]
    assert report["cpu"] in (tmp_path / "reranking-oxford-quick.md").read_text()
