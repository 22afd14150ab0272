"""Photos a visitor sends from the page: what is refused (and that nothing lands outside), the
limits, and private collections that only their own session sees."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from synthetic import make_gallery
from test_stand_in_network import StandInExtractors

from cbir.backbones import BACKBONES
from cbir.build import BuildSettings
from cbir.errors import CbirError
from cbir.images import IMAGE_SUFFIXES, ImageLimits
from cbir.index import Manifest
from cbir.layout import IndexLayout
from cbir.recipe import RecipeSettings
from cbir.search import SearchEngine
from cbir.thumbnails import ThumbnailFolder
from cbir.trunks import ExtractorCache
from cbir.uploads import (
    RUN_FOLDER_PREFIX,
    PrivateCollections,
    UploadError,
    UploadLimits,
    collection_name,
    gather_upload,
    run_folder,
    served_collection,
    sweep_leftover_runs,
)
from cbir.weights import Weights


def zip_of(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    return make_gallery(tmp_path_factory.mktemp("photos"), 6)


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_images_and_zips_are_gathered_under_safe_unique_names(photos, tmp_path):
    archive = zip_of(tmp_path / "trip.zip", {
        "trip/a.jpg": photos[0].read_bytes(),
        "trip/notes.txt": b"not an image",
        "__MACOSX/trip/._a.jpg": b"resource fork",
        "trip/sub dir/b$1.png": photos[1].read_bytes(),
    })  # fmt: skip
    loose = tmp_path / "a.jpg"
    loose.write_bytes(photos[2].read_bytes())
    text = tmp_path / "readme.md"
    text.write_text("hello")
    gathered = gather_upload([archive, loose, text], tmp_path / "out")
    assert gathered.images == ["trip/a.jpg", "trip/sub dir/b_1.png", "a.jpg"]
    assert files_under(tmp_path / "out") == ["a.jpg", "trip/a.jpg", "trip/sub dir/b_1.png"]
    assert (tmp_path / "out" / "a.jpg").read_bytes() == photos[2].read_bytes()
    ignored = dict(gathered.ignored)
    assert set(ignored) == {"trip.zip:trip/notes.txt", "trip.zip:__MACOSX/trip/._a.jpg", "readme.md"}


@pytest.mark.parametrize(
    ("member", "why"),
    [("../evil.jpg", "outside its folder"), ("/etc/evil.jpg", "absolute path"), ("a/../../evil.jpg", "outside its folder"),
     ("C:/evil.jpg", "absolute path"), ("..\\evil.jpg", "outside its folder"), ("\\evil.jpg", "absolute path"),
     ("../", "outside its folder")],
)  # fmt: skip
def test_a_member_that_would_land_outside_refuses_the_whole_zip(photos, tmp_path, member, why):
    archive = zip_of(tmp_path / "bad.zip", {"fine.jpg": photos[0].read_bytes(), member: photos[1].read_bytes()})
    target = tmp_path / "deep" / "out"
    with pytest.raises(UploadError, match=why):
        gather_upload([archive], target)
    # Checked before anything is written: not even the harmless member landed.
    assert files_under(tmp_path) == ["bad.zip"]


def test_a_link_in_a_zip_is_refused(tmp_path, photos):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as opened:
        link = zipfile.ZipInfo("photo.jpg")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        opened.writestr(link, "/etc/passwd")
    with pytest.raises(UploadError, match="is a link"):
        gather_upload([archive], tmp_path / "out")
    assert not (tmp_path / "out" / "photo.jpg").exists()


def test_ten_thousand_tiny_members_are_refused_before_any_is_written(tmp_path):
    archive = zip_of(tmp_path / "many.zip", {f"{i:05d}.jpg": b"x" for i in range(10_000)})
    with pytest.raises(UploadError, match="10,000 files: at most 1,000"):
        gather_upload([archive], tmp_path / "out")
    assert not any((tmp_path / "out").iterdir())


def test_a_zip_bomb_stops_at_the_byte_limit(tmp_path):
    # 50 MB of zeros compress to about 50 KB; the limit here is 1 MB.
    archive = zip_of(tmp_path / "bomb.zip", {"bomb.jpg": bytes(50 * 2**20)})
    assert archive.stat().st_size < 100_000
    limits = UploadLimits(max_bytes=2**20)
    with pytest.raises(UploadError, match="unzips to 50 MB of images: at most 1 MB"):
        gather_upload([archive], tmp_path / "out", limits)
    # Each zip under the limit, together over it: the bytes are counted as they are written.
    halves = [zip_of(tmp_path / f"half{i}.zip", {f"half{i}.jpg": bytes(600_000)}) for i in range(2)]
    with pytest.raises(UploadError, match="too large: at most 1 MB of images per upload, after unzipping"):
        gather_upload(halves, tmp_path / "out2", limits)


def test_too_many_images_are_refused_and_a_corrupt_zip_is_a_message(photos, tmp_path):
    with pytest.raises(UploadError, match="too many images: at most 3"):
        gather_upload(photos[:4], tmp_path / "out", UploadLimits(max_images=3))
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UploadError, match="not a zip this app can read"):
        gather_upload([broken], tmp_path / "out2")
    with pytest.raises(UploadError, match="no images"):
        gather_upload([tmp_path / "broken.zip"][:0], tmp_path / "out3")


SETTINGS = BuildSettings(progress=False, recipe=RecipeSettings(weights=Weights.parse("none"), input_size=96))


@pytest.mark.slow
def test_a_session_sees_only_its_own_collection_and_it_goes_with_the_session(photos, tmp_path, extractors):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(photos[0].read_bytes()[:300])
    archive = zip_of(tmp_path / "mine.zip", {p.name: p.read_bytes() for p in photos[:5]} | {"corrupt.jpg": corrupt.read_bytes()})
    uploads = PrivateCollections(tmp_path / "uploads", SETTINGS, extractors)
    seen = []
    added = uploads.add("session-a", [archive], "My photos!", BACKBONES["xception"], lambda done, total: seen.append((done, total)))
    assert added.name == "My-photos"
    assert seen[-1] == (6, 6)
    manifest = added.engine.index("My-photos", "xception").manifest
    assert manifest.images == [p.name for p in photos[:5]]
    assert [s.image for s in manifest.skipped] == ["corrupt.jpg"]
    # Searchable: a photo comes back first for itself.
    result = added.engine.search(photos[3], collection="My-photos", recipe="xception", k=2)
    assert result.hits[0].image == photos[3].name and result.hits[0].similarity == pytest.approx(1.0, abs=1e-5)

    assert uploads.names("session-a") == ["My-photos"]
    assert uploads.names("session-b") == [] and uploads.get("session-b", "My-photos") is None
    folder = uploads.folder("session-a")
    assert (folder / "images" / "My-photos" / photos[0].name).is_file()
    uploads.drop("session-a")
    assert not folder.exists() and uploads.names("session-a") == []


@pytest.mark.slow
def test_kept_collections_outlive_the_session_and_the_server(photos, tmp_path, extractors):
    uploads = PrivateCollections(tmp_path / "kept", SETTINGS, extractors, keep=True)
    uploads.add("session-a", photos[:3], "holiday", BACKBONES["xception"])
    uploads.drop("session-a")  # closing the page keeps them
    again = PrivateCollections(tmp_path / "kept", SETTINGS, extractors, keep=True)  # a restart
    assert again.names("any-session") == ["holiday"]
    found = again.get("another", "holiday").engine.search(photos[1], collection="holiday", recipe="xception", k=1)
    assert found.hits[0].image == photos[1].name


def test_the_oldest_sessions_files_go_past_the_session_cap(photos, tmp_path, monkeypatch):
    import cbir.uploads as uploads_module

    built = []
    monkeypatch.setattr(uploads_module, "build_indexes", lambda *args, **kwargs: built.append(args) or [])
    uploads = PrivateCollections(tmp_path / "uploads", SETTINGS, ExtractorCache(), max_sessions=2)
    for session in ("one", "two", "three"):
        uploads.add(session, photos[:1], "mine", BACKBONES["xception"])
    assert len(built) == 3
    assert not uploads.folder("one").exists() and uploads.folder("two").exists() and uploads.folder("three").exists()
    assert uploads.names("one") == [] and uploads.names("two") == uploads.names("three") == ["mine"]
    with pytest.raises(ValueError):
        uploads.folder("../escape")
    assert np.all([isinstance(args[0].images, tuple) for args in built])


@pytest.mark.slow
def test_the_page_resolves_an_uploaded_collection_only_for_its_own_session(photos, tmp_path, extractors):
    from types import SimpleNamespace

    import gradio as gr

    from cbir.search import SearchEngine
    from cbir_ui.behaviour import SearchPage
    from cbir_ui.search_tab import SearchHandlers

    uploads = PrivateCollections(tmp_path / "uploads", SETTINGS, extractors)
    uploads.add("owner", photos[:3], "mine", BACKBONES["xception"])
    page = SearchPage(SearchEngine(tmp_path / "indexes", extractors=extractors), tmp_path / "indexes", uploads)
    assert page.collection_choices("owner") == ["uploaded: mine"] and page.collection_choices("visitor") == []
    answer = page.search_photo(str(photos[1]), "", "uploaded: mine", "xception", "cosine", 2, session="owner")
    assert answer.items[0][1].startswith("#1 picture_001 ·") and "mine" in answer.status
    assert answer.result.collection == "mine"
    with pytest.raises(UploadError, match="that uploaded collection is gone"):
        page.search_photo(str(photos[1]), "", "uploaded: mine", "xception", "cosine", 2, session="visitor")
    with pytest.raises(UploadError, match="that uploaded collection is gone"):
        page.served("uploaded: mine", photos[1].name, "visitor")
    # Through the page's handler: the session comes from the request, the message as the page shows it.
    handlers = SearchHandlers(page)
    owner, visitor = SimpleNamespace(session_hash="owner"), SimpleNamespace(session_hash="visitor")
    items, _ = handlers.search_photo(str(photos[1]), "", "uploaded: mine", "xception", "cosine", 2, request=owner)
    assert items[0][1].startswith("#1 picture_001 ·")
    with pytest.raises(gr.Error, match="That uploaded collection is gone"):
        handlers.search_photo(str(photos[1]), "", "uploaded: mine", "xception", "cosine", 2, request=visitor)


def fake_builds(monkeypatch) -> list:
    """Builds that only record what they were asked (the collection logic is what is tested)."""
    import cbir.uploads as uploads_module

    built = []
    monkeypatch.setattr(uploads_module, "build_indexes", lambda *args, **kwargs: built.append(args) or [])
    return built


def test_a_refused_upload_leaves_the_collection_of_that_name_as_it_was(photos, tmp_path, monkeypatch):
    fake_builds(monkeypatch)
    uploads = PrivateCollections(tmp_path / "uploads", SETTINGS, ExtractorCache())
    uploads.add("me", photos[:2], "mine", BACKBONES["xception"])
    images = uploads.folder("me") / "images" / "mine"
    before = files_under(images)
    bad = zip_of(tmp_path / "bad.zip", {"../x.jpg": photos[0].read_bytes()})
    with pytest.raises(UploadError, match="outside its folder"):
        uploads.add("me", [bad], "mine", BACKBONES["xception"])
    assert files_under(images) == before == [photos[0].name, photos[1].name]
    assert uploads.names("me") == ["mine"]
    assert [p.name for p in (uploads.folder("me") / "images").iterdir()] == ["mine"]  # nothing half unpacked


def test_a_collection_sent_again_loses_every_index_of_its_old_photos(photos, tmp_path, monkeypatch):
    fake_builds(monkeypatch)
    uploads = PrivateCollections(tmp_path / "uploads", SETTINGS, ExtractorCache())
    uploads.add("me", photos[:2], "mine", BACKBONES["xception"])
    old_index = uploads.folder("me") / "indexes" / "mine" / "vgg16"  # as if built with another backbone
    old_index.mkdir(parents=True)
    uploads.add("me", photos[2:4], "mine", BACKBONES["xception"])
    assert not old_index.exists()
    assert files_under(uploads.folder("me") / "images" / "mine") == [photos[2].name, photos[3].name]


def test_a_damaged_zip_stream_and_too_many_collections_are_messages(photos, tmp_path, monkeypatch):
    archive = zip_of(tmp_path / "damaged.zip", {"a.jpg": bytes(100_000)})
    data = bytearray(archive.read_bytes())
    data[40:60] = b"\xff" * 20  # inside the deflated stream (zlib: "invalid code lengths"); the directory is intact
    archive.write_bytes(bytes(data))
    with pytest.raises(UploadError, match=r"^damaged\.zip cannot be unzipped \(error: "):  # zlib's error, named
        gather_upload([archive], tmp_path / "out")
    fake_builds(monkeypatch)
    uploads = PrivateCollections(tmp_path / "uploads", SETTINGS, ExtractorCache(), max_collections=2)
    uploads.add("me", photos[:1], "one", BACKBONES["xception"])
    uploads.add("me", photos[:1], "two", BACKBONES["xception"])
    with pytest.raises(UploadError, match=r"^at most 2 collections at once: send one again under a name you already "
                                          r"used \(one, two\) to replace it$"):
        uploads.add("me", photos[:1], "three", BACKBONES["xception"])
    uploads.add("me", photos[1:2], "two", BACKBONES["xception"])  # replacing one is allowed


@pytest.mark.parametrize("written_after", [False, True])
def test_a_page_closed_while_its_photos_are_described_leaves_nothing(photos, tmp_path, monkeypatch, written_after):
    import cbir.uploads as uploads_module

    uploads = PrivateCollections(tmp_path / "uploads", SETTINGS, ExtractorCache())

    def build_then_close(collection, backbones, settings, **kwargs):  # the tab is closed while the network runs
        uploads.drop("me")
        if written_after:  # and the build went on writing
            (settings.index_dir / collection.name).mkdir(parents=True)
        return []

    monkeypatch.setattr(uploads_module, "build_indexes", build_then_close)
    with pytest.raises(UploadError, match="^the page was closed before its photos were described$"):
        uploads.add("me", photos[:2], "mine", BACKBONES["xception"])
    assert not uploads.folder("me").exists() and uploads.names("me") == []


def zip_with_undecodable_name(path: Path, photo: bytes) -> Path:
    """A zip whose member name is not UTF-8 though its flag says it is (zipfile refuses to read it)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ab.jpg", photo)
    data = bytearray(path.read_bytes().replace(b"ab.jpg", b"\xff\xfe.jpg"))
    # Set the "name is UTF-8" flag (bit 11) in the local header (flags at +6) and the central one (+8).
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.index(signature) + offset
        data[at + 1] |= 0x08
    path.write_bytes(bytes(data))
    return path


