"""The Search tab: the query photo and its box, the collection, backbone, distance and k, the
results, and browsing by result. Its handlers are thin: the session id from the request, the
behaviour's call, its errors shown by cbir_ui.errors. Also the API: `/search_photo` and `/search`."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
from PIL import Image

from cbir.errors import CbirError
from cbir.ranking import QUERY_EXPANSION_ALPHA, QUERY_EXPANSION_NEIGHBOURS
from cbir_ui.behaviour import (
    DEFAULT_K,
    EXAMPLES_SHOWN,
    EXPANSION_ALPHA,
    EXPANSION_READ,
    METRICS,
    TOP_K,
    NumberField,
    SearchPage,
)
from cbir_ui.errors import shown, user_errors
from cbir_ui.formatting import broken_notice
from cbir_ui.upload_guard import guarded_upload
from cbir_ui.visitor import session_of

# The search event's `js` hook: the box drawn on the photo is read from the page when Search is pressed.
BOX_FROM_PAGE = "(image, box, ...rest) => [image, window.cbirQueryBox ? window.cbirQueryBox() : box, ...rest]"


@dataclass(frozen=True)
class SearchTab:
    """What other tabs reach of this one: the collection menu ('Your photos' sets it)."""

    collection: gr.Dropdown


class SearchHandlers:
    """The tab's events: each takes what Gradio sends (and its request), calls the behaviour with the
    session's id, and returns what the components show. Parameter names and docstrings of
    `search_photo` and `search` are the API's."""

    def __init__(self, page: SearchPage) -> None:
        self.page = page

    @user_errors
    def search_photo(
        self,
        photo: str | None,
        box: str | None,
        collection: str | None,
        recipe: str | None,
        metric: str,
        k: float,
        expand: bool = False,
        expand_n: float = QUERY_EXPANSION_NEIGHBOURS,
        expand_alpha: float = QUERY_EXPANSION_ALPHA,
        verify: bool = False,
        diffusion: bool = False,
        request: gr.Request | None = None,
    ):
        """The page's search (API `/search_photo`): a photo file, the box drawn on it in the photo's
        pixels ("left,top,right,bottom"; empty: the whole photo), then as `search`. `verify`: re-rank
        the top 100 by spatial verification with local features (indexes built with them);
        `diffusion`: re-rank by diffusion over the collection's k-NN graph."""
        answer = self.page.search_photo(photo, box, collection, recipe, metric, k, expand, expand_n, expand_alpha,
                                        verify, diffusion, session=session_of(request))  # fmt: skip
        return answer.items, answer.status

    @user_errors
    def search(
        self,
        editor: dict | None,
        collection: str | None,
        recipe: str | None,
        metric: str,
        k: float,
        expand: bool = False,
        expand_n: float = QUERY_EXPANSION_NEIGHBOURS,
        expand_alpha: float = QUERY_EXPANSION_ALPHA,
        request: gr.Request | None = None,
    ):
        """API `/search`, kept for clients written before `/search_photo`: the query as an image
        editor's value (its composite, else its background). Returns as `search_photo`."""
        answer = self.page.search(editor, collection, recipe, metric, k, expand, expand_n, expand_alpha,
                                  session=session_of(request))  # fmt: skip
        return answer.items, answer.status

    @user_errors
    def on_recipe(self, collection: str | None, recipe: str | None, request: gr.Request):
        """Verification is offered only for an index built with local features."""
        offered = self.page.can_verify(collection, recipe, session_of(request))
        return gr.update(visible=offered, value=False) if not offered else gr.update(visible=True)

    def on_collection(self, collection: str | None, request: gr.Request):
        session = session_of(request)
        return (
            gr.update(choices=self.page.recipe_choices(collection, session),
                      value=self.page.default_recipe(collection, session)),  # fmt: skip
            gr.update(value=self.page.example_gallery(collection, session)),
        )

    @user_errors
    def on_example(self, collection: str | None, event: gr.SelectData, request: gr.Request):
        picture = self.page.example_chosen(collection, event.index, session_of(request))
        return gr.update() if picture is None else picture

    @user_errors
    def select_result(self, event: gr.SelectData, request: gr.Request | None = None) -> None:
        """A click on a result: remembered for 'search with the selected result'."""
        self.page.select_result(event.index, session_of(request))

    @user_errors
    def explain_result(self, event: gr.SelectData, request: gr.Request | None = None):
        """The clicked result's match with the query drawn, and its caption; both hidden when there
        is nothing to draw."""
        explanation = self.page.explain_result(event.index, session_of(request))
        if explanation is None:
            return gr.update(value=None, visible=False), gr.update(value="", visible=False)
        picture = explanation.picture
        return (gr.update(value=picture, visible=picture is not None),
                gr.update(value=explanation.caption, visible=True))  # fmt: skip

    @user_errors
    def result_as_query(self, photo: str | None, box: str | None, request: gr.Request | None = None) -> Image.Image:
        """'Search with the selected result': the clicked result becomes the query."""
        return self.page.result_as_query(photo, box, session_of(request))

    @user_errors
    def previous_query(self, request: gr.Request | None = None) -> Image.Image:
        """'Previous query': the query before the last 'search with the selected result'."""
        return self.page.previous_query(session_of(request))


