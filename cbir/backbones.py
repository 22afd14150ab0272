"""The backbone networks, as data: one `Backbone(...)` row of `BACKBONES` per network.

The study's six come from keras.applications; the newer rows (DINOv2 vision transformers) from
keras-hub, an optional package (requirements-keras-hub.txt). Nothing else in the project names a
network. Building and running them is cbir.trunks; which weights they carry, cbir.weights.
`resolve_input_size` is here, not with the building: it reads a row only, and recipes check their
input size with it without importing what builds networks.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from cbir.errors import SettingsError

KERAS_HUB_INSTALL = "pip install --no-deps -r requirements-keras-hub.txt"


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

