"""Adding images to a built folder collection without describing its old images again.

    python build_index.py --images ~/photos --name holiday --add ~/photos/2026-trip

Every index of the collection grows by the new images, whose rows follow the old rows (which stay
as they are, row for row). How depends on what the index holds:

- its store takes rows after its build (`StoreKind.add`): the exact scan appends them, an HNSW
  graph takes them as new nodes, a Milvus collection inserts them;
- Annoy cannot take items after its build: its trees are built again from the old rows (read from
  descriptors.npy, not described again) and the new ones;
- a whitened recipe applies its saved whitening (learned on another collection, so unchanged) to
  the new rows of the recipe without whitening;
- DBA replaces each row by a weighted sum of its neighbours, and new rows change old rows'
  neighbours: every row is augmented again and its store built again.

Only the recipes without whitening or DBA describe images (once per recipe); the others are computed
from the index they are derived from, as the build does (cbir.build).

New images are named as every manifest names images: relative to the collection's images folder. A
folder inside it gives the paths a later plain build lists anyway; a folder outside it gives `../`
paths (as distractors do) and is written to the collection's `added.json`, so that the next plain
`build_index.py --images DIR --name NAME` lists its images too (`with_added_folders`) instead of
rebuilding the collection without them.

Each index folder is written beside the old one and renamed into place when complete
(cbir.index.write_index): a run killed half way leaves every index as it was or grown, never
half grown, and the same command again adds what is still missing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from cbir import atomic
from cbir.trunks import ExtractorCache, keras_versions
from cbir.datasets import DATASETS
from cbir.datasets.folders import list_images
from cbir.datasets.model import Collection, DatasetError
from cbir.distances import Metric
from cbir.digests import sha256_file
from cbir.errors import SettingsError
from cbir.extract import DEFAULT_BATCH_SIZE, DEFAULT_CHECKPOINT_EVERY, extract_descriptors, file_stamp
from cbir.images import DEFAULT_LIMITS, ImageLimits
from cbir.index import LoadedIndex, Manifest, load_index, version_warnings, write_index
from cbir.local_features import ImageFeatures, describe_images
from cbir.layout import (
    DESCRIPTORS,
    IndexLayout,
    IndexLoadError,
    build_command,
    read_collection_record,
    write_collection_record,
)
from cbir.ranking import database_side_augmentation
from cbir.stores import get_store_kind

logger = logging.getLogger(__name__)


class AddPath(str, Enum):
    """What happened to one index."""

    GROWN = "grown"  # its store took the new rows
    STORE_REBUILT = "store rebuilt"  # rows appended, the store built again from old + new rows (Annoy)
    RECOMPUTED = "recomputed"  # every row computed again from its source index (DBA)
    NOTHING_NEW = "nothing new"


@dataclass(frozen=True)
class AddSettings:
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int | None = None
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY
    limits: ImageLimits = DEFAULT_LIMITS
    progress: bool = True
    # Asked for local features (--local-features): an index without them is refused. The new images
    # get them wherever the index has them either way (described as its manifest says).
    local_features: bool = False


@dataclass(frozen=True)
class AddOutcome:
    key: str
    folder: Path
    path: AddPath
    n_added: int  # new rows
    n_skipped: int  # new images that could not be read
    n_images: int  # rows now
    message: str


def add_images(
    index_dir: Path,
    name: str,
    images_dir: Path,
    new_dir: Path,
    settings: AddSettings = AddSettings(),
    *,
    extractors: ExtractorCache | None = None,
) -> list[AddOutcome]:
    """Add the images under `new_dir` to every index of the folder collection `name` (built from
    `images_dir`), without describing its old images again. One outcome per index, with a message
    saying what happened to it."""
    layout = IndexLayout(index_dir)
    record = _folder_record(layout, name, Path(images_dir))
    root = record.root
    new_dir = Path(new_dir).resolve()
    if not new_dir.is_dir():
        raise DatasetError(f"--add {new_dir}: not a folder of images")
    candidates = [_relative(root, new_dir / relpath) for relpath in list_images(new_dir)]
    if not candidates:
        raise DatasetError(f"--add {new_dir}: no images found under it")
    for leftover in atomic.remove_leftovers(layout.collection_dir(name)):
        logger.info("removed %s left by an interrupted build", leftover.name)
    folders = [folder for folder in layout.index_dirs() if folder.parent.name == name]
    if not folders:
        raise IndexLoadError(f"{name} has no index to add images to. Build it first: {build_command(name)}")
    # Recipes that describe images first, then whitened ones, then DBA: each is computed from the one before.
    manifests = sorted(((Manifest.read(folder), folder) for folder in folders),
                       key=lambda pair: (pair[0].recipe.dba is not None, pair[0].recipe.whitening is not None))  # fmt: skip
    without = [manifest.key for manifest, _ in manifests if manifest.local_features is None]
    if settings.local_features and without:
        # Adding describes only the new images: the old rows' features would be missing.
        raise SettingsError(
            f"--local-features: {name}/{without[0]} has no local features, and adding describes only the new images. "
            f"Build them for every image first: {build_command(name, without[0], force=True, images=root)} "
            "--local-features; then add"
        )
    extractors = extractors if extractors is not None else ExtractorCache()
    # Recorded first: a run killed after an index grew still has a later plain build keep the images.
    if not new_dir.is_relative_to(root.resolve()):
        _record_added_folder(layout, name, new_dir)
    outcomes = []
    for manifest, folder in manifests:
        if manifest.derived_from is None:
            outcomes.append(_grow_described(layout, name, root, folder, manifest, candidates, settings, extractors))
        elif manifest.recipe.dba is None:
            outcomes.append(_grow_whitened(layout, name, folder, manifest))
        else:
            outcomes.append(_recompute_dba(layout, name, folder, manifest))
        logger.info("%s/%s: %s", name, outcomes[-1].key, outcomes[-1].message)
    if any(outcome.path is not AddPath.NOTHING_NEW for outcome in outcomes):
        grown = Manifest.read(manifests[0][1])
        write_collection_record(layout, Collection(name, root, tuple(grown.images) + tuple(s.image for s in grown.skipped)))
    return outcomes


def _folder_record(layout: IndexLayout, name: str, images_dir: Path):
    if name in DATASETS or "+" in name:
        raise SettingsError(
            f"--add adds images to a folder collection; {name} is a dataset with ground truth, whose database is "
            "fixed. Add images to it as distractors: python build_index.py --dataset <name> --distractors <folder>"
        )
    record = read_collection_record(layout, name)
    if record.thumbnails_only or not record.images_found:
        raise IndexLoadError(f"--add needs {name}'s images: {record.missing_images_message()}")
    if record.root.resolve() != images_dir.resolve():
        raise SettingsError(
            f"{name} was built from {record.root}, not {images_dir}: give its own folder, "
            f"python build_index.py --images {record.root} --name {name} --add <new folder>"
        )
    return record


def _relative(root: Path, path: Path) -> str:
    """A path as manifests name images: relative to the collection's images folder (may start with ../)."""
    return Path(os.path.relpath(path.absolute(), root.absolute())).as_posix()


