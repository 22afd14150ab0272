"""Photos a visitor gives the page, made into a searchable collection: the limits, the safe
unpacking of a zip, and the private collections of browser sessions.

What a visitor sends is treated like an archive from the internet (cbir.archives): a zip member
that would land outside the target (absolute, "../", a link) refuses the whole zip; the count of
members, the bytes written and each image's pixels are bounded before or while they are written,
so a zip bomb costs nothing (the sizes a zip declares can lie: the bytes are counted as they are
written). Images the network cannot read are not refused here: the build skips and lists them,
as it does for a folder.
"""

from __future__ import annotations

import logging
import lzma
import os
import posixpath
import re
import shutil
import stat
import tempfile
import threading
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

from cbir.backbones import Backbone
from cbir.trunks import ExtractorCache
from cbir.build import BuildOutcome, BuildSettings, build_indexes
from cbir.datasets import folder_collection
from cbir.errors import CbirError
from cbir.images import IMAGE_SUFFIXES
from cbir.index import Manifest
from cbir.search import SearchEngine
from cbir.thumbnails import ThumbnailFolder

logger = logging.getLogger(__name__)

COPY_CHUNK = 1 << 20


class UploadError(CbirError):
    """An upload that is refused: over a limit, an unsafe or unreadable zip, no images."""


@dataclass(frozen=True)
class UploadLimits:
    """What one upload may hold. Each image's pixels are bounded by the build's ImageLimits."""

    max_images: int = 200
    max_bytes: int = 200 * 2**20  # every image together, as written (after unzipping)
    max_zip_members: int = 1_000  # files and folders in one zip, images or not

    def describe(self) -> str:
        return (
            f"up to {self.max_images} images or zips of them, {self.max_bytes // 2**20} MB in all "
            f"(after unzipping), {self.max_zip_members:,} files per zip"
        )


@dataclass
class GatheredUpload:
    """The images of an upload, written under `folder`, and what was left out and why."""

    folder: Path
    images: list[str] = field(default_factory=list)  # relative POSIX paths under `folder`
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (name as sent, why)


def gather_upload(files: Sequence[Path], folder: Path, limits: UploadLimits = UploadLimits()) -> GatheredUpload:
    """Write the images among `files` (images, or zips of images) into `folder`, within `limits`.

    Raises UploadError (and leaves `folder` out of use: the caller removes it) for anything
    refused as a whole: an unsafe or corrupt zip, too many members, images or bytes, or no image.
    """
    gathered = GatheredUpload(Path(folder))
    gathered.folder.mkdir(parents=True, exist_ok=True)
    budget = _Budget(limits)
    for file in files:
        file = Path(file)
        if file.suffix.lower() == ".zip":
            _unzip(file, gathered, budget, limits)
        elif file.suffix.lower() in IMAGE_SUFFIXES:
            with open(file, "rb") as source:
                _write(source, file.name, file.name, gathered, budget)
        else:
            gathered.ignored.append((file.name, "not an image or a zip"))
    if not gathered.images:
        raise UploadError(
            f"no images in what was sent ({', '.join(sorted(IMAGE_SUFFIXES))}, or a .zip of them)"
            + (f"; left out: {', '.join(name for name, _ in gathered.ignored[:5])}" if gathered.ignored else "")
        )
    return gathered


class _Budget:
    """Images and bytes written so far, against the limits."""

    def __init__(self, limits: UploadLimits) -> None:
        self.limits = limits
        self.images = 0
        self.bytes = 0

    def take_image(self, name: str) -> None:
        self.images += 1
        if self.images > self.limits.max_images:
            raise UploadError(f"too many images: at most {self.limits.max_images} per upload ({name} is one more)")

    def take_bytes(self, count: int, name: str) -> None:
        self.bytes += count
        if self.bytes > self.limits.max_bytes:
            raise UploadError(
                f"too large: at most {self.limits.max_bytes // 2**20} MB of images per upload, after unzipping "
                f"(reached at {name})"
            )


