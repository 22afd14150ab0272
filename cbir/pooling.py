"""Pooling: a network's output -> one descriptor per image, applied after the trunk, in numpy.

Pooling runs outside the Keras graph so that one forward pass can serve several recipes of the
same trunk. A pooling is a row of `POOLINGS`: its name (the value a recipe records) and a pure
function over a batch of outputs. The trunk gives a feature map of shape (n, h, w, channels) for
every pooling but the study's descriptor of VGG16, whose `gap` recipe is its `fc1` layer (a vector
per image already, so pooling passes it through).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import numpy as np


class Pooling(str, Enum):
    GAP = "gap"  # the study's descriptor: global average pooling (VGG16: its fc1 layer)


@dataclass(frozen=True)
class PoolingRow:
    pooling: Pooling
    label: str  # how the page names it
    pool: Callable[[np.ndarray], np.ndarray]


def global_average(outputs: np.ndarray) -> np.ndarray:
    """Mean over the spatial positions of a (n, h, w, c) map; vectors (n, d) pass through."""
    outputs = np.asarray(outputs, dtype=np.float32)
    if outputs.ndim == 2:
        return outputs
    if outputs.ndim != 4:
        raise ValueError(f"expected (n, h, w, c) feature maps or (n, d) vectors, got shape {outputs.shape}")
    return outputs.mean(axis=(1, 2), dtype=np.float32)


POOLINGS: dict[Pooling, PoolingRow] = {
    row.pooling: row for row in (PoolingRow(Pooling.GAP, "study descriptor (global average pool)", global_average),)
}


def pool(pooling: Pooling, outputs: np.ndarray) -> np.ndarray:
    return POOLINGS[pooling].pool(outputs).astype(np.float32, copy=False)
