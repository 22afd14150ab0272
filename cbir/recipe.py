"""A descriptor's identity: which network, which pooling, which input size, which weights.

Two descriptors can be compared only if they were made by the same recipe, so the recipe is the
key of everything that holds descriptors: index folders, the search engine's caches, manifests,
evaluation rows and the page's backbone choice. A query is always described by the recipe its
index records.

`key` names what a user chooses (backbone + pooling [+ whitening]) and is the index folder's name;
today's study descriptor keeps the plain backbone name, so folders built before recipes existed
keep their place. Input size and weights are part of `identity`: the build and the search check
them, and a build with other weights or another input size replaces the folder of the same key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cbir.backbones import BACKBONES, Weights, WeightsKind, get_backbone, resolve_input_size
from cbir.errors import SettingsError
from cbir.pooling import Pooling, pool


@dataclass(frozen=True)
class Recipe:
    backbone: str
    pooling: Pooling = Pooling.GAP
    input_size: int = 0  # 0: the backbone's own (resolved by `create`)
    weights: Weights = field(default_factory=lambda: Weights(WeightsKind.IMAGENET))

    def __post_init__(self) -> None:
        backbone = get_backbone(self.backbone)
        object.__setattr__(self, "pooling", Pooling(self.pooling))
        size = resolve_input_size(backbone, self.input_size or None, study_layer=self.uses_study_layer)
        object.__setattr__(self, "input_size", size)

    @classmethod
    def create(
        cls,
        backbone: str,
        *,
        pooling: Pooling | str = Pooling.GAP,
        input_size: int | None = None,
        weights: Weights | str | None = None,
    ) -> Recipe:
        if not isinstance(weights, Weights):
            weights = Weights.parse(weights)
        try:
            pooling = Pooling(pooling)
        except ValueError:
            known = ", ".join(p.value for p in Pooling)
            raise SettingsError(f"unknown pooling {pooling!r}; known poolings: {known}") from None
        return cls(backbone, pooling, input_size or 0, weights)

    @property
    def key(self) -> str:
        """Stable name of the descriptor kind; the index folder's name."""
        if self.pooling is Pooling.GAP:
            return self.backbone
        return f"{self.backbone}-{self.pooling.value}"

    @property
    def dim(self) -> int:
        backbone = BACKBONES[self.backbone]
        return backbone.dim if self.pooling is Pooling.GAP else backbone.map_channels

    @property
    def uses_study_layer(self) -> bool:
        """The study's descriptor of a backbone with a fully connected feature layer (VGG16 fc1)."""
        return self.pooling is Pooling.GAP and BACKBONES[self.backbone].feature_layer is not None

    @property
    def untrained(self) -> bool:
        return self.weights.untrained

    def pool(self, outputs: np.ndarray) -> np.ndarray:
        return pool(self.pooling, outputs)

    def identity(self) -> dict[str, Any]:
        """Everything that changes the descriptors; equal identities give comparable descriptors."""
        return {
            "key": self.key,
            "backbone": self.backbone,
            "pooling": self.pooling.value,
            "input_size": self.input_size,
            "weights": self.weights.identity,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "backbone": self.backbone,
            "pooling": self.pooling.value,
            "input_size": self.input_size,
            "dim": self.dim,
            "weights": self.weights.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Recipe:
        return cls(data["backbone"], Pooling(data["pooling"]), int(data["input_size"]), Weights.from_json(data["weights"]))
