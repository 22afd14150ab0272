"""Batched descriptor extraction over a collection, with decoding overlapped with inference.

Decoding and resizing run in a thread pool (Pillow releases the GIL while it decodes and resizes)
a few batches ahead of the network, so the network is rarely waiting for pixels. Finished work is
checkpointed in chunks, so an extraction killed half way resumes from what it finished.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cbir.backbones import FeatureExtractor
from cbir.images import DEFAULT_LIMITS, ImageError, ImageLimits, load_for_network

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16
# Images per checkpoint: small enough that a kill loses little, large enough that the
# checkpoint files stay few (5,062 Oxford images -> 10 files).
DEFAULT_CHUNK_SIZE = 512


@dataclass
class ExtractionResult:
    """Descriptors and the images they belong to, row for row, plus what was skipped and why."""

    descriptors: np.ndarray  # (n, dim) float32
    images: list[str]  # relative paths, same order as the rows
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"image": ..., "reason": ...}
    seconds: float = 0.0
    resumed_images: int = 0  # rows taken from checkpoints of an earlier, interrupted run

    @property
    def images_per_second(self) -> float:
        done = len(self.images) + len(self.skipped) - self.resumed_images
        return done / self.seconds if self.seconds > 0 else 0.0


ProgressCallback = Callable[[int, int], None]  # (images done, images total)


def _decode(root: Path, relpath: str, size: int, limits: ImageLimits) -> np.ndarray | str:
    """Pixels for the network, or the reason the image cannot be used."""
    try:
        return load_for_network(root / relpath, size, limits=limits)
    except ImageError as error:
        return str(error)


def _checkpoint_identity(extractor: FeatureExtractor) -> dict[str, object]:
    return {
        "backbone": extractor.backbone.name,
        "weights": extractor.weights.identity,
        "input_size": extractor.input_size,
        "dim": extractor.backbone.dim,
    }


def _load_checkpoints(
    checkpoint_dir: Path, relpaths: Sequence[str], chunk_size: int, identity: dict[str, object]
) -> list[dict]:
    """Finished chunks of an earlier run of the same extraction, in order, from the start."""
    identity_file = checkpoint_dir / "checkpoint.json"
    expected = {**identity, "chunk_size": chunk_size, "n_images": len(relpaths)}
    if not identity_file.exists() or json.loads(identity_file.read_text()) != expected:
        # Another backbone, other weights or another image list: nothing there is reusable.
        for stale in checkpoint_dir.glob("chunk_*.npz"):
            stale.unlink()
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic_text(identity_file, json.dumps(expected, indent=1))
        return []
    chunks = []
    for start in range(0, len(relpaths), chunk_size):
        path = checkpoint_dir / f"chunk_{start:08d}.npz"
        if not path.exists():
            break
        try:
            with np.load(path, allow_pickle=False) as data:
                chunk = {
                    "inputs": [str(x) for x in data["inputs"]],
                    "descriptors": data["descriptors"].astype(np.float32, copy=False),
                    "images": [str(x) for x in data["images"]],
                    "skipped": json.loads(str(data["skipped"])),
                }
        except Exception as error:  # a chunk cut off mid-write is only lost work, never an error
            logger.warning("ignoring unreadable checkpoint %s: %s", path.name, error)
            break
        if chunk["inputs"] != list(relpaths[start : start + chunk_size]):
            break
        chunks.append(chunk)
    return chunks


def _write_atomic_text(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _save_checkpoint(checkpoint_dir: Path, start: int, chunk: dict) -> None:
    path = checkpoint_dir / f"chunk_{start:08d}.npz"
    temporary = checkpoint_dir / f"chunk_{start:08d}.tmp.npz"
    np.savez(
        temporary,
        inputs=np.array(chunk["inputs"], dtype=str),
        descriptors=chunk["descriptors"],
        images=np.array(chunk["images"], dtype=str),
        skipped=np.array(json.dumps(chunk["skipped"])),
    )
    os.replace(temporary, path)


def extract_descriptors(
    extractor: FeatureExtractor,
    root: Path,
    relpaths: Sequence[str],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    checkpoint_dir: Path | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
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
    chunk_size = max(batch_size, chunk_size - chunk_size % batch_size)
    chunks: list[dict] = []
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        chunks = _load_checkpoints(checkpoint_dir, relpaths, chunk_size, _checkpoint_identity(extractor))
    resumed = sum(len(c["inputs"]) for c in chunks)
    if resumed:
        logger.info("%s: resuming after %d of %d images already described", extractor.backbone.name, resumed, total)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        label = extractor.backbone.name + (" (untrained)" if extractor.weights.untrained else "")
        bar = tqdm(total=total, initial=resumed, unit="img", desc=label, smoothing=0.1, dynamic_ncols=True)
    if on_progress:
        on_progress(resumed, total)

    size = extractor.input_size
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
                pending.append((relpath, pool.submit(_decode, root, relpath, size, limits)))
                next_index += 1

        chunk = _empty_chunk()
        chunk_start = resumed
        done = resumed
        fill()
        while pending:
            # A batch is the next batch_size inputs; the ones that fail to decode are skipped, so
            # the network may see fewer, but chunk boundaries stay on multiples of batch_size.
            batch_paths: list[str] = []
            batch_pixels: list[np.ndarray] = []
            taken = min(batch_size, len(pending))
            for _ in range(taken):
                relpath, future = pending.popleft()
                result = future.result()
                chunk["inputs"].append(relpath)
                if isinstance(result, str):
                    logger.warning("skipping %s: %s", relpath, result)
                    chunk["skipped"].append({"image": relpath, "reason": result})
                else:
                    batch_paths.append(relpath)
                    batch_pixels.append(result)
            fill()
            if batch_pixels:
                chunk["parts"].append(_describe_padded(extractor, batch_pixels, batch_size))
                chunk["images"].extend(batch_paths)
            if len(chunk["inputs"]) >= chunk_size or not pending:
                finished = _finish_chunk(chunk, extractor.backbone.dim)
                if checkpoint_dir is not None:
                    _save_checkpoint(checkpoint_dir, chunk_start, finished)
                chunks.append(finished)
                chunk_start += len(finished["inputs"])
                chunk = _empty_chunk()
            # Reported after the checkpoint, so progress a caller saw is never lost to an interrupt.
            done += taken
            if bar is not None:
                bar.update(taken)
            if on_progress:
                on_progress(done, total)
    if bar is not None:
        bar.close()

    descriptors = (
        np.concatenate([c["descriptors"] for c in chunks])
        if chunks
        else np.zeros((0, extractor.backbone.dim), np.float32)
    )
    images = [image for c in chunks for image in c["images"]]
    skipped = [entry for c in chunks for entry in c["skipped"]]
    seconds = time.perf_counter() - started
    result = ExtractionResult(descriptors, images, skipped, seconds, resumed)
    logger.info(
        "%s: %d images described, %d skipped, %.1f images/s",
        extractor.backbone.name,
        len(images),
        len(skipped),
        result.images_per_second,
    )
    return result


def _describe_padded(extractor: FeatureExtractor, pixels: list[np.ndarray], batch_size: int) -> np.ndarray:
    """Describe a batch, padded to the full batch size: a short last batch (or one with skipped
    files) would otherwise make TensorFlow trace the network again for the new shape."""
    batch = np.stack(pixels)
    if len(batch) < batch_size:
        padding = np.zeros((batch_size - len(batch), *batch.shape[1:]), batch.dtype)
        batch = np.concatenate([batch, padding])
    return extractor.describe(batch)[: len(pixels)]


def _empty_chunk() -> dict:
    return {"inputs": [], "images": [], "parts": [], "skipped": []}


def _finish_chunk(chunk: dict, dim: int) -> dict:
    descriptors = np.concatenate(chunk["parts"]) if chunk["parts"] else np.zeros((0, dim), np.float32)
    return {
        "inputs": list(chunk["inputs"]),
        "descriptors": descriptors.astype(np.float32, copy=False),
        "images": list(chunk["images"]),
        "skipped": list(chunk["skipped"]),
    }
