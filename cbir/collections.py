"""What a collection is: Oxford5k / Paris6k (download, extract, ground truth) or any folder of images.

A collection is a root directory, the sorted relative paths of its images and, for the two building
datasets, the 55 official queries with their good / ok / junk lists. The dataset archives sit behind
the owners' terms-of-access form, so every way of getting them is supported: already extracted by
hand, archives placed by hand, a mirror (`CBIR_MIRROR`), or the official URLs with credentials.
"""

from __future__ import annotations

import functools
import gzip
import http.client
import json
import logging
import math
import netrc
import os
import posixpath
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal
from urllib.parse import urlsplit

from tqdm import tqdm

from cbir import __version__
from cbir.images import IMAGE_SUFFIXES

__all__ = [
    "DATASETS",
    "ArchiveSpec",
    "Collection",
    "DatasetError",
    "DatasetSpec",
    "DownloadError",
    "DownloadSettings",
    "Query",
    "dataset_dir",
    "download",
    "folder_collection",
    "load_collection_dir",
    "parse_ground_truth",
    "prepare_dataset",
    "safe_extract",
]

logger = logging.getLogger(__name__)

IMAGES_DIR = "images"
GROUND_TRUTH_DIR = "gt"
ARCHIVES_DIR = "archives"
COMPLETE_MARKER = ".complete"
_STAGING_PREFIX = ".extracting-"
_CHUNK_BYTES = 1 << 20
_GROUND_TRUTH_LISTS = ("good", "ok", "junk")


class DatasetError(RuntimeError):
    """Any problem getting or reading a collection; the message says what to do."""


DownloadProblem = Literal["denied", "not_found", "unreachable", "incomplete", "http"]


class DownloadError(DatasetError):
    """A download that failed; `problem` lets callers add advice that fits the dataset."""

    def __init__(self, message: str, *, url: str, problem: DownloadProblem, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.problem = problem
        self.status = status


# --------------------------------------------------------------------------------------------
# What a collection is


@dataclass(frozen=True)
class Query:
    """One official query: a box on one image, and which images count as right answers."""

    name: str  # e.g. "all_souls_1"
    image: str  # image id without extension or "oxc1_" prefix, e.g. "all_souls_000013"
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the query image
    good: frozenset[str]
    ok: frozenset[str]
    junk: frozenset[str]

    @property
    def positives(self) -> frozenset[str]:
        """The images the standard protocol scores as correct answers."""
        return self.good | self.ok


@dataclass(frozen=True)
class Collection:
    """A root directory, its images as sorted POSIX paths relative to it, and its queries."""

    name: str
    root: Path
    images: tuple[str, ...]
    queries: tuple[Query, ...] = ()
    # Ground truth names images by id (file stem); Paris keeps them in per-landmark folders.
    _relpath_by_id: dict[str, str] = field(init=False, repr=False, compare=False)
    _ambiguous_ids: frozenset[str] = field(init=False, repr=False, compare=False)
    _relpaths: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).absolute())
        object.__setattr__(self, "images", tuple(sorted(self.images)))
        object.__setattr__(self, "queries", tuple(self.queries))
        relpath_by_id: dict[str, str] = {}
        ambiguous: set[str] = set()
        for relpath in self.images:
            image_id = self.image_id(relpath)
            if image_id in relpath_by_id:
                ambiguous.add(image_id)
            relpath_by_id[image_id] = relpath
        for image_id in ambiguous:
            del relpath_by_id[image_id]
        object.__setattr__(self, "_relpath_by_id", relpath_by_id)
        object.__setattr__(self, "_ambiguous_ids", frozenset(ambiguous))
        object.__setattr__(self, "_relpaths", frozenset(self.images))

    def __len__(self) -> int:
        return len(self.images)

    def image_id(self, relpath: str) -> str:
        """The id the ground truth uses for an image: its file name without extension."""
        return PurePosixPath(relpath).stem

    def path_of(self, image_id_or_relpath: str) -> Path:
        """Absolute path of an image given by relative path or id; KeyError if it is not in here."""
        if image_id_or_relpath in self._relpaths:
            return self.root / image_id_or_relpath
        if image_id_or_relpath in self._relpath_by_id:
            return self.root / self._relpath_by_id[image_id_or_relpath]
        if image_id_or_relpath in self._ambiguous_ids:
            matches = [p for p in self.images if self.image_id(p) == image_id_or_relpath]
            raise KeyError(
                f"{image_id_or_relpath!r} names several images of {self.name}: {', '.join(matches)}; "
                "use the relative path"
            )
        raise KeyError(f"{image_id_or_relpath!r} is not an image of the collection {self.name!r}")