def _grow_described(
    layout: IndexLayout,
    name: str,
    root: Path,
    folder: Path,
    manifest: Manifest,
    candidates: Sequence[str],
    settings: AddSettings,
    extractors: ExtractorCache,
) -> AddOutcome:
    """A recipe without whitening or DBA: describe the images it does not hold yet and append them."""
    known = set(manifest.images) | {skipped.image for skipped in manifest.skipped}
    new = [relpath for relpath in candidates if relpath not in known]
    if not new:
        return _nothing_new(folder, manifest)
    started = time.perf_counter()
    for warning in version_warnings(manifest, keras_versions()):
        logger.warning("adding to an index built with other versions: %s", warning)
    old = load_index(folder, expected=manifest.recipe)
    stamps = {relpath: file_stamp(root / relpath) for relpath in new}  # before reading, as the build stamps
    extractor = extractors.get(manifest.recipe)
    # Its own checkpoints: a build's checkpoints of the same recipe are left alone.
    checkpoint_dir = layout.checkpoint_dir(name, f"{manifest.key}.add")
    result = extract_descriptors(
        extractor, root, new, batch_size=settings.batch_size, workers=settings.workers, checkpoint_dir=checkpoint_dir,
        checkpoint_every=settings.checkpoint_every, limits=settings.limits, progress=settings.progress,
    )  # fmt: skip
    rows = np.concatenate([np.asarray(old.descriptors), result.descriptors])
    new_features = None
    if manifest.local_features is not None:  # described as the index's own were
        new_features = describe_images(root, result.images, manifest.local_features, limits=settings.limits)
    outcome = _write_grown(folder, old, rows, result.images, result.skipped, started, manifest.derived_from,
                           new_features=new_features, new_stamps=stamps)  # fmt: skip
    shutil.rmtree(checkpoint_dir, ignore_errors=True)  # only once the grown index exists
    return outcome


