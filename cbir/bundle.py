"""Bundles: a built collection packed into one archive that a laptop or a Space starts from.

    <name>.tar
        bundle.json                         written first: what is inside, with sizes and sha256s,
                                            where the images came from and their terms
        indexes/<collection>/collection.json
        indexes/<collection>/<recipe>/...   the index folders (descriptors, store files, manifest)
        indexes/<collection>/evaluation/... the evaluation results, if any
        indexes/<collection>/thumbnails/... a JPEG thumbnail of every indexed image

No original image travels: the page serves the thumbnails, and a query still runs the real network
(its weights come from Keras' cache as usual). Opening a bundle downloads it (resuming), extracts it
safely into a staging folder (nothing outside it, no links, size limits), checks every member
against `bundle.json` (and that nothing else is there), and only then renames it into the cache; a
second start finds it there, verified, and opens at once.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from cbir import atomic
from cbir.archives import ArchiveError, safe_extract
from cbir.digests import sha256_file
from cbir.download import HttpSettings, download
from cbir.errors import CbirError
from cbir.index import Manifest
from cbir.layout import RESULTS_DIR, IndexLayout, read_collection_record
from cbir.thumbnails import DEFAULT_MAX_SIDE, ThumbnailFolder, thumbnail_name

logger = logging.getLogger(__name__)

BUNDLE_SCHEMA_VERSION = 1
BUNDLE_MANIFEST = "bundle.json"
INDEXES = "indexes"
VERIFIED_MARKER = ".verified.json"
# What one bundle may unpack to: several times an Oxford5k bundle with all six backbones
# (docs/performance.md, "Bundles", gives the size of one).
MAX_BUNDLE_BYTES = 8 << 30
MAX_MEMBERS = 200_000

OXFORD_PARIS_TERMS = (
    "The Oxford Buildings and Paris Buildings images come from Flickr and are distributed by the "
    "Visual Geometry Group, University of Oxford, under their terms of access (granted on request, for "
    "research). The thumbnails in this bundle are derived from them: publish the bundle only where those "
    "terms allow it."
)


class BundleError(CbirError):
    """A bundle that cannot be made or used as it is; the message says why and what to do."""


@dataclass
class Member:
    size: int
    sha256: str


@dataclass
class BundleManifest:
    collection: str
    recipes: list[str]
    n_images: int
    thumbnail_max_side: int
    source: str  # where the images came from
    terms: str  # their terms of use
    members: dict[str, Member] = field(default_factory=dict)  # path inside the archive -> size, sha256
    created: str = ""
    schema_version: int = BUNDLE_SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> BundleManifest:
        data = json.loads(text)
        if data.get("schema_version") != BUNDLE_SCHEMA_VERSION:
            raise BundleError(
                f"bundle schema version {data.get('schema_version')} is not one this code reads "
                f"({BUNDLE_SCHEMA_VERSION}): update the app, or export the bundle again"
            )
        data["members"] = {path: Member(**member) for path, member in data["members"].items()}
        return cls(**data)


# --------------------------------------------------------------------------------------------
# Export


def export_bundle(
    index_dir: Path,
    collection: str,
    dest: Path,
    *,
    recipes: Sequence[str] | None = None,
    max_side: int = DEFAULT_MAX_SIDE,
    source: str = "",
    terms: str = "",
    progress: bool = True,
) -> BundleManifest:
    """Write `dest` (a .tar): the collection's index folders, results, and thumbnails of every image."""
    layout = IndexLayout(index_dir)
    record = read_collection_record(layout, collection)
    folders = sorted(
        path.parent for path in layout.collection_dir(collection).glob("*/manifest.json")
        if not atomic.is_temporary(path.parent) and (recipes is None or path.parent.name in recipes)
    )  # fmt: skip
    if not folders:
        raise BundleError(f"nothing is built for {collection} under {index_dir}: build it first")
    manifests = [Manifest.read(folder) for folder in folders]
    images = sorted({image for manifest in manifests for image in manifest.images})
    if not record.images_found:
        raise BundleError(record.missing_images_message())
    thumbnails = ThumbnailFolder(layout.thumbnails_dir(collection), collection, record.root, max_side)
    bar = _bar(len(images), "thumbnails", progress)
    missing = []
    for image in images:
        if thumbnails.path_for(image) is None:
            missing.append(image)
        bar.update(1)
    bar.close()
    if missing:
        raise BundleError(f"{len(missing)} images of {collection} cannot be read (first: {missing[0]}); rebuild first")

    # Everything the bundle holds, as (path inside the archive, file on disk).
    files: list[tuple[str, Path]] = []
    root = layout.collection_dir(collection)
    prefix = f"{INDEXES}/{collection}"
    for folder in folders:
        files += [(f"{prefix}/{folder.name}/{p.name}", p) for p in sorted(folder.iterdir()) if p.is_file()]
    results = root / RESULTS_DIR
    if results.is_dir():
        files += [(f"{prefix}/{RESULTS_DIR}/{p.name}", p) for p in sorted(results.iterdir()) if p.is_file()]
    for image in images:
        name = thumbnail_name(collection, image, max_side)
        files.append((f"{prefix}/thumbnails/{name}", thumbnails.folder / name))
    record_text = _bundle_record(collection, record, max_side, images)
    try:
        Path(dest).parent.mkdir(parents=True, exist_ok=True)  # `--export-bundle out/new-folder/x.tar`
    except OSError as error:
        raise BundleError(f"cannot write the bundle to {dest}: {error.strerror or error}") from None
    record_file = Path(dest).with_name(Path(dest).name + ".collection.json")
    record_file.write_text(record_text)
    files.append((f"{prefix}/collection.json", record_file))

    manifest = BundleManifest(
        collection=collection,
        recipes=[folder.name for folder in folders],
        n_images=len(images),
        thumbnail_max_side=max_side,
        source=source or collection,
        terms=terms,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    bar = _bar(len(files), "checksums", progress)
    for arcname, path in files:
        manifest.members[arcname] = Member(path.stat().st_size, sha256_file(path))
        bar.update(1)
    bar.close()

    def write(temporary: Path) -> None:
        with tarfile.open(temporary, "w", format=tarfile.PAX_FORMAT) as tar:
            data = manifest.to_json().encode()
            info = tarfile.TarInfo(BUNDLE_MANIFEST)
            info.size, info.mtime = len(data), int(time.time())
            tar.addfile(info, fileobj=io.BytesIO(data))
            for arcname, path in files:
                tar.add(path, arcname=arcname, recursive=False)

    try:
        atomic.write_file(Path(dest), write)
    finally:
        record_file.unlink(missing_ok=True)  # pragma: no mutate (the scratch record always exists here: it is written above)
    return manifest


def _bundle_record(collection: str, record, max_side: int, images: Sequence[str]) -> str:
    """The collection record as a bundle carries it: no images folder, the queries kept, and the
    size of each query image (its box is in those pixels; the page crops the thumbnail instead)."""
    from cbir.datasets.model import ids_to_paths
    from cbir.images import check_header

    paths, _ = ids_to_paths(images)
    sizes = {}
    for query in record.queries:
        if query.image in paths:
            sizes[query.image] = list(check_header(record.root / paths[query.image]))
    return json.dumps(
        {
            "schema_version": 2,
            "name": collection,
            "thumbnails_only": True,
            "thumbnail_max_side": max_side,
            "n_images": record.n_images,
            "image_sizes": sizes,
            "queries": [query.to_json() for query in record.queries],
        },
        indent=1,  # pragma: no mutate (the layout of the JSON only: readers parse it)
    )


def _bar(total: int, label: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=label, unit="file", disable=not enabled)


# --------------------------------------------------------------------------------------------
# Open


def open_bundle(location: str, cache_dir: Path, http: HttpSettings | None = None) -> Path:
    """The index root of a bundle (a local .tar or an http(s) URL), downloaded, checked and
    extracted into `cache_dir` on first use; reused as it is when already there and verified."""
    http = http or HttpSettings()
    cache_dir = Path(cache_dir)
    if "://" in location and not location.startswith("file://"):
        name = PurePosixPath(urlsplit(location).path).name or "bundle.tar"
        # One folder per URL: two bundles of the same file name from two places are two downloads.
        archive = cache_dir / "downloads" / hashlib.sha256(location.encode()).hexdigest()[:16] / name
        if not archive.is_file():
            logger.info("downloading the bundle %s", location)  # pragma: no mutate (a log line)
            download(location, archive, http)
    else:
        archive = Path(location.removeprefix("file://")).expanduser()
        if not archive.is_file():
            raise BundleError(f"no bundle at {archive}: give the path of a .tar made by --export-bundle, or its URL")
    target = cache_dir / "bundles" / archive.name.removesuffix(".tar")
    # What was checked: this file, as it was (a bundle replaced under the same name, even at the same
    # size and time, has another bundle.json, which lists every member's sha256).
    stamp = {"archive": str(archive.resolve()), "size": archive.stat().st_size, "mtime_ns": archive.stat().st_mtime_ns,
             "bundle_json_sha256": hashlib.sha256(_manifest_bytes(archive)).hexdigest()}  # fmt: skip
    marker = target / VERIFIED_MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == stamp:
                logger.info("using the bundle already checked and extracted in %s", target)
                return target / INDEXES
        except ValueError:
            pass
    _extract_checked(archive, target, stamp)
    return target / INDEXES


def _extract_checked(archive: Path, target: Path, stamp: dict) -> None:
    manifest = read_bundle_manifest(archive)
    total = sum(member.size for member in manifest.members.values())
    if total > MAX_BUNDLE_BYTES or len(manifest.members) > MAX_MEMBERS:
        raise BundleError(f"{archive.name} would unpack to {total:,} bytes in {len(manifest.members)} files: over the limits")
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing_folder(target) as staging:
        logger.info("extracting and checking %s (%d files, %.0f MB)", archive.name, len(manifest.members), total / 2**20)  # pragma: no mutate (a log line)
        try:
            safe_extract(archive, staging)
        except ArchiveError as error:
            raise BundleError(f"the bundle {archive} is refused: {error}") from None
        found = {
            path.relative_to(staging).as_posix() for path in staging.rglob("*") if path.is_file() or path.is_symlink()
        }
        extra = sorted(found - set(manifest.members) - {BUNDLE_MANIFEST})
        missing = sorted(set(manifest.members) - found)
        if extra or missing:
            raise BundleError(f"the bundle {archive} does not hold what it lists (extra: {extra[:3]}, missing: {missing[:3]})")
        for arcname, member in manifest.members.items():
            path = staging / arcname
            if path.stat().st_size != member.size or sha256_file(path) != member.sha256:
                raise BundleError(
                    f"{arcname} in the bundle {archive} is not what the bundle says (size or sha256 differ): "
                    "the download is damaged or the bundle was changed. Delete it and download it again."
                )
        (staging / VERIFIED_MARKER).write_text(json.dumps(stamp))


def read_bundle_manifest(archive: Path) -> BundleManifest:
    """`bundle.json`, which must be the archive's first member."""
    try:
        return BundleManifest.from_json(_manifest_bytes(archive).decode())
    except (ValueError, KeyError, TypeError) as error:
        raise BundleError(f"{archive} is not a readable bundle ({error}): download it again") from None


def _manifest_bytes(archive: Path) -> bytes:
    """The bytes of `bundle.json`, the archive's first member."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            first = tar.next()
            if first is None or first.name != BUNDLE_MANIFEST or not first.isfile() or first.size > 64 << 20:
                raise BundleError(f"{archive} is not a bundle: it does not start with {BUNDLE_MANIFEST}")
            return tar.extractfile(first).read()
    except (tarfile.TarError, OSError, EOFError) as error:
        raise BundleError(f"{archive} is not a readable bundle ({error}): download it again") from None