# --------------------------------------------------------------------------------------------
# The datasets this project knows how to get


@dataclass(frozen=True)
class ArchiveSpec:
    file_name: str
    url: str
    kind: Literal["images", "ground_truth"]

    def __post_init__(self) -> None:
        if self.kind not in ("images", "ground_truth"):
            raise ValueError(f"archive kind must be 'images' or 'ground_truth', not {self.kind!r}")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    archives: tuple[ArchiveSpec, ...]
    access_page: str  # where a person requests access to the archives
    query_prefix: str  # prefix of image names in *_query.txt lines ("oxc1_" for Oxford)


_OXFORD_PAGE = "https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/"
_PARIS_PAGE = "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/"

DATASETS: dict[str, DatasetSpec] = {
    "oxford5k": DatasetSpec(
        name="oxford5k",
        title="Oxford Buildings (Oxford5k)",
        archives=(
            ArchiveSpec("oxbuild_images-v1.tgz", _OXFORD_PAGE + "oxbuild_images-v1.tgz", "images"),
            ArchiveSpec("gt_files_170407.tgz", _OXFORD_PAGE + "gt_files_170407.tgz", "ground_truth"),
        ),
        access_page=_OXFORD_PAGE,
        query_prefix="oxc1_",
    ),
    "paris6k": DatasetSpec(
        name="paris6k",
        title="Paris Buildings (Paris6k)",
        archives=(
            ArchiveSpec("paris_1-v1.tgz", _PARIS_PAGE + "paris_1-v1.tgz", "images"),
            ArchiveSpec("paris_2-v1.tgz", _PARIS_PAGE + "paris_2-v1.tgz", "images"),
            ArchiveSpec("paris_120310.tgz", _PARIS_PAGE + "paris_120310.tgz", "ground_truth"),
        ),
        access_page=_PARIS_PAGE,
        query_prefix="",
    ),
}


@dataclass(frozen=True)
class DownloadSettings:
    data_dir: Path = Path("data")
    mirror: str | None = None  # fetch every archive as f"{mirror}/{file_name}" instead of its own URL
    user: str | None = None
    password: str | None = None  # with no user/password, ~/.netrc is looked up for the URL's host
    progress: bool = True  # tqdm bars on stderr
    timeout: float = 60.0  # seconds without an answer before a connection counts as lost

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))

    @classmethod
    def from_env(cls, **overrides: object) -> DownloadSettings:
        """Settings from CBIR_DATA_DIR, CBIR_MIRROR, CBIR_DATA_USER, CBIR_DATA_PASSWORD.

        Overrides whose value is None are ignored, so a CLI can pass its unset options straight in.
        """
        from_environment: dict[str, object] = {}
        for variable, setting in (
            ("CBIR_DATA_DIR", "data_dir"),
            ("CBIR_MIRROR", "mirror"),
            ("CBIR_DATA_USER", "user"),
            ("CBIR_DATA_PASSWORD", "password"),
        ):
            if os.environ.get(variable):
                from_environment[setting] = os.environ[variable]
        from_environment.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**from_environment)  # type: ignore[arg-type]


def dataset_dir(spec_name: str, settings: DownloadSettings) -> Path:
    """Where one dataset lives: archives/, images/, gt/ and the completion marker."""
    return Path(settings.data_dir) / spec_name


def _spec_named(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}") from None


# --------------------------------------------------------------------------------------------
# Getting a dataset ready


