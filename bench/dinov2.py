"""The newer backbones (DINOv2 from keras-hub) beside Xception: extraction speed and memory, per input size.

    python bench/dinov2.py                     # xception 299; dinov2_small/base/large at 224 and 518
    python bench/dinov2.py --quick             # dinov2_small at 224 and xception, a few images
    python bench/dinov2.py --rows dinov2_base:224,xception:299 --images 16

Each row runs in a fresh process, one after the other (so memory is that network's alone):
(a) network:  the bare network (recipe: the row's own descriptor) on decoded, resized tensors in memory;
(b) project:  cbir.extract.extract_descriptors from 1024 x 768 JPEGs on disk, as a build does;
memory:       the process's resident memory once TensorFlow and the project are imported, and its peak
              after the network is built and has described (b)'s photos: what that backbone adds to the
              app, which holds the networks it has served.
Networks are built with random weights (weights=none; the DINOv2 presets and ImageNet weights cannot be
downloaded here): the arithmetic, and so speed and memory, are those of the real weights. Results go to
bench/results/dinov2.json and dinov2.md. Medians of repeats; this machine is shared, so compare rows of
one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bench.common import write_report  # noqa: E402

DEFAULT_ROWS = ("xception:299,dinov2_small:224,dinov2_small:518,dinov2_base:224,dinov2_base:518,"
                "dinov2_large:224,dinov2_large:518")  # fmt: skip


def memory_mb() -> tuple[float, float]:
    """(resident, peak resident) of this process, MB (Linux /proc)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def measure_one(name: str, size: int, folder: Path, images: int, batch_size: int, repeats: int) -> dict:
    """One row, in this process: build, time the bare network and the project path, read memory."""
    import keras  # noqa: F401  (TensorFlow loaded before the baseline)

    from bench.extract import time_network, time_project
    from cbir.trunks import build_extractor
    from cbir.recipe import Recipe

    baseline, _ = memory_mb()
    started = time.perf_counter()
    extractor = build_extractor(Recipe.create(name, weights="none", input_size=size))
    build_seconds = time.perf_counter() - started
    built, _ = memory_mb()
    network = time_network(extractor, images, batch_size, repeats)
    names = sorted(p.name for p in folder.iterdir())[:images]
    project = time_project(extractor, folder, names, batch_size, repeats)
    _, peak = memory_mb()
    return {
        "backbone": name,
        "input_size": extractor.input_size,
        "recipe": extractor.recipe.key,
        "pooling": extractor.recipe.pooling.value,
        "dim": extractor.dim,
        "params_millions": round(extractor.model.count_params() / 1e6, 1),
        "batch_size": batch_size,
        "images": images,
        "build_seconds": round(build_seconds, 1),
        "network_images_per_second": round(network, 2),
        "project_images_per_second": round(project, 2),
        "rss_after_imports_mb": round(baseline),
        "rss_after_build_mb": round(built),
        "peak_rss_mb": round(peak),
        "added_by_network_mb": round(peak - baseline),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=DEFAULT_ROWS, help="backbone:input size, comma-separated")
    parser.add_argument("--images", type=int, default=16, help="photos per measurement at 224-299 px")
    parser.add_argument("--large-images", type=int, default=4, help="photos per measurement at 518 px")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="xception and dinov2_small at 224, 4 photos, one repeat")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--reuse", type=Path, help="the printed output of an interrupted run: its finished rows are kept "
                        "(marked as such) and only the others are measured")  # fmt: skip
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: backbone:size:folder, run in a child process
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    if arguments.quick:
        arguments.rows, arguments.images, arguments.large_images, arguments.repeats = "xception:299,dinov2_small:224", 4, 2, 1
    if arguments.one:
        name, size, folder = arguments.one.split(":", 2)
        images = arguments.images if int(size) < 400 else arguments.large_images
        row = measure_one(name, int(size), Path(folder), images, min(8, images), arguments.repeats)
        print("ROW " + json.dumps(row), flush=True)
        return 0

    command = "python bench/dinov2.py " + " ".join(argv if argv is not None else sys.argv[1:])
    from bench.extract import make_photos

    start_load = [round(x, 2) for x in os.getloadavg()]  # other work on the machine slows every row
    rows = []
    finished = {}
    if arguments.reuse:
        for line in arguments.reuse.read_text().splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                finished[f"{row['backbone']}:{row['input_size']}"] = {**row, "reused_from": arguments.reuse.name}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "photos"
        make_photos(folder, max(arguments.images, arguments.large_images))
        for spec in arguments.rows.split(","):
            if spec.strip() in finished:
                rows.append(finished[spec.strip()])
                continue
            child = [sys.executable, __file__, "--one", f"{spec.strip()}:{folder}", "--images", str(arguments.images),
                     "--large-images", str(arguments.large_images), "--repeats", str(arguments.repeats)]  # fmt: skip
            done = subprocess.run(child, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
            found = [line[4:] for line in done.stdout.splitlines() if line.startswith("ROW ")]
            if done.returncode or not found:
                print(done.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{spec} failed")
            rows.append(json.loads(found[0]))
            print(found[0], flush=True)

    from cbir.trunks import keras_versions

    import keras_hub

    report = {
        "benchmark": "dinov2",
        "command": command.strip(),
        "cores": os.cpu_count(),
        "versions": {**keras_versions(), "keras_hub": keras_hub.__version__},
        "photos": "synthetic 1024x768 JPEGs (quality 90)",
        "weights": "none (random init; the same arithmetic and memory as the presets' weights)",
        "date": time.strftime("%Y-%m-%d"),
        "load_average_at_start_and_end": [start_load, [round(x, 2) for x in os.getloadavg()]],
        "rows": rows,
    }
    write_report(
        arguments.out,
        "dinov2-quick" if arguments.quick else "dinov2",
        report,
        f"Newer backbones beside Xception: extraction images/s and memory (`{report['command']}`, {report['cores']} "
        f"cores, {report['date']}, weights=none, one run; load average {start_load[0]} at start, "
        f"{report['load_average_at_start_and_end'][1][0]} at end)",
        ["backbone", "input", "descriptor", "params (M)", "(a) network img/s", "(b) project, JPEG files img/s",
         "build s", "process MB after imports", "peak MB with the network", "added MB"],
        [[r["backbone"], r["input_size"], f"{r['pooling']} {r['dim']}-d", r["params_millions"],
          r["network_images_per_second"], r["project_images_per_second"], r["build_seconds"], r["rss_after_imports_mb"],
          r["peak_rss_mb"], r["added_by_network_mb"]] for r in rows],
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