def _unzip(archive: Path, gathered: GatheredUpload, budget: _Budget, limits: UploadLimits) -> None:
    try:
        with zipfile.ZipFile(archive) as opened:
            members = opened.infolist()
            if len(members) > limits.max_zip_members:
                raise UploadError(
                    f"{archive.name} holds {len(members):,} files: at most {limits.max_zip_members:,} per zip"
                )
            declared = sum(member.file_size for member in members if _is_image_name(member.filename))
            if declared > limits.max_bytes:  # said up front; what is written is counted again below
                raise UploadError(
                    f"{archive.name} unzips to {declared / 2**20:.0f} MB of images: at most "
                    f"{limits.max_bytes // 2**20} MB per upload"
                )
            for member in members:  # every name is checked before anything is written
                _check_member(archive, member)
            for member in members:
                if member.is_dir():
                    continue
                if not _is_image_name(member.filename) or _hidden(member.filename):
                    gathered.ignored.append((f"{archive.name}:{member.filename}", "not an image"))
                    continue
                if member.flag_bits & 0x1:
                    raise UploadError(f"{archive.name}: {member.filename} is encrypted; send it unencrypted")
                with opened.open(member) as source:
                    _write(source, member.filename, f"{archive.name}:{member.filename}", gathered, budget)
    except zipfile.BadZipFile as error:
        raise UploadError(f"{archive.name} is not a zip this app can read ({error})") from None
    except UnicodeDecodeError:
        # A member name that is not UTF-8 though the zip's flag says it is.
        raise UploadError(f"{archive.name} names a file in a way that cannot be read (not UTF-8): zip it again") from None
    except (zipfile.LargeZipFile, NotImplementedError, EOFError, OSError, zlib.error, lzma.LZMAError) as error:
        if isinstance(error, UploadError):
            raise
        raise UploadError(f"{archive.name} cannot be unzipped ({type(error).__name__}: {error})") from None


def _check_member(archive: Path, member: zipfile.ZipInfo) -> None:
    name = member.filename.replace("\\", "/")
    if name.startswith("/") or PureWindowsPath(member.filename).drive:
        raise UploadError(f"refusing {archive.name}: member {member.filename!r} has an absolute path")
    normal = posixpath.normpath(name)
    if normal == ".." or normal.startswith("../"):
        raise UploadError(f"refusing {archive.name}: member {member.filename!r} would be written outside its folder")
    if stat.S_ISLNK(member.external_attr >> 16):
        raise UploadError(f"refusing {archive.name}: member {member.filename!r} is a link")


def _is_image_name(name: str) -> bool:
    return posixpath.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _hidden(name: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in name.replace("\\", "/").split("/"))


def _write(source, name: str, label: str, gathered: GatheredUpload, budget: _Budget) -> None:
    """Copy one image into the upload's folder under a safe, unique name, counting its bytes."""
    budget.take_image(label)
    relative = _unique(gathered.folder, _safe_name(name))
    target = gathered.folder / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        while chunk := source.read(COPY_CHUNK):
            budget.take_bytes(len(chunk), label)
            out.write(chunk)
    gathered.images.append(relative)


def _safe_name(name: str) -> str:
    """A relative POSIX path of plain parts: no '..', no leading dots, no odd characters."""
    parts = [part for part in posixpath.normpath(name.replace("\\", "/")).split("/") if part not in ("", ".", "..")]
    parts = [re.sub(r"[^\w.\- ]", "_", part).lstrip(".") or "_" for part in parts]
    safe = "/".join(parts[-3:])
    return safe or "image"  # pragma: no mutate (never used: a name that reaches here ends in an image suffix)


def _unique(folder: Path, relative: str) -> str:
    stem, suffix = posixpath.splitext(relative)
    candidate, number = relative, 1
    while (folder / candidate).exists():
        number += 1
        candidate = f"{stem}_{number}{suffix}"
    return candidate


ProgressCallback = Callable[[int, int], None]  # (images described, images in all)


def add_collection(
    files: Sequence[Path],
    name: str,
    backbone: Backbone,
    *,
    images_root: Path,
    index_dir: Path,
    thumbnails_root: Path,
    settings: BuildSettings,
    extractors: ExtractorCache,
    limits: UploadLimits = UploadLimits(),
    on_progress: ProgressCallback | None = None,
) -> tuple[str, list[BuildOutcome], list[tuple[str, str]]]:
    """Gather `files` into `images_root`/NAME, build NAME's index under `index_dir` with `backbone`
    (the weights and limits of `settings`) and its thumbnails under `thumbnails_root`/NAME: (NAME,
    the build's outcomes, what was left out and why). A collection of that name sent before is
    replaced."""
    name = collection_name(name)
    images = Path(images_root) / name
    # Unpacked beside the collection it replaces, which stays whole until the upload is accepted.
    incoming = Path(images_root) / f".incoming-{name}"
    shutil.rmtree(incoming, ignore_errors=True)
    try:
        gathered = gather_upload(files, incoming, limits)
    except BaseException:  # refused, or a bug: nothing of this upload stays, the old collection does
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    # Accepted: the collection of that name goes whole (every backbone's index, the thumbnails), so
    # no index of the old photos is left to rank the new ones.
    for old in (images, Path(index_dir) / name, Path(thumbnails_root) / name):
        shutil.rmtree(old, ignore_errors=True)
    incoming.rename(images)
    build = BuildSettings(
        index_dir=Path(index_dir),
        recipe=settings.recipe,
        store="exact",  # a few hundred images: a scan is the fastest search
        progress=False,
        limits=settings.limits,
        force=True,  # pragma: no mutate (new images; their index folder was just removed: new, forced or not)
        thumbnails=False,  # made below, away from the index folder (the page serves that folder alone)
    )
    report = (lambda _key, done, total: on_progress(done, total)) if on_progress else None
    outcomes = build_indexes(folder_collection(images, name), [backbone], build, extractors=extractors, on_progress=report)
    thumbnails = ThumbnailFolder(Path(thumbnails_root) / name, name, images)
    thumbnails.make_all(Manifest.read(outcomes[0].folder).images if outcomes else [])
    return name, outcomes, gathered.ignored


