"""The revisited Oxford and Paris ground truth (Radenović et al., "Revisiting Oxford and Paris",
CVPR 2018): revisitop's `gnd_roxford5k.pkl` / `gnd_rparis6k.pkl`, read without letting the pickle
run code.

The file is a dict: `imlist` (database image names, no extension), `qimlist` (query image names)
and `gnd`, one entry per query in `qimlist` order holding `bbx` (x1, y1, x2, y2) and `easy`,
`hard`, `junk` as 0-based indices into `imlist`. Query images are not database images, and the
database is exactly `imlist` (so Paris6k's corrupt images, absent from it, are not rows).

Loading a pickle calls whatever functions it names, so `RestrictedUnpickler` resolves only the few
names such a file needs (builtin containers and numpy's array reconstruction, under numpy 1.x's
`numpy.core` and today's `numpy._core` paths) and refuses every other one before anything runs.
"""

from __future__ import annotations

import importlib
import io
import math
import pickle
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cbir.datasets.model import Box, DatasetError, GroundTruth, Query

REVISITED_LABELS = ("easy", "hard", "junk")  # the labels cbir.protocols' REVISITED_* speak
GROUND_TRUTH_PATTERN = "gnd_*.pkl"  # revisitop's file names: gnd_roxford5k.pkl, gnd_rparis6k.pkl


def _numpy_core(submodule: str, name: str) -> Callable[[], Any]:
    """A lazy lookup of numpy's own function, wherever this numpy keeps it (`_core` since 2.0)."""

    def resolve() -> Any:
        try:
            module = importlib.import_module(f"numpy._core.{submodule}")
        except ImportError:  # numpy < 1.26 has only numpy.core
            module = importlib.import_module(f"numpy.core.{submodule}")
        return getattr(module, name)

    return resolve


# (module, name) a ground-truth pickle may name -> what it resolves to. Everything here only builds
# data: containers, arrays from bytes, dtypes. numpy 1.x wrote "numpy.core.*", numpy 2 "numpy._core.*";
# Python 2-era protocols write "__builtin__" and bytes as _codecs.encode(text, "latin1").
_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: importlib.import_module("_codecs").encode,
    **{
        (f"{core}.{submodule}", name): _numpy_core(submodule, name)
        for core in ("numpy.core", "numpy._core")
        for submodule, name in (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))
    },
    **{
        (module, name): (lambda container=container: container)
        for module in ("builtins", "__builtin__")
        for name, container in (
            ("set", set), ("frozenset", frozenset), ("list", list), ("dict", dict), ("tuple", tuple),
            ("bytes", bytes), ("bytearray", bytearray),  # protocol 2 writes an empty array's data as bytes()
        )
    },
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only `_ALLOWED_GLOBALS`; any other name is refused unresolved."""

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        # latin1: how numpy's own docs say to read arrays pickled by Python 2 (bytes kept as bytes).
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        resolve = _ALLOWED_GLOBALS.get((module, name))
        if resolve is None:
            raise DatasetError(
                f"{self.source} is not a plain ground-truth file: it asks to call {module}.{name}, which a "
                "revisitop ground-truth pickle never needs, and a pickle that names functions can run code. "
                "It was not loaded. Delete it and get gnd_roxford5k.pkl / gnd_rparis6k.pkl again from "
                "http://cmp.felk.cvut.cz/revisitop/ (or a copy you trust)."
            )
        return resolve()


def load_restricted_pickle(path: Path) -> Any:
    """The object in a pickle file, built only from containers and numpy arrays (see module doc)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"ground-truth file {path} is missing") from None
    try:
        return RestrictedUnpickler(io.BytesIO(data), str(path)).load()
    # A damaged or truncated pickle fails in many ways; each means "get it again".
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as error:
        problem = f"{type(error).__name__}: {error}"
        raise DatasetError(f"{path} is not a readable pickle ({problem}); download it again") from None


