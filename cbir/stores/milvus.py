"""Milvus: a collection's descriptors in a vector database (Milvus Lite file, Standalone, Distributed).

    python build_index.py --images ~/photos --store milvus --milvus-uri ./milvus.db           # Lite
    python build_index.py --images ~/photos --store milvus --milvus-uri http://host:19530    # server

One Milvus collection per index folder, named from the collection and the recipe
(`collection_name`), with an INT64 primary key `row` (the row of descriptors.npy) and the rows
twice: `cosine` (metric COSINE) and `euclidean` (metric L2), each with an HNSW index where the
server accepts one and FLAT otherwise. The index folder is still written locally (manifest,
descriptors.npy): the manifest records the URI, the collection name and the index's identity,
and the same identity is stored in Milvus as a collection property, so a Milvus collection
overwritten by another build (another backbone, dimension or image list) is refused on opening,
not searched. The token comes from the environment (`CBIR_MILVUS_TOKEN`), never the manifest.

Score conventions: Milvus reports COSINE as the similarity (higher is nearer) and L2 as the
*squared* distance. Milvus only says *which* rows are nearest here: their distances are computed
again from the local descriptors with the exact scan's formula (angular distance for cosine), so
the page shows the exact scan's numbers and ties are ordered by row id, as everywhere else.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cbir.distances import Metric, Neighbours, exact_distances, nearest
from cbir.errors import CbirError, SettingsError
from cbir.layout import IndexLoadError
from cbir.stores.base import StoreKind, StoreParameter

if TYPE_CHECKING:
    from cbir.recipe import Recipe

TOKEN_ENV = "CBIR_MILVUS_TOKEN"
URI_ENV = "CBIR_MILVUS_URI"
IDENTITY_PROPERTY = "cbir.identity"
MILVUS_METRICS: dict[Metric, str] = {Metric.COSINE: "COSINE", Metric.EUCLIDEAN: "L2"}
DEFAULT_M = 32  # as the local HNSW store (docs/performance.md)
DEFAULT_EF_CONSTRUCTION = 200
DEFAULT_EF = 400
CONNECT_SECONDS = 10.0  # a dead server is reported after this, never waited on
CALL_SECONDS = 60.0  # per request (an insert batch, a search)
INSERT_BATCH = 2_000  # rows per insert: 2 x 2,000 x 2048 floats stay under gRPC's 64 MB
INSTALL_HINT = "pip install -r requirements-scale.txt"


class MilvusUnavailable(CbirError):
    """The Milvus server (or Lite file) cannot be reached or refused a request."""


def collection_name(collection: str, recipe_key: str) -> str:
    """A valid Milvus collection name for one index folder: letters, digits and underscores, with a
    short hash of the exact names so that two names that differ only in punctuation stay apart."""
    readable = re.sub(r"[^A-Za-z0-9_]", "_", f"{collection}__{recipe_key}")[:180]
    digest = hashlib.sha1(f"{collection}/{recipe_key}".encode()).hexdigest()[:8]
    return f"cbir_{readable}_{digest}"


def normalise_uri(uri: str) -> str:
    """A server address as given; a Milvus Lite file as an absolute path (the app may start elsewhere)."""
    if re.match(r"^[a-z][a-z0-9+.-]*://", uri, flags=re.IGNORECASE):
        return uri
    if not uri.endswith(".db"):
        raise SettingsError(f"--milvus-uri {uri!r} is neither http://host:19530 nor a Milvus Lite file ending in .db")
    return str(Path(uri).expanduser().resolve())


def connect(uri: str, timeout: float = CONNECT_SECONDS):
    """A MilvusClient, or MilvusUnavailable with what to do (no hang: `timeout` seconds at most)."""
    try:
        from pymilvus import MilvusClient, MilvusException
    except ImportError:
        raise SettingsError(f"the milvus store needs pymilvus (and milvus-lite for a file): {INSTALL_HINT}") from None
    try:
        return MilvusClient(uri=uri, token=os.environ.get(TOKEN_ENV, ""), timeout=timeout)
    except MilvusException as error:
        if uri.endswith(".db"):  # Milvus Lite: a missing folder, or the file open in another process
            fix = "a Milvus Lite file is opened by one process at a time (stop the app, or the other build, first)"
        else:
            fix = f"start it (README: 'Big collections') or pass another --milvus-uri; a token is read from {TOKEN_ENV}"
        raise MilvusUnavailable(f"cannot reach Milvus at {uri} ({error.message or error}): {fix}.") from None


def _identity(params: dict[str, Any], descriptors: np.ndarray) -> dict[str, Any]:
    """What a Milvus collection must hold to be searched for this index folder."""
    return {
        **dict(params.get("identity", {})),
        "rows": int(descriptors.shape[0]),
        "dim": int(descriptors.shape[1]),
        "descriptors_sha256": hashlib.sha256(np.ascontiguousarray(descriptors, dtype=np.float32).tobytes()).hexdigest(),
    }


def _calling(uri: str, what: str):
    """A context that turns a failed Milvus request into MilvusUnavailable naming `what`."""
    from pymilvus import MilvusException

    class _Calling:
        def __enter__(self):
            return self

        def __exit__(self, kind, error, traceback):
            if isinstance(error, MilvusException):
                raise MilvusUnavailable(f"Milvus at {uri} refused to {what} ({error.message or error}).") from None
            return False

    return _Calling()


class MilvusStore:
    def __init__(self, descriptors: np.ndarray, params: dict[str, Any]) -> None:
        self.descriptors = descriptors
        self.params = params
        self.uri = params["uri"]
        self.name = params["collection_name"]
        self.client = connect(self.uri)
        self._lock = threading.Lock()
        try:
            self._check()
        except BaseException:
            self.client.close()
            raise

    def _check(self) -> None:
        fix = "Rebuild it with --store milvus --force."
        with _calling(self.uri, f"describe collection {self.name}"):
            if not self.client.has_collection(self.name, timeout=CALL_SECONDS):
                raise IndexLoadError(f"Milvus at {self.uri} has no collection {self.name}. {fix}")
            properties = self.client.describe_collection(self.name, timeout=CALL_SECONDS).get("properties", {})
        try:
            stored = json.loads(properties.get(IDENTITY_PROPERTY, ""))
        except ValueError:
            raise IndexLoadError(f"Milvus collection {self.name} at {self.uri} was not written by this project. {fix}") from None
        expected = dict(self.params.get("identity_stored", {}))
        # An --add killed between growing the collection and swapping in the grown folder leaves more
        # rows in Milvus than here: still this index (searches read rows below this folder's count).
        grown = isinstance(stored.get("rows"), int) and stored["rows"] > len(self.descriptors)
        if grown:
            for key in ("rows", "descriptors_sha256"):
                expected.pop(key, None)
        differences = [f"{key} {stored.get(key)!r} (expected {value!r})" for key, value in expected.items() if stored.get(key) != value]
        if stored.get("dim") != self.descriptors.shape[1] or not (grown or stored.get("rows") == len(self.descriptors)):
            differences.insert(0, f"{stored.get('rows')} rows of {stored.get('dim')} floats "
                                  f"(expected {len(self.descriptors)} of {self.descriptors.shape[1]})")  # fmt: skip
        if differences:
            raise IndexLoadError(
                f"Milvus collection {self.name} at {self.uri} holds another index: {'; '.join(dict.fromkeys(differences))}. {fix}"
            )
        with _calling(self.uri, f"load collection {self.name}"):
            self.client.load_collection(self.name, timeout=CALL_SECONDS)

    def search(self, query: np.ndarray, metric: Metric, k: int, *, candidates: int | None = None) -> Neighbours:
        """Milvus's nearest k rows (an HNSW index examines max(k, candidates) of them), with the
        exact scan's distances."""
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        k = min(k, len(self.descriptors))
        search_params: dict[str, Any] = {"metric_type": MILVUS_METRICS[metric]}
        if self.params.get("index_type") == "HNSW":
            search_params["params"] = {"ef": max(k, candidates or int(self.params.get("ef", DEFAULT_EF)))}
        with _calling(self.uri, f"search {self.name}"):
            # Only this folder's rows: `build_index.py --add` inserts the new rows before the grown
            # folder replaces this one.
            hits = self.client.search(
                self.name, data=[query.tolist()], anns_field=metric.value, limit=k, output_fields=["row"],
                search_params=search_params, filter=f"row < {len(self.descriptors)}", timeout=CALL_SECONDS,
            )[0]  # fmt: skip
        rows = np.asarray([hit["row"] for hit in hits], dtype=np.int64)
        return nearest(exact_distances(self.descriptors[rows], query, metric), len(rows), rows)

    def close(self) -> None:
        with self._lock:
            self.client.close()


