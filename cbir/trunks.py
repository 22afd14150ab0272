"""Building and running the networks: the trunk each recipe reads, and its feature extractor.

A trunk is the built network a recipe's pooling reads: the convolutional feature map, or, for the
study's descriptor of VGG16, its `fc1` layer; on Keras, or converted to OpenVINO (cbir.runtime).
`ExtractorCache` builds each trunk once per process and gives out `FeatureExtractor`s (trunk +
pooling) per recipe.

Keras/TensorFlow are imported inside functions so that `import cbir` stays cheap (the app starts
answering before any network is built).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cbir import runtime
from cbir.backbones import KERAS_HUB_INSTALL, Backbone, get_backbone, resolve_input_size
from cbir.distances import l2_normalise
from cbir.errors import CbirError, SettingsError
from cbir.recipe import Recipe
from cbir.runtime import Runtime
from cbir.weights import UNTRAINED_SEED, Weights, WeightsError, WeightsKind

logger = logging.getLogger(__name__)


class MissingPackageError(CbirError):
    """An optional package that a chosen backbone needs is not installed; the message names the install."""



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



@dataclass(frozen=True)
class TrunkIdentity:
    """What makes two recipes read the same built network: the recipes sharing one share the trunk
    (ExtractorCache) and its OpenVINO conversion (cbir.runtime)."""

    backbone: str
    weights: str  # Weights.identity
    # Fully convolutional trunks take any size (None), so every recipe of a backbone shares one; the
    # study layer (VGG16 fc1) and a vision transformer are built for one input size.
    input_size: int | None
    study_layer: bool
    runtime: Runtime

    @classmethod
    def of(cls, recipe: Recipe) -> TrunkIdentity:
        fixed = recipe.uses_study_layer or get_backbone(recipe.backbone).vision_transformer
        return cls(recipe.backbone, recipe.weights.identity, recipe.input_size if fixed else None,
                   recipe.uses_study_layer, recipe.runtime)  # fmt: skip

    def conversion_identity(self) -> dict[str, Any]:
        """The identity an OpenVINO conversion is cached under (the runtime's precision is applied
        when compiling, so one conversion serves both)."""
        return {"backbone": self.backbone, "weights": self.weights, "input_size": self.input_size or "any",
                "study_layer": self.study_layer, **keras_versions()}  # fmt: skip


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
            total += l2_normalise(self._describe_at(scaled, pad_to).astype(np.float64))
        return l2_normalise(total / len(self.recipe.scales)).astype(np.float32)

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
                "copy the weights file there or pass --weights PATH (or --weights none for a smoke test: random "
                "weights, rankings that mean nothing)."
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
                    "the backbone's save_to_preset(DIR), copy DIR over and pass --weights DIR (or --weights none "
                    "for a smoke test: random weights, rankings that mean nothing).")  # fmt: skip
        raise WeightsError(f"could not build {backbone.name} with weights {weights.identity_for(backbone)}: "
                           f"{error}.{hint}") from error  # fmt: skip
    if getattr(model, "hidden_dim", backbone.dim) != backbone.dim:
        raise WeightsError(f"{weights.identity} holds a {model.hidden_dim}-d network, but {backbone.name} is "
                           f"{backbone.dim}-d: choose the backbone that matches the preset")  # fmt: skip
    return Trunk(backbone, weights, size, model, imagenet_mean_std)


def build_extractor(recipe: Recipe) -> FeatureExtractor:
    """A fresh extractor for a recipe before its whitening (no cache: see ExtractorCache)."""
    recipe = recipe.base
    return FeatureExtractor(recipe, trunk_for(recipe))


class ExtractorCache:
    """Built networks, kept for the life of the process: a second query never rebuilds a model.

    Trunks are shared by the recipes that read the same network. Thread-safe, so that two
    simultaneous first requests build the network once.
    """

    def __init__(self) -> None:
        self._trunks: dict[TrunkIdentity, Trunk] = {}
        self._lock = threading.Lock()
        # One lock per network: building one (a minute, or a download) holds back only the
        # requests for that network, not searches with the networks already built.
        self._building: dict[TrunkIdentity, threading.Lock] = {}

    def get(self, recipe: Recipe) -> FeatureExtractor:
        """The extractor of a recipe before its whitening (that is the index's, see cbir.whitening)."""
        recipe = recipe.base
        key = TrunkIdentity.of(recipe)
        with self._lock:
            trunk = self._trunks.get(key)
            building = self._building.setdefault(key, threading.Lock())
        if trunk is None:
            with building:
                with self._lock:
                    trunk = self._trunks.get(key)
                if trunk is None:
                    logger.info("building %s (%s, %d px)", recipe.backbone, recipe.weights.identity, recipe.input_size)
                    trunk = trunk_for(recipe)
                    with self._lock:
                        self._trunks[key] = trunk
        return FeatureExtractor(recipe, trunk)

    def __len__(self) -> int:
        return len(self._trunks)

def trunk_for(recipe: Recipe) -> Trunk:
    """The trunk of a recipe (before its whitening) on the recipe's runtime: Keras, or the OpenVINO
    copy of the same network."""
    backbone = get_backbone(recipe.backbone)
    if recipe.runtime is Runtime.KERAS:
        return build_trunk(backbone, recipe.weights, recipe.input_size, study_layer=recipe.uses_study_layer)
    if backbone.preset is not None:
        raise SettingsError(f"{backbone.name} (keras-hub) runs on Keras only: build it with --runtime keras")
    identity = TrunkIdentity.of(recipe)
    model = runtime.openvino_model(
        recipe.backbone, identity.conversion_identity(), recipe.runtime,
        lambda: build_trunk(backbone, recipe.weights, recipe.input_size, study_layer=identity.study_layer).model,
    )  # fmt: skip
    import keras

    preprocess = getattr(keras.applications, backbone.module).preprocess_input
    return Trunk(backbone, recipe.weights, identity.input_size, model, preprocess)
