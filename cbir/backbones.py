"""The six backbone networks, as data, and the trunk each recipe runs.

A backbone is one `Backbone(...)` row of `BACKBONES`; nothing else in the project names a network.
A trunk is the built network a recipe's pooling reads: the convolutional feature map, or, for the
study's descriptor of VGG16, its `fc1` layer. `ExtractorCache` builds each trunk once per process
and gives out `FeatureExtractor`s (trunk + pooling) per recipe.

Keras/TensorFlow are imported inside functions so that `import cbir` stays cheap (the app starts
answering before any network is built).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from cbir.errors import CbirError, SettingsError

if TYPE_CHECKING:
    from cbir.recipe import Recipe

logger = logging.getLogger(__name__)

# Random-init networks must give the same descriptors in the build process and in the app process,
# otherwise an untrained index could never be searched. Keras initialisers are deterministic for a
# given global seed (checked across processes), so every untrained build uses this seed.
UNTRAINED_SEED = 1234


@dataclass(frozen=True)
class Backbone:
    """One row of the registry: everything needed to build the network and read its outputs."""

    name: str
    constructor: str  # attribute of keras.applications
    module: str  # keras.applications.<module>.preprocess_input is this network's own preprocessing
    input_size: int  # the size its ImageNet weights were trained at
    dim: int  # dimension of the study's descriptor (the `gap` recipe)
    # The study's descriptor is this layer of the full classifier (include_top=True) instead of the
    # average of the convolutional map (VGG16: fc1).
    feature_layer: str | None = None
    # Smallest input the architecture accepts: tests and smoke runs use small inputs to stay fast.
    min_input_size: int = 32
    # A fully connected feature layer fixes the input size (fc1 of VGG16 expects 7x7x512); the
    # pooled recipes read the convolutional map instead and take any size.
    fixed_input_size: bool = False
    # Channels of the last convolutional map (the network without its top), which the pooled
    # recipes (MAC, SPoC, GeM, R-MAC) give: VGG16's block5_pool has 512; the others' is `dim`.
    conv_channels: int | None = None

    @property
    def map_channels(self) -> int:
        return self.conv_channels or self.dim


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone("vgg16", "VGG16", "vgg16", 224, 4096, feature_layer="fc1", fixed_input_size=True, conv_channels=512),
        Backbone("xception", "Xception", "xception", 299, 2048, min_input_size=71),
        Backbone("inception_v3", "InceptionV3", "inception_v3", 299, 2048, min_input_size=75),
        Backbone(
            "inception_resnet_v2",
            "InceptionResNetV2",
            "inception_resnet_v2",
            299,
            1536,
            min_input_size=75,
        ),
        Backbone("resnet152_v2", "ResNet152V2", "resnet_v2", 224, 2048),
        Backbone("efficientnet_v2_l", "EfficientNetV2L", "efficientnet_v2", 480, 1280),
    )
}

DEFAULT_BACKBONE = "xception"


def get_backbone(name: str) -> Backbone:
    """Look a backbone up by name; an unknown name raises SettingsError listing the known ones."""
    try:
        return BACKBONES[name]
    except KeyError:
        known = ", ".join(BACKBONES)
        raise SettingsError(f"unknown backbone {name!r}; known backbones: {known}") from None


def parse_backbones(text: str) -> list[Backbone]:
    """'all' (every backbone of the registry) or a comma-separated list of names."""
    if text.strip().lower() == "all":
        return list(BACKBONES.values())
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise SettingsError("no backbone given; use 'all' or names such as " + ", ".join(BACKBONES))
    return [get_backbone(name) for name in names]


class WeightsKind(str, Enum):
    IMAGENET = "imagenet"
    FILE = "file"
    NONE = "none"


class WeightsError(CbirError):
    """A network that cannot be built with the weights asked for (download refused, bad file)."""


@dataclass(frozen=True)
class Weights:
    """Which weights a network carries: 'imagenet', a local weights file, or none (random init)."""

    kind: WeightsKind
    path: Path | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", WeightsKind(self.kind))

    @classmethod
    def parse(cls, text: str | None) -> Weights:
        value = (text or "imagenet").strip()
        if value.lower() == "imagenet":
            return cls(WeightsKind.IMAGENET)
        if value.lower() in {"none", "untrained", "random"}:
            return cls(WeightsKind.NONE)
        path = Path(value).expanduser().resolve()
        if not path.is_file():
            raise SettingsError(
                f"weights must be 'imagenet', 'none' or a path to a weights file; {value!r} is none of these"
            )
        return cls(WeightsKind.FILE, path=path, sha256=sha256_of(path))

    @property
    def untrained(self) -> bool:
        return self.kind is WeightsKind.NONE

    @property
    def identity(self) -> str:
        """A short string recorded in every manifest and result file; equal identities give equal
        descriptors (a weights file is named by its content, not its path)."""
        if self.kind is WeightsKind.IMAGENET:
            return "imagenet"
        if self.kind is WeightsKind.NONE:
            return f"untrained (random init, seed {UNTRAINED_SEED})"
        return f"file {self.path.name} sha256:{self.sha256[:16]}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "path": str(self.path) if self.path else None,
            "sha256": self.sha256,
            "identity": self.identity,
            "untrained": self.untrained,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Weights:
        path = Path(data["path"]) if data.get("path") else None
        return cls(WeightsKind(data["kind"]), path=path, sha256=data.get("sha256"))

    def to_keras_argument(self) -> str | None:
        if self.kind is WeightsKind.IMAGENET:
            return "imagenet"
        if self.kind is WeightsKind.FILE:
            return str(self.path)
        return None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_input_size(backbone: Backbone, requested: int | None, *, study_layer: bool = True) -> int:
    """The input size to build at: the backbone's own unless another is asked for and allowed
    (`study_layer`: the recipe reads the fully connected feature layer, which fixes the size)."""
    if requested is None or requested == backbone.input_size:
        return backbone.input_size
    if backbone.fixed_input_size and study_layer:
        raise SettingsError(
            f"{backbone.name} takes only {backbone.input_size} px inputs "
            f"(its {backbone.feature_layer} layer fixes the size)"
        )
    if requested < backbone.min_input_size:
        raise SettingsError(
            f"{backbone.name} needs inputs of at least {backbone.min_input_size} px, not {requested}"
        )
    return requested


@dataclass
class Trunk:
    """A built network and its preprocessing: uint8 RGB batches in, float32 outputs (feature maps,
    or the study layer's vectors) out.

    A trunk that reads the study layer (VGG16 fc1) takes `input_size` squares only; every other
    trunk is fully convolutional (`input_size` None) and takes batches of any one shape: TensorFlow
    traces it again for the first few new shapes, then for any shape.
    """

    backbone: Backbone
    weights: Weights
    input_size: int | None
    model: Any = field(repr=False)
    preprocess: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    # One forward pass at a time: the app serves requests from several threads.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        if batch.ndim == 3:
            batch = batch[None]
        if self.input_size is not None:
            expected = (self.input_size, self.input_size, 3)
            if batch.shape[1:] != expected:
                raise ValueError(f"{self.backbone.name} expects images of shape {expected}, got {batch.shape[1:]}")
        elif batch.ndim != 4 or batch.shape[3] != 3 or min(batch.shape[1:3]) < self.backbone.min_input_size:
            raise ValueError(
                f"{self.backbone.name} expects RGB images of at least {self.backbone.min_input_size} px a side, "
                f"got a batch of shape {batch.shape}"
            )
        # preprocess_input may write into its argument, and works on float input.
        pixels = self.preprocess(batch.astype(np.float32, copy=True))
        with self._lock:
            output = self.model.predict_on_batch(pixels)
        return np.asarray(output, dtype=np.float32)


@dataclass
class FeatureExtractor:
    """A recipe made runnable: its trunk, then its pooling (at each of its scales). uint8 images in,
    descriptors before whitening out (whitening is learned data, kept with the index)."""

    recipe: Recipe
    trunk: Trunk = field(repr=False)

    @property
    def backbone(self) -> Backbone:
        return self.trunk.backbone

    @property
    def weights(self) -> Weights:
        return self.trunk.weights

    @property
    def input_size(self) -> int:
        return self.recipe.input_size

    @property
    def model(self) -> Any:
        return self.trunk.model

    @property
    def dim(self) -> int:
        return self.recipe.base.dim

    def describe(self, images: np.ndarray | Sequence[np.ndarray], *, pad_to: int | None = None) -> np.ndarray:
        """Descriptors of network-ready images (a recipe's `network_shape` at scale 1), one row each.

        `images`: an (n, h, w, 3) uint8 batch, or a list of (h, w, 3) images of any shapes; images of
        one shape go through the network together. `pad_to`: when every image has the same shape,
        pad the batch to this many images, so that a short last batch does not make TensorFlow trace
        the network again.
        """
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = images[None]
        images = list(images)
        if not images:
            return np.zeros((0, self.dim), np.float32)
        if not self.recipe.multi_scale:
            return self._describe_at(images, pad_to)
        total = np.zeros((len(images), self.dim), np.float64)
        for scale in self.recipe.scales:
            scaled = [self._rescale(image, scale) for image in images]
            total += _l2_normalise(self._describe_at(scaled, pad_to))
        return _l2_normalise(total / len(self.recipe.scales)).astype(np.float32)

    def _rescale(self, image: np.ndarray, scale: float) -> np.ndarray:
        if scale == 1.0:
            return image
        from PIL import Image

        from cbir.images import resize_for_network

        height, width = image.shape[:2]
        size = self.recipe.network_shape(width, height, scale)
        return resize_for_network(Image.fromarray(image), *size)

    def _describe_at(self, images: list[np.ndarray], pad_to: int | None) -> np.ndarray:
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for row, image in enumerate(images):
            by_shape.setdefault(image.shape, []).append(row)
        descriptors = np.zeros((len(images), self.dim), np.float32)
        for rows in by_shape.values():
            batch = np.stack([images[row] for row in rows])
            if pad_to and len(by_shape) == 1 and len(batch) < pad_to:
                batch = np.concatenate([batch, np.zeros((pad_to - len(batch), *batch.shape[1:]), batch.dtype)])
            pooled = self.recipe.pool(self.trunk.forward(batch))[: len(rows)]
            if pooled.shape[1] != self.dim:
                raise RuntimeError(f"{self.recipe.key} produced {pooled.shape[1]}-d descriptors, expected {self.dim}")
            descriptors[rows] = pooled
        return descriptors


def _l2_normalise(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def keras_versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {"keras": keras.__version__, "tensorflow": tf.__version__}


def build_trunk(backbone: Backbone, weights: Weights, input_size: int | None, *, study_layer: bool) -> Trunk:
    """Build the network for a registry row. ImageNet weights come from Keras' own download and
    cache (under KERAS_HOME); a weights file is loaded as given; 'none' is random init.

    `study_layer`: the classifier up to `backbone.feature_layer` (VGG16's fc1) instead of the
    convolutional trunk.
    """
    import keras

    size = resolve_input_size(backbone, input_size, study_layer=study_layer)
    fixed = study_layer and backbone.feature_layer is not None
    application = getattr(keras.applications, backbone.constructor)
    preprocess = getattr(keras.applications, backbone.module).preprocess_input
    if weights.untrained:
        keras.utils.set_random_seed(UNTRAINED_SEED)
        logger.warning("building %s with UNTRAINED (random) weights: results mean nothing", backbone.name)
    try:
        if fixed:
            full = application(include_top=True, weights=weights.to_keras_argument(), input_shape=(size, size, 3))
            model = keras.Model(full.input, full.get_layer(backbone.feature_layer).output, name=backbone.name)
        else:
            # Fully convolutional: any input shape (the pooled recipes keep each image's aspect ratio).
            model = application(include_top=False, weights=weights.to_keras_argument(), input_shape=(None, None, 3))
    except Exception as error:  # Keras raises plain Exceptions for downloads and mismatched files
        hint = ""
        if weights.kind is WeightsKind.IMAGENET:
            cache = os.environ.get("KERAS_HOME", str(Path.home() / ".keras"))
            hint = (
                f" Keras downloads ImageNet weights into {cache}/models; on a machine without internet, "
                "copy the weights file there or pass --weights PATH."
            )
        raise WeightsError(f"could not build {backbone.name} with weights {weights.identity}: {error}.{hint}") from error
    return Trunk(backbone, weights, size if fixed else None, model, preprocess)


def build_extractor(recipe: Recipe) -> FeatureExtractor:
    """A fresh extractor for a recipe before its whitening (no cache: see ExtractorCache)."""
    recipe = recipe.base
    backbone = get_backbone(recipe.backbone)
    trunk = build_trunk(backbone, recipe.weights, recipe.input_size, study_layer=recipe.uses_study_layer)
    return FeatureExtractor(recipe, trunk)


class ExtractorCache:
    """Built networks, kept for the life of the process: a second query never rebuilds a model.

    Trunks are shared by the recipes that read the same network. Thread-safe, so that two
    simultaneous first requests build the network once.
    """

    def __init__(self) -> None:
        self._trunks: dict[tuple[str, str, int], Trunk] = {}
        self._lock = threading.Lock()

    def get(self, recipe: Recipe) -> FeatureExtractor:
        """The extractor of a recipe before its whitening (that is the index's, see cbir.whitening)."""
        recipe = recipe.base
        # Fully convolutional trunks take any size, so every recipe of a backbone shares one.
        size = recipe.input_size if recipe.uses_study_layer else 0
        key = (recipe.backbone, recipe.weights.identity, size)
        with self._lock:
            if key not in self._trunks:
                logger.info("building %s (%s, %d px)", recipe.backbone, recipe.weights.identity, recipe.input_size)
                self._trunks[key] = build_trunk(
                    get_backbone(recipe.backbone),
                    recipe.weights,
                    recipe.input_size,
                    study_layer=recipe.uses_study_layer,
                )
            return FeatureExtractor(recipe, self._trunks[key])

    def __len__(self) -> int:
        return len(self._trunks)
