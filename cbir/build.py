"""A collection + backbones -> finished index folders: what `build_index.py` and the app call.

Per recipe: extract descriptors (resuming from checkpoints of an interrupted run), then write the
index folder atomically. A folder that already holds the same recipe over the same images, whole,
is left alone unless `force` is set.

A whitened recipe is made from two unwhitened indexes of the same recipe: the collection's own
(built first, and kept: it is the "before whitening" row of the evaluation) and the whitening
source's (built first too, when the source is another collection). A recipe with DBA is made from
the same recipe's index without it. No image is described twice.

With `local_features`, each image is also described by RootSIFT keypoints (cbir.local_features),
stored in the index folder for spatial verification (cbir.verification); a whitened or augmented
index carries its source's.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from cbir import atomic
from cbir.backbones import Backbone
from cbir.trunks import ExtractorCache, keras_versions
from cbir.datasets import DATASETS, DownloadSettings, folder_collection, prepare_dataset
from cbir.datasets.model import Collection, DatasetError
from cbir.errors import SettingsError
from cbir.digests import sha256_file
from cbir.extract import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHECKPOINT_EVERY,
    ExtractionResult,
    Executor,
    extract_descriptors,
    file_stamp,
)
from cbir.images import DEFAULT_LIMITS, ImageLimits
from cbir.index import LoadedIndex, Manifest, StoreSpec, damage, load_index, write_index
from cbir.local_features import LocalFeatureSettings, describe_images
from cbir.layout import DESCRIPTORS, IndexLayout, IndexLoadError, read_collection_record, write_collection_record
from cbir.thumbnails import ThumbnailFolder
from cbir.recipe import Recipe, RecipeSettings
from cbir.distances import Metric
from cbir.ranking import EXACT_SEARCH_LIMIT, database_side_augmentation
from cbir.stores import AUTO, DEFAULT_STORE, get_store_kind, hnsw
from cbir.whitening import Whitening, WhiteningSource, learn_whitening

logger = logging.getLogger(__name__)


@dataclass
class BuildSettings:
    index_dir: Path = Path("indexes")
    recipe: RecipeSettings = field(default_factory=RecipeSettings)  # applied to each backbone built
    # A cbir.stores name, or "auto": chosen by the collection's size (choose_store).
    store: str = DEFAULT_STORE
    # The stores' build parameters by StoreParameter name (e.g. "n_trees", "milvus_uri"); the chosen
    # store takes its own, its defaults for the rest.
    store_params: dict[str, Any] = field(default_factory=dict)
    batch_size: int = DEFAULT_BATCH_SIZE
    force: bool = False
    progress: bool = True
    workers: int | None = None
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY  # images per extraction checkpoint
    executor: Executor = Executor.LOCAL  # where the networks run: this process, or a Ray cluster
    ray_address: str | None = None  # for Executor.RAY: a cluster's address (None: env RAY_ADDRESS, else local)
    ray_actors: int | None = None  # for Executor.RAY: network actors (None: one per node)
    limits: ImageLimits = DEFAULT_LIMITS
    thumbnails: bool = True  # make the page's thumbnail of every image once the index is built
    local_features: bool = False  # also store each image's local features (cbir.local_features)
    local_feature_settings: LocalFeatureSettings = field(default_factory=LocalFeatureSettings)

    def recipe_for(self, backbone: Backbone) -> Recipe:
        return self.recipe.for_backbone(backbone.name)

    def store_spec(self, collection: str = "", recipe: Recipe | None = None, rows: int = 0) -> StoreSpec:
        """The store to build for `rows` descriptors of `recipe` in `collection` ("auto" resolved)."""
        name = choose_store(rows, recipe.dim if recipe else 0) if self.store == AUTO else self.store
        kind = get_store_kind(name)
        return StoreSpec(kind.name, kind.params_for(self.store_params, collection, recipe))


def choose_store(rows: int, dim: int) -> str:
    """The store for a collection of `rows` x `dim` descriptors, from bench/results (docs/performance.md):
    none ("exact") where the search scans every row anyway (cbir.ranking.EXACT_SEARCH_LIMIT), HNSW
    above (far faster than a scan at the same recall), Annoy when hnswlib is not installed
    (requirements-scale.txt)."""
    if rows * dim <= EXACT_SEARCH_LIMIT:
        return "exact"
    if hnsw.available():
        return "hnsw"
    logger.warning("%d x %d descriptors: an HNSW index would serve them best, but hnswlib is not installed (%s); "
                   "building Annoy", rows, dim, hnsw.INSTALL_HINT)  # fmt: skip
    return "annoy"


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
    changed = changed_images(Path(collection.root), manifest)
    if changed:
        return f"{len(changed)} image{'s' if len(changed) > 1 else ''} changed since it was built (first: {changed[0]})"
    wanted = settings.store_spec(collection.name, recipe, len(manifest.images))
    if manifest.store.kind != wanted.kind or any(manifest.store.params.get(k) != v for k, v in wanted.params.items()):
        return "other store settings"
    # Local features asked for and missing (or made otherwise); a build without the flag keeps them.
    if settings.local_features and manifest.local_features != settings.local_feature_settings:
        return "local features wanted" if manifest.local_features is None else "other local feature settings"
    problems = damage(folder, manifest)
    if problems:
        return "damaged (" + "; ".join(problems) + ")"
    return None


def image_stamps(root: Path, images: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Each image's (size, modification time): what tells a file replaced under the same name."""
    return {image: file_stamp(Path(root) / image) for image in images}


