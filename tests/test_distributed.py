"""--executor ray (cbir.distributed): on a local 2-CPU Ray cluster, the same rows, order and skip
list as the local path; checkpoints either executor resumes; a clear message without Ray.

Tolerance, stated once: Ray's descriptors equal the local ones to max |difference| <= 1e-5 x the
largest |value| (the same network on the same pixels in the same batches; bench/ray_extract.py
measured them bit-identical).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import build_index
from cbir.extract import Checkpoints, extract_descriptors
from cbir.index import load_index
from cbir.recipe import Recipe
from optional import need
from synthetic import draw_picture, make_gallery

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5
RECIPE = Recipe.create("xception", input_size=80, weights="none")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for the module: 2 CPUs, no dashboard; shut down after the last test."""
    ray = need("ray")

    address = os.environ.pop("RAY_ADDRESS", None)  # never a real cluster from the tester's shell
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # connect() then stays on it
    yield ray
    ray.shutdown()
    if address is not None:
        os.environ["RAY_ADDRESS"] = address


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """20 photos, landscape and portrait, one of them corrupt (in the middle of a batch)."""
    folder = tmp_path_factory.mktemp("ray") / "photos"
    make_gallery(folder, 16)
    for seed in range(4):
        draw_picture(100 + seed, 120, 160).save(folder / f"portrait_{seed}.jpg", quality=92)
    (folder / "picture_005.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    return folder


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def assert_same_rows(result, expected) -> None:
    assert result.images == expected.images
    assert result.skipped == expected.skipped
    scale = np.abs(expected.descriptors).max()
    assert scale > 0
    assert np.abs(result.descriptors - expected.descriptors).max() <= TOLERANCE * scale


def stop_before_chunk(monkeypatch, first_unsaved: int) -> None:
    """The driver dies when a chunk is due to be saved: the chunk starting at `first_unsaved` raises
    instead of being written, so the chunks before it are on disk and nothing after."""
    save = Checkpoints.save

    def save_once(self, start, chunk, dim):
        if start == first_unsaved:
            raise KeyboardInterrupt
        save(self, start, chunk, dim)

    monkeypatch.setattr(Checkpoints, "save", save_once)


class Counting:
    """An extractor that counts the images it describes."""

    def __init__(self, extractor) -> None:
        self.extractor, self.described = extractor, 0
        self.recipe, self.input_size, self.dim = extractor.recipe, extractor.input_size, extractor.dim

    def describe(self, images, *, pad_to=None):
        self.described += len(images)
        return self.extractor.describe(images, pad_to=pad_to)


def local_run(extractor, photos: Path, checkpoints: Path | None):
    return extract_descriptors(extractor, photos, names(photos), batch_size=4, checkpoint_dir=checkpoints,
                               checkpoint_every=8, progress=False)  # fmt: skip


def test_a_ray_build_equals_the_local_build(ray_cluster, photos, tmp_path):
    # GeM keeps each image's aspect ratio: two shapes travel through Ray (71 x 80 and 80 x 71).
    common = ["--images", str(photos), "--name", "demo", "--backbones", "xception", "--weights", "none",
              "--input-size", "80", "--pooling", "gem", "--batch-size", "4", "--checkpoint-every", "8",
              "--store", "exact", "--no-progress"]  # fmt: skip
    assert build_index.main([*common, "--index-dir", str(tmp_path / "local")]) == 0
    assert build_index.main([*common, "--index-dir", str(tmp_path / "ray"), "--executor", "ray"]) == 0
    local = load_index(tmp_path / "local" / "demo" / "xception-gem")
    ray = load_index(tmp_path / "ray" / "demo" / "xception-gem")
    assert ray.manifest.images == local.manifest.images and len(ray.manifest.images) == 19
    assert ray.manifest.skipped == local.manifest.skipped
    assert [s.image for s in ray.manifest.skipped] == ["picture_005.jpg"]
    scale = np.abs(np.asarray(local.descriptors)).max()
    assert np.abs(np.asarray(ray.descriptors) - np.asarray(local.descriptors)).max() <= TOLERANCE * scale
    assert not any((tmp_path / "ray").rglob("chunk_*.npz"))  # removed once the index is written, as locally


def test_a_killed_run_resumes_on_either_executor_describing_only_the_rest(ray_cluster, photos, tmp_path, monkeypatch,
                                                                         extractors):  # fmt: skip
    """local (killed after chunk 0) -> Ray (resumes, killed after chunk 1) -> local (resumes, finishes)."""
    from cbir.distributed import extract_on_ray

    checkpoints = tmp_path / "ck"
    with monkeypatch.context() as patched:
        stop_before_chunk(patched, 8)
        with pytest.raises(KeyboardInterrupt):
            local_run(extractors.get(RECIPE), photos, checkpoints)
    first = checkpoints / "chunk_00000000.npz"
    written = first.stat().st_mtime_ns
    progress: list[int] = []
    with monkeypatch.context() as patched:
        stop_before_chunk(patched, 16)
        with pytest.raises(KeyboardInterrupt):
            extract_on_ray(RECIPE, photos, names(photos), batch_size=4, checkpoint_dir=checkpoints, checkpoint_every=8,
                           progress=False, on_progress=lambda done, total: progress.append(done))  # fmt: skip
    assert progress[0] == 8  # Ray was given the images after the local run's chunk...
    assert first.stat().st_mtime_ns == written  # ...and did not describe the first 8 again
    assert sorted(p.name for p in checkpoints.glob("chunk_*")) == ["chunk_00000000.npz", "chunk_00000008.npz"]
    counting = Counting(extractors.get(RECIPE))
    resumed = local_run(counting, photos, checkpoints)  # the local path reads Ray's chunk as its own
    assert resumed.resumed_images == 16 and counting.described == 4
    assert_same_rows(resumed, local_run(extractors.get(RECIPE), photos, None))


def test_without_ray_the_message_names_the_install(photos, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code = build_index.main(["--images", str(photos), "--weights", "none", "--input-size", "80", "--executor", "ray",
                             "--index-dir", str(tmp_path / "idx"), "--no-progress"])  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err
    assert "--executor ray needs Ray Data" in error and "pip install -r requirements-scale.txt" in error


def test_the_library_and_the_local_build_never_import_ray():
    code = "import sys, build_index, cbir.build, cbir.search, cbir.distributed; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
