"""The app in its own process, as `python app.py` starts it, and Debian's Chromium to look at it:
shared by the browser and API tests, bench/page.py and tools/screenshots.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


class AppDidNotStart(RuntimeError):
    pass


@dataclass
class RunningApp:
    url: str
    pid: int


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def app_process(command: list[str], *, port: int, env: dict[str, str], log: Path | None = None,
                cwd: Path | None = None) -> Iterator[tuple[subprocess.Popen, str, float]]:  # fmt: skip
    """`python COMMAND` (which serves on `port`) with `env` as its whole environment, until its page
    answers: (the process, its URL, seconds from start to answer); stopped on leaving if still running.
    Its output goes to `log` (none if not given)."""
    out = open(log, "w") if log is not None else subprocess.DEVNULL
    begun = time.perf_counter()
    process = subprocess.Popen([sys.executable, *command], cwd=cwd,
                               env={**env, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO),
                                    "GRADIO_ANALYTICS_ENABLED": "False"},
                               stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                said = log.read_text() if log is not None else ""
                raise AppDidNotStart(f"the app did not start (exit code {process.poll()}): {said}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        yield process, url, time.perf_counter() - begun
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        if log is not None:
            out.close()


@contextmanager
def running_app(index_dir: Path, *arguments: str, log: Path | None = None, cwd: Path | None = None) -> Iterator[RunningApp]:
    """`app.py --index-dir INDEX_DIR --no-build ARGUMENTS` on a free port, until its page answers;
    stopped on leaving. Its output goes to `log` (none if not given)."""
    port = free_port()
    command = [str(REPO / "app.py"), "--index-dir", str(index_dir), "--no-build", "--port", str(port), *arguments]
    with app_process(command, port=port, env=dict(os.environ), log=log, cwd=cwd) as (process, url, _):
        yield RunningApp(url, process.pid)


def launch_chromium(playwright):
    """Debian's Chromium, headless (never a downloaded browser)."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
