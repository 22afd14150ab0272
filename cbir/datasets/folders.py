"""Collections read from folders: any folder of images, or an extracted dataset with ground truth."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cbir.datasets.groundtruth import READERS
from cbir.datasets.model import Collection, DatasetError
from cbir.images import IMAGE_SUFFIXES

logger = logging.getLogger(__name__)

def load_collection_dir(
    name: str,
    images_root: Path,
    gt_dir: Path | None,
    query_prefix: str = "",
    ground_truth_format: str = "oxford_txt",
) -> Collection:
    """A collection from an extracted images folder (scanned recursively) and ground truth."""
    images_root = Path(images_root)
    images = list_images(images_root)
    if not images:
        raise DatasetError(f"no images found under {images_root}")
    queries = READERS[ground_truth_format](Path(gt_dir), query_prefix) if gt_dir is not None else ()
    collection = Collection(name=name, root=images_root, images=images, queries=queries)
    missing = sorted({q.image for q in queries if not collection.has_id(q.image)})
    if missing:
        logger.warning("%s: %d query images are not in %s: %s", name, len(missing), images_root, missing[:5])
    return collection


def folder_collection(images_dir: Path, name: str) -> Collection:
    """Any folder of images, scanned recursively; hidden files and links leaving it are skipped."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir} is not a folder: give a folder that holds images")
    images = list_images(images_dir)
    if not images:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise DatasetError(f"no images ({suffixes}) found under {images_dir}")
    return Collection(name=name, root=images_dir, images=images)


def list_images(root: Path) -> tuple[str, ...]:
    """Sorted POSIX paths of image files under `root`; nothing is decoded here.

    Hidden files and folders are skipped, and so are linked folders (outside the tree they are not
    part of it, inside it they would list images twice) and linked files pointing outside.
    """
    root = root.absolute()
    real_root = root.resolve()
    found: list[str] = []

    def report(error: OSError) -> None:
        logger.warning("skipping %s: %s", error.filename, error.strerror)

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=report):
        dirnames[:] = [name for name in dirnames if not name.startswith(".")]
        for filename in filenames:
            path = Path(dirpath) / filename
            if filename.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if path.is_symlink() and not (path.resolve().is_relative_to(real_root) and path.is_file()):
                continue
            found.append(path.relative_to(root).as_posix())
    return tuple(sorted(found))
