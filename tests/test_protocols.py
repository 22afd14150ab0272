"""Tests for cbir.protocols: which labelled images each protocol counts as positives and which it
ignores, looking a protocol up by name, and protocols made by a caller."""

from __future__ import annotations

import pytest

from cbir.datasets import Query
from cbir.errors import SettingsError
from cbir.protocols import (
    PROTOCOLS,
    REVISITED_EASY,
    REVISITED_HARD,
    REVISITED_MEDIUM,
    STANDARD,
    Protocol,
    get_protocol,
)

# One image per label, named after it.
EVERY_LABEL = Query(
    "q", "query", (0, 0, 1, 1), {label: frozenset({label}) for label in ("good", "ok", "junk", "easy", "hard")}
)


@pytest.mark.parametrize(
    ("protocol", "positives", "ignored"),
    [
        (STANDARD, {"good", "ok"}, {"junk"}),
        (REVISITED_EASY, {"easy"}, {"hard", "junk"}),
        (REVISITED_MEDIUM, {"easy", "hard"}, {"junk"}),
        (REVISITED_HARD, {"hard"}, {"easy", "junk"}),
    ],
)
def test_each_protocol_counts_and_ignores_its_own_labels(protocol, positives, ignored):
    assert protocol.positives(EVERY_LABEL) == positives
    assert protocol.ignored_ids(EVERY_LABEL) == ignored


def test_protocols_are_found_by_name_and_an_unknown_name_lists_the_known_ones():
    assert [get_protocol(name) for name in ("standard", "easy", "medium", "hard")] == list(PROTOCOLS.values())
    with pytest.raises(SettingsError) as raised:
        get_protocol("Hard")
    assert str(raised.value) == "unknown protocol 'Hard'; known protocols: standard, easy, medium, hard"


def test_a_protocol_made_from_plain_sets_holds_frozen_sets():
    # A caller's protocol, as the module docstring invites: its label sets cannot change under it,
    # and it can key a dict like the built-in ones.
    protocol = Protocol("mine", positive={"good"}, ignored={"junk"}, description="good only")
    assert type(protocol.positive) is frozenset and protocol.positive == {"good"}
    assert type(protocol.ignored) is frozenset and protocol.ignored == {"junk"}
    assert {protocol: 1}[protocol] == 1
    assert protocol.labels == {"good", "junk"}
