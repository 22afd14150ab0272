"""What `--runtime` does to retrieval: the synthetic Oxford fixture built and evaluated once per runtime.

    python bench/runtime_map.py                               # the study's six backbones, their own sizes
    python bench/runtime_map.py --backbones xception --input-size 128
    python bench/runtime_map.py --quick                       # xception at 80 px (smoke run)

The fixture is tests/fake_datasets.py's Oxford5k in miniature (11 landmarks x 6 images, 3 queries
each, 10 distractors), in the official archive layout, served from a local HTTP server and prepared
by the project's own download code. For each backbone, each runtime builds its own index of it (the
runtime is part of the recipe: `xception` and `xception-ovf32` are two indexes), and the evaluation
describes the queries with the index's runtime, as a search does. Reported per backbone and runtime,
for the standard protocol, cosine, both query modes: mAP, its change from Keras, the largest change
of one query's AP, and how many queries' rankings differ from Keras' in their top 10. A last row per
backbone is Keras again, with the database described one image at a time instead of in batches of
16 (its own index folder): how far Keras moves from itself, the floor the runtimes are read against.

The ImageNet weights cannot be downloaded here, so the weights are random, with batch-norm statistics
set from synthetic pictures (bench/calibrated.py; `--weights none` keeps the raw init). The mAP itself
means little; the change between runtimes of the same network is what this measures.
openvino-bf16 is measured only where OpenVINO's CPU plugin reports BF16. Results:
bench/results/runtime-map.json, .md.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bench.calibrated import WEIGHTS_SAID, add_weights_argument, calibrated_weights  # noqa: E402
from bench.common import write_report  # noqa: E402

STUDY_SIX = "xception,inception_v3,vgg16,resnet152_v2,inception_resnet_v2,efficientnet_v2_l"
CONTROL = "keras, database 1 image a batch"


def top10_differs(collection, reference: tuple, other: tuple) -> int:
    """Queries (cropped) whose top 10 differ between two (engine, recipe key) pairs."""
    from cbir.distances import Metric

    differing = 0
    for query in collection.queries:
        tops = []
        for engine, recipe in (reference, other):
            descriptor = engine.describe(collection.path_of(query.image), collection=collection.name,
                                         recipe=recipe, box=query.box)  # fmt: skip
            tops.append(engine.index(collection.name, recipe).search(descriptor, Metric.COSINE, 10, exact=True).rows)
        differing += list(tops[0]) != list(tops[1])
    return differing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default=STUDY_SIX)
    parser.add_argument("--input-size", type=int, help="build networks smaller than their own size (smoke runs)")
    parser.add_argument("--quick", action="store_true", help="xception at 80 px on a smaller fixture")
    add_weights_argument(parser)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--name", help="results file stem under --out (default runtime-map, or runtime-map-quick)")
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.backbones, arguments.input_size = "xception", arguments.input_size or 80

    from cbir.backbones import parse_backbones
    from cbir.weights import Weights
    from cbir.trunks import ExtractorCache, keras_versions
    from cbir.build import BuildSettings, build_indexes
    from cbir.recipe import RecipeSettings
    from cbir.datasets import DownloadSettings, prepare_dataset
    from cbir.errors import SettingsError
    from cbir.evaluation import EvaluationSettings, evaluate_collection, results_folder
    from cbir.runtime import Runtime, check_runtime, cpu_capabilities
    from cbir.search import SearchEngine
    from fake_datasets import make_oxford_layout, serve_directory

    command = ("python bench/runtime_map.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    shape = (3, 4, 2, 4) if arguments.quick else (11, 6, 3, 10)  # landmarks, images each, queries each, distractors
    runtimes, refused = [], {}
    for runtime in Runtime:
        try:
            check_runtime(runtime)
            runtimes.append(runtime)
        except SettingsError as error:
            refused[runtime.value] = str(error)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        os.environ["CBIR_OPENVINO_CACHE"] = str(root / "openvino")  # conversions of this run only
        layout = make_oxford_layout(root / "source", *shape)
        with serve_directory(layout["archive_dir"]) as url:
            collection = prepare_dataset("oxford5k", DownloadSettings(data_dir=root / "data", mirror=url, progress=False))
        extractors = ExtractorCache()
        for backbone in parse_backbones(arguments.backbones):
            weights = "none"
            if arguments.weights == "calibrated":
                weights = calibrated_weights(backbone.name, arguments.input_size, root / f"{backbone.name}.weights.h5")
            # (label, runtime, index folder, build batch): each runtime's own index, and Keras again with the
            # database described one image at a time: the noise floor of Keras against itself.
            variants = [(runtime.value, runtime, root / "indexes", None) for runtime in runtimes]
            variants.append((CONTROL, Runtime.KERAS, root / "indexes-batch-1", 1))
            found = {}
            for label, runtime, index_dir, batch in variants:
                recipe = RecipeSettings(weights=Weights.parse(weights), input_size=arguments.input_size, runtime=runtime)
                settings = BuildSettings(index_dir=index_dir, recipe=recipe, progress=False, thumbnails=False,
                                         **({"batch_size": batch} if batch else {}))  # fmt: skip
                started = time.perf_counter()
                build_indexes(collection, [backbone], settings, extractors=extractors)
                print(f"{backbone.name} {label}: built in {time.perf_counter() - started:.0f} s", flush=True)
                key = settings.recipe_for(backbone).key
                engine = SearchEngine(index_dir, extractors=extractors)
                results = evaluate_collection(
                    EvaluationSettings(index_dir=index_dir, collection="oxford5k", recipes=[key], metrics=("cosine",),
                                       progress=False, query_expansion=None),
                    engine=engine,
                )  # fmt: skip
                with open(results_folder(index_dir, "oxford5k") / "per_query.csv", newline="") as handle:
                    ap = {(r["query_mode"], r["query"]): float(r["ap"]) for r in csv.DictReader(handle)
                          if r["recipe"] == key and r["metric"] == "cosine" and not r["reranking"]}  # fmt: skip
                maps = {r.query_mode: r for r in results.rows if r.recipe == key and r.metric == "cosine" and not r.reranking}
                found[label] = (engine, key, ap, maps, settings.batch_size)
            _, _, reference_ap, reference_maps, _ = found[Runtime.KERAS.value]
            for label, (engine, key, ap, maps, database_batch) in found.items():
                for mode in ("full", "cropped"):
                    changes = [abs(value - reference_ap[(m, q)]) for (m, q), value in ap.items() if m == mode]
                    rows.append({"backbone": backbone.name, "runtime": label, "recipe": key, "query_mode": mode,
                                 "database_batch": database_batch,
                                 "input_size": maps[mode].input_size, "n_queries": maps[mode].n_queries,
                                 "map": maps[mode].map, "map_change": maps[mode].map - reference_maps[mode].map,
                                 "max_query_ap_change": max(changes),
                                 "queries_top10_differ": None if label == Runtime.KERAS.value or mode == "full"
                                 else top10_differs(collection, found[Runtime.KERAS.value][:2], (engine, key))})  # fmt: skip
            extractors = ExtractorCache()  # one backbone's networks at a time in memory

    import openvino

    report = {"benchmark": "runtime-map", "command": command, "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
              "versions": {**keras_versions(), "openvino": openvino.__version__},
              "openvino_cpu_capabilities": cpu_capabilities(), "refused": refused,
              "weights": WEIGHTS_SAID[arguments.weights],
              "fixture": dict(zip(("landmarks", "images_per_landmark", "queries_per_landmark", "distractors"), shape)),
              "rows": rows}  # fmt: skip
    table = [[r["backbone"], r["runtime"], r["input_size"], r["query_mode"], r["n_queries"], f"{r['map']:.4f}",
              f"{r['map_change']:+.1e}", f"{r['max_query_ap_change']:.1e}",
              "" if r["queries_top10_differ"] is None else r["queries_top10_differ"]] for r in rows]  # fmt: skip
    refusals = "; ".join(f"{name} refused here: {why}" for name, why in refused.items())
    write_report(
        arguments.out, arguments.name or ("runtime-map-quick" if arguments.quick else "runtime-map"), report,
        f"mAP on the synthetic Oxford fixture per runtime (`{command}`, {report['cores']} cores, {report['date']}; "
        f"weights: {report['weights']}; standard protocol, cosine; {refusals or 'every runtime measured'})",
        ["backbone", "runtime", "px", "queries", "mode", "mAP", "change from keras", "largest change of one AP",
         "queries whose top 10 differ (cropped)"],
        [[row[0], row[1], row[2], row[4], row[3], *row[5:]] for row in table],
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
