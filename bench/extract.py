"""Extraction throughput per backbone, three ways, side by side in one run.

    python bench/extract.py              # every backbone, 96 images each
    python bench/extract.py --quick      # xception only, a few images (smoke run)
    python bench/extract.py --backbones vgg16,xception --images 200

(a) network:  the bare network on already-decoded, already-resized tensors in memory, at the
              build's batch size: the machine's limit for that network.
(b) project:  cbir.extract.extract_descriptors from 1024 x 768 JPEGs on disk (as in Oxford5k):
              decoding in threads, overlapped with inference.
(c) study:    the original study's way: per image, PIL open + resize + one model.predict call.

Networks are built with random weights (weights=None): the arithmetic, and so the speed, is the
same as with ImageNet weights, which cannot be downloaded on every machine. Results go to
bench/results/extract.json and extract.md. Medians of repeats; this machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
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

from cbir.backbones import parse_backbones  # noqa: E402
from cbir.trunks import build_extractor, keras_versions  # noqa: E402
from cbir.extract import DEFAULT_BATCH_SIZE, extract_descriptors  # noqa: E402
from cbir.recipe import Recipe  # noqa: E402
from bench.common import write_report  # noqa: E402


def make_photos(folder: Path, count: int, width: int = 1024, height: int = 768) -> list[str]:
    """Photo-sized JPEGs with texture everywhere, so decoding costs what a real photo costs."""
    from synthetic import draw_picture

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    rng = np.random.default_rng(0)
    for index in range(count):
        picture = draw_picture(index, width, height)
        noise = rng.normal(0, 12, size=(height, width, 3))
        pixels = np.clip(np.asarray(picture, np.float32) + noise, 0, 255).astype(np.uint8)
        name = f"photo_{index:04d}.jpg"
        Image.fromarray(pixels).save(folder / name, quality=90)
        names.append(name)
    return names


def time_network(extractor, count: int, batch_size: int, repeats: int) -> float:
    size = extractor.input_size
    pixels = np.random.default_rng(1).integers(0, 256, size=(batch_size, size, size, 3), dtype=np.uint8)
    extractor.describe(pixels)  # warm-up: tracing and first allocations are not throughput
    rates = []
    batches = max(1, count // batch_size)
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(batches):
            extractor.describe(pixels)
        rates.append(batches * batch_size / (time.perf_counter() - started))
    return statistics.median(rates)


def time_project(extractor, folder: Path, names: list[str], batch_size: int, repeats: int) -> float:
    extract_descriptors(extractor, folder, names[:batch_size], batch_size=batch_size, progress=False)
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = extract_descriptors(extractor, folder, names, batch_size=batch_size, progress=False)
        rates.append(len(result.images) / (time.perf_counter() - started))
    return statistics.median(rates)


def time_study(extractor, folder: Path, names: list[str], repeats: int) -> float:
    """One file at a time: PIL open, resize, preprocess, model.predict, as the study's extractors did."""
    model, preprocess, size = extractor.model, extractor.trunk.preprocess, extractor.input_size

    def one(name: str) -> np.ndarray:
        image = Image.open(folder / name).convert("RGB").resize((size, size))
        pixels = preprocess(np.expand_dims(np.asarray(image, np.float32), 0))
        return model.predict(pixels, verbose=0)[0]

    one(names[0])
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for name in names:
            one(name)
        rates.append(len(names) / (time.perf_counter() - started))
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="all")
    parser.add_argument("--images", type=int, default=96, help="photos per measurement")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--study-images", type=int, default=24, help="photos for the (slow) study way")
    parser.add_argument("--quick", action="store_true", help="xception, 32 photos, one repeat")
    parser.add_argument("--input-size", type=int, help="build networks smaller than their own size (smoke runs)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    arguments = parser.parse_args(argv)
    if arguments.quick:
        if arguments.backbones == "all":
            arguments.backbones = "xception"
        arguments.images, arguments.repeats, arguments.study_images = 32, 1, 8
    logging.basicConfig(level=logging.WARNING)

    command = "python bench/extract.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "photos"
        names = make_photos(folder, arguments.images)
        for backbone in parse_backbones(arguments.backbones):
            size = None
            if arguments.input_size and not backbone.fixed_input_size:
                size = max(arguments.input_size, backbone.min_input_size)
            extractor = build_extractor(Recipe.create(backbone.name, weights="none", input_size=size))
            network = time_network(extractor, arguments.images, arguments.batch_size, arguments.repeats)
            project = time_project(extractor, folder, names, arguments.batch_size, arguments.repeats)
            study = time_study(extractor, folder, names[: arguments.study_images], max(1, arguments.repeats - 1))
            row = {
                "backbone": backbone.name,
                "input_size": extractor.input_size,
                "batch_size": arguments.batch_size,
                "network_images_per_second": round(network, 2),
                "project_images_per_second": round(project, 2),
                "study_images_per_second": round(study, 2),
                "project_over_network": round(project / network, 3),
                "project_over_study": round(project / study, 3),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            del extractor
            import keras

            keras.backend.clear_session()

    report = {
        "benchmark": "extract",
        "command": command,
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "versions": keras_versions(),
        "photos": f"{arguments.images} synthetic 1024x768 JPEGs (quality 90)",
        "weights": "none (random init; same arithmetic as ImageNet weights)",
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
    }
    write_report(
        arguments.out,
        "extract-quick" if arguments.quick else "extract",
        report,
        f"Extraction throughput, images/s (`{command.strip()}`, {report['cores']} cores, {report['date']})",
        ["backbone", "input", "(a) network", "(b) project, JPEG files", "(c) study's loop", "b/a", "b/c"],
        [[row["backbone"], row["input_size"], row["network_images_per_second"], row["project_images_per_second"],
          row["study_images_per_second"], row["project_over_network"], row["project_over_study"]] for row in rows],
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