def _grow_whitened(layout: IndexLayout, name: str, folder: Path, manifest: Manifest) -> AddOutcome:
    """A whitened recipe: its whitening applied to the rows its unwhitened index gained."""
    started = time.perf_counter()
    source = _source(layout, name, manifest)
    old = load_index(folder, expected=manifest.recipe)
    if source.manifest.images[: len(old)] != old.manifest.images:
        raise IndexLoadError(f"{folder}'s rows are not the first rows of {source.folder}. Rebuild it: "
                             f"{build_command(name, manifest.key, force=True)}")  # fmt: skip
    if len(source) == len(old):
        return _nothing_new(folder, manifest)
    new_rows = old.whitening.apply(np.asarray(source.descriptors[len(old) :]))
    rows = np.concatenate([np.asarray(old.descriptors), new_rows])
    known = {skipped.image for skipped in old.manifest.skipped}
    skipped = [entry for entry in source.manifest.skipped if entry.image not in known]
    note = "whitened the new rows with its saved whitening; "
    if old.manifest.whitening is not None and old.manifest.whitening.same_collection:
        note = "whitened the new rows with its saved whitening (learned on this collection before them: --force relearns it); "
    outcome = _write_grown(folder, old, rows, source.manifest.images[len(old) :], skipped, started,
                           _derived_from(source), note=note, new_features=_features(source, len(old)))  # fmt: skip
    source.close()
    return outcome


def _recompute_dba(layout: IndexLayout, name: str, folder: Path, manifest: Manifest) -> AddOutcome:
    """DBA: new rows change old rows' neighbours, so every row is augmented again and the store built again."""
    started = time.perf_counter()
    source = _source(layout, name, manifest)
    if manifest.derived_from == _derived_from(source):
        return _nothing_new(folder, manifest)
    old = load_index(folder, expected=manifest.recipe)
    rows = database_side_augmentation(np.asarray(source.descriptors), Metric.COSINE, k=manifest.recipe.dba)
    grown = Manifest(
        collection=manifest.collection, recipe=manifest.recipe, images=list(source.manifest.images),
        skipped=list(source.manifest.skipped), store=manifest.store, versions=manifest.versions,
        timings={**manifest.timings, "add_seconds": round(time.perf_counter() - started, 3)},
        created=manifest.created, whitening=manifest.whitening, derived_from=_derived_from(source),
        local_features=source.manifest.local_features if manifest.local_features is not None else None,
    )  # fmt: skip
    old.close()
    features = _features(source, 0) if grown.local_features is not None else None
    write_index(folder, rows, grown, whitening=source.whitening if manifest.recipe.whitening else None,
                local_features=features)  # fmt: skip
    added = len(grown.images) - len(manifest.images)
    message = (f"rebuilt with {added} more images: DBA changes the neighbours of old rows, so all {len(rows)} rows "
               f"were augmented again and {get_store_kind(grown.store.kind).label} built again")  # fmt: skip
    source.close()
    return AddOutcome(manifest.key, folder, AddPath.RECOMPUTED, added, 0, len(rows), message)


def _source(layout: IndexLayout, name: str, manifest: Manifest) -> LoadedIndex:
    """The index a derived one is computed from (it has grown already: sources come first)."""
    key = manifest.derived_from["key"]
    try:
        return load_index(layout.index_dir(name, key))
    except IndexLoadError as error:
        raise IndexLoadError(f"{manifest.key} is computed from {key}, which cannot be loaded: {error}") from None


def _features(source: LoadedIndex, start: int) -> list[ImageFeatures] | None:
    """The local features of `source`'s rows from `start` on (None when it has none)."""
    if not source.has_local_features:
        return None
    return [source.local_features.image(row) for row in range(start, len(source))]


def _derived_from(source: LoadedIndex) -> dict[str, str]:
    return {"key": source.manifest.key, "descriptors_sha256": sha256_file(source.folder / DESCRIPTORS)}


