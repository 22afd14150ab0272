"""The backbone networks, as data, and the trunk each recipe runs.

The study's six come from keras.applications; the newer rows (DINOv2 vision transformers) from
keras-hub, an optional package (requirements-keras-hub.txt), imported only when such a row is built.

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


class Family(str, Enum):
    """How the page groups the backbone choice."""

    STUDY = "the study's six"
    NEWER = "newer"


@dataclass(frozen=True)
class VitArchitecture:
    """The arguments of keras-hub's `DINOV2Backbone` for a preset's architecture. `--weights none`
    builds from these: the preset's own config cannot be fetched offline."""

    patch_size: int
    num_layers: int
    hidden_dim: int
    num_heads: int
    intermediate_dim: int
    num_register_tokens: int = 0
    position_embedding_size: int = 518  # the side the preset's position embeddings were trained at

    def arguments(self) -> dict[str, Any]:
        size = self.position_embedding_size
        return {
            "patch_size": self.patch_size,
            "num_layers": self.num_layers,
            "hidden_dim": self.hidden_dim,
            "num_heads": self.num_heads,
            "intermediate_dim": self.intermediate_dim,
            "num_register_tokens": self.num_register_tokens,
            "position_embedding_shape": (size, size, 3),
        }

    def patch_map(self, tokens: np.ndarray) -> np.ndarray:
        """The patch tokens of a square input as a (n, side, side, dim) map, for the map poolings.

        keras-hub's DINOV2Backbone returns, after its final layer norm, the sequence
        [CLS, registers..., patches...] (dinov2_layers.DINOV2Embedding: patches in row-major order)."""
        tokens = np.asarray(tokens, dtype=np.float32)
        patches = tokens[:, 1 + self.num_register_tokens :, :]
        side = int(round(np.sqrt(patches.shape[1])))
        if tokens.ndim != 3 or side * side != patches.shape[1]:
            raise ValueError(
                f"expected [CLS, {self.num_register_tokens} registers, a square of patches], got {tokens.shape}"
            )
        return patches.reshape(len(tokens), side, side, tokens.shape[2])


@dataclass(frozen=True)
class Backbone:
    """One row of the registry: everything needed to build the network and read its outputs."""

    name: str
    constructor: str  # attribute of keras.applications (keras-hub rows: of keras_hub.models)
    # keras.applications.<module>.preprocess_input is this network's own preprocessing (keras-hub rows:
    # their preset's image converter, ImageNet mean/std, see imagenet_mean_std).
    module: str
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
    # keras-hub rows: the preset `--weights imagenet` (pretrained) downloads, and the architecture
    # `--weights none` builds. Their trunk returns a token sequence, not a map (see VitArchitecture).
    preset: str | None = None
    architecture: VitArchitecture | None = None
    licence: str | None = None  # the weights' licence where it is not Keras' (the page and README name it)

    @property
    def map_channels(self) -> int:
        return self.conv_channels or self.dim

    @property
    def family(self) -> Family:
        return Family.STUDY if self.preset is None else Family.NEWER

    @property
    def vision_transformer(self) -> bool:
        return self.architecture is not None


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
        # Newer: DINOv2 (Oquab et al. 2023), self-supervised ViTs with 14-pixel patches, from keras-hub.
        # The default input is 224 (what most of their training saw); 518 is the presets' own.
        Backbone("dinov2_small", "DINOV2Backbone", "imagenet_mean_std", 224, 384, min_input_size=14,
                 preset="dinov2_small", architecture=VitArchitecture(14, 12, 384, 6, 1536), licence="Apache-2.0"),
        Backbone("dinov2_base", "DINOV2Backbone", "imagenet_mean_std", 224, 768, min_input_size=14,
                 preset="dinov2_base", architecture=VitArchitecture(14, 12, 768, 12, 3072), licence="Apache-2.0"),
        Backbone("dinov2_large", "DINOV2Backbone", "imagenet_mean_std", 224, 1024, min_input_size=14,
                 preset="dinov2_large", architecture=VitArchitecture(14, 24, 1024, 16, 4096), licence="Apache-2.0"),
    )
}  # fmt: skip

DEFAULT_BACKBONE = "xception"


def get_backbone(name: str) -> Backbone:
    """Look a backbone up by name; an unknown name raises SettingsError listing the known ones."""
    try:
        return BACKBONES[name]
    except KeyError:
        known = ", ".join(BACKBONES)
        raise SettingsError(f"unknown backbone {name!r}; known backbones: {known}") from None


def parse_backbones(text: str) -> list[Backbone]:
    """'all' (every backbone of the registry), 'study' (the study's six) or a comma-separated list of names."""
    if text.strip().lower() == "all":
        return list(BACKBONES.values())
    if text.strip().lower() == "study":
        return [b for b in BACKBONES.values() if b.family is Family.STUDY]
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise SettingsError("no backbone given; use 'all' or names such as " + ", ".join(BACKBONES))
    return [get_backbone(name) for name in names]


