"""The paths whose own tests are slow (building, adding, evaluating, self-retrieval, bundles), run in
the fast suite with a stand-in for the network: every step after describing a picture is the
project's own code. The slow tests run the same paths with real (untrained) Keras networks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cbir.add import AddPath, AddSettings, add_images
from cbir.backbones import BACKBONES
from cbir.build import BuildSettings, BuildStatus, build_indexes
from cbir.bundle import export_bundle, open_bundle, read_bundle_manifest
from cbir.datasets import DownloadSettings, folder_collection, prepare_dataset
from cbir.evaluation import EvaluationSettings, evaluate_collection, load_results
from cbir.index import load_index
from cbir.protocols import QueryMode
from cbir.recipe import Recipe
from cbir.search import SearchEngine
from cbir.weights import Weights
from cbir.self_retrieval import evaluate_self_retrieval
from fake_datasets import make_oxford_layout, serve_directory
from stubs import build_settings
from synthetic import make_gallery

XCEPTION = BACKBONES["xception"]
SIZE = 80


class StandInNetwork:
    """Describes a picture by its mean colours on a 4 x 4 grid, spread over the recipe's width by a fixed
    random projection: the same picture always gets the same descriptor, different ones differ."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        self.dim = recipe.dim
        self.input_size = recipe.input_size
        self.projection = np.random.default_rng(0).normal(size=(4 * 4 * 3, self.dim)).astype(np.float32)

    def describe(self, images, *, pad_to: int | None = None) -> np.ndarray:
        """As the real one: an (n, h, w, 3) batch, one (h, w, 3) image, or a list of images."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = images[None]
        rows = [(self._grid(np.asarray(image, np.float32)) + 1.0) @ self.projection for image in images]  # never all zero
        rows = np.stack(rows)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    @staticmethod
    def _grid(image: np.ndarray) -> np.ndarray:
        bands = np.array_split(image, 4, axis=0)
        return np.concatenate([cell.mean(axis=(0, 1)) for band in bands for cell in np.array_split(band, 4, axis=1)])


class StandInExtractors:
    """What the build, the add and the search engine ask for a network: one stand-in per recipe."""

    def __init__(self) -> None:
        self.built: dict[str, StandInNetwork] = {}

    def get(self, recipe: Recipe) -> StandInNetwork:
        return self.built.setdefault(recipe.key, StandInNetwork(recipe))


def settings(index_root: Path, **overrides) -> BuildSettings:
    values = dict(index_dir=index_root, weights=Weights.parse("none"), input_size=SIZE, progress=False, n_trees=5,
                  batch_size=4, checkpoint_every=4)  # fmt: skip
    return build_settings(**{**values, **overrides})  # the recipe's and the store's keywords sorted out


def test_a_folder_is_built_grown_searched_scored_and_bundled(tmp_path):
    photos, new = tmp_path / "photos", tmp_path / "new"
    make_gallery(photos, 8)
    make_gallery(new, 3, start_seed=100)
    index_root, extractors = tmp_path / "indexes", StandInExtractors()

    [built] = build_indexes(folder_collection(photos, "demo"), [XCEPTION], settings(index_root, store="annoy"),
                            extractors=extractors)  # fmt: skip
    assert built.status is BuildStatus.BUILT and built.n_images == 8
    [added] = add_images(index_root, "demo", photos, new, AddSettings(batch_size=4, progress=False), extractors=extractors)
    assert added.path is AddPath.STORE_REBUILT and added.n_added == 3
    assert len(load_index(built.folder)) == 11

    engine = SearchEngine(index_root, extractors=extractors)
    for picture in [photos / "picture_005.jpg", new / "picture_001.jpg"]:
        result = engine.search(picture, collection="demo", recipe=built.key, metric="cosine", k=3, exact=False)
        assert result.hits[0].path.resolve() == picture.resolve()

    scored = evaluate_self_retrieval(engine, "demo", [built.key], queries=3, progress=False)
    assert scored.rows and all(row.recipe == built.key for row in scored.rows)

    bundle = tmp_path / "demo.tar"
    export_bundle(index_root, "demo", bundle, progress=False)
    assert read_bundle_manifest(bundle).collection == "demo"
    opened = open_bundle(str(bundle), tmp_path / "cache")
    assert (opened / "demo" / built.key / "manifest.json").exists()


def built_oxford(tmp_path: Path) -> tuple[Path, StandInExtractors]:
    """A small Oxford5k in the official layout, served over local HTTP, prepared and built."""
    layout = make_oxford_layout(tmp_path / "source", n_landmarks=2, images_per_landmark=4, queries_per_landmark=1)
    with serve_directory(layout["archive_dir"]) as url:
        collection = prepare_dataset("oxford5k", DownloadSettings(data_dir=tmp_path / "data", mirror=url, progress=False))
    index_root, extractors = tmp_path / "indexes", StandInExtractors()
    build_indexes(collection, [XCEPTION], settings(index_root), extractors=extractors)
    return index_root, extractors


def test_a_dataset_with_ground_truth_is_built_and_evaluated(tmp_path):
    index_root, extractors = built_oxford(tmp_path)

    results = evaluate_collection(
        EvaluationSettings(index_dir=index_root, collection="oxford5k", query_modes=[QueryMode.FULL], progress=False),
        engine=SearchEngine(index_root, extractors=extractors),
    )  # fmt: skip
    assert load_results(index_root, "oxford5k") == results
    plain = [row for row in results.rows if not row.reranking]
    assert {row.metric for row in plain} == {"cosine", "euclidean"}
    for row in plain:
        assert row.n_queries == 2 and 0.0 < row.map <= 1.0


def test_the_evaluation_adds_diffusion_rows_alone_and_after_query_expansion(tmp_path):
    from cbir.diffusion import Diffusion

    index_root, extractors = built_oxford(tmp_path)
    diffusion = Diffusion(k=3, query_k=2)
    evaluation = EvaluationSettings(index_dir=index_root, collection="oxford5k", query_modes=[QueryMode.FULL],
                                    progress=False, diffusion=diffusion)  # fmt: skip
    results = evaluate_collection(evaluation, engine=SearchEngine(index_root, extractors=extractors))
    expansion = evaluation.query_expansion.label
    rerankings = {row.reranking for row in results.rows}
    assert rerankings == {"", expansion, diffusion.label, f"{expansion} + {diffusion.label}"}
    for row in results.rows:
        assert row.n_queries == 2 and 0.0 < row.map <= 1.0 and row.mean_query_seconds > 0, row.reranking


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))
