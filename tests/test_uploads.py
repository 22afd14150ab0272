"""Photos a visitor sends from the page: what is refused (and that nothing lands outside), the
limits, and private collections that only their own session sees."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from synthetic import make_gallery

from cbir.backbones import BACKBONES
from cbir.weights import Weights
from cbir.trunks import ExtractorCache
from cbir.build import BuildSettings
from cbir.recipe import RecipeSettings
from cbir.uploads import PrivateCollections, UploadError, UploadLimits, gather_upload


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
     ("C:/evil.jpg", "absolute path")],
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
    assert not uploads.folder("one").exists() and uploads.folder("three").exists()
    assert uploads.names("one") == [] and uploads.names("three") == ["mine"]
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
    with pytest.raises(UploadError, match="damaged.zip"):
        gather_upload([archive], tmp_path / "out")
    fake_builds(monkeypatch)
    uploads = PrivateCollections(tmp_path / "uploads", SETTINGS, ExtractorCache(), max_collections=2)
    uploads.add("me", photos[:1], "one", BACKBONES["xception"])
    uploads.add("me", photos[:1], "two", BACKBONES["xception"])
    with pytest.raises(UploadError, match="at most 2 collections at once"):
        uploads.add("me", photos[:1], "three", BACKBONES["xception"])
    uploads.add("me", photos[1:2], "two", BACKBONES["xception"])  # replacing one is allowed


def test_a_page_closed_while_its_photos_are_described_leaves_nothing(photos, tmp_path, monkeypatch):
    import cbir.uploads as uploads_module

    uploads = PrivateCollections(tmp_path / "uploads", SETTINGS, ExtractorCache())

    def build_then_close(*args, **kwargs):  # the tab is closed while the network runs
        uploads.drop("me")
        return []

    monkeypatch.setattr(uploads_module, "build_indexes", build_then_close)
    with pytest.raises(UploadError, match="page was closed"):
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