def changed_images(root: Path, manifest: Manifest) -> list[str]:
    """The images recorded in the manifest whose file is not as the build found it, in name order."""
    return sorted(image for image, stamp in manifest.image_stamps.items() if file_stamp(Path(root) / image) != stamp)


def build_indexes(
    collection: Collection,
    backbones: Sequence[Backbone],
    settings: BuildSettings,
    *,
    extractors: ExtractorCache | None = None,
    on_progress: BuildProgress | None = None,
    whitening_source: Collection | None = None,
) -> list[BuildOutcome]:
    """Build (or keep) one index folder per backbone (with the settings' recipe) for `collection`.

    With whitening (`settings.recipe.whiten_on`), the outcomes are the unwhitened index and the whitened
    one, per backbone. `whitening_source`: the collection named by `whiten_on` when it is another
    one; without it, that collection's unwhitened index must already be built.
    """
    extractors = extractors if extractors is not None else ExtractorCache()
    if settings.recipe.whiten_on and settings.recipe.whiten_on != collection.name:
        if whitening_source is not None and whitening_source.name != settings.recipe.whiten_on:
            raise ValueError(f"whitening source {whitening_source.name} is not {settings.recipe.whiten_on}")
        unwhitened = replace(settings, recipe=settings.recipe.unwhitened)
        if whitening_source is not None:
            logger.info("%s: describing it first, to learn the whitening on", whitening_source.name)
            build_indexes(whitening_source, backbones, unwhitened, extractors=extractors, on_progress=on_progress)
    layout = IndexLayout(settings.index_dir)
    try:
        previous_root = read_collection_record(layout, collection.name).root
    except IndexLoadError:
        previous_root = None
    root_changed = previous_root is not None and previous_root != Path(collection.root).resolve()
    new_collection = not layout.record_path(collection.name).exists()
    write_collection_record(layout, collection)
    for leftover in atomic.remove_leftovers(layout.collection_dir(collection.name)):
        logger.info("removed %s left by an interrupted build", leftover.name)
    outcomes = []
    try:
        for backbone in backbones:
            recipe = settings.recipe_for(backbone)
            base = _build_or_keep(collection, recipe.base, settings, extractors, layout, root_changed, on_progress)
            outcomes.append(base)
            if recipe.whitening is not None:
                outcomes.append(_whiten(collection, recipe.before_dba, base, settings, layout, root_changed))
            if recipe.dba:
                outcomes.append(_augment(collection, recipe, outcomes[-1], settings, layout, root_changed))
    except BaseException:
        if new_collection:
            _remove_if_only_the_record(layout, collection.name)
        raise
    if settings.thumbnails and outcomes:
        # The page shows a thumbnail of every hit: made now, so that no search waits for them.
        images = Manifest.read(outcomes[0].folder).images
        record = read_collection_record(layout, collection.name)
        ThumbnailFolder(layout.thumbnails_dir(collection.name), collection.name, record.root).make_all(
            images, progress=settings.progress
        )
    return outcomes


def _remove_if_only_the_record(layout: IndexLayout, name: str) -> None:
    """A first build that stopped before writing anything (the weights could not be downloaded, a
    bad setting) leaves no collection behind: a folder holding only its record would be listed as a
    collection with nothing in it. Checkpoints of an interrupted extraction are kept (they resume)."""
    folder = layout.collection_dir(name)
    if [path.name for path in folder.iterdir()] == [layout.record_path(name).name]:
        layout.record_path(name).unlink()
        folder.rmdir()
        logger.info("%s: nothing was built; its folder %s is removed", name, folder)


