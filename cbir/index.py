"""Index folders: what a build leaves on disk per collection and recipe, and loading it safely.

    <index root>/<collection>/<recipe key>/      (paths: cbir.layout)
        descriptors.npy   float32 descriptors, one row per image, as the recipe made them
        <store files>     those of the manifest's store (Annoy: cosine.ann, euclidean.ann)
        whitening.npz     for a whitened recipe: the transform, applied to the rows and to each query
        local_features.npz  built with --local-features: RootSIFT keypoints per row (cbir.local_features)
        manifest.json     the recipe, the image list, the store and its parameters, versions,
                          timings, and the size of every file above
        diffusion_graph.npz   written at the first diffusion re-ranking (cbir/diffusion.py), keyed by
                          the sha256 of descriptors.npy; optional, not in the manifest

A folder is written under a temporary name and renamed when complete, so a build that dies never
leaves something that loads. Loading checks the manifest against what the caller expects and every
file against the size the manifest recorded: a damaged folder is reported, never searched.

A file that changes under a running server (a disk error, a sync tool, a second build writing in
place) must cost that index, never the process: reading a page of a memory-mapped file that was
cut short kills the process (SIGBUS), with every collection and visitor. So descriptors up to
IN_MEMORY_BYTES are read into memory (no mapping left to fault), and before each search the files
of the folder are compared with what was loaded (size, modification time, inode: one stat each);
a changed folder is refused with the rebuild command, and the search engine loads it afresh (a
folder replaced whole by a rebuild is simply the new index). What remains is a file cut short
during the milliseconds of one search of a mapped file (descriptors above IN_MEMORY_BYTES, Annoy's
forests): docs/security.md.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cbir import atomic
from cbir.distances import Metric, Neighbours
from cbir.errors import SettingsError
from cbir.layout import DESCRIPTORS, MANIFEST, IndexLoadError, build_command, recorded_images
from cbir.local_features import (
    LOCAL_FEATURES_FILE,
    FeaturesFile,
    ImageFeatures,
    LocalFeatureSettings,
    LocalFeaturesError,
    read_features,
    write_features,
)
from cbir.pooling import Pooling
from cbir.recipe import Recipe
from cbir.stores import DEFAULT_STORE, Store, get_store_kind
from cbir.stores.exact import ExactStore
from cbir.whitening import WHITENING_FILE, Whitening, WhiteningSource

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2
# Descriptor files up to this size are read into memory rather than memory-mapped (module docstring).
IN_MEMORY_BYTES = 256 * 2**20
READABLE_SCHEMAS = (1, 2)  # 1: written before recipes (backbone + Annoy only), read by conversion


@dataclass(frozen=True)
class Skipped:
    """An image the build could not use, and why."""

    image: str
    reason: str


@dataclass(frozen=True)
class StoreSpec:
    kind: str = DEFAULT_STORE
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    """Everything needed to trust, load and rebuild an index folder."""

    collection: str
    recipe: Recipe
    images: list[str]  # paths relative to the collection's images folder, in row order
    # Width of the stored rows: the recipe's unless set (stores are tested and benchmarked on
    # synthetic descriptors of other widths; the search engine refuses such a folder).
    dim: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    store: StoreSpec = field(default_factory=StoreSpec)
    versions: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)  # file name -> size in bytes
    created: str = ""
    schema_version: int = SCHEMA_VERSION
    whitening: WhiteningSource | None = None  # what the recipe's whitening was learned on
    # A folder computed from another index's rows (whitened, augmented): that index's key and the
    # sha256 of its descriptors.npy, so a rebuilt source is noticed.
    derived_from: dict[str, str] | None = None
    # How the rows' local features were made, when the folder has them (written only then, so
    # folders without them keep the manifest they always had).
    local_features: LocalFeatureSettings | None = None
    # (size, modification time in ns) of each image of the collection (rows and skipped) as the
    # build found it, so that a later build sees an image changed under the same name (cbir.build);
    # empty in folders written before it and in derived ones (they follow their source's rows).
    image_stamps: dict[str, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dim = self.dim or self.recipe.dim

    @property
    def key(self) -> str:
        return self.recipe.key

    @property
    def untrained(self) -> bool:
        return self.recipe.untrained

    def rebuild_command(self, folder: Path | None = None) -> str:
        """The command that rebuilds this index (`folder`: where it is, so a folder collection's
        command names the images folder its record names)."""
        images = recorded_images(Path(folder).parent) if folder is not None else None
        local = " --local-features" if self.local_features is not None else ""
        return build_command(self.collection, self.key, force=True, images=images) + local

    def to_json(self) -> str:
        data = {
            "schema_version": self.schema_version,
            "collection": self.collection,
            "recipe": self.recipe.to_json(),
            "dim": self.dim,
            "images": self.images,
            "skipped": [{"image": s.image, "reason": s.reason} for s in self.skipped],
            "store": {"kind": self.store.kind, "params": self.store.params},
            "versions": self.versions,
            "timings": self.timings,
            "files": self.files,
            "created": self.created,
            "whitening": self.whitening.to_json() if self.whitening else None,
            "derived_from": self.derived_from,
        }
        if self.local_features is not None:
            data["local_features"] = self.local_features.to_json()
        if self.image_stamps:
            data["image_stamps"] = {image: list(stamp) for image, stamp in self.image_stamps.items()}
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        version = data.get("schema_version")
        if version == 1:
            return cls._from_schema_1(data)
        return cls(
            collection=data["collection"],
            recipe=Recipe.from_json(data["recipe"]),
            images=list(data["images"]),
            dim=int(data["dim"]),
            skipped=[Skipped(s["image"], s["reason"]) for s in data.get("skipped", [])],
            store=StoreSpec(data["store"]["kind"], dict(data["store"].get("params", {}))),
            versions=dict(data.get("versions", {})),
            timings=dict(data.get("timings", {})),
            files={name: int(size) for name, size in data.get("files", {}).items()},
            created=data.get("created", ""),
            schema_version=version,
            whitening=WhiteningSource.from_json(data["whitening"]) if data.get("whitening") else None,
            derived_from=dict(data["derived_from"]) if data.get("derived_from") else None,
            local_features=LocalFeatureSettings.from_json(data["local_features"]) if data.get("local_features") else None,
            image_stamps={image: (int(size), int(mtime)) for image, (size, mtime) in data.get("image_stamps", {}).items()},
        )

    @classmethod
    def _from_schema_1(cls, data: dict[str, Any]) -> Manifest:
        """Folders written before recipes: the study descriptor of one backbone, two Annoy files."""
        from cbir.weights import Weights

        recipe = Recipe(data["backbone"], Pooling.GAP, int(data["input_size"]), Weights.from_json(data["weights"]))
        annoy = data.get("annoy", {})
        return cls(
            collection=data["collection"],
            recipe=recipe,
            images=list(data["images"]),
            dim=int(data["dim"]),
            skipped=[Skipped(s["image"], s["reason"]) for s in data.get("skipped", [])],
            store=StoreSpec("annoy", {k: annoy[k] for k in ("n_trees", "seed") if k in annoy}),
            versions=dict(data.get("versions", {})),
            timings=dict(data.get("timings", {})),
            created=data.get("created", ""),
            schema_version=1,
        )

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        path = Path(folder) / MANIFEST
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise IndexLoadError(f"{folder} has no {MANIFEST}; it is not a finished index") from None
        except (OSError, ValueError) as error:
            raise IndexLoadError(f"{path} is unreadable ({error})") from None
        version = data.get("schema_version") if isinstance(data, dict) else None
        if version not in READABLE_SCHEMAS:
            name = data.get("collection", "<name>") if isinstance(data, dict) else "<name>"
            raise IndexLoadError(
                f"{path} has schema version {version}, this code reads versions "
                f"{', '.join(map(str, READABLE_SCHEMAS))}. Rebuild it: "
                + build_command(name, Path(folder).name, force=True, images=recorded_images(Path(folder).parent))
            )
        try:
            return cls.from_json(data)
        except (KeyError, TypeError, ValueError) as error:
            raise IndexLoadError(
                f"{path} is missing or has wrong fields ({error!r}). Rebuild it: "
                + build_command(data.get("collection", "<name>"), Path(folder).name, force=True,
                                images=recorded_images(Path(folder).parent))
            ) from None


def write_index(
    folder: Path,
    descriptors: np.ndarray,
    manifest: Manifest,
    *,
    whitening: Whitening | None = None,
    grown_from: int | None = None,
    local_features: Sequence[ImageFeatures] | None = None,
) -> Manifest:
    """Write descriptors, the manifest's store (and the recipe's whitening) and the manifest, all or
    nothing.

    Everything goes into a sibling temporary folder which replaces `folder` only when complete;
    the manifest is written last and records the size of every file. `grown_from`: the rows before
    `grown_from` are those of the index now in `folder` (same store), and a store that can take new
    rows (`StoreKind.add`) grows a copy of its files instead of being built again. `local_features`:
    one per image, in row order, made with `manifest.local_features` (given together or not at all).
    """
    descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
    if descriptors.ndim != 2 or descriptors.shape != (len(manifest.images), manifest.dim):
        raise ValueError(
            f"descriptors of shape {descriptors.shape} do not match {len(manifest.images)} images x {manifest.dim}"
        )
    if (whitening is None) != (manifest.recipe.whitening is None) or (whitening is None) != (manifest.whitening is None):
        raise ValueError("a whitened recipe is written with its whitening and what it was learned on, and only it")
    if (local_features is None) != (manifest.local_features is None):
        raise ValueError("local features are written with the settings that made them, and only then")
    if local_features is not None and len(local_features) != len(manifest.images):
        raise ValueError(f"{len(local_features)} images' local features for {len(manifest.images)} images")
    kind = get_store_kind(manifest.store.kind)
    with atomic.replacing_folder(folder) as temporary:
        np.save(temporary / DESCRIPTORS, descriptors)
        if local_features is not None:
            write_features(temporary / LOCAL_FEATURES_FILE, local_features)
        if whitening is not None:
            whitening.save(temporary / WHITENING_FILE)
        started = time.perf_counter()
        if grown_from is not None and kind.can_grow:
            params = kind.add(Path(folder), temporary, descriptors, grown_from, dict(manifest.store.params))
        else:
            params = kind.build(temporary, descriptors, dict(manifest.store.params))
        manifest.timings = {**manifest.timings, "store_build_seconds": round(time.perf_counter() - started, 3)}
        manifest.store = StoreSpec(kind.name, params)
        manifest.files = {name: (temporary / name).stat().st_size for name in _required_files(manifest, params)}
        manifest.created = manifest.created or time.strftime("%Y-%m-%dT%H:%M:%S%z")
        manifest.schema_version = SCHEMA_VERSION
        (temporary / MANIFEST).write_text(manifest.to_json())
    return manifest


def damage(folder: Path, manifest: Manifest) -> list[str]:
    """What is wrong with the files of an index folder (empty when it is whole)."""
    try:
        get_store_kind(manifest.store.kind)
    except SettingsError:
        return [f"its store {manifest.store.kind!r} is not one this code knows (a newer version wrote it?)"]
    problems = []
    for name in _required_files(manifest, manifest.store.params):
        path = Path(folder) / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif name in manifest.files and path.stat().st_size != manifest.files[name]:
            problems.append(f"{name} has {path.stat().st_size} bytes, the manifest recorded {manifest.files[name]}")
    return problems


def _required_files(manifest: Manifest, store_params: dict[str, Any]) -> tuple[str, ...]:
    whitening = (WHITENING_FILE,) if manifest.recipe.whitening is not None else ()
    local = (LOCAL_FEATURES_FILE,) if manifest.local_features is not None else ()
    return (DESCRIPTORS, *get_store_kind(manifest.store.kind).files(store_params), *whitening, *local)


@dataclass
class LoadedIndex:
    """A loaded index folder: its manifest, memory-mapped descriptors, the exact scan and its store."""

    folder: Path
    manifest: Manifest
    descriptors: np.ndarray = field(repr=False)
    whitening: Whitening | None = field(default=None, repr=False)
    _store: Store | None = field(default=None, repr=False)
    _local_features: FeaturesFile | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # (size, modification time, inode) of each file as loaded: what `changed_files` compares with.
    _stamps: dict[str, tuple[int, int, int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.exact = ExactStore(self.descriptors)
        if not self._stamps:
            self._stamps = _stamps(self.folder, self.manifest)

    def changed_files(self) -> list[str]:
        """The files of the folder that are not as they were loaded (missing, cut, rewritten, replaced)."""
        return [name for name, stamp in _stamps(self.folder, self.manifest).items() if stamp != self._stamps.get(name)]

    def check_unchanged(self) -> None:
        """Refuse to read an index whose files changed on disk since it was loaded (module docstring)."""
        changed = self.changed_files()
        if changed:
            raise IndexLoadError(
                f"{self.folder}: {', '.join(changed)} changed on disk while it was being served (a second build "
                f"writing into it, a sync tool, a disk error?). Rebuild it: {self.manifest.rebuild_command(self.folder)}"
            )

    def query_descriptor(self, described: np.ndarray) -> np.ndarray:
        """A query's descriptor as the rows hold them: the recipe's whitening applied, if it has one."""
        return self.whitening.apply(described) if self.whitening is not None else described

    def __len__(self) -> int:
        return len(self.manifest.images)

    @property
    def store_is_exact(self) -> bool:
        return get_store_kind(self.manifest.store.kind).exact

    @property
    def store(self) -> Store:
        """The manifest's store, opened on first use."""
        with self._lock:
            if self._store is None:
                kind = get_store_kind(self.manifest.store.kind)
                self._store = self.exact if kind.exact else kind.open(self.folder, self.descriptors, self.manifest.store.params)
            return self._store

    def search(
        self, query: np.ndarray, metric: Metric, k: int | None, *, exact: bool, candidates: int | None = None
    ) -> Neighbours:
        """The k nearest rows (k=None: every row, exact only)."""
        self.check_unchanged()
        if exact or k is None:
            return self.exact.search(query, metric, k)
        try:
            return self.store.search(query, metric, min(k, len(self)), candidates=candidates)
        except IndexLoadError as error:
            raise IndexLoadError(f"{error} Rebuild it: {self.manifest.rebuild_command(self.folder)}") from None

    @property
    def has_local_features(self) -> bool:
        return self.manifest.local_features is not None

    @property
    def local_features(self) -> FeaturesFile:
        """The rows' local features (cbir.local_features), opened on first use."""
        if not self.has_local_features:
            raise IndexLoadError(
                f"{self.folder} has no local features. Build them: "
                f"{build_command(self.manifest.collection, self.manifest.key, force=True, images=recorded_images(self.folder.parent))} --local-features"
            )
        self.check_unchanged()
        with self._lock:
            if self._local_features is None:
                try:
                    path = self.folder / LOCAL_FEATURES_FILE
                    in_memory = path.stat().st_size <= IN_MEMORY_BYTES
                    self._local_features = read_features(path, len(self), in_memory=in_memory)
                except (OSError, LocalFeaturesError) as error:
                    raise IndexLoadError(f"{error}. Rebuild it: {self.manifest.rebuild_command(self.folder)}") from None
            return self._local_features

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