@dataclass
class PrivateCollection:
    name: str
    engine: SearchEngine  # over this session's own index folder
    outcomes: list[BuildOutcome]
    ignored: list[tuple[str, str]]


class PrivateCollections:
    """Each browser session's own collections, in a folder of its own under `root`, searched by an
    engine of its own that shares the networks (`extractors`). A session's folder is removed when
    the session ends (`drop`), and the oldest sessions' when more than `max_sessions` hold one.

    `keep=True` (a local, single-user run): every session shares one set of collections, kept
    under `root` across sessions and restarts."""

    SHARED = "kept"

    def __init__(
        self,
        root: Path | None,
        settings: BuildSettings,
        extractors: ExtractorCache,
        *,
        limits: UploadLimits = UploadLimits(),
        max_sessions: int = 20,
        max_collections: int = 5,
        keep: bool = False,
    ) -> None:
        if keep and root is None:
            raise ValueError("kept collections need a folder")
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="cbir-uploads-"))
        self.settings = settings
        self.extractors = extractors
        self.limits = limits
        self.max_sessions = max_sessions
        self.max_collections = max_collections  # per session (a name sent again replaces its collection)
        self._closed: OrderedDict[str, None] = OrderedDict()  # sessions ended (bounded), see add
        self.keep = keep
        self._sessions: OrderedDict[str, dict[str, PrivateCollection]] = OrderedDict()
        self._lock = threading.Lock()
        if keep:
            self._sessions[self.SHARED] = self._kept_before()

    def _kept_before(self) -> dict[str, PrivateCollection]:
        """The collections a kept folder holds from earlier runs."""
        engine = SearchEngine(self.folder(self.SHARED) / "indexes", extractors=self.extractors)
        return {info.collection: PrivateCollection(info.collection, engine, [], []) for info in engine.available()}

    def folder(self, session: str) -> Path:
        if self.keep:
            session = self.SHARED
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", session):
            raise ValueError(f"not a session id: {session!r}")
        return self.root / session

    def _session(self, session: str | None) -> str:
        return self.SHARED if self.keep else (session or "")

    def add(
        self,
        session: str,
        files: Sequence[Path],
        name: str,
        backbone: Backbone,
        on_progress: ProgressCallback | None = None,
    ) -> PrivateCollection:
        """Gather `files`, describe them with `backbone`, and keep the collection for `session`."""
        folder = self.folder(session)
        session = self._session(session)
        with self._lock:
            held = self._sessions.get(session, {})
        if collection_name(name) not in held and len(held) >= self.max_collections and not self.keep:
            raise UploadError(f"at most {self.max_collections} collections at once: send one again under a name you "
                              f"already used ({', '.join(sorted(held))}) to replace it")  # fmt: skip
        images = folder / "images" / collection_name(name)
        before = _folder_identity(images)
        try:
            name, outcomes, ignored = add_collection(
                files, name, backbone, images_root=folder / "images", index_dir=folder / "indexes",
                thumbnails_root=folder / "thumbnails",
                settings=self.settings, extractors=self.extractors, limits=self.limits, on_progress=on_progress,
            )  # fmt: skip
        except Exception:
            # Refused, or failed: if the collection of that name was replaced before the failure (its
            # images folder is another one, or none), it is gone, not left to mislead; if not (the
            # upload was refused), it is as it was.
            if _folder_identity(images) != before:
                with self._lock:
                    self._sessions.get(session, {}).pop(collection_name(name), None)
            raise
        collection = PrivateCollection(name, SearchEngine(folder / "indexes", extractors=self.extractors), outcomes,
                                       ignored)  # fmt: skip
        with self._lock:
            if session in self._closed:  # the page was closed while its photos were described
                shutil.rmtree(folder, ignore_errors=True)
                raise UploadError("the page was closed before its photos were described")
            self._sessions.setdefault(session, {})[name] = collection
            self._sessions.move_to_end(session)
            while len(self._sessions) > self.max_sessions:
                oldest, _ = self._sessions.popitem(last=False)
                logger.info("removing the uploaded collections of an old session")
                shutil.rmtree(self.folder(oldest), ignore_errors=True)
        return collection

    def get(self, session: str | None, name: str | None) -> PrivateCollection | None:
        if not name:
            return None
        with self._lock:
            return self._sessions.get(self._session(session), {}).get(name)

    def thumbnails_dir(self, session: str, name: str) -> Path:
        """Where a session's collection keeps its thumbnails: beside its images, away from any index."""
        return self.folder(session) / "thumbnails" / name

    def names(self, session: str | None) -> list[str]:
        with self._lock:
            return sorted(self._sessions.get(self._session(session), {}))

    def drop(self, session: str | None) -> None:
        """The session ended: forget its collections and delete their files (kept ones stay)."""
        if not session or self.keep:
            return
        with self._lock:
            known = self._sessions.pop(session, None)
            self._closed[session] = None  # pragma: no mutate (only whether a session is in it is read)
            while len(self._closed) > 10_000:
                self._closed.popitem(last=False)
        if known is not None or self.folder(session).exists():
            shutil.rmtree(self.folder(session), ignore_errors=True)

    def close(self) -> None:
        """The server stops: every session's files go (kept ones stay)."""
        if self.keep:
            return
        with self._lock:
            self._sessions.clear()
        shutil.rmtree(self.root, ignore_errors=True)