class WeightsKind(str, Enum):
    IMAGENET = "imagenet"  # each network's published weights: ImageNet (Keras), or a keras-hub row's preset
    FILE = "file"
    PRESET = "preset"  # keras-hub rows: a local preset directory (save_to_preset) or a handle (hf://, kaggle://)
    NONE = "none"


KERAS_HUB_INSTALL = "pip install --no-deps -r requirements-keras-hub.txt"
PRESET_HANDLES = ("hf://", "kaggle://")


class MissingPackageError(CbirError):
    """An optional package that a chosen backbone needs is not installed; the message names the install."""


class WeightsError(CbirError):
    """A network that cannot be built with the weights asked for (download refused, bad file)."""


@dataclass(frozen=True)
class Weights:
    """Which weights a network carries: 'imagenet', a local weights file, or none (random init)."""

    kind: WeightsKind
    path: Path | None = None
    sha256: str | None = None
    handle: str | None = None  # a keras-hub preset handle (hf://..., kaggle://...)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", WeightsKind(self.kind))

    @classmethod
    def parse(cls, text: str | None) -> Weights:
        value = (text or "imagenet").strip()
        if value.lower() in {"imagenet", "pretrained"}:
            return cls(WeightsKind.IMAGENET)
        if value.lower() in {"none", "untrained", "random"}:
            return cls(WeightsKind.NONE)
        if value.startswith(PRESET_HANDLES):
            return cls(WeightsKind.PRESET, handle=value)
        path = Path(value).expanduser().resolve()
        if path.is_dir() and (path / "config.json").is_file():
            return cls(WeightsKind.PRESET, path=path, sha256=sha256_of_folder(path))
        if not path.is_file():
            raise SettingsError(
                f"weights must be 'imagenet', 'none' or a path to a weights file or a keras-hub preset directory "
                f"(with its config.json), or an hf:// or kaggle:// preset handle; {value!r} is none of these"
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
        if self.kind is WeightsKind.PRESET:
            # A directory is named by its content; a handle by itself (keras-hub's download, versioned by it).
            if self.handle:
                return f"keras-hub preset {self.handle}"
            return f"keras-hub preset {self.path.name} sha256:{self.sha256[:16]}"
        return f"file {self.path.name} sha256:{self.sha256[:16]}"

    def identity_for(self, backbone: Backbone) -> str:
        """The identity a manifest records for this backbone: 'imagenet' names a keras-hub row's preset."""
        if self.kind is WeightsKind.IMAGENET and backbone.preset is not None:
            return f"keras-hub preset {backbone.preset}"
        return self.identity

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "path": str(self.path) if self.path else None,
            "sha256": self.sha256,
            "handle": self.handle,
            "identity": self.identity,
            "untrained": self.untrained,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Weights:
        path = Path(data["path"]) if data.get("path") else None
        return cls(WeightsKind(data["kind"]), path=path, sha256=data.get("sha256"), handle=data.get("handle"))

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


def sha256_of_folder(folder: Path) -> str:
    """One digest of every file under `folder` (relative names and contents), in name order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + sha256_of(path).encode())
    return digest.hexdigest()


# The DINOv2 presets' image converter: pixels / 255, then ImageNet's mean and standard deviation.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


def imagenet_mean_std(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """keras-hub rows' preprocessing, as the backbone's named input."""
    return {"images": (np.asarray(pixels, np.float32) - IMAGENET_MEAN) / IMAGENET_STD}


def import_keras_hub(backbone: Backbone) -> Any:
    try:
        import keras_hub
    except ImportError as error:
        raise MissingPackageError(
            f"{backbone.name} comes from keras-hub, which is not installed here ({error}). Install it with: "
            f"{KERAS_HUB_INSTALL}"
        ) from None
    return keras_hub


def resolve_input_size(backbone: Backbone, requested: int | None, *, study_layer: bool = True) -> int:
    """The input size to build at: the backbone's own unless another is asked for and allowed
    (`study_layer`: the recipe reads the fully connected feature layer, which fixes the size)."""
    if requested is None or requested == backbone.input_size:
        return backbone.input_size
    if backbone.architecture is not None and (requested < 1 or requested % backbone.architecture.patch_size):
        patch = backbone.architecture.patch_size
        below, above = max(requested // patch, 1) * patch, (requested // patch + 1) * patch
        raise SettingsError(
            f"{backbone.name} cuts its input into {patch}-pixel patches, so the input size must be a multiple of "
            f"{patch}: --input-size {below} or {above}, not {requested}"
        )
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
    preprocess: Callable[[np.ndarray], Any] = field(repr=False)  # arrays, or a keras-hub row's named inputs
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
    size = resolve_input_size(backbone, input_size, study_layer=study_layer)
    if backbone.preset is not None:
        return _build_keras_hub_trunk(backbone, weights, size)
    import keras

    if weights.kind is WeightsKind.PRESET:
        raise WeightsError(f"{weights.identity} is a keras-hub preset; {backbone.name} takes 'imagenet', 'none' or a "
                           "Keras weights file")  # fmt: skip
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


def _build_keras_hub_trunk(backbone: Backbone, weights: Weights, size: int) -> Trunk:
    """A keras-hub vision transformer at a fixed square input (its position embeddings are resized to
    it once): from the row's preset (keras-hub's own download and cache), a local preset directory
    or handle, or the row's architecture with random weights."""
    keras_hub = import_keras_hub(backbone)  # first: a missing package is said before TensorFlow loads
    import keras

    constructor = getattr(keras_hub.models, backbone.constructor)
    shape = (size, size, 3)
    if weights.kind is WeightsKind.FILE:
        raise WeightsError(
            f"{backbone.name} loads keras-hub presets, not a weights file: pass --weights with the preset directory "
            "(a folder saved by the backbone's save_to_preset, holding config.json and model.weights.h5)"
        )
    try:
        if weights.untrained:
            keras.utils.set_random_seed(UNTRAINED_SEED)
            logger.warning("building %s with UNTRAINED (random) weights: results mean nothing", backbone.name)
            model = constructor(**backbone.architecture.arguments(), image_shape=shape)
        else:
            source = str(weights.path) if weights.path else (weights.handle or backbone.preset)
            model = constructor.from_preset(source, image_shape=shape)
    except Exception as error:  # keras-hub raises plain Exceptions for downloads and mismatched presets
        hint = ""
        if weights.kind is WeightsKind.IMAGENET:
            hint = (f" keras-hub downloads the preset {backbone.preset!r} into its cache (KAGGLEHUB_CACHE, default "
                    "~/.cache/kagglehub); for a machine without internet, load it on one with internet, save it with "
                    "the backbone's save_to_preset(DIR), copy DIR over and pass --weights DIR.")  # fmt: skip
        raise WeightsError(f"could not build {backbone.name} with weights {weights.identity_for(backbone)}: "
                           f"{error}.{hint}") from error  # fmt: skip
    if getattr(model, "hidden_dim", backbone.dim) != backbone.dim:
        raise WeightsError(f"{weights.identity} holds a {model.hidden_dim}-d network, but {backbone.name} is "
                           f"{backbone.dim}-d: choose the backbone that matches the preset")  # fmt: skip
    return Trunk(backbone, weights, size, model, imagenet_mean_std)


