"""Local features: RootSIFT keypoints of each image, for spatial verification (cbir.verification).

An image is loaded exactly as a build loads it (cbir.images: the same size and format checks),
turned grey, shrunk so that its longer side is at most `max_side`, and described by OpenCV's SIFT;
the `max_keypoints` strongest keypoints (by detector response) are kept. RootSIFT (Arandjelović &
Zisserman, CVPR 2012): each descriptor L1-normalised and square-rooted, so that the Euclidean
distance between two of them is the Hellinger kernel of the originals; the result has unit L2 norm
and values in [0, 1], stored as uint8 (value x 255).

One file per index folder, `local_features.npz` (numpy's uncompressed zip, no pickled objects):

    offsets      int64 (images + 1)   image i owns keypoints offsets[i]:offsets[i + 1]
    positions    float16 (n, 2)       x, y in pixels of the described (shrunk) image
    scales       float16 (n,)         keypoint size, pixels of the described image
    orientations float16 (n,)         degrees
    descriptors  uint8 (n, 128)       RootSIFT x 255
    shrink       float32 (images,)    original pixels per described pixel (1 when not shrunk)

float16 positions are exact to a quarter pixel below 1024 px, which is finer than SIFT localises.
The members can be memory-mapped (they are stored uncompressed), so a large collection's features
are read a page at a time, only for the images verified; an index reads a small file whole, as it
does its descriptors (cbir.index.IN_MEMORY_BYTES).

The defaults come from bench/local_features.py (bench/results/local_features.md; docs say why).
"""

from __future__ import annotations

import logging
import mmap
import struct
import time
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cbir import atomic
from cbir.images import DEFAULT_LIMITS, Box, ImageError, ImageLimits, ImageSource, crop_box, load_image

logger = logging.getLogger(__name__)

LOCAL_FEATURES_FILE = "local_features.npz"
INSTALL_HINT = "pip install opencv-python-headless (requirements.txt)"
DESCRIPTOR_SIZE = 128
_MEMBERS = ("offsets", "positions", "scales", "orientations", "descriptors", "shrink")
_ZIP_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # the zip format's local file header (30 bytes)

# Chosen from bench/results/local_features.md (docs/performance.md, "Local features"): a longer
# side bought no verified query and cost build time; more keypoints widen the gap between true and
# chance inliers, at bytes and verification time that grow with them.
DEFAULT_MAX_SIDE = 512
DEFAULT_MAX_KEYPOINTS = 500


class LocalFeaturesError(ValueError):
    """A features file that cannot be read as one."""


@dataclass(frozen=True)
class LocalFeatureSettings:
    """How a collection's local features are made; recorded in the manifest, and the query is
    described alike. `max_side`: the longer side images are shrunk to before SIFT (detail finer
    than that is lost, time and keypoints grow with the area); `max_keypoints`: the strongest kept
    (storage and matching time grow with it, linearly and quadratically)."""

    max_side: int = DEFAULT_MAX_SIDE
    max_keypoints: int = DEFAULT_MAX_KEYPOINTS

    def __post_init__(self) -> None:
        if self.max_side < 32 or self.max_keypoints < 4:
            raise ValueError(f"local features need max_side >= 32 and max_keypoints >= 4, got {self}")

    def to_json(self) -> dict[str, Any]:
        return {"method": "rootsift", "max_side": self.max_side, "max_keypoints": self.max_keypoints}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LocalFeatureSettings:
        if data.get("method", "rootsift") != "rootsift":
            raise ValueError(f"local features by {data.get('method')!r}, this code makes RootSIFT only")
        return cls(int(data["max_side"]), int(data["max_keypoints"]))


@dataclass(frozen=True)
class ImageFeatures:
    """The keypoints of one image, strongest first."""

    positions: np.ndarray  # float32 (n, 2): x, y in pixels of the described image
    scales: np.ndarray  # float32 (n,)
    orientations: np.ndarray  # float32 (n,), degrees
    descriptors: np.ndarray  # uint8 (n, 128): RootSIFT x 255
    shrink: float = 1.0  # original pixels per described pixel

    def __len__(self) -> int:
        return len(self.descriptors)

    def unit_descriptors(self) -> np.ndarray:
        """float32 descriptors of (nearly) unit length, as RootSIFT made them before quantising."""
        return np.asarray(self.descriptors, dtype=np.float32) / 255.0

    def original_positions(self) -> np.ndarray:
        """Positions in pixels of the image as loaded (before the shrink)."""
        return self.positions * self.shrink


def opencv() -> Any:
    try:
        import cv2
    except ImportError as error:
        raise ImportError(f"local features need OpenCV: {INSTALL_HINT}") from error
    return cv2


