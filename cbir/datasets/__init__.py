"""Collections: the data model, the registry of known datasets, getting them ready, reading
ground truth and folders.

    model.py        Collection, Query, image ids
    registry.py     DATASETS: one row per dataset (add a dataset here)
    prepare.py      download / extract / read a registered dataset
    groundtruth.py  ground-truth readers, one per format
    revisited.py    revisitop's gnd_*.pkl (ROxford5k / RParis6k) through a restricted unpickler
    folders.py      any folder of images; an extracted dataset folder
"""

from cbir.datasets.folders import folder_collection, list_images, load_collection_dir, with_distractors
from cbir.datasets.groundtruth import READERS, parse_ground_truth
from cbir.datasets.model import Box, Collection, DatasetError, GroundTruth, Query, ids_to_paths, image_id
from cbir.datasets.prepare import DownloadSettings, dataset_dir, prepare_dataset
from cbir.datasets.registry import DATASETS, ArchiveKind, ArchiveSpec, DatasetSpec, get_dataset

__all__ = [
    "DATASETS", "READERS", "ArchiveKind", "ArchiveSpec", "Box", "Collection", "DatasetError", "DatasetSpec",
    "DownloadSettings", "GroundTruth", "Query", "dataset_dir", "folder_collection", "get_dataset", "ids_to_paths",
    "image_id", "list_images", "load_collection_dir", "parse_ground_truth", "prepare_dataset", "with_distractors",
]  # fmt: skip