def _stamps(folder: Path, manifest: Manifest) -> dict[str, tuple[int, int, int]]:
    """(size, modification time, inode) of each file of the index; (-1, -1, -1) for a missing one."""
    stamps = {}
    for name in _required_files(manifest, manifest.store.params):
        try:
            status = os.stat(Path(folder) / name)
        except OSError:
            stamps[name] = (-1, -1, -1)
        else:
            stamps[name] = (status.st_size, status.st_mtime_ns, status.st_ino)
    return stamps


def load_index(folder: Path, *, expected: Recipe | None = None) -> LoadedIndex:
    """Load an index folder after checking that it is whole and holds what the caller expects."""
    folder = Path(folder)
    if not folder.is_dir():
        raise IndexLoadError(f"no index at {folder}. Build it: "
                             f"{build_command(folder.parent.name, folder.name, images=recorded_images(folder.parent))}")
    manifest = Manifest.read(folder)
    images = recorded_images(folder.parent)
    fix = "Rebuild it: " + build_command(manifest.collection, expected.key if expected else manifest.key, force=True,
                                         images=images)  # fmt: skip
    fix += " --local-features" if manifest.local_features is not None else ""
    if expected is not None and manifest.recipe.backbone != expected.backbone:
        raise IndexLoadError(
            f"{folder} was built by {manifest.recipe.backbone}, not {expected.backbone}; its descriptors cannot be "
            f"compared with {expected.backbone}'s. {fix}"
        )
    if expected is not None and manifest.recipe.runtime != expected.runtime:
        built_with = manifest.recipe.runtime.value
        raise IndexLoadError(
            f"{folder} was described by the {built_with} runtime; descriptors made by {expected.runtime.value} do not "
            f"match its rows exactly. Describe the queries with {built_with} (the recipe {manifest.key}), or build an "
            f"index for {expected.runtime.value}: {build_command(manifest.collection, expected.key, images=images)}"
        )
    if expected is not None and manifest.recipe.key != expected.key:
        raise IndexLoadError(f"{folder} holds {manifest.recipe.key} descriptors, not {expected.key}. {fix}")
    if expected is not None and manifest.dim != expected.dim:
        raise IndexLoadError(f"{folder} holds {manifest.dim}-d descriptors, expected {expected.dim}-d. {fix}")
    if expected is not None and manifest.recipe.identity() != expected.identity():
        built, wanted = manifest.recipe.identity(), expected.identity()
        differences = ", ".join(
            f"{name} {built.get(name)} (expected {wanted.get(name)})" for name in {**built, **wanted}
            if built.get(name) != wanted.get(name)
        )
        raise IndexLoadError(f"{folder} was built with another recipe: {differences}. {fix}")
    problems = damage(folder, manifest)
    if problems:
        raise IndexLoadError(f"{folder} is damaged: {'; '.join(problems)}. {fix}")
    stamps = _stamps(folder, manifest)  # before reading: a change while loading shows at the first search
    try:
        in_memory = (folder / DESCRIPTORS).stat().st_size <= IN_MEMORY_BYTES
        descriptors = np.load(folder / DESCRIPTORS, mmap_mode=None if in_memory else "r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise IndexLoadError(f"{folder / DESCRIPTORS} is unreadable ({error}). {fix}") from None
    if descriptors.shape != (len(manifest.images), manifest.dim):
        raise IndexLoadError(
            f"{folder / DESCRIPTORS} has shape {descriptors.shape}, the manifest says "
            f"{len(manifest.images)} x {manifest.dim}. {fix}"
        )
    whitening = None
    if manifest.recipe.whitening is not None:
        try:
            whitening = Whitening.load(folder / WHITENING_FILE)
        except (OSError, ValueError, KeyError) as error:
            raise IndexLoadError(f"{folder / WHITENING_FILE} is unreadable ({error}). {fix}") from None
        if whitening.dim != manifest.dim or whitening.input_dim != manifest.recipe.base.dim:
            raise IndexLoadError(
                f"{folder / WHITENING_FILE} maps {whitening.input_dim}-d to {whitening.dim}-d descriptors, the "
                f"recipe {manifest.key} needs {manifest.recipe.base.dim}-d to {manifest.dim}-d. {fix}"
            )
    return LoadedIndex(folder, manifest, descriptors, whitening, _stamps=stamps)


def version_warnings(manifest: Manifest, current: dict[str, str]) -> list[str]:
    """Keras/TensorFlow drift changes descriptors silently: say so when versions differ."""
    warnings = []
    for package, built_with in manifest.versions.items():
        now = current.get(package)
        if now and built_with and now != built_with:
            warnings.append(
                f"{manifest.collection}/{manifest.key} was built with {package} {built_with}, "
                f"this process runs {now}; descriptors may differ slightly. Rebuild to be sure: "
                + manifest.rebuild_command()
            )
    return warnings
