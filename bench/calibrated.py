"""Random weights that behave like trained ones, for benchmarks that compare two ways of running a network.

The ImageNet weights cannot be downloaded here, and a network straight from its random init is a
poor stand-in when the question is numerical agreement: its batch-norm layers hold their initial
statistics (mean 0, variance 1), so nothing keeps activations in range. EfficientNetV2-L's grow
unchecked, and Keras then disagrees with itself: one picture described alone and in a batch gives
descriptors far apart (`python bench/runtimes.py --backbones efficientnet_v2_l --weights none`
measures it). A trained network's batch-norm statistics are those of its
inputs. This sets them so (each batch-norm layer's moving mean and variance from one pass over
synthetic pictures, in training mode, with momentum 0) and saves the result as a Keras weights
file, which the project loads like any `--weights PATH`. Networks without batch norm (VGG16) keep
their plain random init ("none").

    python bench/calibrated.py --backbone efficientnet_v2_l --out /tmp/effv2l.weights.h5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

PICTURES = 16
WEIGHTS_SAID = {
    "calibrated": "random init (ImageNet weights cannot be downloaded here), batch-norm statistics set from synthetic "
                  "pictures (bench/calibrated.py; networks without batch norm: random init)",
    "none": "random init (weights=none)",
}  # fmt: skip


def add_weights_argument(parser: argparse.ArgumentParser) -> None:
    """The benchmarks' `--weights calibrated|none`."""
    parser.add_argument("--weights", choices=sorted(WEIGHTS_SAID), default="calibrated",
                        help="random weights with batch-norm statistics set from pictures (bench/calibrated.py), "
                             "or the raw random init")  # fmt: skip


def calibrated_weights(backbone_name: str, input_size: int | None, out: Path) -> str:
    """`out` (written) if the network has batch norm, else "none": what to pass as the recipe's weights."""
    import keras
    import numpy as np
    import tensorflow

    from cbir.backbones import get_backbone, resolve_input_size
    from cbir.weights import Weights
    from cbir.trunks import build_trunk
    from synthetic import draw_picture

    backbone = get_backbone(backbone_name)
    trunk = build_trunk(backbone, Weights.parse("none"), input_size, study_layer=False)
    norms = [layer for layer in trunk.model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not norms:
        return "none"
    size = resolve_input_size(backbone, input_size, study_layer=False)
    pictures = np.stack([np.asarray(draw_picture(seed, 160, 120).resize((size, size))) for seed in range(PICTURES)])
    for layer in norms:
        layer.momentum = 0.0  # the moving statistics become this batch's
    # Inside a tf.function: run eagerly, Keras keeps every layer's output of the pass alive (9.6 GB
    # for 4 pictures through EfficientNetV2-L at 480 px); a traced graph frees them as it goes.
    tensorflow.function(lambda pixels: trunk.model(pixels, training=True))(trunk.preprocess(pictures.astype(np.float32)))
    for layer in norms:
        layer.momentum = 0.99
    out.parent.mkdir(parents=True, exist_ok=True)
    trunk.model.save_weights(str(out))
    return str(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--input-size", type=int)
    parser.add_argument("--out", type=Path, required=True, help="a .weights.h5 path")
    arguments = parser.parse_args(argv)
    print(calibrated_weights(arguments.backbone, arguments.input_size, arguments.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
