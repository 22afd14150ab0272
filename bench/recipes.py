"""What each descriptor recipe costs: extraction per recipe against the study's `gap`, pooling in the
Keras graph against pooling in numpy, PCA-whitening, and search at reduced dimension.

    python bench/recipes.py                     # xception, resnet152_v2, vgg16; 48 photos, 3 repeats
    python bench/recipes.py --quick             # xception, 8 photos, 1 repeat (smoke run)
    python bench/recipes.py --backbones all --images 96

Photos are 1024 x 768 JPEGs with every fourth one portrait (as in Oxford5k, where both occur), so
the aspect-keeping recipes see two input shapes. Networks have random weights (weights=None): the
arithmetic, and so the time, is the same as with ImageNet weights. Recipes are timed interleaved,
repeat by repeat, so a noisy neighbour on this shared machine hits them all alike. Results go to
bench/results/recipes.json and recipes.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bench.common import write_report  # noqa: E402
from bench.extract import make_photos  # noqa: E402
from cbir.backbones import parse_backbones  # noqa: E402
from cbir.trunks import ExtractorCache, keras_versions  # noqa: E402
from cbir.distances import Metric  # noqa: E402
from cbir.extract import DEFAULT_BATCH_SIZE, extract_descriptors  # noqa: E402
from cbir.pooling import generalised_mean, max_pool, regional_max  # noqa: E402
from cbir.recipe import STANDARD_SCALES, Recipe  # noqa: E402
from cbir.stores.exact import ExactStore  # noqa: E402
from cbir.whitening import learn_whitening  # noqa: E402

RECIPES = (("gap", None), ("gem", None), ("rmac", None), ("gem", STANDARD_SCALES))


def photos_with_portraits(folder: Path, count: int) -> list[str]:
    names = make_photos(folder, count)
    for name in names[::4]:
        path = folder / name
        Image.open(path).transpose(Image.Transpose.ROTATE_90).save(path, quality=90)
    return names


def time_extraction(backbones, folder: Path, names: list[str], repeats: int, input_size: int | None) -> list[dict]:
    cache = ExtractorCache()
    rows = []
    for backbone in backbones:
        recipes = [Recipe.create(backbone.name, pooling=p, scales=s, weights="none", input_size=input_size)
                   for p, s in RECIPES]  # fmt: skip
        extractors = [cache.get(recipe) for recipe in recipes]
        for extractor in extractors:  # warm-up: TensorFlow traces the first shapes
            extract_descriptors(extractor, folder, names[:DEFAULT_BATCH_SIZE], progress=False)
        rates: dict[str, list[float]] = {recipe.key: [] for recipe in recipes}
        for _ in range(repeats):
            for recipe, extractor in zip(recipes, extractors):
                started = time.perf_counter()
                result = extract_descriptors(extractor, folder, names, progress=False)
                rates[recipe.key].append(len(result.images) / (time.perf_counter() - started))
        gap = statistics.median(rates[recipes[0].key])
        for recipe in recipes:
            rate = statistics.median(rates[recipe.key])
            rows.append({
                "backbone": backbone.name, "recipe": recipe.key, "input": recipe.input_shape.value,
                "scales": ",".join(f"{s:g}" for s in recipe.scales), "images_per_second": round(rate, 2),
                "time_vs_gap": round(gap / rate, 2), "rates": [round(r, 2) for r in rates[recipe.key]],
            })  # fmt: skip
            print(rows[-1], flush=True)
    return rows


def time_pooling_placement(repeats: int) -> list[dict]:
    """GeM and MAC inside the Keras graph (a layer after the trunk) against the trunk's map pooled
    in numpy, on xception at one batch of 16 landscape inputs (299 x 224)."""
    import keras

    cache = ExtractorCache()
    trunk = cache.get(Recipe.create("xception", pooling="gem", weights="none")).trunk
    batch = np.random.default_rng(0).integers(0, 255, size=(DEFAULT_BATCH_SIZE, 224, 299, 3), dtype=np.uint8)
    pixels = trunk.preprocess(batch.astype(np.float32))

    def gem_layer(x):
        return keras.ops.power(keras.ops.mean(keras.ops.power(keras.ops.maximum(x, 1e-6), 3.0), axis=(1, 2)), 1 / 3)

    in_graph = {
        "gem": keras.Model(trunk.model.input, keras.layers.Lambda(gem_layer)(trunk.model.output)),
        "mac": keras.Model(trunk.model.input, keras.layers.GlobalMaxPooling2D()(trunk.model.output)),
    }
    in_numpy = {"gem": generalised_mean, "mac": max_pool, "rmac": regional_max}
    for model in in_graph.values():
        model.predict_on_batch(pixels)
    trunk.model.predict_on_batch(pixels)
    samples: dict[str, list[float]] = {}
    for _ in range(repeats * 3):
        for name, model in in_graph.items():
            started = time.perf_counter()
            model.predict_on_batch(pixels)
            samples.setdefault(f"{name} in graph", []).append(time.perf_counter() - started)
        started = time.perf_counter()
        feature_map = np.asarray(trunk.model.predict_on_batch(pixels))
        forward = time.perf_counter() - started
        samples.setdefault("trunk alone", []).append(forward)
        for name, pool in in_numpy.items():
            started = time.perf_counter()
            pool(feature_map)
            pooled = time.perf_counter() - started
            samples.setdefault(f"{name} in numpy", []).append(forward + pooled)
            samples.setdefault(f"{name} numpy pooling alone", []).append(pooled)
    return [
        {"what": name, "ms_per_batch_of_16": round(1000 * statistics.median(values), 2)}
        for name, values in samples.items()
    ]


def time_whitening_and_search(sizes: list[int], dims: list[int], queries: int) -> list[dict]:
    rng = np.random.default_rng(1)
    rows = []
    training = np.abs(rng.normal(size=(6000, 2048)))
    started = time.perf_counter()
    whitening = learn_whitening(training, 512)
    rows.append({"what": "learn whitening, 6000 x 2048 -> 512", "ms": round(1000 * (time.perf_counter() - started), 1)})
    samples = []
    for query in training[:queries]:
        started = time.perf_counter()
        whitening.apply(query)
        samples.append(time.perf_counter() - started)
    rows.append({"what": "apply whitening to one query", "ms": round(1000 * statistics.median(samples), 3)})
    for size in sizes:
        for dim in dims:
            store = ExactStore(rng.normal(size=(size, dim)).astype(np.float32))
            store.norms  # noqa: B018 -- computed once at load, not per query
            times = []
            for query in rng.normal(size=(queries, dim)).astype(np.float32):
                started = time.perf_counter()
                store.search(query, Metric.COSINE, 100)
                times.append(time.perf_counter() - started)
            rows.append({"what": f"exact cosine top-100, {size:,} x {dim}", "ms": round(1000 * statistics.median(times), 2)})
            print(rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="xception,resnet152_v2,vgg16")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="5063,100000", help="database sizes for the search timings")
    parser.add_argument("--input-size", type=int, help="instead of each backbone's own (smaller: a faster smoke run)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--name", default="recipes")
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.backbones, arguments.images, arguments.repeats, arguments.sizes = "xception", 8, 1, "5063"
    logging.basicConfig(level=logging.WARNING)
    backbones = parse_backbones(arguments.backbones)
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary) / "photos"
        names = photos_with_portraits(folder, arguments.images)
        extraction = time_extraction(backbones, folder, names, arguments.repeats, arguments.input_size)
    pooling = time_pooling_placement(arguments.repeats)
    sizes = [int(size) for size in arguments.sizes.split(",")]
    costs = time_whitening_and_search(sizes, [2048, 512, 256], 50 if arguments.quick else 200)
    report = {
        "command": "python bench/recipes.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cores": os.cpu_count(), "versions": keras_versions(), "images": arguments.images,
        "repeats": arguments.repeats, "extraction": extraction, "pooling_placement": pooling, "costs": costs,
    }  # fmt: skip
    table = [[r["backbone"], r["recipe"], r["input"], r["scales"], r["images_per_second"], r["time_vs_gap"]] for r in extraction]
    table += [["", p["what"], "", "", f'{p["ms_per_batch_of_16"]} ms / batch of 16', ""] for p in pooling]
    table += [["", c["what"], "", "", f'{c["ms"]} ms', ""] for c in costs]
    title = (f"Recipe costs ({report['cores']} cores, {arguments.images} photos 1024 x 768, a quarter portrait, "
             f"median of {arguments.repeats}): `{report['command']}`")  # fmt: skip
    write_report(arguments.out, arguments.name, report, title,
                 ["backbone", "recipe / what", "input", "scales", "images/s (or time)", "time vs gap"], table)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
