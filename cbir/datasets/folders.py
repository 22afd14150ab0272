"""Collections read from folders: any folder of images, or an extracted dataset with ground truth."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cbir.datasets.groundtruth import READERS
from cbir.datasets.model import Collection, DatasetError, GroundTruth, ids_to_paths, image_id
from cbir.images import IMAGE_SUFFIXES

logger = logging.getLogger(__name__)

def load_collection_dir(
    name: str,
    images_root: Path,
    gt_dir: Path | None,
    query_prefix: str = "",
    ground_truth_format: str = "oxford_txt",
) -> Collection:
    """A collection from an extracted images folder (scanned recursively) and ground truth.

    When the ground truth names the database (revisitop's imlist), only those images are database
    images, and query images outside it are kept apart as `query_images`.
    """
    images_root = Path(images_root)
    images = list_images(images_root)
    if not images:
        raise DatasetError(f"no images found under {images_root}")
    truth = READERS[ground_truth_format](Path(gt_dir), query_prefix) if gt_dir is not None else GroundTruth(())
    query_images: tuple[str, ...] = ()
    if truth.database is not None:
        images, query_images = _split_database(images, truth, images_root)
    collection = Collection(name, images_root, images, truth.queries, query_images, tuple(truth.database or ()))
    known = {image_id(relpath) for relpath in (*collection.images, *collection.query_images)}
    missing = sorted({q.image for q in truth.queries if q.image not in known})
    if missing:
        logger.warning("%s: %d query images are not in %s: %s", name, len(missing), images_root, missing[:5])
    return collection


def _split_database(
    found: tuple[str, ...], truth: GroundTruth, images_root: Path
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(database images: exactly the ground truth's, query images not among them), as relative paths."""
    by_id, ambiguous = ids_to_paths(found)
    database = truth.database or ()
    absent = [image for image in database if image not in by_id]
    if absent:
        several = [image for image in absent if image in ambiguous]
        why = f"; these name several files: {several[:5]}" if several else ""
        raise DatasetError(
            f"{len(absent)} of the {len(database)} database images the ground truth lists are not under "
            f"{images_root} (e.g. {absent[:5]}){why}. The images folder is incomplete: prepare the dataset "
            "the images come from again, or put the missing files back."
        )
    database_paths = tuple(by_id[image] for image in database)
    in_database = set(database)
    query_paths = {by_id[q.image] for q in truth.queries if q.image in by_id and q.image not in in_database}
    return database_paths, tuple(sorted(query_paths))


def with_distractors(collection: Collection, folder: Path, name: str | None = None) -> Collection:
    """`collection` extended by every image under `folder` (revisitop's R1M, or any folder), as a
    collection of its own, named '<collection>+<folder name>' unless `name` is given.

    The distractors follow the database in the ground truth's order (so indices into it stay valid
    for revisitop's tools), their paths relative to the collection's images folder; queries and
    ground truth are unchanged. An image named like one of the collection's is refused: ground
    truth names images by their file name, and would then be ambiguous.
    """
    folder = Path(folder).absolute()
    if not folder.is_dir():
        raise DatasetError(f"distractors: {folder} is not a folder of images")
    found = list_images(folder)
    if not found:
        raise DatasetError(f"distractors: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {folder}")
    root = Path(collection.root).absolute()
    relpaths = tuple(Path(os.path.relpath(folder / relpath, root)).as_posix() for relpath in found)
    taken = {image_id(relpath) for relpath in (*collection.images, *collection.query_images)}
    clashes = sorted({image_id(relpath) for relpath in relpaths} & taken)
    if clashes:
        raise DatasetError(
            f"distractors: {len(clashes)} images under {folder} are named like images of {collection.name} "
            f"(e.g. {clashes[:3]}); ground truth names images by file name, so they would be ambiguous. "
            "Rename or remove them."
        )
    order = collection.database_order + tuple(image_id(relpath) for relpath in relpaths) if collection.database_order else ()
    return Collection(
        name or f"{collection.name}+{folder.name}",
        root,
        collection.images + relpaths,
        collection.queries,
        collection.query_images,
        order,
        relpaths,
    )


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
