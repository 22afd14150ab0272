"""Batched descriptor extraction over a collection, with decoding overlapped with inference.

Decoding and resizing run in a thread pool (Pillow releases the GIL while it decodes and resizes)
a few batches ahead of the network, so the network is rarely waiting for pixels. Finished work is
checkpointed every `checkpoint_every` images, so an extraction killed half way resumes from what it
finished -- but only work made by the same recipe over the same files: a checkpoint records the
recipe's identity and each image's size and modification time, and anything else is described
again.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cbir import atomic
from cbir.trunks import FeatureExtractor
from cbir.images import DEFAULT_LIMITS, ImageError, ImageLimits, NetworkShape, load_for_network
from cbir.index import Skipped

if TYPE_CHECKING:
    from cbir.recipe import Recipe

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16
# Images per checkpoint: small enough that a kill loses little, large enough that the
# checkpoint files stay few (5,062 Oxford images -> 10 files).
DEFAULT_CHECKPOINT_EVERY = 512
# With progress bars off, a log line at most this often, so a long build can be watched in a log.
LOG_EVERY_SECONDS = 30.0
IDENTITY_FILE = "checkpoint.json"


class Executor(str, Enum):
    """Where the network runs: in this process (threads decode), or on a Ray cluster (cbir.distributed)."""

    LOCAL = "local"
    RAY = "ray"


@dataclass
class ExtractionResult:
    """Descriptors and the images they belong to, row for row, plus what was skipped and why."""

    descriptors: np.ndarray  # (n, dim) float32
    images: list[str]  # relative paths, same order as the rows
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    resumed_images: int = 0  # inputs taken from checkpoints of an earlier, interrupted run

    @property
    def images_per_second(self) -> float:
        done = len(self.images) + len(self.skipped) - self.resumed_images
        return done / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Chunk:
    """`checkpoint_every` consecutive inputs: what became rows, and what was skipped."""

    inputs: list[str] = field(default_factory=list)
    stamps: list[tuple[int, int]] = field(default_factory=list)  # (size, mtime_ns) per input
    images: list[str] = field(default_factory=list)
    parts: list[np.ndarray] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def descriptors(self, dim: int) -> np.ndarray:
        return np.concatenate(self.parts).astype(np.float32, copy=False) if self.parts else np.zeros((0, dim), np.float32)


ProgressCallback = Callable[[int, int], None]  # (images done, images total)


def file_stamp(path: Path) -> tuple[int, int]:
    """(size, modification time in ns): what tells a replaced image from the one described."""
    try:
        status = os.stat(path)
    except OSError:
        return (-1, -1)
    return (status.st_size, status.st_mtime_ns)


def _decode(
    root: Path, relpath: str, size: int, shape: NetworkShape, limits: ImageLimits
) -> tuple[tuple[int, int], np.ndarray | str]:
    """The file's stamp and its pixels for the network, or the reason the image cannot be used.

    Stamped before reading: a file replaced from then on is seen as changed by the next run.
    """
    stamp = file_stamp(root / relpath)
    try:
        # Named by its path relative to the collection: skip reasons in a manifest travel with it.
        return stamp, load_for_network(root / relpath, size, shape=shape, limits=limits, name=relpath)
    except ImageError as error:
        return stamp, str(error)


class Checkpoints:
    """Finished chunks of one extraction, in a folder of its own."""

    def __init__(self, folder: Path, identity: dict[str, object]) -> None:
        self.folder = Path(folder)
        self.identity = identity

    def chunk_path(self, start: int) -> Path:
        return self.folder / f"chunk_{start:08d}.npz"

    def load(self, root: Path, relpaths: Sequence[str], checkpoint_every: int) -> list[Chunk]:
        """The chunks an earlier run of the same extraction finished, in order, from the start."""
        self.folder.mkdir(parents=True, exist_ok=True)
        identity_file = self.folder / IDENTITY_FILE
        try:
            recorded = json.loads(identity_file.read_text())
        except (OSError, ValueError):
            recorded = None
        if recorded != self.identity:
            if recorded is not None:
                changed = sorted(k for k in set(recorded) | set(self.identity) if recorded.get(k) != self.identity.get(k))
                logger.info(
                    "checkpoints in %s were made with another %s; describing every image again",
                    self.folder,
                    ", ".join(changed),
                )
            for stale in self.folder.glob("chunk_*.npz"):
                stale.unlink()
            atomic.write_text(identity_file, json.dumps(self.identity, indent=1))
            return []
        chunks = []
        for start in range(0, len(relpaths), checkpoint_every):
            path = self.chunk_path(start)
            if not path.exists():
                break
            try:
                chunk = _read_chunk(path)
            except Exception as error:  # a chunk cut off mid-write is only lost work, never an error
                logger.warning("ignoring unreadable checkpoint %s: %s", path.name, error)
                break
            expected = list(relpaths[start : start + checkpoint_every])
            if chunk.inputs != expected:
                break
            changed = [
                relpath for relpath, stamp in zip(chunk.inputs, chunk.stamps) if file_stamp(root / relpath) != stamp
            ]
            if changed:
                logger.info("%s changed since it was described; describing again from image %d", changed[0], start)
                break
            chunks.append(chunk)
        return chunks

    def save(self, start: int, chunk: Chunk, dim: int) -> None:
        def write(temporary: Path) -> None:
            with open(temporary, "wb") as handle:
                np.savez(
                    handle,
                    inputs=np.array(chunk.inputs, dtype=str),
                    stamps=np.array(chunk.stamps, dtype=np.int64).reshape(-1, 2),
                    descriptors=chunk.descriptors(dim),
                    images=np.array(chunk.images, dtype=str),
                    skipped=np.array(json.dumps([[s.image, s.reason] for s in chunk.skipped])),
                )

        atomic.write_file(self.chunk_path(start), write)


def _read_chunk(path: Path) -> Chunk:
    with np.load(path, allow_pickle=False) as data:
        return Chunk(
            inputs=[str(x) for x in data["inputs"]],
            stamps=[(int(a), int(b)) for a, b in data["stamps"]],
            images=[str(x) for x in data["images"]],
            parts=[data["descriptors"].astype(np.float32, copy=False)],
            skipped=[Skipped(image, reason) for image, reason in json.loads(str(data["skipped"]))],
        )


def extract_descriptors(
    extractor: FeatureExtractor,
    root: Path,
    relpaths: Sequence[str],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    limits: ImageLimits = DEFAULT_LIMITS,
    progress: bool = True,
    on_progress: ProgressCallback | None = None,
) -> ExtractionResult:
    """Describe every image of `relpaths` (relative to `root`) with `extractor`.

    Unreadable images are skipped, logged and listed with the reason; one bad file never stops the
    run. With `checkpoint_dir`, finished chunks are saved there and reused by the next call.
    """
    started = time.perf_counter()
    root = Path(root)
    relpaths = list(relpaths)
    total = len(relpaths)
    dim = extractor.dim
    checkpoint_every, checkpoints, chunks = open_checkpoints(
        extractor.recipe, root, relpaths, batch_size, checkpoint_dir, checkpoint_every
    )
    resumed = sum(len(c.inputs) for c in chunks)
    label = progress_label(extractor.recipe, resumed, total)
    report = _Progress(label, total, resumed, progress, on_progress)

    size, shape = extractor.input_size, extractor.recipe.network_shape
    workers = workers or min(8, max(2, (os.cpu_count() or 2)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        # Decode up to a few batches ahead, in order; bounded so memory stays flat.
        pending: deque[tuple[str, Future]] = deque()
        next_index = resumed
        lookahead = batch_size * 3

        def fill() -> None:
            nonlocal next_index
            while next_index < total and len(pending) < lookahead:
                relpath = relpaths[next_index]
                pending.append((relpath, pool.submit(_decode, root, relpath, size, shape, limits)))
                next_index += 1

        chunk = Chunk()
        chunk_start = resumed
        fill()
        while pending:
            # A batch is the next batch_size inputs; the ones that fail to decode are skipped, so
            # the network may see fewer, but chunk boundaries stay on multiples of batch_size.
            batch_paths: list[str] = []
            batch_pixels: list[np.ndarray] = []
            taken = min(batch_size, len(pending))
            for _ in range(taken):
                relpath, future = pending.popleft()
                stamp, result = future.result()
                chunk.stamps.append(stamp)
                chunk.inputs.append(relpath)
                if isinstance(result, str):
                    logger.warning("skipping %s: %s", relpath, result)
                    chunk.skipped.append(Skipped(relpath, result))
                else:
                    batch_paths.append(relpath)
                    batch_pixels.append(result)
            fill()
            if batch_pixels:
                chunk.parts.append(extractor.describe(batch_pixels, pad_to=batch_size))
                chunk.images.extend(batch_paths)
            if len(chunk.inputs) >= checkpoint_every or not pending:
                if checkpoints is not None:
                    checkpoints.save(chunk_start, chunk, dim)
                chunks.append(chunk)
                chunk_start += len(chunk.inputs)
                chunk = Chunk()
            # Reported after the checkpoint, so progress a caller saw is never lost to an interrupt.
            report.advance(taken)
    report.close()
    return assemble(chunks, dim, time.perf_counter() - started, resumed, label)


def open_checkpoints(
    recipe: Recipe,
    root: Path,
    relpaths: Sequence[str],
    batch_size: int,
    checkpoint_dir: Path | None,
    checkpoint_every: int,
) -> tuple[int, Checkpoints | None, list[Chunk]]:
    """(images per chunk, the checkpoints, the chunks an earlier run finished). Every executor
    (local or Ray, cbir.distributed) plans the same chunks, so either resumes the other's work."""
    checkpoint_every = max(batch_size, checkpoint_every - checkpoint_every % batch_size)
    if checkpoint_dir is None:
        return checkpoint_every, None, []
    identity = {**recipe.identity(), "checkpoint_every": checkpoint_every, "n_images": len(relpaths)}
    checkpoints = Checkpoints(checkpoint_dir, identity)
    return checkpoint_every, checkpoints, checkpoints.load(root, relpaths, checkpoint_every)


