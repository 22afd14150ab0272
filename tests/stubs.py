"""Stand-ins for the network, so that tests of ranking, evaluation and layout know every descriptor.

`StubbedEngine` is the real `SearchEngine` with one thing replaced: describing an image. The test
says which descriptor each (image file, box or not) gets; everything after that -- loading the
index, ranking, scoring, writing results -- is the project's own code.
"""

from __future__ import annotations

from pathlib import Path
from dataclasses import fields
from typing import Any

import numpy as np

from cbir.build import BuildSettings
from cbir.index import Manifest, StoreSpec, write_index
from cbir.layout import IndexLayout, write_collection_record
from cbir.recipe import Recipe, RecipeSettings
from cbir.stores import StoreKind, StoreParameter, store_parameters
from cbir.stores.exact import ExactStore
from cbir.search import SearchEngine

RECIPE = Recipe.create("xception", weights="none", input_size=96)


def build_settings(**values: Any) -> BuildSettings:
    """BuildSettings from one flat set of keywords, as a test writes them: the recipe's choices go to
    `recipe`, the stores' parameters (n_trees=..., milvus_uri=...) to `store_params`."""
    recipe_fields = {field.name for field in fields(RecipeSettings)}
    store_fields = {parameter.name for parameter in store_parameters()}
    recipe = {name: values.pop(name) for name in list(values) if name in recipe_fields}
    store_params = {name: values.pop(name) for name in list(values) if name in store_fields}
    return BuildSettings(recipe=RecipeSettings(**recipe), store_params=store_params, **values)


class _NoNetwork:
    input_size = RECIPE.input_size

    def describe(self, batch: np.ndarray) -> np.ndarray:
        return np.zeros((len(batch), RECIPE.dim), np.float32)


class StubbedEngine(SearchEngine):
    def __init__(self, index_dir: Path, descriptors: dict[tuple[str, bool], np.ndarray] | None = None, **options) -> None:
        super().__init__(index_dir, **options)
        self.descriptors = descriptors or {}
        self.calls: list[tuple[str, Any]] = []
        self.next: np.ndarray | None = None

    def describe(self, image: Any, *, collection: str, recipe: str, box=None, name=None, reduced_decode=False) -> np.ndarray:
        """(file stem, cropped?) -> the descriptor the test chose; or `next` for any image."""
        self.index(collection, recipe)  # as the real one: the index must load
        label = Path(image).name if isinstance(image, (str, Path)) else type(image).__name__
        self.calls.append((label, box))
        if self.next is not None:
            return self.next
        return self.descriptors[(Path(image).stem, box is not None)]

    def extractor_for(self, loaded) -> _NoNetwork:
        return _NoNetwork()


def wide(*rows: list[float]) -> np.ndarray:
    """Hand-made descriptors, zero-padded to the recipe's width (so the engine accepts them)."""
    out = np.zeros((len(rows), RECIPE.dim), np.float32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out


def write_collection(index_dir: Path, collection, descriptors: np.ndarray, store: StoreSpec | None = None) -> Path:
    """A collection record and one index of RECIPE over `collection.images` with these rows."""
    write_collection_record(IndexLayout(index_dir), collection)
    manifest = Manifest(
        collection=collection.name, recipe=RECIPE, images=list(collection.images), store=store or StoreSpec("exact")
    )
    folder = IndexLayout(index_dir).index_dir(collection.name, RECIPE.key)
    write_index(folder, descriptors, manifest)
    return folder


def _build_toy(folder: Path, descriptors: np.ndarray, params: dict[str, Any]) -> dict[str, Any]:
    (folder / "toy.txt").write_text("toy")
    return dict(params)


# A store the project does not know: the exact scan under another name, with one build parameter.
TOY_STORE = StoreKind(
    "toy", "the toy store", "a test's store: the exact scan, and a file", _build_toy,
    lambda folder, descriptors, params: ExactStore(descriptors), lambda params: ["toy.txt"],
    parameters=(StoreParameter("toy_leaves", "--toy-leaves", int, 7, "leaves of the toy store"),),
)  # fmt: skip
