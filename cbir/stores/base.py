"""What a store is: the interface a search uses, and the description a store module gives of itself
(its name, label, build parameters and whether it can grow). The registry is cbir.stores."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from cbir.distances import Metric, Neighbours
from cbir.errors import SettingsError

if TYPE_CHECKING:
    from cbir.recipe import Recipe


class Store(Protocol):
    def search(self, query: np.ndarray, metric: Metric, k: int, *, candidates: int | None = None) -> Neighbours:
        """The k nearest rows. `candidates`: how many rows an approximate store examines (it may
        keep the nearest k of them); the exact scan ignores it."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class StoreParameter:
    """A choice a store takes at build time, as a command line offers it (`flag`, `help`) and as the
    build passes it (`BuildSettings.store_params[name]`)."""

    name: str  # the key in BuildSettings.store_params (unique across stores)
    flag: str  # e.g. "--n-trees"
    type: type
    default: Any = None  # None with `required`: the user must give it
    help: str = ""
    env: str | None = None  # an environment variable giving the default, e.g. CBIR_MILVUS_URI
    required: bool = False

    def default_value(self) -> Any:
        """The default, from the environment when `env` is set there."""
        if self.env and os.environ.get(self.env):
            return self.type(os.environ[self.env])
        return self.default


@dataclass(frozen=True)
class StoreKind:
    name: str
    label: str  # how messages name it in a sentence, e.g. "the Annoy trees"
    description: str
    # (temporary index folder, descriptors, parameters asked for) -> parameters to record
    build: Callable[[Path, np.ndarray, dict[str, Any]], dict[str, Any]]
    # (index folder, memory-mapped descriptors, recorded parameters) -> a store to search
    open: Callable[[Path, np.ndarray, dict[str, Any]], Store]
    # recorded parameters -> the files it keeps in the index folder
    files: Callable[[dict[str, Any]], list[str]]
    parameters: tuple[StoreParameter, ...] = ()
    exact: bool = False  # whether its answers are the exact ranking
    # A server the user chose to search with (Milvus): it answers even where a local scan of the
    # descriptors would be as fast (cbir.ranking.prefers_exact).
    serves_every_search: bool = False
    # (current index folder, temporary index folder, every row, first new row, recorded parameters)
    # -> parameters to record: the store grown by rows added after its build, without rebuilding it.
    # None: the store cannot take rows after its build (Annoy), so `build_index.py --add` rebuilds it.
    add: Callable[[Path, Path, np.ndarray, int, dict[str, Any]], dict[str, Any]] | None = None
    # (parameter values by name, collection, recipe) -> the parameters a build asks `build` for; None:
    # the values as given. Where a store names what it builds after the index (Milvus' collection).
    build_params: Callable[[dict[str, Any], str, Recipe | None], dict[str, Any]] | None = None

    @property
    def can_grow(self) -> bool:
        """Whether rows added after the build (`--add`) grow the store instead of rebuilding it."""
        return self.add is not None

    def params_for(self, values: Mapping[str, Any], collection: str = "", recipe: Recipe | None = None) -> dict[str, Any]:
        """The parameters to build this store with for `recipe` in `collection`: each of its
        parameters from `values` (by name; values of other stores' parameters are ignored), else its
        default; a required one missing is a SettingsError naming its flag."""
        chosen = {}
        for parameter in self.parameters:
            value = values.get(parameter.name)
            value = parameter.default_value() if value is None else value
            if value is None and parameter.required:
                raise SettingsError(f"--store {self.name} needs {parameter.flag}: {parameter.help}")
            chosen[parameter.name] = value
        return self.build_params(chosen, collection, recipe) if self.build_params else chosen