def progress_label(recipe: Recipe, resumed: int, total: int) -> str:
    label = recipe.key + (" (untrained)" if recipe.untrained else "")
    if resumed:
        logger.info("%s: resuming after %d of %d images already described", label, resumed, total)
    return label


def assemble(chunks: Sequence[Chunk], dim: int, seconds: float, resumed: int, label: str) -> ExtractionResult:
    """The chunks, in order, as one result."""
    descriptors = np.concatenate([c.descriptors(dim) for c in chunks]) if chunks else np.zeros((0, dim), np.float32)
    images = [image for c in chunks for image in c.images]
    skipped = [entry for c in chunks for entry in c.skipped]
    result = ExtractionResult(descriptors, images, skipped, seconds, resumed)
    logger.info(
        "%s: %d images described, %d skipped, %.1f images/s", label, len(images), len(skipped), result.images_per_second
    )
    return result


class _Progress:
    """A progress bar, or, with bars off, a log line every LOG_EVERY_SECONDS; and the callback."""

    def __init__(self, label: str, total: int, done: int, bar: bool, callback: ProgressCallback | None) -> None:
        self.label, self.total, self.done, self.callback = label, total, done, callback
        self.bar = None
        self.started = self.last_log = time.monotonic()
        self.first = done
        if bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=done, unit="img", desc=label, smoothing=0.1, dynamic_ncols=True)
        if callback:
            callback(done, total)

    def advance(self, count: int) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
        elif time.monotonic() - self.last_log >= LOG_EVERY_SECONDS:
            self.last_log = time.monotonic()
            rate = (self.done - self.first) / max(self.last_log - self.started, 1e-9)
            logger.info("%s: %d / %d images (%.1f images/s)", self.label, self.done, self.total, rate)
        if self.callback:
            self.callback(self.done, self.total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
