"""The runtime as part of the recipe (`--runtime`): Keras vs OpenVINO f32 vs bf16, through the project's
own extractor, per backbone.

    python bench/runtimes.py                                   # xception and inception_v3, 64 images
    python bench/runtimes.py --backbones xception,resnet152_v2 --images 48
    python bench/runtimes.py --quick                           # xception at 96 px, 16 images (smoke run)

For each backbone, each runtime runs in a fresh process (so its peak memory is its own), on the same
synthetic pictures (tests/synthetic.py, decoded to the recipe's network input in memory), with the
study's recipe (`gap`) and batch 16; Keras runs first and again last, and the ratio is against the
median of the two (the machine is shared). Reported per runtime:

- images/s of `FeatureExtractor.describe` (the bare network plus pooling, as the build runs it);
- the network's preparation: building Keras, or converting it to OpenVINO (`openvino.convert_model`,
  then saved as IR), and reading the saved IR in a later process instead;
- agreement with Keras: the lowest and mean cosine of the two descriptors of each picture, and the
  mean overlap of the top 10 when each picture ranks all the others by cosine;
- the process's peak resident memory.

openvino-bf16 runs only where OpenVINO's CPU plugin reports BF16 (AVX512_BF16 / AMX); elsewhere the
build refuses it, and so does this table. The ImageNet weights cannot be downloaded here, so the
weights are random, with each batch-norm layer's statistics set from synthetic pictures as a trained
network's are from its data (bench/calibrated.py; `--weights none` keeps the raw init, under which
EfficientNetV2-L's activations reach 1e10 and Keras disagrees with itself). The last column is the
noise floor: Keras' own descriptors of the same pictures described one at a time against in
batches (in its first run).
Results: bench/results/runtimes.json, .md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bench.calibrated import WEIGHTS_SAID, add_weights_argument  # noqa: E402
from bench.common import cpu_model, write_report  # noqa: E402

BATCH = 16
ROW_MARK = "RUNTIMES-ROW "


def pictures(count: int, size: int) -> np.ndarray:
    """Distinct synthetic pictures (not noise: a ranking among them means something), at size x size."""
    from synthetic import draw_picture

    return np.stack([np.asarray(draw_picture(seed, 160, 120).resize((size, size))) for seed in range(count)])


def worker(options: dict) -> None:
    """One backbone on one runtime, in its own process: rows on stdout, descriptors to a file."""
    from cbir.trunks import build_extractor
    from cbir.recipe import Recipe
    from cbir.runtime import Runtime

    recipe = Recipe.create(options["backbone"], weights=options["weights"], input_size=options.get("input_size"),
                           runtime=options["runtime"])  # fmt: skip
    started = time.perf_counter()
    extractor = build_extractor(recipe)
    prepared = time.perf_counter() - started
    cached = None
    if recipe.runtime is not Runtime.KERAS:  # the IR is saved now: what a later process does instead
        started = time.perf_counter()
        extractor = build_extractor(recipe)
        cached = time.perf_counter() - started
    images = pictures(options["images"], extractor.input_size)
    extractor.describe(images[:BATCH])  # warm-up: the first batch traces / compiles for its shape
    rates, descriptors = [], None
    for _ in range(options["repeats"]):
        started = time.perf_counter()
        descriptors = np.concatenate([extractor.describe(images[i : i + BATCH], pad_to=BATCH)
                                      for i in range(0, len(images), BATCH)])  # fmt: skip
        rates.append(len(images) / (time.perf_counter() - started))
    np.save(options["out"], descriptors)
    alone = None
    if recipe.runtime is Runtime.KERAS and options["turn"] == 0:  # the noise floor: Keras against itself
        alone = agreement(descriptors, np.concatenate([extractor.describe(images[i : i + 1])
                                                       for i in range(len(images))]))["min_cosine"]  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(ROW_MARK + json.dumps({"images_per_second": round(float(np.median(rates)), 3), "prepare_seconds": round(prepared, 1),
                                 "cached_seconds": None if cached is None else round(cached, 1),
                                 "peak_mb": round(peak), "input_size": extractor.input_size,
                                 "self_min_cosine": alone}), flush=True)  # fmt: skip


def run(options: dict, scratch: Path) -> dict:
    out = scratch / f"{options['backbone']}-{options['runtime']}-{options['turn']}.npy"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CBIR_OPENVINO_CACHE=str(scratch / "openvino"))
    result = subprocess.run([sys.executable, __file__, "--worker", json.dumps({**options, "out": str(out)})],
                            stdout=subprocess.PIPE, text=True, cwd=REPO, env=env)  # fmt: skip
    rows = [json.loads(line[len(ROW_MARK):]) for line in result.stdout.splitlines() if line.startswith(ROW_MARK)]
    if result.returncode != 0 or not rows:
        how = "killed (signal 9: most often out of memory)" if result.returncode == -9 else f"exited with {result.returncode}"
        return {"note": f"worker {how}; see its output above"}
    return {**rows[0], "descriptors": np.load(out)}


def agreement(reference: np.ndarray, other: np.ndarray, k: int = 10) -> dict[str, float]:
    def unit(rows: np.ndarray) -> np.ndarray:
        return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)

    a, b = unit(reference.astype(np.float64)), unit(other.astype(np.float64))
    cosine = (a * b).sum(1)
    overlaps = []
    for similarities_a, similarities_b, row in zip(a @ a.T, b @ b.T, range(len(a))):
        similarities_a[row] = similarities_b[row] = -np.inf  # the picture itself is not a result
        top_a, top_b = set(np.argsort(-similarities_a)[:k]), set(np.argsort(-similarities_b)[:k])
        overlaps.append(len(top_a & top_b) / k)
    return {"min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean()),
            "top10_overlap": float(np.mean(overlaps)),
            "max_abs_diff_over_max_abs": float(np.abs(reference - other).max() / np.abs(reference).max())}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="xception,inception_v3")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--input-size", type=int, help="build networks smaller than their own size (smoke runs)")
    parser.add_argument("--quick", action="store_true", help="xception at 96 px, 16 images, one repeat")
    add_weights_argument(parser)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--name", help="results file stem under --out (default runtimes, or runtimes-quick)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.worker:
        worker(json.loads(arguments.worker))
        return 0
    if arguments.quick:
        arguments.backbones, arguments.images, arguments.repeats = "xception", 16, 1
        arguments.input_size = arguments.input_size or 96

    from cbir.backbones import parse_backbones
    from cbir.trunks import keras_versions
    from cbir.errors import SettingsError
    from cbir.runtime import Runtime, check_runtime, cpu_capabilities

    command = "python bench/runtimes.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for backbone in parse_backbones(arguments.backbones):
            weights = "none"
            if arguments.weights == "calibrated":  # in its own process: the workers' peaks stay their own
                made = subprocess.run([sys.executable, str(REPO / "bench" / "calibrated.py"), "--backbone", backbone.name,
                                       "--out", str(Path(scratch) / f"{backbone.name}.weights.h5")]
                                      + (["--input-size", str(arguments.input_size)] if arguments.input_size else []),
                                      stdout=subprocess.PIPE, text=True, cwd=REPO,
                                      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))  # fmt: skip
                if made.returncode != 0 or not made.stdout.strip():  # a row that says so, and the other backbones
                    rows.append({"backbone": backbone.name, "runtime": "", "turn": 0,
                                 "note": f"setting the batch-norm statistics failed (exit {made.returncode}); see above"})  # fmt: skip
                    continue
                weights = made.stdout.strip().splitlines()[-1]
            common = {"backbone": backbone.name, "input_size": arguments.input_size, "images": arguments.images,
                      "repeats": arguments.repeats, "weights": weights}  # fmt: skip
            measured = {}
            order = [Runtime.KERAS, Runtime.OPENVINO_F32, Runtime.OPENVINO_BF16, Runtime.KERAS]
            for turn, runtime in enumerate(order):
                try:
                    check_runtime(runtime)
                except SettingsError as error:
                    measured[(runtime, turn)] = {"note": f"refused: {error}"}
                    continue
                measured[(runtime, turn)] = run({**common, "runtime": runtime.value, "turn": turn}, Path(scratch))
            keras_runs = [found for (runtime, _), found in measured.items() if runtime is Runtime.KERAS and "descriptors" in found]
            baseline = float(np.median([found["images_per_second"] for found in keras_runs])) if keras_runs else None
            reference = keras_runs[0]["descriptors"] if keras_runs else None
            for (runtime, turn), found in measured.items():
                row = {"backbone": backbone.name, "runtime": runtime.value, "turn": turn,
                       "weights": "random, batch-norm statistics from pictures" if weights != "none" else "random",
                       **{key: value for key, value in found.items() if key != "descriptors"}}  # fmt: skip
                if baseline and "images_per_second" in found:
                    row["over_keras"] = round(found["images_per_second"] / baseline, 3)
                if reference is not None and "descriptors" in found and runtime is not Runtime.KERAS:
                    row.update(agreement(reference, found["descriptors"]))
                rows.append(row)

    import openvino

    report = {"benchmark": "runtimes", "command": command.strip(), "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
              "versions": {**keras_versions(), "openvino": openvino.__version__},
              "openvino_cpu_capabilities": cpu_capabilities(),
              "weights": WEIGHTS_SAID[arguments.weights],
              "batch": BATCH, "cpu": cpu_model(),
              "images": arguments.images, "rows": rows}  # fmt: skip
    table = []
    for r in rows:
        prepare = None if "prepare_seconds" not in r else (
            f"{r['prepare_seconds']} s" + (f" (IR read: {r['cached_seconds']} s)" if r.get("cached_seconds") is not None else ""))
        table.append([r["backbone"], r["runtime"], r.get("input_size"), r.get("images_per_second", r.get("note")),
                      r.get("over_keras"), prepare, r.get("peak_mb"),
                      None if "min_cosine" not in r else f"{r['min_cosine']:.7f} / {r['mean_cosine']:.7f}",
                      None if "top10_overlap" not in r else f"{r['top10_overlap']:.3f}",
                      None if "max_abs_diff_over_max_abs" not in r else f"{r['max_abs_diff_over_max_abs']:.1e}",
                      None if r.get("self_min_cosine") is None else f"{r['self_min_cosine']:.7f}"])  # fmt: skip
    write_report(
        arguments.out, arguments.name or ("runtimes-quick" if arguments.quick else "runtimes"), report,
        f"`--runtime` per backbone, through the project's extractor (`{report['command']}`, {report['cores']} cores, "
        f"{report['cpu']}, {report['date']}; weights: {report['weights']}; Keras measured first and last, "
        "ratio against their median)",
        ["backbone", "runtime", "px", "images/s", "x keras", "network ready in", "peak MB",
         "cosine to keras (min / mean)", "top-10 overlap", "max abs diff / max abs",
         "keras alone vs batched (min cosine)"],
        table,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
