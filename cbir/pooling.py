"""Pooling: a network's output -> one descriptor per image, applied after the trunk, in numpy.

Pooling runs outside the Keras graph so that one forward pass can serve several recipes of the
same trunk. A pooling is a row of `POOLINGS`: its name (the value a recipe records) and a pure
function over a batch of outputs. The trunk gives a feature map of shape (n, h, w, channels) for
every pooling but the study's descriptor of VGG16, whose `gap` recipe is its `fc1` layer (a vector
per image already, so pooling passes it through). A vision transformer's trunk gives its token
sequence: `cls` reads the class token, the other poolings its patch tokens as a map (the recipe
turns the sequence into that map, cbir.backbones.VitArchitecture.patch_map).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import numpy as np


class Pooling(str, Enum):
    GAP = "gap"  # the study's descriptor: global average pooling (VGG16: its fc1 layer)
    MAC = "mac"  # maximum of each channel (Tolias et al. 2016)
    SPOC = "spoc"  # sum (here: mean) of each channel (Babenko & Lempitsky 2015)
    GEM = "gem"  # generalised mean, p = 3 (Radenovic et al. 2018); p = 1 is SPoC, p -> inf is MAC
    RMAC = "rmac"  # regional MAC over an L = 3 grid, regions L2-normalised and summed (Tolias et al. 2016)
    CLS = "cls"  # a vision transformer's class token after its final norm (DINOv2's own global descriptor)


@dataclass(frozen=True)
class PoolingRow:
    pooling: Pooling
    label: str  # how the page names it
    short_label: str  # in the backbone choice: 'xception · GeM · 2048-d'
    pool: Callable[[np.ndarray], np.ndarray]


def global_average(outputs: np.ndarray) -> np.ndarray:
    """Mean over the spatial positions of a (n, h, w, c) map; vectors (n, d) pass through."""
    outputs = np.asarray(outputs, dtype=np.float32)  # pragma: no mutate -- see _maps
    if outputs.ndim == 2:
        return outputs
    if outputs.ndim != 4:
        raise ValueError(f"expected (n, h, w, c) feature maps or (n, d) vectors, got shape {outputs.shape}")
    return outputs.mean(axis=(1, 2), dtype=np.float32)


GEM_P = 3.0
# GeM raises activations to the p-th power: negatives (EfficientNet's swish can give them) and
# zeros are clamped to this first, as the reference implementation does.
GEM_EPS = 1e-6
RMAC_LEVELS = 3


def _maps(outputs: np.ndarray) -> np.ndarray:
    # Equivalent mutants (pragma), here and wherever a pooling converts its input: a float64 map
    # changes a descriptor only in its last float32 bits, and `pool` returns float32 whatever comes.
    outputs = np.asarray(outputs, dtype=np.float32)  # pragma: no mutate
    if outputs.ndim != 4:
        raise ValueError(f"this pooling needs (n, h, w, c) feature maps, got shape {outputs.shape}")
    return outputs


def max_pool(outputs: np.ndarray) -> np.ndarray:
    """MAC: the largest activation of each channel."""
    return _maps(outputs).max(axis=(1, 2))


def mean_pool(outputs: np.ndarray) -> np.ndarray:
    """SPoC: the mean activation of each channel (the sum, scaled; the scale vanishes once
    descriptors are compared by cosine, and keeps Euclidean distances in the map's units)."""
    return _maps(outputs).mean(axis=(1, 2), dtype=np.float64).astype(np.float32)


def generalised_mean(outputs: np.ndarray, p: float = GEM_P) -> np.ndarray:
    """GeM: (mean of x^p)^(1/p) per channel, activations clamped to GEM_EPS first."""
    clamped = np.maximum(_maps(outputs), np.float32(GEM_EPS))
    # x * x * x in float32 is several times faster than np.power; the mean accumulates in float64.
    # Other p in float64: a large p would overflow float32.
    powered = clamped * clamped * clamped if p == 3 else np.power(clamped.astype(np.float64), p)
    return (powered.mean(axis=(1, 2), dtype=np.float64) ** (1.0 / p)).astype(np.float32)


def rmac_regions(height: int, width: int, levels: int = RMAC_LEVELS) -> list[tuple[int, int, int]]:
    """The R-MAC regions of an h x w map as (top, left, side), the reference layout (Tolias et al.
    2016, as in cnnimageretrieval-pytorch): the whole map, then at level l = 1..L square regions
    of side floor(2 min(h, w) / (l + 1)) at l positions per axis, plus extra positions along the
    longer axis so that neighbouring regions overlap by about 40 %. Levels whose regions would be
    empty (side 0, on a map one position high) are skipped."""
    short, long = min(height, width), max(height, width)
    extra = 0
    if long > short:
        steps = np.arange(2, 8)
        spacing = (long - short) / (steps - 1)
        extra = int(np.argmin(np.abs((short**2 - short * spacing) / short**2 - 0.4))) + 1
    extra_y, extra_x = (extra, 0) if height > width else (0, extra)
    regions = [(0, 0, -1)]  # the whole map (side -1: all of it)
    for level in range(1, levels + 1):
        side = int(2 * short // (level + 1))
        if side < 1:
            # A map one position high (a panorama): finer levels have no region. The references
            # (Tolias et al.; cnnimageretrieval-pytorch) skip them; the whole map still counts.
            # (Equivalent mutant: `break`, as sides only shrink with the level.)
            continue  # pragma: no mutate
        # Equivalent mutants: any whole number here cancels in _positions (floor(h + x) - h).
        half = int(np.floor(side / 2 - 1))  # pragma: no mutate
        tops = _positions(height, side, level + extra_y, half)
        lefts = _positions(width, side, level + extra_x, half)
        regions += [(top, left, side) for top in tops for left in lefts]
    return regions


def _positions(extent: int, side: int, count: int, half: int) -> list[int]:
    """`count` window starts spread over `extent` (the reference's centre arithmetic)."""
    # Equivalent mutants: with one window the step multiplies only i = 0.
    step = (extent - side) / (count - 1) if count > 1 else 0.0  # pragma: no mutate
    return [int(np.floor(half + i * step)) - half for i in range(count)]


def regional_max(outputs: np.ndarray, levels: int = RMAC_LEVELS) -> np.ndarray:
    """R-MAC: MAC of every region (the whole map included), each L2-normalised, summed."""
    maps = _maps(outputs)
    total = np.zeros((maps.shape[0], maps.shape[3]), np.float64)
    for top, left, side in rmac_regions(maps.shape[1], maps.shape[2], levels):
        window = maps if side < 0 else maps[:, top : top + side, left : left + side, :]
        region = window.max(axis=(1, 2)).astype(np.float64)
        total += region / np.maximum(np.linalg.norm(region, axis=1, keepdims=True), 1e-12)
    return total.astype(np.float32)


def class_token(outputs: np.ndarray) -> np.ndarray:
    """CLS: the first token of a (n, tokens, dim) sequence."""
    outputs = np.asarray(outputs, dtype=np.float32)  # pragma: no mutate -- see _maps
    if outputs.ndim != 3:
        raise ValueError(f"the CLS token needs a vision transformer's (n, tokens, dim) output, not {outputs.shape}")
    return outputs[:, 0, :]


POOLINGS: dict[Pooling, PoolingRow] = {
    row.pooling: row
    for row in (
        PoolingRow(Pooling.GAP, "study descriptor (global average pool)", "GAP", global_average),
        PoolingRow(Pooling.MAC, "MAC", "MAC", max_pool),
        PoolingRow(Pooling.SPOC, "SPoC", "SPoC", mean_pool),
        PoolingRow(Pooling.GEM, "GeM (p = 3)", "GeM", generalised_mean),
        PoolingRow(Pooling.RMAC, "R-MAC (L = 3)", "R-MAC", regional_max),
        PoolingRow(Pooling.CLS, "CLS token", "CLS", class_token),
    )
}


def pool(pooling: Pooling, outputs: np.ndarray) -> np.ndarray:
    return POOLINGS[pooling].pool(outputs).astype(np.float32, copy=False)
