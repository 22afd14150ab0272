"""cbir_ui.errors: the one place a CbirError becomes what the page shows, and the handlers wrapped
with it, which keep the names the API publishes."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pytest

from cbir.errors import CbirError
from cbir.search import SearchEngine
from cbir_ui.errors import user_errors


def test_a_cbir_error_becomes_the_sentence_the_page_shows():
    @user_errors
    def handler(collection: str) -> str:
        raise CbirError(f"no index at {collection}: build it with python build_index.py")

    with pytest.raises(gr.Error) as raised:
        handler("demo")
    assert raised.value.message == "No index at demo: build it with python build_index.py"
    assert raised.value.__suppress_context__  # the message alone, no chained traceback


def test_a_real_bug_surfaces_as_itself_and_answers_pass_through():
    @user_errors
    def handler(key: str) -> str:
        return {"known": "answer"}[key]

    assert handler("known") == "answer"
    with pytest.raises(KeyError):
        handler("unknown")


def test_the_wrapped_handlers_keep_the_apis_names_and_the_session_of_the_request(tmp_path):
    from cbir_ui.behaviour import SearchPage
    from cbir_ui.page import build_ui
    from cbir_ui.search_tab import SearchHandlers

    api = build_ui(SearchEngine(tmp_path / "empty"), tmp_path / "empty").get_api_info()["named_endpoints"]
    names = lambda endpoint: [p["parameter_name"] for p in api[endpoint]["parameters"]]  # noqa: E731
    options = ["collection", "recipe", "metric", "k", "expand", "expand_n", "expand_alpha"]
    # Issue 29: verify and diffusion come after the parameters older clients send, which keep their places.
    assert names("/search_photo") == ["photo", "box", *options, "verify", "diffusion"]
    assert names("/search") == ["editor", *options]
    assert api["/search_photo"]["description"].startswith("The page's search (API `/search_photo`)")
    handlers = SearchHandlers(SearchPage(SearchEngine(tmp_path / "empty"), tmp_path / "empty"))
    with pytest.raises(gr.Error, match="There is no previous query"):
        handlers.previous_query(SimpleNamespace(session_hash="someone"))


def test_a_visitors_error_is_one_line_in_the_log_and_a_bug_keeps_its_traceback(caplog):
    import logging

    @user_errors
    def refusing() -> None:
        raise CbirError("the uploaded image: file is empty")

    @user_errors
    def buggy() -> None:
        raise KeyError("a real bug")

    with caplog.at_level(logging.INFO, logger="cbir_ui.errors"), pytest.raises(gr.Error) as raised:
        refusing()
    assert not raised.value.print_exception  # Gradio prints no traceback for it
    assert [(r.getMessage(), r.exc_info) for r in caplog.records] == [("refused: The uploaded image: file is empty", None)]
    with pytest.raises(KeyError):  # not turned into a gr.Error: Gradio prints its traceback
        buggy()
