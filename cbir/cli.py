"""The `cbir` command: every command line of the project, built from shared parent parsers.

    cbir build --dataset oxford5k --backbones xception        # python build_index.py ...
    cbir build --images ~/photos --name holiday --weights none
    cbir add ~/photos/2026-trip --images ~/photos --name holiday
    cbir evaluate --collection oxford5k                        # python -m cbir.evaluate ...
    cbir export oxford5k oxford5k.tar
    cbir serve --bundle oxford5k.tar                           # python app.py ...
    cbir list

Only parsing lives here: the work is done by `cbir` (and the page by `cbir_ui.server`). Choices
and defaults are read from the registries and the library's constants; the options of a recipe,
an extraction and a store reach RecipeSettings / BuildSettings / AddSettings / ServeOptions by
field name. A `CbirError` ends a command with its one-line message (exit 2), Ctrl-C with how to
resume (exit 130); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from cbir import commands
from cbir.backbones import BACKBONES, DEFAULT_BACKBONE, KERAS_HUB_INSTALL
from cbir.datasets.registry import DATASETS, DEFAULT_DATASET
from cbir.distances import Metric
from cbir.errors import CbirError
from cbir.extract import DEFAULT_BATCH_SIZE, DEFAULT_CHECKPOINT_EVERY, Executor
from cbir.pooling import Pooling
from cbir.protocols import QueryMode
from cbir.ranking import QUERY_EXPANSION_ALPHA, QUERY_EXPANSION_NEIGHBOURS
from cbir.runtime import Runtime
from cbir.self_retrieval import DEFAULT_QUERIES
from cbir.stores import AUTO, DEFAULT_STORE, get_store_kind, store_choices, store_kinds, store_parameters
from cbir.thumbnails import DEFAULT_MAX_SIDE
from cbir.weights import WeightsKind

logger = logging.getLogger(__name__)

RESUME = "interrupted: finished work is kept; run the same command again to resume"
# cbir_ui.server.ServeOptions.uploads: "auto" (on for a local run only), or "on" / "off" whatever the run.
UPLOADS_CHOICES = ("auto", "on", "off")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default said once: added only where the help does not already say it, and
    never for a default that means "not given" (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or not action.option_strings or action.nargs == 0:  # a switch: given or not
            return text
        default = action.default
        if default is argparse.SUPPRESS:  # left to the settings class (ServeOptions): its default, read for the help only
            default = self.settings_defaults().get(action.dest, argparse.SUPPRESS)
        if default is None or default is False or default is argparse.SUPPRESS:
            return text
        return text + " (default: " + str(default).replace("%", "%%") + ")"

    @staticmethod
    def settings_defaults() -> dict[str, Any]:
        return {}


class ServeHelpFormatter(HelpFormatter):
    @staticmethod
    def settings_defaults() -> dict[str, Any]:
        from cbir_ui.server import ServeOptions  # only when the help is shown

        return {field.name: field.default for field in dataclasses.fields(ServeOptions)}


def from_env(variable: str, default: Any = None) -> Any:
    """An option's default: the environment variable when it is set, else `default` (argparse
    converts a text default with the option's type)."""
    return os.environ.get(variable) or default