def test_a_member_name_that_is_not_utf8_is_a_message_naming_the_zip_and_leaves_nothing(photos, tmp_path, monkeypatch):
    bad = zip_with_undecodable_name(tmp_path / "odd-names.zip", photos[0].read_bytes())
    with pytest.raises(UploadError, match=r"odd-names\.zip"):
        gather_upload([bad], tmp_path / "out")
    fake_builds(monkeypatch)
    uploads = PrivateCollections(tmp_path / "uploads", SETTINGS, ExtractorCache())
    uploads.add("me", photos[:2], "mine", BACKBONES["xception"])
    with pytest.raises(UploadError, match=r"odd-names\.zip"):
        uploads.add("me", [bad], "mine", BACKBONES["xception"])
    # The session's collection of that name is as it was, and nothing of the refused upload stays.
    assert uploads.names("me") == ["mine"]
    assert files_under(uploads.folder("me") / "images") == sorted(f"mine/{p.name}" for p in photos[:2])


def test_nothing_of_an_upload_stays_when_unpacking_fails_in_an_unforeseen_way(photos, tmp_path, monkeypatch):
    import cbir.uploads as uploads_module

    fake_builds(monkeypatch)
    uploads = PrivateCollections(tmp_path / "uploads", SETTINGS, ExtractorCache())
    uploads.add("me", photos[:2], "mine", BACKBONES["xception"])

    def fails_halfway(source, name, label, gathered, budget):
        (gathered.folder / "half.jpg").write_bytes(b"x")
        raise RuntimeError("a bug")

    monkeypatch.setattr(uploads_module, "_write", fails_halfway)
    with pytest.raises(RuntimeError, match="a bug"):  # a real bug surfaces as itself
        uploads.add("me", [photos[3]], "mine", BACKBONES["xception"])
    assert uploads.names("me") == ["mine"]
    assert files_under(uploads.folder("me") / "images") == sorted(f"mine/{p.name}" for p in photos[:2])


