"""What the tests need beyond requirements.txt, and what happens when it is missing.

`python -m pytest` runs on requirements.txt alone: a test that needs an optional package (or Chromium)
skips with the command that installs it. The full run CI makes sets CBIR_REQUIRE_OPTIONAL=1 after
installing every optional file (.ci/run); there a missing package or browser is a failure, so nothing
is left untested by accident.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

from served_app import CHROMIUM

REQUIRED = os.environ.get("CBIR_REQUIRE_OPTIONAL") == "1"

SCALE = "pip install -r requirements-scale.txt"
BENCH_PEERS = "pip install -r bench/requirements.txt"
INSTALL = {
    "hnswlib": SCALE,
    "pymilvus": SCALE,
    "milvus_lite": SCALE,
    "ray": SCALE,
    "openvino": SCALE,
    "keras_hub": "pip install --no-deps -r requirements-keras-hub.txt",
    "faiss": BENCH_PEERS,
    "voyager": BENCH_PEERS,
    "scipy": BENCH_PEERS,
    "playwright": "pip install -r requirements-dev.txt",
}


def need(module: str) -> ModuleType:
    """The module, or a skip naming its install command (a failure when CBIR_REQUIRE_OPTIONAL=1)."""
    reason = f"{module} is not installed: {INSTALL[module]}"
    if REQUIRED:
        try:
            return importlib.import_module(module)
        except ImportError as error:
            pytest.fail(f"{reason} (CBIR_REQUIRE_OPTIONAL=1: the full run needs every optional package): {error}")
    return pytest.importorskip(module, reason=reason)


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def browser_missing() -> str | None:
    """Why a browser test cannot run here (None when it can): no Playwright, or no Debian Chromium."""
    if not installed("playwright"):
        return f"playwright is not installed: {INSTALL['playwright']}"
    if not Path(CHROMIUM).exists():
        return f"Debian's chromium is not installed at {CHROMIUM}: apt-get install chromium (.ci/run does)"
    return None
