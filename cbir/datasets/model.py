"""What a collection is: a root folder, its images as relative paths, and its ground-truth queries.

An image's *id* is its file name without extension: that is how the Oxford and Paris ground truth
names images. `ids_to_paths` is the one place that maps ids back to paths; an id shared by two
files (possible in a folder of one's own) is ambiguous and is refused rather than guessed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from cbir.errors import CbirError

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


class DatasetError(CbirError):
    """A problem getting or reading a collection; the message says what to do."""


def image_id(relpath: str) -> str:
    """The id the ground truth uses for an image: its file name without extension."""
    return PurePosixPath(relpath).stem


def ids_to_paths(relpaths: Iterable[str]) -> tuple[dict[str, str], frozenset[str]]:
    """(id -> relative path for unambiguous ids, the ids that name several files)."""
    by_id: dict[str, str] = {}
    ambiguous: set[str] = set()
    for relpath in relpaths:
        key = image_id(relpath)
        if key in by_id:
            ambiguous.add(key)
        by_id[key] = relpath
    for key in ambiguous:
        del by_id[key]
    return by_id, frozenset(ambiguous)


@dataclass(frozen=True)
class Query:
    """One ground-truth query: a box on one image, and its labelled images.

    `labels` maps a label of the dataset's ground truth ("good", "ok", "junk" for Oxford/Paris;
    "easy", "hard", "junk" for the revisited versions) to the ids it holds. Which labels count as
    positives and which are ignored is the business of a protocol (`cbir.protocols`), not of the
    data.
    """

    name: str  # e.g. "all_souls_1"
    image: str  # image id without extension or "oxc1_" prefix, e.g. "all_souls_000013"
    box: Box
    labels: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "box", tuple(float(v) for v in self.box))
        object.__setattr__(self, "labels", {k: frozenset(v) for k, v in sorted(self.labels.items())})

    def label(self, name: str) -> frozenset[str]:
        """The ids of one label (empty if this query's ground truth has none of it)."""
        return self.labels.get(name, frozenset())

    def with_labels(self, *names: str) -> frozenset[str]:
        return frozenset().union(*(self.label(name) for name in names))

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "image": self.image,
            "box": list(self.box),
            "labels": {label: sorted(ids) for label, ids in self.labels.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping) -> Query:
        if "labels" in data:
            labels = data["labels"]
        else:  # collection records written before labels were data: good / ok / junk keys
            labels = {label: data[label] for label in ("good", "ok", "junk") if label in data}
        return cls(data["name"], data["image"], tuple(data["box"]), labels)


@dataclass(frozen=True)
class GroundTruth:
    """What a ground-truth reader found: the queries, and the database when the ground truth fixes it.

    `database` is None when every image found under the images folder is a database image (the
    Oxford5k / Paris6k text files); revisitop's `imlist` names the database exactly, in its order.
    """

    queries: tuple[Query, ...]
    database: tuple[str, ...] | None = None  # image ids, in the ground truth's order


@dataclass(frozen=True)
class Collection:
    """A root directory, its images as sorted POSIX paths relative to it, and its queries.

    `images` are the database (one index row each). `query_images` are query images kept out of
    it, as the revisited datasets require; `path_of` finds both.
    """

    name: str
    root: Path
    images: tuple[str, ...]
    queries: tuple[Query, ...] = ()
    query_images: tuple[str, ...] = ()  # relative paths of query images that are not database images
    # The ground truth's own order of the database (revisitop's imlist, image ids): rankings written
    # for revisitop's tools index into it. Empty when the ground truth does not fix one.
    database_order: tuple[str, ...] = ()
    # Distractor images (R1M or any folder) appended to the database: relative paths (they may lead
    # out of `root`), also listed in `images`. Ground truth never names them.
    distractors: tuple[str, ...] = ()
    _relpath_by_id: dict[str, str] = field(init=False, repr=False, compare=False)
    _ambiguous_ids: frozenset[str] = field(init=False, repr=False, compare=False)
    _relpaths: frozenset[str] = field(init=False, repr=False, compare=False)
    _query_relpath_by_id: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).absolute())
        object.__setattr__(self, "images", tuple(sorted(self.images)))
        object.__setattr__(self, "queries", tuple(self.queries))
        object.__setattr__(self, "query_images", tuple(sorted(self.query_images)))
        object.__setattr__(self, "_query_relpath_by_id", ids_to_paths(self.query_images)[0])
        by_id, ambiguous = ids_to_paths(self.images)
        object.__setattr__(self, "_relpath_by_id", by_id)
        object.__setattr__(self, "_ambiguous_ids", ambiguous)
        object.__setattr__(self, "_relpaths", frozenset(self.images))

    def __len__(self) -> int:
        return len(self.images)

    @staticmethod
    def image_id(relpath: str) -> str:
        return image_id(relpath)

    def has_id(self, image_id_: str) -> bool:
        return image_id_ in self._relpath_by_id

    def path_of(self, image_id_or_relpath: str) -> Path:
        """Absolute path of an image given by relative path or id; KeyError if it is not in here."""
        if image_id_or_relpath in self._relpaths:
            return self.root / image_id_or_relpath
        if image_id_or_relpath in self._relpath_by_id:
            return self.root / self._relpath_by_id[image_id_or_relpath]
        if image_id_or_relpath in self.query_images:  # a query image outside the database
            return self.root / image_id_or_relpath
        if image_id_or_relpath in self._query_relpath_by_id:
            return self.root / self._query_relpath_by_id[image_id_or_relpath]
        if image_id_or_relpath in self._ambiguous_ids:
            matches = [p for p in self.images if image_id(p) == image_id_or_relpath]
            raise KeyError(
                f"{image_id_or_relpath!r} names several images of {self.name}: {', '.join(matches)}; "
                "use the relative path"
            )
        raise KeyError(f"{image_id_or_relpath!r} is not an image of the collection {self.name!r}")
