"""bench/index_guard.py runs (a smoke run) and reports what it says it measures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def test_the_quick_run_reports_checked_and_unchecked_searches_and_memory(tmp_path):
    from bench import index_guard

    assert index_guard.main(["--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "index_guard.json").read_text())
    entry = report["sizes"]["1000"]
    assert entry["default"] == "in memory" and report["cpu"]
    assert entry["search_ms_p50_checked"] > 0 and entry["search_ms_p50_unchecked"] > 0 and entry["check_ms"] > 0
    assert "| 1,000 x 256 | in memory |" in (tmp_path / "index_guard.md").read_text()
