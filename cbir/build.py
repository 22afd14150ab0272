"""A collection + backbones -> finished index folders: what `build_index.py` and the app call.

Per backbone: extract descriptors (resuming from checkpoints of an interrupted run), then write the
index folder atomically. A backbone whose index already matches the collection, weights and input
size is left alone unless `force` is set.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from cbir.backbones import Backbone, ExtractorCache, Weights, keras_versions, resolve_input_size
from cbir.collections import Collection, Query
from cbir.extract import DEFAULT_BATCH_SIZE, DEFAULT_CHUNK_SIZE, extract_descriptors
from cbir.images import DEFAULT_LIMITS, ImageLimits
from cbir.index import (
    DEFAULT_N_TREES,
    IndexLoadError,
    Manifest,
    index_folder,
    remove_leftovers,
    write_index,
)

logger = logging.getLogger(__name__)

COLLECTION_FILE = "collection.json"


@dataclass
class BuildSettings:
    index_root: Path = Path("indexes")
    weights: Weights = field(default_factory=lambda: Weights("imagenet"))
    batch_size: int = DEFAULT_BATCH_SIZE
    n_trees: int = DEFAULT_N_TREES
    input_size: int | None = None  # None: each backbone's own size; smaller sizes are for tests
    force: bool = False
    progress: bool = True
    workers: int | None = None
    checkpoint_every: int = DEFAULT_CHUNK_SIZE  # images per extraction checkpoint
    limits: ImageLimits = DEFAULT_LIMITS


@dataclass
class BuildOutcome:
    backbone: str
    folder: Path
    status: str  # "built" | "up to date"
    n_images: int
    n_skipped: int
    images_per_second: float = 0.0
    seconds: float = 0.0
    reason: str = ""  # why it was (re)built or left alone
    resumed_images: int = 0  # images taken from checkpoints of an interrupted run


BuildProgress = Callable[[str, int, int], None]  # (backbone, images done, images total)


def save_collection(collection: Collection, index_root: Path) -> Path:
    """Record where the collection's images are and its queries, for the app and the evaluation."""
    folder = Path(index_root) / collection.name
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "name": collection.name,
        "root": str(Path(collection.root).resolve()),
        "n_images": len(collection.images),
        "queries": [
            {
                "name": q.name,
                "image": q.image,
                "box": list(q.box),
                "good": sorted(q.good),
                "ok": sorted(q.ok),
                "junk": sorted(q.junk),
            }
            for q in collection.queries
        ],
    }
    path = folder / COLLECTION_FILE
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=1))
    os.replace(temporary, path)
    return path


@dataclass(frozen=True)
class SavedCollection:
    """What `save_collection` wrote: enough to show example queries and to evaluate."""

    name: str
    root: Path
    queries: tuple[Query, ...]


def read_collection(index_root: Path, name: str) -> SavedCollection:
    path = Path(index_root) / name / COLLECTION_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise IndexLoadError(f"no collection {name!r} under {index_root} ({path} is missing)") from None
    queries = tuple(
        Query(
            name=q["name"],
            image=q["image"],
            box=tuple(q["box"]),
            good=frozenset(q["good"]),
            ok=frozenset(q["ok"]),
            junk=frozenset(q["junk"]),
        )
        for q in data.get("queries", [])
    )
    return SavedCollection(data["name"], Path(data["root"]), queries)


def _up_to_date(folder: Path, collection: Collection, backbone: Backbone, settings: BuildSettings) -> str | None:
    """Why the existing index can be kept, or None if it must be (re)built."""
    try:
        manifest = Manifest.read(folder)
    except IndexLoadError:
        return None
    described = sorted(manifest.images + [entry["image"] for entry in manifest.skipped])
    if (
        manifest.backbone == backbone.name
        and manifest.weights.get("identity") == settings.weights.identity
        and manifest.input_size == resolve_input_size(backbone, settings.input_size)
        and described == sorted(collection.images)
        and Path(manifest.collection_root) == Path(collection.root).resolve()
        and all((folder / name).is_file() for name in ("descriptors.npy", "cosine.ann", "euclidean.ann"))
    ):
        return f"already built ({len(manifest.images)} images, {manifest.weights_identity})"
    return None