def test_the_engine_that_serves_a_request_is_the_shared_one_or_the_sessions_own(photos, tmp_path, monkeypatch):
    from cbir.search import SearchEngine
    from cbir.uploads import served_collection

    fake_builds(monkeypatch)
    uploads = PrivateCollections(tmp_path / "uploads", SETTINGS, ExtractorCache())
    mine = uploads.add("owner", photos[:1], "mine", BACKBONES["xception"])
    shared = SearchEngine(tmp_path / "indexes")
    built = served_collection(shared, uploads, "owner", "demo")
    assert built.engine is shared and built.name == "demo" and built.thumbnails == shared.layout.thumbnails_dir("demo")
    own = served_collection(shared, uploads, "owner", "mine", uploaded=True)
    assert own.engine is mine.engine and own.name == "mine"
    assert own.thumbnails == uploads.folder("owner") / "thumbnails" / "mine"  # away from every index folder
    for session, collections in (("visitor", uploads), ("owner", None)):
        with pytest.raises(UploadError, match="that uploaded collection is gone"):
            served_collection(shared, collections, session, "mine", uploaded=True)


def test_a_name_sent_again_at_the_cap_replaces_its_collection_even_when_it_needs_cleaning_up(photos, tmp_path, monkeypatch):
    fake_builds(monkeypatch)
    uploads = PrivateCollections(tmp_path / "uploads", SETTINGS, ExtractorCache(), max_collections=1)
    assert uploads.add("me", photos[:1], "My photos!", BACKBONES["xception"]).name == "My-photos"
    again = uploads.add("me", photos[1:2], " My photos! ", BACKBONES["xception"])  # the same name once cleaned up
    assert again.name == "My-photos" and uploads.names("me") == ["My-photos"]
    with pytest.raises(UploadError, match="at most 1 collections at once"):
        uploads.add("me", photos[:1], "Other photos", BACKBONES["xception"])


