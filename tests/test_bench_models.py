"""Smoke tests of the model benchmarks (extraction, end to end, the page): they run from a fresh clone and write their results."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from benches import run_bench
from optional import need

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_extract_benchmark_quick_run_writes_results(tmp_path):
    run_bench("extract.py", "--quick", "--input-size", "80", "--out", str(tmp_path))
    report = json.loads((tmp_path / "extract-quick.json").read_text())
    assert report["cores"] == os.cpu_count() and report["command"].startswith("python bench/extract.py")
    (row,) = report["rows"]
    assert row["backbone"] == "xception" and row["input_size"] == 80
    for key in ("network_images_per_second", "project_images_per_second", "study_images_per_second"):
        assert row[key] > 0
    assert row["project_over_network"] == pytest.approx(
        row["project_images_per_second"] / row["network_images_per_second"], rel=0.01
    )
    assert "| xception | 80 |" in (tmp_path / "extract-quick.md").read_text()


@pytest.mark.slow
def test_end_to_end_benchmark_quick_run_writes_results(tmp_path):
    run_bench("e2e.py", "--quick", "--images", "500", "--out", str(tmp_path))
    report = json.loads((tmp_path / "e2e-quick.json").read_text())
    (row,) = report["rows"]
    assert row["backbone"] == "xception" and row["indexed_images"] == 500
    assert 0 < row["exact_search_ms_median"] < row["total_ms_median"] and row["annoy_search_ms_median"] > 0
    # 500 rows are well under the exact-search limit: the default path is the exact scan.
    assert row["default_search_is_exact"] is True
    assert row["describe_ms_median"] > 0 and row["resident_mb_after_use"] > report["resident_mb_before_any_backbone"]
    assert row["search_share_of_describe"] == pytest.approx(
        row["exact_search_ms_median"] / row["describe_ms_median"], rel=0.05
    )
    assert row["annoy_share_of_describe"] == pytest.approx(
        row["annoy_search_ms_median"] / row["describe_ms_median"], rel=0.05
    )
    assert "| xception | 96 |" in (tmp_path / "e2e-quick.md").read_text()


@pytest.mark.slow
@pytest.mark.browser
def test_page_benchmark_quick_run_writes_results(tmp_path):
    run_bench("page.py", "--quick", "--query-widths", "320,2400", "--out", str(tmp_path))
    report = json.loads((tmp_path / "page-quick.json").read_text())
    small, large, *verified = report["sizes"]
    assert (small["photo"], large["photo"]) == ("320 x 240", "2400 x 1800") and report["k"] == 12
    # The same sizes again with "Verify with local features" ticked (the index built with them).
    assert [size["photo"] for size in verified] == ["320 x 240", "2400 x 1800"] and report["local_features"]
    assert [size["verified"] for size in report["sizes"]] == [False, False, True, True]
    for size in report["sizes"]:
        assert size["searches"] == 3 and len(size["page_ms"]) == 3
        # The page can never answer faster than the handler behind it.
        assert size["page_median_ms"] > size["handler_median_ms"] > 0 and size["api_median_ms"] > 0
        # The photo went up once, when chosen: a search re-sends nothing.
        assert size["uploads_during_searches"] == 0
    # Past 2,048 px the page sends a smaller copy; below, the photo as it is.
    assert large["uploaded_bytes_median"] < large["jpeg_bytes"] and small["uploaded_bytes_median"] == small["jpeg_bytes"]
    assert (tmp_path / "page-quick.md").read_text().count("\n| ") == 5


@pytest.mark.slow
def test_runtime_benchmark_quick_run_compares_each_setting_with_the_project_s(tmp_path):
    run_bench("runtime.py", "--quick", "--out", str(tmp_path))
    report = json.loads((tmp_path / "runtime-quick.json").read_text())
    rows = report["rows"]
    assert {row["setting"] for row in rows} >= {"project", "batch", "threads"}
    assert all(row["backbone"] == "xception" for row in rows)
    measured = [row for row in rows if "images_per_second" in row]
    project = sorted(row["images_per_second"] for row in measured if row["setting"] == "project")
    assert len(project) == 2 and all(rate > 0 for rate in project)
    for row in measured:
        # Each ratio is against the median of the two project runs.
        assert row["over_project"] == pytest.approx(row["images_per_second"] / (sum(project) / 2), rel=0.01)
    assert {tuple(row["params"].items()) for row in measured if row["setting"] == "batch"} == {
        (("threads", "default"), ("batch", 4)), (("threads", "default"), ("batch", 8))}  # fmt: skip
    for row in rows:
        if row["setting"] == "openvino" and "note" not in row:
            # float32 OpenVINO must reproduce Keras' descriptors; bfloat16 only approximately.
            assert row["min_cosine"] > (0.99999 if row["params"]["precision"] == "f32" else 0.999)
    assert "| xception | project | threads=default, batch=16 |" in (tmp_path / "runtime-quick.md").read_text()


def test_runtime_benchmark_keeps_the_rows_measured_before_a_worker_is_killed(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_runtime", REPO / "bench" / "runtime.py")
    runtime = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runtime)
    measured = {"backbone": "efficientnet_v2_l", "setting": "batch", "params": {"batch": 8}, "images_per_second": 1.5}
    stdout = "\n".join(["TensorFlow chatter", runtime.ROW_MARK + json.dumps(measured),
                        runtime.ROW_MARK + json.dumps({"stage": "openvino"})])  # fmt: skip
    killed = subprocess.CompletedProcess([], returncode=-9, stdout=stdout)
    monkeypatch.setattr(runtime.subprocess, "run", lambda *args, **kwargs: killed)
    rows = runtime.run_worker({"backbone": "efficientnet_v2_l"})
    assert rows[0] == measured
    assert rows[1]["setting"] == "openvino" and "out-of-memory" in rows[1]["note"]
    assert len(rows) == 2


@pytest.mark.slow
def test_load_benchmark_quick_run_answers_everyone_or_says_busy(tmp_path):
    run_bench("load.py", "--quick", "--out", str(tmp_path))
    report = json.loads((tmp_path / "load-quick.json").read_text())
    within, over = report["rows"][:-1], report["rows"][-1]
    assert [row["clients"] for row in within] == [1, 4]
    for row in within:  # inside the queue: every search answered
        assert row["answered"] == row["requests"] and row["busy"] == row["other"] == 0
    # Past the queue (4 waiting + 1 running): the rest are told the app is busy, nothing else.
    assert over["clients"] == 54 and over["other"] == 0
    assert over["answered"] >= 5 and over["busy"] >= 40 and over["answered"] + over["busy"] == 54
    assert [b["batch"] for b in report["network_batches"]] == [1, 4, 8]


@pytest.mark.slow
def test_bundle_benchmark_quick_run_writes_results(tmp_path):
    run_bench("bundle.py", "--quick", "--out", str(tmp_path))
    report = json.loads((tmp_path / "bundle-quick.json").read_text())
    assert report["images"] == 200 and report["bundle_mb"] > 1
    cold, warm = report["rows"]
    assert cold["start"] == "cold" and warm["start"] == "warm" and cold["seconds_to_page"] > 0
    assert warm["resident_mb_after_xception"] > warm["resident_mb_at_start"]


@pytest.mark.slow
def test_recipes_benchmark_quick_run_times_every_recipe_against_gap(tmp_path):
    run_bench("recipes.py", "--quick", "--input-size", "80", "--out", str(tmp_path))
    report = json.loads((tmp_path / "recipes.json").read_text())
    assert [row["recipe"] for row in report["extraction"]] == [
        "xception", "xception-gem", "xception-rmac", "xception-gem-ms1_0.707_0.5",
    ]  # fmt: skip
    gap = report["extraction"][0]["images_per_second"]
    for row in report["extraction"]:
        assert row["images_per_second"] > 0
        assert row["time_vs_gap"] == pytest.approx(gap / row["images_per_second"], abs=0.01)
    assert {p["what"] for p in report["pooling_placement"]} >= {"gem in graph", "gem in numpy", "trunk alone"}
    assert any(c["what"] == "exact cosine top-100, 5,063 x 512" and c["ms"] > 0 for c in report["costs"])


def test_reranking_benchmark_quick_run_times_query_expansion_and_dba(tmp_path):
    run_bench("reranking.py", "--quick", "--out", str(tmp_path))
    rows = json.loads((tmp_path / "reranking.json").read_text())["rows"]
    assert [row["what"] for row in rows] == [
        "top 12", "top 12 + αQE", "whole ranking", "whole ranking + αQE", "DBA k = 10, every row (once per index)",
    ]  # fmt: skip
    assert all(row["ms"] > 0 and row["rows"] == 1000 and row["dim"] == 512 for row in rows)


def test_resume_simulation_quick_run_resumes_half_way(tmp_path):
    run_bench("resume.py", "--quick", "--out", str(tmp_path))
    report = json.loads((tmp_path / "resume.json").read_text())
    assert report["images"] == 20_000 and 9_000 <= report["resumed_images"] <= 10_000
    assert report["checkpoint_files"] == report["resumed_images"] // 512


def needs_openvino() -> None:
    need("openvino")


@pytest.mark.slow
def test_runtimes_benchmark_quick_run_states_agreement_and_the_noise_floor(tmp_path):
    needs_openvino()
    run_bench("runtimes.py", "--quick", "--out", str(tmp_path))
    report = json.loads((tmp_path / "runtimes-quick.json").read_text())
    rows = {(row["runtime"], row["turn"]): row for row in report["rows"]}
    keras_rates = [rows[("keras", turn)]["images_per_second"] for turn in (0, 3)]
    f32 = rows[("openvino-f32", 1)]
    assert f32["over_keras"] == pytest.approx(f32["images_per_second"] / (sum(keras_rates) / 2), rel=0.01)
    assert f32["min_cosine"] > 0.99999 and f32["top10_overlap"] == 1.0
    # Keras against itself (pictures one at a time): the floor the runtimes' agreement is read against.
    assert rows[("keras", 0)]["self_min_cosine"] > 0.99999 and rows[("keras", 3)]["self_min_cosine"] is None
    # xception has batch norm: its random weights were given pictures' statistics, and say so.
    assert "batch-norm statistics" in f32["weights"] and "batch-norm statistics" in report["weights"]
    bf16 = rows[("openvino-bf16", 2)]
    assert ("images_per_second" in bf16) == ("BF16" in report["openvino_cpu_capabilities"])


@pytest.mark.slow
def test_runtime_map_benchmark_quick_run_evaluates_each_runtime_s_own_index(tmp_path):
    needs_openvino()
    run_bench("runtime_map.py", "--quick", "--out", str(tmp_path))
    report = json.loads((tmp_path / "runtime-map-quick.json").read_text())
    rows = {(row["runtime"], row["query_mode"]): row for row in report["rows"]}
    control = "keras, database 1 image a batch"  # Keras against itself: the floor
    assert {(runtime, mode) for runtime, mode in rows if runtime != "openvino-bf16"} == {
        (runtime, mode) for runtime in ("keras", "openvino-f32", control) for mode in ("full", "cropped")}  # fmt: skip
    assert rows[("keras", "full")]["recipe"] == "xception" and rows[("openvino-f32", "full")]["recipe"] == "xception-ovf32"
    for (runtime, mode), row in rows.items():
        assert row["n_queries"] == 6 and 0 < row["map"] <= 1
        base = rows[("keras", mode)]["map"]
        assert row["map_change"] == pytest.approx(row["map"] - base)
    # float32 OpenVINO gives Keras' descriptors, so the same rankings and the same mAP.
    assert abs(rows[("openvino-f32", "cropped")]["map_change"]) < 1e-6
    assert rows[("openvino-f32", "cropped")]["queries_top10_differ"] == 0
    assert rows[(control, "cropped")]["recipe"] == "xception" and abs(rows[(control, "cropped")]["map_change"]) < 1e-6
    assert rows[(control, "cropped")]["database_batch"] == 1 and rows[("keras", "cropped")]["database_batch"] == 16
    assert "| xception | openvino-f32 | 80 | 6 | cropped |" in (tmp_path / "runtime-map-quick.md").read_text()


@pytest.mark.slow
def test_calibrated_weights_hold_the_pictures_batch_norm_statistics(tmp_path):
    """bench/calibrated.py: the benchmarks' stand-in for trained weights keeps activations in range."""
    import keras
    from synthetic import draw_picture

    from cbir.backbones import get_backbone
    from cbir.trunks import build_trunk
    from cbir.weights import Weights

    spec = importlib.util.spec_from_file_location("bench_calibrated", REPO / "bench" / "calibrated.py")
    calibrated = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(calibrated)
    assert calibrated.calibrated_weights("vgg16", 64, tmp_path / "vgg16.weights.h5") == "none"  # no batch norm
    path = calibrated.calibrated_weights("xception", 80, tmp_path / "xception.weights.h5")
    assert path == str(tmp_path / "xception.weights.h5")
    trunk = build_trunk(get_backbone("xception"), Weights.parse(path), None, study_layer=False)
    first = next(layer for layer in trunk.model.layers if isinstance(layer, keras.layers.BatchNormalization))
    # The first batch norm follows the first convolution: its statistics are now those of the pictures'
    # responses, not the initial mean 0 / variance 1; so that layer's output on the pictures is standardised.
    assert np.abs(np.asarray(first.moving_mean)).max() > 1e-3
    pictures = np.stack([np.asarray(draw_picture(seed, 160, 120).resize((80, 80))) for seed in range(16)])
    probe = keras.Model(trunk.model.input, first.output)
    normalised = np.asarray(probe(trunk.preprocess(pictures.astype(np.float32)), training=False))
    assert np.abs(normalised.mean(axis=(0, 1, 2))).max() < 1e-2
    assert np.allclose(normalised.std(axis=(0, 1, 2)), 1, atol=0.05)
