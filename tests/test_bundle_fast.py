"""Bundles without a network or a browser: a tiny collection of hand-made descriptors and pictures is
exported, opened, reused and refused when damaged or hostile, through cbir.bundle alone.

(tests/test_bundle.py builds a real index and serves the bundle to a fresh app and to Chromium: slow.)
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from fake_datasets import ServerBehaviour, serve_directory
from PIL import Image
from stubs import RECIPE, write_collection

import cbir.bundle
from cbir.bundle import (
    BUNDLE_MANIFEST,
    OXFORD_PARIS_TERMS,
    VERIFIED_MARKER,
    BundleError,
    BundleManifest,
    export_bundle,
    open_bundle,
    read_bundle_manifest,
)
from cbir.datasets import Collection
from cbir.datasets.model import Query
from cbir.download import HttpSettings
from cbir.index import Manifest, StoreSpec, write_index
from cbir.layout import IndexLayout
from cbir.recipe import Recipe
from cbir.thumbnails import thumbnail_name

IMAGES = ("a.png", "b.png", "c.jpg", "sub/d.png")
SIZES = {"a.png": (40, 30), "b.png": (24, 36), "c.jpg": (30, 30), "sub/d.png": (20, 50)}
QUERY = Query("a_1", "a", (2.0, 3.0, 20.0, 25.0), {"good": frozenset({"b"})})
OTHER_RECIPE = Recipe.create("xception", weights="none", input_size=96, pooling="mac")


def make_collection(root: Path) -> tuple[Path, Path]:
    """Four small pictures and two recipes' indexes (exact scan) over them: (photos, index_dir)."""
    photos, index_dir = root / "photos", root / "indexes"
    for number, image in enumerate(IMAGES):
        (photos / image).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", SIZES[image], (40 * number, 200 - 30 * number, 90)).save(photos / image)
    collection = Collection("demo", photos, IMAGES, queries=(QUERY,))
    rows = np.eye(len(IMAGES), RECIPE.dim, dtype=np.float32)
    write_collection(index_dir, collection, rows)
    folder = IndexLayout(index_dir).index_dir("demo", OTHER_RECIPE.key)
    write_index(folder, np.eye(len(IMAGES), OTHER_RECIPE.dim, dtype=np.float32),
                Manifest(collection="demo", recipe=OTHER_RECIPE, images=list(IMAGES), store=StoreSpec("exact")))  # fmt: skip
    results = IndexLayout(index_dir).collection_dir("demo") / "evaluation"
    results.mkdir()
    (results / "results.json").write_text('{"made": "by the test"}')
    return photos, index_dir


@pytest.fixture
def built(tmp_path_factory):
    # One export per test (a fraction of a second), not per module: mutation testing runs only the
    # tests that call the mutated function, so each test must export its own bundle.
    root = tmp_path_factory.mktemp("fast-bundle")
    photos, index_dir = make_collection(root)
    bundle = root / "served" / "demo.tar"
    manifest = export_bundle(index_dir, "demo", bundle, source="synthetic", terms="made by the tests", progress=False)
    return {"root": root, "photos": photos, "index_dir": index_dir, "bundle": bundle, "manifest": manifest}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def members(bundle: Path) -> dict[str, bytes]:
    with tarfile.open(bundle) as tar:
        return {info.name: tar.extractfile(info).read() for info in tar.getmembers() if info.isfile()}


