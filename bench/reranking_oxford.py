"""What each re-ranking gives and costs on a synthetic Oxford5k: `cbir evaluate --verify --diffusion`.

    python bench/reranking_oxford.py                 # 11 landmarks x 8 views, 3 queries each, 60 distractors
    python bench/reranking_oxford.py --quick         # 3 landmarks x 4 views (smoke run)
    python bench/reranking_oxford.py --weights calibrated

The fixture is an Oxford5k in the official archive layout (flat JPEGs, "oxc1_" query files, good /
ok / junk lists), served from a local HTTP server and prepared by the project's own download code,
like tests/fake_datasets.py's. Its pictures differ from that fixture's on purpose: those are 64 x 48
stripes, too small and too periodic for SIFT, so verification would have nothing to verify. Here each
landmark is one textured scene (tests/synthetic.py) and its images are views of it: a random
homography (rotation up to 25 degrees, scale 0.75-1.1, some perspective) and other light (each colour
channel scaled by 0.6-1.4); the distractors are other scenes. The query box is the middle of the
query image.

The index is built with --local-features and the evaluation asks for every re-ranking
(EvaluationSettings: αQE, diffusion, spatial verification, each with the project's defaults, as the
command line gives them), cosine only (Euclidean ranks unit rows alike). The weights are random
(`--weights none`, the default here): a global ranking that knows nothing but colours and coarse
layout, which the recolouring and the view changes confuse, so the plain mAP is far from 1 and a
re-ranking has room to show what it does. `--weights calibrated` (bench/calibrated.py) is the other
choice. Reported per re-ranking, protocol and query mode: mAP, its change from the plain ranking, and
the milliseconds each adds per query (the query's local description when verified + the re-rankers'
own time in a top-100 search). Results: bench/results/reranking-oxford.json, .md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bench.calibrated import WEIGHTS_SAID, calibrated_weights  # noqa: E402
from bench.common import write_report  # noqa: E402

WIDTH, HEIGHT = 512, 384
BOX_MARGIN = 0.15  # the query box leaves this fraction of each side out


def draw_view(scene_seed: int, view: int):
    """View `view` of scene `scene_seed`: the scene under a random homography and other light (view 0 as drawn)."""
    import cv2
    import numpy as np
    from PIL import Image
    from synthetic import draw_textured_picture

    picture = np.asarray(draw_textured_picture(scene_seed, WIDTH, HEIGHT))
    if view == 0:
        return Image.fromarray(picture)
    rng = np.random.default_rng(10_000 * scene_seed + view)
    centre = (WIDTH / 2, HEIGHT / 2)
    turn = np.vstack([cv2.getRotationMatrix2D(centre, rng.uniform(-25, 25), rng.uniform(0.75, 1.1)), [0, 0, 1]])
    turn[:2, 2] += rng.uniform(-30, 30, size=2)
    turn[2, :2] = rng.uniform(-3e-4, 3e-4, size=2)
    warped = cv2.warpPerspective(picture, turn, (WIDTH, HEIGHT), borderMode=cv2.BORDER_REFLECT)
    light = rng.uniform(0.6, 1.4, size=3)
    return Image.fromarray(np.clip(warped.astype(np.float32) * light, 0, 255).astype(np.uint8))


def make_views_layout(folder: Path, landmarks: int, views: int, queries: int, distractors: int) -> Path:
    """The two official Oxford5k archives in `folder`/archives; ground truth as fake_datasets writes it
    (the first half of a landmark's images good, the rest ok but the last, junk), queries on its first images."""
    from fake_datasets import OXFORD_LANDMARKS, _pack

    images_dir, gt_dir, archive_dir = folder / "images", folder / "gt", folder / "archives"
    for made in (images_dir, gt_dir, archive_dir):
        made.mkdir(parents=True)
    box = f"{BOX_MARGIN * WIDTH:.1f} {BOX_MARGIN * HEIGHT:.1f} {(1 - BOX_MARGIN) * WIDTH:.1f} {(1 - BOX_MARGIN) * HEIGHT:.1f}"
    for landmark_index, landmark in enumerate(OXFORD_LANDMARKS[:landmarks]):
        ids = [f"{landmark}_{number:06d}" for number in range(views)]
        for view, image_id in enumerate(ids):
            draw_view(landmark_index, view).save(images_dir / f"{image_id}.jpg", quality=90)
        half = max(1, views // 2)
        lists = {"good": ids[:half], "ok": ids[half:-1], "junk": ids[-1:]}
        for number in range(1, queries + 1):
            name = f"{landmark}_{number}"
            (gt_dir / f"{name}_query.txt").write_text(f"oxc1_{ids[(number - 1) % views]} {box}\n")
            for kind, members in lists.items():
                (gt_dir / f"{name}_{kind}.txt").write_text("".join(f"{member}\n" for member in members))
    for number in range(distractors):
        draw_view(1000 + number, 0).save(images_dir / f"oxford_{number:06d}.jpg", quality=90)
    _pack(archive_dir / "oxbuild_images-v1.tgz", images_dir, sorted(path.name for path in images_dir.iterdir()))
    _pack(archive_dir / "gt_files_170407.tgz", gt_dir, sorted(path.name for path in gt_dir.iterdir()))
    return archive_dir


def cosine_spread(descriptors) -> dict[str, float]:
    """How alike the rows are: the mean cosine between two different rows, and its 5th and 95th
    percentiles (an untrained network gives rows that all point the same way)."""
    import numpy as np

    unit = np.asarray(descriptors, np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    cosines = (unit @ unit.T)[~np.eye(len(unit), dtype=bool)]
    return {"mean": float(cosines.mean()), "p5": float(np.percentile(cosines, 5)), "p95": float(np.percentile(cosines, 95))}


def short_name(label: str, parts: dict[str, str]) -> str:
    """"spatial verification (top 100, ...) + αQE (n = 50, α = 3)" -> "verification + αQE"."""
    if not label:
        return "plain"
    return " + ".join(next(short for full, short in parts.items() if piece.startswith(full)) for piece in label.split(" + "))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 landmarks x 4 views, 2 queries each, 4 distractors")
    parser.add_argument("--backbone", default="xception")
    parser.add_argument("--input-size", type=int, default=160, help="the network's input size (px)")
    parser.add_argument("--weights", choices=sorted(WEIGHTS_SAID), default="none",
                        help="random init (none), or random with batch-norm statistics set from pictures (calibrated)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--name", help="results file stem under --out (default reranking-oxford, or reranking-oxford-quick)")
    arguments = parser.parse_args(argv)

    from cbir.backbones import get_backbone
    from cbir.build import BuildSettings, build_indexes
    from cbir.datasets import DownloadSettings, prepare_dataset
    from cbir.diffusion import Diffusion
    from cbir.evaluation import EvaluationSettings, evaluate_collection
    from cbir.index import load_index
    from cbir.ranking import AlphaQueryExpansion
    from cbir.recipe import RecipeSettings
    from cbir.search import SearchEngine
    from cbir.trunks import ExtractorCache, keras_versions
    from cbir.verification import SpatialVerification
    from cbir.weights import Weights
    from fake_datasets import serve_directory

    command = ("python bench/reranking_oxford.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    shape = (3, 4, 2, 4) if arguments.quick else (11, 8, 3, 60)  # landmarks, views each, queries each, distractors
    expansion, diffusion, verification = AlphaQueryExpansion(), Diffusion(), SpatialVerification()
    parts = {"αQE": "αQE", "diffusion": "diffusion", "spatial verification": "verification"}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        started = time.perf_counter()
        archives = make_views_layout(root / "source", *shape)
        with serve_directory(archives) as url:
            collection = prepare_dataset("oxford5k", DownloadSettings(data_dir=root / "data", mirror=url, progress=False))
        backbone = get_backbone(arguments.backbone)
        weights = "none"
        if arguments.weights == "calibrated":
            weights = calibrated_weights(backbone.name, arguments.input_size, root / f"{backbone.name}.weights.h5")
        settings = BuildSettings(index_dir=root / "indexes", progress=False, thumbnails=False, local_features=True,
                                 recipe=RecipeSettings(weights=Weights.parse(weights), input_size=arguments.input_size))  # fmt: skip
        extractors = ExtractorCache()
        [built] = build_indexes(collection, [backbone], settings, extractors=extractors)
        print(f"fixture made and built ({built.n_images} images) in {time.perf_counter() - started:.0f} s", flush=True)
        spread = cosine_spread(load_index(built.folder).descriptors)
        started = time.perf_counter()
        results = evaluate_collection(
            EvaluationSettings(index_dir=settings.index_dir, collection="oxford5k", recipes=[built.key],
                               metrics=("cosine",), progress=False, query_expansion=expansion, diffusion=diffusion,
                               verification=verification),
            engine=SearchEngine(settings.index_dir, extractors=extractors),
        )  # fmt: skip
        evaluated_seconds = time.perf_counter() - started
    plain = {(r.protocol, r.query_mode): r for r in results.rows if not r.reranking}
    rows = [
        {"reranking": short_name(r.reranking, parts), "label": r.reranking or "none", "protocol": r.protocol,
         "query_mode": r.query_mode, "n_queries": r.n_queries, "map": r.map, "map_oxford": r.map_oxford,
         "map_change": r.map - plain[(r.protocol, r.query_mode)].map, "mp_at_10": r.mp_at_10,
         "added_ms_per_query": 1000 * r.mean_added_seconds,
         "local_describe_ms_per_query": 1000 * r.mean_local_describe_seconds,
         "query_ms": 1000 * r.mean_query_seconds}
        for r in results.rows
    ]  # fmt: skip
    order = ["plain", "αQE", "verification", "verification + αQE", "diffusion", "αQE + diffusion", "verification + diffusion"]
    rows.sort(key=lambda row: (row["protocol"], row["query_mode"] != "cropped", order.index(row["reranking"])))
    report = {"benchmark": "reranking-oxford", "command": command, "cores": os.cpu_count(),
              "date": time.strftime("%Y-%m-%d"), "versions": keras_versions(),
              "weights": WEIGHTS_SAID[arguments.weights], "recipe": built.key, "input_size": arguments.input_size,
              "fixture": dict(zip(("landmarks", "views_per_landmark", "queries_per_landmark", "distractors"), shape))
              | {"images": built.n_images, "picture": f"{WIDTH} x {HEIGHT}"},
              "rerankings": {"αQE": expansion.label, "diffusion": diffusion.label, "verification": verification.label},
              "evaluation_seconds": evaluated_seconds, "load_average_after": os.getloadavg()[0], "cosine_between_rows": spread, "rows": rows}  # fmt: skip
    write_report(
        arguments.out, arguments.name or ("reranking-oxford-quick" if arguments.quick else "reranking-oxford"), report,
        f"Re-rankings on the synthetic Oxford fixture of views (`{command}`, {report['cores']} cores, {report['date']}; "
        f"{built.key} at {arguments.input_size} px, weights: {report['weights']}; {built.n_images} images, "
        f"{rows[0]['n_queries']} queries; cosine between two rows {spread['mean']:.3f} on average, 5-95 % {spread['p5']:.3f}-{spread['p95']:.3f}; load average {report['load_average_after']:.1f} at the end; cosine; αQE, diffusion and verification with the command line's defaults: "
        f"{expansion.label}, {diffusion.label}, {verification.label}). Added ms: per query, over the plain "
        f"ranking (the query's local description when verified + the re-rankers' own time in a top-100 search)",
        ["re-ranking", "protocol", "queries", "mAP", "change", "mP@10", "added ms / query"],
        [[r["reranking"], r["protocol"], r["query_mode"], f"{r['map']:.3f}", f"{r['map_change']:+.3f}",
          f"{r['mp_at_10']:.3f}", f"{r['added_ms_per_query']:.1f}"] for r in rows],
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
