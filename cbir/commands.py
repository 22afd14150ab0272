"""What each `cbir` command does once its options are parsed (the parsers are cbir.cli): the
options reach the library's settings (RecipeSettings, BuildSettings, AddSettings, ServeOptions) by
field name, and the library does the work. The heavy modules are imported inside each command, so
that `--help` answers at once."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cbir.datasets.registry import DATASETS, DEFAULT_DATASET
from cbir.extract import Executor
from cbir.pooling import Pooling
from cbir.stores import store_parameters

if TYPE_CHECKING:
    from cbir.recipe import RecipeSettings

logger = logging.getLogger(__name__)

Settings = TypeVar("Settings")


def by_field(settings: Callable[..., Settings], arguments: argparse.Namespace, **given: Any) -> Settings:
    """`settings` (a dataclass) made from the parsed options named like its fields, and `given`."""
    names = {field.name for field in dataclasses.fields(settings)}
    return settings(**{name: value for name, value in vars(arguments).items() if name in names} | given)


def store_params(arguments: argparse.Namespace) -> dict[str, Any]:
    """Every store parameter's value by name (BuildSettings.store_params): the chosen store takes its own."""
    return {parameter.name: getattr(arguments, parameter.name) for parameter in store_parameters()}


def recipe_settings(arguments: argparse.Namespace) -> RecipeSettings:
    """The recipe the options ask for (the recipe parent's options, --weights and --input-size)."""
    from cbir.recipe import RecipeSettings
    from cbir.weights import Weights

    return by_field(RecipeSettings, arguments, weights=Weights.parse(arguments.weights))


def run_build(arguments: argparse.Namespace) -> int:
    # Imported here, after parsing, so that --help answers at once.
    from cbir.add import with_added_folders
    from cbir.backbones import parse_backbones
    from cbir.build import BuildSettings, build_indexes, collection_by_name
    from cbir.datasets import DownloadSettings, folder_collection, prepare_dataset, with_distractors
    from cbir.runtime import check_runtime

    if arguments.executor is Executor.RAY:
        from cbir.distributed import require_ray

        require_ray()  # before any download or build: the message names the install
    backbones = parse_backbones(arguments.backbones)
    recipe = recipe_settings(arguments)  # the weights are checked before any download
    download = DownloadSettings.from_env(data_dir=arguments.data_dir, mirror=arguments.mirror, progress=arguments.progress)
    if arguments.images is not None:
        name = arguments.name or arguments.images.resolve().name
        collection = with_added_folders(folder_collection(arguments.images, name), arguments.index_dir)
    else:
        collection = prepare_dataset(arguments.dataset or DEFAULT_DATASET, download)
    if arguments.distractors is not None:
        collection = with_distractors(collection, arguments.distractors)
        logger.info("%s: %d distractors appended", collection.name, len(collection.distractors))
    whitening_source = None
    if arguments.whiten_on and arguments.whiten_on != collection.name:
        whitening_source = collection_by_name(arguments.whiten_on, arguments.index_dir, download)
    logger.info("collection %s: %d images in %s", collection.name, len(collection.images), collection.root)
    settings = by_field(BuildSettings, arguments, recipe=recipe, store_params=store_params(arguments))
    check_runtime(recipe.runtime)  # before any network is built: bf16 on a CPU without it, no OpenVINO
    outcomes = build_indexes(collection, backbones, settings, whitening_source=whitening_source)
    print_build_summary(outcomes, recipe.weights.untrained)
    recipes = [outcome.key for outcome in outcomes]
    if arguments.evaluate:
        from cbir.evaluation import EvaluationSettings
        from cbir.evaluation.either import evaluate_built

        print(evaluate_built(EvaluationSettings(arguments.index_dir, collection.name, recipes, progress=arguments.progress)))
    if arguments.bundle:
        export(arguments.index_dir, collection.name, arguments.bundle, recipes, arguments.thumbnail_size,
               arguments.progress)  # fmt: skip
    return 0


