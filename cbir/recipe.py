"""A descriptor's identity: which network, which pooling, which input size, which weights.

Two descriptors can be compared only if they were made by the same recipe, so the recipe is the
key of everything that holds descriptors: index folders, the search engine's caches, manifests,
evaluation rows and the page's backbone choice. A query is always described by the recipe its
index records.

`key` names what a user chooses (backbone, pooling, scales, whitening) and is the index folder's
name, e.g. `xception-gem-ms1_0.707_0.5-w512-paris6k`; today's study descriptor keeps the plain
backbone name, so folders built before recipes existed keep their place. Input size, the input
shape and weights are part of `identity`: the build and the search check them, and a build with
other weights or another input size replaces the folder of the same key.

How images are fed (written down because published numbers depend on it):
- `gap` (the study's descriptor) squashes every image to a square of `input_size`, as the study and
  Keras' classifiers do.
- the pooled recipes (MAC, SPoC, GeM, R-MAC) read a fully convolutional map, so they keep the aspect
  ratio: the longer side is `input_size` and the shorter side follows (at least the backbone's
  smallest input), as the retrieval literature does (it uses 1024 px; the default here is the
  backbone's own size, `--input-size 1024` gives the literature's setting at about 12x the cost).
- `scales` (e.g. 1, 0.707, 0.5) describes the image again with both sides multiplied by each scale;
  each scale's descriptor is L2-normalised and the mean of them is the descriptor (the
  multi-scale average of Radenovic et al.'s cnnimageretrieval, with its default exponent 1).
- `whitening` is a PCA-whitening learned on another collection's descriptors of the same recipe
  (cbir.whitening); the folder of a whitened recipe keeps the learned transform beside its rows.
- `dba` (database-side augmentation, k neighbours) replaces each database row by the similarity^3
  weighted sum of itself and its k nearest rows (cbir.ranking); queries are described as without it.
- a vision transformer (the keras-hub rows) is built for one square input whose side is a multiple
  of its patch: every image is squashed to it, and it has one scale. Its own descriptor (the recipe
  without a pooling in its key) is the CLS token; `gem` and the other map poolings read its patch
  tokens as a map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

import numpy as np

from cbir.backbones import BACKBONES, Backbone, get_backbone, resolve_input_size
from cbir.weights import Weights, WeightsKind
from cbir.errors import SettingsError
from cbir.pooling import POOLINGS, Pooling, pool
from cbir.runtime import Runtime, parse_runtime

# The literature's multi-scale set: 1, 1/sqrt(2), 1/2.
STANDARD_SCALES = (1.0, 0.707, 0.5)
MAX_SCALE = 2.0


class InputShape(str, Enum):
    SQUARE = "square"  # squashed to input_size x input_size (the study's way)
    LONGER_SIDE = "longer side"  # aspect ratio kept, longer side = input_size


@dataclass(frozen=True)
class WhiteningSpec:
    """A PCA-whitening learned on `source`'s descriptors of the same recipe, keeping `dim`
    components (None: all of them)."""

    source: str
    dim: int | None = None

    def __post_init__(self) -> None:
        if not self.source or "/" in self.source or self.source.startswith("."):
            raise SettingsError(f"whitening needs a collection name to learn on, not {self.source!r}")
        if self.dim is not None and self.dim < 1:
            raise SettingsError(f"the whitened dimension must be at least 1, not {self.dim}")

    @property
    def key_part(self) -> str:
        return f"w{self.dim or 'full'}-{self.source}"


def default_pooling(backbone: Backbone) -> Pooling:
    """A backbone's own descriptor, the recipe whose key is the backbone's name: the study's `gap` for
    the six, the CLS token for a vision transformer."""
    return Pooling.CLS if backbone.vision_transformer else Pooling.GAP


@dataclass(frozen=True)
class Recipe:
    backbone: str
    pooling: Pooling | None = None  # None: the backbone's own (default_pooling)
    input_size: int = 0  # 0: the backbone's own (resolved by `create`)
    weights: Weights = field(default_factory=lambda: Weights(WeightsKind.IMAGENET))
    scales: tuple[float, ...] = (1.0,)
    # None: the recipe's natural shape (square for `gap`, longer side for the pooled recipes).
    input_shape: InputShape | None = None
    whitening: WhiteningSpec | None = None
    dba: int | None = None  # database-side augmentation: neighbours per row (None: none)
    runtime: Runtime = Runtime.KERAS  # what runs the network (cbir.runtime); part of the key unless Keras

    def __post_init__(self) -> None:
        backbone = get_backbone(self.backbone)
        object.__setattr__(self, "runtime", Runtime(self.runtime))
        object.__setattr__(self, "pooling", Pooling(self.pooling or default_pooling(backbone)))
        if self.pooling is Pooling.CLS and not backbone.vision_transformer:
            vits = ", ".join(b.name for b in BACKBONES.values() if b.vision_transformer)
            raise SettingsError(f"--pooling cls reads a vision transformer's class token; {self.backbone} is a CNN "
                                f"(choose gap, mac, spoc, gem or rmac, or a backbone such as {vits})")  # fmt: skip
        size = resolve_input_size(backbone, self.input_size or None, study_layer=self.uses_study_layer)
        object.__setattr__(self, "input_size", size)
        square = self.pooling is Pooling.GAP or backbone.vision_transformer
        shape = self.input_shape or (InputShape.SQUARE if square else InputShape.LONGER_SIDE)
        object.__setattr__(self, "input_shape", InputShape(shape))
        one_square = self.input_shape is InputShape.SQUARE and self.scales in {(), (1.0,)}
        if backbone.vision_transformer and not one_square:
            raise SettingsError(f"{self.backbone} is built for one square input size, so it has one scale and "
                                "squashes every image to a square; leave out --scales")  # fmt: skip
        if self.uses_study_layer and self.input_shape is not InputShape.SQUARE:
            raise SettingsError(f"{self.backbone}'s study descriptor ({backbone.feature_layer}) takes square inputs only")
        scales = tuple(float(scale) for scale in self.scales) or (1.0,)
        if any(not math.isfinite(scale) or not 0 < scale <= MAX_SCALE for scale in scales) or len(set(scales)) != len(scales):
            raise SettingsError(f"scales must be distinct numbers in (0, {MAX_SCALE:g}], not {self.scales!r}")
        if scales != (1.0,) and self.uses_study_layer:
            raise SettingsError(
                f"{self.backbone}'s study descriptor ({backbone.feature_layer}) has a fixed input size, so it has no "
                "scales; choose a pooling (--pooling gem, ...) for multi-scale descriptors"
            )
        object.__setattr__(self, "scales", scales)
        if self.dba is not None and self.dba < 1:
            raise SettingsError(f"database-side augmentation needs at least 1 neighbour, not {self.dba}")
        base_dim = self.base.dim if self.whitening else 0
        if self.whitening and self.whitening.dim and self.whitening.dim > base_dim:
            raise SettingsError(
                f"{self.key_without_whitening} gives {base_dim}-d descriptors; whitening can keep at most {base_dim} "
                f"dimensions, not {self.whitening.dim}"
            )

    @classmethod
    def create(cls, backbone: str, **choices: Any) -> Recipe:
        """The recipe of `backbone` with the choices of RecipeSettings (pooling=..., weights=..., ...)."""
        return RecipeSettings(**choices).for_backbone(backbone)

    @property
    def key(self) -> str:
        """Stable name of the descriptor kind; the index folder's name."""
        key = self.key_without_whitening + (f"-dba{self.dba}" if self.dba else "")
        # The whitening source comes last: a collection name may hold hyphens.
        return key if self.whitening is None else f"{key}-{self.whitening.key_part}"

    @property
    def key_without_whitening(self) -> str:
        parts = [self.backbone]
        if self.pooling is not default_pooling(BACKBONES[self.backbone]):
            parts.append(self.pooling.value)
        if self.multi_scale:
            parts.append("ms" + "_".join(f"{scale:g}" for scale in self.scales))
        if self.runtime.key_part:
            parts.append(self.runtime.key_part)
        return "-".join(parts)

    @property
    def multi_scale(self) -> bool:
        return self.scales != (1.0,)

    @property
    def base(self) -> Recipe:
        """The recipe before whitening and DBA: what the network and pooling give."""
        return replace(self, whitening=None, dba=None) if self.whitening or self.dba else self

    @property
    def before_dba(self) -> Recipe:
        return replace(self, dba=None) if self.dba else self

    @property
    def dim(self) -> int:
        if self.whitening is not None:
            return self.whitening.dim or self.base.dim
        backbone = BACKBONES[self.backbone]
        return backbone.dim if self.pooling is Pooling.GAP else backbone.map_channels

    def network_shape(self, width: int, height: int, scale: float = 1.0) -> tuple[int, int]:
        """(width, height) of the network input for an image of width x height at `scale`."""
        smallest = BACKBONES[self.backbone].min_input_size
        side = max(round(self.input_size * scale), smallest)
        if self.input_shape is InputShape.SQUARE:
            return side, side
        longer, shorter = max(width, height), min(width, height)
        # The shorter side follows the aspect ratio, but never below what the network accepts (only
        # panoramas beyond about 4:1 at the default size are stretched by this).
        other = max(round(side * shorter / max(longer, 1)), smallest)
        return (side, other) if width >= height else (other, side)

    def describe_label(self) -> str:
        """How the page names the recipe: 'xception · GeM · 3 scales · whitened on Paris6k · 512-d'."""
        parts = [self.backbone]
        if self.pooling is not default_pooling(BACKBONES[self.backbone]):
            parts.append(POOLINGS[self.pooling].short_label)
        if self.multi_scale:
            parts.append(f"{len(self.scales)} scales")
        if self.whitening is not None:
            parts.append(f"whitened on {self.whitening.source}")
        if self.dba:
            parts.append(f"DBA k = {self.dba}")
        if self.runtime is not Runtime.KERAS:
            parts.append(self.runtime.label)
        parts.append(f"{self.dim}-d")
        return " · ".join(parts)

    @property
    def uses_study_layer(self) -> bool:
        """The study's descriptor of a backbone with a fully connected feature layer (VGG16 fc1)."""
        return self.pooling is Pooling.GAP and BACKBONES[self.backbone].feature_layer is not None

    @property
    def untrained(self) -> bool:
        return self.weights.untrained

    @property
    def weights_identity(self) -> str:
        """What the manifest says about the weights ('imagenet' of a keras-hub row names its preset)."""
        return self.weights.identity_for(BACKBONES[self.backbone])

    def pool(self, outputs: np.ndarray) -> np.ndarray:
        architecture = BACKBONES[self.backbone].architecture
        if architecture is not None and self.pooling is not Pooling.CLS:
            outputs = architecture.patch_map(outputs)  # the token sequence -> its patches as a map
        return pool(self.pooling, outputs)

    def identity(self) -> dict[str, Any]:
        """Everything that changes the descriptors; equal identities give comparable descriptors: the
        JSON form without the dimension (it follows from the rest), with the weights' identity."""
        identity = self.to_json()
        del identity["dim"]
        identity["weights"] = self.weights_identity
        return identity

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "backbone": self.backbone,
            "pooling": self.pooling.value,
            "input_size": self.input_size,
            "dim": self.dim,
            "weights": self.weights.to_json(),
            "input_shape": self.input_shape.value,
            "scales": list(self.scales),
            "whitening": self.whitening and {"source": self.whitening.source, "dim": self.whitening.dim},
            "dba": self.dba,
            # Only when not Keras: manifests, identities and checkpoints made before runtimes stay equal.
            **({"runtime": self.runtime.value} if self.runtime is not Runtime.KERAS else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Recipe:
        whitening = data.get("whitening")
        return cls(
            data["backbone"],
            Pooling(data["pooling"]),
            int(data["input_size"]),
            Weights.from_json(data["weights"]),
            tuple(data.get("scales", (1.0,))),
            # Recipes written before the input shape was recorded fed every pooling squares.
            InputShape(data.get("input_shape", InputShape.SQUARE.value)),
            WhiteningSpec(whitening["source"], whitening.get("dim")) if whitening else None,
            data.get("dba"),
            Runtime(data.get("runtime", Runtime.KERAS.value)),  # recipes written before runtimes: Keras
        )


@dataclass(frozen=True)
class RecipeSettings:
    """A recipe's choices, as a user gives them (the command line, the page), without its backbone:
    what a build applies to every backbone it is given. Unset fields are each backbone's own."""

    pooling: Pooling | str | None = None  # None: each backbone's own (gap for the study's six, CLS for a ViT)
    input_size: int | None = None  # None: each backbone's own size; smaller sizes are for tests
    weights: Weights | str | None = None  # a Weights, or the text Weights.parse reads (None: imagenet)
    scales: tuple[float, ...] | None = None  # None: one scale
    whiten_on: str | None = None  # a collection to learn a PCA-whitening on
    whitened_dim: int | None = None  # dimensions the whitening keeps (None: all)
    dba: int | None = None  # database-side augmentation: neighbours per row (None: none)
    runtime: Runtime | str = Runtime.KERAS  # what runs the network: Keras, or OpenVINO f32 / bf16 (cbir.runtime)

    def for_backbone(self, backbone: str) -> Recipe:
        if self.whitened_dim is not None and not self.whiten_on:
            raise SettingsError("a whitened dimension (--dim) needs a collection to learn the whitening on (--whiten-on)")
        weights = self.weights if isinstance(self.weights, Weights) else Weights.parse(self.weights)
        try:
            pooling = Pooling(self.pooling) if self.pooling else None
        except ValueError:
            known = ", ".join(p.value for p in Pooling)
            raise SettingsError(f"unknown pooling {self.pooling!r}; known poolings: {known}") from None
        whitening = WhiteningSpec(self.whiten_on, self.whitened_dim) if self.whiten_on else None
        return Recipe(backbone, pooling, self.input_size or 0, weights, tuple(self.scales or (1.0,)), None, whitening,
                      self.dba, parse_runtime(self.runtime))  # fmt: skip

    @property
    def unwhitened(self) -> RecipeSettings:
        """The same choices without whitening and DBA: the rows a whitened recipe is computed from."""
        return replace(self, whiten_on=None, whitened_dim=None, dba=None)


def build_options(recipe_key: str) -> str:
    """The build_index.py options that make the recipe of an index folder named `recipe_key`."""
    backbone, *parts = recipe_key.split("-")
    options = [f"--backbones {backbone}"]
    for position, part in enumerate(parts):
        if part in {p.value for p in Pooling}:
            options.append(f"--pooling {part}")
        elif part.startswith("ms"):
            options.append("--scales " + ",".join(part[2:].split("_")))
        elif part.startswith("dba") and part[3:].isdigit():
            options.append(f"--dba {part[3:]}")
        elif Runtime.from_key_part(part) is not None:
            options.append(f"--runtime {Runtime.from_key_part(part).value}")
        elif part.startswith("w"):
            dim = part[1:]
            options.append(f"--whiten-on {'-'.join(parts[position + 1:])}" + ("" if dim == "full" else f" --dim {dim}"))
            break
    return " ".join(options)
