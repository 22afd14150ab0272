"""The revisited Oxford / Paris datasets: revisitop's gnd_*.pkl read by a restricted unpickler, the
roxford5k / rparis6k registry rows over the Oxford5k / Paris6k images, and revisitop's scoring
(E / M / H protocols, trapezoidal AP, its mP@k rule) on a hand-made five-image ground truth."""

from __future__ import annotations

import builtins
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from pytest import approx

from cbir.datasets import DATASETS, DatasetError, DownloadSettings, Query, dataset_dir, prepare_dataset
from cbir.datasets.folders import load_collection_dir
from cbir.datasets.revisited import load_restricted_pickle, read_revisited_ground_truth
from cbir.metrics import mean_scores, precision_at_k, precision_at_k_revisitop, score_query
from cbir.protocols import REVISITED_EASY, REVISITED_HARD, REVISITED_MEDIUM, protocols_for
from fake_datasets import ServerBehaviour, make_oxford_layout, make_paris_layout, place_extracted, serve_directory


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No developer ~/.netrc, CBIR_* setting or proxy leaks into these tests."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for variable in list(os.environ):
        if variable.startswith("CBIR_") or variable.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(variable)


def quiet_settings(data_dir: Path, **overrides: object) -> DownloadSettings:
    return DownloadSettings(data_dir=data_dir, progress=False, timeout=5.0, **overrides)  # type: ignore[arg-type]


def write_pickle(path: Path, content: object, protocol: int = pickle.DEFAULT_PROTOCOL) -> Path:
    path.write_bytes(pickle.dumps(content, protocol=protocol))
    return path


# --------------------------------------------------------------------------------------------
# The restricted unpickler


class RunsShellCommand:
    """Unpickling this runs `touch <marker>` through os.system (pickled as posix.system)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class EvaluatesCode:
    """Unpickling this calls builtins.eval on code that creates <marker>."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.eval, (f"__import__('pathlib').Path({str(self.marker)!r}).touch()",)


class LoadsAnArray:
    """An allowed module (numpy) with a name that is not allowed: numpy.load can unpickle files."""

    def __reduce__(self):
        return np.load, ("elsewhere.npy",)


@pytest.mark.parametrize("hostile", [RunsShellCommand, EvaluatesCode])
def test_a_pickle_that_would_run_code_is_refused_before_running_it(tmp_path: Path, hostile: type) -> None:
    marker = tmp_path / "the-command-ran"
    # Hidden where a box belongs, inside an otherwise well-formed ground truth.
    gnd = {"imlist": ["a"], "qimlist": ["q"], "gnd": [{"bbx": hostile(marker), "easy": [0], "hard": [], "junk": []}]}
    path = write_pickle(tmp_path / "gnd_roxford5k.pkl", gnd)

    with pytest.raises(DatasetError, match=r"not a plain ground-truth file.*(posix\.system|builtins\.eval)"):
        read_revisited_ground_truth(path)
    assert not marker.exists()

    pickle.loads(path.read_bytes())  # control: an ordinary unpickler does run it
    assert marker.exists()


def test_an_allowed_module_does_not_allow_its_other_names(tmp_path: Path) -> None:
    path = write_pickle(tmp_path / "gnd.pkl", {"imlist": [LoadsAnArray()]})

    with pytest.raises(DatasetError, match="numpy.load"):
        load_restricted_pickle(path)


