"""Spatial verification: the top of a ranking re-ordered by how many local features of the query
and of each result agree on one geometric transformation (Philbin et al., CVPR 2007).

For each of the top `top_n` rows: the query's RootSIFT descriptors (cbir.local_features) are
matched to the row's stored ones, keeping pairs that are each other's nearest neighbours and pass
Lowe's ratio test; a homography is fitted to the pairs by OpenCV's USAC RANSAC with MAGSAC++
scoring (`cv2.USAC_MAGSAC`): it weighs each pair by its residual up to a largest one instead of
cutting at one threshold, so the fit depends little on that setting (REPROJECTION_PIXELS), and it
was the most accurate of OpenCV's RANSAC variants in Mishkin's evaluation (2021). The pairs it
explains are the inliers. Rows with at least `min_inliers`
move ahead of the others, most inliers first; the rest keep the order of the global ranking.

Why a homography: the photos this project serves are mostly of buildings, and two views of a
planar façade differ exactly by a homography (perspective included), which a similarity (rotation,
scale, shift) or an affine map only approximate at an oblique angle. A crop, rotation or rescale,
the edits a person makes, are homographies too (a recolouring moves no point). Its cost is 8 degrees of freedom,
which can fit a few chance matches: fits that fold or squash the picture (a negative or extreme
determinant of its linear part) are refused, and the inlier threshold is well above 4. The
similarity model (`GeometricModel.SIMILARITY`, cv2.estimateAffinePartial2D with plain RANSAC) is
kept as a choice for collections of flat edits (crops, rotations, rescales), where it is stricter.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from enum import Enum

import numpy as np

from cbir.distances import Metric
from cbir.errors import SettingsError
from cbir.index import LoadedIndex
from cbir.local_features import ImageFeatures, opencv
from cbir.ranking import Ranking

VERIFY_TOP = 100
# Inliers from which a result counts as the same scene: chance matches between unrelated photos
# rarely reach it under a homography (tests/test_verification.py measures both sides).
MIN_INLIERS = 15
# Lowe's ratio (Lowe, IJCV 2004: at 0.8 most false matches go and few true ones).
RATIO = 0.8
# RANSAC's largest residual counted as an inlier, in pixels of the described images.
REPROJECTION_PIXELS = 6.0
RANSAC_ITERATIONS = 2000
RANSAC_CONFIDENCE = 0.999
# A fitted map whose linear part scales areas beyond this factor (either way) is not a view change.
MAX_AREA_CHANGE = 30.0
# Result keypoints whose descriptors are multiplied with the query's in one product (a few MB).
_COLUMNS_PER_PRODUCT = 8192


class GeometricModel(str, Enum):
    HOMOGRAPHY = "homography"
    SIMILARITY = "similarity"


@dataclass(frozen=True)
class Match:
    """What verifying one result found: the inlier pairs and the transform (query -> result, in
    pixels of the images as loaded; None when nothing was fitted)."""

    inliers: int
    query_points: np.ndarray  # float32 (inliers, 2)
    result_points: np.ndarray  # float32 (inliers, 2)
    transform: np.ndarray | None  # 3 x 3


NO_MATCH = Match(0, np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32), None)


def mutual_ratio_matches(query: ImageFeatures, result: ImageFeatures, ratio: float = RATIO) -> tuple[np.ndarray, np.ndarray]:
    """(query indices, result indices) of descriptor pairs that are mutual nearest neighbours and
    pass the ratio test (nearest distance < ratio x second nearest) in the query's direction."""
    if len(query) < 2 or len(result) < 2:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    return matches_of_similarities(query.unit_descriptors() @ result.unit_descriptors().T, ratio)