def root_sift(descriptors: np.ndarray) -> np.ndarray:
    """RootSIFT of SIFT descriptors: L1-normalised, then square-rooted (unit L2 norm)."""
    descriptors = np.asarray(descriptors, dtype=np.float32)
    totals = np.abs(descriptors).sum(axis=1, keepdims=True)
    return np.sqrt(descriptors / np.maximum(totals, 1e-12))


def quantise(unit: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)


def describe_picture(picture: Image.Image, settings: LocalFeatureSettings = LocalFeatureSettings()) -> ImageFeatures:
    """The local features of a loaded picture (an RGB PIL image, as cbir.images loads them)."""
    cv2 = opencv()
    grey = picture.convert("L")
    longer = max(grey.size)
    shrink = 1.0
    if longer > settings.max_side:
        shrink = longer / settings.max_side
        size = (max(1, round(grey.width / shrink)), max(1, round(grey.height / shrink)))
        grey = grey.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    # Detect all, keep the strongest by response, describe only those: a bound of n then keeps the
    # first n of a larger bound (SIFT's own nfeatures did not, in tests/test_local_features.py).
    sift = cv2.SIFT_create()
    pixels = np.asarray(grey)
    keypoints = sift.detect(pixels, None)
    strongest = np.argsort([-point.response for point in keypoints], kind="stable")[: settings.max_keypoints]
    chosen, descriptors = sift.compute(pixels, [keypoints[i] for i in strongest])
    if descriptors is None or not chosen:
        return no_features(shrink)
    return ImageFeatures(
        positions=np.array([point.pt for point in chosen], dtype=np.float32).reshape(-1, 2),
        scales=np.array([point.size for point in chosen], dtype=np.float32),
        orientations=np.array([point.angle for point in chosen], dtype=np.float32),
        descriptors=quantise(root_sift(descriptors)),
        shrink=shrink,
    )