def prepare_dataset(name: str, settings: DownloadSettings) -> Collection:
    """The collection of a known dataset, downloading and extracting only what is missing.

    Under `dataset_dir(name)`: `archives/` (downloads), `images/`, `gt/` and a marker written last.
    Images or ground truth already extracted (marker present, or put there by hand with no archive
    of that kind beside them) are used as they are, without touching the network.
    """
    spec = _spec_named(name)
    root = dataset_dir(name, settings)
    root.mkdir(parents=True, exist_ok=True)
    for leftover in root.glob(_STAGING_PREFIX + "*"):
        logger.info("removing %s left by an interrupted extraction", leftover)
        shutil.rmtree(leftover, ignore_errors=True)

    marker = root / COMPLETE_MARKER
    parts = {"images": root / IMAGES_DIR, "ground_truth": root / GROUND_TRUTH_DIR}
    if marker.is_file() and all(folder.is_dir() for folder in parts.values()):
        logger.info("%s: using %s", spec.title, root)
        return _load_prepared(spec, root)

    to_extract: dict[str, list[ArchiveSpec]] = {}
    for kind, folder in parts.items():
        archives = [archive for archive in spec.archives if archive.kind == kind]
        if _has_files(folder) and not any(_local_archive(root, archive) for archive in archives):
            logger.info("%s: using %s as placed by hand", spec.title, folder)
        else:
            to_extract[kind] = archives
    if not to_extract:
        return _load_prepared(spec, root)

    needed = [archive for archives in to_extract.values() for archive in archives]
    archive_paths = _fetch_missing_archives(spec, needed, root, settings)
    marker.unlink(missing_ok=True)  # from here on the folders may change under an old marker
    for kind, archives in to_extract.items():
        _extract_part(root, parts[kind], [archive_paths[archive.file_name] for archive in archives])
    collection = _load_prepared(spec, root)
    _write_marker(marker, spec, archive_paths, collection)
    return collection


def _load_prepared(spec: DatasetSpec, root: Path) -> Collection:
    return load_collection_dir(spec.name, root / IMAGES_DIR, root / GROUND_TRUTH_DIR, spec.query_prefix)


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(path.is_file() for path in folder.rglob("*"))


def _local_archive(root: Path, archive: ArchiveSpec) -> Path | None:
    """An archive the user placed in the dataset folder, or one downloaded earlier."""
    for candidate in (root / archive.file_name, root / ARCHIVES_DIR / archive.file_name):
        if candidate.is_file():
            return candidate
    return None


def _archive_url(archive: ArchiveSpec, settings: DownloadSettings) -> str:
    if not settings.mirror:
        return archive.url
    mirror = settings.mirror
    if "://" not in mirror:  # a local folder works as a mirror too
        mirror = Path(mirror).absolute().as_uri()
    return f"{mirror.rstrip('/')}/{archive.file_name}"


def _fetch_missing_archives(
    spec: DatasetSpec, archives: list[ArchiveSpec], root: Path, settings: DownloadSettings
) -> dict[str, Path]:
    """Every archive's local path, downloading the ones not there yet (before extracting any)."""
    found = {archive.file_name: _local_archive(root, archive) for archive in archives}
    paths = {name: path for name, path in found.items() if path is not None}
    # Ground truth first: it is small, so a refused or dead link shows before gigabytes are fetched.
    missing = sorted(
        (archive for archive in archives if found[archive.file_name] is None),
        key=lambda archive: archive.kind != "ground_truth",
    )
    for archive in missing:
        url = _archive_url(archive, settings)
        logger.info("%s: downloading %s from %s", spec.title, archive.file_name, url)
        try:
            paths[archive.file_name] = download(url, root / ARCHIVES_DIR / archive.file_name, settings)
        except DownloadError as error:
            still_missing = [a.file_name for a in missing if a.file_name not in paths]
            raise DatasetError(_download_advice(spec, error, still_missing, root)) from error
    return paths


def _download_advice(spec: DatasetSpec, error: DownloadError, file_names: list[str], root: Path) -> str:
    """The download error, with what the user can do about it for this dataset."""
    files = ", ".join(file_names)
    place_by_hand = f"download {files} yourself and place them in {root}"
    if error.problem == "denied":
        return (
            f"{error} The archives are behind the dataset owners' terms-of-access form: request access at "
            f"{spec.access_page}, then either set CBIR_DATA_USER / CBIR_DATA_PASSWORD (or ~/.netrc), or "
            f"{place_by_hand}."
        )
    if error.problem == "not_found":
        return (
            f"the download link is dead (HTTP {error.status}) for {error.url}. Get {files} from "
            f"{spec.access_page} or another copy and place them in {root}, or point --mirror / "
            "CBIR_MIRROR at a server that has them."
        )
    if error.problem == "incomplete":
        return str(error)
    return f"{error} To work offline, {place_by_hand} (or set --mirror / CBIR_MIRROR)."


