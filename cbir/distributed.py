"""Extraction on a Ray cluster: the local path's work (listing -> decode -> network) as a Ray Data
pipeline, for collections one machine would take days over.

    listing (driver) -> decode + resize (Ray tasks) -> network (an actor pool: each actor builds the
    recipe's network once) -> rows back to the driver, in order -> checkpoint chunks -> one result

Decoding is cbir.extract's `_decode` (so the skip reasons are the same words) and the network is
the recipe's own extractor (cbir.backbones), fed batches of `batch_size` images padded as the local
path pads them. The driver writes the same checkpoint chunks as the local path, at the same
boundaries, so a killed driver resumes, and a local run resumes a Ray run's chunks and the reverse.

What the driver holds: the listing, the chunk being filled (at most `checkpoint_every` descriptors
and their names), then, at the end, the whole descriptor matrix (as the local path does, to write
the index). Pixels travel between workers only, never through the driver.

Ray is imported inside the functions here: `import cbir.distributed` costs nothing, and the demo
(requirements.txt) never needs Ray. It is in requirements-scale.txt.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import cbir
from cbir.errors import CbirError
from cbir.extract import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHECKPOINT_EVERY,
    Chunk,
    ExtractionResult,
    ProgressCallback,
    _decode,
    _Progress,
    assemble,
    open_checkpoints,
    progress_label,
)
from cbir.images import DEFAULT_LIMITS, ImageLimits
from cbir.index import Skipped
from cbir.recipe import Recipe

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install -r requirements-scale.txt"
# CPUs reserved per decoding task: Pillow spends most of a task decoding, but the reservation only
# schedules; a fraction leaves room beside the network actors on a small machine.
DECODE_CPUS = 0.5


class RayMissingError(CbirError):
    """--executor ray asked for, without Ray installed."""


class RayClusterError(CbirError):
    """The Ray cluster asked for cannot be reached, or its workers cannot run this build."""


def require_ray() -> Any:
    """The `ray` module with Ray Data, or a RayMissingError naming the install command."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray without its [data] extra has no ray.data)
    except ImportError as error:
        raise RayMissingError(
            f"--executor ray needs Ray Data, which is not installed here ({error}). Install it with: {INSTALL_HINT} "
            "(or build on this machine alone: leave out --executor ray)"
        ) from None
    return ray


def connect(address: str | None = None, *, num_cpus: int | None = None) -> Any:
    """Join the Ray cluster at `address` (else env RAY_ADDRESS), or start one on this machine; a
    process already connected (a test's cluster, an earlier backbone) stays on its cluster.

    The `cbir` package travels with the job (runtime_env py_modules), so workers need the project's
    requirements installed but not the project itself. `num_cpus`: a local cluster's size (tests)."""
    ray = require_ray()
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        logger.info("Ray: %s", f"joining the cluster at {address}" if address else "starting a local cluster")
        try:
            ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                     log_to_driver=False, runtime_env={"py_modules": [str(Path(cbir.__file__).parent)]})  # fmt: skip
        except ConnectionError as error:  # an address nobody answers at: a message, not a traceback
            raise RayClusterError(
                f"cannot reach the Ray cluster at {address} ({error}): check the address (--ray-address, env "
                "RAY_ADDRESS) and that `ray start --head` runs there, or leave both out to run Ray on this machine"
            ) from None
    return ray


