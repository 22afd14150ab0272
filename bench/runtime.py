"""Can the bare network itself go faster? Thread settings, batch size, and another runtime.

    python bench/runtime.py                       # every backbone (about 30 minutes on 2 cores)
    python bench/runtime.py --backbones xception --images 32
    python bench/runtime.py --quick               # xception at 96 px, a few images (smoke run)
    python bench/runtime.py --backbones efficientnet_v2_l --name runtime-efficientnet_v2_l

For each backbone, images/s of the bare network on decoded tensors in memory (as column (a) of
bench/extract.py), always side by side with the project's setting (TensorFlow's own thread
defaults, batch 16) measured in the same run:

- threads: TensorFlow's intra-op / inter-op thread pools, one fresh process per setting (they can
  only be set before TensorFlow starts);
- batch:   the batch size handed to the network;
- openvino: the same Keras network and weights exported with `model.export(format="openvino")`
  and run by the OpenVINO CPU runtime (pip install openvino), once at float32 and once at its
  default precision on CPUs with bfloat16 units. Reported with the largest absolute difference of
  the descriptors from Keras' own, and the lowest cosine between the two for the same image.
  EfficientNetV2-L's export this way outgrew 24 GiB and was killed; `--runtime` (cbir/runtime.py)
  converts with `openvino.convert_model` on the network instead, in 2.9 GB, and bench/runtimes.py
  measures that, the route an index is built with.

Random weights (weights=None), as in bench/extract.py. Results: bench/results/runtime.json, .md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import write_report  # noqa: E402

BASELINE_BATCH = 16
THREAD_SETTINGS = [(1, 1), (2, 1), (2, 2), (4, 2)]  # (intra-op, inter-op); (0, 0) is TensorFlow's default


class OpenVinoExtractor:
    """An OpenVINO-compiled copy of a Keras extractor, with the same `describe` contract."""

    def __init__(self, extractor, xml_path: Path, precision: str | None):
        import openvino

        core = openvino.Core()
        config = {} if precision is None else {"INFERENCE_PRECISION_HINT": precision}
        self.compiled = core.compile_model(core.read_model(str(xml_path)), "CPU", config)
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # what it chose
        self.input_size, self.preprocess = extractor.input_size, extractor.trunk.preprocess
        self.pool = extractor.recipe.pool  # the network gives the trunk's output; the recipe pools it

    def describe(self, batch: np.ndarray) -> np.ndarray:
        pixels = self.preprocess(batch.astype(np.float32, copy=True))
        return self.pool(np.asarray(self.compiled(pixels)[0], dtype=np.float32))


def agreement(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    cosine = (reference * other).sum(1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(other, axis=1))
    return {
        "max_abs_diff": float(np.abs(reference - other).max()),
        "max_abs_diff_over_max_abs": float(np.abs(reference - other).max() / np.abs(reference).max()),
        "min_cosine": float(cosine.min()),
    }


ROW_MARK = "RUNTIME-ROW "  # worker stdout lines that carry a result; TensorFlow may print others


def emit(record: dict) -> None:
    print(ROW_MARK + json.dumps(record), flush=True)


def worker(options: dict) -> None:
    """Runs in its own process: TensorFlow's thread pools are fixed once it starts.

    Each row is printed as soon as it is measured, so a crash in a later stage (the OpenVINO
    export of EfficientNetV2-L at 480 px outgrew 24 GiB here) keeps the rows before it."""
    intra, inter = options["threads"]
    import tensorflow as tf

    if intra or inter:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    from bench.extract import time_network
    from cbir.backbones import get_backbone
    from cbir.trunks import build_extractor
    from cbir.recipe import Recipe

    backbone = get_backbone(options["backbone"])
    extractor = build_extractor(Recipe.create(backbone.name, weights="none", input_size=options.get("input_size")))
    images, repeats = options["images"], options["repeats"]

    def row(setting: str, params: dict, rate: float, **extra) -> None:
        emit({"backbone": backbone.name, "input_size": extractor.input_size, "setting": setting,
              "params": params, "images_per_second": round(rate, 3), **extra})  # fmt: skip

    def baseline() -> None:
        row("project", {"threads": "default", "batch": BASELINE_BATCH},
            time_network(extractor, images, BASELINE_BATCH, repeats))  # fmt: skip

    if intra or inter:
        row("threads", {"intra_op": intra, "inter_op": inter, "batch": BASELINE_BATCH},
            time_network(extractor, images, BASELINE_BATCH, repeats))  # fmt: skip
        return
    baseline()
    for batch in options["batches"]:
        if batch != BASELINE_BATCH:
            row("batch", {"threads": "default", "batch": batch}, time_network(extractor, images, batch, repeats))
    if options["openvino"]:
        try:
            import openvino  # noqa: F401
        except ImportError:
            emit({"backbone": backbone.name, "setting": "openvino", "note": "not installed (pip install openvino)"})
        else:
            sample = np.random.default_rng(7).integers(0, 256, size=(8, *(extractor.input_size,) * 2, 3), dtype=np.uint8)
            reference = extractor.describe(sample)
            emit({"stage": "openvino"})  # if the process dies now, the parent knows where
            with tempfile.TemporaryDirectory() as scratch:
                xml = Path(scratch) / f"{backbone.name}.xml"
                started = time.perf_counter()
                extractor.model.export(str(xml), format="openvino", verbose=False)
                export_seconds = round(time.perf_counter() - started, 1)
                for precision in ("f32", None):
                    compiled = OpenVinoExtractor(extractor, xml, precision)
                    rate = time_network(compiled, images, BASELINE_BATCH, repeats)
                    row("openvino", {"precision": compiled.precision, "batch": BASELINE_BATCH}, rate,
                        export_seconds=export_seconds, **agreement(reference, compiled.describe(sample)))  # fmt: skip
        baseline()  # again, after the others: the machine may have changed under us


def run_worker(options: dict) -> list[dict]:
    result = subprocess.run([sys.executable, __file__, "--worker", json.dumps(options)],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)  # fmt: skip
    records = [json.loads(line[len(ROW_MARK):]) for line in result.stdout.splitlines() if line.startswith(ROW_MARK)]
    rows = [r for r in records if "stage" not in r]
    if result.returncode != 0:
        stage = records[-1]["stage"] if records and "stage" in records[-1] else "error"
        how = "killed (signal 9: most often the kernel's out-of-memory killer)" if result.returncode == -9 else \
            f"exited with {result.returncode}"  # fmt: skip
        rows.append({"backbone": options["backbone"], "setting": stage,
                     "note": f"worker {how}; see its output above"})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="all")
    parser.add_argument("--images", type=int, default=48, help="images per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", default="1,4,8,16,32")
    parser.add_argument("--no-openvino", action="store_true")
    parser.add_argument("--input-size", type=int, help="build networks smaller than their own size (smoke runs)")
    parser.add_argument("--quick", action="store_true", help="xception at 96 px, 8 images, one repeat")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--name", help="results file stem under --out (default runtime, or runtime-quick)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.worker:
        worker(json.loads(arguments.worker))
        return 0
    if arguments.quick:
        arguments.backbones = "xception" if arguments.backbones == "all" else arguments.backbones
        arguments.images, arguments.repeats, arguments.batches = 8, 1, "4,8"
        arguments.input_size = arguments.input_size or 96

    from cbir.backbones import parse_backbones
    from cbir.trunks import keras_versions

    command = "python bench/runtime.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = []
    for backbone in parse_backbones(arguments.backbones):
        size = None
        if arguments.input_size and not backbone.fixed_input_size:
            size = max(arguments.input_size, backbone.min_input_size)
        common = {"backbone": backbone.name, "input_size": size, "images": arguments.images,
                  "repeats": arguments.repeats}  # fmt: skip
        found = run_worker({**common, "threads": [0, 0], "batches": [int(b) for b in arguments.batches.split(",")],
                            "openvino": not arguments.no_openvino})  # fmt: skip
        for threads in THREAD_SETTINGS[:1] if arguments.quick else THREAD_SETTINGS:
            found += run_worker({**common, "threads": list(threads), "batches": [], "openvino": False})
        baselines = [r["images_per_second"] for r in found if r["setting"] == "project"]
        reference = float(np.median(baselines)) if baselines else None
        for r in found:
            if reference and "images_per_second" in r:
                r["over_project"] = round(r["images_per_second"] / reference, 3)
        rows += found

    report = {"benchmark": "runtime", "command": command.strip(), "cores": os.cpu_count(),
              "versions": keras_versions(), "date": time.strftime("%Y-%m-%d"),
              "weights": "none (random init; same arithmetic as ImageNet weights)", "rows": rows}  # fmt: skip
    try:
        import openvino

        report["versions"]["openvino"] = openvino.__version__
    except ImportError:
        pass
    table = []
    for r in rows:
        params = ", ".join(f"{key}={value}" for key, value in r.get("params", {}).items()) or r.get("note", "")
        difference = None if "max_abs_diff" not in r else f"{r['max_abs_diff']:.2g} ({r['max_abs_diff_over_max_abs']:.1e})"
        cosine = None if "min_cosine" not in r else f"{r['min_cosine']:.7f}"
        table.append([r["backbone"], r["setting"], params, r.get("images_per_second"), r.get("over_project"),
                      difference, cosine])  # fmt: skip
    write_report(
        arguments.out,
        arguments.name or ("runtime-quick" if arguments.quick else "runtime"),
        report,
        f"Bare network images/s, against the project's setting in the same run (`{report['command']}`, "
        f"{report['cores']} cores, {report['date']})",
        ["backbone", "setting", "params", "images/s", "x project", "max abs diff (of max abs)", "min cosine"],
        table,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
