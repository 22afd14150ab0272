"""Shared test setup: the tests import their helpers (synthetic.py, fake_datasets.py) by name."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="module")
def extractors():
    """The networks a test module builds, built once per module (and let go after it)."""
    from cbir.trunks import ExtractorCache

    return ExtractorCache()
