"""Running a benchmark script the way its smoke tests do: from a fresh clone, its quick settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_bench(script: str, *arguments: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python bench/<script> <arguments>` from the repository's root; fails the test unless it exits 0."""
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), *arguments],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    return result
