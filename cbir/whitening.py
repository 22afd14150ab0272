"""PCA-whitening of descriptors, learned on one collection and applied to another.

Learned as in Radenovic et al.'s cnnimageretrieval (`pcawhitenlearn` / `whitenapply`), on
L2-normalised descriptors: centre them, rotate onto the principal axes of their covariance, scale
each axis by 1 / sqrt(its variance), keep the `dim` strongest axes, L2-normalise again. Whitening
evens out the bursty, correlated dimensions of off-the-shelf CNN descriptors; learning it on a
*different* collection (Paris6k for Oxford5k and the reverse) is the standard protocol, so the test
collection's own images never shape the transform. Learned on the same collection it is allowed,
and labelled as such in the manifest.

The transform is data, not code: an `.npz` of plain arrays (read with allow_pickle=False) beside
the index rows, applied to the database rows at build time and to each query by the index.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cbir import atomic
from cbir.distances import l2_normalise
from cbir.errors import SettingsError

WHITENING_FILE = "whitening.npz"
# Axes with less variance than this fraction of the largest carry no information (fewer
# descriptors than dimensions); whitening would divide by about zero.
MIN_VARIANCE_RATIO = 1e-9


@dataclass(frozen=True)
class WhiteningSource:
    """What a whitening was learned on: written in the manifest of the index that uses it."""

    collection: str
    recipe_key: str  # the source index's recipe (the whitened recipe before whitening)
    n_descriptors: int
    descriptors_sha256: str  # of the source index's rows: a rebuilt source means a new whitening
    same_collection: bool  # learned on the collection it is applied to (not the standard protocol)

    def to_json(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "recipe_key": self.recipe_key,
            "n_descriptors": self.n_descriptors,
            "descriptors_sha256": self.descriptors_sha256,
            "same_collection": self.same_collection,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WhiteningSource:
        return cls(
            str(data["collection"]),
            str(data["recipe_key"]),
            int(data["n_descriptors"]),
            str(data["descriptors_sha256"]),
            bool(data["same_collection"]),
        )


@dataclass(frozen=True)
class Whitening:
    mean: np.ndarray  # (d,) mean of the L2-normalised training descriptors
    projection: np.ndarray  # (dim, d): principal axes, each scaled by 1 / sqrt(its variance)

    @property
    def dim(self) -> int:
        return self.projection.shape[0]

    @property
    def input_dim(self) -> int:
        return self.projection.shape[1]

    def apply(self, descriptors: np.ndarray) -> np.ndarray:
        """Whitened, L2-normalised rows of a (n, d) or (d,) array."""
        rows = np.atleast_2d(np.asarray(descriptors, dtype=np.float64))
        if rows.shape[1] != self.input_dim:
            raise ValueError(f"this whitening takes {self.input_dim}-d descriptors, not {rows.shape[1]}-d")
        whitened = (l2_normalise(rows) - self.mean) @ self.projection.T
        whitened = l2_normalise(whitened).astype(np.float32)
        return whitened[0] if np.ndim(descriptors) == 1 else whitened

    def save(self, path: Path) -> None:
        def write(temporary: Path) -> None:
            with open(temporary, "wb") as handle:
                np.savez(handle, mean=self.mean, projection=self.projection)

        atomic.write_file(Path(path), write)

    @classmethod
    def load(cls, path: Path) -> Whitening:
        with np.load(
            path,
            allow_pickle=False,  # pragma: no mutate -- numpy's default, named: the file is data, never code
        ) as data:
            return cls(np.asarray(data["mean"], np.float64), np.asarray(data["projection"], np.float64))


def learn_whitening(descriptors: np.ndarray, dim: int | None = None, *, source: str = "the collection") -> Whitening:
    """Learn a PCA-whitening on (n, d) descriptors, keeping `dim` axes (None: all d)."""
    rows = l2_normalise(np.asarray(descriptors, dtype=np.float64))
    n, d = rows.shape
    dim = dim or d
    if dim > d:
        raise SettingsError(f"whitening can keep at most {d} dimensions of {d}-d descriptors, not {dim}")
    mean = rows.mean(axis=0)
    centred = rows - mean
    covariance = centred.T @ centred / max(n, 1)
    variances, axes = np.linalg.eigh(covariance)  # ascending
    order = np.argsort(variances)[::-1][:dim]
    variances, axes = variances[order], axes[:, order]
    largest = variances[0] if len(variances) else 0.0
    informative = int(np.sum(variances > MIN_VARIANCE_RATIO * max(largest, 1e-300)))
    if largest <= 0 or informative < dim:
        raise SettingsError(
            f"{source} gives {n} descriptors, which span only {informative} dimensions; whitening to {dim} "
            f"dimensions needs more images than that. Learn it on a bigger collection, or keep fewer "
            f"dimensions (--dim {max(informative, 1)} or less)"
        )
    projection = axes.T / np.sqrt(variances)[:, None]
    return Whitening(mean, projection)
