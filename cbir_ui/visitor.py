"""Who is asking: the browser session behind a Gradio request, as the plain id the behaviour takes."""

from __future__ import annotations

import gradio as gr


def session_of(request: gr.Request | None) -> str | None:
    """The request's browser session id; None outside a browser session (a direct call)."""
    return request.session_hash if request is not None else None