def print_build_summary(outcomes, untrained: bool) -> None:
    from cbir.build import BuildStatus

    if all(outcome.status is BuildStatus.UP_TO_DATE for outcome in outcomes):
        print("Everything is already built; nothing to do (use --force to rebuild).")
    width = max([22] + [len(outcome.key) + 2 for outcome in outcomes])
    print(f"{'recipe':<{width}}{'status':<12}{'images':>8}{'skipped':>9}{'images/s':>10}  folder")
    for outcome in outcomes:
        rate = f"{outcome.images_per_second:.1f}" if outcome.status is BuildStatus.BUILT else "-"
        print(f"{outcome.key:<{width}}{outcome.status.value:<12}{outcome.n_images:>8}{outcome.n_skipped:>9}"
              f"{rate:>10}  {outcome.folder}")  # fmt: skip
    for outcome in outcomes:
        if outcome.resumed_images:
            print(f"{outcome.key}: resumed an interrupted build ({outcome.resumed_images} images were already done)")
    if untrained:
        print("NOTE: built with untrained (random) weights; rankings are meaningless beyond smoke tests.")


def run_add(arguments: argparse.Namespace) -> int:
    """Grow every index of the collection; one line per index saying how."""
    from cbir.add import AddSettings, add_images

    name = arguments.name or arguments.images.resolve().name
    new_images = arguments.new_images or arguments.added_images
    for outcome in add_images(arguments.index_dir, name, arguments.images, new_images, by_field(AddSettings, arguments)):
        print(f"{name}/{outcome.key}: {outcome.message} ({outcome.n_images} images now)")
    return 0


def recipes_to_evaluate(text: str, pooling: Pooling | None, built: Sequence[str]) -> tuple[list[str], list[str]]:
    """(recipe keys to evaluate, keys asked for that are not built) for a --backbones value.

    'all' means every backbone of the registry, as in `cbir build`: the ones not built are
    reported and left out. Backbones named one by one must be built.
    """
    from cbir.backbones import parse_backbones
    from cbir.recipe import Recipe

    keys = [Recipe.create(b.name, pooling=pooling, weights="none").key for b in parse_backbones(text)]
    if text.strip().lower() == "all":
        return [k for k in keys if k in built], [k for k in keys if k not in built]
    return keys, []


def run_evaluate(arguments: argparse.Namespace) -> int:
    from cbir.diffusion import Diffusion
    from cbir.evaluation import EvaluationSettings
    from cbir.evaluation.either import evaluate_built
    from cbir.layout import IndexLoadError, build_command
    from cbir.protocols import get_protocol
    from cbir.ranking import AlphaQueryExpansion
    from cbir.search import SearchEngine
    from cbir.verification import SpatialVerification

    engine = SearchEngine(arguments.index_dir)
    collection = arguments.collection
    built = [info.key for info in engine.available() if info.collection == collection]
    if arguments.recipes:
        asked = [key.strip() for key in arguments.recipes.split(",") if key.strip()]
        recipes = built if arguments.recipes.strip().lower() == "all" else asked
        not_built = [key for key in asked if key not in built and key.lower() != "all"]
        if not_built:
            raise IndexLoadError(f"not built for {collection}: {', '.join(not_built)}. Built: {', '.join(built) or 'nothing'}")
    else:
        recipes, not_built = recipes_to_evaluate(arguments.backbones, arguments.pooling, built)
    if not_built and recipes:
        logger.info("not built for %s, left out: %s", collection, ", ".join(not_built))
    if not recipes:
        raise IndexLoadError(f"nothing is built for {collection}. Build it: {build_command(collection)}")
    settings = EvaluationSettings(
        index_dir=arguments.index_dir,
        collection=collection,
        recipes=recipes,
        metrics=[part.strip() for part in arguments.metrics.split(",") if part.strip()],
        query_modes=[part.strip() for part in arguments.modes.split(",") if part.strip()],
        protocols=[get_protocol(p.strip()) for p in arguments.protocols.split(",")] if arguments.protocols else None,
        progress=arguments.progress,
        query_expansion=None if arguments.no_query_expansion else AlphaQueryExpansion(arguments.qe_n, arguments.qe_alpha),
        diffusion=Diffusion() if arguments.diffusion else None,
        verification=SpatialVerification() if arguments.verify else None,
    )
    print(evaluate_built(settings, engine, self_queries=arguments.self_queries))
    return 0


