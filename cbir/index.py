"""What a build leaves on disk, per collection and backbone, and how it is loaded and searched.

    <index_root>/<collection>/<backbone>/
        descriptors.npy   raw float32 descriptors, one row per image
        cosine.ann        Annoy "angular" index (angular distance = sqrt(2 (1 - cos)))
        euclidean.ann     Annoy "euclidean" index on the raw (not normalised) descriptors
        manifest.json     what the files are: backbone, weights, versions, dim, image list, ...

A folder is written under a temporary name and renamed when complete, so a build that dies never
leaves something that loads. Annoy files record neither metric nor dimension, and loading them with
the wrong ones crashes the process: the manifest beside them is what makes loading safe.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
DESCRIPTORS = "descriptors.npy"
# The user-facing metric name -> Annoy's metric name. Adding a metric means a row here and a
# branch in `exact_distances`.
METRICS: dict[str, str] = {"cosine": "angular", "euclidean": "euclidean"}
DEFAULT_N_TREES = 100
# Annoy proposes this many candidates (at least k), which are then re-ranked exactly from the
# stored descriptors: near-exact results at a fraction of the cost of a full scan.
DEFAULT_CANDIDATES = 200
TEMPORARY_MARK = ".partial-"


class IndexLoadError(RuntimeError):
    """An index that must not be loaded as it is; the message names the fix."""


def rebuild_command(collection: str, backbone: str) -> str:
    if collection in {"oxford5k", "paris6k"}:
        source = f"--dataset {collection}"
    else:
        source = f"--images <folder> --name {collection}"
    return f"python build_index.py {source} --backbones {backbone} --force"


def annoy_file(metric: str) -> str:
    return f"{metric}.ann"


@dataclass
class Manifest:
    """Everything needed to trust, load and rebuild an index folder."""

    collection: str
    collection_root: str  # absolute path the image paths are relative to
    backbone: str
    weights: dict[str, Any]  # Weights.to_json()
    input_size: int
    dim: int
    images: list[str]  # relative paths, same order as the descriptor rows
    skipped: list[dict[str, str]] = field(default_factory=list)
    annoy: dict[str, Any] = field(default_factory=dict)  # n_trees, metrics, seed
    versions: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    created: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def untrained(self) -> bool:
        return bool(self.weights.get("untrained"))

    @property
    def weights_identity(self) -> str:
        return str(self.weights.get("identity", self.weights.get("kind", "?")))

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def read(cls, folder: Path) -> "Manifest":
        path = folder / MANIFEST
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise IndexLoadError(f"{folder} has no {MANIFEST}; it is not a finished index") from None
        except (OSError, ValueError) as error:
            raise IndexLoadError(f"{path} is unreadable ({error})") from None
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise IndexLoadError(
                f"{path} has schema version {version}, this code reads version {SCHEMA_VERSION}. Rebuild it: "
                + rebuild_command(data.get("collection", "<name>"), data.get("backbone", "<backbone>"))
            )
        known = {name for name in cls.__dataclass_fields__}
        try:
            return cls(**{key: value for key, value in data.items() if key in known})
        except TypeError as error:
            raise IndexLoadError(f"{path} is missing fields ({error})") from None


def index_folder(index_root: Path, collection: str, backbone: str) -> Path:
    return Path(index_root) / collection / backbone


def write_index(
    folder: Path,
    descriptors: np.ndarray,
    manifest: Manifest,
    *,
    n_trees: int = DEFAULT_N_TREES,
    seed: int = 42,
) -> Manifest:
    """Write descriptors, both Annoy indexes and the manifest, all or nothing.

    Everything goes into a sibling temporary folder which replaces `folder` only when complete.
    """
    from annoy import AnnoyIndex

    folder = Path(folder)
    descriptors = np.ascontiguousarray(descriptors, dtype=np.float32)
    if descriptors.ndim != 2 or descriptors.shape != (len(manifest.images), manifest.dim):
        raise ValueError(
            f"descriptors of shape {descriptors.shape} do not match {len(manifest.images)} images x {manifest.dim}"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = folder.parent / f"{folder.name}{TEMPORARY_MARK}{uuid.uuid4().hex[:8]}"
    temporary.mkdir()
    try:
        np.save(temporary / DESCRIPTORS, descriptors)
        timings = dict(manifest.timings)
        for metric, annoy_metric in METRICS.items():
            started = time.perf_counter()
            index = AnnoyIndex(manifest.dim, annoy_metric)
            index.set_seed(seed)
            for row, vector in enumerate(descriptors):
                index.add_item(row, vector)
            index.build(n_trees, n_jobs=-1)
            index.save(str(temporary / annoy_file(metric)))
            index.unload()
            timings[f"annoy_{metric}_seconds"] = round(time.perf_counter() - started, 3)
        manifest.timings = timings
        manifest.annoy = {"n_trees": n_trees, "seed": seed, "metrics": dict(METRICS)}
        manifest.created = manifest.created or time.strftime("%Y-%m-%dT%H:%M:%S%z")
        # The manifest is written last: a folder without one is never a finished index.
        (temporary / MANIFEST).write_text(manifest.to_json())
        _replace_folder(temporary, folder)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return manifest


def _replace_folder(new: Path, target: Path) -> None:
    """Put `new` in place of `target`. Between the two renames neither name holds a half index."""
    if target.exists():
        retired = target.parent / f"{target.name}{TEMPORARY_MARK}old-{uuid.uuid4().hex[:8]}"
        os.replace(target, retired)
        os.replace(new, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(new, target)


def remove_leftovers(collection_folder: Path) -> list[Path]:
    """Delete temporary folders that a killed build left behind; returns what was removed."""
    removed = []
    if collection_folder.is_dir():
        for path in collection_folder.iterdir():
            if TEMPORARY_MARK in path.name and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def exact_distances(
    descriptors: np.ndarray, query: np.ndarray, metric: str, squared_norms: np.ndarray | None = None
) -> np.ndarray:
    """Distance from `query` to every row, in the same units Annoy reports for that metric.

    `squared_norms` (one per row) may be passed in when the rows are searched again and again: it
    saves a second pass over the whole matrix per query.
    """
    query = np.asarray(query, dtype=np.float32).reshape(-1)
    if squared_norms is None:
        squared_norms = np.einsum("ij,ij->i", descriptors, descriptors)
    products = descriptors @ query
    if metric == "cosine":
        cosine = products / np.maximum(np.sqrt(squared_norms) * np.linalg.norm(query), 1e-12)
        return np.sqrt(np.maximum(2.0 - 2.0 * cosine, 0.0))
    if metric == "euclidean":
        return np.sqrt(np.maximum(squared_norms - 2.0 * products + float(query @ query), 0.0))
    raise ValueError(f"unknown metric {metric!r}; known metrics: {', '.join(METRICS)}")


def cosine_similarity(distance: np.ndarray | float) -> np.ndarray | float:
    """Annoy's angular distance back to cosine similarity."""
    return 1.0 - np.square(distance) / 2.0


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known metrics: {', '.join(METRICS)}")
    return metric