def _decode_block(
    batch: dict[str, np.ndarray], root: str, size: int, recipe: Recipe, limits: ImageLimits
) -> dict[str, np.ndarray]:
    """Ray task: decode and resize the images of a block of the listing's batches (a row per batch:
    its first index and its paths), a row per image out. Pixels go out as bytes plus their shape
    (images of a pooled recipe differ in shape; bytes keep Arrow's column plain)."""
    indexes, relpaths, stamps, errors, pixels, heights, widths = [], [], [], [], [], [], []
    for first, group in zip(batch["start"], batch["relpaths"]):
        indexes.extend(range(int(first), int(first) + len(group)))
        relpaths.extend(str(relpath) for relpath in group)
    for relpath in relpaths:
        stamp, result = _decode(Path(root), relpath, size, recipe.network_shape, limits)
        stamps.append(stamp)
        if isinstance(result, str):
            errors.append(result)
            pixels.append(b"")
            heights.append(0)
            widths.append(0)
        else:
            errors.append("")
            pixels.append(np.ascontiguousarray(result, np.uint8).tobytes())
            heights.append(result.shape[0])
            widths.append(result.shape[1])
    return {
        "index": np.array(indexes, np.int64),
        "relpath": np.array(relpaths, dtype=object),
        "stamp": np.array(stamps, np.int64).reshape(-1, 2),
        "error": np.array(errors, dtype=object),
        "pixels": np.array(pixels, dtype=object),
        "height": np.array(heights, np.int64),
        "width": np.array(widths, np.int64),
    }


class _Describer:
    """Ray actor: the recipe's network, built once per actor, describing batches of decoded images."""

    def __init__(self, recipe: Recipe, batch_size: int, versions: dict[str, str]) -> None:
        from cbir.trunks import ExtractorCache, keras_versions

        # Version drift changes descriptors silently: a worker with another Keras or TensorFlow than
        # the driver (whose versions the manifest records) refuses to describe anything.
        if keras_versions() != versions:
            raise RuntimeError(f"this Ray worker has {keras_versions()}, the driver {versions}: install the same "
                               f"versions on every machine ({INSTALL_HINT} and requirements.txt)")  # fmt: skip
        self.extractor = ExtractorCache().get(recipe)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        count = len(batch["index"])
        descriptors = np.zeros((count, self.extractor.dim), np.float32)
        rows = [row for row in range(count) if not batch["error"][row]]
        if rows:
            images = [
                np.frombuffer(batch["pixels"][row], np.uint8).reshape(int(batch["height"][row]), int(batch["width"][row]), 3)
                for row in rows
            ]
            # Padded to the batch size as the local path pads: same shapes, same arithmetic.
            descriptors[rows] = self.extractor.describe(images, pad_to=self.batch_size)
        return {
            "index": batch["index"],
            "relpath": batch["relpath"],
            "stamp": batch["stamp"],
            "error": batch["error"],
            "descriptor": descriptors,
        }


def _actor_cpus(cluster_cpus: float, actors: int) -> float:
    """CPUs each network actor reserves: one, unless that would leave the decoding tasks nothing
    (2 actors on a 2-CPU machine). Reservations only schedule: TensorFlow uses the cores it finds."""
    return max(0.25, min(1.0, (cluster_cpus - DECODE_CPUS) / actors))


def extract_on_ray(
    recipe: Recipe,
    root: Path,
    relpaths: Sequence[str],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    limits: ImageLimits = DEFAULT_LIMITS,
    progress: bool = True,
    on_progress: ProgressCallback | None = None,
    address: str | None = None,
    actors: int | None = None,
) -> ExtractionResult:
    """cbir.extract.extract_descriptors on a Ray cluster: the same rows, order, skip list and
    checkpoints. `actors`: network actors (default: one per node of the cluster); every worker
    must see `root` at the same path."""
    started = time.perf_counter()
    root = Path(root).resolve()
    relpaths = list(relpaths)
    total = len(relpaths)
    recipe = recipe.base
    dim = recipe.dim
    checkpoint_every, checkpoints, chunks = open_checkpoints(
        recipe, root, relpaths, batch_size, checkpoint_dir, checkpoint_every
    )
    resumed = sum(len(c.inputs) for c in chunks)
    label = progress_label(recipe, resumed, total)
    if resumed < total:
        ray = connect(address)
        from cbir.trunks import keras_versions

        nodes = [node for node in ray.nodes() if node.get("Alive")]
        actors = actors or max(1, len(nodes))
        cpus = ray.cluster_resources().get("CPU", 1.0)
        logger.info("%s: %d images on Ray, %d network actor(s) on %d node(s), %g CPUs", label, total - resumed,
                    actors, len(nodes), cpus)  # fmt: skip
        report = _Progress(label, total, resumed, progress, on_progress)
        try:
            chunks += _run_pipeline(
                ray, recipe, root, relpaths, resumed, batch_size=batch_size, checkpoint_every=checkpoint_every,
                checkpoints=checkpoints, limits=limits, actors=actors, actor_cpus=_actor_cpus(cpus, actors),
                versions=keras_versions(), report=report,
            )  # fmt: skip
        finally:
            report.close()
    return assemble(chunks, dim, time.perf_counter() - started, resumed, label)