def matches_of_similarities(similarity: np.ndarray, ratio: float = RATIO) -> tuple[np.ndarray, np.ndarray]:
    """`mutual_ratio_matches` from the (query x result) descriptor similarities (not modified)."""
    if similarity.shape[0] < 2 or similarity.shape[1] < 2:
        return np.zeros(0, np.intp), np.zeros(0, np.intp)
    rows = np.arange(similarity.shape[0])
    nearest = np.argmax(similarity, axis=1)
    best = similarity[rows, nearest]
    others = similarity.copy()
    others[rows, nearest] = -np.inf
    runner_up = np.max(others, axis=1)
    # Unit vectors: squared distance = 2 - 2 x similarity (quantising leaves them within 1% of unit).
    passes = np.maximum(2.0 - 2.0 * best, 0.0) < ratio**2 * np.maximum(2.0 - 2.0 * runner_up, 0.0)
    mutual = np.argmax(similarity, axis=0)[nearest] == rows
    keep = passes & mutual
    return rows[keep], nearest[keep]


def _scaling(shrink: float) -> np.ndarray:
    return np.diag([shrink, shrink, 1.0])


def _plausible(transform: np.ndarray) -> bool:
    # Equivalent mutants: this only spares numpy's warnings; the area bounds below refuse the same fits.
    if not np.all(np.isfinite(transform)) or abs(transform[2, 2]) < 1e-12:  # pragma: no mutate
        return False
    linear = transform[:2, :2] / transform[2, 2]
    determinant = float(np.linalg.det(linear))
    return 1.0 / MAX_AREA_CHANGE < determinant < MAX_AREA_CHANGE


def fit_transform(
    query_points: np.ndarray, result_points: np.ndarray, model: GeometricModel = GeometricModel.HOMOGRAPHY
) -> tuple[np.ndarray | None, np.ndarray]:
    """(3 x 3 transform or None, boolean inlier mask) of RANSAC on point pairs (module docstring)."""
    cv2 = opencv()
    count = len(query_points)
    nothing = np.zeros(count, dtype=bool)
    needed = 4 if model is GeometricModel.HOMOGRAPHY else 2
    if count < needed:
        return None, nothing
    source = np.ascontiguousarray(query_points, dtype=np.float32).reshape(-1, 1, 2)
    target = np.ascontiguousarray(result_points, dtype=np.float32).reshape(-1, 1, 2)
    if model is GeometricModel.HOMOGRAPHY:
        transform, mask = cv2.findHomography(source, target, cv2.USAC_MAGSAC, REPROJECTION_PIXELS,
                                             maxIters=RANSAC_ITERATIONS, confidence=RANSAC_CONFIDENCE)  # fmt: skip
    else:
        affine, mask = cv2.estimateAffinePartial2D(source, target, method=cv2.RANSAC,
                                                   ransacReprojThreshold=REPROJECTION_PIXELS,
                                                   maxIters=RANSAC_ITERATIONS, confidence=RANSAC_CONFIDENCE)  # fmt: skip
        transform = None if affine is None else np.vstack([affine, [0.0, 0.0, 1.0]])
    if transform is None or mask is None or not _plausible(transform):
        return None, nothing
    return transform, mask.reshape(-1).astype(bool)


def verify_pair(
    query: ImageFeatures,
    result: ImageFeatures,
    *,
    model: GeometricModel = GeometricModel.HOMOGRAPHY,
    ratio: float = RATIO,
    similarity: np.ndarray | None = None,
    min_matches: int = 4,
) -> Match:
    """Match, fit and count: what the query and one result's features agree on. `similarity`: their
    descriptors' products, when computed already; fewer than `min_matches` matches are not fitted
    (they cannot give that many inliers)."""
    if similarity is None:
        query_index, result_index = mutual_ratio_matches(query, result, ratio)
    else:
        query_index, result_index = matches_of_similarities(similarity, ratio)
    if len(query_index) < min_matches:
        return NO_MATCH
    transform, inliers = fit_transform(query.positions[query_index], result.positions[result_index], model)
    if transform is None:
        return NO_MATCH
    # Fitted in described pixels; reported in the pixels of the images as loaded.
    in_pixels = _scaling(result.shrink) @ transform @ np.linalg.inv(_scaling(query.shrink))
    return Match(
        int(inliers.sum()),
        query.original_positions()[query_index[inliers]],
        result.original_positions()[result_index[inliers]],
        in_pixels / in_pixels[2, 2],
    )