def test_a_truncated_pickle_is_a_dataset_error(tmp_path: Path) -> None:
    good = pickle.dumps({"imlist": ["a"], "qimlist": [], "gnd": []})
    (tmp_path / "gnd.pkl").write_bytes(good[: len(good) // 2])

    with pytest.raises(DatasetError, match="not a readable pickle"):
        load_restricted_pickle(tmp_path / "gnd.pkl")


def numpy_ground_truth() -> dict:
    return {
        "imlist": ["a", "b", "c"],
        "qimlist": ["q1"],
        "gnd": [
            {
                "bbx": np.array([1.5, 2.0, 30.25, 40.0]),
                "easy": np.array([2, 0], dtype=np.int64),
                "hard": np.array([1], dtype=np.int32),
                "junk": np.array([], dtype=np.int64),
            }
        ],
    }


@pytest.mark.parametrize(
    ("protocol", "numpy_paths"),
    # Protocols 4-5 store names with their lengths, so the numpy 1.x rewrite below is for 2-3 only
    # (the GLOBAL opcode); 3 is what Python 3 wrote by default until 3.8.
    [(2, "numpy._core"), (3, "numpy._core"), (4, "numpy._core"), (5, "numpy._core"),
     (2, "numpy.core"), (3, "numpy.core")],
)
def test_numpy_arrays_under_either_numpy_module_path_are_read(tmp_path: Path, protocol: int, numpy_paths: str) -> None:
    data = pickle.dumps(numpy_ground_truth(), protocol=protocol)
    if numpy_paths == "numpy.core":
        # What numpy 1.x wrote (the 2018 files): the same globals under numpy.core.
        assert b"numpy._core." in data
        data = data.replace(b"numpy._core.", b"numpy.core.")
    (tmp_path / "gnd_roxford5k.pkl").write_bytes(data)

    truth = read_revisited_ground_truth(tmp_path)  # a folder holding one gnd_*.pkl works too

    assert truth.database == ("a", "b", "c")
    (query,) = truth.queries
    assert query == Query("q1_q1", "q1", (1.5, 2.0, 30.25, 40.0), {"easy": {"a", "c"}, "hard": {"b"}, "junk": set()})


def test_plain_lists_are_read_and_queries_keep_qimlist_order(tmp_path: Path) -> None:
    entry = {"bbx": [0, 0, 10, 10], "easy": [0], "hard": [], "junk": [1]}
    qimlist = [f"img_{i}" for i in range(12)][::-1]  # not sorted: the order must survive
    gnd = {"imlist": ["x", "y"], "qimlist": qimlist, "gnd": [entry] * 12}

    truth = read_revisited_ground_truth(write_pickle(tmp_path / "gnd.pkl", gnd))

    assert [q.image for q in truth.queries] == qimlist
    assert [q.name for q in truth.queries] == sorted(q.name for q in truth.queries)  # names sort in qimlist order
    assert truth.queries[0].name == "q01_img_11"
    assert truth.queries[0].labels == {"easy": {"x"}, "hard": frozenset(), "junk": {"y"}}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda g: g["gnd"][0].update(easy=[5]), r"indices \[5\] are outside imlist"),
        (lambda g: g["gnd"][0].update(hard=[0.5]), "expected a list of image indices"),
        (lambda g: g["gnd"][0].pop("junk"), "has no junk"),
        (lambda g: g["gnd"][0].update(bbx=[1, 2, 3]), "bbx must be four finite numbers"),
        (lambda g: g["gnd"].append(g["gnd"][0]), "one entry per qimlist image"),
        (lambda g: g["imlist"].append("a"), r"more than once: \['a'\]"),
        (lambda g: g.pop("qimlist"), "expected a dict with imlist, qimlist and gnd"),
    ],
)
def test_malformed_ground_truth_names_what_is_wrong(tmp_path: Path, change, message: str) -> None:
    gnd = {"imlist": ["a", "b"], "qimlist": ["q"], "gnd": [{"bbx": [0, 0, 5, 5], "easy": [0], "hard": [1], "junk": []}]}
    change(gnd)

    with pytest.raises(DatasetError, match=message):
        read_revisited_ground_truth(write_pickle(tmp_path / "gnd.pkl", gnd))


# --------------------------------------------------------------------------------------------
# roxford5k / rparis6k over the Oxford5k / Paris6k images