def _folder_identity(folder: Path) -> tuple[int, int] | None:
    """Which folder is at `folder` (device and inode), or None: a folder renamed into its place is another."""
    try:
        found = folder.stat()
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


# A server's own temporary folders are named after its process id, so that a later start can tell
# the leftovers of a run that ended without cleaning up (a crash, SIGKILL) from a running server's.
RUN_FOLDER_PREFIX = "cbir-run-"


def run_folder(base: Path) -> Path:
    """This process's own folder under `base`, made empty (a leftover of an earlier run that had
    the same process id goes first)."""
    folder = Path(base) / f"{RUN_FOLDER_PREFIX}{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def sweep_leftover_runs(base: Path) -> list[Path]:
    """Remove the run folders under `base` whose process is no longer running: what visitors sent
    to a server that crashed or was killed. Returns the folders removed. (A folder whose process id
    was since taken by another process stays until that one ends.)"""
    removed = []
    for folder in sorted(Path(base).glob(f"{RUN_FOLDER_PREFIX}*")):
        pid = folder.name.removeprefix(RUN_FOLDER_PREFIX)
        if not pid.isdigit() or folder.is_symlink() or not folder.is_dir():
            continue
        if int(pid) != os.getpid() and _running(int(pid)):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed.append(folder)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def collection_name(text: str) -> str:
    """A collection name from what a visitor typed: letters, digits, '-', '_' (as folder names)."""
    name = re.sub(r"[^\w-]+", "-", text.strip()).strip("-_")[:40]
    if not name:
        raise UploadError("give the collection a name (letters, digits, '-' or '_')")
    return name


@dataclass(frozen=True)
class ServedCollection:
    """A collection as one browser session reaches it: the engine that searches it, its name under
    that engine, and the folder its thumbnails are made in."""

    engine: SearchEngine
    name: str | None
    thumbnails: Path | None  # None without a collection


def served_collection(
    shared: SearchEngine,
    uploads: PrivateCollections | None,
    session: str | None,
    name: str | None,
    *,
    uploaded: bool = False,
) -> ServedCollection:
    """Which engine serves a request: the `shared` one for a built collection, or (`uploaded`) the
    session's own engine for a collection it added. A session never reaches another's collection."""
    if not uploaded:
        thumbnails = shared.layout.thumbnails_dir(name) if name else None
        return ServedCollection(shared, name, thumbnails)
    private = uploads.get(session, name) if uploads is not None else None
    if private is None:
        raise UploadError("that uploaded collection is gone (its browser session ended): add the photos again "
                          "in 'Your photos'.")  # fmt: skip
    return ServedCollection(private.engine, private.name, uploads.thumbnails_dir(session, private.name))
