"""Synthetic photo collections the tests draw themselves: distinct colours, shapes and textures,
so that a crop or rescale of one picture has a right answer to find."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def draw_picture(seed: int, width: int = 160, height: int = 120) -> Image.Image:
    """A picture unlike the ones drawn from other seeds: background gradient, stripes, shapes."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=3)
    other = rng.integers(0, 256, size=3)
    ramp = np.linspace(0.0, 1.0, width)[None, :, None]
    pixels = (base * (1 - ramp) + other * ramp) * np.ones((height, 1, 1))
    period = int(rng.integers(6, 24))
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:height, 0:width]
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    pixels += 60 * stripes[..., None] * rng.uniform(-1, 1, size=3)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
        x1, y1 = x0 + int(rng.integers(15, width // 2)), y0 + int(rng.integers(15, height // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
    return image


def draw_textured_picture(seed: int, width: int = 640, height: int = 480, shapes: int = 120) -> Image.Image:
    """`draw_picture` with many small shapes on top: corners and blobs enough for local features
    (the plain pictures are mostly smooth gradients and periodic stripes, which SIFT cannot tell apart)."""
    image = draw_picture(seed, width, height)
    draw = ImageDraw.Draw(image)
    rng = np.random.default_rng(seed + 1_000_000)
    for _ in range(shapes):
        x, y = int(rng.integers(0, width - 10)), int(rng.integers(0, height - 10))
        size = int(rng.integers(8, max(9, min(width, height) // 10)))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse((x, y, x + size, y + int(size * rng.uniform(0.4, 1))), fill=colour)
        elif kind == 1:
            draw.rectangle((x, y, x + size, y + int(size * rng.uniform(0.4, 1))), fill=colour)
        else:
            draw.polygon([(x, y), (x + size, y + int(rng.integers(0, size))), (x + int(rng.integers(0, size)), y + size)],
                         fill=colour)  # fmt: skip
    return image


def make_gallery(folder: Path, count: int, *, width: int = 160, height: int = 120, start_seed: int = 0) -> list[Path]:
    """`count` JPEGs named picture_000.jpg ... in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"picture_{index:03d}.jpg"
        draw_picture(start_seed + index, width, height).save(path, quality=92)
        paths.append(path)
    return paths


def crop_of(path: Path, fraction: float = 0.7, scale: float = 1.3) -> Image.Image:
    """A centred crop of a gallery picture, rescaled: a query whose right answer is `path`."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        width, height = image.size
        w, h = int(width * fraction), int(height * fraction)
        x0, y0 = (width - w) // 2, (height - h) // 2
        crop = image.crop((x0, y0, x0 + w, y0 + h))
        return crop.resize((int(w * scale), int(h * scale)), Image.Resampling.BICUBIC)


def phone_photo(
    path: Path, inside: Path, around: Path, *, size: tuple[int, int] = (4032, 3024)
) -> tuple[int, int, int, int]:
    """Write a phone-sized JPEG of `around` (scaled up to fill it) with `inside` in one part of it,
    and return that part's box in the photo's pixels: searched whole, the photo looks like `around`;
    searched by the box, like `inside`."""
    width, height = size
    with Image.open(around) as background, Image.open(inside) as part:
        photo = background.convert("RGB").resize(size, Image.Resampling.BICUBIC)
        box = (width // 2, height // 3, width // 2 + width * 2 // 5, height // 3 + height * 2 // 5)
        photo.paste(part.convert("RGB").resize((box[2] - box[0], box[3] - box[1]), Image.Resampling.BICUBIC), box[:2])
    photo.save(path, "JPEG", quality=90)
    return box