def count(text: str) -> int:
    """A whole number of at least 1 (images per batch, trees, actors)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def scales(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"numbers separated by commas, such as 1,0.707,0.5; not {text!r}") from None


# ----------------------------------------------------------------------------- shared parents


def index_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--index-dir", type=Path, default=from_env("CBIR_INDEX_DIR", "indexes"),
                        help="where index folders are written and read (env CBIR_INDEX_DIR)")  # fmt: skip
    return parent


def data_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--data-dir", type=Path, default=from_env("CBIR_DATA_DIR", "data"),
                        help="where datasets are downloaded and extracted (env CBIR_DATA_DIR)")  # fmt: skip
    parent.add_argument("--mirror", default=from_env("CBIR_MIRROR"),
                        help="fetch every dataset archive as MIRROR/<archive file name> instead of the official place "
                        "(env CBIR_MIRROR)")  # fmt: skip
    return parent


def progress_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars (logs only)")
    return parent


def verbosity_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parent


def networks_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--backbones", default=DEFAULT_BACKBONE,
        help="comma-separated backbones, 'study' (the study's six) or 'all'. Known: " + ", ".join(BACKBONES)
        + ". The dinov2_* rows (DINOv2 from keras-hub, Apache-2.0) need: " + KERAS_HUB_INSTALL,
    )  # fmt: skip
    parent.add_argument(
        "--weights", default=WeightsKind.IMAGENET.value,
        help="'imagenet' (Keras downloads and caches them under KERAS_HOME; for the dinov2 rows: their keras-hub "
        "preset, downloaded into keras-hub's cache), a path to a local weights file, a keras-hub preset directory "
        "(saved with save_to_preset) or handle (hf://..., kaggle://...), or 'none' (random init: a smoke test only; "
        "every result is marked untrained)",
    )  # fmt: skip
    parent.add_argument("--input-size", type=count, help="build the networks at this input size instead of their "
                        "own (smaller is faster; for smoke tests)")  # fmt: skip
    return parent


def recipe_parent() -> argparse.ArgumentParser:
    """The choices of a recipe besides its backbone, weights and input size: dests are the fields
    of cbir.recipe.RecipeSettings."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--pooling", type=Pooling, choices=[pooling.value for pooling in Pooling],
        help="how the network's output becomes a descriptor (default: each backbone's own): gap = the study's (global "
        "average pool; VGG16: fc1); mac, spoc, gem (p = 3) and rmac (L = 3) pool the last convolutional map, with the "
        "image's aspect ratio kept (longer side = the input size); cls = a vision transformer's class token (the "
        "dinov2 rows' own; their other poolings read the patch tokens, squashed to a square). Each recipe is an "
        "index of its own (folder <backbone>-<pooling>...)",
    )  # fmt: skip
    parent.add_argument("--scales", type=scales, help="describe each image at these scales and average the "
                        "L2-normalised descriptors, e.g. 1,0.707,0.5 (the literature's; about 1.6-1.8x the time of "
                        "one scale)")  # fmt: skip
    parent.add_argument(
        "--whiten-on", metavar="COLLECTION",
        help="learn a PCA-whitening on this collection's descriptors of the same recipe and apply it (the standard "
        "protocol: paris6k when building oxford5k, and the reverse; described first if not built yet). The "
        "unwhitened index is built too",
    )  # fmt: skip
    parent.add_argument("--dim", dest="whitened_dim", type=int, metavar="N",
                        help="dimensions the whitening keeps (e.g. 512; default: all)")  # fmt: skip
    parent.add_argument("--dba", type=int, metavar="K", help="database-side augmentation: also build the recipe "
                        "with each row replaced by the weighted sum of itself and its K nearest rows (a few seconds at "
                        "Oxford5k size; queries are described as before)")  # fmt: skip
    parent.add_argument(
        "--runtime", type=Runtime, default=Runtime.KERAS.value, choices=[runtime.value for runtime in Runtime],
        help="what runs the network, part of the recipe (queries to the index are described the same way): keras; "
        "openvino-f32 (the same descriptors to about 1e-6, a little faster); openvino-bf16 (about 2x faster where "
        "the CPU has bfloat16 units, descriptors move by a cosine of about 1e-5). OpenVINO: pip install -r "
        "requirements-scale.txt",
    )  # fmt: skip
    return parent


