"""Why a result matches, for the page: the session's last query kept for it, the search's spatial
verification handing that query's keypoints over, and the explanation of one clicked result (the
drawing is cbir.match_drawing's). No Gradio here, as in cbir_ui.behaviour."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from cbir.errors import CbirError
from cbir.images import ImageError, load_image
from cbir.local_features import ImageFeatures, LocalFeatureSettings, picture_as_described
from cbir.match_drawing import draw_match
from cbir.verification import Match, SpatialVerification, verify_pair


class PageError(CbirError):
    """A request the page cannot answer as asked; the message says what to do."""


QUERY_NAME = "the uploaded image"


@dataclass
class SearchedQuery:
    """A session's last query, for drawing why a result matches: the photo file searched and its
    box (kept as the reference the page sent, not as pixels), where, and the query's local features
    once made (a few tens of KB; one query per session)."""

    photo: str | None  # None: a picture sent whole (the `/search` API), not kept
    box: tuple[float, float, float, float] | None
    collection: str
    recipe: str
    features: ImageFeatures | None = field(default=None, repr=False)

    def remember(self, features: ImageFeatures) -> None:
        self.features = features


@dataclass(frozen=True)
class RememberingVerification(SpatialVerification):
    """The search's spatial verification, handing the query's local features to `remember` when the
    search has made them (so drawing a match does not describe the query again)."""

    remember: Callable[[ImageFeatures], None] | None = field(default=None, repr=False, compare=False)

    def for_query(self, features: ImageFeatures) -> SpatialVerification:
        if self.remember is not None:
            self.remember(features)
        return super().for_query(features)


@dataclass(frozen=True)
class MatchExplanation:
    """Why a result matches: the drawing (None when there is nothing to draw), its caption, and the
    verification's finding (None when none was made)."""

    picture: Image.Image | None
    caption: str
    match: Match | None = None


def explain(page, searched: SearchedQuery, image: str, session: str | None, *, visitors: bool) -> MatchExplanation:
    """Why `image` (an indexed image the session was shown) matches the session's last query: the
    inlier pairs of spatial verification between the query (cut to its box) and that image, drawn
    side by side (cbir.match_drawing), and a one-line caption. `page`: the SearchPage (its
    collections, thumbnails); `visitors`: the collection is a visitor's own ("Your photos")."""
    name = Path(image).name
    source = page.source(searched.collection, session)
    loaded = source.engine.index(source.name, searched.recipe)
    if not loaded.has_local_features and visitors:
        return MatchExplanation(None, "photos added on the page have no local features: no matches to draw")
    if not loaded.has_local_features:
        return MatchExplanation(None, "this index has no local features: build them with "
                                      f"{loaded.manifest.rebuild_command(loaded.folder)} --local-features")  # fmt: skip
    if not Path(searched.photo).is_file():
        raise PageError("The photo searched is no longer on the server: upload it again and search.")
    settings, limits = loaded.manifest.local_features, source.engine.limits
    if searched.features is None:  # made once per search (kept when the search verified)
        searched.features = source.engine.describe_locally(searched.photo, collection=source.name, recipe=searched.recipe,
                                                           box=searched.box, name=QUERY_NAME)  # fmt: skip
    result_features = loaded.local_features.image(loaded.manifest.images.index(image))
    verification = SpatialVerification()
    match = verify_pair(searched.features, result_features, model=verification.model, ratio=verification.ratio,
                        min_matches=verification.min_inliers)  # fmt: skip
    query_picture = picture_as_described(searched.photo, settings, searched.box, name=QUERY_NAME, limits=limits)
    try:
        result_picture, frame = _result_as_described(page, searched.collection, image, settings,
                                                     result_features.shrink, session)  # fmt: skip
    except ImageError as error:
        return MatchExplanation(None, f"{name} cannot be read ({str(error).removeprefix(f'{image}: ')})", match)
    drawing = draw_match(query_picture, result_picture, match, min_inliers=verification.min_inliers, result_frame=frame)
    query = "your photo's box" if searched.box else "your photo"
    if match.inliers >= verification.min_inliers:
        return MatchExplanation(drawing, f"{match.inliers} inliers ({verification.model.value}) between {query} and {name}",
                                match)  # fmt: skip
    fewer = f" ({match.inliers} inliers, fewer than the {verification.min_inliers} a match needs)" if match.inliers else ""
    return MatchExplanation(drawing, f"no geometric match with {name}{fewer}", match)


def _result_as_described(
    page, collection: str, image: str, settings: LocalFeatureSettings, shrink: float, session: str | None
) -> tuple[Image.Image, tuple[int, int] | None]:
    """An indexed image as its local features were made from it, and the size their points refer
    to when that is not the picture's (a bundle has thumbnails only: the features were made from
    the original, whose longer side was `shrink` x max_side, or the thumbnail's own if not
    shrunk). Raises ImageError."""
    source = page.source(collection, session)
    record = source.engine.record(source.name)
    if not record.thumbnails_only:
        return picture_as_described(record.root / image, settings, name=image, limits=source.engine.limits), None
    picture = load_image(page.thumbnail(collection, image, session))
    longer = shrink * settings.max_side if shrink > 1 else max(picture.size)
    scale = longer / max(picture.size)
    return picture, (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