def picture_as_described(
    source: ImageSource,
    settings: LocalFeatureSettings,
    box: Box | None = None,
    *,
    name: str | None = None,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> Image.Image:
    """An image loaded as its local features are made from it, for a build's collection file
    (`describe_image`) and a search's query (SearchEngine.describe_locally) alike: a file without a
    box decoded at the reduced JPEG scale that keeps `max_side` pixels, then cut to `box`. The
    points of a verification's `Match` are in this picture's pixels (cbir.match_drawing)."""
    draft = settings.max_side if isinstance(source, (str, Path)) and box is None else None
    picture = load_image(source, name=name, limits=limits, draft_size=draft)
    return crop_box(picture, box, limits=limits, name=name or "the image") if box is not None else picture


def describe_image(
    source: ImageSource,
    settings: LocalFeatureSettings = LocalFeatureSettings(),
    *,
    name: str | None = None,
    limits: ImageLimits = DEFAULT_LIMITS,
) -> ImageFeatures:
    """The local features of an image file (or bytes, PIL image, array), loaded by cbir.images with
    its checks; a JPEG is decoded at the smallest scale that keeps its shorter side >= max_side."""
    return describe_picture(picture_as_described(source, settings, name=name, limits=limits), settings)


def describe_images(
    root: Path, images: Sequence[str], settings: LocalFeatureSettings, *, limits: ImageLimits = DEFAULT_LIMITS
) -> list[ImageFeatures]:
    """The local features of each image (paths relative to `root`), in order. An image that cannot be
    loaded gets none and a warning: a build calls this for images its network has just read."""
    started = time.perf_counter()
    described = []
    for image in images:
        try:
            described.append(describe_image(Path(root) / image, settings, name=image, limits=limits))
        except ImageError as error:
            logger.warning("no local features for %s (%s)", image, error)
            described.append(no_features())
    logger.info("local features of %d images in %.1f s (%d keypoints in all)", len(images),
                time.perf_counter() - started, sum(len(features) for features in described))  # fmt: skip
    return described


def no_features(shrink: float = 1.0) -> ImageFeatures:
    return ImageFeatures(np.zeros((0, 2), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32),
                         np.zeros((0, DESCRIPTOR_SIZE), np.uint8), shrink)  # fmt: skip


def write_features(path: Path, features: Iterable[ImageFeatures]) -> None:
    """Write one features file for the images in row order (atomically, see cbir.atomic)."""
    features = list(features)
    counts = np.array([len(f) for f in features], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def stacked(name: str, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        parts = [np.asarray(getattr(f, name), dtype=dtype).reshape(-1, *shape) for f in features]
        return np.concatenate(parts) if parts else np.zeros((0, *shape), dtype=dtype)

    arrays = {
        "offsets": offsets,
        "positions": stacked("positions", np.float16, (2,)),
        "scales": stacked("scales", np.float16, ()).reshape(-1),
        "orientations": stacked("orientations", np.float16, ()).reshape(-1),
        "descriptors": stacked("descriptors", np.uint8, (DESCRIPTOR_SIZE,)),
        "shrink": np.array([f.shrink for f in features], dtype=np.float32),
    }
    atomic.write_file(Path(path), lambda temporary: _save(temporary, arrays))


def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as file:
        np.savez(file, **arrays)  # uncompressed: the members can be memory-mapped


@dataclass
class FeaturesFile:
    """A features file opened for reading: each member memory-mapped, nothing read until used."""

    path: Path
    arrays: dict[str, np.ndarray] = field(repr=False)

    def __len__(self) -> int:
        return len(self.arrays["offsets"]) - 1

    @property
    def n_keypoints(self) -> int:
        return int(self.arrays["offsets"][-1])

    def image(self, row: int) -> ImageFeatures:
        """The features of the image in `row`."""
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} of a features file of {len(self)} images")
        start, stop = int(self.arrays["offsets"][row]), int(self.arrays["offsets"][row + 1])
        return ImageFeatures(
            positions=np.asarray(self.arrays["positions"][start:stop], dtype=np.float32),
            scales=np.asarray(self.arrays["scales"][start:stop], dtype=np.float32),
            orientations=np.asarray(self.arrays["orientations"][start:stop], dtype=np.float32),
            descriptors=np.array(self.arrays["descriptors"][start:stop]),  # a copy: the file may be replaced
            shrink=float(self.arrays["shrink"][row]),
        )


def read_features(path: Path, n_images: int | None = None, *, in_memory: bool = False) -> FeaturesFile:
    """Open a features file written by `write_features`, checking its members' shapes against each
    other (and `n_images`); LocalFeaturesError for anything else. `in_memory`: read it whole rather
    than leave it mapped (cbir.index: a mapped file cut short under a server kills the process)."""
    path = Path(path)
    try:
        arrays = _map_members(path)
        if in_memory:
            arrays = {name: np.array(array) for name, array in arrays.items()}
    except (OSError, ValueError, zipfile.BadZipFile, struct.error) as error:
        raise LocalFeaturesError(f"{path} is not a readable features file ({error})") from None
    missing = [name for name in _MEMBERS if name not in arrays]
    if missing:
        raise LocalFeaturesError(f"{path} lacks {', '.join(missing)}")
    offsets = arrays["offsets"]
    total = int(offsets[-1]) if len(offsets) else -1
    images = len(offsets) - 1
    problems = []
    if images < 0 or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
        problems.append("its offsets do not rise from 0")
    if arrays["descriptors"].shape != (total, DESCRIPTOR_SIZE) or arrays["descriptors"].dtype != np.uint8:
        problems.append(f"descriptors of shape {arrays['descriptors'].shape}, not ({total}, {DESCRIPTOR_SIZE}) uint8")
    if arrays["positions"].shape != (total, 2):
        problems.append(f"positions of shape {arrays['positions'].shape}")
    if arrays["scales"].shape != (total,) or arrays["orientations"].shape != (total,):
        problems.append("scales or orientations of the wrong length")
    if arrays["shrink"].shape != (images,):
        problems.append("one shrink per image expected")
    if n_images is not None and images != n_images:
        problems.append(f"{images} images, the index has {n_images}")
    if problems:
        raise LocalFeaturesError(f"{path}: {'; '.join(problems)}")
    return FeaturesFile(path, arrays)


def _map_members(path: Path) -> dict[str, np.ndarray]:
    """Every .npy member of an uncompressed zip, memory-mapped in place (np.load would read each
    whole into memory)."""
    arrays = {}
    with open(path, "rb") as file, zipfile.ZipFile(file) as archive:
        if not archive.infolist():
            return arrays
        whole = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"member {info.filename} is compressed")
            header = _ZIP_LOCAL_HEADER.unpack_from(whole, info.header_offset)
            if header[0] != b"PK\x03\x04":
                raise ValueError(f"member {info.filename} has no local header")
            start = info.header_offset + _ZIP_LOCAL_HEADER.size + header[-2] + header[-1]
            file.seek(start)
            version = np.lib.format.read_magic(file)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(file)
            if dtype.hasobject:
                raise ValueError(f"member {info.filename} holds Python objects")
            data = file.tell()
            expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if data + expected > start + info.file_size:
                raise ValueError(f"member {info.filename} is cut short")
            array = np.ndarray(shape, dtype=dtype, buffer=whole, offset=data, order="F" if fortran else "C")
            arrays[info.filename.removesuffix(".npy")] = array
    return arrays