def build_indexes(
    collection: Collection,
    backbones: Sequence[Backbone],
    settings: BuildSettings,
    *,
    extractors: ExtractorCache | None = None,
    on_progress: BuildProgress | None = None,
) -> list[BuildOutcome]:
    """Build (or keep) one index folder per backbone for `collection`."""
    extractors = extractors or ExtractorCache()
    index_root = Path(settings.index_root)
    save_collection(collection, index_root)
    for leftover in remove_leftovers(index_root / collection.name):
        logger.info("removed %s left by an interrupted build", leftover.name)
    outcomes = []
    for backbone in backbones:
        folder = index_folder(index_root, collection.name, backbone.name)
        kept = None if settings.force else _up_to_date(folder, collection, backbone, settings)
        if kept:
            logger.info("%s/%s: %s; nothing to do (--force rebuilds)", collection.name, backbone.name, kept)
            manifest = Manifest.read(folder)
            outcomes.append(
                BuildOutcome(backbone.name, folder, "up to date", len(manifest.images), len(manifest.skipped), reason=kept)
            )
            continue
        outcomes.append(_build_one(collection, backbone, settings, extractors, folder, on_progress))
    return outcomes


def _build_one(
    collection: Collection,
    backbone: Backbone,
    settings: BuildSettings,
    extractors: ExtractorCache,
    folder: Path,
    on_progress: BuildProgress | None,
) -> BuildOutcome:
    started = time.perf_counter()
    extractor = extractors.get(backbone, settings.weights, settings.input_size)
    built = time.perf_counter()
    # Checkpoints live beside the index, never inside it, and are removed once the index exists.
    checkpoint_dir = folder.parent / f".extract-{backbone.name}"
    result = extract_descriptors(
        extractor,
        Path(collection.root),
        collection.images,
        batch_size=settings.batch_size,
        workers=settings.workers,
        checkpoint_dir=checkpoint_dir,
        chunk_size=settings.checkpoint_every,
        limits=settings.limits,
        progress=settings.progress,
        on_progress=(lambda done, total: on_progress(backbone.name, done, total)) if on_progress else None,
    )
    if not result.images:
        raise RuntimeError(
            f"none of the {len(collection.images)} images of {collection.name} could be read; "
            f"first problem: {result.skipped[0]['reason'] if result.skipped else 'no images'}"
        )
    manifest = Manifest(
        collection=collection.name,
        collection_root=str(Path(collection.root).resolve()),
        backbone=backbone.name,
        weights=settings.weights.to_json(),
        input_size=extractor.input_size,
        dim=backbone.dim,
        images=result.images,
        skipped=result.skipped,
        versions=keras_versions(),
        timings={
            "model_build_seconds": round(built - started, 3),
            "extraction_seconds": round(result.seconds, 3),
            "images_per_second": round(result.images_per_second, 2),
        },
    )
    write_index(folder, result.descriptors, manifest, n_trees=settings.n_trees)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    seconds = time.perf_counter() - started
    logger.info(
        "%s/%s: %d images indexed, %d skipped, %.1f images/s, %.1f s in all%s",
        collection.name,
        backbone.name,
        len(result.images),
        len(result.skipped),
        result.images_per_second,
        seconds,
        " (UNTRAINED weights)" if settings.weights.untrained else "",
    )
    return BuildOutcome(
        backbone.name,
        folder,
        "built",
        len(result.images),
        len(result.skipped),
        result.images_per_second,
        seconds,
        reason="forced" if settings.force else "new or out of date",
        resumed_images=result.resumed_images,
    )

