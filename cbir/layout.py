"""The only owner of paths under the index root, and of the collection record.

    <index root>/<collection>/
        collection.json         the collection record: where its images are, its queries
        added.json              folders outside the images folder that `--add` added images from
        <recipe key>/           one index folder per recipe (cbir.index)
        .extract-<recipe key>/  checkpoints of an extraction in progress (removed when done)
        evaluation/             results files (cbir.evaluation)
        thumbnails/             the only image files the page serves (cbir.thumbnails)

The collection record stores the images folder relative to the record itself (and, as a fallback,
where it was when built), so an index root copied together with its images -- or a folder of
photos next to its indexes -- loads from anywhere. Image paths in manifests are relative to that
images folder.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cbir import atomic
from cbir.datasets.model import Collection, Query
from cbir.datasets.registry import DATASETS
from cbir.errors import CbirError
from cbir.recipe import build_options

logger = logging.getLogger(__name__)

COLLECTION_RECORD = "collection.json"
RECORD_SCHEMA_VERSION = 2
MANIFEST = "manifest.json"
DESCRIPTORS = "descriptors.npy"
RESULTS_DIR = "evaluation"
THUMBNAILS_DIR = "thumbnails"
CHECKPOINT_PREFIX = ".extract-"
ADDED_RECORD = "added.json"


class IndexLoadError(CbirError):
    """An index or collection record that must not be loaded as it is; the message names the fix."""


def build_command(
    collection: str, recipe_key: str | None = None, *, force: bool = False, images: str | Path | None = None
) -> str:
    """The command that (re)builds one index of a collection; `images`: the folder of a folder
    collection, where known (cbir.layout.recorded_images), else a placeholder."""
    dataset, _, distractors = collection.partition("+")
    if dataset in DATASETS:
        source = f"--dataset {dataset}" + (" --distractors <folder>" if distractors else "")
    else:
        source = f"--images {shlex.quote(str(images)) if images else '<folder>'} --name {collection}"
    command = f"python build_index.py {source}"
    if recipe_key:
        command += " " + build_options(recipe_key)
    return command + (" --force" if force else "")


def recorded_images(collection_dir: Path) -> str | None:
    """The images folder a collection's record names (as built), for messages; None if unreadable."""
    try:
        return str(json.loads((Path(collection_dir) / COLLECTION_RECORD).read_text())["images_root_as_built"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class IndexLayout:
    """Paths under one index root."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def collection_dir(self, collection: str) -> Path:
        return self.root / collection

    def record_path(self, collection: str) -> Path:
        return self.collection_dir(collection) / COLLECTION_RECORD

    def index_dir(self, collection: str, recipe_key: str) -> Path:
        return self.collection_dir(collection) / recipe_key

    def checkpoint_dir(self, collection: str, recipe_key: str) -> Path:
        # Beside the index, never inside it: the index folder is replaced whole when it is written.
        return self.collection_dir(collection) / f"{CHECKPOINT_PREFIX}{recipe_key}"

    def added_record_path(self, collection: str) -> Path:
        # Folders outside the images folder whose images `build_index.py --add` added (cbir.add).
        return self.collection_dir(collection) / ADDED_RECORD

    def results_dir(self, collection: str) -> Path:
        return self.collection_dir(collection) / RESULTS_DIR

    def thumbnails_dir(self, collection: str) -> Path:
        return self.collection_dir(collection) / THUMBNAILS_DIR

    def index_dirs(self) -> Iterator[Path]:
        """Every folder that holds a manifest (finished or not), temporary folders left out."""
        if not self.root.is_dir():
            return
        for manifest in sorted(self.root.glob(f"*/*/{MANIFEST}")):
            if not atomic.is_temporary(manifest.parent):
                yield manifest.parent


@dataclass(frozen=True)
class CollectionRecord:
    """What the build recorded about a collection: enough to show example queries and to evaluate."""

    name: str
    root: Path  # the images folder, absolute, as found now
    queries: tuple[Query, ...]
    n_images: int
    images_found: bool  # False: the images are not where the record says (a moved index root)
    recorded_root: str  # where the record says they are, for messages
    # A bundle's record: the images did not travel, the thumbnails under the index root stand in.
    thumbnails_only: bool = False
    image_sizes: dict[str, tuple[int, int]] | None = None  # query image id -> (width, height)
    thumbnail_max_side: int | None = None  # a bundle's thumbnails' size (None: the page's default)
    # Query images that are not database rows (the revisited datasets), relative to `root`.
    query_images: tuple[str, ...] = ()
    database_order: tuple[str, ...] = ()  # the ground truth's order of the database (image ids), if it has one
    n_distractors: int = 0  # distractor images appended to the database (R1M or a folder)

    def missing_images_message(self) -> str:
        if self.thumbnails_only:
            return (
                f"{self.name} came as a bundle: it holds thumbnails, not its images. Evaluate it where the "
                f"images are: {build_command(self.name)} --evaluate"
            )
        return (
            f"the images of {self.name} are not at {self.recorded_root} (where they were when it was built). "
            f"Put them back, or rebuild: {build_command(self.name, images=self.recorded_root)}"
        )


def write_collection_record(layout: IndexLayout, collection: Collection) -> Path:
    path = layout.record_path(collection.name)
    root = Path(collection.root).resolve()
    data = {
        "schema_version": RECORD_SCHEMA_VERSION,
        "name": collection.name,
        "images_root": os.path.relpath(root, path.parent.resolve()),
        "images_root_as_built": str(root),
        "n_images": len(collection.images),
        "queries": [query.to_json() for query in collection.queries],
        "query_images": list(collection.query_images),
        "database_order": list(collection.database_order),
        "n_distractors": len(collection.distractors),
        "distractors_folder": _common_folder(root, collection.distractors),
    }
    atomic.write_text(path, json.dumps(data, indent=1))
    return path


def _common_folder(root: Path, relpaths: tuple[str, ...]) -> str | None:
    """The folder the distractors were taken from, for the record (None without distractors)."""
    if not relpaths:
        return None
    return os.path.normpath(os.path.commonpath([os.path.join(root, relpath) for relpath in relpaths]))


def read_collection_record(layout: IndexLayout, name: str) -> CollectionRecord:
    path = layout.record_path(name)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise IndexLoadError(
            f"no collection {name!r} under {layout.root} ({path} is missing). Build it: {build_command(name)}"
        ) from None
    except (OSError, ValueError) as error:
        raise IndexLoadError(f"{path} is unreadable ({error}). Rebuild it: {build_command(name, force=True)}") from None
    queries = tuple(Query.from_json(query) for query in data.get("queries", []))
    query_images = tuple(str(image) for image in data.get("query_images", []))
    database_order = tuple(str(image) for image in data.get("database_order", []))
    if data.get("thumbnails_only"):
        sizes = {image: (int(w), int(h)) for image, (w, h) in data.get("image_sizes", {}).items()}
        return CollectionRecord(
            name=data["name"],
            root=layout.thumbnails_dir(name),
            queries=queries,
            n_images=int(data.get("n_images", 0)),
            images_found=False,
            recorded_root="(a bundle: thumbnails only)",
            thumbnails_only=True,
            image_sizes=sizes,
            thumbnail_max_side=int(data.get("thumbnail_max_side") or 0) or None,
            query_images=query_images,
            database_order=database_order,
            n_distractors=int(data.get("n_distractors") or 0),
        )
    if "root" in data and "images_root" not in data:  # written before records were relocatable
        candidates = [Path(data["root"])]
        recorded = data["root"]
    else:
        candidates = [(path.parent / data["images_root"]).resolve(), Path(data["images_root_as_built"])]
        recorded = str(candidates[0])
    found = next((candidate for candidate in candidates if candidate.is_dir()), None)
    return CollectionRecord(
        name=data["name"],
        root=found or candidates[0],
        queries=queries,
        n_images=int(data.get("n_images", 0)),
        images_found=found is not None,
        recorded_root=recorded,
        query_images=query_images,
        database_order=database_order,
        n_distractors=int(data.get("n_distractors") or 0),
    )
