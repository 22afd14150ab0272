"""cbir_ui.search_tab: the tab's components refuse what a client sends that Gradio's own checks let
through or crash on (NaN, infinities), in the page's words."""

from __future__ import annotations

import gradio as gr
import pytest

from cbir.search import SearchEngine


def numbers_by_label(tmp_path) -> dict[str, gr.components.Component]:
    from cbir_ui.page import build_ui

    demo = build_ui(SearchEngine(tmp_path / "empty"), tmp_path / "empty")
    return {block.label: block for block in demo.blocks.values() if isinstance(block, (gr.Slider, gr.Number))}


@pytest.mark.parametrize("label", ["Top k", "αQE: top n read", "αQE: α (weight = similarity^α)"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), -5])
def test_a_number_that_is_not_finite_or_out_of_range_is_a_sentence(tmp_path, label, value):
    component = numbers_by_label(tmp_path)[label]
    with pytest.raises(gr.Error) as raised:
        component.preprocess(value)
    assert raised.value.message.startswith(label.split(" (")[0] + " must be")
    assert not raised.value.print_exception  # a visitor's mistake: no traceback in the log


def test_a_number_in_range_passes_as_gradio_gives_it(tmp_path):
    numbers = numbers_by_label(tmp_path)
    assert numbers["Top k"].preprocess(5) == 5
    assert numbers["αQE: top n read"].preprocess(7.0) == 7 and isinstance(numbers["αQE: top n read"].preprocess(7.0), int)
    assert numbers["αQE: α (weight = similarity^α)"].preprocess(None) is None