def _run_pipeline(
    ray: Any,
    recipe: Recipe,
    root: Path,
    relpaths: list[str],
    start: int,
    *,
    batch_size: int,
    checkpoint_every: int,
    checkpoints: Any,
    limits: ImageLimits,
    actors: int,
    actor_cpus: float,
    versions: dict[str, str],
    report: _Progress,
) -> list[Chunk]:
    """Describe relpaths[start:] on Ray; the finished chunks, each saved as soon as it is whole."""
    from ray.data import ActorPoolStrategy, DataContext

    # One block per batch, cut where the local path cuts its batches (`start` is a chunk boundary,
    # a multiple of the batch size): the network sees the same batches (bench/ray_extract.py: the
    # descriptors are bit-identical), and rows stream back in small blocks, so checkpoints are
    # written as the run goes rather than at its end.
    items = [{"start": first, "relpaths": relpaths[first : first + batch_size]}
             for first in range(start, len(relpaths), batch_size)]  # fmt: skip
    context = DataContext.get_current()
    saved = context.execution_options.preserve_order, context.enable_progress_bars
    # Rows must come back in listing order (the chunks are runs of the listing); the driver's own
    # bar shows progress, as on the local path.
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    try:
        dataset = (
            ray.data.from_items(items, override_num_blocks=len(items))
            .map_batches(_decode_block, batch_size=None, num_cpus=DECODE_CPUS,
                         fn_kwargs={"root": str(root), "size": recipe.input_size, "recipe": recipe, "limits": limits})
            .map_batches(_Describer, batch_size=batch_size, batch_format="numpy", num_cpus=actor_cpus,
                         compute=ActorPoolStrategy(size=actors),
                         fn_constructor_kwargs={"recipe": recipe, "batch_size": batch_size, "versions": versions})
        )  # fmt: skip
        finished: list[Chunk] = []
        chunk, chunk_start, expected = Chunk(), start, start
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for row in range(len(batch["index"])):
                if int(batch["index"][row]) != expected:
                    raise RuntimeError(f"Ray returned image {int(batch['index'][row])} where {expected} was due")
                expected += 1
                relpath, error = str(batch["relpath"][row]), str(batch["error"][row])
                chunk.inputs.append(relpath)
                chunk.stamps.append((int(batch["stamp"][row][0]), int(batch["stamp"][row][1])))
                if error:
                    logger.warning("skipping %s: %s", relpath, error)
                    chunk.skipped.append(Skipped(relpath, error))
                else:
                    chunk.images.append(relpath)
                    chunk.parts.append(np.asarray(batch["descriptor"][row : row + 1], np.float32))
                if len(chunk.inputs) >= checkpoint_every or expected == len(relpaths):
                    if checkpoints is not None:
                        checkpoints.save(chunk_start, chunk, recipe.dim)
                    finished.append(chunk)
                    chunk_start += len(chunk.inputs)
                    chunk = Chunk()
            # Reported after the checkpoint, so progress a caller saw is never lost to an interrupt.
            report.advance(len(batch["index"]))
        if expected != len(relpaths):
            raise RuntimeError(f"Ray returned {expected - start} of {len(relpaths) - start} images")
        return finished
    except ray.exceptions.RayError as error:
        # A worker that refused (another Keras or TensorFlow) or died: its reason, not Ray's traceback.
        # Finished chunks are saved: the same command resumes once the workers are fixed.
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise RayClusterError(f"the Ray workers failed: {reason}") from None
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