def _extract_part(root: Path, final_folder: Path, archives: list[Path]) -> None:
    """Extract archives into a temporary folder and rename it, so a crash never leaves a half tree."""
    staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=root))
    try:
        for archive in archives:
            logger.info("extracting %s into %s", archive.name, final_folder)
            safe_extract(archive, staging)
        if final_folder.exists():
            logger.info("replacing %s, which was never completed", final_folder)
            shutil.rmtree(final_folder)
        staging.rename(final_folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_marker(marker: Path, spec: DatasetSpec, archives: Mapping[str, Path], collection: Collection) -> None:
    record = {
        "dataset": spec.name,
        "archives": {name: path.stat().st_size for name, path in sorted(archives.items())},
        "images": len(collection.images),
        "queries": len(collection.queries),
    }
    temporary = marker.with_name(marker.name + ".tmp")
    temporary.write_text(json.dumps(record, indent=1))
    os.replace(temporary, marker)


# --------------------------------------------------------------------------------------------
# Reading collections from disk


def load_collection_dir(name: str, images_root: Path, gt_dir: Path | None, query_prefix: str = "") -> Collection:
    """A collection from an extracted images folder (scanned recursively) and ground truth."""
    images_root = Path(images_root)
    images = _list_images(images_root)
    if not images:
        raise DatasetError(f"no images found under {images_root}")
    queries = parse_ground_truth(Path(gt_dir), query_prefix) if gt_dir is not None else ()
    collection = Collection(name=name, root=images_root, images=images, queries=queries)
    missing = sorted({q.image for q in queries if q.image not in collection._relpath_by_id})
    if missing:
        logger.warning("%s: %d query images are not in %s: %s", name, len(missing), images_root, missing[:5])
    return collection


def folder_collection(images_dir: Path, name: str) -> Collection:
    """Any folder of images, scanned recursively; hidden files and links leaving it are skipped."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir} is not a folder: give a folder that holds images")
    images = _list_images(images_dir)
    if not images:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise DatasetError(f"no images ({suffixes}) found under {images_dir}")
    return Collection(name=name, root=images_dir, images=images)


def _list_images(root: Path) -> tuple[str, ...]:
    """Sorted POSIX paths of image files under `root`; nothing is decoded here.

    Hidden files and folders are skipped, and so are linked folders (outside the tree they are not
    part of it, inside it they would list images twice) and linked files pointing outside.
    """
    root = root.absolute()
    real_root = root.resolve()
    found: list[str] = []

    def report(error: OSError) -> None:
        logger.warning("skipping %s: %s", error.filename, error.strerror)

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=report):
        dirnames[:] = [name for name in dirnames if not name.startswith(".")]
        for filename in filenames:
            path = Path(dirpath) / filename
            if filename.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if path.is_symlink() and not (path.resolve().is_relative_to(real_root) and path.is_file()):
                continue
            found.append(path.relative_to(root).as_posix())
    return tuple(sorted(found))


def parse_ground_truth(gt_dir: Path, query_prefix: str) -> tuple[Query, ...]:
    """The queries of an Oxford/Paris ground-truth folder, sorted by name.

    Each query `<name>_query.txt` holds one line `<prefix><image id> x0 y0 x1 y1`; beside it
    `<name>_good.txt`, `<name>_ok.txt` and `<name>_junk.txt` list image ids, one a line.
    """
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise DatasetError(f"ground-truth folder {gt_dir} does not exist")
    query_files = sorted(p for p in gt_dir.rglob("*_query.txt") if not p.name.startswith("."))
    if not query_files:
        raise DatasetError(f"no *_query.txt files in {gt_dir}: is this the ground-truth archive's content?")
    queries = [_read_query(path, query_prefix) for path in query_files]
    return tuple(sorted(queries, key=lambda query: query.name))


def _read_query(query_file: Path, query_prefix: str) -> Query:
    name = query_file.name.removesuffix("_query.txt")
    lines = _read_lines(query_file)
    fields = lines[0].split() if len(lines) == 1 else []
    try:
        if len(fields) != 5:
            raise ValueError("expected one line '<image> x0 y0 x1 y1'")
        x0, y0, x1, y1 = (float(value) for value in fields[1:])
        if not all(math.isfinite(value) for value in (x0, y0, x1, y1)):
            raise ValueError("box coordinates must be finite numbers")
    except ValueError as error:
        raise DatasetError(f"malformed query file {query_file}: {error}; found {lines[:3]!r}") from None
    image = _strip_image_suffix(fields[0].removeprefix(query_prefix) if query_prefix else fields[0])
    lists = {
        kind: frozenset(map(_strip_image_suffix, _read_lines(query_file.with_name(f"{name}_{kind}.txt"))))
        for kind in _GROUND_TRUTH_LISTS
    }
    return Query(name=name, image=image, box=(x0, y0, x1, y1), **lists)


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"ground-truth file {path} is missing: extract the whole ground-truth archive") from None
    except UnicodeDecodeError as error:
        raise DatasetError(f"ground-truth file {path} is not text ({error})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _strip_image_suffix(image: str) -> str:
    """Ground truth names images without extension; tolerate lists that include it."""
    suffix = PurePosixPath(image).suffix
    return image[: -len(suffix)] if suffix.lower() in IMAGE_SUFFIXES else image


# --------------------------------------------------------------------------------------------
# Downloading


def download(url: str, dest: Path, settings: DownloadSettings) -> Path:
    """Fetch `url` into `dest`, resuming a `.part` left by an earlier attempt.

    The file is renamed to `dest` only once its size matches what the server announced, so `dest`
    existing means complete. Raises DownloadError (a DatasetError) with `problem` set.
    """
    dest = Path(dest)
    partial = dest.with_suffix(dest.suffix + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    opener = _opener_for(url, settings)
    for _attempt in range(2):  # a second attempt only after dropping a .part the server can't continue
        offset = partial.stat().st_size if partial.exists() else 0
        if _fetch_into(opener, url, partial, offset, settings):
            partial.replace(dest)
            return dest
        partial.unlink(missing_ok=True)
    raise DownloadError(f"the server for {url} cannot resume nor restart the download", url=url, problem="http")


def _opener_for(url: str, settings: DownloadSettings) -> urllib.request.OpenerDirector:
    """An opener that answers basic-auth challenges from the URL's own host only."""
    credentials = _credentials_for(url, settings)
    if credentials is None:
        return urllib.request.build_opener()
    parts = urlsplit(url)
    passwords = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    passwords.add_password(None, f"{parts.scheme}://{parts.netloc}/", *credentials)
    return urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(passwords))


