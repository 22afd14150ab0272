"""A collection + backbones -> finished index folders: what `build_index.py` and the app call.

Per recipe: extract descriptors (resuming from checkpoints of an interrupted run), then write the
index folder atomically. A folder that already holds the same recipe over the same images, whole,
is left alone unless `force` is set.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from cbir import atomic
from cbir.backbones import Backbone, ExtractorCache, Weights, WeightsKind, keras_versions
from cbir.datasets.model import Collection, DatasetError
from cbir.extract import DEFAULT_BATCH_SIZE, DEFAULT_CHECKPOINT_EVERY, extract_descriptors
from cbir.images import DEFAULT_LIMITS, ImageLimits
from cbir.index import Manifest, StoreSpec, damage, write_index
from cbir.layout import IndexLayout, IndexLoadError, read_collection_record, write_collection_record
from cbir.pooling import Pooling
from cbir.recipe import Recipe
from cbir.stores.annoy import DEFAULT_N_TREES

logger = logging.getLogger(__name__)


@dataclass
class BuildSettings:
    index_dir: Path = Path("indexes")
    weights: Weights = field(default_factory=lambda: Weights(WeightsKind.IMAGENET))
    pooling: Pooling = Pooling.GAP
    input_size: int | None = None  # None: each backbone's own size; smaller sizes are for tests
    store: str = "annoy"
    n_trees: int = DEFAULT_N_TREES
    batch_size: int = DEFAULT_BATCH_SIZE
    force: bool = False
    progress: bool = True
    workers: int | None = None
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY  # images per extraction checkpoint
    limits: ImageLimits = DEFAULT_LIMITS

    def recipe_for(self, backbone: Backbone) -> Recipe:
        return Recipe.create(backbone.name, pooling=self.pooling, input_size=self.input_size, weights=self.weights)

    def store_spec(self) -> StoreSpec:
        return StoreSpec(self.store, {"n_trees": self.n_trees} if self.store == "annoy" else {})


class BuildStatus(str, Enum):
    BUILT = "built"
    UP_TO_DATE = "up to date"


@dataclass
class BuildOutcome:
    recipe: Recipe
    folder: Path
    status: BuildStatus
    n_images: int
    n_skipped: int
    images_per_second: float = 0.0
    seconds: float = 0.0
    reason: str = ""  # why it was (re)built or left alone
    resumed_images: int = 0  # images taken from checkpoints of an interrupted run

    @property
    def key(self) -> str:
        return self.recipe.key


BuildProgress = Callable[[str, int, int], None]  # (recipe key, images done, images total)


def _why_rebuild(
    folder: Path, collection: Collection, recipe: Recipe, settings: BuildSettings, root_changed: bool
) -> str | None:
    """Why the folder must be (re)built, or None when it can be kept as it is."""
    if settings.force:
        return "forced"
    try:
        manifest = Manifest.read(folder)
    except IndexLoadError:
        return "new" if not folder.exists() else "unreadable manifest"
    if manifest.recipe.identity() != recipe.identity():
        return "another recipe, weights or input size"
    if sorted(manifest.images + [s.image for s in manifest.skipped]) != sorted(collection.images):
        return "the collection's images changed"
    if root_changed:
        return "the collection's folder changed"
    wanted = settings.store_spec()
    if manifest.store.kind != wanted.kind or any(manifest.store.params.get(k) != v for k, v in wanted.params.items()):
        return "other store settings"
    problems = damage(folder, manifest)
    if problems:
        return "damaged (" + "; ".join(problems) + ")"
    return None


def build_indexes(
    collection: Collection,
    backbones: Sequence[Backbone],
    settings: BuildSettings,
    *,
    extractors: ExtractorCache | None = None,
    on_progress: BuildProgress | None = None,
) -> list[BuildOutcome]:
    """Build (or keep) one index folder per backbone (with the settings' recipe) for `collection`."""
    extractors = extractors or ExtractorCache()
    layout = IndexLayout(settings.index_dir)
    try:
        previous_root = read_collection_record(layout, collection.name).root
    except IndexLoadError:
        previous_root = None
    root_changed = previous_root is not None and previous_root != Path(collection.root).resolve()
    write_collection_record(layout, collection)
    for leftover in atomic.remove_leftovers(layout.collection_dir(collection.name)):
        logger.info("removed %s left by an interrupted build", leftover.name)
    outcomes = []
    for backbone in backbones:
        recipe = settings.recipe_for(backbone)
        folder = layout.index_dir(collection.name, recipe.key)
        reason = _why_rebuild(folder, collection, recipe, settings, root_changed)
        if reason is None:
            manifest = Manifest.read(folder)
            kept = f"already built ({len(manifest.images)} images, {recipe.weights.identity})"
            logger.info("%s/%s: %s; nothing to do (--force rebuilds)", collection.name, recipe.key, kept)
            outcomes.append(
                BuildOutcome(
                    recipe, folder, BuildStatus.UP_TO_DATE, len(manifest.images), len(manifest.skipped), reason=kept
                )
            )
            continue
        if folder.exists():
            logger.info("%s/%s: rebuilding (%s)", collection.name, recipe.key, reason)
        outcomes.append(_build_one(collection, recipe, settings, extractors, layout, reason, on_progress))
    return outcomes


def _build_one(
    collection: Collection,
    recipe: Recipe,
    settings: BuildSettings,
    extractors: ExtractorCache,
    layout: IndexLayout,
    reason: str,
    on_progress: BuildProgress | None,
) -> BuildOutcome:
    started = time.perf_counter()
    extractor = extractors.get(recipe)
    built = time.perf_counter()
    checkpoint_dir = layout.checkpoint_dir(collection.name, recipe.key)
    result = extract_descriptors(
        extractor,
        Path(collection.root),
        collection.images,
        batch_size=settings.batch_size,
        workers=settings.workers,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=settings.checkpoint_every,
        limits=settings.limits,
        progress=settings.progress,
        on_progress=(lambda done, total: on_progress(recipe.key, done, total)) if on_progress else None,
    )
    if not result.images:
        raise DatasetError(
            f"none of the {len(collection.images)} images of {collection.name} could be read; "
            f"first problem: {result.skipped[0].reason if result.skipped else 'no images'}"
        )
    manifest = Manifest(
        collection=collection.name,
        recipe=recipe,
        images=result.images,
        skipped=result.skipped,
        store=settings.store_spec(),
        versions=keras_versions(),
        timings={
            "model_build_seconds": round(built - started, 3),
            "extraction_seconds": round(result.seconds, 3),
            "images_per_second": round(result.images_per_second, 2),
        },
    )
    folder = layout.index_dir(collection.name, recipe.key)
    write_index(folder, result.descriptors, manifest)
    # Checkpoints are removed only once the index exists.
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    seconds = time.perf_counter() - started
    logger.info(
        "%s/%s: %d images indexed, %d skipped, %.1f images/s, %.1f s in all%s",
        collection.name,
        recipe.key,
        len(result.images),
        len(result.skipped),
        result.images_per_second,
        seconds,
        " (UNTRAINED weights)" if recipe.untrained else "",
    )
    return BuildOutcome(
        recipe,
        folder,
        BuildStatus.BUILT,
        len(result.images),
        len(result.skipped),
        result.images_per_second,
        seconds,
        reason=reason,
        resumed_images=result.resumed_images,
    )
