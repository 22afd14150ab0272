"""Getting a known dataset ready: download (or use what is on disk), extract safely, read.

The dataset archives sit behind the owners' terms-of-access form, so every way of getting them is
supported: already extracted by hand, archives placed by hand, a mirror (`CBIR_MIRROR`), or the
official URLs with credentials.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cbir import atomic
from cbir.archives import ArchiveError, safe_extract
from cbir.datasets.folders import load_collection_dir
from cbir.datasets.model import Collection, DatasetError
from cbir.datasets.registry import ArchiveKind, ArchiveSpec, DatasetSpec, get_dataset
from cbir.download import DownloadError, DownloadProblem, HttpSettings, download, forget, matches_record

logger = logging.getLogger(__name__)

IMAGES_DIR = "images"
GROUND_TRUTH_DIR = "gt"
ARCHIVES_DIR = "archives"
COMPLETE_MARKER = ".complete"
_STAGING_PREFIX = ".extracting-"

@dataclass(frozen=True)
class DownloadSettings:
    data_dir: Path = Path("data")
    mirror: str | None = None  # fetch every archive as f"{mirror}/{file_name}" instead of its own URL
    # fetch ground-truth files (revisitop's gnd_*.pkl) as f"{ground_truth_url}/{file_name}" (--mirror wins)
    ground_truth_url: str | None = None
    user: str | None = None
    password: str | None = None  # with no user/password, ~/.netrc is looked up for the URL's host
    progress: bool = True  # tqdm bars on stderr
    timeout: float = 60.0  # seconds without an answer before a connection counts as lost

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))

    @property
    def http(self) -> HttpSettings:
        return HttpSettings(user=self.user, password=self.password, progress=self.progress, timeout=self.timeout)

    @classmethod
    def from_env(cls, **overrides: object) -> DownloadSettings:
        """Settings from CBIR_DATA_DIR, CBIR_MIRROR, CBIR_GROUND_TRUTH_URL, CBIR_DATA_USER, CBIR_DATA_PASSWORD.

        Overrides whose value is None are ignored, so a CLI can pass its unset options straight in.
        """
        from_environment: dict[str, object] = {}
        for variable, setting in (
            ("CBIR_DATA_DIR", "data_dir"),
            ("CBIR_MIRROR", "mirror"),
            ("CBIR_GROUND_TRUTH_URL", "ground_truth_url"),
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


def prepare_dataset(name: str, settings: DownloadSettings) -> Collection:
    """The collection of a known dataset, downloading and extracting only what is missing.

    Under `dataset_dir(name)`: `archives/` (downloads), `images/`, `gt/` and a marker written last.
    Images or ground truth already extracted (marker present, or put there by hand with no archive
    of that kind beside them) are used as they are, without touching the network.
    """
    spec = get_dataset(name)
    if spec.images_from is not None:
        return _prepare_reusing_images(spec, settings)
    root = dataset_dir(name, settings)
    root.mkdir(parents=True, exist_ok=True)
    for leftover in root.glob(_STAGING_PREFIX + "*"):
        logger.info("removing %s left by an interrupted extraction", leftover)
        shutil.rmtree(leftover, ignore_errors=True)

    marker = root / COMPLETE_MARKER
    parts = {ArchiveKind.IMAGES: root / IMAGES_DIR, ArchiveKind.GROUND_TRUTH: root / GROUND_TRUTH_DIR}
    if marker.is_file() and all(folder.is_dir() for folder in parts.values()):
        logger.info("%s: using %s", spec.title, root)
        return _load_prepared(spec, root)

    to_extract: dict[ArchiveKind, list[ArchiveSpec]] = {}
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


def _prepare_reusing_images(spec: DatasetSpec, settings: DownloadSettings) -> Collection:
    """A dataset over another one's images (ROxford5k over Oxford5k): only its ground-truth file is
    fetched (or used as placed in its folder), the images are those of `spec.images_from`."""
    root = dataset_dir(spec.name, settings)
    root.mkdir(parents=True, exist_ok=True)
    (ground_truth,) = _fetch_missing_archives(spec, list(spec.archives), root, settings).values()
    images = prepare_dataset(spec.images_from, settings)
    return load_collection_dir(spec.name, images.root, ground_truth, spec.query_prefix, spec.ground_truth_format)


def _load_prepared(spec: DatasetSpec, root: Path) -> Collection:
    return load_collection_dir(
        spec.name, root / IMAGES_DIR, root / GROUND_TRUTH_DIR, spec.query_prefix, spec.ground_truth_format
    )


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(path.is_file() for path in folder.rglob("*"))


def _local_archive(root: Path, archive: ArchiveSpec) -> Path | None:
    """An archive the user placed in the dataset folder, or one downloaded earlier and unchanged
    since (its size and sha256 are checked against the record the download wrote)."""
    placed, downloaded = root / archive.file_name, root / ARCHIVES_DIR / archive.file_name
    if placed.is_file():
        return placed
    if downloaded.is_file():
        if matches_record(downloaded) is False:
            logger.warning("%s is not what was downloaded (size or sha256 differ): downloading it again", downloaded)
            forget(downloaded)
            return None
        return downloaded
    return None


def _archive_url(archive: ArchiveSpec, settings: DownloadSettings) -> str:
    mirror = settings.mirror or (settings.ground_truth_url if archive.kind is ArchiveKind.GROUND_TRUTH_FILE else None)
    if not mirror:
        return archive.url
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
        key=lambda archive: archive.kind is not ArchiveKind.GROUND_TRUTH,
    )
    for archive in missing:
        url = _archive_url(archive, settings)
        logger.info("%s: downloading %s from %s", spec.title, archive.file_name, url)
        try:
            paths[archive.file_name] = download(url, root / ARCHIVES_DIR / archive.file_name, settings.http)
        except DownloadError as error:
            still_missing = [a.file_name for a in missing if a.file_name not in paths]
            raise DatasetError(_download_advice(spec, error, still_missing, root)) from error
    return paths


def _download_advice(spec: DatasetSpec, error: DownloadError, file_names: list[str], root: Path) -> str:
    """The download error, with what the user can do about it for this dataset."""
    files = ", ".join(file_names)
    place_by_hand = f"download {files} yourself and place them in {root}"
    if error.problem is DownloadProblem.DENIED:
        return (
            f"{error} The archives are behind the dataset owners' terms-of-access form: request access at "
            f"{spec.access_page}, then either set CBIR_DATA_USER / CBIR_DATA_PASSWORD (or ~/.netrc), or "
            f"{place_by_hand}."
        )
    if error.problem is DownloadProblem.NOT_FOUND:
        return (
            f"the download link is dead (HTTP {error.status}) for {error.url}. Get {files} from "
            f"{spec.access_page} or another copy and place them in {root}, or point --mirror / "
            "CBIR_MIRROR at a server that has them."
        )
    if error.problem is DownloadProblem.INCOMPLETE:
        return str(error)
    return f"{error} To work offline, {place_by_hand} (or set --mirror / CBIR_MIRROR)."


def _extract_part(root: Path, final_folder: Path, archives: list[Path]) -> None:
    """Extract archives into a temporary folder and rename it, so a crash never leaves a half tree."""
    staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=root))
    try:
        for archive in archives:
            logger.info("extracting %s into %s", archive.name, final_folder)
            try:
                safe_extract(archive, staging)
            except ArchiveError as error:
                if archive.parent == root / ARCHIVES_DIR:  # downloaded here: never keep a refused one
                    forget(archive)
                    raise ArchiveError(f"{error} It was deleted; run the same command to download it anew.") from None
                raise ArchiveError(f"{error} It was placed by hand in {root}: replace or delete it.") from None
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
    atomic.write_text(marker, json.dumps(record, indent=1))
