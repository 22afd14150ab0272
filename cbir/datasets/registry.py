"""The datasets this project knows how to get: one `DatasetSpec` row each.

A new dataset is one row here, plus a reader in `cbir.datasets.groundtruth` if its ground truth
comes in a format none of the readers knows.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from cbir.errors import SettingsError


class ArchiveKind(str, Enum):
    IMAGES = "images"
    GROUND_TRUTH = "ground_truth"
    GROUND_TRUTH_FILE = "ground_truth_file"  # one file read as it is, never extracted (revisitop's gnd_*.pkl)


@dataclass(frozen=True)
class ArchiveSpec:
    file_name: str
    url: str
    kind: ArchiveKind

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", ArchiveKind(self.kind))


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    archives: tuple[ArchiveSpec, ...]
    access_page: str  # where a person requests access to the archives
    ground_truth_format: str  # a key of cbir.datasets.groundtruth.READERS
    query_prefix: str = ""  # prefix of image names in *_query.txt lines ("oxc1_" for Oxford)
    # The dataset whose images this one uses (no second download): then `archives` hold only this
    # dataset's GROUND_TRUTH_FILE, and the ground truth says which of those images are the database.
    images_from: str | None = None


_OXFORD_PAGE = "https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/"
_PARIS_PAGE = "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/"
_REVISITOP_PAGE = "http://cmp.felk.cvut.cz/revisitop/"
_REVISITOP_DATA = "http://cmp.felk.cvut.cz/revisitop/data/datasets/"  # revisitop's python/download.py

# What a build without --dataset or --images, and the page's first start, describe.
DEFAULT_DATASET = "oxford5k"

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="oxford5k",
            title="Oxford Buildings (Oxford5k)",
            archives=(
                ArchiveSpec("oxbuild_images-v1.tgz", _OXFORD_PAGE + "oxbuild_images-v1.tgz", ArchiveKind.IMAGES),
                ArchiveSpec("gt_files_170407.tgz", _OXFORD_PAGE + "gt_files_170407.tgz", ArchiveKind.GROUND_TRUTH),
            ),
            access_page=_OXFORD_PAGE,
            ground_truth_format="oxford_txt",
            query_prefix="oxc1_",
        ),
        DatasetSpec(
            name="paris6k",
            title="Paris Buildings (Paris6k)",
            archives=(
                ArchiveSpec("paris_1-v1.tgz", _PARIS_PAGE + "paris_1-v1.tgz", ArchiveKind.IMAGES),
                ArchiveSpec("paris_2-v1.tgz", _PARIS_PAGE + "paris_2-v1.tgz", ArchiveKind.IMAGES),
                ArchiveSpec("paris_120310.tgz", _PARIS_PAGE + "paris_120310.tgz", ArchiveKind.GROUND_TRUTH),
            ),
            access_page=_PARIS_PAGE,
            ground_truth_format="oxford_txt",
        ),
        DatasetSpec(
            name="roxford5k",
            title="Revisited Oxford (ROxford5k)",
            archives=(
                ArchiveSpec(
                    "gnd_roxford5k.pkl", _REVISITOP_DATA + "roxford5k/gnd_roxford5k.pkl", ArchiveKind.GROUND_TRUTH_FILE
                ),
            ),
            access_page=_REVISITOP_PAGE,
            ground_truth_format="revisitop_pkl",
            images_from="oxford5k",
        ),
        DatasetSpec(
            name="rparis6k",
            title="Revisited Paris (RParis6k)",
            archives=(
                ArchiveSpec(
                    "gnd_rparis6k.pkl", _REVISITOP_DATA + "rparis6k/gnd_rparis6k.pkl", ArchiveKind.GROUND_TRUTH_FILE
                ),
            ),
            access_page=_REVISITOP_PAGE,
            ground_truth_format="revisitop_pkl",
            images_from="paris6k",
        ),
    )
}


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise SettingsError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(DATASETS))}") from None
