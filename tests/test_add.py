"""`build_index.py --add`: images added to a built folder collection without describing the old ones
again. Per store, the added images are found (each first for itself, through the store), the old rows
are unchanged, and the message says which path was taken; whitened indexes grow, DBA is recomputed;
a run killed half way leaves the old index loadable and the same command then completes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cbir.add import AddPath, AddSettings, add_images, with_added_folders
from cbir.backbones import BACKBONES
from cbir.weights import Weights
from cbir.build import BuildSettings, BuildStatus, build_indexes
from cbir.datasets import folder_collection
from cbir.distances import Metric
from cbir.errors import CbirError
from cbir.index import damage, load_index
from cbir.catalogue import scan_indexes
from cbir.layout import IndexLayout, read_collection_record
from cbir.search import SearchEngine
from stubs import build_settings
from optional import need
from synthetic import make_gallery

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
XCEPTION = BACKBONES["xception"]
QUIET = AddSettings(batch_size=4, checkpoint_every=4, progress=False)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    """12 photos, and 4 new ones (other pictures) plus an unreadable file in a folder beside them."""
    root = tmp_path_factory.mktemp("add")
    make_gallery(root / "photos", 12)
    make_gallery(root / "new", 4, start_seed=100)
    (root / "new" / "broken.jpg").write_bytes(b"not a picture")
    return root / "photos", root / "new"


def settings_for(index_root: Path, **overrides) -> BuildSettings:
    values = dict(index_dir=index_root, weights=Weights.parse("none"), input_size=96, progress=False, n_trees=10,
                  batch_size=4, checkpoint_every=4)  # fmt: skip
    return build_settings(**{**values, **overrides})


def build(photos: Path, index_root: Path, extractors, **overrides):
    return build_indexes(folder_collection(photos, "demo"), [XCEPTION], settings_for(index_root, **overrides),
                         extractors=extractors)  # fmt: skip


def assert_each_new_image_is_first_for_itself(index_root: Path, recipe: str, new: Path, extractors) -> None:
    engine = SearchEngine(index_root, extractors=extractors)  # the network the build used, not a second one
    for picture in sorted(new.glob("picture_*.jpg")):
        for metric in ("cosine", "euclidean"):
            result = engine.search(picture, collection="demo", recipe=recipe, metric=metric, k=3, exact=False)
            assert result.hits[0].image == f"../new/{picture.name}", (metric, picture.name)
            assert result.hits[0].path.resolve() == picture.resolve()  # what the page makes its thumbnail from


STORES = {
    "exact": (AddPath.GROWN, "added 4 images to the exact index"),
    "hnsw": (AddPath.GROWN, "added 4 images to the HNSW graphs"),
    "annoy": (AddPath.STORE_REBUILT, "rebuilt the Annoy trees with 4 more images"),
    "milvus": (AddPath.GROWN, "added 4 images to the Milvus collection"),
}
NEEDS = {"hnsw": "hnswlib", "milvus": "milvus_lite"}  # the stores whose library requirements.txt leaves out


@pytest.mark.parametrize("store", list(STORES))
def test_added_images_are_found_the_old_rows_kept_and_the_message_says_how(store, folders, tmp_path, extractors):
    if store in NEEDS:
        need(NEEDS[store])
    photos, new = folders
    index_root = tmp_path / "indexes"
    build(photos, index_root, extractors, store=store, milvus_uri=str(tmp_path / "milvus.db"))
    folder = index_root / "demo" / "xception"
    before = load_index(folder)
    old_rows, old_images = np.array(before.descriptors), list(before.manifest.images)
    before.close()

    [outcome] = add_images(index_root, "demo", photos, new, QUIET, extractors=extractors)

    path, message = STORES[store]
    assert outcome.path is path and outcome.message.startswith(message), outcome.message
    assert (outcome.n_added, outcome.n_skipped, outcome.n_images) == (4, 1, 16)
    grown = load_index(folder)
    assert not damage(folder, grown.manifest)
    np.testing.assert_array_equal(np.asarray(grown.descriptors[:12]), old_rows)  # old rows: not described again
    assert grown.manifest.images == old_images + [f"../new/picture_{i:03d}.jpg" for i in range(4)]
    assert [s.image for s in grown.manifest.skipped] == ["../new/broken.jpg"]
    grown.close()
    assert_each_new_image_is_first_for_itself(index_root, "xception", new, extractors)
    assert read_collection_record(IndexLayout(index_root), "demo").n_images == 17


def test_whitened_rows_grow_by_the_saved_whitening_and_dba_is_recomputed(folders, tmp_path, extractors):
    photos, new = folders
    index_root = tmp_path / "indexes"
    # The standard protocol: the whitening is learned on another collection (here the same photos under another name).
    other = folder_collection(photos, "other")
    recipe = dict(store="exact", whiten_on="other", whitened_dim=8, dba=2)
    outcomes = build_indexes(folder_collection(photos, "demo"), [XCEPTION], settings_for(index_root, **recipe),
                             extractors=extractors, whitening_source=other)  # fmt: skip
    keys = [outcome.key for outcome in outcomes]
    assert keys == ["xception", "xception-w8-other", "xception-dba2-w8-other"]
    whitened_before = np.array(load_index(index_root / "demo" / keys[1]).descriptors)

    outcomes = {o.key: o for o in add_images(index_root, "demo", photos, new, QUIET, extractors=extractors)}

    assert outcomes["xception"].path is AddPath.GROWN
    assert outcomes[keys[1]].path is AddPath.GROWN
    assert outcomes[keys[1]].message.startswith("whitened the new rows with its saved whitening; added 4 images")
    assert outcomes[keys[2]].path is AddPath.RECOMPUTED and "DBA changes the neighbours of old rows" in outcomes[keys[2]].message
    base, whitened, dba = (load_index(index_root / "demo" / key) for key in keys)
    np.testing.assert_array_equal(np.asarray(whitened.descriptors[:12]), whitened_before)
    np.testing.assert_allclose(whitened.descriptors[12:], whitened.whitening.apply(np.asarray(base.descriptors[12:])),
                               atol=1e-6)  # fmt: skip
    assert whitened.manifest.images == base.manifest.images == dba.manifest.images
    assert len(dba) == 16 and dba.manifest.derived_from["key"] == keys[1]
    assert_each_new_image_is_first_for_itself(index_root, keys[1], new, extractors)
    # The build sees every index as it would have built it: nothing to do.
    collection = with_added_folders(folder_collection(photos, "demo"), index_root)
    again = build_indexes(collection, [XCEPTION], settings_for(index_root, **recipe), extractors=extractors,
                          whitening_source=other)  # fmt: skip
    assert [outcome.status for outcome in again] == [BuildStatus.UP_TO_DATE] * 3
    # And adding the same folder again adds nothing.
    assert {o.path for o in add_images(index_root, "demo", photos, new, QUIET, extractors=extractors)} == {AddPath.NOTHING_NEW}


KILLED_ADD = """
import os, sys
from cbir import atomic
def die(*args, **kwargs):  # the grown folder is complete; the process dies before renaming it into place
    os._exit(9)