# -- What is written, and under which names ----------------------------------------------------------


def test_names_are_made_safe_kept_to_their_last_three_folders_and_told_apart(photos, tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    sent = {  # a file's name as sent (backslashes are part of a name on Linux) -> where it lands
        "..\\..\\evil.jpg": "evil.jpg",
        "\\rooted.jpg": "rooted.jpg",
        ".Xmas tree.jpg": "Xmas tree.jpg",  # no leading dot: not a hidden file the build would pass over
        "...\\dots.jpg": "_/dots.jpg",  # a folder named only by dots
    }
    for index, name in enumerate(sent):
        (loose / name).write_bytes(photos[index].read_bytes())
    archive = zip_of(tmp_path / "windows.zip", {
        "deep/er/first.jpg": photos[0].read_bytes(),  # two new folders at once
        "trip\\a.jpg": photos[1].read_bytes(),  # a zip made on Windows
        "a/b/c/d.jpg": photos[2].read_bytes(),
    })  # fmt: skip
    gathered = gather_upload([loose / name for name in sent] + [archive], tmp_path / "out")
    assert gathered.images == [*sent.values(), "deep/er/first.jpg", "trip/a.jpg", "b/c/d.jpg"]
    assert files_under(tmp_path / "out") == sorted(gathered.images)
    assert (tmp_path / "out" / "trip" / "a.jpg").read_bytes() == photos[1].read_bytes()


def test_photos_of_the_same_name_are_all_kept_under_numbered_names(photos, tmp_path):
    same = []
    for index in range(3):
        (tmp_path / f"camera{index}").mkdir()
        same.append(tmp_path / f"camera{index}" / "photo.jpg")
        same[-1].write_bytes(photos[index].read_bytes())
    gathered = gather_upload(same, tmp_path / "out")
    assert gathered.images == ["photo.jpg", "photo_2.jpg", "photo_3.jpg"]
    for index, name in enumerate(gathered.images):
        assert (tmp_path / "out" / name).read_bytes() == photos[index].read_bytes()


def test_hidden_files_folders_and_mac_resource_forks_are_left_out_with_their_reason(photos, tmp_path):
    archive = zip_of(tmp_path / "mac.zip", {
        "trip/": b"",  # a folder entry first: the members after it are still read
        "trip/._b.jpg": b"resource fork",
        "__MACOSX/b.jpg": b"resource fork",
        "trip\\._c.jpg": b"resource fork",
        "__MACOSX\\d.jpg": b"resource fork",
        "trip/b.jpg": photos[0].read_bytes(),
    })  # fmt: skip
    other = tmp_path / "notes.txt"
    other.write_text("not a photo")
    gathered = gather_upload([archive, other], tmp_path / "out")
    assert gathered.images == ["trip/b.jpg"]
    assert gathered.ignored == [(f"mac.zip:{name}", "not an image")
                                for name in ("trip/._b.jpg", "__MACOSX/b.jpg", "trip\\._c.jpg", "__MACOSX\\d.jpg")] + [
        ("notes.txt", "not an image or a zip")]  # fmt: skip


def test_gathering_into_a_folder_made_beforehand(photos, tmp_path):
    made = Path(tempfile.mkdtemp(dir=tmp_path))  # as a caller makes a fresh folder
    assert gather_upload(photos[:1], made).images == [photos[0].name]


def test_no_images_is_a_message_naming_the_types_and_what_was_left_out(tmp_path):
    types = ", ".join(sorted(IMAGE_SUFFIXES))
    with pytest.raises(UploadError) as nothing:
        gather_upload([], tmp_path / "out")
    assert str(nothing.value) == f"no images in what was sent ({types}, or a .zip of them)"
    others = []
    for index in range(7):
        others.append(tmp_path / f"notes{index}.txt")
        others[-1].write_text("text")
    with pytest.raises(UploadError) as only_text:
        gather_upload(others, tmp_path / "out2")
    left_out = ", ".join(f"notes{index}.txt" for index in range(5))  # the first five
    assert str(only_text.value) == f"no images in what was sent ({types}, or a .zip of them); left out: {left_out}"


def test_the_limits_are_reached_exactly_and_the_message_names_the_file_that_passes_them(photos, tmp_path):
    sizes = [p.stat().st_size for p in photos[:3]]
    exactly = UploadLimits(max_images=3, max_bytes=sum(sizes))
    assert len(gather_upload(photos[:3], tmp_path / "a", exactly).images) == 3
    with pytest.raises(UploadError) as many:
        gather_upload(photos[:4], tmp_path / "b", UploadLimits(max_images=3))
    assert str(many.value) == f"too many images: at most 3 per upload ({photos[3].name} is one more)"
    with pytest.raises(UploadError) as large:
        gather_upload(photos[:3], tmp_path / "c", UploadLimits(max_bytes=sum(sizes) - 1))
    assert str(large.value) == (f"too large: at most 0 MB of images per upload, after unzipping "
                                f"(reached at {photos[2].name})")  # fmt: skip
    # A zip: as many members as allowed, and as many bytes as allowed, declared and written.
    archive = zip_of(tmp_path / "two.zip",
                     {"trip/": b"", "trip/a.jpg": photos[0].read_bytes(), "trip/b.jpg": photos[1].read_bytes()})  # fmt: skip
    fits = UploadLimits(max_zip_members=3, max_bytes=sizes[0] + sizes[1])
    assert gather_upload([archive], tmp_path / "d", fits).images == ["trip/a.jpg", "trip/b.jpg"]
    with pytest.raises(UploadError) as zipped:
        gather_upload([archive], tmp_path / "e", UploadLimits(max_images=1))
    assert str(zipped.value) == "too many images: at most 1 per upload (two.zip:trip/b.jpg is one more)"


def test_a_large_image_is_copied_a_chunk_at_a_time(tmp_path):
    # 40 MB of zeros zip to about 40 KB; unpacking it must not hold it all in memory at once.
    archive = zip_of(tmp_path / "large.zip", {"large.jpg": bytes(40 * 2**20)})
    tracemalloc.start()
    try:
        gathered = gather_upload([archive], tmp_path / "out")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (tmp_path / "out" / gathered.images[0]).stat().st_size == 40 * 2**20
    assert peak < 8 * 2**20


def encrypted_zip(path: Path, photo: bytes) -> Path:
    """A zip whose member says it is encrypted (zipfile cannot write one; the flag is set by hand)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("secret.jpg", photo)
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # bit 0 of the flags: encrypted
        data[data.index(signature) + offset] |= 0x01
    path.write_bytes(bytes(data))
    return path


def test_an_encrypted_zip_is_a_message_and_leaves_nothing(photos, tmp_path):
    archive = encrypted_zip(tmp_path / "locked.zip", photos[0].read_bytes())
    with pytest.raises(UploadError) as refused:
        gather_upload([archive], tmp_path / "out")
    assert str(refused.value) == "locked.zip: secret.jpg is encrypted; send it unencrypted"
    assert files_under(tmp_path / "out") == []


def test_the_limits_are_described_as_the_page_shows_them():
    assert UploadLimits().describe() == (
        "up to 200 images or zips of them, 200 MB in all (after unzipping), 1,000 files per zip")
    assert UploadLimits(5, 3 * 2**20, 12_345).describe() == (
        "up to 5 images or zips of them, 3 MB in all (after unzipping), 12,345 files per zip")


def test_a_collection_name_is_what_was_typed_made_a_folder_name():
    assert collection_name("  Xmas photos! ") == "Xmas-photos"
    assert collection_name("_holiday_") == "holiday"
    assert collection_name("x" * 45) == "x" * 40
    with pytest.raises(UploadError) as empty:
        collection_name(" !!! ")
    assert str(empty.value) == "give the collection a name (letters, digits, '-' or '_')"


# -- Private collections, built for real with a stand-in for the network ------------------------------

SMALL_SIDE = 150  # the build's image limit here: make_gallery's pictures (160 x 120) are over it
STAND_IN = BuildSettings(progress=False, recipe=RecipeSettings(weights=Weights.parse("none"), input_size=80),
                         limits=ImageLimits(max_side=SMALL_SIDE))  # fmt: skip
XCEPTION = BACKBONES["xception"]


@pytest.fixture(scope="module")
def small_photos(tmp_path_factory) -> list[Path]:
    return make_gallery(tmp_path_factory.mktemp("small"), 4, width=100, height=80, start_seed=50)


@pytest.fixture
def stand_in(monkeypatch):
    """The networks the collections are given: stand-ins (tests/test_stand_in_network.py). Building a
    real network fails the test, so a collection that does not use the networks it was given shows."""
    import cbir.build
    import cbir.trunks

    def no_network(recipe):
        raise AssertionError(f"a network was built for {recipe.key} instead of using the one given")

    monkeypatch.setattr(cbir.trunks, "trunk_for", no_network)
    import cbir.search

    def no_keras():  # what the build records and the search compares: the stand-in's, without importing Keras
        return {"keras": "none", "tensorflow": "none"}

    monkeypatch.setattr(cbir.build, "keras_versions", no_keras)
    monkeypatch.setattr(cbir.search, "keras_versions", no_keras)
    return StandInExtractors()


def test_an_added_collection_is_built_searched_and_thumbnailed_with_what_it_was_given(small_photos, photos, tmp_path,
                                                                                      stand_in, capfd):  # fmt: skip
    uploads = PrivateCollections(tmp_path / "uploads", STAND_IN, stand_in)
    archive = zip_of(tmp_path / "trip.zip", {p.name: p.read_bytes() for p in small_photos[:3]} | {"notes.txt": b"text"})
    too_big = tmp_path / "big.jpg"
    too_big.write_bytes(photos[0].read_bytes())
    seen = []
    added = uploads.add("me", [archive, too_big], "Trip!", XCEPTION, lambda done, total: seen.append((done, total)))
    assert added.name == "Trip" and uploads.names("me") == ["Trip"]
    assert added.ignored == [("trip.zip:notes.txt", "not an image")]
    assert seen and seen[-1] == (4, 4)
    [outcome] = added.outcomes
    assert outcome.folder == uploads.folder("me") / "indexes" / "Trip" / outcome.key
    assert (outcome.n_images, outcome.n_skipped) == (3, 1)
    manifest = Manifest.read(outcome.folder)
    assert manifest.images == [p.name for p in small_photos[:3]]
    assert [s.image for s in manifest.skipped] == ["big.jpg"]  # over the build's own image limits
    assert manifest.store.kind == "exact"
    recipe = manifest.recipe
    assert (recipe.backbone, recipe.input_size, recipe.weights) == ("xception", 80, Weights.parse("none"))
    # Searched by the session's own engine: a photo comes back first for itself.
    found = added.engine.search(small_photos[1], collection="Trip", recipe=outcome.key, k=1)
    assert found.hits[0].image == small_photos[1].name
    # Every thumbnail the page will ask for is made already, beside the images, none in the index folder.
    thumbnails = uploads.thumbnails_dir("me", "Trip")
    made = files_under(thumbnails)
    assert len(made) == 3
    page_view = ThumbnailFolder(thumbnails, "Trip", uploads.folder("me") / "images" / "Trip")
    for image in manifest.images:
        page_view.thumbnail(image)
    assert files_under(thumbnails) == made
    assert not IndexLayout(uploads.folder("me") / "indexes").thumbnails_dir("Trip").exists()
    assert capfd.readouterr().err == ""  # no progress bar on the server's terminal


def test_a_collection_whose_photos_cannot_be_described_is_not_offered(small_photos, tmp_path, stand_in):
    uploads = PrivateCollections(tmp_path / "uploads", STAND_IN, stand_in)
    uploads.add("me", small_photos[:2], "mine", XCEPTION)
    unreadable = tmp_path / "broken.jpg"
    unreadable.write_bytes(b"not a picture")
    with pytest.raises(CbirError, match="none of the 1 images of mine could be read"):
        uploads.add("me", [unreadable], "mine", XCEPTION)
    # Its old photos were replaced before the build failed: the collection is gone, not listed to fail later.
    assert uploads.names("me") == [] and uploads.get("me", "mine") is None
    with pytest.raises(UploadError, match="that uploaded collection is gone"):
        served_collection(SearchEngine(tmp_path / "indexes"), uploads, "me", "mine", uploaded=True)
    # A session's first upload failing the same way: the build's message, and nothing listed.
    with pytest.raises(CbirError, match="none of the 1 images of theirs could be read"):
        uploads.add("newcomer", [unreadable], "theirs", XCEPTION)
    assert uploads.names("newcomer") == []


def test_a_leftover_of_an_interrupted_upload_does_not_join_the_next_one(photos, tmp_path, monkeypatch):
    built = fake_builds(monkeypatch)
    uploads = PrivateCollections(tmp_path / "uploads", SETTINGS, ExtractorCache())
    leftover = uploads.folder("me") / "images" / ".incoming-mine"  # the server stopped while unpacking
    leftover.mkdir(parents=True)
    (leftover / "stale.jpg").write_bytes(photos[5].read_bytes())
    uploads.add("me", photos[:2], "mine", XCEPTION)
    assert built[-1][0].images == (photos[0].name, photos[1].name)
    assert files_under(uploads.folder("me") / "images") == [f"mine/{photos[0].name}", f"mine/{photos[1].name}"]


def test_kept_collections_are_every_sessions_and_outlive_a_restart(small_photos, tmp_path, stand_in):
    with pytest.raises(ValueError, match="^kept collections need a folder$"):
        PrivateCollections(None, STAND_IN, stand_in, keep=True)
    uploads = PrivateCollections(tmp_path / "kept", STAND_IN, stand_in, keep=True)
    uploads.add("session-a", small_photos[:2], "holiday", XCEPTION)
    uploads.drop("session-a")  # closing the page keeps them
    uploads.close()  # so does stopping the server
    assert uploads.folder("session-b") == tmp_path / "kept" / "kept"
    assert uploads.names("session-b") == ["holiday"] and uploads.get(None, "holiday") is not None
    again = PrivateCollections(tmp_path / "kept", STAND_IN, stand_in, keep=True)  # a restart
    assert again.names("any-session") == ["holiday"]
    kept = again.get("another", "holiday")
    assert kept.name == "holiday"
    found = kept.engine.search(small_photos[1], collection="holiday", recipe=RECIPE_KEY, k=1)
    assert found.hits[0].image == small_photos[1].name


RECIPE_KEY = STAND_IN.recipe_for(XCEPTION).key


def test_without_a_folder_the_collections_live_in_a_temporary_one_the_server_removes(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where a server's run folder puts them (TMPDIR)
    uploads = PrivateCollections(None, SETTINGS, ExtractorCache())
    assert uploads.root.parent == tmp_path and uploads.root.name.startswith("cbir-uploads-") and uploads.root.is_dir()
    uploads.close()
    assert not uploads.root.exists()


def test_at_most_five_collections_a_session_and_twenty_sessions_by_default(photos, tmp_path, monkeypatch, caplog):
    fake_builds(monkeypatch)
    uploads = PrivateCollections(tmp_path / "uploads", SETTINGS, ExtractorCache())
    for name in "abcde":
        uploads.add("me", photos[:1], name, XCEPTION)
    with pytest.raises(UploadError, match=r"^at most 5 collections at once: .* \(a, b, c, d, e\) to replace it$"):
        uploads.add("me", photos[:1], "f", XCEPTION)
    for session in range(19):
        uploads.add(f"visitor{session}", photos[:1], "mine", XCEPTION)
    assert uploads.names("me") == list("abcde")
    with caplog.at_level(logging.INFO, logger="cbir.uploads"):
        uploads.add("visitor19", photos[:1], "mine", XCEPTION)  # the 21st session
    assert uploads.names("me") == [] and not uploads.folder("me").exists()
    assert uploads.names("visitor0") == ["mine"]
    assert caplog.messages == ["removing the uploaded collections of an old session"]


def test_a_session_id_is_letters_digits_dashes_and_underscores(tmp_path):
    uploads = PrivateCollections(tmp_path / "uploads", SETTINGS, ExtractorCache())
    assert uploads.folder("AbC-12_x") == tmp_path / "uploads" / "AbC-12_x"
    assert uploads.folder("x" * 64).name == "x" * 64
    for wrong in ("../escape", "x" * 65, "a b", ""):
        with pytest.raises(ValueError, match="^not a session id: "):
            uploads.folder(wrong)


def test_a_closed_page_leaves_nothing_even_when_its_upload_was_refused_or_its_files_went(photos, tmp_path, monkeypatch):
    fake_builds(monkeypatch)
    uploads = PrivateCollections(tmp_path / "uploads", SETTINGS, ExtractorCache(), max_sessions=1)
    with pytest.raises(UploadError):
        uploads.add("refused", [tmp_path / "nothing.txt"], "mine", XCEPTION)
    assert uploads.folder("refused").exists()  # its (empty) images folder
    uploads.drop("refused")
    assert not uploads.folder("refused").exists()
    uploads.add("me", photos[:1], "mine", XCEPTION)
    shutil.rmtree(uploads.folder("me"))  # removed behind the server's back (a cleaner of old temporary files)
    uploads.drop("me")
    assert uploads.names("me") == [] and uploads.get("me", "mine") is None
    uploads.drop(None)  # a request without a session: nothing to do
    # The oldest session's folder gone the same way: a new visitor's upload is not the one to fail.
    uploads.add("old", photos[:1], "mine", XCEPTION)
    shutil.rmtree(uploads.folder("old"))
    assert uploads.add("new", photos[:1], "mine", XCEPTION).name == "mine"
    assert uploads.names("old") == [] and uploads.names("new") == ["mine"]
    uploads.close()
    assert not (tmp_path / "uploads").exists()
    uploads.close()  # again, or after the run's folder went first: nothing left to remove, quietly


def test_the_last_ten_thousand_closed_pages_are_remembered(photos, tmp_path, monkeypatch):
    # A page closed while its photos are described must not leave them; the memory of closed pages is bounded.
    fake_builds(monkeypatch)
    uploads = PrivateCollections(tmp_path / "uploads", SETTINGS, ExtractorCache())
    for session in range(10_000):
        uploads.drop(f"s{session}")
    with pytest.raises(UploadError, match="page was closed"):
        uploads.add("s0", photos[:1], "mine", XCEPTION)
    uploads.drop("s10000")  # one more: the oldest is forgotten
    assert uploads.add("s0", photos[:1], "mine", XCEPTION).name == "mine"
    with pytest.raises(UploadError, match="page was closed"):
        uploads.add("s1", photos[:1], "mine", XCEPTION)


def test_an_upload_over_the_sessions_limits_is_refused(photos, tmp_path, monkeypatch):
    fake_builds(monkeypatch)
    uploads = PrivateCollections(tmp_path / "uploads", SETTINGS, ExtractorCache(), limits=UploadLimits(max_images=2))
    with pytest.raises(UploadError, match="too many images: at most 2"):
        uploads.add("me", photos[:3], "mine", XCEPTION)
    assert uploads.names("me") == []


def test_a_request_without_a_collection_has_no_thumbnails_folder(tmp_path):
    shared = SearchEngine(tmp_path / "indexes")
    served = served_collection(shared, None, "me", None)
    assert (served.engine, served.name, served.thumbnails) == (shared, None, None)
    with pytest.raises(UploadError) as gone:
        served_collection(shared, None, "me", "mine", uploaded=True)
    assert str(gone.value) == ("that uploaded collection is gone (its browser session ended): add the photos again "
                               "in 'Your photos'.")  # fmt: skip


# -- Run folders, and the leftovers of runs that ended without cleaning up -----------------------------


def test_a_run_folder_is_made_empty_under_the_process_id(tmp_path):
    leftover = tmp_path / f"{RUN_FOLDER_PREFIX}{os.getpid()}"
    (leftover / "uploads").mkdir(parents=True)  # an earlier run that had this process id
    assert run_folder(tmp_path) == leftover and leftover.is_dir() and not any(leftover.iterdir())
    assert run_folder(tmp_path / "not" / "yet") == tmp_path / "not" / "yet" / f"{RUN_FOLDER_PREFIX}{os.getpid()}"


@pytest.fixture
def running_process():
    """A process of this test's own, standing for a running server (never this test's parent: a
    broken sweep could signal the processes it looks at)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def test_the_sweep_removes_dead_runs_folders_only(tmp_path, monkeypatch, running_process):
    running = running_process.pid
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    other_user = 4_242_424  # above Linux's largest process id: no process; told below it is another user's

    signals = []

    def kill(pid, signal_number):
        signals.append(signal_number)
        if pid == other_user:
            raise PermissionError(pid)
        return real_kill(pid, signal_number)

    real_kill = os.kill
    monkeypatch.setattr(os, "kill", kill)
    for pid in (dead.pid, os.getpid(), running, other_user):
        (tmp_path / f"{RUN_FOLDER_PREFIX}{pid}" / "uploads").mkdir(parents=True)
    (tmp_path / f"{RUN_FOLDER_PREFIX}notapid").mkdir()
    (tmp_path / f"{RUN_FOLDER_PREFIX}1234567").write_text("a file, not a run's folder")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "photo.jpg").parent.mkdir()
    (elsewhere / "photo.jpg").write_bytes(b"x")
    (tmp_path / f"{RUN_FOLDER_PREFIX}2345678").symlink_to(elsewhere)  # a link is not followed
    removed = sweep_leftover_runs(tmp_path)
    # This process's own id: a leftover of an earlier run (a running server sweeps before making its folder).
    assert removed == sorted(tmp_path / f"{RUN_FOLDER_PREFIX}{pid}" for pid in (dead.pid, os.getpid()))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{RUN_FOLDER_PREFIX}{pid}" for pid in (running, other_user, "notapid", 1234567, 2345678)] + ["elsewhere"]
    )
    assert (elsewhere / "photo.jpg").exists()
    assert running_process.poll() is None  # asked whether it runs, not disturbed
    assert signals and set(signals) == {0}  # signal 0 asks; any other would hit a live process
