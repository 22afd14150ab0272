"""Collections: ground truth in the official formats, getting Oxford5k / Paris6k from a local server
(mirror, resume, auth, refusals), archives and folders placed by hand, and safe extraction."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import tarfile
import urllib.request
from pathlib import Path

import pytest

from cbir.datasets import (
    DATASETS,
    Collection,
    DatasetError,
    DownloadSettings,
    dataset_dir,
    folder_collection,
    load_collection_dir,
    parse_ground_truth,
    prepare_dataset,
)
from cbir.download import download
from fake_datasets import (
    ServerBehaviour,
    draw_landmark_image,
    make_oxford_layout,
    make_paris_layout,
    place_extracted,
    serve_directory,
)


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No developer ~/.netrc, CBIR_* setting or proxy leaks into these tests."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for variable in list(os.environ):
        if variable.startswith("CBIR_") or variable.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(variable)


@pytest.fixture
def closed_port_url() -> str:
    """A local URL nothing listens on, so a download attempt fails at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("this test must not touch the network")

    monkeypatch.setattr(urllib.request.OpenerDirector, "open", refuse)


@pytest.fixture(scope="module")
def oxford(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_oxford_layout(tmp_path_factory.mktemp("oxford"))


@pytest.fixture(scope="module")
def paris(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_paris_layout(tmp_path_factory.mktemp("paris"))


def quiet_settings(data_dir: Path, **overrides: object) -> DownloadSettings:
    return DownloadSettings(data_dir=data_dir, progress=False, timeout=5.0, **overrides)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Ground truth and layouts


def test_oxford_ground_truth_strips_prefix_and_reads_boxes_and_lists(oxford: dict) -> None:
    queries = parse_ground_truth(oxford["gt_dir"], "oxc1_")

    assert queries == oxford["queries"]
    assert [q.name for q in queries] == ["all_souls_1", "all_souls_2", "ashmolean_1", "ashmolean_2"]
    first = queries[0]
    assert first.image == "all_souls_000000"
    assert first.box == (3.5, 1.5, 41.7, 30.1)
    assert first.label("good") == {"all_souls_000000", "all_souls_000001"}
    assert first.label("ok") == {"all_souls_000002"}
    assert first.label("junk") == {"all_souls_000003"}
    assert sorted(first.labels) == ["good", "junk", "ok"]


def test_ground_truth_with_a_malformed_query_line_names_the_file(tmp_path: Path, oxford: dict) -> None:
    gt_dir = tmp_path / "gt"
    shutil.copytree(oxford["gt_dir"], gt_dir)
    (gt_dir / "ashmolean_2_query.txt").write_text("oxc1_ashmolean_000001 12.0 not-a-number 40.0 30.0\n")

    with pytest.raises(DatasetError, match="ashmolean_2_query.txt"):
        parse_ground_truth(gt_dir, "oxc1_")


def test_paris_nested_layout_finds_query_images_by_id(paris: dict) -> None:
    collection = load_collection_dir("paris6k", paris["images_dir"], paris["gt_dir"])

    assert collection.images == tuple(paris["images"])
    assert paris["corrupt"][0] in collection.images  # listing never decodes
    assert collection.queries == paris["queries"]
    query = collection.queries[0]
    assert query.image == "paris_defense_000000"
    expected = paris["images_dir"].absolute() / "paris/defense/paris_defense_000000.jpg"
    assert collection.path_of(query.image) == expected
    assert collection.path_of("paris/defense/paris_defense_000000.jpg") == expected
    assert collection.image_id("paris/defense/paris_defense_000000.jpg") == "paris_defense_000000"
    with pytest.raises(KeyError):
        collection.path_of("paris_louvre_999999")


def test_an_id_shared_by_two_files_must_be_asked_for_by_path(tmp_path: Path) -> None:
    collection = Collection("mine", tmp_path, ("b/x.jpg", "a/x.png", "a/y.jpg"))

    assert collection.images == ("a/x.png", "a/y.jpg", "b/x.jpg")
    assert collection.path_of("y") == tmp_path / "a/y.jpg"
    assert collection.path_of("b/x.jpg") == tmp_path / "b/x.jpg"
    with pytest.raises(KeyError, match="several"):
        collection.path_of("x")


# --------------------------------------------------------------------------------------------
# prepare_dataset


@pytest.mark.parametrize("dataset", ["oxford5k", "paris6k"])
def test_prepare_dataset_downloads_from_the_mirror_once(
    tmp_path: Path, dataset: str, oxford: dict, paris: dict
) -> None:
    layout = oxford if dataset == "oxford5k" else paris
    behaviour = ServerBehaviour()
    with serve_directory(layout["archive_dir"], behaviour) as base_url:
        settings = quiet_settings(tmp_path / "data", mirror=base_url + "/")
        collection = prepare_dataset(dataset, settings)
        requests_after_first_call = len(behaviour.requests)
        again = prepare_dataset(dataset, settings)

    assert sorted(request.path for request in behaviour.requests) == sorted(layout["archives"])
    assert requests_after_first_call == len(DATASETS[dataset].archives)
    assert collection.name == dataset
    assert collection.root == (tmp_path / "data" / dataset / "images").absolute()
    assert collection.images == tuple(layout["images"])
    assert collection.queries == layout["queries"]
    assert all(collection.path_of(q.image).is_file() for q in collection.queries)
    assert again == collection
    assert (dataset_dir(dataset, settings) / ".complete").is_file()
    assert not list(dataset_dir(dataset, settings).glob(".extracting-*"))


def test_extracted_images_and_ground_truth_are_used_without_network(
    tmp_path: Path, oxford: dict, no_network: None
) -> None:
    settings = quiet_settings(tmp_path / "data")
    place_extracted(oxford, dataset_dir("oxford5k", settings))

    collection = prepare_dataset("oxford5k", settings)

    assert collection.images == tuple(oxford["images"])
    assert collection.queries == oxford["queries"]


def test_archives_placed_by_hand_are_extracted_without_download(tmp_path: Path, oxford: dict, no_network: None) -> None:
    settings = quiet_settings(tmp_path / "data")
    root = dataset_dir("oxford5k", settings)
    (root / "archives").mkdir(parents=True)
    shutil.copy(oxford["archives"]["oxbuild_images-v1.tgz"], root)  # beside images/ ...
    shutil.copy(oxford["archives"]["gt_files_170407.tgz"], root / "archives")  # ... or in archives/

    collection = prepare_dataset("oxford5k", settings)

    assert collection.images == tuple(oxford["images"])
    assert collection.queries == oxford["queries"]


def test_a_local_folder_works_as_a_mirror(tmp_path: Path, paris: dict) -> None:
    collection = prepare_dataset("paris6k", quiet_settings(tmp_path / "data", mirror=str(paris["archive_dir"])))

    assert collection.images == tuple(paris["images"])
    assert collection.queries == paris["queries"]


def test_a_half_extracted_dataset_is_extracted_again(tmp_path: Path, oxford: dict, no_network: None) -> None:
    settings = quiet_settings(tmp_path / "data")
    root = dataset_dir("oxford5k", settings)
    (root / "images").mkdir(parents=True)
    (root / "images" / "all_souls_000000.jpg").write_bytes(b"half written")
    (root / "gt").mkdir()
    (root / "gt" / "all_souls_1_query.txt").write_text("oxc1_all_souls_000000 1.0 2.0 3.0 4.0\n")
    for archive in oxford["archives"].values():
        shutil.copy(archive, root)

    collection = prepare_dataset("oxford5k", settings)

    assert collection.images == tuple(oxford["images"])
    assert collection.queries == oxford["queries"]
    assert collection.path_of("all_souls_000000").read_bytes() != b"half written"


def test_an_interrupted_download_resumes_with_a_range_request(tmp_path: Path, oxford: dict) -> None:
    name = "oxbuild_images-v1.tgz"
    original = oxford["archives"][name].read_bytes()
    half = len(original) // 2
    behaviour = ServerBehaviour(cut_after={name: half})
    archives = tmp_path / "data" / "oxford5k" / "archives"
    partial = archives / (name + ".part")

    with serve_directory(oxford["archive_dir"], behaviour) as base_url:
        settings = DownloadSettings(data_dir=tmp_path / "data", mirror=base_url, timeout=5.0)  # with progress bars
        with pytest.raises(DatasetError, match="run again to resume"):
            prepare_dataset("oxford5k", settings)
        assert partial.stat().st_size == half
        behaviour.cut_after.clear()
        collection = prepare_dataset("oxford5k", settings)

    ranges = [request.range for request in behaviour.requests_for(name)]
    assert ranges == [None, f"bytes={half}-"]
    assert behaviour.requests_for(name)[-1].status == 206
    assert (archives / name).read_bytes() == original
    assert not partial.exists()
    assert collection.images == tuple(oxford["images"])


def test_a_server_that_ignores_ranges_makes_the_download_start_over(tmp_path: Path, oxford: dict) -> None:
    source = oxford["archives"]["gt_files_170407.tgz"]
    dest = tmp_path / "gt.tgz"
    (tmp_path / "gt.tgz.part").write_bytes(b"stale bytes from another file")
    behaviour = ServerBehaviour(ignore_range=True)

    with serve_directory(oxford["archive_dir"], behaviour) as base_url:
        download(f"{base_url}/gt_files_170407.tgz", dest, quiet_settings(tmp_path).http)

    assert behaviour.requests[0].range == "bytes=29-" and behaviour.requests[0].status == 200
    assert dest.read_bytes() == source.read_bytes()


@pytest.mark.parametrize("shift", [10, -10])
def test_a_resume_answered_from_another_byte_is_refused_and_the_download_starts_over(
    tmp_path: Path, oxford: dict, shift: int
) -> None:
    source = oxford["archives"]["oxbuild_images-v1.tgz"].read_bytes()
    dest = tmp_path / "images.tgz"
    offset = len(source) // 2
    (tmp_path / "images.tgz.part").write_bytes(source[:offset])
    behaviour = ServerBehaviour(range_shift=shift)

    with serve_directory(oxford["archive_dir"], behaviour) as base_url:
        download(f"{base_url}/oxbuild_images-v1.tgz", dest, quiet_settings(tmp_path).http)

    first, second = behaviour.requests
    assert first.range == f"bytes={offset}-" and first.status == 206  # answered from offset - shift
    assert second.range is None and second.status == 200  # the .part was dropped, the file fetched anew
    assert dest.read_bytes() == source


def test_a_part_file_longer_than_the_archive_is_dropped_and_fetched_anew(tmp_path: Path, oxford: dict) -> None:
    source = oxford["archives"]["gt_files_170407.tgz"].read_bytes()
    dest = tmp_path / "gt.tgz"
    (tmp_path / "gt.tgz.part").write_bytes(source + b"trailing bytes of something else")
    behaviour = ServerBehaviour()

    with serve_directory(oxford["archive_dir"], behaviour) as base_url:
        download(f"{base_url}/gt_files_170407.tgz", dest, quiet_settings(tmp_path).http)

    assert [request.status for request in behaviour.requests] == [416, 200]
    assert dest.read_bytes() == source


def test_a_complete_part_file_is_finished_without_downloading_again(tmp_path: Path, oxford: dict) -> None:
    source = oxford["archives"]["gt_files_170407.tgz"]
    dest = tmp_path / "gt.tgz"
    shutil.copy(source, tmp_path / "gt.tgz.part")  # e.g. a crash right before the rename
    behaviour = ServerBehaviour()

    with serve_directory(oxford["archive_dir"], behaviour) as base_url:
        download(f"{base_url}/gt_files_170407.tgz", dest, quiet_settings(tmp_path).http)

    assert [request.status for request in behaviour.requests] == [416]
    assert dest.read_bytes() == source.read_bytes()


@pytest.mark.parametrize(
    ("refusal", "status", "advice"),
    [
        ("forbidden", "HTTP 403", "request access at https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/"),
        ("missing", "HTTP 404", "CBIR_MIRROR"),
        ("html_page", "web page", "request access at https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/"),
    ],
)
def test_refused_downloads_say_where_to_get_and_put_the_archives(
    tmp_path: Path, oxford: dict, refusal: str, status: str, advice: str
) -> None:
    behaviour = ServerBehaviour(**{refusal: {"gt_files_170407.tgz"}})  # asked for first: both still missing
    with serve_directory(oxford["archive_dir"], behaviour) as base_url:
        settings = quiet_settings(tmp_path / "data", mirror=base_url)
        with pytest.raises(DatasetError) as raised:
            prepare_dataset("oxford5k", settings)

    message = str(raised.value)
    assert status in message
    assert advice in message
    assert "oxbuild_images-v1.tgz" in message and "gt_files_170407.tgz" in message
    assert str(dataset_dir("oxford5k", settings)) in message
    assert not (dataset_dir("oxford5k", settings) / "images").exists()


def test_an_unreachable_server_says_how_to_work_offline(tmp_path: Path, closed_port_url: str) -> None:
    settings = quiet_settings(tmp_path / "data", mirror=closed_port_url)

    with pytest.raises(DatasetError, match="could not reach .* place them in"):
        prepare_dataset("paris6k", settings)


def test_basic_auth_from_settings_is_accepted_and_missing_credentials_refused(tmp_path: Path, oxford: dict) -> None:
    behaviour = ServerBehaviour(credentials=("alice", "s3cret"))
    with serve_directory(oxford["archive_dir"], behaviour) as base_url:
        with pytest.raises(DatasetError, match="HTTP 401.*CBIR_DATA_USER"):
            prepare_dataset("oxford5k", quiet_settings(tmp_path / "refused", mirror=base_url))
        collection = prepare_dataset(
            "oxford5k", quiet_settings(tmp_path / "data", mirror=base_url, user="alice", password="s3cret")
        )

    assert collection.images == tuple(oxford["images"])
    assert any(request.authorized and request.status == 200 for request in behaviour.requests)


def test_basic_auth_falls_back_to_netrc(tmp_path: Path, oxford: dict) -> None:
    netrc_file = Path(os.environ["HOME"]) / ".netrc"
    netrc_file.write_text("machine 127.0.0.1 login alice password s3cret\n")
    netrc_file.chmod(0o600)
    behaviour = ServerBehaviour(credentials=("alice", "s3cret"))

    with serve_directory(oxford["archive_dir"], behaviour) as base_url:
        download(f"{base_url}/gt_files_170407.tgz", tmp_path / "gt.tgz", quiet_settings(tmp_path).http)

    assert (tmp_path / "gt.tgz").read_bytes() == oxford["archives"]["gt_files_170407.tgz"].read_bytes()


def test_unknown_dataset_name_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="oxford5k, paris6k"):
        prepare_dataset("holidays", quiet_settings(tmp_path).http)


def test_settings_come_from_the_environment_and_overrides_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CBIR_DATA_DIR", "/srv/datasets")
    monkeypatch.setenv("CBIR_MIRROR", "http://mirror.example/cbir")
    monkeypatch.setenv("CBIR_DATA_USER", "alice")

    settings = DownloadSettings.from_env(mirror=None, progress=False)

    assert settings.data_dir == Path("/srv/datasets")
    assert settings.mirror == "http://mirror.example/cbir"  # an unset CLI option keeps the environment's
    assert settings.user == "alice" and settings.password is None
    assert settings.progress is False
    assert DownloadSettings.from_env(data_dir="elsewhere").data_dir == Path("elsewhere")


# --------------------------------------------------------------------------------------------
# Plain folders


def test_folder_collection_scans_recursively_and_skips_hidden_and_foreign_files(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    (folder / "trip" / "day1").mkdir(parents=True)
    (folder / ".thumbnails").mkdir()
    outside = tmp_path / "elsewhere.jpg"
    for path in (folder / "a.jpg", folder / "trip" / "B.PNG", folder / "trip" / "day1" / "c.webp", outside):
        draw_landmark_image(0, 0).save(path)
    for path in (folder / ".hidden.jpg", folder / ".thumbnails" / "a.jpg", folder / "notes.txt"):
        path.write_bytes(b"not a photo")
    (folder / "inside_link.jpg").symlink_to(folder / "a.jpg")
    (folder / "outside_link.jpg").symlink_to(outside)
    (folder / "loop").symlink_to(folder, target_is_directory=True)

    collection = folder_collection(folder, "photos")

    assert collection.images == ("a.jpg", "inside_link.jpg", "trip/B.PNG", "trip/day1/c.webp")
    assert collection.queries == ()
    assert collection.path_of("c") == folder.absolute() / "trip/day1/c.webp"


def test_folder_collection_refuses_empty_or_missing_folders(tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no photos here")

    with pytest.raises(DatasetError, match="no images"):
        folder_collection(tmp_path / "empty", "empty")
    with pytest.raises(DatasetError, match="not a folder"):
        folder_collection(tmp_path / "nowhere", "nowhere")


# --------------------------------------------------------------------------------------------
# What was downloaded is recorded, checked when reused, and never kept when refused


def test_a_downloaded_archive_changed_on_disk_is_fetched_again(tmp_path: Path, oxford: dict) -> None:
    from cbir.download import matches_record, record_path

    behaviour = ServerBehaviour()
    with serve_directory(oxford["archive_dir"], behaviour) as base_url:
        settings = quiet_settings(tmp_path / "data", mirror=base_url)
        prepare_dataset("oxford5k", settings)
        archive = tmp_path / "data" / "oxford5k" / "archives" / "gt_files_170407.tgz"
        record = json.loads(record_path(archive).read_text())
        assert record["size"] == archive.stat().st_size and len(record["sha256"]) == 64
        assert matches_record(archive) is True
        # Flip one byte, same size; and make the dataset extract again.
        data = bytearray(archive.read_bytes())
        data[100] ^= 0xFF
        archive.write_bytes(bytes(data))
        assert matches_record(archive) is False
        shutil.rmtree(tmp_path / "data" / "oxford5k" / "gt")
        (tmp_path / "data" / "oxford5k" / ".complete").unlink()
        before = len(behaviour.requests_for("gt_files_170407.tgz"))
        collection = prepare_dataset("oxford5k", settings)

    assert len(behaviour.requests_for("gt_files_170407.tgz")) == before + 1
    assert archive.read_bytes() == oxford["archives"]["gt_files_170407.tgz"].read_bytes()
    assert collection.queries == oxford["queries"]


def test_a_refused_download_is_deleted_so_the_next_run_fetches_it_anew(tmp_path: Path, oxford: dict) -> None:
    from cbir.archives import ArchiveError

    evil = tmp_path / "evil"
    evil.mkdir()
    for name, path in oxford["archives"].items():
        shutil.copy(path, evil / name)
    with tarfile.open(evil / "gt_files_170407.tgz", "w:gz") as tar:
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with serve_directory(evil) as base_url:
        with pytest.raises(ArchiveError, match="escaped.txt.*It was deleted; run the same command"):
            prepare_dataset("oxford5k", quiet_settings(tmp_path / "data", mirror=base_url))
    archives = tmp_path / "data" / "oxford5k" / "archives"
    assert not (archives / "gt_files_170407.tgz").exists()
    assert not (archives / "gt_files_170407.tgz.record.json").exists()
    assert not list(tmp_path.rglob("escaped.txt"))
    with serve_directory(oxford["archive_dir"]) as base_url:
        collection = prepare_dataset("oxford5k", quiet_settings(tmp_path / "data", mirror=base_url))
    assert collection.queries == oxford["queries"]


def test_a_hub_token_is_for_the_hub_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from cbir.download import _hub_token

    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert _hub_token("https://huggingface.co/datasets/me/repo/resolve/main/oxford5k.tar") == "hf_secret"
    assert _hub_token("https://hf.co/datasets/me/repo/resolve/main/oxford5k.tar") == "hf_secret"
    for other in ("https://example.com/oxford5k.tar", "https://evilhuggingface.co/x.tar", "http://127.0.0.1/x.tar"):
        assert _hub_token(other) is None
    monkeypatch.delenv("HF_TOKEN")
    assert _hub_token("https://huggingface.co/x.tar") is None
