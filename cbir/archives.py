"""Safe extraction of archives from the internet: nothing lands outside the target folder.

Absolute member paths, paths that climb out ("../x"), links pointing outside and anything written
through a link are refused by this module's own checks, member by member, before anything is
written; Python's own "data" filter runs as a second guard where it exists (Python >= 3.11.4).
"""

from __future__ import annotations

import functools
import gzip
import logging
import posixpath
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PureWindowsPath

from cbir.errors import CbirError

logger = logging.getLogger(__name__)


class ArchiveError(CbirError):
    """An archive that is refused (unsafe member) or cannot be read (corrupt, incomplete)."""


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a (gzipped) tar into `dest`, refusing anything that would land outside it.

    Absolute member paths, paths that climb out ("../x") and links pointing outside are refused
    with a ArchiveError naming the member; device files and FIFOs are skipped. Python's own "data"
    filter runs as well where available. On error `dest` may hold part of the archive: extract into
    a temporary folder.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = _checked_members(tar, archive)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # Python < 3.11.4: our own checks are the only guard
                tar.extractall(dest, members=members)
    except FileNotFoundError as error:
        if Path(error.filename or "") == archive:
            raise ArchiveError(f"archive {archive} does not exist") from None
        raise
    except tarfile.FilterError as error:
        member = error.tarinfo.name if error.tarinfo is not None else "?"
        raise ArchiveError(f"refusing to extract {archive.name}: member {member!r}: {error}") from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        reason = " ".join(str(error).split())  # tarfile lists one line per compression it tried
        raise ArchiveError(
            f"the archive {archive} is corrupt or incomplete ({reason})."
        ) from None


def _checked_members(tar: tarfile.TarFile, archive: Path) -> Iterator[tarfile.TarInfo]:
    """The archive's members in order, each checked before it is extracted (one pass over the file)."""
    link_names: set[str] = set()
    for member in tar:
        name = member.name
        refuse = functools.partial(_refusal, archive, name)
        if _is_absolute(name):
            raise refuse("has an absolute path")
        normal = posixpath.normpath(name)
        if _climbs_out(normal):
            raise refuse("would be written outside the extraction folder")
        if any(parent in link_names for parent in _parents(normal)):
            raise refuse("would be written through a link")
        if member.issym():
            target = member.linkname
            if _is_absolute(target) or _climbs_out(posixpath.join(posixpath.dirname(normal), target)):
                raise refuse(f"is a link to {target!r}, outside the extraction folder")
            link_names.add(normal)
        elif member.islnk():
            if _is_absolute(member.linkname) or _climbs_out(member.linkname):
                raise refuse(f"is a hard link to {member.linkname!r}, outside the extraction folder")
        elif not (member.isfile() or member.isdir()):
            logger.warning("%s: skipping special file %s", archive.name, name)
            continue
        yield member


def _refusal(archive: Path, member_name: str, why: str) -> ArchiveError:
    return ArchiveError(f"refusing to extract {archive.name}: member {member_name!r} {why}")


def _is_absolute(name: str) -> bool:
    return name.startswith(("/", "\\")) or bool(PureWindowsPath(name).drive)


def _climbs_out(path: str) -> bool:
    normal = posixpath.normpath(path)
    return normal == ".." or normal.startswith("../")


def _parents(normal: str) -> Iterator[str]:
    """'a/b/c' -> 'a/b', 'a'. Stops at a root ('/'), whose parent is itself."""
    parent, child = posixpath.dirname(normal), normal
    while parent and parent != child:
        yield parent
        parent, child = posixpath.dirname(parent), parent