def _build_or_keep(
    collection: Collection,
    recipe: Recipe,
    settings: BuildSettings,
    extractors: ExtractorCache,
    layout: IndexLayout,
    root_changed: bool,
    on_progress: BuildProgress | None,
) -> BuildOutcome:
    folder = layout.index_dir(collection.name, recipe.key)
    reason = _why_rebuild(folder, collection, recipe, settings, root_changed)
    if reason is None:
        return _kept(collection, recipe, folder)
    if folder.exists():
        logger.info("%s/%s: rebuilding (%s)", collection.name, recipe.key, reason)
    return _build_one(collection, recipe, settings, extractors, layout, reason, on_progress)


def _kept(collection: Collection, recipe: Recipe, folder: Path) -> BuildOutcome:
    manifest = Manifest.read(folder)
    kept = f"already built ({len(manifest.images)} images, {recipe.weights_identity})"
    logger.info("%s/%s: %s; nothing to do (--force rebuilds)", collection.name, recipe.key, kept)
    return BuildOutcome(recipe, folder, BuildStatus.UP_TO_DATE, len(manifest.images), len(manifest.skipped), reason=kept)


def _derived(
    collection: Collection,
    recipe: Recipe,
    before: BuildOutcome,
    settings: BuildSettings,
    layout: IndexLayout,
    root_changed: bool,
) -> tuple[Path, str | None, dict[str, str]]:
    """(folder, why it must be computed again or None, what it is derived from) for an index whose
    rows are computed from `before`'s rows (whitened or augmented)."""
    folder = layout.index_dir(collection.name, recipe.key)
    derived_from = {"key": before.key, "descriptors_sha256": sha256_file(before.folder / DESCRIPTORS)}
    reason = _why_rebuild(folder, collection, recipe, settings, root_changed)
    if reason is None and Manifest.read(folder).derived_from != derived_from:
        reason = f"its {before.key} rows changed"
    return folder, reason, derived_from


def _whiten(
    collection: Collection,
    recipe: Recipe,
    base: BuildOutcome,
    settings: BuildSettings,
    layout: IndexLayout,
    root_changed: bool,
) -> BuildOutcome:
    """The whitened index: learn the whitening on the source's unwhitened rows, apply it to the
    collection's unwhitened rows (`base`, just built or kept)."""
    started = time.perf_counter()
    spec = recipe.whitening
    source_folder = layout.index_dir(spec.source, recipe.base.key)
    try:
        source = load_index(source_folder, expected=recipe.base)
    except IndexLoadError as error:
        raise IndexLoadError(
            f"the whitening is learned on {spec.source}'s {recipe.base.key} descriptors, which are not built: {error}"
        ) from None
    source_sha = sha256_file(source_folder / DESCRIPTORS)
    folder, reason, derived_from = _derived(collection, recipe, base, settings, layout, root_changed)
    if reason is None:
        learned_on = Manifest.read(folder).whitening
        if learned_on is not None and learned_on.descriptors_sha256 == source_sha:
            return _kept(collection, recipe, folder)
        reason = f"{spec.source}'s {recipe.base.key} descriptors changed"
    rows = load_index(base.folder, expected=recipe.base)
    whitening = learn_whitening(np.asarray(source.descriptors), spec.dim, source=f"{spec.source}/{recipe.base.key}")
    learned_on = WhiteningSource(
        collection=spec.source,
        recipe_key=recipe.base.key,
        n_descriptors=len(source),
        descriptors_sha256=source_sha,
        same_collection=spec.source == collection.name,
    )
    if learned_on.same_collection:
        logger.warning(
            "%s: whitening learned on the collection it is applied to; the standard protocol learns it on "
            "another one (Paris6k for Oxford5k and the reverse), and results are labelled accordingly",
            recipe.key,
        )
    whitened = whitening.apply(np.asarray(rows.descriptors))
    source.close()
    logger.info("%s/%s: whitened (%s), learned on %d descriptors of %s", collection.name, recipe.key, reason,
                len(source), spec.source)  # fmt: skip
    return _write_derived(collection, recipe, rows, whitened, settings, folder, reason, started,
                          derived_from, whitening, learned_on)  # fmt: skip


def _augment(
    collection: Collection,
    recipe: Recipe,
    before: BuildOutcome,
    settings: BuildSettings,
    layout: IndexLayout,
    root_changed: bool,
) -> BuildOutcome:
    """The DBA index: every row of `before` (the same recipe without DBA) replaced by the weighted
    sum of itself and its `recipe.dba` nearest rows, by cosine similarity (cbir.ranking)."""
    started = time.perf_counter()
    folder, reason, derived_from = _derived(collection, recipe, before, settings, layout, root_changed)
    if reason is None:
        return _kept(collection, recipe, folder)
    rows = load_index(before.folder, expected=recipe.before_dba)
    augmented = database_side_augmentation(np.asarray(rows.descriptors), Metric.COSINE, k=recipe.dba)
    logger.info("%s/%s: augmented with %d neighbours per row (%s)", collection.name, recipe.key, recipe.dba, reason)
    return _write_derived(collection, recipe, rows, augmented, settings, folder, reason, started,
                          derived_from, rows.whitening, rows.manifest.whitening)  # fmt: skip


