"""Thumbnails: the only image files the page hands out.

The page never serves a collection's folder: for every image it shows (hits, examples) it serves a
JPEG thumbnail made here, named by a hash of the collection, the image and the file's size and
modification time, in a folder that holds nothing else. So a `.env` or `.git/` beside the photos is
never reachable, a file name that is not UTF-8 never reaches the web server, and formats a browser
cannot show (TIFF, BMP) are shown all the same. A thumbnail older than its image is made again; one
whose image is not on this machine (a bundle ships the folder without the images) is served as is.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from PIL import Image

from cbir import atomic
from cbir.extract import file_stamp
from cbir.images import DEFAULT_LIMITS, ImageError, ImageLimits, load_image

logger = logging.getLogger(__name__)

DEFAULT_MAX_SIDE = 512
JPEG_QUALITY = 85


def thumbnail_name(collection: str, image: str, max_side: int) -> str:
    key = "\0".join((collection, image.encode("utf-8", "surrogateescape").hex(), str(max_side)))
    return hashlib.sha256(key.encode()).hexdigest()[:32] + ".jpg"


def make_thumbnail(
    source: Path, dest: Path, max_side: int = DEFAULT_MAX_SIDE, limits: ImageLimits = DEFAULT_LIMITS, name: str | None = None
) -> Path:
    """Write a JPEG of `source` whose longest side is at most `max_side`, atomically. `name`: what
    an ImageError calls the image (default: its path)."""
    picture = load_image(source, limits=limits, draft_size=max_side, name=name)
    picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    atomic.write_file(dest, lambda path: picture.save(path, format="JPEG", quality=JPEG_QUALITY, optimize=True))
    return dest


class ThumbnailFolder:
    """Thumbnails of one collection's images, made on first use and kept."""

    def __init__(self, folder: Path, collection: str, images_root: Path, max_side: int = DEFAULT_MAX_SIDE) -> None:
        self.folder = Path(folder)
        self.collection = collection
        self.images_root = Path(images_root)
        self.max_side = max_side

    def path_for(self, image: str) -> Path | None:
        """The thumbnail of an indexed image (relative path), or None if the image cannot be read."""
        try:
            return self.thumbnail(image)
        except ImageError as error:
            logger.warning("no thumbnail for %s/%s: %s", self.collection, image, error)
            return None

    def thumbnail(self, image: str) -> Path:
        """The thumbnail of an indexed image (relative path), made if needed. Raises ImageError
        (naming the image by its relative path, not where the collection lives)."""
        source = self.images_root / image
        dest = self.folder / thumbnail_name(self.collection, image, self.max_side)
        _, source_mtime = file_stamp(source)
        if dest.is_file() and (source_mtime < 0 or dest.stat().st_mtime_ns >= source_mtime):
            return dest
        return make_thumbnail(source, dest, self.max_side, name=image)

    def make_all(self, images: list[str], *, progress: bool = False) -> int:
        """Make the thumbnails of `images` not made yet (a build does, so that no search waits for
        them: 12 new thumbnails of 1024 px photos cost about as much as a search). Returns how
        many were made."""
        missing = [image for image in images if not (self.folder / thumbnail_name(self.collection, image, self.max_side)).is_file()]
        if not missing:
            return 0
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(missing), desc=f"{self.collection}: thumbnails", unit="image")
        for image in missing:
            self.path_for(image)
            if bar is not None:
                bar.update()
        if bar is not None:
            bar.close()
        return len(missing)