def extraction_parent() -> argparse.ArgumentParser:
    """How images are described: dests are fields of BuildSettings and AddSettings."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--batch-size", type=count, default=DEFAULT_BATCH_SIZE, help="images per forward pass")
    parent.add_argument("--workers", type=count, help="image decoding threads (default: a few per core)")
    parent.add_argument("--checkpoint-every", type=count, default=DEFAULT_CHECKPOINT_EVERY,
                        help="images per extraction checkpoint; an interrupted build resumes from the last one")  # fmt: skip
    return parent


def executor_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--executor", type=Executor, default=Executor.LOCAL.value, choices=[executor.value for executor in Executor],
        help="where the networks run: local (this process; decoding in threads) or ray (a Ray Data pipeline: decoding "
        "in tasks, the network in an actor pool; pip install -r requirements-scale.txt). Either resumes the other's "
        "checkpoints; see docs/scale.md",
    )  # fmt: skip
    parent.add_argument("--ray-address", default=from_env("RAY_ADDRESS"),
                        help="for --executor ray: the cluster to join, e.g. ray://head:10001 or head:6379 (env "
                        "RAY_ADDRESS); with neither, Ray starts on this machine")  # fmt: skip
    parent.add_argument("--ray-actors", type=count, help="for --executor ray: network actors, each building the "
                        "network once (default: one per node of the cluster)")  # fmt: skip
    return parent


def store_parent() -> argparse.ArgumentParser:
    """--store, offering every registered store, and each store's build parameters as flags (dest: the
    parameter's name, gathered into BuildSettings.store_params)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--store", "--index", default=DEFAULT_STORE, choices=store_choices(),
        help="the index beside the descriptors: annoy (cosine.ann and euclidean.ann), exact (the numpy scan only; no "
        "extra files), hnsw (hnswlib graphs; pip install -r requirements-scale.txt), milvus (a Milvus collection at "
        "--milvus-uri), or auto: exact up to 100,000 x 2048 descriptor floats, hnsw above (annoy without hnswlib). "
        "Searches of collections small enough to scan use the exact scan whatever the store; see "
        "docs/performance.md",
    )  # fmt: skip
    for parameter in store_parameters():
        kind = next(kind for kind in store_kinds().values() if parameter in kind.parameters)
        env = f" (env {parameter.env})" if parameter.env else ""
        parent.add_argument(parameter.flag, dest=parameter.name, default=parameter.default_value(),
                            # A store's whole-number parameters are counts (trees, leaves): at least 1.
                            type=count if parameter.type is int else parameter.type,
                            help=f"for --store {kind.name}: {parameter.help}{env}")  # fmt: skip
    return parent


# ----------------------------------------------------------------------------- the commands


@dataclass(frozen=True)
class Command:
    name: str
    summary: str  # one line, in `cbir --help`
    description: str
    parents: tuple[Callable[[], argparse.ArgumentParser], ...]
    options: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]  # cbir.commands
    check: Callable[[argparse.ArgumentParser, argparse.Namespace], None] | None = None
    formatter: type[HelpFormatter] = HelpFormatter