def build_extractor(recipe: Recipe) -> FeatureExtractor:
    """A fresh extractor for a recipe before its whitening (no cache: see ExtractorCache)."""
    from cbir.runtime import trunk_for  # Keras, or the OpenVINO copy of the same network

    recipe = recipe.base
    return FeatureExtractor(recipe, trunk_for(recipe))


class ExtractorCache:
    """Built networks, kept for the life of the process: a second query never rebuilds a model.

    Trunks are shared by the recipes that read the same network. Thread-safe, so that two
    simultaneous first requests build the network once.
    """

    def __init__(self) -> None:
        self._trunks: dict[tuple[str, str, int, str], Trunk] = {}
        self._lock = threading.Lock()
        # One lock per network: building one (a minute, or a download) holds back only the
        # requests for that network, not searches with the networks already built.
        self._building: dict[tuple[str, str, int, str], threading.Lock] = {}

    def get(self, recipe: Recipe) -> FeatureExtractor:
        """The extractor of a recipe before its whitening (that is the index's, see cbir.whitening)."""
        recipe = recipe.base
        # Fully convolutional trunks take any size, so every recipe of a backbone shares one; a vision
        # transformer is built for one input size.
        fixed = recipe.uses_study_layer or get_backbone(recipe.backbone).vision_transformer
        size = recipe.input_size if fixed else 0
        key = (recipe.backbone, recipe.weights.identity, size, recipe.runtime.value)
        with self._lock:
            trunk = self._trunks.get(key)
            building = self._building.setdefault(key, threading.Lock())
        if trunk is None:
            with building:
                with self._lock:
                    trunk = self._trunks.get(key)
                if trunk is None:
                    from cbir.runtime import trunk_for  # Keras, or the OpenVINO copy of the same network

                    logger.info("building %s (%s, %d px)", recipe.backbone, recipe.weights.identity, recipe.input_size)
                    trunk = trunk_for(recipe)
                    with self._lock:
                        self._trunks[key] = trunk
        return FeatureExtractor(recipe, trunk)

    def __len__(self) -> int:
        return len(self._trunks)