def _write_grown(
    folder: Path,
    old: LoadedIndex,
    rows: np.ndarray,
    new_images: Sequence[str],
    new_skipped: Sequence,
    started: float,
    derived_from: dict[str, str] | None,
    note: str = "",
    new_features: Sequence[ImageFeatures] | None = None,
    new_stamps: dict[str, tuple[int, int]] | None = None,
) -> AddOutcome:
    """Write `old`'s folder again with `rows` (old rows first) and its store grown or rebuilt; its
    local features, if it has them, grown by `new_features` (one per new image); its images' stamps
    (cbir.build.changed_images), if it records them, by `new_stamps`."""
    manifest = old.manifest
    features = None
    if manifest.local_features is not None and new_features is not None:
        features = [old.local_features.image(row) for row in range(len(old))] + list(new_features)
    elif manifest.local_features is not None:
        logger.warning("%s: the index it grows from has no local features, so the grown index has none", manifest.key)
    grown = Manifest(
        collection=manifest.collection, recipe=manifest.recipe, images=[*manifest.images, *new_images],
        dim=manifest.dim, skipped=[*manifest.skipped, *new_skipped], store=manifest.store, versions=manifest.versions,
        timings={**manifest.timings, "add_seconds": round(time.perf_counter() - started, 3)},
        created=manifest.created, whitening=manifest.whitening, derived_from=derived_from,
        local_features=manifest.local_features if features is not None else None,
        image_stamps={**manifest.image_stamps, **(new_stamps or {})},
    )  # fmt: skip
    whitening = old.whitening
    old.close()  # a store holding the old files (a Milvus Lite file) lets go of them first
    write_index(folder, rows, grown, whitening=whitening, grown_from=len(manifest.images), local_features=features)
    kind = get_store_kind(manifest.store.kind)
    added, store = len(new_images), kind.label
    if kind.can_grow:
        path, message = AddPath.GROWN, f"{note}added {added} images to {store}"
    else:
        path = AddPath.STORE_REBUILT
        message = (f"{note}rebuilt {store} with {added} more images ({kind.name} takes no items after its build; "
                   "the old images were not described again)")  # fmt: skip
    if new_skipped:
        message += f"; {len(new_skipped)} unreadable images skipped (listed in the manifest)"
    return AddOutcome(manifest.key, folder, path, added, len(new_skipped), len(rows), message)


def _nothing_new(folder: Path, manifest: Manifest) -> AddOutcome:
    return AddOutcome(manifest.key, folder, AddPath.NOTHING_NEW, 0, 0, len(manifest.images),
                      f"nothing to add: it holds every image given ({len(manifest.images)} images)")  # fmt: skip


def _record_added_folder(layout: IndexLayout, name: str, new_dir: Path) -> None:
    path = layout.added_record_path(name)
    folders = _added_folders(layout, name)
    folder = new_dir.resolve()
    if folder not in folders:
        folders.append(folder)
    entries = [{"relative": os.path.relpath(f, path.parent.resolve()), "as_added": str(f)} for f in folders]
    atomic.write_text(path, json.dumps({"folders": entries}, indent=1))


def _added_folders(layout: IndexLayout, name: str) -> list[Path]:
    path = layout.added_record_path(name)
    try:
        entries = json.loads(path.read_text())["folders"]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("ignoring %s (%s)", path, error)
        return []
    found = []
    for entry in entries:
        candidates = [(path.parent / entry["relative"]).resolve(), Path(entry["as_added"])]
        found.append(next((candidate for candidate in candidates if candidate.is_dir()), candidates[0]))
    return found


def with_added_folders(collection: Collection, index_dir: Path) -> Collection:
    """A folder collection with the images `--add` added from folders outside it, so that a plain build
    of it keeps them (and finds its indexes up to date) instead of rebuilding without them."""
    folders = _added_folders(IndexLayout(index_dir), collection.name)
    extra = []
    for folder in folders:
        if not folder.is_dir():
            logger.warning("%s: %s, whose images were added with --add, is gone; they are left out", collection.name, folder)
            continue
        extra += [_relative(Path(collection.root).resolve(), folder / relpath) for relpath in list_images(folder)]
    if not extra:
        return collection
    images = tuple(dict.fromkeys((*collection.images, *extra)))
    return Collection(collection.name, collection.root, images, collection.queries)
