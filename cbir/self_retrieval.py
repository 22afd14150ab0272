"""An evaluation for any collection, ground truth or not: does an edited photo find its source?

Which backbone suits *my* photos is a question a folder of holiday pictures cannot answer by mAP
(it has no ground truth). It can answer this one: take some of the collection's own images, edit
each the way people edit the photos they search with, and see at which rank the original comes
back. The edits, each seeded per image so a run can be repeated exactly:

    crop      a random window of 30-70 % of the area (aspect kept within 3:4 .. 4:3 of the image's)
    rescale   the whole image at half its size
    rotate    by 4-8 degrees either way, cut to the largest upright window without black corners
    jpeg      re-compressed at quality 25
    colour    brightness x 0.75-1.25, and each channel scaled by 0.85-1.15 (a white-balance shift)

Scores per recipe x metric x edit (and over all edits): recall@1, @5, @10 (the share of queries
whose source is within that rank) and MRR (mean of 1 / rank). It is a *near-duplicate* measure,
not a landmark-retrieval mAP: a backbone that finds the same photo is not necessarily the one that
finds other photos of the same building. The results files say so.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from cbir import atomic
from cbir.distances import Metric
from cbir.errors import CbirError
from cbir.images import load_image
from cbir.layout import IndexLayout
from cbir.search import SearchEngine

SELF_RETRIEVAL_FILE = "self_retrieval.json"
SELF_RETRIEVAL_CSV = "self_retrieval_per_query.csv"
DEFAULT_QUERIES = 100  # source images sampled per collection
DEFAULT_SEED = 0
RECALL_AT = (1, 5, 10)
NOTE = (
    "Self-retrieval: each query is one of the collection's own images, edited (crop, rescale, rotation, JPEG "
    "re-compression, colour shift; seeded); the score is the rank at which the original comes back (recall@k, "
    "MRR). It measures near-duplicate search on these photos, not landmark retrieval: it is not comparable with "
    "an Oxford/Paris mAP."
)


def crop(image: Image.Image, rng: random.Random) -> Image.Image:
    area = rng.uniform(0.3, 0.7)
    aspect = rng.uniform(0.75, 4 / 3)
    width = min(image.width, max(8, round(image.width * math.sqrt(area * aspect))))
    height = min(image.height, max(8, round(image.height * math.sqrt(area / aspect))))
    left, top = rng.randint(0, image.width - width), rng.randint(0, image.height - height)
    return image.crop((left, top, left + width, top + height))


def rescale(image: Image.Image, rng: random.Random) -> Image.Image:
    return image.resize((max(1, image.width // 2), max(1, image.height // 2)), Image.Resampling.BILINEAR)


def rotate(image: Image.Image, rng: random.Random) -> Image.Image:
    angle = rng.uniform(4, 8) * rng.choice((-1, 1))
    turned = image.rotate(angle, resample=Image.Resampling.BILINEAR, expand=False)
    # The largest upright window of the rotated picture without its black corners.
    radians = math.radians(abs(angle))
    width, height = image.size
    shrink = math.cos(radians) + math.sin(radians) * max(width / height, height / width)
    inner_w, inner_h = int(width / shrink), int(height / shrink)
    left, top = (width - inner_w) // 2, (height - inner_h) // 2
    return turned.crop((left, top, left + inner_w, top + inner_h))


def jpeg(image: Image.Image, rng: random.Random) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=25)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def colour(image: Image.Image, rng: random.Random) -> Image.Image:
    brighter = ImageEnhance.Brightness(image.convert("RGB")).enhance(rng.uniform(0.75, 1.25))
    gains = np.array([rng.uniform(0.85, 1.15) for _ in range(3)], np.float32)
    pixels = np.clip(np.asarray(brighter, np.float32) * gains, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


Edit = Callable[[Image.Image, random.Random], Image.Image]
EDITS: dict[str, Edit] = {"crop": crop, "rescale": rescale, "rotate": rotate, "jpeg": jpeg, "colour": colour}
ALL_EDITS = "all edits"
EDIT_DESCRIPTIONS = {
    "crop": "a random window of 30-70 % of the area",
    "rescale": "the whole image at half its size",
    "rotate": "4-8 degrees either way, black corners cut off",
    "jpeg": "re-compressed at JPEG quality 25",
    "colour": "brightness x 0.75-1.25, each channel x 0.85-1.15",
}


def edited(image: Image.Image, edit: str, seed: int) -> Image.Image:
    """`image` with one edit, the same for the same (edit, seed)."""
    return EDITS[edit](image, random.Random(f"{seed}:{edit}"))


@dataclass
class SelfRetrievalRow:
    recipe: str
    metric: str
    edit: str  # one of EDITS, or ALL_EDITS
    n_queries: int
    recall: dict[int, float]  # k -> share of queries whose source is within the top k
    mrr: float
    untrained: bool
    mean_query_seconds: float


@dataclass
class SelfRetrievalResults:
    collection: str
    rows: list[SelfRetrievalRow]
    sources: list[str]  # the sampled source images, relative paths
    seed: int
    created: str
    note: str = NOTE
    edits: dict[str, str] = field(default_factory=lambda: dict(EDIT_DESCRIPTIONS))


class SelfRetrievalError(CbirError):
    """A collection that cannot be evaluated this way (nothing built, images missing)."""


def sample_sources(images: Sequence[str], count: int, seed: int) -> list[str]:
    """`count` of the images, the same ones for the same seed, in collection order."""
    if count >= len(images):
        return list(images)
    chosen = set(random.Random(seed).sample(range(len(images)), count))
    return [image for index, image in enumerate(images) if index in chosen]


def evaluate_self_retrieval(
    engine: SearchEngine,
    collection: str,
    recipes: Sequence[str],
    *,
    metrics: Sequence[Metric] = (Metric.COSINE, Metric.EUCLIDEAN),
    queries: int = DEFAULT_QUERIES,
    seed: int = DEFAULT_SEED,
    progress: bool = True,
) -> SelfRetrievalResults:
    """Edit sampled images, search each edit with every recipe, and score the source's rank; the
    results are written under the collection's evaluation folder and returned."""
    record = engine.record(collection)
    if not record.images_found:
        raise SelfRetrievalError(record.missing_images_message())
    if not recipes:
        raise SelfRetrievalError(f"nothing is built for {collection}")
    first = engine.index(collection, recipes[0])
    sources = sample_sources(first.manifest.images, queries, seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(recipes) * len(sources), desc=f"self-retrieval {collection}", unit="image")
    rows: list[SelfRetrievalRow] = []
    per_query: list[dict[str, object]] = []
    for recipe in recipes:
        loaded = engine.index(collection, recipe)
        row_of = {image: row for row, image in enumerate(loaded.manifest.images)}
        ranks: dict[tuple[str, str], list[int]] = {}
        seconds: list[float] = []
        for number, source in enumerate(sources):
            original = load_image(record.root / source, name=source)
            for edit in EDITS:
                query = edited(original, edit, seed * 1_000_003 + number)
                started = time.perf_counter()
                descriptor = engine.describe(query, collection=collection, recipe=recipe, name=f"{source} ({edit})")
                seconds.append(time.perf_counter() - started)
                for metric in metrics:
                    ranking = engine.rank(loaded, descriptor, metric, None).rows
                    rank = int(np.flatnonzero(np.asarray(ranking) == row_of[source])[0]) + 1
                    ranks.setdefault((metric.value, edit), []).append(rank)
                    per_query.append({"recipe": recipe, "metric": metric.value, "edit": edit, "source": source,
                                      "rank": rank})  # fmt: skip
            if bar is not None:
                bar.update(1)
        for metric in metrics:
            every = [rank for edit in EDITS for rank in ranks[(metric.value, edit)]]
            for edit, values in [*((edit, ranks[(metric.value, edit)]) for edit in EDITS), (ALL_EDITS, every)]:
                rows.append(_row(recipe, metric.value, edit, values, loaded.manifest.untrained, float(np.mean(seconds))))
    if bar is not None:
        bar.close()
    results = SelfRetrievalResults(collection, rows, sources, seed, time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    _write(IndexLayout(engine.index_dir).results_dir(collection), results, per_query)
    return results


def _row(recipe: str, metric: str, edit: str, ranks: list[int], untrained: bool, seconds: float) -> SelfRetrievalRow:
    values = np.asarray(ranks)
    recall = {k: float(np.mean(values <= k)) for k in RECALL_AT}
    return SelfRetrievalRow(recipe, metric, edit, len(values), recall, float(np.mean(1.0 / values)), untrained, seconds)


def _write(folder: Path, results: SelfRetrievalResults, per_query: list[dict[str, object]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic.write_text(folder / SELF_RETRIEVAL_FILE, json.dumps(asdict(results), indent=1))

    def write_csv(temporary: Path) -> None:
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["recipe", "metric", "edit", "source", "rank"])
            writer.writeheader()
            writer.writerows(per_query)

    atomic.write_file(folder / SELF_RETRIEVAL_CSV, write_csv)


def load_self_retrieval(index_dir: Path, collection: str) -> SelfRetrievalResults | None:
    """The self-retrieval results of a collection, or None if it has not been evaluated so."""
    path = IndexLayout(index_dir).results_dir(collection) / SELF_RETRIEVAL_FILE
    try:
        data = json.loads(path.read_text())
        rows = [
            SelfRetrievalRow(**{**row, "recall": {int(k): float(v) for k, v in row["recall"].items()}})
            for row in data["rows"]
        ]
        return SelfRetrievalResults(data["collection"], rows, list(data["sources"]), int(data["seed"]),
                                    data["created"], data.get("note", NOTE), dict(data.get("edits", {})))  # fmt: skip
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def format_self_retrieval(results: SelfRetrievalResults) -> str:
    width = max([20] + [len(row.recipe) + 2 for row in results.rows])
    header = f"{'recipe':<{width}}{'metric':<11}{'edit':<11}{'R@1':>7}{'R@5':>7}{'R@10':>7}{'MRR':>7}{'n':>6}"
    lines = [f"{results.collection}: self-retrieval, {len(results.sources)} images x {len(EDITS)} edits", header,
             "-" * len(header)]  # fmt: skip
    for row in results.rows:
        name = row.recipe + ("*" if row.untrained else "")
        lines.append(f"{name:<{width}}{row.metric:<11}{row.edit:<11}" + "".join(f"{row.recall[k]:>7.3f}" for k in RECALL_AT)
                     + f"{row.mrr:>7.3f}{row.n_queries:>6}")  # fmt: skip
    lines.append(NOTE)
    return "\n".join(lines)