def rewritten(bundle: Path, dest: Path, change) -> Path:
    """A copy of `bundle` with its members passed through `change(info, data) -> [(info, data)]`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(bundle) as source, tarfile.open(dest, "w") as out:
        for info in source.getmembers():
            data = source.extractfile(info).read() if info.isfile() else b""
            for new_info, new_data in change(info, data):
                if new_info.isfile():
                    new_info.size = len(new_data)
                out.addfile(new_info, io.BytesIO(new_data) if new_info.isfile() else None)
    return dest


def with_manifest(bundle: Path, dest: Path, edit) -> Path:
    """A copy of `bundle` whose bundle.json is `edit(dict)`."""

    def change(info, data):
        if info.name == BUNDLE_MANIFEST:
            fields = json.loads(data)
            edit(fields)
            data = json.dumps(fields).encode()
        return [(info, data)]

    return rewritten(bundle, dest, change)


# --- export -----------------------------------------------------------------------------------


def test_a_bundle_starts_with_bundle_json_which_lists_every_other_member_with_its_size_and_sha256(built):
    manifest = read_bundle_manifest(built["bundle"])
    with tarfile.open(built["bundle"]) as tar:
        names = tar.getnames()
    assert names[0] == BUNDLE_MANIFEST and sorted(names[1:]) == sorted(manifest.members)
    held = members(built["bundle"])
    assert len(manifest.members) == len(held) - 1
    for name, member in manifest.members.items():
        assert (member.size, member.sha256) == (len(held[name]), sha256(held[name])), name
    assert manifest == built["manifest"]


def test_a_bundle_says_what_it_holds_where_the_images_came_from_and_their_terms(built):
    manifest = read_bundle_manifest(built["bundle"])
    assert manifest.collection == "demo" and manifest.n_images == len(IMAGES)
    assert manifest.recipes == sorted([RECIPE.key, OTHER_RECIPE.key])
    assert (manifest.source, manifest.terms, manifest.thumbnail_max_side) == ("synthetic", "made by the tests", 512)
    assert manifest.schema_version == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", manifest.created)


def test_a_bundle_carries_the_indexes_and_results_and_thumbnails_but_no_original_image(built):
    held = members(built["bundle"])
    prefix = "indexes/demo"
    for recipe in (RECIPE.key, OTHER_RECIPE.key):
        on_disk = sorted(p.name for p in (built["index_dir"] / "demo" / recipe).iterdir())
        assert sorted(n.rsplit("/", 1)[1] for n in held if n.startswith(f"{prefix}/{recipe}/")) == on_disk
        assert held[f"{prefix}/{recipe}/descriptors.npy"] == (built["index_dir"] / "demo" / recipe / "descriptors.npy").read_bytes()
    assert held[f"{prefix}/evaluation/results.json"] == b'{"made": "by the test"}'
    thumbnails = sorted(n for n in held if n.startswith(f"{prefix}/thumbnails/"))
    assert thumbnails == sorted(f"{prefix}/thumbnails/{thumbnail_name('demo', image, 512)}" for image in IMAGES)
    for image in IMAGES:
        with Image.open(io.BytesIO(held[f"{prefix}/thumbnails/{thumbnail_name('demo', image, 512)}"])) as picture:
            assert picture.format == "JPEG" and picture.size == SIZES[image]  # small pictures are not enlarged
    assert not any(name.endswith(IMAGES) for name in held)  # no original travels
    assert not (built["bundle"].parent / "demo.tar.collection.json").exists()  # the record's scratch file is gone


def test_the_bundles_collection_record_has_thumbnails_only_the_queries_and_each_query_images_size(built):
    record = json.loads(members(built["bundle"])["indexes/demo/collection.json"])
    assert record == {
        "schema_version": 2,
        "name": "demo",
        "thumbnails_only": True,
        "thumbnail_max_side": 512,
        "n_images": len(IMAGES),
        "image_sizes": {"a": [40, 30]},
        "queries": [QUERY.to_json()],
    }


def test_an_export_of_chosen_recipes_with_smaller_thumbnails_holds_only_those(built, tmp_path):
    manifest = export_bundle(built["index_dir"], "demo", tmp_path / "small.tar", recipes=[OTHER_RECIPE.key], max_side=32,
                             progress=False)  # fmt: skip
    assert manifest.recipes == [OTHER_RECIPE.key] and manifest.thumbnail_max_side == 32
    assert manifest.source == "demo" and manifest.terms == ""  # no source given: the collection's name
    held = members(tmp_path / "small.tar")
    assert not any(f"/{RECIPE.key}/" in name for name in held)
    with Image.open(io.BytesIO(held[f"indexes/demo/thumbnails/{thumbnail_name('demo', 'sub/d.png', 32)}"])) as picture:
        assert picture.size == (13, 32)
    assert json.loads(held["indexes/demo/collection.json"])["thumbnail_max_side"] == 32


def test_an_index_being_written_is_not_exported(built, tmp_path):
    import shutil

    from cbir import atomic

    half = atomic.temporary_sibling(built["index_dir"] / "demo" / RECIPE.key)
    shutil.copytree(built["index_dir"] / "demo" / RECIPE.key, half)
    try:
        manifest = export_bundle(built["index_dir"], "demo", tmp_path / "x.tar", progress=False)
    finally:
        shutil.rmtree(half)
    assert manifest.recipes == sorted([RECIPE.key, OTHER_RECIPE.key])


def test_progress_bars_show_only_when_asked(built, tmp_path, capsys):
    export_bundle(built["index_dir"], "demo", tmp_path / "quiet.tar", progress=False)
    assert capsys.readouterr().err == ""
    export_bundle(built["index_dir"], "demo", tmp_path / "loud.tar")
    shown = capsys.readouterr().err
    n_files = len(read_bundle_manifest(tmp_path / "loud.tar").members)
    assert "thumbnails: 100%" in shown and f" {len(IMAGES)}/{len(IMAGES)} [" in shown
    assert "checksums: 100%" in shown and f" {n_files}/{n_files} [" in shown and "file/s]" in shown


def test_exporting_what_is_not_built_names_the_build(built, tmp_path):
    with pytest.raises(BundleError, match=f"nothing is built for demo under {re.escape(str(built['index_dir']))}: build it first"):
        export_bundle(built["index_dir"], "demo", tmp_path / "x.tar", recipes=["resnet50"], progress=False)


def test_exporting_without_the_images_says_where_they_should_be(tmp_path):
    photos, index_dir = make_collection(tmp_path)
    photos.rename(tmp_path / "moved")
    with pytest.raises(BundleError, match="the images of demo are not at .*photos .*Put them back, or rebuild"):
        export_bundle(index_dir, "demo", tmp_path / "x.tar", progress=False)
    assert not (tmp_path / "x.tar").exists()


def test_exporting_with_an_unreadable_image_says_how_many_and_which_first(tmp_path):
    photos, index_dir = make_collection(tmp_path)
    (photos / "b.png").write_bytes(b"not a picture")
    (photos / "c.jpg").write_bytes(b"")
    with pytest.raises(BundleError, match=r"^2 images of demo cannot be read \(first: b.png\); rebuild first$"):
        export_bundle(index_dir, "demo", tmp_path / "x.tar", progress=False)


def test_a_bundle_is_written_into_a_new_folder_or_refused_with_a_message(built, tmp_path):
    dest = tmp_path / "new" / "deeper" / "demo.tar"
    export_bundle(built["index_dir"], "demo", dest, progress=False)
    assert read_bundle_manifest(dest).collection == "demo"
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(BundleError, match=f"^cannot write the bundle to {re.escape(str(tmp_path / 'a-file' / 'demo.tar'))}: File exists$"):
        export_bundle(built["index_dir"], "demo", tmp_path / "a-file" / "demo.tar", progress=False)


# --- open -------------------------------------------------------------------------------------


def test_opening_a_bundle_extracts_it_checked_into_the_cache(built, tmp_path):
    root = open_bundle(str(built["bundle"]), tmp_path / "cache")
    assert root == tmp_path / "cache" / "bundles" / "demo" / "indexes"
    held = members(built["bundle"])
    for name, data in held.items():
        assert (root.parent / name).read_bytes() == data
    stamp = json.loads((root.parent / VERIFIED_MARKER).read_text())
    stat = built["bundle"].stat()
    assert stamp == {
        "archive": str(built["bundle"].resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "bundle_json_sha256": sha256(held[BUNDLE_MANIFEST]),
    }


def test_a_second_open_reuses_the_checked_extraction(built, tmp_path, monkeypatch, caplog):
    cache = tmp_path / "cache"
    open_bundle(f"file://{built['bundle']}", cache)

    def no_second_extraction(*args):
        raise AssertionError("extracted again")

    monkeypatch.setattr(cbir.bundle, "safe_extract", no_second_extraction)
    with caplog.at_level(logging.INFO, logger="cbir.bundle"):
        root = open_bundle(str(built["bundle"]), cache)
    assert root == cache / "bundles" / "demo" / "indexes" and (root / "demo" / "collection.json").is_file()
    assert f"using the bundle already checked and extracted in {cache / 'bundles' / 'demo'}" in caplog.messages


def test_a_bundle_path_with_a_tilde_is_the_home_folders(built, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(built["bundle"].parent))
    assert open_bundle("~/demo.tar", tmp_path / "cache") == tmp_path / "cache" / "bundles" / "demo" / "indexes"


def test_a_damaged_marker_means_checking_again(built, tmp_path):
    cache = tmp_path / "cache"
    root = open_bundle(str(built["bundle"]), cache)
    (root.parent / VERIFIED_MARKER).write_text("{cut")
    (root / "demo" / "collection.json").write_text("changed in the cache")
    open_bundle(str(built["bundle"]), cache)
    assert (root / "demo" / "collection.json").read_bytes() == members(built["bundle"])["indexes/demo/collection.json"]


def test_another_bundle_under_the_same_name_is_checked_and_served_not_the_old_one(built, tmp_path):
    bundle = with_manifest(built["bundle"], tmp_path / "served" / "demo.tar", lambda m: m.update(terms="made by the TESTS"))
    before = bundle.stat()
    first = open_bundle(str(bundle), tmp_path / "cache")
    assert json.loads((first.parent / BUNDLE_MANIFEST).read_text())["terms"] == "made by the TESTS"
    # Replaced in place: same path, same size, same modification time; another bundle all the same.
    with_manifest(built["bundle"], tmp_path / "other.tar", lambda m: m.update(terms="made by the Tests")).replace(bundle)
    os.utime(bundle, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert bundle.stat().st_size == before.st_size
    again = open_bundle(str(bundle), tmp_path / "cache")
    assert json.loads((again.parent / BUNDLE_MANIFEST).read_text())["terms"] == "made by the Tests"


@pytest.mark.parametrize("changed", ["size", "mtime_ns", "archive"])
def test_a_marker_of_another_file_means_checking_again(built, tmp_path, changed):
    root = open_bundle(str(built["bundle"]), tmp_path / "cache")
    marker = root.parent / VERIFIED_MARKER
    stamp = json.loads(marker.read_text())
    stamp[changed] = stamp[changed] + 1 if changed != "archive" else stamp[changed] + "-elsewhere"
    marker.write_text(json.dumps(stamp))
    (root / "demo" / "collection.json").write_text("changed in the cache")
    open_bundle(str(built["bundle"]), tmp_path / "cache")
    assert (root / "demo" / "collection.json").read_bytes() == members(built["bundle"])["indexes/demo/collection.json"]


def test_a_missing_bundle_says_what_to_give(tmp_path):
    with pytest.raises(BundleError, match=f"^no bundle at {re.escape(str(tmp_path / 'nope.tar'))}: give the path of a "
                                          r"\.tar made by --export-bundle, or its URL$"):  # fmt: skip
        open_bundle(f"file://{tmp_path / 'nope.tar'}", tmp_path / "cache")


def test_a_bundle_url_is_downloaded_once_per_url_and_each_served_as_itself(built, tmp_path):
    served, elsewhere = tmp_path / "served", tmp_path / "elsewhere"
    with_manifest(built["bundle"], served / "demo.tar", lambda m: m.update(terms="one"))
    with_manifest(built["bundle"], elsewhere / "demo.tar", lambda m: m.update(terms="two"))
    cache = tmp_path / "cache"
    one, two = ServerBehaviour(), ServerBehaviour()
    http = HttpSettings(progress=False, timeout=5)
    with serve_directory(served, one) as first, serve_directory(elsewhere, two) as second:
        for base, terms in ((first, "one"), (second, "two"), (first, "one")):
            url = f"{base}/demo.tar"
            root = open_bundle(url, cache, http)
            assert json.loads((root.parent / BUNDLE_MANIFEST).read_text())["terms"] == terms
            assert (cache / "downloads" / sha256(url.encode())[:16] / "demo.tar").is_file()
        assert len(one.requests_for("demo.tar")) == 1 and len(two.requests_for("demo.tar")) == 1
        # Without settings: the defaults (another URL of the same file: another download).
        assert open_bundle(f"{first}/demo.tar?again", cache).is_dir()
        assert len(one.requests_for("demo.tar")) == 2


def test_a_bundle_url_without_a_file_name_is_saved_as_bundle_tar(built, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(cbir.bundle, "download", lambda url, dest, http: shutil.copy(built["bundle"], dest.parent.mkdir(parents=True) or dest))
    cache = tmp_path / "cache"
    root = open_bundle("https://example.org/", cache)
    assert root == cache / "bundles" / "bundle" / "indexes" and (root / "demo" / "collection.json").is_file()
    assert (cache / "downloads" / sha256(b"https://example.org/")[:16] / "bundle.tar").is_file()


# --- refusals ---------------------------------------------------------------------------------


def refused_and_nothing_kept(bundle: Path, cache: Path, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        open_bundle(str(bundle), cache)
    assert not (cache / "bundles" / bundle.name.removesuffix(".tar")).exists()  # nothing half-extracted is kept


def test_a_member_changed_after_export_is_refused(built, tmp_path):
    def flip(info, data):
        if info.name.endswith("results.json"):
            data = data.replace(b"test", b"TEST")  # the same size, another sha256
        return [(info, data)]

    bad = rewritten(built["bundle"], tmp_path / "demo.tar", flip)
    refused_and_nothing_kept(bad, tmp_path / "cache", f"^indexes/demo/evaluation/results.json in the bundle {re.escape(str(bad))} is not "
                             r"what the bundle says \(size or sha256 differ\): the download is damaged or the bundle was changed\. "
                             "Delete it and download it again.$")  # fmt: skip


def test_a_member_of_another_size_is_refused_even_with_the_listed_sha256(built, tmp_path):
    def grow(info, data):
        if info.name.endswith("results.json"):
            data += b" "
        return [(info, data)]

    bad = rewritten(built["bundle"], tmp_path / "demo.tar", grow)
    name = "indexes/demo/evaluation/results.json"
    listed = with_manifest(bad, tmp_path / "listed" / "demo.tar",
                           lambda m: m["members"][name].update(sha256=sha256(members(bad)[name])))  # fmt: skip
    refused_and_nothing_kept(listed, tmp_path / "cache", "results.json in the bundle .* is not what the bundle says")


@pytest.mark.parametrize("kind", ["climbs-out", "symlink"])
def test_hostile_members_are_refused_and_nothing_lands_outside(built, tmp_path, kind):
    def add(info, data):
        out = [(info, data)]
        if info.name == BUNDLE_MANIFEST:
            if kind == "climbs-out":
                out.append((tarfile.TarInfo("../../evil.txt"), b"x"))
            else:
                link = tarfile.TarInfo("indexes/demo/evil-link")
                link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
                out.append((link, b""))
        return out

    bad = rewritten(built["bundle"], tmp_path / "work" / "demo.tar", add)
    refused_and_nothing_kept(bad, tmp_path / "work" / "cache", f"^the bundle {re.escape(str(bad))} is refused: refusing to extract")
    assert not any("evil" in path.name for path in tmp_path.rglob("*"))


def test_an_unlisted_member_or_a_missing_one_is_refused_by_name(built, tmp_path):
    def add(info, data):
        out = [(info, data)]
        if info.name == BUNDLE_MANIFEST:
            out.append((tarfile.TarInfo("indexes/demo/evil.py"), b"print('hi')"))
        if info.name.endswith("results.json"):
            return []
        return out

    bad = rewritten(built["bundle"], tmp_path / "demo.tar", add)
    refused_and_nothing_kept(bad, tmp_path / "cache", re.escape(f"the bundle {bad} does not hold what it lists (extra: "
                             "['indexes/demo/evil.py'], missing: ['indexes/demo/evaluation/results.json'])"))  # fmt: skip


def test_many_unlisted_members_are_named_three_at_most(built, tmp_path):
    def add(info, data):
        out = [(info, data)]
        if info.name == BUNDLE_MANIFEST:
            out += [(tarfile.TarInfo(f"indexes/demo/extra-{n}.py"), b"x") for n in range(4)]
        return out

    bad = rewritten(built["bundle"], tmp_path / "demo.tar", add)
    names = [f"indexes/demo/extra-{n}.py" for n in range(3)]
    refused_and_nothing_kept(bad, tmp_path / "cache", re.escape(f"(extra: {names}, missing: [])"))


def test_many_missing_members_are_named_three_at_most(built, tmp_path):
    def drop_thumbnails(info, data):
        return [] if "/thumbnails/" in info.name else [(info, data)]

    bad = rewritten(built["bundle"], tmp_path / "demo.tar", drop_thumbnails)
    missing = sorted(name for name in read_bundle_manifest(bad).members if "/thumbnails/" in name)
    assert len(missing) == 4
    refused_and_nothing_kept(bad, tmp_path / "cache", re.escape(f"(extra: [], missing: {missing[:3]})"))


def test_a_link_inside_the_bundle_that_it_does_not_list_is_refused(built, tmp_path):
    def add(info, data):
        out = [(info, data)]
        if info.name == BUNDLE_MANIFEST:
            link = tarfile.TarInfo("indexes/demo/inner-link")
            link.type, link.linkname = tarfile.SYMTYPE, "collection.json"
            out.append((link, b""))
        return out

    bad = rewritten(built["bundle"], tmp_path / "demo.tar", add)
    refused_and_nothing_kept(bad, tmp_path / "cache", re.escape("(extra: ['indexes/demo/inner-link'], missing: [])"))


def test_a_bundle_that_would_unpack_to_too_much_is_refused_before_anything_is_written(built, tmp_path, monkeypatch):
    manifest = read_bundle_manifest(built["bundle"])
    total = sum(member.size for member in manifest.members.values())
    count = len(manifest.members)
    monkeypatch.setattr(cbir.bundle, "MAX_BUNDLE_BYTES", total)
    monkeypatch.setattr(cbir.bundle, "MAX_MEMBERS", count)
    assert open_bundle(str(built["bundle"]), tmp_path / "at-the-limits").is_dir()
    monkeypatch.setattr(cbir.bundle, "MAX_BUNDLE_BYTES", total - 1)
    refused_and_nothing_kept(built["bundle"], tmp_path / "cache", f"^demo.tar would unpack to {total:,} bytes in {count} files: over the limits$")
    monkeypatch.setattr(cbir.bundle, "MAX_BUNDLE_BYTES", total)
    monkeypatch.setattr(cbir.bundle, "MAX_MEMBERS", count - 1)
    refused_and_nothing_kept(built["bundle"], tmp_path / "cache", "over the limits")


def test_an_archive_that_does_not_start_with_bundle_json_is_not_a_bundle(built, tmp_path):
    def move_last(info, data):
        return [] if info.name == BUNDLE_MANIFEST else [(info, data)]

    without = rewritten(built["bundle"], tmp_path / "without.tar", move_last)
    with tarfile.open(without, "a") as tar:
        data = members(built["bundle"])[BUNDLE_MANIFEST]
        info = tarfile.TarInfo(BUNDLE_MANIFEST)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    message = f"^{re.escape(str(without))} is not a bundle: it does not start with bundle.json$"
    refused_and_nothing_kept(without, tmp_path / "cache", message)
    with pytest.raises(BundleError, match=message):
        read_bundle_manifest(without)


def test_a_bundle_json_that_is_a_folder_or_empty_archive_is_not_a_bundle(tmp_path):
    folder = tmp_path / "folder.tar"
    with tarfile.open(folder, "w") as tar:
        info = tarfile.TarInfo(BUNDLE_MANIFEST)
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    empty = tmp_path / "empty.tar"
    tarfile.open(empty, "w").close()
    for archive in (folder, empty):
        with pytest.raises(BundleError, match="is not a bundle: it does not start with bundle.json"):
            read_bundle_manifest(archive)


def test_a_bundle_json_over_64_mib_is_not_read(tmp_path):
    def claiming(size: int) -> Path:
        """An archive whose bundle.json header claims `size` bytes; only 512 follow."""
        info = tarfile.TarInfo(BUNDLE_MANIFEST)
        info.size = size
        path = tmp_path / f"claims-{size}.tar"
        path.write_bytes(info.tobuf(tarfile.PAX_FORMAT) + b"{" + b" " * 511)
        return path

    with pytest.raises(BundleError, match="is not a bundle: it does not start with bundle.json"):
        read_bundle_manifest(claiming((64 << 20) + 1))
    with pytest.raises(BundleError, match="is not a readable bundle"):  # read, and found cut short
        read_bundle_manifest(claiming(64 << 20))


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"not a tar at all" * 64, "is not a readable bundle"), (b"", "is not a readable bundle")],
)
def test_a_file_that_is_no_archive_is_refused_with_download_it_again(tmp_path, content, reason):
    archive = tmp_path / "demo.tar"
    archive.write_bytes(content)
    refused_and_nothing_kept(archive, tmp_path / "cache", f"(?s)^{re.escape(str(archive))} {reason} \\(.*\\): download it again$")


def test_a_bundle_json_that_is_not_json_or_lacks_fields_is_refused(built, tmp_path):
    def garble(info, data):
        return [(info, b"{not json" if info.name == BUNDLE_MANIFEST else data)]

    garbled = rewritten(built["bundle"], tmp_path / "g" / "demo.tar", garble)
    refused_and_nothing_kept(garbled, tmp_path / "cache", f"^{re.escape(str(garbled))} is not a readable bundle \\(.+\\): download it again$")
    lacking = with_manifest(built["bundle"], tmp_path / "l" / "demo.tar", lambda m: m.pop("members"))
    refused_and_nothing_kept(lacking, tmp_path / "cache", "is not a readable bundle .*members")
    odd = with_manifest(built["bundle"], tmp_path / "o" / "demo.tar", lambda m: m.update(colour="blue"))
    refused_and_nothing_kept(odd, tmp_path / "cache", "is not a readable bundle .*colour")


def test_a_bundle_of_another_schema_version_names_what_to_do(built, tmp_path):
    newer = with_manifest(built["bundle"], tmp_path / "demo.tar", lambda m: m.update(schema_version=2))
    refused_and_nothing_kept(newer, tmp_path / "cache", r"^bundle schema version 2 is not one this code reads \(1\): "
                             "update the app, or export the bundle again$")  # fmt: skip
    unversioned = with_manifest(built["bundle"], tmp_path / "u" / "demo.tar", lambda m: m.pop("schema_version"))
    with pytest.raises(BundleError, match=r"^bundle schema version None is not one"):
        read_bundle_manifest(unversioned)


def test_the_manifest_reads_back_what_it_wrote():
    manifest = BundleManifest("demo", ["xception"], 3, 512, "synthetic", OXFORD_PARIS_TERMS, created="now")
    manifest.members["indexes/demo/x"] = cbir.bundle.Member(4, "ab" * 32)
    assert BundleManifest.from_json(manifest.to_json()) == manifest
