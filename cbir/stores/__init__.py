"""Where descriptors are searched: one module per store, behind one interface (cbir.stores.base).

Every index folder holds its raw descriptors (`descriptors.npy`), so the exact scan is always
there; the manifest names one more store (`annoy`, `hnsw`, `milvus`, or `exact` for none) with its
parameters, and `LoadedIndex` opens it by that name. A new store is one module `cbir/stores/<name>.py`
defining `KIND = StoreKind(...)` (its label, build parameters and whether it can grow) and one line in
BUILT_IN below (or a `register` call, as the tests do): the build, `--add`, the index loader and the
command line read everything else from it.

The modules are imported when the registry is first read, by name: a store imports cbir.stores.base,
never this package's registry, so nothing imports in a circle (and the libraries load lazily anyway).

A store ranks by the project's metric names (`cbir.distances.Metric`) and reports distances in the
same units as the exact scan (angular distance for cosine), mapping to its own names inside.
"""

from __future__ import annotations

import importlib

from cbir.errors import SettingsError
from cbir.stores.base import Store, StoreKind, StoreParameter

# The project's stores, one line each: the module cbir.stores.<name> defines KIND.
BUILT_IN = (
    "exact",
    "annoy",
    "hnsw",
    "milvus",
)
DEFAULT_STORE = "annoy"  # the design card: one Annoy index per backbone
AUTO = "auto"  # chosen by the collection's size (cbir.build.choose_store)

STORES: dict[str, StoreKind] = {}
_loaded = False


def _load_built_ins() -> None:
    global _loaded
    if not _loaded:
        for name in BUILT_IN:
            STORES.setdefault(name, importlib.import_module(f"{__name__}.{name}").KIND)
        _loaded = True


def register(kind: StoreKind) -> StoreKind:
    """Add a store the project does not list (a test's, a plug-in's)."""
    _load_built_ins()
    STORES[kind.name] = kind
    return kind


def store_kinds() -> dict[str, StoreKind]:
    """Every registered store by name: the built-in ones first."""
    _load_built_ins()
    return dict(STORES)


def get_store_kind(name: str) -> StoreKind:
    _load_built_ins()
    try:
        return STORES[name]
    except KeyError:
        raise SettingsError(f"unknown store {name!r}; known stores: {', '.join(STORES)}") from None


def store_choices() -> list[str]:
    """What `--store` offers: "auto", then every registered store."""
    return [AUTO, *store_kinds()]


def store_parameters() -> list[StoreParameter]:
    """Every store's build parameters (what the command line offers as flags), in registry order."""
    return [parameter for kind in store_kinds().values() for parameter in kind.parameters]


__all__ = ["AUTO", "BUILT_IN", "DEFAULT_STORE", "STORES", "Store", "StoreKind", "StoreParameter", "get_store_kind",
           "register", "store_choices", "store_kinds", "store_parameters"]  # fmt: skip
