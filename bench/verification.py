"""What spatial verification (cbir/verification.py) costs per query at Oxford5k size and at 100k rows,
and where the time goes.

    python bench/verification.py              # 200 pictures described, 5,063 rows, 100,000 rows, 9 queries
    python bench/verification.py --quick      # 12 pictures, 300 rows, 3,000 rows, 3 queries

The collection: synthetic textured 1024 x 768 JPEGs (tests/synthetic.py's `draw_textured_picture`:
enough corners that the keypoint bound is reached, as on real photos), described at the default
settings (cbir.local_features: 512 px, 500 keypoints). Drawing and describing 5,063 pictures would
take about half an hour on a shared machine and verification's cost depends only on the keypoints per row, so
`--pictures` distinct pictures are described and their features repeated, row r holding picture
r mod pictures; this is said in the report.

Oxford5k size: an index folder of 5,063 rows written by cbir.index.write_index (the project's
features writer), loaded by load_index; its features opened as a search opens them
(`LoadedIndex.local_features`: read whole up to cbir.index.IN_MEMORY_BYTES, mapped above), and
also the other way. Per query (an edited crop of one picture: its middle, rotated by 25-60 degrees
and recoloured): the query's own description, then the re-ranker on a top 100 of the query's own
row among 99 random others, timed whole (`SpatialVerification.__call__`) and step by step with the
same functions (reading the 100 rows, unpacking their descriptors to float, the descriptor
products, the mutual ratio matching, RANSAC).

100,000 rows: a features file of that many rows (the same pictures repeated), written member by
member in numpy's zip format (the project's writer holds every row in memory; the file is what it
writes, as read_features checks), opened mapped as the index opens a file of that size. Per query
(fresh random rows): cold, its pages dropped from the page cache first (posix_fadvise DONTNEED)
then opened and verified; warm, the same rows again.
Results go to bench/results/verification.json and verification.md.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bench.common import cpu_model, write_report  # noqa: E402
from bench.local_features import edited_query  # noqa: E402
from cbir import index as index_module  # noqa: E402
from cbir.distances import Metric  # noqa: E402
from cbir.index import Manifest, StoreSpec, load_index, write_index  # noqa: E402
from cbir.local_features import (  # noqa: E402
    DESCRIPTOR_SIZE,
    LOCAL_FEATURES_FILE,
    FeaturesFile,
    ImageFeatures,
    LocalFeatureSettings,
    describe_image,
    describe_picture,
    read_features,
)
from cbir.ranking import Ranking  # noqa: E402
from cbir.recipe import Recipe  # noqa: E402
from cbir.verification import _COLUMNS_PER_PRODUCT, VERIFY_TOP, SpatialVerification, fit_transform, matches_of_similarities  # noqa: E402
from synthetic import draw_textured_picture  # noqa: E402

WIDTH, HEIGHT = 1024, 768
STEPS = ("read rows", "unpack to float", "descriptor products", "matching", "RANSAC")


@dataclass
class Query:
    picture: int
    features: ImageFeatures
    describe_seconds: float


def median_ms(values: list[float]) -> float:
    return round(1000 * statistics.median(values), 1)


def top_rows(rng: np.random.Generator, rows: int, pictures: int, picture: int, depth: int) -> np.ndarray:
    """The query's own row first, then `depth - 1` random rows of other pictures."""
    own = int(rng.integers(0, rows // pictures)) * pictures + picture
    others = rng.choice(rows, size=3 * depth, replace=False)
    others = [int(row) for row in others if row % pictures != picture][: depth - 1]
    return np.array([own, *others], dtype=np.int64)


def steps(verifier: SpatialVerification, features: FeaturesFile, rows: np.ndarray) -> dict[str, float]:
    """The verification of `rows` split into its steps, with the functions the re-ranker calls and
    its batching of the descriptor products (cbir.verification.SpatialVerification.verify)."""
    query = verifier.query_features
    seconds = dict.fromkeys(STEPS, 0.0)
    started = time.perf_counter()
    results = [features.image(int(row)) for row in rows]
    seconds["read rows"] = time.perf_counter() - started
    unit_query = query.unit_descriptors()
    batches, batch = [], []
    for result in results:
        batch.append(result)
        if sum(len(r) for r in batch) >= _COLUMNS_PER_PRODUCT:
            batches.append(batch)
            batch = []
    batches += [batch] if batch else []
    for batch in batches:
        started = time.perf_counter()
        columns = np.concatenate([r.unit_descriptors() for r in batch])
        seconds["unpack to float"] += time.perf_counter() - started
        started = time.perf_counter()
        products = unit_query @ columns.T
        seconds["descriptor products"] += time.perf_counter() - started
        start = 0
        for member in batch:
            similarity = products[:, start : start + len(member)]
            start += len(member)
            started = time.perf_counter()
            query_index, result_index = matches_of_similarities(similarity, verifier.ratio)
            seconds["matching"] += time.perf_counter() - started
            if len(query_index) >= verifier.min_inliers:
                started = time.perf_counter()
                fit_transform(query.positions[query_index], member.positions[result_index], verifier.model)
                seconds["RANSAC"] += time.perf_counter() - started
    return seconds


def describe_collection(folder: Path, pictures: int, settings: LocalFeatureSettings) -> tuple[list[ImageFeatures], float]:
    folder.mkdir()
    described, spent = [], 0.0
    for seed in range(pictures):
        path = folder / f"picture_{seed:04d}.jpg"
        draw_textured_picture(seed, WIDTH, HEIGHT).save(path, quality=90)
        started = time.perf_counter()
        described.append(describe_image(path, settings))
        spent += time.perf_counter() - started
    return described, spent / pictures


def make_queries(folder: Path, count: int, pictures: int, settings: LocalFeatureSettings) -> list[Query]:
    queries = []
    for number, angle in zip(range(count), np.linspace(25, 60, count)):
        picture = (number * 7) % pictures
        edited = edited_query(folder / f"picture_{picture:04d}.jpg", float(angle))
        started = time.perf_counter()
        features = describe_picture(edited, settings)
        queries.append(Query(picture, features, time.perf_counter() - started))
    return queries


def oxford_size(scratch: Path, described: list[ImageFeatures], rows: int, queries: list[Query],
                settings: LocalFeatureSettings) -> tuple[list[dict], dict]:  # fmt: skip
    """The index of `rows` rows: its features read as a search reads them, and the other way."""
    pictures = len(described)
    manifest = Manifest("bench", Recipe.create("xception", weights="none"), [f"{row}.jpg" for row in range(rows)], dim=8,
                        store=StoreSpec("exact"), local_features=settings)  # fmt: skip
    folder = scratch / "oxford"
    started = time.perf_counter()
    write_index(folder, np.random.default_rng(0).normal(size=(rows, 8)).astype(np.float32), manifest,
                local_features=[described[row % pictures] for row in range(rows)])  # fmt: skip
    written = time.perf_counter() - started
    size = (folder / LOCAL_FEATURES_FILE).stat().st_size
    index_reads_whole = size <= index_module.IN_MEMORY_BYTES
    facts = {"rows": rows, "file_bytes": size, "bytes_per_image": round(size / rows), "write_seconds": round(written, 2),
             "keypoints_per_row": round(statistics.mean(len(f) for f in described), 1),
             "index_reads_it": "whole (in memory)" if index_reads_whole else "mapped"}  # fmt: skip
    results = []
    for in_memory in (index_reads_whole, not index_reads_whole):
        loaded = load_index(folder)
        if in_memory == index_reads_whole:
            started = time.perf_counter()
            features = loaded.local_features  # as a search opens them
            opened = time.perf_counter() - started
        else:
            started = time.perf_counter()
            features = read_features(folder / LOCAL_FEATURES_FILE, rows, in_memory=in_memory)
            opened = time.perf_counter() - started
            loaded._local_features = features  # the re-ranker reads these
        rng = np.random.default_rng(rows)
        totals, parts, first = [], {step: [] for step in STEPS}, 0
        for query in queries:
            verifier = SpatialVerification().for_query(query.features)
            chosen = top_rows(rng, rows, pictures, query.picture, VERIFY_TOP)
            ranking = Ranking(chosen, np.zeros(len(chosen), np.float32), True)
            started = time.perf_counter()
            verified = verifier(loaded, np.zeros(8, np.float32), Metric.COSINE, ranking)
            totals.append(time.perf_counter() - started)
            first += int(verified.rows[0] == chosen[0])
            for step, spent in steps(verifier, features, chosen).items():
                parts[step].append(spent)
        results.append({
            "rows": rows,
            "features": ("in memory" if in_memory else "mapped") + (" (as the index reads them)" if in_memory == index_reads_whole else ""),
            "open_ms": round(1000 * opened, 1),
            "verify_top_100_median_ms": median_ms(totals),
            "verify_top_100_max_ms": round(1000 * max(totals), 1),
            "own_picture_first": f"{first} / {len(queries)}",
            **{f"{step}_median_ms": median_ms(parts[step]) for step in STEPS},
        })  # fmt: skip
        print(results[-1], flush=True)
        del features, loaded
        gc.collect()
    return results, facts


def write_repeated(path: Path, described: list[ImageFeatures], rows: int) -> None:
    """A features file of `rows` rows, row r holding described[r mod len(described)], in numpy's
    zip format as np.savez writes it (uncompressed members), written a block at a time."""
    pictures = len(described)
    counts = np.array([len(described[row % pictures]) for row in range(rows)], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    total = int(offsets[-1])

    def cycle(name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        return np.concatenate([np.asarray(getattr(f, name), dtype=dtype).reshape(-1, *shape) for f in described])

    members = {
        "offsets": (offsets, None),
        "positions": (cycle("positions", "<f2", (2,)), (total, 2)),
        "scales": (cycle("scales", "<f2", ()).reshape(-1), (total,)),
        "orientations": (cycle("orientations", "<f2", ()).reshape(-1), (total,)),
        "descriptors": (cycle("descriptors", "|u1", (DESCRIPTOR_SIZE,)), (total, DESCRIPTOR_SIZE)),
        "shrink": (np.array([described[row % pictures].shrink for row in range(rows)], dtype=np.float32), None),
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, (block, shape) in members.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                if shape is None:
                    np.lib.format.write_array(member, block, allow_pickle=False)
                    continue
                header = {"descr": np.lib.format.dtype_to_descr(block.dtype), "fortran_order": False, "shape": shape}
                np.lib.format.write_array_header_1_0(member, header)
                whole, rest = divmod(rows, pictures)
                data = np.ascontiguousarray(block).tobytes()
                for _ in range(whole):
                    member.write(data)
                cut = int(sum(counts[:rest]))
                member.write(np.ascontiguousarray(block[:cut]).tobytes())


def drop_from_page_cache(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(descriptor)


def large(scratch: Path, described: list[ImageFeatures], rows: int, queries: list[Query]) -> tuple[list[dict], dict]:
    path = scratch / f"large-{LOCAL_FEATURES_FILE}"
    started = time.perf_counter()
    write_repeated(path, described, rows)
    written = time.perf_counter() - started
    size = path.stat().st_size
    mapped = size > index_module.IN_MEMORY_BYTES
    facts = {"rows": rows, "file_bytes": size, "bytes_per_image": round(size / rows), "write_seconds": round(written, 1),
             "index_reads_it": "mapped" if mapped else "whole (in memory)"}  # fmt: skip
    print(facts, flush=True)
    rng = np.random.default_rng(rows)
    measured = {key: [] for key in ("cold_open", "cold_read", "cold_total", "warm_open", "warm_read", "warm_total")}
    parts = {step: [] for step in STEPS}
    first = 0
    for query in queries:
        chosen = top_rows(rng, rows, len(described), query.picture, VERIFY_TOP)
        verifier = SpatialVerification().for_query(query.features)
        drop_from_page_cache(path)
        for state in ("cold", "warm"):
            started = time.perf_counter()
            features = read_features(path, rows, in_memory=not mapped)
            opened = time.perf_counter() - started
            started = time.perf_counter()
            results = [features.image(int(row)) for row in chosen]
            read = time.perf_counter() - started
            counts = [match.inliers for match in verifier.verify(results)]
            total = time.perf_counter() - started + opened
            measured[f"{state}_open"].append(opened)
            measured[f"{state}_read"].append(read)
            measured[f"{state}_total"].append(total)
            if state == "warm":
                first += int(np.argmax(counts) == 0)
                for step, spent in steps(verifier, features, chosen).items():
                    parts[step].append(spent)
            del features, results
            gc.collect()
    result = {
        "rows": rows,
        "features": "mapped" if mapped else "in memory",
        **{f"{key}_median_ms": median_ms(values) for key, values in measured.items()},
        "cold_read_max_ms": round(1000 * max(measured["cold_read"]), 1),
        "own_picture_most_inliers": f"{first} / {len(queries)}",
        **{f"{step}_median_ms": median_ms(parts[step]) for step in STEPS},
    }
    print(result, flush=True)
    path.unlink()
    return [result], facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pictures", type=int, default=200, help="distinct pictures described (rows repeat them)")
    parser.add_argument("--rows", type=int, default=5063, help="rows of the index (Oxford5k: 5,063)")
    parser.add_argument("--large-rows", type=int, default=100_000, help="rows of the large features file (0: none)")
    parser.add_argument("--queries", type=int, default=9)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--name", default="verification")
    arguments = parser.parse_args(argv)
    if arguments.quick:
        arguments.pictures, arguments.rows, arguments.large_rows, arguments.queries = 12, 300, 3000, 3
    settings = LocalFeatureSettings()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        described, describe_seconds = describe_collection(scratch / "pictures", arguments.pictures, settings)
        queries = make_queries(scratch / "pictures", arguments.queries, arguments.pictures, settings)
        print(f"{arguments.pictures} pictures described, {describe_seconds:.3f} s each", flush=True)
        rows, oxford_facts = oxford_size(scratch, described, arguments.rows, queries, settings)
        files = [oxford_facts]
        if arguments.large_rows:
            large_rows, large_facts = large(scratch, described, arguments.large_rows, queries)
            rows += large_rows
            files.append(large_facts)
    report = {
        "benchmark": "verification",
        "command": ("python bench/verification.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip(),
        "date": time.strftime("%Y-%m-%d"),
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "load_average_start": round(load_before, 2),
        "load_average_end": round(os.getloadavg()[0], 2),
        "settings": settings.to_json(),
        "pictures": f"{arguments.pictures} distinct synthetic textured {WIDTH} x {HEIGHT} JPEGs, rows repeat them",
        "describe_seconds_per_image": round(describe_seconds, 3),
        "query_describe_median_ms": median_ms([query.describe_seconds for query in queries]),
        "query_keypoints_median": statistics.median(len(query.features) for query in queries),
        "queries": len(queries),
        "top": VERIFY_TOP,
        "files": files,
        "rows": rows,
    }
    title = (f"Spatial verification of a query's top {VERIFY_TOP}, medians of {len(queries)} queries, on "
             f"{report['cores']} cores (load average {report['load_average_start']} at the start, "
             f"{report['load_average_end']} at the end; {report['date']}): `{report['command']}`\n\n"
             f"Rows repeat the local features of {arguments.pictures} distinct synthetic textured {WIDTH} x {HEIGHT} "
             f"pictures (default settings: {settings.max_side} px, {settings.max_keypoints} keypoints), "
             f"{report['describe_seconds_per_image']} s each to describe; the query (an edited crop) is described in "
             f"{report['query_describe_median_ms']} ms (median, {report['query_keypoints_median']} keypoints), not "
             "counted below.\n\nFiles: " + "; ".join(
                 f"{f['rows']:,} rows, {f['file_bytes']:,} bytes ({f['bytes_per_image']:,} per image), the index "
                 f"reads it {f['index_reads_it']}" for f in files))  # fmt: skip
    columns = ["rows", "features", "open ms", "verify top 100 ms", "cold: open + read 100 rows ms",
               "cold: verify top 100 ms", *[f"{step} ms" for step in STEPS], "own picture first"]  # fmt: skip
    table = []
    for row in rows:
        cold = row.get("cold_total_median_ms") is not None
        table.append([
            f"{row['rows']:,}", row["features"],
            row.get("open_ms", row.get("warm_open_median_ms")),
            row.get("verify_top_100_median_ms", row.get("warm_total_median_ms")),
            f"{row['cold_open_median_ms']} + {row['cold_read_median_ms']}" if cold else "",
            row["cold_total_median_ms"] if cold else "",
            *[row[f"{step}_median_ms"] for step in STEPS],
            row.get("own_picture_first", row.get("own_picture_most_inliers")),
        ])  # fmt: skip
    write_report(arguments.out, arguments.name, report, title, columns, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