def revisited_gnd_for(layout: dict) -> dict:
    """Revisitop-style ground truth over a fake layout: each landmark's queries on its first images,
    which leave the database; the next image easy, the one after hard, the last one junk. Images that
    are broken (Paris's zero-byte JPEG) are not in imlist, as in the real rparis6k."""
    query_images = sorted({query.image for query in layout["queries"]})
    broken = {Path(relpath).stem for relpath in layout["corrupt"]}
    imlist = [Path(p).stem for p in layout["images"] if Path(p).stem not in set(query_images) | broken]
    imlist.reverse()  # imlist's order is the ground truth's own, not necessarily sorted
    gnd = []
    for image in query_images:
        landmark = image.rsplit("_", 1)[0]
        same = [i for i, name in enumerate(imlist) if name.rsplit("_", 1)[0] == landmark]
        gnd.append({"bbx": [1.0, 2.0, 30.0, 20.0], "easy": same[:1], "hard": same[1:2], "junk": same[2:]})
    return {"imlist": imlist, "qimlist": query_images, "gnd": gnd}


@pytest.fixture(scope="module")
def oxford(tmp_path_factory: pytest.TempPathFactory) -> dict:
    layout = make_oxford_layout(tmp_path_factory.mktemp("oxford"), images_per_landmark=5)
    layout["revisited"] = revisited_gnd_for(layout)
    write_pickle(layout["archive_dir"] / "gnd_roxford5k.pkl", layout["revisited"])
    return layout


@pytest.fixture(scope="module")
def paris(tmp_path_factory: pytest.TempPathFactory) -> dict:
    layout = make_paris_layout(tmp_path_factory.mktemp("paris"), images_per_landmark=5)
    layout["revisited"] = revisited_gnd_for(layout)
    write_pickle(layout["archive_dir"] / "gnd_rparis6k.pkl", layout["revisited"])
    return layout


def test_the_registry_rows_reuse_the_2007_images() -> None:
    for name, images_from in (("roxford5k", "oxford5k"), ("rparis6k", "paris6k")):
        spec = DATASETS[name]
        assert spec.images_from == images_from
        (ground_truth,) = spec.archives
        assert ground_truth.url == f"http://cmp.felk.cvut.cz/revisitop/data/datasets/{name}/gnd_{name}.pkl"


@pytest.mark.parametrize("dataset", ["roxford5k", "rparis6k"])
def test_revisited_dataset_from_the_mirror_has_exactly_imlist_as_database(
    tmp_path: Path, dataset: str, oxford: dict, paris: dict
) -> None:
    layout = oxford if dataset == "roxford5k" else paris
    behaviour = ServerBehaviour()
    with serve_directory(layout["archive_dir"], behaviour) as base_url:
        settings = quiet_settings(tmp_path / "data", mirror=base_url)
        collection = prepare_dataset(dataset, settings)
        again = prepare_dataset(dataset, settings)

    images_from = DATASETS[dataset].images_from
    expected_downloads = sorted([*layout["archives"], f"gnd_{dataset}.pkl"])
    assert sorted(request.path for request in behaviour.requests) == expected_downloads  # each file once
    assert collection.root == (tmp_path / "data" / images_from / "images").absolute()  # no copy of the images
    revisited = layout["revisited"]
    assert sorted(Path(p).stem for p in collection.images) == sorted(revisited["imlist"])
    assert not {Path(p).stem for p in collection.images} & set(revisited["qimlist"])  # queries are not rows
    assert [q.image for q in collection.queries] == revisited["qimlist"]
    assert all(collection.path_of(q.image).is_file() for q in collection.queries)
    assert [Path(p).stem for p in collection.query_images] == revisited["qimlist"]
    assert protocols_for(collection.queries) == [REVISITED_EASY, REVISITED_MEDIUM, REVISITED_HARD]
    assert again == collection
    assert (tmp_path / "data" / dataset / "archives" / f"gnd_{dataset}.pkl").is_file()


def test_images_already_prepared_are_not_downloaded_again(tmp_path: Path, oxford: dict) -> None:
    behaviour = ServerBehaviour()
    with serve_directory(oxford["archive_dir"], behaviour) as base_url:
        prepare_dataset("oxford5k", quiet_settings(tmp_path / "data", mirror=base_url))
        behaviour.requests.clear()
        # The ground-truth URL setting alone: the 2007 images are already here.
        prepare_dataset("roxford5k", quiet_settings(tmp_path / "data", ground_truth_url=base_url + "/"))

    assert [request.path for request in behaviour.requests] == ["gnd_roxford5k.pkl"]


