"""The explanation of a verified match: the query (or its box) and one result side by side, each
inlier pair of spatial verification (cbir.verification) a line between the two keypoints, and the
query's outline carried onto the result by the fitted transform.

Frames: a `Match`'s points are in pixels of each image *as its local features were made from it*
(cbir.local_features: loaded by cbir.images, a JPEG file decoded at a reduced scale when that still
leaves `max_side` pixels, the query cut to its box). `cbir.local_features.picture_as_described` loads a picture in
exactly that frame; a picture of another size (a bundle's thumbnail) is drawn with `frame` giving
the size the points refer to.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cbir.verification import MIN_INLIERS, Match

MAX_HEIGHT = 480  # the two pictures share one height, at most this
MAX_WIDTH = 1400  # ... lowered until both fit side by side in this width
GAP = 12  # pixels between the two pictures
MARK_RADIUS = 4  # an inlier's keypoint: a filled disc of this radius in its line's colour
LINE_WIDTH = 2
OUTLINE_COLOUR = (255, 255, 255)
BACKGROUND = (32, 32, 32)
NO_MATCH_COLOUR = (230, 60, 60)

Size = tuple[int, int]


@dataclass(frozen=True)
class Layout:
    """Where the two pictures sit in the drawing: each scaled by its factor, the result `offset`
    pixels right of the drawing's left edge."""

    query_scale: float
    result_scale: float
    result_offset: int
    size: Size

    def query_point(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points, dtype=np.float64) * self.query_scale

    def result_point(self, points: np.ndarray) -> np.ndarray:
        return np.asarray(points, dtype=np.float64) * self.result_scale + [self.result_offset, 0.0]


def layout(query: Size, result: Size, *, max_height: int = MAX_HEIGHT, max_width: int = MAX_WIDTH) -> Layout:
    """Both pictures at one height (at most `max_height`), lowered until they fit in `max_width`."""
    height = float(max_height)
    # Width at that height: query.w * h / query.h + GAP + result.w * h / result.h.
    per_pixel_height = query[0] / query[1] + result[0] / result[1]
    if per_pixel_height * height + GAP > max_width:
        height = max(1.0, (max_width - GAP) / per_pixel_height)
    query_scale, result_scale = height / query[1], height / result[1]
    query_width = max(1, round(query[0] * query_scale))
    result_width = max(1, round(result[0] * result_scale))
    return Layout(query_scale, result_scale, query_width + GAP, (query_width + GAP + result_width, max(1, round(height))))


def line_colour(index: int) -> tuple[int, int, int]:
    """The colour of the `index`-th inlier pair: hues a golden angle apart, so neighbours differ."""
    hue = (index * 0.6180339887) % 1.0
    return tuple(round(255 * channel) for channel in colorsys.hsv_to_rgb(hue, 0.85, 1.0))


def draw_match(
    query: Image.Image,
    result: Image.Image,
    match: Match,
    *,
    min_inliers: int = MIN_INLIERS,
    query_frame: Size | None = None,
    result_frame: Size | None = None,
    outline: bool = True,
    max_height: int = MAX_HEIGHT,
    max_width: int = MAX_WIDTH,
) -> Image.Image:
    """One RGB picture: `query` left, `result` right, at one height; each inlier pair of `match` a
    line in its own colour with both keypoints marked, and (`outline`) the query's edges mapped by
    the match's transform onto the result. Fewer than `min_inliers` inliers are no match (chance
    agreements, cbir.verification): no lines, "no geometric match" written across the bottom.
    `query_frame`, `result_frame`: the sizes the match's points refer to, when not the pictures'
    own (module docstring)."""
    query_frame = query_frame or query.size
    result_frame = result_frame or result.size
    placed = layout(query.size, result.size, max_height=max_height, max_width=max_width)
    query_width = placed.result_offset - GAP
    canvas = Image.new("RGB", placed.size, BACKGROUND)
    canvas.paste(_scaled(query, (query_width, placed.size[1])), (0, 0))
    result_panel = _scaled(result, (placed.size[0] - placed.result_offset, placed.size[1]))
    # Points in the frames -> points in the pictures as given -> the drawing.
    to_query = np.array([query.width / query_frame[0], query.height / query_frame[1]])
    to_result = np.array([result.width / result_frame[0], result.height / result_frame[1]])
    verified = match.inliers >= min_inliers and len(match.query_points) > 0
    if verified and outline and match.transform is not None:
        corners = _mapped_outline(match.transform, query_frame) * to_result * placed.result_scale
        ImageDraw.Draw(result_panel).line([tuple(p) for p in [*corners, corners[0]]], fill=OUTLINE_COLOUR,
                                          width=LINE_WIDTH)  # fmt: skip
    canvas.paste(result_panel, (placed.result_offset, 0))
    draw = ImageDraw.Draw(canvas)
    if not verified:
        _banner(draw, placed.size, f"no geometric match ({match.inliers} inliers)" if match.inliers else "no geometric match")
        return canvas
    starts = placed.query_point(np.asarray(match.query_points) * to_query)
    ends = placed.result_point(np.asarray(match.result_points) * to_result)
    for index, (start, end) in enumerate(zip(starts, ends)):  # lines first: the marks stay on top
        draw.line([tuple(start), tuple(end)], fill=line_colour(index), width=LINE_WIDTH)
    for index, (start, end) in enumerate(zip(starts, ends)):
        for x, y in (start, end):
            draw.ellipse((x - MARK_RADIUS, y - MARK_RADIUS, x + MARK_RADIUS, y + MARK_RADIUS), fill=line_colour(index))
    return canvas


def _scaled(picture: Image.Image, size: Size) -> Image.Image:
    return picture.convert("RGB").resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def _mapped_outline(transform: np.ndarray, frame: Size) -> np.ndarray:
    """The corners of a `frame`-sized picture sent by a 3 x 3 transform (4 x 2)."""
    width, height = frame
    corners = np.array([[0, 0, 1], [width, 0, 1], [width, height, 1], [0, height, 1]], dtype=np.float64).T
    moved = np.asarray(transform, dtype=np.float64) @ corners
    return (moved[:2] / moved[2]).T


def _banner(draw: ImageDraw.ImageDraw, size: Sequence[int], text: str) -> None:
    font = _font(max(12, size[1] // 16))
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x, y = (size[0] - (right - left)) / 2, size[1] - (bottom - top) - 2 * GAP
    draw.rectangle((x - GAP, y - GAP // 2, x + right - left + GAP, y + bottom - top + GAP // 2), fill=BACKGROUND)
    draw.text((x - left, y), text, fill=NO_MATCH_COLOUR, font=font)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable default
    except TypeError:
        return ImageFont.load_default()