@dataclass
class LoadedIndex:
    """A loaded index folder: manifest, memory-mapped descriptors, lazily memory-mapped Annoy files."""

    folder: Path
    manifest: Manifest
    descriptors: np.ndarray = field(repr=False)
    _annoy: dict[str, Any] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _squared_norms: np.ndarray | None = field(default=None, repr=False)

    @property
    def squared_norms(self) -> np.ndarray:
        """Per-row squared norms, computed once: every exact search needs them."""
        if self._squared_norms is None:
            self._squared_norms = np.einsum("ij,ij->i", self.descriptors, self.descriptors)
        return self._squared_norms

    def __len__(self) -> int:
        return len(self.manifest.images)

    def annoy(self, metric: str):
        from annoy import AnnoyIndex

        check_metric(metric)
        with self._lock:
            if metric not in self._annoy:
                path = self.folder / annoy_file(metric)
                index = AnnoyIndex(self.manifest.dim, METRICS[metric])
                try:
                    index.load(str(path))  # memory-mapped, not read into RAM
                except OSError as error:
                    raise IndexLoadError(
                        f"cannot load {path} ({error}). Rebuild it: "
                        + rebuild_command(self.manifest.collection, self.manifest.backbone)
                    ) from None
                if index.get_n_items() != len(self):
                    raise IndexLoadError(
                        f"{path} holds {index.get_n_items()} items but the manifest lists {len(self)} images. "
                        "Rebuild it: " + rebuild_command(self.manifest.collection, self.manifest.backbone)
                    )
                self._annoy[metric] = index
            return self._annoy[metric]

    def search_exact(self, query: np.ndarray, metric: str, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Row ids and distances of the k nearest rows (all rows if k is None), nearest first.

        Ties are broken by row order, so the ranking is deterministic.
        """
        check_metric(metric)
        distances = exact_distances(self.descriptors, query, metric, self.squared_norms)
        n = len(distances)
        if k is None or k >= n:
            order = np.argsort(distances, kind="stable")
        else:
            candidates = np.argpartition(distances, k - 1)[:k]
            order = candidates[np.lexsort((candidates, distances[candidates]))]
        return order, distances[order]

    def search_annoy(
        self, query: np.ndarray, metric: str, k: int, *, candidates: int = DEFAULT_CANDIDATES, rerank: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Row ids and distances of the k nearest rows through Annoy.

        Annoy proposes max(k, candidates) rows; with `rerank` their exact distances decide the
        order, so Annoy only has to find the right neighbourhood.
        """
        index = self.annoy(metric)
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        pool = max(k, candidates if rerank else k)
        rows, distances = index.get_nns_by_vector(query, pool, include_distances=True)
        rows = np.asarray(rows, dtype=np.int64)
        distances = np.asarray(distances, dtype=np.float32)
        if rerank and len(rows):
            distances = exact_distances(self.descriptors[rows], query, metric, self.squared_norms[rows])
        order = np.lexsort((rows, distances))[:k]
        return rows[order], distances[order]

    def close(self) -> None:
        with self._lock:
            for index in self._annoy.values():
                index.unload()
            self._annoy.clear()


def load_index(
    folder: Path,
    *,
    expected_backbone: str | None = None,
    expected_dim: int | None = None,
) -> LoadedIndex:
    """Load an index folder after checking that its manifest matches what the caller expects."""
    folder = Path(folder)
    if not folder.is_dir():
        raise IndexLoadError(
            f"no index at {folder}. Build it: "
            + rebuild_command(folder.parent.name, folder.name).replace(" --force", "")
        )
    manifest = Manifest.read(folder)
    fix = "Rebuild it: " + rebuild_command(manifest.collection, expected_backbone or manifest.backbone)
    if expected_backbone is not None and manifest.backbone != expected_backbone:
        raise IndexLoadError(
            f"{folder} was built by {manifest.backbone}, not {expected_backbone}; its descriptors cannot be "
            f"compared with {expected_backbone}'s. {fix}"
        )
    if expected_dim is not None and manifest.dim != expected_dim:
        raise IndexLoadError(f"{folder} holds {manifest.dim}-d descriptors, expected {expected_dim}-d. {fix}")
    missing = [name for name in (DESCRIPTORS, *map(annoy_file, METRICS)) if not (folder / name).is_file()]
    if missing:
        raise IndexLoadError(f"{folder} is missing {', '.join(missing)}. {fix}")
    try:
        descriptors = np.load(folder / DESCRIPTORS, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise IndexLoadError(f"{folder / DESCRIPTORS} is unreadable ({error}). {fix}") from None
    if descriptors.shape != (len(manifest.images), manifest.dim):
        raise IndexLoadError(
            f"{folder / DESCRIPTORS} has shape {descriptors.shape}, the manifest says "
            f"{len(manifest.images)} x {manifest.dim}. {fix}"
        )
    return LoadedIndex(folder, manifest, descriptors)


def version_warnings(manifest: Manifest, current: dict[str, str]) -> list[str]:
    """Keras/TensorFlow drift changes descriptors silently: say so when versions differ."""
    warnings = []
    for package, built_with in manifest.versions.items():
        now = current.get(package)
        if now and built_with and now != built_with:
            warnings.append(
                f"{manifest.collection}/{manifest.backbone} was built with {package} {built_with}, "
                f"this process runs {now}; descriptors may differ slightly. Rebuild to be sure: "
                + rebuild_command(manifest.collection, manifest.backbone)
            )
    return warnings


@dataclass(frozen=True)
class IndexInfo:
    """One built index, as a list of what can be searched shows it."""

    collection: str
    backbone: str
    dim: int
    n_images: int
    weights_identity: str
    untrained: bool
    folder: Path


def list_indexes(index_root: Path) -> list[IndexInfo]:
    """Every finished index under `index_root` (temporary folders and broken manifests are left out)."""
    found = []
    root = Path(index_root)
    if not root.is_dir():
        return found
    for manifest_path in sorted(root.glob(f"*/*/{MANIFEST}")):
        folder = manifest_path.parent
        if TEMPORARY_MARK in folder.name:
            continue
        try:
            manifest = Manifest.read(folder)
        except IndexLoadError as error:
            logger.warning("ignoring %s: %s", folder, error)
            continue
        found.append(
            IndexInfo(
                manifest.collection,
                manifest.backbone,
                manifest.dim,
                len(manifest.images),
                manifest.weights_identity,
                manifest.untrained,
                folder,
            )
        )
    return found