def test_a_ground_truth_file_placed_by_hand_is_used_as_it_is(tmp_path: Path, oxford: dict, monkeypatch) -> None:
    import urllib.request

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("this test must not touch the network")

    monkeypatch.setattr(urllib.request.OpenerDirector, "open", refuse)
    settings = quiet_settings(tmp_path / "data")
    place_extracted(oxford, dataset_dir("oxford5k", settings))
    dataset_dir("roxford5k", settings).mkdir(parents=True)
    shutil.copy(oxford["archive_dir"] / "gnd_roxford5k.pkl", dataset_dir("roxford5k", settings))

    collection = prepare_dataset("roxford5k", settings)

    assert len(collection.images) == len(oxford["revisited"]["imlist"])


def test_a_database_image_missing_from_the_folder_is_an_error(tmp_path: Path, oxford: dict) -> None:
    images = tmp_path / "images"
    shutil.copytree(oxford["images_dir"], images)
    missing = oxford["revisited"]["imlist"][0]
    (images / f"{missing}.jpg").unlink()

    with pytest.raises(DatasetError, match=f"1 of the .* not under .*{missing}"):
        load_collection_dir("roxford5k", images, oxford["archive_dir"] / "gnd_roxford5k.pkl", "", "revisitop_pkl")


def test_a_hostile_ground_truth_download_is_refused(tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    marker = tmp_path / "the-command-ran"
    write_pickle(served / "gnd_roxford5k.pkl", {"imlist": RunsShellCommand(marker)})
    settings = quiet_settings(tmp_path / "data")
    (dataset_dir("oxford5k", settings) / "images").mkdir(parents=True)
    (dataset_dir("oxford5k", settings) / "images" / "a.jpg").write_bytes(b"not decoded here")
    (dataset_dir("oxford5k", settings) / "gt").mkdir()
    (dataset_dir("oxford5k", settings) / "gt" / "a_1_query.txt").write_text("oxc1_a 0 0 1 1\n")
    for label in ("good", "ok", "junk"):
        (dataset_dir("oxford5k", settings) / "gt" / f"a_1_{label}.txt").write_text("")

    with serve_directory(served) as base_url, pytest.raises(DatasetError, match="posix.system"):
        prepare_dataset("roxford5k", quiet_settings(tmp_path / "data", ground_truth_url=base_url))
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# Scoring: a hand-made gnd of five images


def test_easy_medium_hard_ap_and_mp_at_k_worked_by_hand(tmp_path: Path) -> None:
    # Five database images a..e; one query with easy = {a, e}, hard = {d}, junk = {b}; c is wrong.
    # A second query has no hard image: revisitop leaves it out of Hard's means.
    gnd = {
        "imlist": ["a", "b", "c", "d", "e"],
        "qimlist": ["q", "r"],
        "gnd": [
            {"bbx": [0, 0, 9, 9], "easy": [0, 4], "hard": [3], "junk": [1]},
            {"bbx": [0, 0, 9, 9], "easy": [2], "hard": [], "junk": []},
        ],
    }
    first, second = read_revisited_ground_truth(write_pickle(tmp_path / "gnd_roxford5k.pkl", gnd)).queries
    ranking = ["b", "a", "c", "d", "e"]

    def scores(protocol, query=first):
        return score_query(ranking, protocol.positives(query), protocol.ignored_ids(query))

    # AP sums, for the j-th positive (0-based) at 0-based rank r of the ranking without ignored
    # images, (j / r + (j + 1) / (r + 1)) / 2 / n_positives, with j / r = 1 when r = 0.
    #
    # Easy: positives a, e; b (junk) and d (hard) removed -> [a, c, e]: a at r=0, e at r=2.
    #   AP = (1 + 1)/2/2 + (1/2 + 2/3)/2/2 = 1/2 + 7/24 = 19/24.
    #   mP@k divides by min(k, 3), 3 = rank of the last positive: @1 = 1/1, @5 = @10 = 2/3
    #   (the usual P@5 = 2/5, P@10 = 2/10).
    easy = scores(REVISITED_EASY)
    assert easy.ap_oxford == approx(19 / 24)
    assert easy.precision_at_revisitop == {1: 1.0, 5: approx(2 / 3), 10: approx(2 / 3)}
    assert easy.precision_at == {1: 1.0, 5: approx(2 / 5), 10: approx(2 / 10)}
    # Medium: positives a, d, e; b removed -> [a, c, d, e]: a at 0, d at 2, e at 3.
    #   AP = (1 + 1)/2/3 + (1/2 + 2/3)/2/3 + (2/3 + 3/4)/2/3 = 24/72 + 14/72 + 17/72 = 55/72.
    #   mP@k divides by min(k, 4): @1 = 1, @5 = @10 = 3/4.
    medium = scores(REVISITED_MEDIUM)
    assert medium.ap_oxford == approx(55 / 72)
    assert medium.precision_at_revisitop == {1: 1.0, 5: approx(3 / 4), 10: approx(3 / 4)}
    # Hard: positive d; a, e (easy) and b removed -> [c, d]: d at 1.
    #   AP = (0/1 + 1/2)/2/1 = 1/4.  mP@1: cut-off min(1, 2) = 1, c is wrong -> 0; @5 = @10 = 1/2.
    hard = scores(REVISITED_HARD)
    assert hard.ap_oxford == approx(1 / 4)
    assert hard.precision_at_revisitop == {1: 0.0, 5: approx(1 / 2), 10: approx(1 / 2)}

    # Second query, Easy: positive c; b... none ignored -> [b, a, c, d, e]: c at r=2.
    #   AP = (0/2 + 1/3)/2 = 1/6; mP@1 = 0 (cut-off 1), @5 = @10 = 1/3 (cut-off 3).
    second_easy = scores(REVISITED_EASY, second)
    assert second_easy.ap_oxford == approx(1 / 6)
    assert second_easy.precision_at_revisitop == {1: 0.0, 5: approx(1 / 3), 10: approx(1 / 3)}
    assert scores(REVISITED_HARD, second) is None

    means = mean_scores([easy, second_easy])
    assert means["ap_oxford"] == approx((19 / 24 + 1 / 6) / 2)
    assert means["precision_at_revisitop"] == {1: approx(0.5), 5: approx(1 / 2), 10: approx(1 / 2)}
    hard_means = mean_scores([hard, scores(REVISITED_HARD, second)])
    assert (hard_means["n_queries"], hard_means["n_skipped"]) == (1, 1)


def test_revisitop_mp_at_k_charges_k_when_a_positive_was_never_ranked() -> None:
    # Positives x, y; y is not in the (truncated) ranking: its rank is infinite, so the cut-off is k.
    assert precision_at_k_revisitop(["x", "n"], {"x", "y"}, set(), 10) == approx(1 / 10)
    # Both ranked, last at 2: cut-off 2 whatever k beyond it.
    assert precision_at_k_revisitop(["x", "y", "n"], {"x", "y"}, set(), 10) == 1.0
    assert precision_at_k(["x", "y", "n"], {"x", "y"}, set(), 10) == approx(2 / 10)
    with pytest.raises(ValueError, match="no positives"):
        precision_at_k_revisitop(["x"], set(), set(), 1)


@pytest.mark.slow
def test_roxford5k_builds_over_imlist_and_evaluates_easy_medium_hard_with_and_without_query_expansion(
    tmp_path: Path, oxford: dict
) -> None:
    """The whole path a researcher runs: prepare, build, evaluate (untrained network, tiny images)."""
    import csv

    from cbir.backbones import BACKBONES
    from cbir.weights import Weights
    from cbir.build import BuildSettings, build_indexes
    from cbir.recipe import RecipeSettings
    from cbir.evaluation import EvaluationSettings, evaluate_collection, results_folder
    from cbir.layout import IndexLayout, read_collection_record

    with serve_directory(oxford["archive_dir"]) as base_url:
        collection = prepare_dataset("roxford5k", quiet_settings(tmp_path / "data", mirror=base_url))
    index_dir = tmp_path / "indexes"
    settings = BuildSettings(
        index_dir=index_dir,
        progress=False,
        store="exact",
        batch_size=8,
        recipe=RecipeSettings(weights=Weights.parse("none"), input_size=80),
    )
    build_indexes(collection, [BACKBONES["xception"]], settings)
    revisited = oxford["revisited"]
    record = read_collection_record(IndexLayout(index_dir), "roxford5k")
    # The query images are recorded apart from the rows, so the evaluation can describe them.
    assert [Path(p).stem for p in record.query_images] == revisited["qimlist"]

    results = evaluate_collection(EvaluationSettings(index_dir=index_dir, collection="roxford5k", progress=False))
    keys = {(row.protocol, row.metric, row.query_mode, row.reranking) for row in results.rows}
    assert {key[0] for key in keys} == {"easy", "medium", "hard"}
    assert {key[3] for key in keys} == {"", "αQE (n = 50, α = 3)"}
    assert len(keys) == len(results.rows) == 3 * 2 * 2 * 2
    for row in results.rows:
        assert row.n_queries == len(revisited["qimlist"]), row  # every query has an easy and a hard image
        assert 0 < row.map <= 1 and 0 < row.mp_at_10_revisitop <= 1
    with open(results_folder(index_dir, "roxford5k") / "per_query.csv", newline="") as handle:
        lines = list(csv.DictReader(handle))
    assert {line["reranking"] for line in lines} == {"", "αQE (n = 50, α = 3)"}
    assert len(lines) == len(results.rows) * len(revisited["qimlist"])
    # What revisitop's own compute_map reads: the rankings as indices into imlist (a permutation per
    # query), which give the same Medium mAP as the table, and the query descriptors in qimlist order.
    folder = results_folder(index_dir, "roxford5k")
    ranks, descriptors = np.load(folder / "xception.ranks.npy"), np.load(folder / "xception.queries.npy")
    imlist = revisited["imlist"]
    assert ranks.shape == (len(imlist), len(revisited["qimlist"])) and descriptors.shape == (len(revisited["qimlist"]), 2048)
    assert all(sorted(column) == list(range(len(imlist))) for column in ranks.T)
    from cbir.metrics import ap_oxford

    medium = []
    for column, entry in zip(ranks.T, revisited["gnd"]):
        positives = {imlist[i] for i in (*entry["easy"], *entry["hard"])}
        medium.append(ap_oxford([imlist[i] for i in column], positives, {imlist[i] for i in entry["junk"]}))
    (row,) = [r for r in results.rows if (r.protocol, r.metric, r.query_mode, r.reranking) == ("medium", "cosine", "cropped", "")]
    assert np.mean(medium) == approx(row.map_oxford)


@pytest.mark.slow
def test_distractors_are_appended_after_imlist_and_the_ground_truth_still_scores(tmp_path: Path, oxford: dict) -> None:
    from cbir.backbones import BACKBONES
    from cbir.weights import Weights
    from cbir.build import BuildSettings, build_indexes
    from cbir.datasets import with_distractors
    from cbir.evaluation import EvaluationSettings, evaluate_collection, results_folder
    from cbir.layout import IndexLayout, build_command, read_collection_record
    from cbir.metrics import ap_oxford
    from cbir.protocols import QueryMode
    from cbir.recipe import RecipeSettings
    from synthetic import make_gallery

    with serve_directory(oxford["archive_dir"]) as base_url:
        plain = prepare_dataset("roxford5k", quiet_settings(tmp_path / "data", mirror=base_url))
    make_gallery(tmp_path / "r1m" / "jpg", 6, start_seed=700)
    collection = with_distractors(plain, tmp_path / "r1m")
    assert collection.name == "roxford5k+r1m" and len(collection.images) == len(plain.images) + 6
    imlist = oxford["revisited"]["imlist"]
    assert collection.database_order[: len(imlist)] == tuple(imlist)  # ground-truth indices stay valid
    assert all(collection.path_of(relpath).is_file() for relpath in collection.distractors)
    assert build_command(collection.name) == "python build_index.py --dataset roxford5k --distractors <folder>"
    # A distractor named like a database image would make the ground truth ambiguous: refused.
    clash = tmp_path / "clash"
    clash.mkdir()
    shutil.copy(plain.path_of(imlist[0]), clash / Path(plain.path_of(imlist[0])).name)
    with pytest.raises(DatasetError, match="named like images of roxford5k"):
        with_distractors(plain, clash)

    index_dir = tmp_path / "indexes"
    settings = BuildSettings(
        index_dir=index_dir,
        progress=False,
        store="exact",
        batch_size=8,
        recipe=RecipeSettings(weights=Weights.parse("none"), input_size=80),
    )
    build_indexes(collection, [BACKBONES["xception"]], settings)
    assert read_collection_record(IndexLayout(index_dir), collection.name).n_distractors == 6
    results = evaluate_collection(EvaluationSettings(
        index_dir=index_dir, collection=collection.name, metrics=["cosine"], query_modes=[QueryMode.CROPPED],
        query_expansion=None, progress=False,
    ))  # fmt: skip
    assert {row.n_images for row in results.rows} == {len(imlist) + 6}
    ranks = np.load(results_folder(index_dir, collection.name) / "xception.ranks.npy")
    assert ranks.shape[0] == len(imlist) + 6 and all(sorted(c) == list(range(len(imlist) + 6)) for c in ranks.T)
    names = list(collection.database_order)
    for protocol, labels in (("easy", ("easy",)), ("medium", ("easy", "hard")), ("hard", ("hard",))):
        ignored_labels = {"easy": ("hard", "junk"), "medium": ("junk",), "hard": ("easy", "junk")}[protocol]
        expected = []
        for column, entry in zip(ranks.T, oxford["revisited"]["gnd"]):
            positives = {imlist[i] for label in labels for i in entry[label]}
            ignored = {imlist[i] for label in ignored_labels for i in entry[label]}
            expected.append(ap_oxford([names[i] for i in column], positives, ignored))
        (row,) = [r for r in results.rows if r.protocol == protocol]
        assert np.mean(expected) == approx(row.map_oxford)


@pytest.mark.slow
def test_build_index_evaluate_prints_the_easy_medium_hard_table_with_and_without_query_expansion(
    tmp_path: Path, oxford: dict
) -> None:
    import re
    import subprocess
    import sys

    from cbir.evaluation import load_results, revisited_table
    from cbir_ui.formatting import REVISITED_HEADERS, revisited_rows

    repo = Path(__file__).resolve().parents[1]
    with serve_directory(oxford["archive_dir"]) as base_url:
        result = subprocess.run(
            [sys.executable, str(repo / "build_index.py"), "--dataset", "roxford5k", "--mirror", base_url,
             "--data-dir", str(tmp_path / "data"), "--index-dir", str(tmp_path / "idx"), "--weights", "none",
             "--input-size", "80", "--store", "exact", "--evaluate", "--no-progress"],
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(repo)), capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "As papers print it (revisitop's mAP and mP@10): E / M / H" in result.stdout
    assert re.search(r"^xception \+ αQE \(n = 50, α = 3\)\* +cosine +cropped +mAP ", result.stdout, re.MULTILINE)
    lines = revisited_table(load_results(tmp_path / "idx", "roxford5k"))
    assert len(lines) == 2 * 2 * 2 and all(set(line.map) == {"easy", "medium", "hard"} for line in lines)
    table = revisited_rows(lines)
    assert [len(row) for row in table] == [len(REVISITED_HEADERS)] * len(lines)
    first = lines[0]
    assert table[0][4:7] == [round(100 * first.map[p], 2) for p in ("easy", "medium", "hard")]
