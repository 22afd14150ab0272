"""Shared test setup: the tests import their helpers (synthetic.py, fake_datasets.py) by name.

`python -m pytest` is the fast run (tests marked `slow` are skipped, with the switch in the reason);
`python -m pytest --slow` is the full run CI makes. Tests marked `browser` need Playwright and Debian's
Chromium: they skip without them, except when CBIR_REQUIRE_OPTIONAL=1 (tests/optional.py).
"""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import optional  # noqa: E402  (found through the path above)


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", default=False,
                     help="run the slow tests too (networks, servers, benchmarks' smoke runs): the full run CI makes")  # fmt: skip


@pytest.hookimpl(tryfirst=True)  # before any fixture of a skipped test is set up
def pytest_runtest_setup(item):
    # Raised here rather than added as a mark, so the summary folds every slow skip into one line.
    if "slow" in item.keywords and not item.config.getoption("--slow"):
        pytest.skip("slow: the full run includes it (python -m pytest --slow)")
    if "browser" in item.keywords:
        missing = optional.browser_missing()
        if missing and optional.REQUIRED:
            pytest.fail(f"{missing} (CBIR_REQUIRE_OPTIONAL=1: the full run needs the browser)")
        if missing:
            pytest.skip(missing)


@pytest.fixture(scope="module")
def extractors():
    """The networks a test module builds, built once per module (and let go after it)."""
    from cbir.trunks import ExtractorCache

    return ExtractorCache()
