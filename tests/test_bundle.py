"""Bundles: exported from a build, served over HTTP, opened by a fresh app with no images and no
index on disk; and every damaged or hostile bundle refused with a message."""

from __future__ import annotations

import io

import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from cbir.backbones import BACKBONES
from cbir.weights import Weights
from cbir.build import BuildSettings, build_indexes
from cbir.recipe import RecipeSettings
from cbir.bundle import BUNDLE_MANIFEST, BundleError, export_bundle, open_bundle, read_bundle_manifest
from cbir.datasets import folder_collection
from cbir.download import DownloadError, HttpSettings
from cbir.search import SearchEngine
from fake_datasets import ServerBehaviour, serve_directory
from served_app import launch_chromium
from synthetic import crop_of, make_gallery

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundle")
    photos = root / "photos"
    make_gallery(photos, 14, width=900, height=600)  # bigger than a thumbnail: shrunk to 512
    index_dir = root / "indexes"
    settings = BuildSettings(
        index_dir=index_dir,
        progress=False,
        recipe=RecipeSettings(weights=Weights.parse("none"), input_size=96),
        store_params={"n_trees": 5},
    )
    build_indexes(folder_collection(photos, "demo"), [BACKBONES["xception"]], settings)
    served = root / "served"
    served.mkdir()
    manifest = export_bundle(index_dir, "demo", served / "demo.tar", source="synthetic", terms="made by the tests",
                             progress=False)  # fmt: skip
    return {"root": root, "photos": photos, "index_dir": index_dir, "bundle": served / "demo.tar", "manifest": manifest}