def checked_number(component: gr.Slider | gr.Number, field: NumberField) -> gr.Slider | gr.Number:
    """`component` with `field`'s check in front of Gradio's own preprocess, which lets NaN through
    (a Slider) or fails on it with a bare ValueError (a whole Number rounds it): the page's
    sentence instead, for what the API sends as for what the page does."""
    preprocess = component.preprocess

    def checked(payload):
        try:
            field.check(payload)
        except CbirError as error:
            raise shown(error) from None
        return preprocess(payload)

    component.preprocess = checked
    return component


def render(page: SearchPage, *, explained: bool = False) -> SearchTab:
    """The Search tab, inside the current Blocks, with its events and the search API. `explained`:
    the page's notice already says why nothing is served (a Space waiting for its bundle)."""
    handlers = SearchHandlers(page)
    collections = page.collection_choices()
    first = collections[0] if collections else None
    with gr.Tab("Search"):
        with gr.Row():
            with gr.Column(scale=2):
                photo = guarded_upload(gr.Image(
                    label="Query: drag a box on the photo to search that part (a click clears it)",
                    # A path: the photo is uploaded once, when chosen, and searches send only its
                    # reference and the box (cbir_ui/query.js), never the pixels again.
                    type="filepath",
                    # No conversion by the component: cbir.images reads 16-bit, palette, CMYK and
                    # transparent photos as the collection's were read (Gradio's default RGB clips
                    # 16-bit grey to white and drops transparency onto black).
                    image_mode=None,
                    sources=["upload", "clipboard", "webcam"],
                    height=420,
                    elem_id="query-image",
                ))  # fmt: skip
                box = gr.Textbox(value="", visible=False)
                examples = gr.Gallery(
                    value=page.example_gallery(first),
                    label="Example queries from the collection (click one)",
                    columns=EXAMPLES_SHOWN // 2,
                    height="auto",  # a fixed height cut the captions off
                    allow_preview=False,
                )
            with gr.Column(scale=1):
                collection = gr.Dropdown(
                    choices=collections, value=first, label="Collection", visible=len(collections) != 1
                )
                backbone = gr.Dropdown(
                    choices=page.recipe_choices(first), value=page.default_recipe(first),
                    label="Backbone (the study's six, then newer)",
                )
                metric = gr.Dropdown(choices=METRICS, value="cosine", label="Distance")
                k = checked_number(gr.Slider(TOP_K.minimum, TOP_K.maximum, value=DEFAULT_K, step=1, label=TOP_K.label), TOP_K)
                expand = gr.Checkbox(
                    value=False,
                    label="Query expansion (αQE)",
                    info="search again with the query averaged with its best matches: finds more views of "
                    "the same building, costs a second search",
                )
                with gr.Row():
                    expand_n = checked_number(gr.Number(
                        value=QUERY_EXPANSION_NEIGHBOURS, minimum=EXPANSION_READ.minimum, maximum=EXPANSION_READ.maximum,
                        precision=0, label=EXPANSION_READ.label, min_width=80), EXPANSION_READ)  # fmt: skip
                    expand_alpha = checked_number(gr.Number(
                        value=QUERY_EXPANSION_ALPHA, minimum=EXPANSION_ALPHA.minimum, maximum=EXPANSION_ALPHA.maximum,
                        label=f"{EXPANSION_ALPHA.label} (weight = similarity^α)", min_width=80), EXPANSION_ALPHA)  # fmt: skip
                verify = gr.Checkbox(
                    value=False, label="Verify with local features", elem_id="verify",
                    info="re-rank the top 100 by keypoints that agree on one geometry: the same façade, not "
                    "only a similar texture (indexes built with --local-features)",
                    visible=page.can_verify(first, page.default_recipe(first)),
                )  # fmt: skip
                diffusion = gr.Checkbox(
                    value=False, label="Diffusion", elem_id="diffusion",
                    info="re-rank through the collection's graph of similar photos: reaches views of a building "
                    "that are only similar through other views (the graph is built at the first use)",
                )  # fmt: skip
                button = gr.Button("Search", variant="primary", elem_id="search-button")
                if not collections and not explained:
                    gr.Markdown(
                        "**No index is built yet.** Build one with `python build_index.py --dataset oxford5k` "
                        "or `python build_index.py --images <folder>`, then restart the app."
                    )
        if page.broken:
            gr.Markdown(broken_notice(page.broken), elem_id="broken-indexes")
        status = gr.Markdown(elem_id="search-status")
        gallery = gr.Gallery(label="Most similar", columns=6, height="auto", elem_id="results")
        match_caption = gr.Markdown(visible=False, elem_id="matches-caption")
        matches = gr.Image(label="Why this matches: the keypoints that agree on one geometry", type="pil",
                           visible=False, interactive=False, format="jpeg", elem_id="matches")  # fmt: skip
        with gr.Row():
            use_result = gr.Button("Search with the selected result", elem_id="use-result", size="sm")
            previous = gr.Button("← Previous query", elem_id="previous-query", size="sm")
        # `/search` as it was before `/search_photo`: the query as an image editor's value. Kept for API
        # clients; not on the page (an editor re-uploads its canvas on every search).
        editor = guarded_upload(gr.ImageEditor(type="pil", image_mode="RGBA", visible=False))
        legacy = gr.Button(visible=False)

    search_inputs = [photo, box, collection, backbone, metric, k, expand, expand_n, expand_alpha, verify, diffusion]
    button.click(
        handlers.search_photo,
        inputs=search_inputs,
        outputs=[gallery, status],
        js=BOX_FROM_PAGE,
        api_name="search_photo",
        concurrency_limit=1,
        concurrency_id="search",  # one forward pass at a time, whichever way it comes
    )
    # A new photo (uploaded, an example, a result searched with) starts without a box.
    photo.change(None, js="() => { if (window.cbirClearQueryBox) window.cbirClearQueryBox(); }")
    gallery.select(handlers.select_result, None, None, api_visibility="private")
    # Drawing the match is an event of its own: 'search with the selected result' need not wait for it.
    gallery.select(handlers.explain_result, None, [matches, match_caption], api_visibility="private")
    # New results: the drawing of an old one goes.
    gallery.change(lambda: (gr.update(value=None, visible=False), gr.update(value="", visible=False)), None,
                   [matches, match_caption], api_visibility="private")  # fmt: skip
    use_result.click(
        handlers.result_as_query, inputs=[photo, box], outputs=[photo], js=BOX_FROM_PAGE, api_visibility="private"
    ).success(handlers.search_photo, inputs=search_inputs, outputs=[gallery, status], api_visibility="private",
              concurrency_id="search")  # fmt: skip
    previous.click(handlers.previous_query, inputs=None, outputs=[photo], api_visibility="private").success(
        handlers.search_photo, inputs=search_inputs, outputs=[gallery, status], api_visibility="private",
        concurrency_id="search",
    )
    legacy.click(
        handlers.search,
        inputs=[editor, collection, backbone, metric, k, expand, expand_n, expand_alpha],
        outputs=[gallery, status],
        api_name="search",
        concurrency_limit=1,
        concurrency_id="search",  # one forward pass at a time, whichever way it comes
    )
    collection.change(handlers.on_collection, inputs=[collection], outputs=[backbone, examples],
                      api_visibility="private")  # fmt: skip
    backbone.change(handlers.on_recipe, inputs=[collection, backbone], outputs=[verify], api_visibility="private")
    examples.select(handlers.on_example, inputs=[collection], outputs=[photo], api_visibility="private")
    return SearchTab(collection)
