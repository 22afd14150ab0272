"""Which weights a network carries: 'imagenet', a weights file, a keras-hub preset, or none.

`Weights.identity` is what manifests and result files record: equal identities give equal
descriptors (a file or a preset directory is named by its content, not its path).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from cbir.backbones import Backbone
from cbir.digests import sha256_file, sha256_folder
from cbir.errors import CbirError, SettingsError

# Random-init networks must give the same descriptors in the build process and in the app process,
# otherwise an untrained index could never be searched. Keras initialisers are deterministic for a
# given global seed (checked across processes), so every untrained build uses this seed.
UNTRAINED_SEED = 1234


class WeightsKind(str, Enum):
    IMAGENET = "imagenet"  # each network's published weights: ImageNet (Keras), or a keras-hub row's preset
    FILE = "file"
    PRESET = "preset"  # keras-hub rows: a local preset directory (save_to_preset) or a handle (hf://, kaggle://)
    NONE = "none"



PRESET_HANDLES = ("hf://", "kaggle://")


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
            return cls(WeightsKind.PRESET, path=path, sha256=sha256_folder(path))
        if not path.is_file():
            raise SettingsError(
                f"weights must be 'imagenet', 'none' or a path to a weights file or a keras-hub preset directory "
                f"(with its config.json), or an hf:// or kaggle:// preset handle; {value!r} is none of these"
            )
        return cls(WeightsKind.FILE, path=path, sha256=sha256_file(path))

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