def _index_params(client, index_type: str, settings: dict[str, int]):
    index_params = client.prepare_index_params()
    for metric, milvus_metric in MILVUS_METRICS.items():
        extra = {"M": settings["M"], "efConstruction": settings["ef_construction"]} if index_type == "HNSW" else {}
        index_params.add_index(field_name=metric.value, index_type=index_type, metric_type=milvus_metric, params=extra)
    return index_params


def _build(folder: Path, descriptors: np.ndarray, params: dict[str, Any]) -> dict[str, Any]:
    from pymilvus import DataType, MilvusClient, MilvusException

    if not params.get("uri") or not params.get("collection_name"):
        raise SettingsError("the milvus store needs a URI (--milvus-uri) and a collection name")
    uri = normalise_uri(params["uri"])
    name = params["collection_name"]
    settings = {
        "M": int(params.get("M", DEFAULT_M)),
        "ef_construction": int(params.get("ef_construction", DEFAULT_EF_CONSTRUCTION)),
        "ef": int(params.get("ef", DEFAULT_EF)),
    }
    identity = _identity(params, descriptors)
    started = time.perf_counter()
    client = connect(uri)
    try:
        with _calling(uri, f"create collection {name}"):
            if client.has_collection(name, timeout=CALL_SECONDS):
                client.drop_collection(name, timeout=CALL_SECONDS)
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("row", DataType.INT64, is_primary=True)
            for metric in MILVUS_METRICS:
                schema.add_field(metric.value, DataType.FLOAT_VECTOR, dim=int(descriptors.shape[1]))
            index_type = str(params.get("index_type", "HNSW")).upper()
            try:
                client.create_collection(name, schema=schema, index_params=_index_params(client, index_type, settings),
                                         timeout=CALL_SECONDS)  # fmt: skip
            except MilvusException:
                if index_type == "FLAT":
                    raise
                index_type = "FLAT"  # a server without HNSW: the exact scan inside Milvus
                if client.has_collection(name, timeout=CALL_SECONDS):
                    client.drop_collection(name, timeout=CALL_SECONDS)
                client.create_collection(name, schema=schema, index_params=_index_params(client, "FLAT", settings),
                                         timeout=CALL_SECONDS)  # fmt: skip
        with _calling(uri, f"insert into {name}"):
            _insert(client, name, descriptors)
            # The identity goes in last: a collection whose build died has none and is refused.
            client.alter_collection_properties(name, properties={IDENTITY_PROPERTY: json.dumps(identity)},
                                               timeout=CALL_SECONDS)  # fmt: skip
    finally:
        client.close()
    return {
        **params, **settings, "uri": uri, "collection_name": name, "index_type": index_type,
        "identity_stored": identity, "insert_seconds": round(time.perf_counter() - started, 3),
    }  # fmt: skip


