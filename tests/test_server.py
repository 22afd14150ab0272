"""cbir_ui.server: the start-up. Which pages a start serves (a Space never stops for want of data),
a bundle that arrives late, and visitors' files gone after SIGTERM, SIGINT or a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from cbir.bundle import BundleError
from cbir.uploads import RUN_FOLDER_PREFIX, sweep_leftover_runs
from cbir_ui import server
from cbir_ui.server import LateBundle, ServeOptions, shown_location, space_setup_notice, uploads_enabled
from served_app import app_process, free_port, launch_chromium

REPO = Path(__file__).resolve().parents[1]
YOUR_PHOTOS_TAB = '"type":"tabitem","props":{"label":"Your photos"'  # in the page's configuration


def test_your_photos_is_on_only_for_a_local_private_run_or_a_space_with_nothing_to_serve(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    enabled = lambda **options: uploads_enabled(ServeOptions(**options))  # noqa: E731
    assert enabled() and not enabled(share=True) and not enabled(host="0.0.0.0")
    assert enabled(host="0.0.0.0", uploads="on") and not enabled(uploads="off")
    monkeypatch.setenv("SPACE_ID", "someone/demo")
    assert not enabled() and not enabled(host="0.0.0.0")
    # A Space still waiting for its collection: a visitor's own photos are all it can offer.
    assert uploads_enabled(ServeOptions(host="0.0.0.0"), collection_served=False)
    assert not uploads_enabled(ServeOptions(host="0.0.0.0", uploads="off"), collection_served=False)


def test_app_py_options_are_serve_options_by_name(monkeypatch):
    import app

    for variable in ("CBIR_BUNDLE", "CBIR_UPLOADS", "GRADIO_SERVER_PORT"):
        monkeypatch.delenv(variable, raising=False)
    options = ServeOptions(**vars(app.parse_arguments(["--port", "7999", "--weights", "none", "--no-build"])))
    assert options.port == 7999 and options.weights == "none" and options.no_build and options.bundle is None


def test_the_space_notice_names_what_the_owner_sets_and_what_a_visitor_can_do():
    notice = space_setup_notice()
    assert "`CBIR_BUNDLE`" in notice and "`HF_TOKEN`" in notice and "Your photos" in notice
    shown = shown_location("https://user:pw@example.org:8443/b/demo.tar?token=x#y")
    assert shown == "https://example.org:8443/b/demo.tar"
    assert shown_location("/data/demo.tar") == "/data/demo.tar"


def test_a_late_bundle_is_tried_again_on_a_visit_at_most_once_a_minute_and_says_why(monkeypatch, tmp_path):
    attempts = []

    def open_bundle(location, cache_dir, http=None):
        attempts.append(location)
        if len(attempts) < 2:
            raise BundleError(f"no bundle at {location}: still down")
        return tmp_path / "indexes"

    monkeypatch.setattr("cbir.bundle.open_bundle", open_bundle)
    late = LateBundle(ServeOptions(bundle="https://example.org/demo.tar?sig=t0ken42"), BundleError("refused (503)"))
    assert "refused (503)" in late.text() and "t0ken42" not in late.text() and "Your photos" in late.text()
    assert "could not be fetched" in late.on_visit() and attempts == []  # tried at start: not again so soon

    monkeypatch.setattr(server, "BUNDLE_RETRY_SECONDS", 0)
    said = late.on_visit()
    assert attempts == ["https://example.org/demo.tar?sig=t0ken42"] and "still down" in said and "t0ken42" not in said
    assert not late.arrived.is_set()
    said = late.on_visit()
    assert len(attempts) == 2 and late.arrived.is_set() and late.index_dir == tmp_path / "indexes"
    assert "has arrived" in said
    late.on_visit()
    assert len(attempts) == 2  # arrived: never fetched again


def test_a_start_sweeps_the_folders_of_runs_no_longer_running(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"{RUN_FOLDER_PREFIX}{dead.pid}" / "uploads" / "s1").mkdir(parents=True)
    (tmp_path / f"{RUN_FOLDER_PREFIX}{dead.pid}" / "uploads" / "s1" / "photo.jpg").write_bytes(b"x")
    (tmp_path / f"{RUN_FOLDER_PREFIX}{os.getppid()}").mkdir()  # a running server's
    (tmp_path / f"{RUN_FOLDER_PREFIX}notapid").mkdir()
    removed = sweep_leftover_runs(tmp_path)
    assert removed == [tmp_path / f"{RUN_FOLDER_PREFIX}{dead.pid}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{RUN_FOLDER_PREFIX}{os.getppid()}", f"{RUN_FOLDER_PREFIX}notapid"]
    )


def test_a_stop_during_start_up_removes_this_runs_folders_and_restores_the_signal_handlers(monkeypatch, tmp_path):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr("tempfile.tempdir", None)  # read TMPDIR again
    (tmp_path / "tmp").mkdir()
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)

    def interrupted(options):
        assert (tmp_path / "tmp" / f"{RUN_FOLDER_PREFIX}{os.getpid()}").is_dir()
        assert os.environ["GRADIO_TEMP_DIR"] == str(tmp_path / "tmp" / f"{RUN_FOLDER_PREFIX}{os.getpid()}" / "gradio")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends

    monkeypatch.setattr(server, "open_collections", interrupted)
    before = signal.getsignal(signal.SIGTERM)
    assert server.serve(ServeOptions(port=free_port(), no_build=True)) == 128 + signal.SIGTERM
    assert list((tmp_path / "tmp").iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is before and "GRADIO_TEMP_DIR" not in os.environ


# -- The app in its own process --------------------------------------------------------------------


@dataclass
class Started:
    process: subprocess.Popen
    url: str
    seconds: float  # from the process's start to its page answering
    log: Path

    def page(self) -> str:
        with urllib.request.urlopen(self.url, timeout=10) as answer:
            return answer.read().decode()


# The app as `python app.py ARGUMENTS`, a late bundle tried again at every visit (not once a minute).
EAGER_RETRY = (
    "import sys, cbir_ui.server as s; s.BUNDLE_RETRY_SECONDS = 0; import app; sys.exit(app.main(sys.argv[1:]))"
)


@contextmanager
def started(*arguments: str, env: dict[str, str], cwd: Path, eager_retry: bool = False) -> Iterator[Started]:
    """The app on a free port with `env` added to this one's (SPACE_ID, CBIR_BUNDLE and
    GRADIO_TEMP_DIR only if given), until its page answers; SIGTERM on leaving if still running."""
    port = free_port()
    log = cwd / f"app-{port}.log"
    program = ["-c", EAGER_RETRY] if eager_retry else [str(REPO / "app.py")]
    unset = ("SPACE_ID", "CBIR_BUNDLE", "GRADIO_TEMP_DIR", "CBIR_UPLOADS")
    base = {name: value for name, value in os.environ.items() if name not in unset}
    with app_process([*program, "--port", str(port), *arguments], port=port, env={**base, **env}, log=log,
                     cwd=cwd) as (process, url, seconds):  # fmt: skip
        yield Started(process, url, seconds, log)


def stop(app: Started, signum: int) -> int:
    app.process.send_signal(signum)
    return app.process.wait(timeout=30)


@pytest.mark.slow
def test_a_space_with_no_bundle_serves_a_page_saying_what_to_set_and_offers_your_photos(tmp_path):
    (tmp_path / "tmp").mkdir()
    env = {"SPACE_ID": "someone/demo", "TMPDIR": str(tmp_path / "tmp")}
    with started("--index-dir", str(tmp_path / "fresh"), "--weights", "none", "--input-size", "96", env=env,
                 cwd=tmp_path) as app:  # fmt: skip
        page = app.page()
        assert "CBIR_BUNDLE" in page and "HF_TOKEN" in page and "Settings" in page
        assert YOUR_PHOTOS_TAB in page
        assert "restart the app" not in page  # the terminal's advice would mislead on a Space
        time.sleep(2)
        assert app.process.poll() is None  # serving, not exited
        run = tmp_path / "tmp" / f"{RUN_FOLDER_PREFIX}{app.process.pid}"
        assert run.is_dir()
        assert stop(app, signal.SIGINT) == 0
        assert not run.exists()
    assert "Traceback" not in app.log.read_text()


@pytest.mark.slow
def test_a_space_whose_bundle_cannot_be_fetched_says_why_on_the_page(tmp_path):
    closed = free_port()
    env = {"SPACE_ID": "someone/demo", "CBIR_BUNDLE": f"http://127.0.0.1:{closed}/demo.tar", "TMPDIR": str(tmp_path)}
    with started("--index-dir", str(tmp_path / "fresh"), "--cache-dir", str(tmp_path / "cache"), "--weights", "none",
                 env=env, cwd=tmp_path) as app:  # fmt: skip
        page = app.page()
        assert "could not be fetched" in page and "Connection refused" in page and f":{closed}/demo.tar" in page
        assert YOUR_PHOTOS_TAB in page
        assert app.process.poll() is None
    assert app.process.returncode == 0


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from cbir.backbones import BACKBONES
    from cbir.build import BuildSettings, build_indexes
    from cbir.recipe import RecipeSettings
    from cbir.weights import Weights
    from cbir.bundle import export_bundle
    from cbir.datasets import folder_collection
    from synthetic import make_gallery

    root = tmp_path_factory.mktemp("bundle")
    make_gallery(root / "photos", 6)
    recipe = RecipeSettings(weights=Weights.parse("none"), input_size=96)
    settings = BuildSettings(index_dir=root / "indexes", recipe=recipe, progress=False)
    build_indexes(folder_collection(root / "photos", "demo"), [BACKBONES["xception"]], settings)
    (root / "served").mkdir()
    export_bundle(root / "indexes", "demo", root / "served" / "demo.tar", source="synthetic", terms="tests",
                  progress=False)  # fmt: skip
    return root / "served" / "demo.tar"


@pytest.mark.slow
@pytest.mark.browser  # Playwright and Debian's Chromium (tests/conftest.py)
def test_a_bundle_that_arrives_late_is_fetched_on_a_visit_and_served_with_its_thumbnails(bundle, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from fake_datasets import ServerBehaviour, serve_directory

    behaviour = ServerBehaviour(missing={"demo.tar"})
    with serve_directory(bundle.parent, behaviour) as base:
        env = {"SPACE_ID": "someone/demo", "CBIR_BUNDLE": f"{base}/demo.tar", "TMPDIR": str(tmp_path)}
        with started("--index-dir", str(tmp_path / "fresh"), "--cache-dir", str(tmp_path / "cache"), "--weights",
                     "none", "--input-size", "96", env=env, cwd=tmp_path, eager_retry=True) as app:  # fmt: skip
            assert "could not be fetched" in app.page() and "404" in app.page()
            behaviour.missing.clear()  # the bundle is there now
            with sync_playwright() as playwright:
                browser = launch_chromium(playwright)
                try:
                    page = browser.new_page(viewport={"width": 1400, "height": 1100})
                    page.goto(app.url, wait_until="load")
                    expect(page.locator("#page-notice")).to_contain_text("has arrived", timeout=60_000)
                    deadline = time.monotonic() + 60  # the page restarts over the bundle, same process, same port
                    while "could not be fetched" in _page_or_empty(app) and time.monotonic() < deadline:
                        time.sleep(0.5)
                    assert app.process.poll() is None  # the same process
                    assert "demo" in app.page() and "could not be fetched" not in app.page()
                    page.goto(app.url, wait_until="load")
                    page.locator("#search-button").wait_for()
                    # The examples strip shows the bundle's thumbnails: served though they arrived after the start.
                    page.wait_for_function(
                        "() => [...document.querySelectorAll('img')]"
                        ".some(i => i.src.includes('file=') && i.naturalWidth > 0)",
                        timeout=30_000,
                    )
                    assert page.get_by_role("tab", name="Your photos").count() == 0  # a Space with a collection
                finally:
                    browser.close()


def _page_or_empty(app: Started) -> str:
    try:
        return app.page()
    except (urllib.error.URLError, ConnectionError):
        return "could not be fetched"  # restarting


@pytest.mark.slow
@pytest.mark.browser  # Playwright and Debian's Chromium (tests/conftest.py)
def test_visitors_photos_are_gone_after_sigterm_and_a_dead_runs_are_swept_at_start(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from synthetic import make_gallery

    temporary, cache = tmp_path / "tmp", tmp_path / "gradio-cache"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for base in (temporary, cache):  # what a crashed run left
        (base / f"{RUN_FOLDER_PREFIX}{dead.pid}" / "s1").mkdir(parents=True)
        (base / f"{RUN_FOLDER_PREFIX}{dead.pid}" / "s1" / "photo.jpg").write_bytes(b"x")
    alive = temporary / f"{RUN_FOLDER_PREFIX}{os.getpid()}"  # a running server's (this test's process)
    alive.mkdir()
    photos = make_gallery(tmp_path / "mine", 3, start_seed=700)
    env = {"TMPDIR": str(temporary), "GRADIO_TEMP_DIR": str(cache)}
    with started("--index-dir", str(tmp_path / "none"), "--no-build", "--weights", "none", "--input-size", "96",
                 env=env, cwd=tmp_path) as app:  # fmt: skip
        pid = app.process.pid
        assert not (temporary / f"{RUN_FOLDER_PREFIX}{dead.pid}").exists()
        assert not (cache / f"{RUN_FOLDER_PREFIX}{dead.pid}").exists() and alive.is_dir()
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1100})
                page.goto(app.url, wait_until="load")
                page.get_by_role("tab", name="Your photos").click()
                page.locator("#upload-files input[type=file]").set_input_files([str(p) for p in photos])
                page.locator("#upload-button").click()
                expect(page.locator("#upload-status")).to_contain_text("3 images described", timeout=180_000)
                uploaded = [p for p in (temporary / f"{RUN_FOLDER_PREFIX}{pid}").rglob("*.jpg")]
                cached = [p for p in (cache / f"{RUN_FOLDER_PREFIX}{pid}").rglob("*") if p.is_file()]
                assert len([p for p in uploaded if "/images/" in p.as_posix()]) == 3 and cached
                assert stop(app, signal.SIGTERM) == 0  # the page still open
            finally:
                browser.close()
    assert list(cache.iterdir()) == []
    assert [p for p in temporary.rglob("*") if not p.is_relative_to(alive)] == []


@pytest.mark.slow
def test_a_space_with_its_bundle_serves_it_without_the_setup_notice_or_your_photos(bundle, tmp_path):
    env = {"SPACE_ID": "someone/demo", "CBIR_BUNDLE": str(bundle), "TMPDIR": str(tmp_path)}
    with started("--index-dir", str(tmp_path / "fresh"), "--cache-dir", str(tmp_path / "cache"), env=env,
                 cwd=tmp_path) as app:  # fmt: skip
        page = app.page()
        assert '"choices":[["demo","demo"]]' in page.replace(" ", "")
        assert "CBIR_BUNDLE" not in page and YOUR_PHOTOS_TAB not in page


@pytest.mark.slow
def test_the_start_names_the_page_and_share_as_the_way_to_a_public_link(tmp_path):
    from served_app import running_app

    log = tmp_path / "app.log"
    with running_app(tmp_path / "indexes", log=log, cwd=tmp_path) as app:
        # The page answers a moment before launch() returns and the line is printed.
        deadline = time.monotonic() + 30
        while "The page is at" not in (said := log.read_text(errors="replace")) and time.monotonic() < deadline:
            time.sleep(0.2)
    assert f"The page is at {app.url}" in said and "--share also opens a public link" in said
    assert "share=True" not in said  # Gradio's own advice names launch(), which a user does not call
