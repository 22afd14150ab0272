"""Building a collection's indexes and searching them, end to end, with untrained networks.

Untrained (seeded, random) networks still map a picture and a crop of it close together, so a
synthetic gallery has right answers. xception runs at 96 px here to stay fast.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.backbones import BACKBONES
from cbir.weights import Weights
from cbir.trunks import ExtractorCache
from cbir.build import BuildSettings, BuildStatus, build_indexes
from cbir.datasets import folder_collection
from cbir.errors import SettingsError
from cbir.images import ImageError
from cbir.index import load_index
from cbir.catalogue import list_indexes
from cbir.layout import IndexLayout, IndexLoadError, read_collection_record
from cbir import stores
from cbir.recipe import Recipe, RecipeSettings
from cbir.search import SearchEngine
from stubs import TOY_STORE, build_settings
from synthetic import crop_of, draw_picture, make_gallery

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
XCEPTION = BACKBONES["xception"]
SMALL = 96


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gallery")
    make_gallery(folder / "photos", 24)
    # Bad files a real folder has: they are skipped and listed, never fatal.
    (folder / "photos" / "empty.jpg").write_bytes(b"")
    (folder / "photos" / "notes.png").write_text("not a picture")
    good = (folder / "photos" / "picture_000.jpg").read_bytes()
    (folder / "photos" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    return folder / "photos"


def settings_for(index_root: Path, **overrides) -> BuildSettings:
    values = dict(
        index_dir=index_root,
        weights=Weights.parse("none"),
        input_size=SMALL,
        progress=False,
        n_trees=10,
        batch_size=8,
        checkpoint_every=8,
    )
    values.update(overrides)
    return build_settings(**values)


@pytest.fixture(scope="module")
def built(gallery, tmp_path_factory, extractors) -> Path:
    index_root = tmp_path_factory.mktemp("indexes")
    collection = folder_collection(gallery, "demo")
    outcomes = build_indexes(collection, [XCEPTION], settings_for(index_root), extractors=extractors)
    assert [outcome.status for outcome in outcomes] == [BuildStatus.BUILT]
    return index_root


def test_build_writes_a_complete_folder_and_lists_skipped_files(built):
    folder = built / "demo" / "xception"
    assert sorted(p.name for p in folder.iterdir()) == [
        "cosine.ann",
        "descriptors.npy",
        "euclidean.ann",
        "manifest.json",
    ]
    manifest = json.loads((folder / "manifest.json").read_text())
    recipe = manifest["recipe"]
    assert recipe["backbone"] == "xception" and recipe["pooling"] == "gap" and manifest["dim"] == 2048
    assert recipe["weights"]["untrained"] is True and "untrained" in recipe["weights"]["identity"]
    assert recipe["input_size"] == SMALL
    assert len(manifest["images"]) == 24
    skipped = {entry["image"]: entry["reason"] for entry in manifest["skipped"]}
    assert sorted(skipped) == ["empty.jpg", "notes.png", "truncated.jpg"]
    assert "empty" in skipped["empty.jpg"]
    assert set(manifest["versions"]) == {"keras", "tensorflow"}
    assert manifest["store"]["kind"] == "annoy" and manifest["store"]["params"]["n_trees"] == 10
    assert manifest["files"]["descriptors.npy"] == (folder / "descriptors.npy").stat().st_size
    assert np.load(folder / "descriptors.npy").shape == (24, 2048)
    # No checkpoint or temporary folder is left beside the index; the page's thumbnails are made,
    # one per indexed image (none for the skipped), so no search waits for them.
    assert sorted(p.name for p in (built / "demo").iterdir()) == ["collection.json", "thumbnails", "xception"]
    assert len(list((built / "demo" / "thumbnails").glob("*.jpg"))) == 24


def test_a_crop_finds_its_source_at_rank_1_through_annoy_and_exact(built, gallery, extractors):
    engine = SearchEngine(built, extractors=extractors)
    for index in (0, 5, 11, 17, 23):
        source = f"picture_{index:03d}.jpg"
        query = crop_of(gallery / source, fraction=0.8, scale=1.2)
        for exact in (False, True):
            for metric in ("cosine", "euclidean"):
                result = engine.search(query, collection="demo", recipe="xception", metric=metric, k=5, exact=exact)
                assert result.hits[0].image == source, (metric, exact, [h.image for h in result.hits])
                assert [hit.rank for hit in result.hits] == [1, 2, 3, 4, 5]
                assert result.hits[0].path == gallery / source
                assert result.untrained


def test_box_query_crops_before_describing(built, gallery, extractors):
    engine = SearchEngine(built, extractors=extractors)
    # A canvas with picture 7 pasted into one corner: only the box finds it first.
    canvas = Image.new("RGB", (400, 300), (128, 128, 128))
    with Image.open(gallery / "picture_007.jpg") as picture:
        canvas.paste(picture, (230, 170))
    boxed = engine.search(canvas, collection="demo", recipe="xception", k=3, box=(230, 170, 390, 290))
    assert boxed.hits[0].image == "picture_007.jpg"
    described = engine.describe(canvas, collection="demo", recipe="xception", box=(230, 170, 390, 290))
    direct = engine.describe(gallery / "picture_007.jpg", collection="demo", recipe="xception")
    assert np.allclose(described, direct, atol=1e-3 * np.abs(direct).max())


def test_second_query_reuses_the_model_and_the_index(built, gallery):
    engine = SearchEngine(built)
    query = gallery / "picture_003.jpg"
    engine.search(query, collection="demo", recipe="xception")
    model = engine.extractors.get(Recipe.create("xception", weights="none", input_size=SMALL)).model
    index = engine.index("demo", "xception")
    second = engine.search(query, collection="demo", recipe="xception")
    assert len(engine.extractors) == 1
    assert engine.extractors.get(Recipe.create("xception", weights="none", input_size=SMALL)).model is model
    assert engine.index("demo", "xception") is index
    assert second.hits[0].image == "picture_003.jpg"
    assert second.hits[0].similarity == pytest.approx(1.0, abs=1e-4)


def test_bad_queries_raise_the_clear_error(built, tmp_path, extractors):
    engine = SearchEngine(built, extractors=extractors)
    text = tmp_path / "query.jpg"
    text.write_text("hello")
    with pytest.raises(ImageError, match="query.jpg"):
        engine.search(text, collection="demo", recipe="xception")
    with pytest.raises(ImageError):
        engine.search(np.zeros((50, 50, 3), np.uint8), collection="demo", recipe="xception", box=(10, 10, 12, 12))
    with pytest.raises(IndexLoadError, match="--backbones vgg16"):
        engine.search(np.zeros((50, 50, 3), np.uint8), collection="demo", recipe="vgg16")


def test_rebuild_is_a_no_op_and_force_rebuilds(built, gallery, extractors):
    collection = folder_collection(gallery, "demo")
    manifest_before = (built / "demo" / "xception" / "manifest.json").read_text()
    outcomes = build_indexes(collection, [XCEPTION], settings_for(built), extractors=extractors)
    assert [outcome.status for outcome in outcomes] == [BuildStatus.UP_TO_DATE]
    assert (built / "demo" / "xception" / "manifest.json").read_text() == manifest_before
    # Other weights or another input size are a different index: rebuilt, not reused.
    changed = build_indexes(collection, [XCEPTION], settings_for(built, input_size=80), extractors=extractors)
    assert changed[0].status is BuildStatus.BUILT
    assert json.loads((built / "demo" / "xception" / "manifest.json").read_text())["recipe"]["input_size"] == 80
    forced = build_indexes(collection, [XCEPTION], settings_for(built, force=True), extractors=extractors)
    assert forced[0].status is BuildStatus.BUILT
    assert load_index(built / "demo" / "xception").manifest.recipe.input_size == SMALL


def test_collection_file_records_root_and_queries(built, gallery):
    saved = read_collection_record(IndexLayout(built), "demo")
    assert saved.root == gallery.resolve() and saved.images_found
    assert saved.queries == ()
    record = json.loads((built / "demo" / "collection.json").read_text())
    assert not Path(record["images_root"]).is_absolute()


def test_an_interrupted_build_leaves_no_index_and_the_rerun_resumes(gallery, tmp_path, extractors):
    collection = folder_collection(gallery, "demo")
    seen = []

    def interrupt(backbone: str, done: int, total: int) -> None:
        seen.append(done)
        if done >= 16:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_indexes(collection, [XCEPTION], settings_for(tmp_path), extractors=extractors, on_progress=interrupt)
    assert list_indexes(tmp_path) == []
    with pytest.raises(IndexLoadError):
        load_index(tmp_path / "demo" / "xception")
    checkpoints = sorted(p.name for p in (tmp_path / "demo" / ".extract-xception").glob("chunk_*.npz"))
    assert checkpoints == ["chunk_00000000.npz", "chunk_00000008.npz"]

    outcome = build_indexes(collection, [XCEPTION], settings_for(tmp_path), extractors=extractors)[0]
    assert outcome.status is BuildStatus.BUILT and outcome.resumed_images == 16
    resumed = load_index(tmp_path / "demo" / "xception")
    fresh = build_indexes(collection, [XCEPTION], settings_for(tmp_path / "fresh"), extractors=extractors)[0]
    reference = load_index(fresh.folder)
    # Rows taken from checkpoints are the same rows a build without interruption produces.
    assert resumed.manifest.images == reference.manifest.images
    assert np.allclose(resumed.descriptors, reference.descriptors, atol=1e-5)
    assert not (tmp_path / "demo" / ".extract-xception").exists()


def run_cli(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, str(REPO / "build_index.py"), *arguments],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_cli_builds_a_folder_then_has_nothing_to_do(gallery, tmp_path):
    common = ("--images", str(gallery), "--name", "demo", "--backbones", "xception", "--weights", "none",
              "--input-size", "80", "--index-dir", str(tmp_path / "idx"), "--no-progress")  # fmt: skip
    first = run_cli(*common, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "built" in first.stdout and "untrained" in first.stdout
    assert "skipping empty.jpg" in first.stderr
    assert {p.name for p in (tmp_path / "idx" / "demo" / "xception").glob("*.ann")} == {"cosine.ann", "euclidean.ann"}
    second = run_cli(*common, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "nothing to do" in second.stdout


def test_cli_reports_errors_without_a_traceback(tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    result = run_cli("--images", str(empty), "--weights", "none", "--index-dir", str(tmp_path / "idx"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr
    result = run_cli("--images", str(empty), "--backbones", "resnet", cwd=tmp_path)
    assert result.returncode == 2 and "known backbones: vgg16, xception" in result.stderr


def test_cli_killed_mid_extraction_leaves_no_index_and_rerun_completes(gallery, tmp_path):
    index_root = tmp_path / "idx"
    arguments = [sys.executable, str(REPO / "build_index.py"), "--images", str(gallery), "--name", "demo",
                 "--backbones", "xception", "--weights", "none", "--input-size", "80", "--index-dir",
                 str(index_root), "--no-progress", "--batch-size", "4", "--checkpoint-every", "4"]  # fmt: skip
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
    process = subprocess.Popen(arguments, cwd=tmp_path, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = index_root / "demo" / ".extract-xception"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(checkpoints.glob("chunk_*.npz"))) < 2:
        assert process.poll() is None, "the build finished before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list_indexes(index_root) == []
    done_before = len(list(checkpoints.glob("chunk_*.npz")))
    assert done_before >= 2
    rerun = run_cli(*arguments[2:], cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming after" in rerun.stderr
    assert len(load_index(index_root / "demo" / "xception")) == 24


def test_small_collections_are_searched_exactly_unless_annoy_is_asked_for(built, gallery, extractors, monkeypatch):
    import cbir.ranking

    engine = SearchEngine(built, extractors=extractors)
    query = gallery / "picture_004.jpg"
    assert engine.search(query, collection="demo", recipe="xception").exact is True
    assert engine.search(query, collection="demo", recipe="xception", exact=False).exact is False
    # Above the limit the default goes through Annoy.
    monkeypatch.setattr(cbir.ranking, "EXACT_SEARCH_LIMIT", 10)
    result = engine.search(query, collection="demo", recipe="xception")
    assert result.exact is False and result.hits[0].image == "picture_004.jpg"


def test_a_default_build_writes_annoy_and_searches_a_small_collection_as_the_exact_scan(gallery, tmp_path, extractors):
    settings = BuildSettings(index_dir=tmp_path, recipe=RecipeSettings(weights="none", input_size=SMALL), progress=False)
    [outcome] = build_indexes(folder_collection(gallery, "demo"), [XCEPTION], settings, extractors=extractors)
    assert {p.name for p in outcome.folder.glob("*.ann")} == {"cosine.ann", "euclidean.ann"}
    engine = SearchEngine(tmp_path, extractors=extractors)
    for picture in ("picture_004.jpg", "picture_017.jpg"):
        for metric in ("cosine", "euclidean"):
            searched = engine.search(gallery / picture, collection="demo", recipe="xception", metric=metric, k=8)
            scanned = engine.search(gallery / picture, collection="demo", recipe="xception", metric=metric, k=8,
                                    exact=True)  # fmt: skip
            through_annoy = engine.search(gallery / picture, collection="demo", recipe="xception", metric=metric,
                                          k=8, exact=False)  # fmt: skip
            assert searched.exact is True  # a small collection: the scan answers, as before
            assert [hit.image for hit in searched.hits] == [hit.image for hit in scanned.hits]
            assert [hit.image for hit in through_annoy.hits] == [hit.image for hit in scanned.hits]


def test_a_store_registered_in_a_test_is_built_and_searched(gallery, tmp_path, extractors):
    stores.register(TOY_STORE)
    try:
        settings = settings_for(tmp_path, store="toy", toy_leaves=3)
        [outcome] = build_indexes(folder_collection(gallery, "demo"), [XCEPTION], settings, extractors=extractors)
        manifest = load_index(outcome.folder).manifest
        assert (manifest.store.kind, manifest.store.params) == ("toy", {"toy_leaves": 3})
        assert (outcome.folder / "toy.txt").is_file() and "toy.txt" in manifest.files
        engine = SearchEngine(tmp_path, extractors=extractors)
        result = engine.search(gallery / "picture_004.jpg", collection="demo", recipe="xception", exact=False)
        assert result.exact is False and result.hits[0].image == "picture_004.jpg"  # answered by the toy store
        again = build_indexes(folder_collection(gallery, "demo"), [XCEPTION], settings, extractors=extractors)
        assert again[0].status is BuildStatus.UP_TO_DATE  # its parameters recorded, read back, equal
    finally:
        del stores.STORES["toy"]


def test_a_damaged_index_is_rebuilt_not_called_up_to_date(built, gallery, extractors, tmp_path):
    import shutil

    root = tmp_path / "indexes"
    shutil.copytree(built, root)
    descriptors = root / "demo" / "xception" / "descriptors.npy"
    descriptors.write_bytes(descriptors.read_bytes()[:4096])
    outcome = build_indexes(folder_collection(gallery, "demo"), [XCEPTION], settings_for(root), extractors=extractors)[0]
    assert outcome.status is BuildStatus.BUILT and outcome.reason.startswith("damaged (descriptors.npy has 4096 bytes")
    assert len(load_index(root / "demo" / "xception")) == 24


def test_pooled_recipes_are_indexes_of_their_own_and_find_the_source(built, gallery, extractors, tmp_path):
    import shutil

    from cbir.pooling import Pooling

    root = tmp_path / "indexes"
    shutil.copytree(built, root)
    collection = folder_collection(gallery, "demo")
    for pooling in (Pooling.GEM, Pooling.RMAC):
        outcome = build_indexes(collection, [XCEPTION], settings_for(root, pooling=pooling), extractors=extractors)[0]
        assert outcome.status is BuildStatus.BUILT and outcome.folder.name == f"xception-{pooling.value}"
    vgg = build_indexes(collection, [BACKBONES["vgg16"]], settings_for(root, pooling=Pooling.MAC, input_size=64),
                        extractors=extractors)[0]  # fmt: skip
    manifest = json.loads((vgg.folder / "manifest.json").read_text())
    assert manifest["recipe"]["pooling"] == "mac" and manifest["dim"] == 512  # block5_pool's channels
    # The study's index is untouched beside them, and each recipe is searched as itself.
    assert sorted(info.key for info in list_indexes(root)) == ["vgg16-mac", "xception", "xception-gem", "xception-rmac"]
    engine = SearchEngine(root, extractors=extractors)
    query = crop_of(gallery / "picture_013.jpg", fraction=0.8, scale=1.2)
    for recipe in ("xception-gem", "xception-rmac", "vgg16-mac"):
        result = engine.search(query, collection="demo", recipe=recipe, k=3)
        assert result.hits[0].image == "picture_013.jpg", recipe
    gem, gap = (engine.describe(query, collection="demo", recipe=key) for key in ("xception-gem", "xception"))
    assert not np.allclose(gem / np.linalg.norm(gem), gap / np.linalg.norm(gap), atol=1e-3)


def test_whitening_learned_on_another_collection_is_stored_applied_to_queries_and_relearned_when_it_changes(
    gallery, extractors, tmp_path
):
    from cbir.pooling import Pooling

    root = tmp_path / "indexes"
    other = tmp_path / "other"
    make_gallery(other, 16, start_seed=500, width=120, height=160)
    extractors = ExtractorCache()
    collection = folder_collection(gallery, "demo")
    settings = settings_for(root, pooling=Pooling.GEM, scales=(1.0, 0.75), whiten_on="other", whitened_dim=8)
    outcomes = build_indexes(
        collection, [XCEPTION], settings, extractors=extractors, whitening_source=folder_collection(other, "other")
    )
    assert [(o.key, o.status) for o in outcomes] == [
        ("xception-gem-ms1_0.75", BuildStatus.BUILT),
        ("xception-gem-ms1_0.75-w8-other", BuildStatus.BUILT),
    ]
    # The source was described first, with the same recipe before whitening.
    assert load_index(root / "other" / "xception-gem-ms1_0.75").manifest.recipe == outcomes[0].recipe
    whitened = load_index(outcomes[1].folder)
    assert whitened.descriptors.shape == (24, 8) and (outcomes[1].folder / "whitening.npz").is_file()
    learned_on = whitened.manifest.whitening
    assert (learned_on.collection, learned_on.n_descriptors, learned_on.same_collection) == ("other", 16, False)

    # A collection photo used as a query is described, whitened by the index's transform, and
    # lands on its own row; a crop of another finds its source.
    engine = SearchEngine(root, extractors=extractors)
    own = engine.search(gallery / "picture_005.jpg", collection="demo", recipe=outcomes[1].key, k=1)
    assert own.hits[0].image == "picture_005.jpg" and own.hits[0].similarity == pytest.approx(1.0, abs=1e-4)
    crop = crop_of(gallery / "picture_013.jpg", fraction=0.8, scale=1.2)
    assert engine.search(crop, collection="demo", recipe=outcomes[1].key, k=3).hits[0].image == "picture_013.jpg"

    # Nothing changed: nothing is redone. The source changed: the whitening is learned again.
    again = build_indexes(collection, [XCEPTION], settings, extractors=extractors)
    assert [o.status for o in again] == [BuildStatus.UP_TO_DATE, BuildStatus.UP_TO_DATE]
    draw_picture(900).save(other / "one_more.jpg")
    build_indexes(folder_collection(other, "other"), [XCEPTION], settings_for(root, pooling=Pooling.GEM,
                  scales=(1.0, 0.75)), extractors=extractors)  # fmt: skip
    relearned = build_indexes(collection, [XCEPTION], settings, extractors=extractors)
    assert len(extractors) == 1  # one network for the source, the collection and the queries
    assert [o.status for o in relearned] == [BuildStatus.UP_TO_DATE, BuildStatus.BUILT]
    assert "descriptors changed" in relearned[1].reason

    # Too few images to keep that many dimensions: a message naming --dim, and no folder.
    with pytest.raises(SettingsError, match="17 descriptors.*--dim 16 or less"):  # 17 centred points: 16 axes
        build_indexes(collection, [XCEPTION], settings_for(root, pooling=Pooling.GEM, scales=(1.0, 0.75),
                      whiten_on="other", whitened_dim=64), extractors=extractors)  # fmt: skip
    assert not (root / "demo" / "xception-gem-ms1_0.75-w64-other").exists()


def test_cli_builds_a_whitened_multi_scale_recipe_in_one_command(gallery, tmp_path):
    other = tmp_path / "other"
    make_gallery(other, 12, start_seed=300)
    index_dir = tmp_path / "indexes"
    common = ("--backbones", "xception", "--weights", "none", "--input-size", "80", "--index-dir", str(index_dir),
              "--no-progress", "--pooling", "gem", "--scales", "1,0.7")  # fmt: skip
    first = run_cli("--images", str(gallery), "--name", "demo", *common, "--whiten-on", "other", "--dim", "4",
                    cwd=tmp_path)  # fmt: skip
    assert first.returncode == 2 and "Build it first: python build_index.py --images <folder> --name other" in first.stderr
    assert run_cli("--images", str(other), "--name", "other", *common, cwd=tmp_path).returncode == 0
    result = run_cli("--images", str(gallery), "--name", "demo", *common, "--whiten-on", "other", "--dim", "4",
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "xception-gem-ms1_0.7-w4-other" in result.stdout and "xception-gem-ms1_0.7 " in result.stdout
    manifest = json.loads((index_dir / "demo" / "xception-gem-ms1_0.7-w4-other" / "manifest.json").read_text())
    assert manifest["recipe"]["scales"] == [1.0, 0.7] and manifest["dim"] == 4
    assert manifest["recipe"]["input_shape"] == "longer side" and manifest["whitening"]["collection"] == "other"


def test_dba_is_an_index_of_its_own_computed_from_the_recipe_without_it(built, gallery, extractors, tmp_path):
    import shutil

    from cbir.ranking import database_side_augmentation

    root = tmp_path / "indexes"
    shutil.copytree(built, root)
    collection = folder_collection(gallery, "demo")
    outcomes = build_indexes(collection, [XCEPTION], settings_for(root, dba=3), extractors=extractors)
    assert [(o.key, o.status) for o in outcomes] == [("xception", BuildStatus.UP_TO_DATE), ("xception-dba3", BuildStatus.BUILT)]
    plain, augmented = load_index(root / "demo" / "xception"), load_index(root / "demo" / "xception-dba3")
    assert np.asarray(augmented.descriptors) == pytest.approx(
        database_side_augmentation(np.asarray(plain.descriptors), "cosine", k=3), abs=1e-6
    )
    assert augmented.manifest.derived_from["key"] == "xception"
    # Queries are described as for the plain index: a collection photo still finds itself first.
    engine = SearchEngine(root, extractors=extractors)
    assert engine.search(gallery / "picture_004.jpg", collection="demo", recipe="xception-dba3", k=1).hits[0].image == (
        "picture_004.jpg"
    )
    # Its source rewritten with other rows (as by a rebuild under another TensorFlow, in an earlier
    # run): the augmentation is computed again.
    from cbir.index import Manifest, write_index

    manifest = Manifest.read(root / "demo" / "xception")
    write_index(root / "demo" / "xception", np.asarray(plain.descriptors)[::-1].copy(), manifest)
    again = build_indexes(collection, [XCEPTION], settings_for(root, dba=3), extractors=extractors)
    assert [o.status for o in again] == [BuildStatus.UP_TO_DATE, BuildStatus.BUILT]
    assert "xception rows changed" in again[1].reason
    assert build_indexes(collection, [XCEPTION], settings_for(root, dba=3), extractors=extractors)[1].status is (
        BuildStatus.UP_TO_DATE
    )