def _write_derived(
    collection: Collection,
    recipe: Recipe,
    rows: LoadedIndex,
    descriptors: np.ndarray,
    settings: BuildSettings,
    folder: Path,
    reason: str,
    started: float,
    derived_from: dict[str, str],
    whitening: Whitening | None,
    learned_on: WhiteningSource | None,
) -> BuildOutcome:
    """Write an index whose rows were computed from `rows` (the same images, in the same order)."""
    manifest = Manifest(
        collection=collection.name,
        recipe=recipe,
        images=list(rows.manifest.images),
        skipped=list(rows.manifest.skipped),
        store=settings.store_spec(collection.name, recipe, len(rows.manifest.images)),
        versions=keras_versions(),
        timings={"derive_seconds": round(time.perf_counter() - started, 3)},
        whitening=learned_on,
        derived_from=derived_from,
        local_features=rows.manifest.local_features,
    )
    carried = [rows.local_features.image(row) for row in range(len(rows))] if rows.has_local_features else None
    write_index(folder, descriptors, manifest, whitening=whitening, local_features=carried)
    rows.close()
    return BuildOutcome(
        recipe, folder, BuildStatus.BUILT, len(manifest.images), len(manifest.skipped),
        seconds=time.perf_counter() - started, reason=reason,
    )  # fmt: skip


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
    # Stamped before reading: a file replaced during the build is seen as changed by the next one.
    stamps = image_stamps(Path(collection.root), collection.images)
    checkpoint_dir = layout.checkpoint_dir(collection.name, recipe.key)
    result, built = _extract(collection, recipe, settings, extractors, checkpoint_dir, on_progress)
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
        store=settings.store_spec(collection.name, recipe, len(result.images)),
        versions=keras_versions(),
        timings={
            "model_build_seconds": round(built - started, 3),
            "extraction_seconds": round(result.seconds, 3),
            "images_per_second": round(result.images_per_second, 2),
        },
        image_stamps=stamps,
    )
    local_features = None
    if settings.local_features:
        described = time.perf_counter()
        local_features = describe_images(Path(collection.root), result.images, settings.local_feature_settings,
                                         limits=settings.limits)  # fmt: skip
        manifest.local_features = settings.local_feature_settings
        manifest.timings["local_features_seconds"] = round(time.perf_counter() - described, 3)
    folder = layout.index_dir(collection.name, recipe.key)
    write_index(folder, result.descriptors, manifest, local_features=local_features)
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


def _extract(
    collection: Collection,
    recipe: Recipe,
    settings: BuildSettings,
    extractors: ExtractorCache,
    checkpoint_dir: Path,
    on_progress: BuildProgress | None,
) -> tuple[ExtractionResult, float]:
    """The recipe's descriptors of the collection, and when its network was built (on Ray, each
    actor builds its own: the driver builds none)."""
    report = (lambda done, total: on_progress(recipe.key, done, total)) if on_progress else None
    common = dict(batch_size=settings.batch_size, checkpoint_dir=checkpoint_dir, checkpoint_every=settings.checkpoint_every,
                  limits=settings.limits, progress=settings.progress, on_progress=report)  # fmt: skip
    if settings.executor is Executor.RAY:
        from cbir.distributed import extract_on_ray  # here only: the demo never imports Ray

        started = time.perf_counter()
        result = extract_on_ray(recipe, Path(collection.root), collection.images, address=settings.ray_address,
                                actors=settings.ray_actors, **common)  # fmt: skip
        return result, started
    extractor = extractors.get(recipe)
    built = time.perf_counter()
    return extract_descriptors(extractor, Path(collection.root), collection.images, workers=settings.workers, **common), built


def collection_by_name(name: str, index_dir: Path, download: DownloadSettings) -> Collection | None:
    """A collection named on the command line (the whitening source): a known dataset (prepared, that
    is downloaded if missing), or a folder collection built before (its recorded images folder).
    None when only its index is left (a bundle): its built rows are then used as they are."""
    if name in DATASETS:
        return prepare_dataset(name, download)
    layout = IndexLayout(index_dir)
    try:
        record = read_collection_record(layout, name)
    except IndexLoadError:
        raise SettingsError(
            f"{name} is neither a known dataset ({', '.join(sorted(DATASETS))}) nor a collection built under "
            f"{layout.root}. Build it first: python build_index.py --images <folder> --name {name}"
        ) from None
    if not record.images_found:
        return None
    return folder_collection(record.root, name)