def _credentials_for(url: str, settings: DownloadSettings) -> tuple[str, str] | None:
    if settings.user:
        return settings.user, settings.password or ""
    host = urlsplit(url).hostname
    if not host:
        return None
    try:
        entry = netrc.netrc().authenticators(host)
    except FileNotFoundError:
        return None
    except (netrc.NetrcParseError, OSError) as error:
        logger.warning("ignoring ~/.netrc: %s", error)
        return None
    if entry is None:
        return None
    login, _account, password = entry
    return login, password or ""


def _fetch_into(
    opener: urllib.request.OpenerDirector, url: str, partial: Path, offset: int, settings: DownloadSettings
) -> bool:
    """One request, appended to or replacing `partial`; False when the .part must be dropped."""
    request = urllib.request.Request(url, headers={"User-Agent": f"cbir/{__version__}"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = opener.open(request, timeout=settings.timeout)
    except urllib.error.HTTPError as error:
        with error:
            if error.code == 416 and offset:
                # The .part may already be whole (a crash just before the rename).
                _start, total = _parse_content_range(error.headers.get("Content-Range", ""))
                return total == offset
            raise _http_failure(url, error.code, error.reason) from None
    except (urllib.error.URLError, OSError) as error:  # refused, DNS, TLS, timeout
        reason = getattr(error, "reason", None) or error
        raise DownloadError(f"could not reach {url} ({reason}).", url=url, problem="unreachable") from error

    with response:
        status = getattr(response, "status", None) or 200  # file:// answers carry no status
        if response.headers.get_content_type() == "text/html":
            # A login or terms page served in place of the archive.
            raise DownloadError(
                f"the server answered {url} with a web page, not the archive (a login or terms page?).",
                url=url,
                problem="denied",
                status=status,
            )
        if status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range", ""))
            if start != offset:
                logger.warning("%s: server resumed at byte %s instead of %s; starting over", url, start, offset)
                return False
            mode = "ab"
        else:
            if offset:
                logger.info("%s: server does not resume downloads; starting from zero", url)
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        written = _copy_body(response, partial, mode, offset, total, url, settings)

    if total is None:
        logger.warning("%s: the server gave no size, so completeness can't be checked", url)
    elif written > total:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"{url} sent {written} bytes, more than the {total} announced.", url=url, problem="http")
    elif written < total:
        raise DownloadError(
            f"the download of {url} stopped after {written} of {total} bytes; {partial} is kept: run again to resume.",
            url=url,
            problem="incomplete",
        )
    return True


def _copy_body(
    response: http.client.HTTPResponse,
    partial: Path,
    mode: str,
    offset: int,
    total: int | None,
    url: str,
    settings: DownloadSettings,
) -> int:
    """Stream the body into `partial`; returns the file's size when the body ended."""
    written = offset
    with (
        partial.open(mode) as out,
        tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=partial.name.removesuffix(".part"),
            disable=not settings.progress,
        ) as bar,
    ):
        while True:
            try:
                chunk = response.read(_CHUNK_BYTES)
            except (http.client.HTTPException, OSError) as error:  # connection dropped or timed out
                out.flush()
                raise DownloadError(
                    f"the download of {url} stopped after {written} bytes ({error!r}); {partial} is kept: "
                    "run again to resume.",
                    url=url,
                    problem="incomplete",
                ) from error
            if not chunk:
                return written
            out.write(chunk)
            written += len(chunk)
            bar.update(len(chunk))


