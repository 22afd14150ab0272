"""The one place a project error becomes what the page shows: a handler wrapped by `user_errors`
raises the project's own errors, and a visitor sees each CbirError as a sentence (a real bug still
surfaces as one, with its traceback in the log). A visitor's error is one line in the server's log,
never a traceback: it is not a fault of the server."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TypeVar

import gradio as gr

from cbir.errors import CbirError

Handler = TypeVar("Handler", bound=Callable)

logger = logging.getLogger(__name__)


def sentence(text: str) -> str:
    """A library message ("no index at ...") as the page says it ("No index at ..."); a name that
    begins with a Greek letter ("αQE") stays as it is written."""
    return (text[:1].upper() if text[:1].isascii() else text[:1]) + text[1:]


def visitor_error(message: str) -> gr.Error:
    """What Gradio shows for a problem the visitor can fix: the message alone, no traceback on the
    page or in the log (one line there)."""
    logger.info("refused: %s", message)
    return gr.Error(message, print_exception=False)


def shown(error: CbirError) -> gr.Error:
    """A CbirError as the page shows it (see `visitor_error`)."""
    return visitor_error(sentence(str(error)))


def user_errors(handler: Handler) -> Handler:
    """`handler` with each CbirError it raises turned into a gr.Error. The wrapper keeps the
    handler's signature (Gradio reads it for gr.Request, gr.SelectData and gr.Progress, and for the
    API's parameter names)."""

    @functools.wraps(handler)
    def wrapped(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except CbirError as error:
            raise shown(error) from None

    return wrapped  # type: ignore[return-value]