atomic._swap_in = die
import build_index
sys.exit(build_index.main(sys.argv[1:]))
"""


def test_a_killed_add_leaves_the_old_index_loadable_and_the_same_command_completes(folders, tmp_path, extractors, capsys):
    import build_index

    need("hnswlib")  # the store that grows in place, so the kill lands between writing and swapping in
    photos, new = folders
    index_root = tmp_path / "indexes"
    build(photos, index_root, extractors, store="hnsw")
    folder = index_root / "demo" / "xception"
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    command = ["--images", str(photos), "--name", "demo", "--add", str(new), "--index-dir", str(index_root),
               "--no-progress", "--batch-size", "4"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    killed = subprocess.run([sys.executable, "-c", KILLED_ADD, *command], env=env, capture_output=True, text=True)
    assert killed.returncode == 9, killed.stderr[-2000:]
    assert any(".partial-" in p.name for p in (index_root / "demo").iterdir())  # what the killed writer left
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before  # not a byte changed
    found, broken = scan_indexes(index_root)
    assert [info.n_images for info in found] == [12] and not broken
    loaded = load_index(folder)
    assert loaded.search(np.asarray(loaded.descriptors[3]), Metric.COSINE, 1, exact=False).rows.tolist() == [3]
    loaded.close()

    assert build_index.main(command) == 0
    printed = capsys.readouterr().out
    assert "demo/xception: added 4 images to the HNSW graphs" in printed and "(16 images now)" in printed
    assert not any(".partial-" in p.name for p in (index_root / "demo").iterdir())
    assert len(load_index(folder)) == 16


def test_the_added_folder_is_recorded_and_a_plain_build_keeps_its_images(folders, tmp_path, extractors):
    photos, new = folders
    index_root = tmp_path / "indexes"
    build(photos, index_root, extractors, store="exact")
    add_images(index_root, "demo", photos, new, QUIET, extractors=extractors)
    recorded = json.loads((index_root / "demo" / "added.json").read_text())
    assert [Path(entry["as_added"]) for entry in recorded["folders"]] == [new.resolve()]
    again = build(photos, index_root, extractors, store="exact")  # without with_added_folders: the new images are not listed
    assert again[0].status is BuildStatus.BUILT and again[0].n_images == 12
    collection = with_added_folders(folder_collection(photos, "demo"), index_root)
    assert len(collection.images) == 17


def test_adding_to_a_dataset_or_from_another_folder_is_refused_with_the_command(folders, tmp_path, extractors):
    photos, new = folders
    index_root = tmp_path / "indexes"
    with pytest.raises(CbirError, match="--distractors"):
        add_images(index_root, "oxford5k", photos, new, QUIET)
    with pytest.raises(CbirError, match="Build it: python build_index.py --images <folder> --name demo"):
        add_images(index_root, "demo", photos, new, QUIET)
    build(photos, index_root, extractors, store="exact")
    with pytest.raises(CbirError, match=f"was built from {photos}, not {new}"):
        add_images(index_root, "demo", new, new, QUIET)