def _parse_content_range(header: str) -> tuple[int | None, int | None]:
    """(first byte, total size) of 'bytes 100-199/200' or 'bytes */200'; None where unknown."""
    try:
        unit, _, spec = header.strip().partition(" ")
        span, _, total_text = spec.partition("/")
        if unit != "bytes":
            return None, None
        start = None if span == "*" else int(span.split("-")[0])
        total = None if total_text in ("", "*") else int(total_text)
        return start, total
    except ValueError:
        return None, None


def _http_failure(url: str, code: int, reason: str) -> DownloadError:
    if code in (401, 403):
        return DownloadError(f"access denied (HTTP {code}) for {url}.", url=url, problem="denied", status=code)
    if code in (404, 410):
        return DownloadError(f"{url} does not exist (HTTP {code}).", url=url, problem="not_found", status=code)
    return DownloadError(f"the download of {url} failed (HTTP {code} {reason}).", url=url, problem="http", status=code)


# --------------------------------------------------------------------------------------------
# Extracting


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a (gzipped) tar into `dest`, refusing anything that would land outside it.

    Absolute member paths, paths that climb out ("../x") and links pointing outside are refused
    with a DatasetError naming the member; device files and FIFOs are skipped. Python's own "data"
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
            raise DatasetError(f"archive {archive} does not exist") from None
        raise
    except tarfile.FilterError as error:
        member = error.tarinfo.name if error.tarinfo is not None else "?"
        raise DatasetError(f"refusing to extract {archive.name}: member {member!r}: {error}") from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        reason = " ".join(str(error).split())  # tarfile lists one line per compression it tried
        raise DatasetError(
            f"the archive {archive} is corrupt or incomplete ({reason}): delete it and run again to download it anew."
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


def _refusal(archive: Path, member_name: str, why: str) -> DatasetError:
    return DatasetError(f"refusing to extract {archive.name}: member {member_name!r} {why}")


def _is_absolute(name: str) -> bool:
    return name.startswith(("/", "\\")) or bool(PureWindowsPath(name).drive)


def _climbs_out(path: str) -> bool:
    normal = posixpath.normpath(path)
    return normal == ".." or normal.startswith("../")


def _parents(normal: str) -> Iterator[str]:
    parent = posixpath.dirname(normal)
    while parent:
        yield parent
        parent = posixpath.dirname(parent)
