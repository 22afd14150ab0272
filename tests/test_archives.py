"""Safe extraction: nothing an archive holds lands outside the target folder.

Every refusal is checked twice: with Python's own "data" filter (Python >= 3.11.4) and with it
removed, as on older Pythons, where the project's own member checks are the only guard.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from cbir.archives import ArchiveError, safe_extract


@pytest.fixture(params=["python-filter", "own-checks-only"])
def python_filter(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "own-checks-only":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    return request.param




def make_tar(path: Path, *members: tuple[tarfile.TarInfo, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


def file_member(name: str) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), b"payload"


def link_member(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, b""


@pytest.mark.parametrize("evil_name", ["../evil.txt", "sub/../../evil.txt"])
def test_extract_refuses_members_that_climb_out(tmp_path: Path, evil_name: str, python_filter: str) -> None:
    archive = make_tar(tmp_path / "evil.tgz", file_member("fine.txt"), file_member(evil_name))
    dest = tmp_path / "out"

    with pytest.raises(ArchiveError, match="evil.txt"):
        safe_extract(archive, dest)

    assert not (tmp_path / "evil.txt").exists()


def test_extract_refuses_absolute_member_paths(tmp_path: Path, python_filter: str) -> None:
    target = tmp_path / "absolute.txt"
    archive = make_tar(tmp_path / "evil.tgz", file_member(str(target)))

    with pytest.raises(ArchiveError, match="absolute"):
        safe_extract(archive, tmp_path / "out")

    assert not target.exists()
    assert not list((tmp_path / "out").rglob("absolute.txt"))


@pytest.mark.parametrize(
    "members",
    [
        [link_member("escape", "../../outside")],
        [link_member("escape", "/etc/passwd")],
        [link_member("hard", "../outside", tarfile.LNKTYPE)],
        [link_member("inner", "."), file_member("inner/../../outside.txt")],
        [link_member("jump", "sub/.."), file_member("jump/x.txt")],
    ],
    ids=["relative-symlink", "absolute-symlink", "hardlink", "through-dot", "through-link"],
)
def test_extract_refuses_links_leaving_the_folder(tmp_path: Path, members: list, python_filter: str) -> None:
    archive = make_tar(tmp_path / "evil.tgz", *members)

    with pytest.raises(ArchiveError, match="refusing"):
        safe_extract(archive, tmp_path / "out")

    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tgz", "out"]
    assert not list((tmp_path / "out").rglob("outside*"))


def test_extract_keeps_inner_links_and_skips_device_files(tmp_path: Path, python_filter: str) -> None:
    device = tarfile.TarInfo("dev/null-ish")
    device.type = tarfile.CHRTYPE
    archive = make_tar(
        tmp_path / "ok.tgz", file_member("a/real.txt"), link_member("a/alias.txt", "real.txt"), (device, b"")
    )

    safe_extract(archive, tmp_path / "out")

    assert (tmp_path / "out/a/alias.txt").read_bytes() == b"payload"
    assert not (tmp_path / "out/dev/null-ish").exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_archive_is_refused_with_a_message(tmp_path: Path, damage: str) -> None:
    archive = tmp_path / "oxbuild_images-v1.tgz"
    good = make_tar(tmp_path / "good.tgz", *(file_member(f"f{i}.txt") for i in range(200))).read_bytes()
    archive.write_bytes(b"\x1f\x8b not really gzip" * 50 if damage == "garbage" else good[: len(good) // 2])

    with pytest.raises(ArchiveError, match="corrupt or incomplete"):
        safe_extract(archive, tmp_path / "out")