def run_export(arguments: argparse.Namespace) -> int:
    recipes = [key.strip() for key in arguments.recipes.split(",") if key.strip()] if arguments.recipes else None
    export(arguments.index_dir, arguments.collection, arguments.bundle, recipes, arguments.thumbnail_size,
           arguments.progress)  # fmt: skip
    return 0


def export(index_dir: Path, collection: str, bundle: Path, recipes: list[str] | None, max_side: int, progress: bool) -> None:
    """Pack a built collection into a bundle, saying where its images come from and under what terms."""
    from cbir.bundle import OXFORD_PARIS_TERMS, export_bundle
    from cbir.layout import IndexLayout, read_collection_record

    dataset = collection.partition("+")[0]
    if dataset in DATASETS:
        source, terms = f"{dataset} ({DATASETS[dataset].access_page})", OXFORD_PARIS_TERMS
    else:
        folder = read_collection_record(IndexLayout(index_dir), collection).root.name
        source, terms = f"the folder {folder}", "Your own photos: their terms are whoever took them."
    manifest = export_bundle(index_dir, collection, bundle, recipes=recipes, max_side=max_side, source=source,
                             terms=terms, progress=progress)  # fmt: skip
    size = bundle.stat().st_size
    print(f"bundle: {bundle} ({size / 2**20:.1f} MB, {manifest.n_images} thumbnails, {', '.join(manifest.recipes)}). "
          f"Serve it with: python app.py --bundle {bundle}")  # fmt: skip
    print(f"terms of the images: {terms}")


def run_serve(arguments: argparse.Namespace) -> int:
    from cbir_ui.server import ServeOptions, serve  # the page (and later Gradio) only for this command

    return serve(by_field(ServeOptions, arguments))


def run_list(arguments: argparse.Namespace) -> int:
    """Every built collection: its recipes with their store, rows and whether they are evaluated,
    and the folders that cannot be loaded, each with its fix."""
    from cbir.evaluation import load_results
    from cbir.index import Manifest
    from cbir.catalogue import scan_indexes
    from cbir.self_retrieval import load_self_retrieval

    found, broken = scan_indexes(arguments.index_dir)
    if not found and not broken:
        print(f"nothing is built under {arguments.index_dir}. Build something: cbir build --images <folder> "
              f"--weights none (a smoke test) or cbir build --dataset {DEFAULT_DATASET}")  # fmt: skip
        return 0
    collections = sorted({info.collection for info in found} | {index.collection for index in broken})
    for collection in collections:
        results, self_retrieval = load_results(arguments.index_dir, collection), load_self_retrieval(arguments.index_dir, collection)
        evaluated = {row.recipe for row in results.rows} if results else set()
        evaluated |= {row.recipe for row in self_retrieval.rows} if self_retrieval else set()
        print(collection)
        for info in sorted((info for info in found if info.collection == collection), key=lambda info: info.key):
            store = Manifest.read(info.folder).store.kind
            state = "evaluated" if info.key in evaluated else "not evaluated"
            untrained = ", untrained" if info.untrained else ""
            print(f"  {info.key:<32} {store:<7} {info.n_images:>8} rows  {info.dim:>5}-d  {state}{untrained}")
        for index in (index for index in broken if index.collection == collection):
            print(f"  {index.key:<32} DAMAGED: {index.problem}")
    return 0