@dataclass(frozen=True)
class SpatialVerification:
    """A re-ranker (cbir.ranking.rank): the top `top_n` rows verified against the query's local
    features, those with at least `min_inliers` moved ahead in order of inliers (module docstring).

    Needs `query_features`: SearchEngine.search describes its query and fills them in
    (`for_query`); the index must have been built with local features. With αQE, the order of the
    re-rankers decides: (verification, αQE) expands with the verified top, (αQE, verification)
    verifies the expanded ranking.
    """

    top_n: int = VERIFY_TOP
    min_inliers: int = MIN_INLIERS
    ratio: float = RATIO
    model: GeometricModel = GeometricModel.HOMOGRAPHY
    query_features: ImageFeatures | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.top_n < 1:
            raise SettingsError(f"spatial verification needs top_n >= 1, got {self.top_n}")
        if self.min_inliers < 4:
            raise SettingsError(f"spatial verification needs min_inliers >= 4 (a homography fits any 4), got {self.min_inliers}")
        if not (math.isfinite(self.ratio) and 0 < self.ratio <= 1):
            raise SettingsError(f"the ratio test's ratio is in (0, 1], got {self.ratio}")

    @property
    def label(self) -> str:
        return f"spatial verification (top {self.top_n}, {self.model.value}, >= {self.min_inliers} inliers)"

    @property
    def depth(self) -> int:
        """Results the first search must return (`rank` asks for at least these)."""
        return self.top_n

    def for_query(self, features: ImageFeatures) -> SpatialVerification:
        return replace(self, query_features=features)

    def verify(self, results: Iterable[ImageFeatures]) -> Iterator[Match]:
        """What the query's features and each result's agree on, in order. The descriptor products
        are computed for several results at once: one large product was several times faster than
        many small ones on a loaded machine (docs/performance.md)."""
        query = self.query_features
        if query is None:
            raise SettingsError("spatial verification needs the query's local features (SpatialVerification.for_query)")
        unit_query = query.unit_descriptors()
        batch: list[ImageFeatures] = []
        for result in [*results, None]:
            if result is not None:
                batch.append(result)
                if sum(len(r) for r in batch) < _COLUMNS_PER_PRODUCT:
                    continue
            if not batch:
                break
            products = unit_query @ np.concatenate([r.unit_descriptors() for r in batch]).T
            start = 0
            for member in batch:
                similarity = products[:, start : start + len(member)]
                start += len(member)
                yield verify_pair(query, member, model=self.model, ratio=self.ratio, similarity=similarity,
                                  min_matches=self.min_inliers)  # fmt: skip
            batch = []

    def __call__(self, index: LoadedIndex, query: np.ndarray, metric: Metric, ranking: Ranking) -> Ranking:
        stored = index.local_features
        rows = np.asarray(ranking.rows)
        examined = min(self.top_n, len(rows))
        inliers = np.full(len(rows), -1, dtype=np.int64)  # -1: not examined
        for position, found in enumerate(self.verify(stored.image(int(row)) for row in rows[:examined])):
            inliers[position] = found.inliers
        verified = np.flatnonzero(inliers >= self.min_inliers)
        verified = verified[np.argsort(-inliers[verified], kind="stable")]  # ties keep the global order
        rest = np.setdiff1d(np.arange(len(rows)), verified, assume_unique=True)
        order = np.concatenate([verified, rest]).astype(np.intp)
        return Ranking(rows[order], np.asarray(ranking.distances)[order], ranking.exact, inliers=inliers[order],
                       verified=len(verified))  # fmt: skip