def test_a_bundle_holds_indexes_and_thumbnails_and_lists_every_member(exported):
    manifest = read_bundle_manifest(exported["bundle"])
    assert manifest.collection == "demo" and manifest.recipes == ["xception"] and manifest.n_images == 14
    assert manifest.terms == "made by the tests"
    with tarfile.open(exported["bundle"]) as tar:
        names = tar.getnames()
        assert names[0] == BUNDLE_MANIFEST and set(names[1:]) == set(manifest.members)
        thumbnails = [n for n in names if "/thumbnails/" in n]
        assert len(thumbnails) == 14
        with Image.open(tar.extractfile(thumbnails[0])) as picture:
            assert picture.format == "JPEG" and max(picture.size) == 512
    assert not any(name.endswith("picture_000.jpg") for name in names)  # no original travels
    assert "indexes/demo/xception/descriptors.npy" in names and "indexes/demo/collection.json" in names


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_app(*arguments: str, cwd: Path) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    log = cwd / f"app-{port}.log"
    process = subprocess.Popen(
        [sys.executable, str(REPO / "app.py"), "--port", str(port), *arguments],
        cwd=cwd, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO), GRADIO_ANALYTICS_ENABLED="False"),
        stdout=open(log, "w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail("the app stopped: " + log.read_text())
        try:
            urllib.request.urlopen(url, timeout=2)
            return process, url, log
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    process.kill()
    pytest.fail("the app did not start: " + log.read_text())


def test_a_fresh_app_serves_a_bundle_over_http_as_the_build_answered(exported, tmp_path):
    from gradio_client import Client, handle_file

    query = tmp_path / "query.png"
    crop_of(exported["photos"] / "picture_006.jpg", fraction=0.8, scale=1.1).save(query)
    expected = SearchEngine(exported["index_dir"]).search(query, collection="demo", recipe="xception", k=5)
    # The new machine: no images, no index; only the bundle, over HTTP.
    shutil.move(exported["photos"], tmp_path / "photos-elsewhere")
    behaviour = ServerBehaviour()
    try:
        with serve_directory(exported["bundle"].parent, behaviour) as base:
            cache = tmp_path / "cache"
            common = ("--bundle", f"{base}/demo.tar", "--cache-dir", str(cache), "--index-dir", str(tmp_path / "none"))
            started = time.perf_counter()
            process, url, log = start_app(*common, cwd=tmp_path)
            cold = time.perf_counter() - started
            try:
                client = Client(url, verbose=False)
                editor = {"background": handle_file(str(query)), "layers": [], "composite": None}
                gallery, status = client.predict(editor, "demo", "xception", "cosine", 5, api_name="/search")
                assert [item["caption"].split(" · ")[0] for item in gallery] == [
                    f"#{hit.rank} {Path(hit.image).stem}" for hit in expected.hits
                ]
                assert "are not at" not in status  # a bundle has no images, and says nothing about it
                with Image.open(gallery[0]["image"]) as thumbnail:
                    assert thumbnail.format == "JPEG" and max(thumbnail.size) == 512
            finally:
                process.terminate()
                process.wait(timeout=30)
            downloads = len(behaviour.requests_for("demo.tar"))
            process, url, _ = start_app(*common, cwd=tmp_path)  # warm: already there and checked
            process.terminate()
            process.wait(timeout=30)
            assert len(behaviour.requests_for("demo.tar")) == downloads
            assert "using the bundle already checked" in (tmp_path / f"app-{url.rsplit(':', 1)[1].strip('/')}.log").read_text()
    finally:
        shutil.move(tmp_path / "photos-elsewhere", exported["photos"])
    assert cold > 0


def rewritten(bundle: Path, dest: Path, change) -> Path:
    """A copy of `bundle` with its members passed through `change(info, data) -> [(info, data)]`."""
    with tarfile.open(bundle) as source, tarfile.open(dest, "w") as out:
        for info in source.getmembers():
            data = source.extractfile(info).read() if info.isfile() else b""
            for new_info, new_data in change(info, data):
                new_info.size = len(new_data)
                out.addfile(new_info, io.BytesIO(new_data) if new_info.isfile() else None)
    return dest


def only_cache_written(tmp_path: Path, cache: Path) -> None:
    outside = [p for p in tmp_path.rglob("*") if not p.is_relative_to(cache) and "evil" in p.name]
    assert outside == []


def test_a_member_changed_after_export_is_refused(exported, tmp_path):
    def flip(info, data):
        if info.name.endswith("descriptors.npy"):
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        return [(info, data)]

    bad = rewritten(exported["bundle"], tmp_path / "demo.tar", flip)
    with pytest.raises(BundleError, match="descriptors.npy in the bundle .* is not what the bundle says"):
        open_bundle(str(bad), tmp_path / "cache")
    assert not (tmp_path / "cache" / "bundles" / "demo").exists()  # nothing half-extracted is kept


@pytest.mark.parametrize("kind", ["climbs-out", "symlink", "unlisted"])
def test_hostile_members_are_refused_and_nothing_lands_outside(exported, tmp_path, kind):
    def add(info, data):
        out = [(info, data)]
        if info.name == BUNDLE_MANIFEST:
            if kind == "climbs-out":
                out.append((tarfile.TarInfo("../../evil.txt"), b"x"))
            elif kind == "symlink":
                link = tarfile.TarInfo("indexes/demo/evil-link")
                link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
                out.append((link, b""))
            else:
                out.append((tarfile.TarInfo("indexes/demo/evil.py"), b"print('hi')"))
        return out

    bad = rewritten(exported["bundle"], tmp_path / "demo.tar", add)
    with pytest.raises(BundleError, match="refused|does not hold what it lists"):
        open_bundle(str(bad), tmp_path / "cache")
    only_cache_written(tmp_path, tmp_path / "cache")
    assert not (tmp_path / "cache" / "bundles" / "demo").exists()


def _with_terms(bundle: Path, dest: Path, terms: str) -> Path:
    """The same bundle with other terms in bundle.json (same length: the same archive size)."""

    def change(info, data):
        if info.name == BUNDLE_MANIFEST:
            data = data.replace(b"made by the tests", terms.encode())
        return [(info, data)]

    return rewritten(bundle, dest, change)


def test_another_bundle_under_the_same_name_is_checked_and_served_not_the_old_one(exported, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    bundle = _with_terms(exported["bundle"], served / "demo.tar", "made by the TESTS")
    before = bundle.stat()
    first = open_bundle(str(bundle), tmp_path / "cache")
    assert "made by the TESTS" in (first.parent / BUNDLE_MANIFEST).read_text()
    # Replaced in place: same path, same size, same modification time; another bundle all the same.
    _with_terms(exported["bundle"], tmp_path / "other.tar", "made by the Tests").replace(bundle)
    os.utime(bundle, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert bundle.stat().st_size == before.st_size
    again = open_bundle(str(bundle), tmp_path / "cache")
    assert "made by the Tests" in (again.parent / BUNDLE_MANIFEST).read_text()
    # Two places serving a demo.tar each: two downloads, each served as itself.
    (tmp_path / "elsewhere").mkdir()
    _with_terms(exported["bundle"], tmp_path / "elsewhere" / "demo.tar", "made by the tesTS")
    http = HttpSettings(progress=False, timeout=5)
    with serve_directory(served) as one, serve_directory(tmp_path / "elsewhere") as two:
        for base, terms in ((one, "made by the Tests"), (two, "made by the tesTS")):
            opened = open_bundle(f"{base}/demo.tar", tmp_path / "cache", http)
            assert terms in (opened.parent / BUNDLE_MANIFEST).read_text()


def test_a_bundle_is_exported_into_a_folder_that_does_not_exist_yet_or_refused_with_a_message(exported, tmp_path):
    dest = tmp_path / "new" / "deeper" / "demo.tar"
    export_bundle(exported["index_dir"], "demo", dest, source="synthetic", terms="t", progress=False)
    assert read_bundle_manifest(dest).collection == "demo"
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(BundleError, match="cannot write the bundle to"):
        export_bundle(exported["index_dir"], "demo", tmp_path / "a-file" / "demo.tar", progress=False)


def test_a_cut_download_resumes_and_the_next_start_succeeds(exported, tmp_path):
    size = exported["bundle"].stat().st_size
    behaviour = ServerBehaviour(cut_after={"demo.tar": size // 3})
    with serve_directory(exported["bundle"].parent, behaviour) as base:
        with pytest.raises(DownloadError, match="run again to resume"):
            open_bundle(f"{base}/demo.tar", tmp_path / "cache", HttpSettings(progress=False, timeout=5))
        behaviour.cut_after.clear()
        index_dir = open_bundle(f"{base}/demo.tar", tmp_path / "cache", HttpSettings(progress=False, timeout=5))
    assert behaviour.requests_for("demo.tar")[-1].range == f"bytes={size // 3}-"
    assert (index_dir / "demo" / "xception" / "manifest.json").is_file()
    assert len(list((index_dir / "demo" / "thumbnails").glob("*.jpg"))) == 14


def test_a_first_start_that_cannot_download_names_three_ways_on(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    result = subprocess.run(
        [sys.executable, str(REPO / "app.py"), "--index-dir", str(tmp_path / "idx"), "--data-dir", str(tmp_path / "data")],
        cwd=tmp_path, env=dict(os.environ, CBIR_MIRROR=closed, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    for command in ("CBIR_DATA_USER=... CBIR_DATA_PASSWORD=... python app.py", "python app.py --bundle https://",
                    "python app.py --images ~/Pictures"):  # fmt: skip
        assert command in result.stderr
    # A bundle that is not there, and an archive placed by hand that is cut short: messages too.
    missing = subprocess.run(
        [sys.executable, str(REPO / "app.py"), "--bundle", str(tmp_path / "nope.tar"), "--cache-dir", str(tmp_path / "c")],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert missing.returncode == 2 and "no bundle at" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "data" / "oxford5k").mkdir(parents=True, exist_ok=True)
    (tmp_path / "data" / "oxford5k" / "gt_files_170407.tgz").write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 40)
    (tmp_path / "data" / "oxford5k" / "oxbuild_images-v1.tgz").write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 40)
    partial = subprocess.run(
        [sys.executable, str(REPO / "app.py"), "--index-dir", str(tmp_path / "idx"), "--data-dir", str(tmp_path / "data")],
        cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert partial.returncode == 2 and "Traceback" not in partial.stderr
    assert "corrupt or incomplete" in partial.stderr and "placed by hand" in partial.stderr


@pytest.mark.browser
def test_the_page_started_from_a_bundle_searches_in_a_real_browser(exported, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    query = tmp_path / "query.jpg"
    shutil.copy(exported["photos"] / "picture_009.jpg", query)
    process, url, _ = start_app("--bundle", str(exported["bundle"]), "--cache-dir", str(tmp_path / "cache"),
                                "--index-dir", str(tmp_path / "none"), cwd=tmp_path)  # fmt: skip
    try:
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1100})
                page.goto(url, wait_until="load")
                page.locator("#search-button").wait_for()
                # The examples strip shows the bundle's thumbnails.
                expect(page.locator("img").first).to_be_visible(timeout=30_000)
                page.locator("input[type=file]").first.set_input_files(str(query))
                page.wait_for_timeout(1500)
                page.locator("#search-button").click()
                expect(page.locator("#search-status")).to_contain_text("12 results", timeout=60_000)
                expect(page.locator("#results img")).to_have_count(12, timeout=30_000)
                assert "#1 picture_009" in page.locator("#results").inner_text()
                page.screenshot(path=str(tmp_path / "bundle-page.png"), full_page=True)
            finally:
                browser.close()
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_full_disk_while_unpacking_a_bundle_ends_in_a_message(exported, tmp_path, monkeypatch, capsys):
    import errno

    import cbir.bundle
    from cbir_ui.server import ServeOptions, serve

    def full(archive, dest):
        raise OSError(errno.ENOSPC, "No space left on device", str(dest / "indexes" / "demo" / "descriptors.npy"))

    monkeypatch.setattr(cbir.bundle, "safe_extract", full)
    monkeypatch.delenv("SPACE_ID", raising=False)
    code = serve(ServeOptions(port=free_port(), bundle=str(exported["bundle"]), cache_dir=tmp_path / "cache"))
    message = capsys.readouterr().err
    assert code == 2 and message.startswith("error: No space left on device: ") and "Traceback" not in message
    assert not (tmp_path / "cache" / "bundles" / "demo").exists()  # nothing half unpacked is kept


def test_a_port_in_use_is_said_at_once_with_the_option_to_change_it(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, str(REPO / "app.py"), "--port", str(port), "--no-build", "--index-dir", str(tmp_path)],
            cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"port {port} on 127.0.0.1 is in use" in result.stderr and "--port" in result.stderr
    assert "GRADIO_SERVER_PORT" in result.stderr
    assert time.perf_counter() - started < 60  # before any network or index is loaded


def test_a_bundle_with_smaller_thumbnails_is_served_with_them(exported, tmp_path):
    from cbir_ui.behaviour import SearchPage

    small = export_bundle(exported["index_dir"], "demo", tmp_path / "small.tar", max_side=256, progress=False)
    assert small.thumbnail_max_side == 256
    root = open_bundle(str(tmp_path / "small.tar"), tmp_path / "cache")
    page = SearchPage(SearchEngine(root), root)
    served = page.served("demo", "picture_004.jpg")
    assert served is not None and Path(served).parent == root / "demo" / "thumbnails"
    with Image.open(served) as thumbnail:
        assert max(thumbnail.size) == 256
    examples = page.example_queries("demo")
    assert examples and page.served("demo", examples[0][0]) is not None