def build_options(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("what to index").add_mutually_exclusive_group()
    source.add_argument("--dataset", choices=sorted(DATASETS), help="a standard collection; downloaded into "
                        f"--data-dir unless already there (default: {DEFAULT_DATASET} when --images is not given)")  # fmt: skip
    source.add_argument("--images", type=Path, help="any folder of images, scanned recursively")
    parser.add_argument("--name", help="the collection name for --images (default: the folder's name)")
    parser.add_argument(
        "--distractors", type=Path, metavar="DIR",
        help="append every image under DIR to the database as distractors (revisitop's R1M, or any folder): a "
        "collection of its own, '<collection>+<DIR name>', evaluated with the same ground truth",
    )  # fmt: skip
    parser.add_argument("--force", action="store_true", help="rebuild indexes that are already up to date")
    parser.add_argument("--local-features", action="store_true", help="also store each image's RootSIFT keypoints "
                        "in the index, for spatial verification of search results (needs OpenCV)")  # fmt: skip
    after = parser.add_argument_group("after building")
    after.add_argument("--evaluate", action="store_true", help="evaluate: mAP for collections with ground truth, "
                       "self-retrieval (edited photos finding their source) for the others")  # fmt: skip
    export_bundle_options(after, flag="--export-bundle")


def export_bundle_options(parser: argparse._ActionsContainer, flag: str | None = None) -> None:
    if flag:
        parser.add_argument(flag, dest="bundle", type=Path, metavar="FILE", help="pack the collection's indexes, "
                            "results and thumbnails into FILE (.tar) for `cbir serve --bundle`: a laptop or a Space "
                            "serves it without the images or a rebuild")  # fmt: skip
    parser.add_argument("--thumbnail-size", type=count, default=DEFAULT_MAX_SIDE,
                        help="longest side of a bundle's thumbnails, px")  # fmt: skip


def check_build(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> None:
    if arguments.name and arguments.images is None:
        parser.error("--name goes with --images (it names a folder collection)")
    if arguments.ray_actors is not None and arguments.executor is not Executor.RAY:
        parser.error("--ray-actors goes with --executor ray")
    if arguments.whitened_dim is not None and not arguments.whiten_on:
        parser.error("--dim goes with --whiten-on (it is the dimension the whitening keeps)")
    if arguments.store != AUTO:
        for parameter in get_store_kind(arguments.store).parameters:
            if parameter.required and getattr(arguments, parameter.name) is None:
                parser.error(f"--store {arguments.store} needs {parameter.flag}: {parameter.help}")


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=Path, required=True, help="the images folder the collection was built from")
    parser.add_argument("--name", help="the collection's name (default: the folder's name)")
    new = parser.add_mutually_exclusive_group(required=True)
    new.add_argument("new_images", nargs="?", type=Path, metavar="NEW_DIR",
                     help="the folder of new images, added to every index of the collection without describing its "
                     "old images again (HNSW, exact, Milvus: rows added; Annoy: trees rebuilt from the stored rows; "
                     "DBA: recomputed)")  # fmt: skip
    new.add_argument("--add", dest="added_images", type=Path, metavar="NEW_DIR",
                     help="the same, as `python build_index.py --images DIR --name NAME --add NEW_DIR` spells it")  # fmt: skip
    parser.add_argument("--local-features", action="store_true", help="the new images' RootSIFT keypoints are "
                        "stored wherever the index has them, flag or not; with it, an index without them is refused")  # fmt: skip


def evaluate_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--collection", "--dataset", "--name", dest="collection", default=DEFAULT_DATASET,
                        help="the collection to evaluate (oxford5k, paris6k, or the --name it was built with)")  # fmt: skip
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--backbones", default="all", help="comma-separated backbones, or 'all' (every backbone of the "
                       "registry; those not built for the collection are listed and left out)")  # fmt: skip
    which.add_argument("--recipes", help="comma-separated recipe keys (index folder names such as "
                       "xception-gem-w512-paris6k), or 'all': every index built for the collection. Instead of "
                       "--backbones and --pooling")  # fmt: skip
    parser.add_argument("--pooling", type=Pooling, choices=[pooling.value for pooling in Pooling],
                        help="with --backbones (default: each backbone's own descriptor: gap for the study's six, cls "
                        "for a ViT)")  # fmt: skip
    parser.add_argument("--metrics", default=",".join(metric.value for metric in Metric),
                        help="comma-separated: " + ", ".join(metric.value for metric in Metric))  # fmt: skip
    parser.add_argument("--modes", default=",".join(mode.value for mode in QueryMode),
                        help=f"comma-separated query modes: {QueryMode.CROPPED.value} (the standard protocol: the "
                        f"query's box), {QueryMode.FULL.value} (the whole query image)")  # fmt: skip
    parser.add_argument("--protocols", help="comma-separated protocols (default: every one the ground truth has)")
    parser.add_argument("--no-query-expansion", action="store_true",
                        help="plain rankings only (without it: also rows with αQE)")  # fmt: skip
    parser.add_argument("--qe-n", type=count, default=QUERY_EXPANSION_NEIGHBOURS, help="αQE: top results averaged in")
    parser.add_argument("--qe-alpha", type=float, default=QUERY_EXPANSION_ALPHA, help="αQE: weight = similarity^α")
    parser.add_argument("--diffusion", action="store_true", help="also rows re-ranked by diffusion over the "
                        "collection's k-NN graph, alone and after αQE (the graph is built once per index)")  # fmt: skip
    parser.add_argument("--verify", action="store_true", help="also rows re-ranked by spatial verification of the top "
                        "100 with local features: alone, followed by αQE, and by diffusion (needs --local-features indexes)")  # fmt: skip
    parser.add_argument("--self-queries", type=count, default=DEFAULT_QUERIES,
                        help="collections without ground truth: images edited into queries (self-retrieval)")  # fmt: skip


