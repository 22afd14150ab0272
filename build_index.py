"""Turn a collection of photos into searchable indexes, one per backbone.

    python build_index.py --dataset oxford5k --backbones xception
    python build_index.py --images ~/photos --name holiday --backbones all --weights none
    python build_index.py --dataset oxford5k --pooling gem --scales 1,0.707,0.5 --whiten-on paris6k --dim 512

Everything here is argument parsing; the work is done by `cbir`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from cbir.backbones import BACKBONES, DEFAULT_BACKBONE, KERAS_HUB_INSTALL
from cbir.datasets.registry import DATASETS
from cbir.stores import DEFAULT_STORE


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Extract descriptors for a collection with pretrained Keras backbones and build "
        "Annoy indexes (cosine and euclidean) that app.py searches.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    source = parser.add_argument_group("what to index (one of)")
    source.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        help="a standard collection; downloaded into --data-dir unless already there (default: oxford5k "
        "when --images is not given)",
    )
    source.add_argument("--images", type=Path, help="any folder of images, scanned recursively")
    source.add_argument("--name", help="the collection name for --images (default: the folder's name)")
    source.add_argument(
        "--distractors",
        type=Path,
        metavar="DIR",
        help="append every image under DIR to the database as distractors (revisitop's R1M, or any folder): a "
        "collection of its own, '<collection>+<DIR name>', evaluated with the same ground truth",
    )
    source.add_argument(
        "--add",
        type=Path,
        metavar="NEW_DIR",
        help="with --images DIR --name NAME: add the images under NEW_DIR to every index of the built collection "
        "without describing its old images again (HNSW, exact, Milvus: rows added; Annoy: trees rebuilt from the "
        "stored rows; DBA: recomputed)",
    )
    parser.add_argument(
        "--backbones",
        default=DEFAULT_BACKBONE,
        help="comma-separated backbones, 'study' (the study's six) or 'all'. Known: " + ", ".join(BACKBONES)
        + ". The dinov2_* rows (DINOv2 from keras-hub, Apache-2.0) need: " + KERAS_HUB_INSTALL,
    )
    parser.add_argument(
        "--pooling",
        choices=["gap", "mac", "spoc", "gem", "rmac", "cls"],
        help="how the network's output becomes a descriptor (default: each backbone's own): gap = the study's (global "
        "average pool; VGG16: fc1); mac, spoc, gem (p = 3) and rmac (L = 3) pool the last convolutional map, with the "
        "image's aspect ratio kept (longer side = the input size); cls = a vision transformer's class token (the "
        "dinov2 rows' own; their other poolings read the patch tokens, squashed to a square). Each recipe is an "
        "index of its own (folder <backbone>-<pooling>...)",
    )
    parser.add_argument(
        "--scales",
        help="describe each image at these scales and average the L2-normalised descriptors, e.g. 1,0.707,0.5 "
        "(the literature's; about 1.6-1.8x the time of one scale)",
    )
    parser.add_argument(
        "--whiten-on",
        metavar="COLLECTION",
        help="learn a PCA-whitening on this collection's descriptors of the same recipe and apply it (the standard "
        "protocol: paris6k when building oxford5k, and the reverse; described first if not built yet). The "
        "unwhitened index is built too",
    )
    parser.add_argument("--dim", type=int, help="dimensions the whitening keeps (e.g. 512); default: all")
    parser.add_argument(
        "--dba",
        type=int,
        metavar="K",
        help="database-side augmentation: also build the recipe with each row replaced by the weighted sum of itself "
        "and its K nearest rows (a few seconds at Oxford5k size; queries are described as before)",
    )
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet' (Keras downloads and caches them under KERAS_HOME; for the dinov2 rows: their keras-hub "
        "preset, downloaded into keras-hub's cache), a path to a local weights file, a keras-hub preset directory "
        "(saved with save_to_preset) or handle (hf://..., kaggle://...), or 'none' (random init: a smoke test only; "
        "every result is marked untrained)",
    )
    parser.add_argument(
        "--runtime",
        default="keras",
        choices=["keras", "openvino-f32", "openvino-bf16"],
        help="what runs the network, part of the recipe (queries to the index are described the same way): keras; "
        "openvino-f32 (the same descriptors to about 1e-6, a little faster); openvino-bf16 (about 2x faster where "
        "the CPU has bfloat16 units, descriptors move by a cosine of about 1e-5). OpenVINO: pip install -r "
        "requirements-scale.txt",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    parser.add_argument(
        "--store", "--index", default=DEFAULT_STORE, choices=["auto", "exact", "annoy", "hnsw", "milvus"],
        help="the index beside the descriptors: annoy (the default: cosine.ann and euclidean.ann; searches of "
        "collections small enough to scan still use the exact scan), exact (the numpy scan only; no extra files), hnsw (hnswlib "
        "graphs; pip install -r requirements-scale.txt), milvus (a Milvus collection at --milvus-uri), or auto: "
        "exact up to 100,000 x 2048 descriptor floats (400,000 rows at 512-d), hnsw above (annoy without hnswlib); see "
        "docs/performance.md",
    )  # fmt: skip
    parser.add_argument(
        "--milvus-uri",
        default=os.environ.get("CBIR_MILVUS_URI"),
        help="for --store milvus: a Milvus Lite file (./milvus.db) or a server, http://host:19530 (env "
        "CBIR_MILVUS_URI; a token, if the server needs one, from env CBIR_MILVUS_TOKEN)",
    )
    parser.add_argument("--n-trees", type=int, default=100, help="Annoy trees per index (more: better recall, bigger files)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("CBIR_DATA_DIR", "data")),
        help="where datasets are downloaded and extracted (env CBIR_DATA_DIR)",
    )
    parser.add_argument(
        "--index-dir",
        type=Path,
        default=Path(os.environ.get("CBIR_INDEX_DIR", "indexes")),
        help="where index folders are written (env CBIR_INDEX_DIR)",
    )
    parser.add_argument(
        "--mirror",
        default=os.environ.get("CBIR_MIRROR"),
        help="fetch every dataset archive as MIRROR/<archive file name> instead of the official place (env CBIR_MIRROR)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild indexes that are already up to date")
    parser.add_argument(
        "--input-size",
        type=int,
        help="build the networks at this input size instead of their own (smaller is faster; for smoke tests)",
    )
    parser.add_argument("--workers", type=int, help="image decoding threads (default: a few per core)")
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=512,
        help="images per extraction checkpoint; an interrupted build resumes from the last one",
    )
    parser.add_argument(
        "--executor",
        default="local",
        choices=["local", "ray"],
        help="where the networks run: local (this process; decoding in threads) or ray (a Ray Data pipeline: decoding "
        "in tasks, the network in an actor pool; pip install -r requirements-scale.txt). Either resumes the other's "
        "checkpoints; see the README's 'Extraction on Ray'",
    )
    parser.add_argument(
        "--ray-address",
        default=os.environ.get("RAY_ADDRESS"),
        help="for --executor ray: the cluster to join, e.g. ray://head:10001 or head:6379 (env RAY_ADDRESS); with "
        "neither, Ray starts on this machine",
    )
    parser.add_argument(
        "--ray-actors", type=int, help="for --executor ray: network actors, each building the network once "
        "(default: one per node of the cluster)",
    )  # fmt: skip
    parser.add_argument(
        "--evaluate", action="store_true", help="after building, evaluate: mAP for collections with ground truth, "
        "self-retrieval (edited photos finding their source) for the others"
    )
    parser.add_argument(
        "--export-bundle",
        type=Path,
        metavar="FILE",
        help="after building, pack the collection's indexes, results and thumbnails into FILE (.tar) for "
        "app.py --bundle: a laptop or a Space serves it without the images or a rebuild",
    )
    parser.add_argument("--thumbnail-size", type=int, default=512, help="longest side of a bundle's thumbnails, px")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    arguments = parser.parse_args(argv)
    if arguments.images is not None and arguments.dataset is not None:
        parser.error("give either --dataset or --images, not both")
    if arguments.images is None and arguments.dataset is None:
        arguments.dataset = "oxford5k"
    if arguments.name and arguments.images is None:
        parser.error("--name goes with --images")
    if arguments.add is not None and arguments.images is None:
        parser.error("--add goes with --images DIR --name NAME: the folder collection the images are added to")
    if arguments.store == "milvus" and not arguments.milvus_uri:
        parser.error("--store milvus needs --milvus-uri (a Milvus Lite file such as ./milvus.db, or http://host:19530)")
    if arguments.batch_size < 1 or arguments.n_trees < 1:
        parser.error("--batch-size and --n-trees must be at least 1")
    if arguments.executor != "ray" and (arguments.ray_actors is not None):
        parser.error("--ray-actors goes with --executor ray")
    if arguments.ray_actors is not None and arguments.ray_actors < 1:
        parser.error("--ray-actors must be at least 1")
    if arguments.dim is not None and not arguments.whiten_on:
        parser.error("--dim goes with --whiten-on (it is the dimension the whitening keeps)")
    if arguments.scales is not None:
        try:
            arguments.scales = tuple(float(part) for part in arguments.scales.split(",") if part.strip())
        except ValueError:
            parser.error(f"--scales takes numbers separated by commas, such as 1,0.707,0.5; not {arguments.scales!r}")
    return arguments


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    logging.basicConfig(
        level=logging.DEBUG if arguments.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    # Imported after parsing so that --help answers at once.
    from cbir.backbones import parse_backbones
    from cbir.weights import Weights
    from cbir.build import BuildSettings, build_indexes
    from cbir.recipe import RecipeSettings
    from cbir.build import collection_by_name
    from cbir.datasets import DownloadSettings, folder_collection, prepare_dataset, with_distractors
    from cbir.errors import CbirError
    from cbir.extract import Executor
    from cbir.pooling import Pooling
    from cbir.runtime import Runtime, check_runtime

    try:
        if arguments.executor == "ray":
            from cbir.distributed import require_ray

            require_ray()  # before any download or build: the message names the install
        backbones = parse_backbones(arguments.backbones)
        weights = Weights.parse(arguments.weights)
        download = DownloadSettings.from_env(
            data_dir=arguments.data_dir, mirror=arguments.mirror, progress=not arguments.no_progress
        )
        if arguments.add is not None:
            name = arguments.name or arguments.images.resolve().name
            return add(arguments, name)
        if arguments.images is not None:
            from cbir.add import with_added_folders

            name = arguments.name or arguments.images.resolve().name
            collection = with_added_folders(folder_collection(arguments.images, name), arguments.index_dir)
        else:
            collection = prepare_dataset(arguments.dataset, download)
        if arguments.distractors is not None:
            collection = with_distractors(collection, arguments.distractors)
            logging.info("%s: %d distractors appended", collection.name, len(collection.distractors))
        whitening_source = None
        if arguments.whiten_on and arguments.whiten_on != collection.name:
            whitening_source = collection_by_name(arguments.whiten_on, arguments.index_dir, download)
        logging.info("collection %s: %d images in %s", collection.name, len(collection.images), collection.root)
        recipe = RecipeSettings(
            weights=weights,
            pooling=arguments.pooling and Pooling(arguments.pooling),
            input_size=arguments.input_size,
            scales=arguments.scales,
            whiten_on=arguments.whiten_on,
            whitened_dim=arguments.dim,
            dba=arguments.dba,
            runtime=Runtime(arguments.runtime),
        )
        settings = BuildSettings(
            index_dir=arguments.index_dir,
            recipe=recipe,
            batch_size=arguments.batch_size,
            store=arguments.store,
            store_params={"n_trees": arguments.n_trees, "milvus_uri": arguments.milvus_uri},
            force=arguments.force,
            progress=not arguments.no_progress,
            workers=arguments.workers,
            checkpoint_every=arguments.checkpoint_every,
            executor=Executor(arguments.executor),
            ray_address=arguments.ray_address,
            ray_actors=arguments.ray_actors,
        )
        check_runtime(recipe.runtime)  # before any network is built: bf16 on a CPU without it, no OpenVINO
        outcomes = build_indexes(collection, backbones, settings, whitening_source=whitening_source)
        print_summary(outcomes, weights.untrained)
        if arguments.evaluate and not collection.queries:
            from cbir.search import SearchEngine
            from cbir.self_retrieval import evaluate_self_retrieval, format_self_retrieval

            results = evaluate_self_retrieval(SearchEngine(arguments.index_dir), collection.name,
                                              [outcome.key for outcome in outcomes], progress=not arguments.no_progress)
            print(format_self_retrieval(results))
        elif arguments.evaluate:
            from cbir.evaluate import EvaluationSettings, evaluate_collection, format_summary

            results = evaluate_collection(
                EvaluationSettings(index_dir=arguments.index_dir, collection=collection.name,
                                   recipes=[outcome.key for outcome in outcomes],
                                   progress=not arguments.no_progress),
            )
            print(format_summary(results))
        if arguments.export_bundle:
            export(arguments, collection.name, [outcome.key for outcome in outcomes])
    except KeyboardInterrupt:
        print("\ninterrupted: finished work is kept; run the same command again to resume", file=sys.stderr)
        return 130
    except CbirError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def add(arguments: argparse.Namespace, name: str) -> int:
    """`--add NEW_DIR`: grow every index of the collection; one line per index saying how."""
    from cbir.add import AddSettings, add_images

    settings = AddSettings(batch_size=arguments.batch_size, workers=arguments.workers,
                           checkpoint_every=arguments.checkpoint_every, progress=not arguments.no_progress)  # fmt: skip
    for outcome in add_images(arguments.index_dir, name, arguments.images, arguments.add, settings):
        print(f"{name}/{outcome.key}: {outcome.message} ({outcome.n_images} images now)")
    return 0


def export(arguments: argparse.Namespace, collection: str, recipes: list[str]) -> None:
    from cbir.bundle import OXFORD_PARIS_TERMS, export_bundle

    if arguments.dataset:
        source, terms = f"{arguments.dataset} ({DATASETS[arguments.dataset].access_page})", OXFORD_PARIS_TERMS
    else:
        source, terms = f"the folder {arguments.images.name}", "Your own photos: their terms are whoever took them."
    manifest = export_bundle(arguments.index_dir, collection, arguments.export_bundle, recipes=recipes,
                             max_side=arguments.thumbnail_size, source=source, terms=terms,
                             progress=not arguments.no_progress)  # fmt: skip
    size = arguments.export_bundle.stat().st_size
    print(f"bundle: {arguments.export_bundle} ({size / 2**20:.1f} MB, {manifest.n_images} thumbnails, "
          f"{', '.join(manifest.recipes)}). Serve it with: python app.py --bundle {arguments.export_bundle}")  # fmt: skip
    print(f"terms of the images: {terms}")


def print_summary(outcomes, untrained: bool) -> None:
    from cbir.build import BuildStatus

    if all(outcome.status is BuildStatus.UP_TO_DATE for outcome in outcomes):
        print("Everything is already built; nothing to do (use --force to rebuild).")
    width = max([22] + [len(outcome.key) + 2 for outcome in outcomes])
    print(f"{'recipe':<{width}}{'status':<12}{'images':>8}{'skipped':>9}{'images/s':>10}  folder")
    for outcome in outcomes:
        rate = f"{outcome.images_per_second:.1f}" if outcome.status is BuildStatus.BUILT else "-"
        print(
            f"{outcome.key:<{width}}{outcome.status.value:<12}{outcome.n_images:>8}{outcome.n_skipped:>9}{rate:>10}  {outcome.folder}"
        )
    for outcome in outcomes:
        if outcome.resumed_images:
            print(f"{outcome.key}: resumed an interrupted build ({outcome.resumed_images} images were already done)")
    if untrained:
        print("NOTE: built with untrained (random) weights; rankings are meaningless beyond smoke tests.")


if __name__ == "__main__":
    sys.exit(main())
