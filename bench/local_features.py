"""What local features cost and buy, per setting (longest side, keypoints kept): seconds and bytes per
image at build time, whether a rotated, recoloured crop still verifies, and the verification of a
query's top 100 at search time. The defaults of cbir.local_features are chosen from these numbers.

    python bench/local_features.py            # 10 photos of each kind, 6 edited queries, 5 timed queries
    python bench/local_features.py --quick

Photos are synthetic, 1024 x 768 JPEGs: tests/synthetic.py's `make_gallery` (smooth pictures with
few corners: too few keypoints to reach any bound) and `draw_textured_picture` (many small shapes:
the bound is reached, as on real photos). Queries: the middle of a textured photo rotated by 25-60°
and recoloured, verified against every textured photo; "found" counts those whose own photo has
the most inliers and at least MIN_INLIERS, "margin" is the fewest inliers of a found photo over
the most of any wrong one. Verification: the top 100 of one query (its own photo among 99 others,
the textured photos' features repeated), timed after the query is described.
Results go to bench/results/local_features.json and local_features.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bench.common import cpu_model, write_report  # noqa: E402
from cbir.local_features import LocalFeatureSettings, describe_image, describe_picture, write_features  # noqa: E402
from cbir.verification import MIN_INLIERS, SpatialVerification  # noqa: E402
from synthetic import draw_textured_picture, make_gallery  # noqa: E402

SETTINGS = [(512, 250), (512, 500), (640, 500), (640, 1000), (800, 500), (800, 1000), (1024, 1000), (1024, 2000)]
VERIFIED = 100


def edited_query(path: Path, angle: float):
    from PIL import Image, ImageEnhance

    with Image.open(path) as photo:
        photo = photo.convert("RGB")
    width, height = photo.size
    crop = photo.crop((int(0.2 * width), int(0.15 * height), int(0.8 * width), int(0.85 * height)))
    crop = crop.rotate(angle, expand=True, resample=Image.Resampling.BICUBIC, fillcolor=(128, 128, 128))
    return ImageEnhance.Brightness(ImageEnhance.Color(crop).enhance(0.4)).enhance(1.2)


def measure(settings: LocalFeatureSettings, plain: list[Path], textured: list[Path], queries: int, timed: int,
            scratch: Path) -> dict:  # fmt: skip
    row: dict = {"max_side": settings.max_side, "max_keypoints": settings.max_keypoints}
    for kind, paths in (("plain", plain), ("textured", textured)):
        started = time.perf_counter()
        features = [describe_image(path, settings) for path in paths]
        seconds = (time.perf_counter() - started) / len(paths)
        file = scratch / f"{kind}-{settings.max_side}-{settings.max_keypoints}.npz"
        write_features(file, features)
        row[f"{kind}_seconds_per_image"] = round(seconds, 3)
        row[f"{kind}_bytes_per_image"] = round(file.stat().st_size / len(paths))
        row[f"{kind}_keypoints_per_image"] = round(statistics.mean(len(f) for f in features))
        if kind == "textured":
            gallery = features
    found, true_inliers, false_inliers, verify_seconds = 0, [], [], []
    for query, angle in zip(range(queries), np.linspace(25, 60, queries)):
        query_features = describe_picture(edited_query(textured[query], angle), settings)
        verifier = SpatialVerification().for_query(query_features)
        counts = [match.inliers for match in verifier.verify(gallery)]
        others = counts[:query] + counts[query + 1 :]
        found += counts[query] >= MIN_INLIERS and counts[query] > max(others)
        true_inliers.append(counts[query])
        false_inliers.append(max(others))
        if query < timed:
            top = [gallery[query]] + [gallery[(query + 1 + i) % len(gallery)] for i in range(VERIFIED - 1)]
            started = time.perf_counter()
            list(verifier.verify(top))
            verify_seconds.append(time.perf_counter() - started)
    row["found"] = f"{found} / {queries}"
    row["margin"] = f"{min(true_inliers)} vs {max(false_inliers)}"
    row["verify_top_100_seconds"] = round(statistics.median(verify_seconds), 3)
    print(row, flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=10, help="photos of each kind")
    parser.add_argument("--queries", type=int, default=6, help="edited crops verified against the textured photos")
    parser.add_argument("--timed", type=int, default=5, help="queries whose top 100 verification is timed")
    parser.add_argument("--settings", help="comma-separated SIDExKEYPOINTS, e.g. 512x500 (default: the table's)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--name", default="local_features")
    arguments = parser.parse_args(argv)
    settings = SETTINGS
    if arguments.settings:
        settings = [tuple(int(n) for n in item.split("x")) for item in arguments.settings.split(",")]
    if arguments.quick:
        arguments.photos, arguments.queries, arguments.timed, settings = 3, 2, 1, [(320, 100)]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        plain = make_gallery(scratch / "plain", arguments.photos, width=1024, height=768)
        (scratch / "textured").mkdir()
        textured = []
        for seed in range(arguments.photos):
            textured.append(scratch / "textured" / f"photo_{seed:02d}.jpg")
            draw_textured_picture(seed, 1024, 768).save(textured[-1], quality=90)
        for max_side, max_keypoints in settings:
            rows.append(measure(LocalFeatureSettings(max_side, max_keypoints), plain, textured,
                                min(arguments.queries, arguments.photos), arguments.timed, scratch))  # fmt: skip
    report = {"command": "python bench/local_features.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "cores": os.cpu_count(), "load_average": os.getloadavg()[0], "rows": rows}  # fmt: skip
    title = (f"Local features per setting on {report['cores']} cores of {cpu_model()} (load average "
             f"{report['load_average']:.1f} at the end): `{report['command']}`")  # fmt: skip
    columns = ["max side", "max keypoints", "s/image plain", "bytes/image plain", "keypoints plain",
               "s/image textured", "bytes/image textured", "keypoints textured", "found", "margin (inliers)",
               "verify top 100, s"]  # fmt: skip
    table = [[r["max_side"], r["max_keypoints"], r["plain_seconds_per_image"], r["plain_bytes_per_image"],
              r["plain_keypoints_per_image"], r["textured_seconds_per_image"], r["textured_bytes_per_image"],
              r["textured_keypoints_per_image"], r["found"], r["margin"], r["verify_top_100_seconds"]] for r in rows]  # fmt: skip
    write_report(arguments.out, arguments.name, report, title, columns, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
