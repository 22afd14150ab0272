"""pyproject.toml mirrors the requirements files (Spaces install requirements.txt; pip install . reads
pyproject.toml): the pins must not drift apart. Fast: it reads files only."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
SELF_REFERENCE = re.compile(r"^cbir\[")


def pins(lines: list[str]) -> set[str]:
    """The requirement lines, without comments, blank lines and `-r` includes."""
    found = set()
    for line in lines:
        requirement = line.split("#", 1)[0].strip()
        if requirement and not requirement.startswith("-"):
            found.add(requirement)
    return found


def requirements_sections() -> tuple[set[str], set[str]]:
    """requirements.txt's runtime pins (before its "# Tests" heading) and its test pins (after it)."""
    lines = (REPO / "requirements.txt").read_text().splitlines()
    tests_at = next(i for i, line in enumerate(lines) if line.lower().startswith("# tests"))
    return pins(lines[:tests_at]), pins(lines[tests_at:])


def test_dependencies_are_requirements_txts_runtime_pins():
    runtime, _ = requirements_sections()
    assert runtime and set(PROJECT["dependencies"]) == runtime


def test_the_scale_extra_is_requirements_scale_txt():
    assert set(PROJECT["optional-dependencies"]["scale"]) == pins((REPO / "requirements-scale.txt").read_text().splitlines())


def test_the_test_and_dev_extras_hold_every_test_tool_the_requirements_files_pin():
    """requirements.txt's test section, and requirements-dev.txt's own pins where that file exists,
    are exactly what the `test` and `dev` extras install (dev includes test); the `test` extra (the
    fast run) holds nothing requirements.txt does not install."""
    _, tests = requirements_sections()
    dev_file = REPO / "requirements-dev.txt"
    wanted = tests | (pins(dev_file.read_text().splitlines()) if dev_file.exists() else set())
    extras = PROJECT["optional-dependencies"]
    assert set(extras["test"]) <= tests
    assert "cbir[test]" in extras["dev"]
    assert set(extras["test"]) | {pin for pin in extras["dev"] if not SELF_REFERENCE.match(pin)} == wanted


def test_the_console_script_and_the_package_data_are_declared():
    assert PROJECT["scripts"] == {"cbir": "cbir.cli:main"}
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package, patterns in setuptools["package-data"].items():
        for pattern in patterns:
            assert list((REPO / package).glob(pattern)), f"{package}/{pattern} matches no file"
    assert (REPO / "cbir_ui" / "query.js").is_file()