def _insert(client, name: str, descriptors: np.ndarray, first_row: int = 0, *, upsert: bool = False) -> None:
    """Rows first_row, first_row + 1, ... by primary key. Added rows are upserted: adding again after
    an interrupted run leaves each row once."""
    write = client.upsert if upsert else client.insert
    for start in range(0, len(descriptors), INSERT_BATCH):
        block = np.asarray(descriptors[start : start + INSERT_BATCH], dtype=np.float32)
        write(name, [{"row": first_row + start + offset, "cosine": vector, "euclidean": vector}
                     for offset, vector in enumerate(block.tolist())], timeout=CALL_SECONDS)  # fmt: skip
    client.flush(name, timeout=CALL_SECONDS)


def _add(current: Path, folder: Path, descriptors: np.ndarray, first_new_row: int, params: dict[str, Any]) -> dict[str, Any]:
    """The rows from `first_new_row` inserted into the index's Milvus collection, then its identity
    updated. Until the grown folder replaces the current one, its searches ignore the new rows."""
    uri, name = params["uri"], params["collection_name"]
    started = time.perf_counter()
    client = connect(uri)
    try:
        with _calling(uri, f"insert into {name}"):
            if not client.has_collection(name, timeout=CALL_SECONDS):
                raise IndexLoadError(f"Milvus at {uri} has no collection {name} to add rows to. Rebuild it with --force.")
            _insert(client, name, descriptors[first_new_row:], first_new_row, upsert=True)
            identity = _identity(params, descriptors)
            client.alter_collection_properties(name, properties={IDENTITY_PROPERTY: json.dumps(identity)},
                                               timeout=CALL_SECONDS)  # fmt: skip
    finally:
        client.close()
    return {**params, "identity_stored": identity, "add_seconds": round(time.perf_counter() - started, 3)}


def _open(folder: Path, descriptors: np.ndarray, params: dict[str, Any]) -> MilvusStore:
    return MilvusStore(descriptors, params)


def _files(params: dict[str, Any]) -> list[str]:
    return []  # everything beyond descriptors.npy lives in Milvus


def _build_params(values: dict[str, Any], collection: str, recipe: Recipe | None) -> dict[str, Any]:
    """What a build asks Milvus for: the URI, the collection named after the index folder, and the
    identity stored with it (checked on opening)."""
    if recipe is None:
        raise ValueError("a Milvus store is named after its collection and recipe")
    identity = {"collection": collection, "recipe": recipe.key, "weights": recipe.weights_identity}
    return {"uri": normalise_uri(values["milvus_uri"]), "collection_name": collection_name(collection, recipe.key),
            "identity": identity}  # fmt: skip


KIND = StoreKind(
    "milvus", "the Milvus collection",
    "a Milvus collection (Lite file or server; HNSW, else FLAT); the exact distances of its rows",
    _build, _open, _files, serves_every_search=True, add=_add, build_params=_build_params,
    parameters=(StoreParameter("milvus_uri", "--milvus-uri", str, None,
                               "a Milvus Lite file (./milvus.db) or http://host:19530", env=URI_ENV, required=True),),
)  # fmt: skip
