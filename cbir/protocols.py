"""Evaluation protocols as values: which labels of a query's ground truth count as positives and
which are ignored (removed from the ranking before scoring).

Oxford5k / Paris6k (2007) is one protocol; the revisited datasets' Easy / Medium / Hard (2018) are
three more over the labels easy / hard / junk. A new protocol is one more `Protocol(...)` value;
the evaluation scores every protocol whose labels a collection's ground truth has, with the same
code.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from cbir.datasets.model import Query
from cbir.errors import SettingsError


@dataclass(frozen=True)
class Protocol:
    name: str
    positive: frozenset[str]  # labels whose images are right answers
    ignored: frozenset[str]  # labels whose images count neither for nor against a ranking
    description: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "positive", frozenset(self.positive))
        object.__setattr__(self, "ignored", frozenset(self.ignored))

    @property
    def labels(self) -> frozenset[str]:
        return self.positive | self.ignored

    def positives(self, query: Query) -> frozenset[str]:
        return query.with_labels(*sorted(self.positive))

    def ignored_ids(self, query: Query) -> frozenset[str]:
        return query.with_labels(*sorted(self.ignored))

    def applies_to(self, queries: Iterable[Query]) -> bool:
        """Whether a ground truth speaks this protocol's labels (some query has one of its positives)."""
        return any(set(query.labels) & self.positive for query in queries)


STANDARD = Protocol(
    "standard",
    positive={"good", "ok"},
    ignored={"junk"},
    description="Oxford5k / Paris6k: positives = good + ok; junk removed from the ranking",
)
REVISITED_EASY = Protocol(
    "easy",
    positive={"easy"},
    ignored={"hard", "junk"},
    description="revisited Easy: positives = easy; hard and junk removed from the ranking",
)
REVISITED_MEDIUM = Protocol(
    "medium",
    positive={"easy", "hard"},
    ignored={"junk"},
    description="revisited Medium: positives = easy + hard; junk removed from the ranking",
)
REVISITED_HARD = Protocol(
    "hard",
    positive={"hard"},
    ignored={"easy", "junk"},
    description="revisited Hard: positives = hard; easy and junk removed from the ranking",
)

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (STANDARD, REVISITED_EASY, REVISITED_MEDIUM, REVISITED_HARD)}


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise SettingsError(f"unknown protocol {name!r}; known protocols: {', '.join(PROTOCOLS)}") from None


def protocols_for(queries: Iterable[Query]) -> list[Protocol]:
    """The protocols a collection's ground truth can be scored under, in registry order."""
    queries = list(queries)
    return [protocol for protocol in PROTOCOLS.values() if protocol.applies_to(queries)]


class QueryMode(str, Enum):
    """How a ground-truth query is fed to the network."""

    CROPPED = "cropped"  # the query image cropped to its ground-truth box (the standard protocol)
    FULL = "full"  # the whole query image, as a user uploading a photo would
