"""Ground-truth readers, one per format, chosen by a dataset's `ground_truth_format`.

`oxford_txt`: the Oxford5k / Paris6k folders of `<query>_query.txt`, `_good.txt`, `_ok.txt` and
`_junk.txt`. `revisitop_pkl`: revisitop's `gnd_*.pkl` (`cbir.datasets.revisited`), which also fixes
the database. A reader returns a `GroundTruth`: the queries with their labels as the files name
them; which labels count as positive is decided by a protocol (`cbir.protocols`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from cbir.datasets.model import DatasetError, GroundTruth, Query
from cbir.datasets.revisited import read_revisited_ground_truth
from cbir.images import IMAGE_SUFFIXES

OXFORD_LABELS = ("good", "ok", "junk")

def parse_ground_truth(gt_dir: Path, query_prefix: str) -> tuple[Query, ...]:
    """The queries of an Oxford/Paris ground-truth folder, sorted by name.

    Each query `<name>_query.txt` holds one line `<prefix><image id> x0 y0 x1 y1`; beside it
    `<name>_good.txt`, `<name>_ok.txt` and `<name>_junk.txt` list image ids, one a line.
    """
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise DatasetError(f"ground-truth folder {gt_dir} does not exist")
    query_files = sorted(p for p in gt_dir.rglob("*_query.txt") if not p.name.startswith("."))
    if not query_files:
        raise DatasetError(f"no *_query.txt files in {gt_dir}: is this the ground-truth archive's content?")
    queries = [_read_query(path, query_prefix) for path in query_files]
    return tuple(sorted(queries, key=lambda query: query.name))


def _read_query(query_file: Path, query_prefix: str) -> Query:
    name = query_file.name.removesuffix("_query.txt")
    lines = _read_lines(query_file)
    fields = lines[0].split() if len(lines) == 1 else []
    try:
        if len(fields) != 5:
            raise ValueError("expected one line '<image> x0 y0 x1 y1'")
        x0, y0, x1, y1 = (float(value) for value in fields[1:])
        if not all(math.isfinite(value) for value in (x0, y0, x1, y1)):
            raise ValueError("box coordinates must be finite numbers")
    except ValueError as error:
        raise DatasetError(f"malformed query file {query_file}: {error}; found {lines[:3]!r}") from None
    image = _strip_image_suffix(fields[0].removeprefix(query_prefix) if query_prefix else fields[0])
    lists = {
        kind: frozenset(map(_strip_image_suffix, _read_lines(query_file.with_name(f"{name}_{kind}.txt"))))
        for kind in OXFORD_LABELS
    }
    return Query(name=name, image=image, box=(x0, y0, x1, y1), labels=lists)


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"ground-truth file {path} is missing: extract the whole ground-truth archive") from None
    except UnicodeDecodeError as error:
        raise DatasetError(f"ground-truth file {path} is not text ({error})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _strip_image_suffix(image: str) -> str:
    """Ground truth names images without extension; tolerate lists that include it."""
    suffix = PurePosixPath(image).suffix
    return image[: -len(suffix)] if suffix.lower() in IMAGE_SUFFIXES else image


def read_oxford_ground_truth(gt_dir: Path, query_prefix: str) -> GroundTruth:
    """`parse_ground_truth` as a reader: every image found is a database image."""
    return GroundTruth(parse_ground_truth(gt_dir, query_prefix))


GroundTruthReader = Callable[[Path, str], GroundTruth]  # (ground-truth folder or file, query prefix)

READERS: dict[str, GroundTruthReader] = {
    "oxford_txt": read_oxford_ground_truth,
    "revisitop_pkl": read_revisited_ground_truth,
}