def read_revisited_ground_truth(path: Path, query_prefix: str = "") -> GroundTruth:
    """The queries and database of a revisitop `gnd_*.pkl` (a file, or a folder holding one).

    Queries are named `q<position>_<image>` (e.g. `q01_all_souls_000013`) so their names are unique
    and sort in `qimlist` order, the column order of revisitop's ranking matrix.
    `query_prefix` is accepted for the reader signature; revisitop names carry no prefix.
    """
    path = _ground_truth_file(Path(path))
    content = load_restricted_pickle(path)
    if not isinstance(content, Mapping) or not {"imlist", "qimlist", "gnd"} <= set(content):
        found = sorted(map(str, content)) if isinstance(content, Mapping) else type(content).__name__
        raise DatasetError(
            f"{path} is not revisitop ground truth: expected a dict with imlist, qimlist and gnd, found {found}"
        )
    database = _names(content["imlist"], "imlist", path)
    query_images = _names(content["qimlist"], "qimlist", path)
    entries = list(content["gnd"]) if isinstance(content["gnd"], Sequence | np.ndarray) else None
    if entries is None or len(entries) != len(query_images):
        raise DatasetError(
            f"{path}: gnd must be a list with one entry per qimlist image ({len(query_images)}), "
            f"found {len(entries) if entries is not None else type(content['gnd']).__name__}"
        )
    duplicated = sorted(name for name, count in Counter(database).items() if count > 1)
    if duplicated:
        raise DatasetError(f"{path}: imlist names these images more than once: {duplicated[:5]}")
    width = len(str(len(query_images)))
    queries = tuple(
        _query(f"q{number:0{width}d}_{image}", image, entry, database, path)
        for number, (image, entry) in enumerate(zip(query_images, entries), start=1)
    )
    return GroundTruth(queries=queries, database=tuple(database))


def _ground_truth_file(path: Path) -> Path:
    if not path.is_dir():
        return path
    candidates = sorted(path.glob(GROUND_TRUTH_PATTERN))
    if len(candidates) != 1:
        raise DatasetError(f"expected one {GROUND_TRUTH_PATTERN} file in {path}, found {[p.name for p in candidates]}")
    return candidates[0]


def _names(value: object, field_name: str, path: Path) -> list[str]:
    names = list(value) if isinstance(value, Sequence | np.ndarray) and not isinstance(value, str | bytes) else None
    if names is None or not all(isinstance(name, str) and name for name in names):
        raise DatasetError(f"{path}: {field_name} must be a list of image names")
    return names


def _query(name: str, image: str, entry: object, database: list[str], path: Path) -> Query:
    where = f"{path}, query {name}"
    if not isinstance(entry, Mapping):
        raise DatasetError(f"{where}: a gnd entry must be a dict, found {type(entry).__name__}")
    missing = [key for key in ("bbx", *REVISITED_LABELS) if key not in entry]
    if missing:
        raise DatasetError(f"{where}: the gnd entry has no {', '.join(missing)}")
    labels = {
        label: frozenset(database[i] for i in _indices(entry[label], len(database), f"{where}, {label}"))
        for label in REVISITED_LABELS
    }
    return Query(name=name, image=image, box=_box(entry["bbx"], where), labels=labels)


def _indices(value: object, n_images: int, where: str) -> list[int]:
    """0-based imlist positions, as a list or an integer numpy array (never floats or booleans)."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):  # ragged nested lists
        raise DatasetError(f"{where}: expected a list of image indices, found {value!r:.80}") from None
    if array.size == 0:
        return []
    if array.ndim != 1 or array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise DatasetError(f"{where}: expected a list of image indices, found {array.dtype} of shape {array.shape}")
    outside = array[(array < 0) | (array >= n_images)]
    if outside.size:
        raise DatasetError(f"{where}: indices {outside[:5].tolist()} are outside imlist (0..{n_images - 1})")
    return array.tolist()


def _box(value: object, where: str) -> Box:
    try:
        coordinates = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        coordinates = np.empty(0)
    if coordinates.shape != (4,) or not all(math.isfinite(c) for c in coordinates):
        raise DatasetError(f"{where}: bbx must be four finite numbers x1 y1 x2 y2, found {value!r}")
    x1, y1, x2, y2 = (float(c) for c in coordinates)
    return (x1, y1, x2, y2)