def check_evaluate(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> None:
    for option, text, kind in (("--modes", arguments.modes, QueryMode), ("--metrics", arguments.metrics, Metric)):
        known = {member.value for member in kind}
        unknown = [part.strip() for part in text.split(",") if part.strip() and part.strip() not in known]
        if unknown:
            parser.error(f"{option} takes {', '.join(sorted(known))}; not {', '.join(unknown)}")


def export_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("collection", help="a collection built under --index-dir (e.g. oxford5k, or a folder's --name)")
    parser.add_argument("bundle", type=Path, metavar="FILE", help="the bundle to write (.tar), for `cbir serve --bundle`")
    parser.add_argument("--recipes", help="comma-separated recipe keys (default: every index of the collection)")
    export_bundle_options(parser)


def serve_options(parser: argparse.ArgumentParser) -> None:
    """Dests are the fields of cbir_ui.server.ServeOptions; an option not given and without its
    environment variable is left out, so ServeOptions' own default applies."""
    unset = argparse.SUPPRESS
    parser.add_argument("--host", default=from_env("GRADIO_SERVER_NAME", unset),
                        help="the address to listen on: 127.0.0.1 is this machine only, 0.0.0.0 every network it is "
                        "on (env GRADIO_SERVER_NAME)")  # fmt: skip
    parser.add_argument("--port", type=int, default=from_env("GRADIO_SERVER_PORT", unset),
                        help="the port to listen on (env GRADIO_SERVER_PORT)")  # fmt: skip
    parser.add_argument("--share", action="store_true", default=unset,
                        help="also open a public Gradio link (the page's uploads are then off unless --uploads on)")  # fmt: skip
    source = parser.add_argument_group("what to serve").add_mutually_exclusive_group()
    source.add_argument("--images", type=Path, default=unset, help="index and serve this folder of your own photos")
    source.add_argument(
        "--bundle", default=from_env("CBIR_BUNDLE", unset),
        help="serve a bundle made by `cbir export` or `cbir build --export-bundle`: a .tar path or an https:// URL (a "
        "Hugging Face resolve/main/... URL works); downloaded, checked and unpacked into --cache-dir once (env "
        "CBIR_BUNDLE)",
    )  # fmt: skip
    parser.add_argument("--name", default=unset, help="the collection name for --images (default: the folder's name)")
    parser.add_argument("--no-build", action="store_true", default=unset,
                        help="serve what is built; never build at start")  # fmt: skip
    parser.add_argument("--cache-dir", type=Path, default=from_env("CBIR_CACHE_DIR", unset),
                        help="where bundles are downloaded and unpacked (env CBIR_CACHE_DIR)")  # fmt: skip
    parser.add_argument("--uploads", choices=UPLOADS_CHOICES, default=from_env("CBIR_UPLOADS", unset),
                        help="the 'Your photos' tab, where visitors describe their own photos (CPU and disk of this "
                        "server): auto is on for a local run, off with --share or on Hugging Face Spaces "
                        "(env CBIR_UPLOADS)")  # fmt: skip
    parser.add_argument("--keep-uploads", type=Path, metavar="DIR", default=unset,
                        help="a local, single-user run: keep the photos added on the page, and their indexes, in DIR "
                        "across sessions and restarts (default: each browser session's own, deleted when the page is "
                        "closed)")  # fmt: skip
    parser.add_argument("--queue-size", type=count, default=from_env("CBIR_QUEUE_SIZE", unset),
                        help="searches that may wait at once; more are told the app is busy (env CBIR_QUEUE_SIZE)")  # fmt: skip


# Options of the serve command that are the command line's own, not ServeOptions fields.
CLI_ONLY = frozenset({"command", "run", "check", "verbose"})


def check_serve(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> None:
    if getattr(arguments, "name", None) and getattr(arguments, "images", None) is None:
        parser.error("--name goes with --images (it names a folder collection)")


def list_options(parser: argparse.ArgumentParser) -> None:
    """Nothing beyond the index folder."""


COMMANDS: tuple[Command, ...] = (
    Command("build", "describe a collection and build its indexes, one per backbone",
            "Extract descriptors for a collection with pretrained Keras backbones and build the index the store names "
            "(Annoy by default: cosine and euclidean) that the page searches. New images for a built folder "
            "collection: see `cbir add --help`.",
            (index_parent, data_parent, networks_parent, recipe_parent, extraction_parent, executor_parent,
             store_parent, progress_parent, verbosity_parent),
            build_options, commands.run_build, check_build),
    Command("add", "add new images to every index of a built folder collection",
            "Add the images of a new folder to every index of a folder collection built before, without describing "
            "its old images again.",
            (index_parent, extraction_parent, progress_parent, verbosity_parent), add_options, commands.run_add),
    Command("evaluate", "mAP (or self-retrieval) of built indexes, for the page's evaluation tab",
            "mAP of built indexes on a collection's ground-truth queries (for a collection without ground truth: the "
            "self-retrieval evaluation, edited photos finding their source); writes results files under "
            "INDEX_DIR/COLLECTION/evaluation/ that the page shows.",
            (index_parent, progress_parent, verbosity_parent), evaluate_options, commands.run_evaluate, check_evaluate),
    Command("export", "pack a built collection into a bundle a laptop or a Space serves",
            "Pack a built collection's indexes, results and thumbnails into one .tar: `cbir serve --bundle FILE` "
            "serves it without the images or a rebuild.",
            (index_parent, progress_parent, verbosity_parent), export_options, commands.run_export),
    Command("serve", "serve the search page",
            "Serve the image search page over the indexes in --index-dir (building the default collection first if "
            "there are none).",
            (index_parent, data_parent, networks_parent, verbosity_parent), serve_options, commands.run_serve, check_serve,
            ServeHelpFormatter),
    Command("list", "built collections: their recipes, stores, rows, evaluated or not, damaged ones with their fix",
            "List the collections built under --index-dir.", (index_parent, verbosity_parent), list_options,
            commands.run_list),
)


def _command(name: str) -> Command:
    return next(command for command in COMMANDS if command.name == name)


def _set_up(parser: argparse.ArgumentParser, command: Command) -> argparse.ArgumentParser:
    command.options(parser)
    parser.set_defaults(command=command.name, run=command.run,
                        check=partial(command.check, parser) if command.check else None)  # fmt: skip
    return parser


def make_parser(prog: str = "cbir") -> argparse.ArgumentParser:
    """The `cbir` parser: one subcommand per command."""
    parser = argparse.ArgumentParser(prog=prog, description="Content-based image retrieval with pretrained CNNs: "
                                     "build indexes, evaluate them, serve the search page.")  # fmt: skip
    subcommands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True,
                                        help="`cbir COMMAND --help` lists its options")  # fmt: skip
    for command in COMMANDS:
        sub = subcommands.add_parser(command.name, help=command.summary, description=command.description,
                                     parents=[parent() for parent in command.parents], formatter_class=command.formatter)  # fmt: skip
        _set_up(sub, command)
    return parser


def command_parser(name: str, prog: str) -> argparse.ArgumentParser:
    """One command's parser on its own, for the scripts that are that command (`python app.py` is
    `cbir serve`)."""
    command = _command(name)
    parser = argparse.ArgumentParser(prog=prog, description=command.description, formatter_class=command.formatter,
                                     parents=[parent() for parent in command.parents])  # fmt: skip
    return _set_up(parser, command)


def parse(argv: Sequence[str] | None = None, *, command: str | None = None, prog: str | None = None) -> argparse.Namespace:
    """The parsed options of `cbir ...`, or, with `command`, of that command alone (named `prog`)."""
    parser = command_parser(command, prog or f"cbir {command}") if command else make_parser(prog or "cbir")
    arguments = parser.parse_args(argv)
    if arguments.check:
        arguments.check(arguments)
    return arguments


def main(argv: Sequence[str] | None = None, *, command: str | None = None, prog: str | None = None) -> int:
    arguments = parse(argv, command=command, prog=prog)
    logging.basicConfig(level=logging.DEBUG if arguments.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")  # fmt: skip
    if not arguments.verbose:  # one line per request the page makes to itself is noise, not progress
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return arguments.run(arguments)
    except KeyboardInterrupt:
        print(f"\n{RESUME}", file=sys.stderr)
        return 130
    except CbirError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
