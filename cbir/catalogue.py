"""The index folders under an index root, as a list of what can be searched shows them: the whole
ones, and the damaged or unreadable ones with why and the command that rebuilds each."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cbir.index import Manifest, damage
from cbir.layout import IndexLayout, IndexLoadError
from cbir.recipe import Recipe

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexInfo:
    """One built index, as a list of what can be searched shows it."""

    collection: str
    recipe: Recipe
    n_images: int
    folder: Path

    @property
    def key(self) -> str:
        return self.recipe.key

    @property
    def backbone(self) -> str:
        return self.recipe.backbone

    @property
    def dim(self) -> int:
        return self.recipe.dim

    @property
    def untrained(self) -> bool:
        return self.recipe.untrained


@dataclass(frozen=True)
class BrokenIndex:
    """A folder that looks like an index but cannot be loaded, and why."""

    collection: str
    key: str
    folder: Path
    problem: str


def scan_indexes(index_root: Path) -> tuple[list[IndexInfo], list[BrokenIndex]]:
    """Every finished index under `index_root`, and the folders that are not loadable (with why).

    Temporary folders of a build in progress are not listed at all.
    """
    found, broken = [], []
    for folder in IndexLayout(index_root).index_dirs():
        try:
            manifest = Manifest.read(folder)
            problems = damage(folder, manifest)
            if problems:
                raise IndexLoadError(f"{folder} is damaged: {'; '.join(problems)}. Rebuild it: {manifest.rebuild_command(folder)}")
        except IndexLoadError as error:
            logger.warning("ignoring %s: %s", folder, error)
            broken.append(BrokenIndex(folder.parent.name, folder.name, folder, str(error)))
            continue
        found.append(IndexInfo(manifest.collection, manifest.recipe, len(manifest.images), folder))
    return found, broken


def list_indexes(index_root: Path) -> list[IndexInfo]:
    """Every finished, whole index under `index_root`."""
    return scan_indexes(index_root)[0]
