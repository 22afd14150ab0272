"""Extraction checkpoints: only work of the same recipe over the same files is ever resumed.

A stub extractor (the mean colour of each image, repeated to the recipe's width) stands in for the
network, so these run in a second and the expected rows are known.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.extract import extract_descriptors
from cbir.recipe import Recipe
from synthetic import make_gallery


@dataclass
class MeanColour:
    """Describes an image by its mean colour; counts the images it was asked to describe."""

    recipe: Recipe
    described: int = 0

    @property
    def input_size(self) -> int:
        return self.recipe.input_size

    @property
    def dim(self) -> int:
        return self.recipe.dim

    def describe(self, images: list[np.ndarray], *, pad_to: int | None = None) -> np.ndarray:
        self.described += len(images)
        means = np.stack([image.reshape(-1, 3).mean(axis=0) for image in images]).astype(np.float32)
        return np.tile(means, (1, self.recipe.dim // 3 + 1))[:, : self.recipe.dim]


def stub(input_size: int = 96, weights: str = "none") -> MeanColour:
    return MeanColour(Recipe.create("xception", input_size=input_size, weights=weights))


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    make_gallery(tmp_path / "photos", 12)
    return tmp_path / "photos"


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def interrupted_run(extractor, photos: Path, checkpoints: Path, after: int) -> None:
    def stop(done: int, total: int) -> None:
        if done >= after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_descriptors(extractor, photos, names(photos), batch_size=4, checkpoint_dir=checkpoints,
                            checkpoint_every=4, progress=False, on_progress=stop)  # fmt: skip


def run(extractor, photos: Path, checkpoints: Path):
    return extract_descriptors(extractor, photos, names(photos), batch_size=4, checkpoint_dir=checkpoints,
                               checkpoint_every=4, progress=False)  # fmt: skip


def test_a_rerun_of_the_same_recipe_resumes_from_the_checkpoints(photos, tmp_path):
    interrupted_run(stub(), photos, tmp_path / "ck", after=8)
    extractor = stub()
    result = run(extractor, photos, tmp_path / "ck")
    assert result.resumed_images == 8 and extractor.described == 4  # only the last chunk was described
    fresh = run(stub(), photos, tmp_path / "fresh")
    assert result.images == fresh.images and np.array_equal(result.descriptors, fresh.descriptors)


@pytest.mark.parametrize(
    "other",
    [lambda: stub(input_size=80), lambda: stub(weights="imagenet"), lambda: MeanColour(Recipe.create("inception_v3", input_size=96, weights="none"))],
    ids=["input-size", "weights", "backbone"],
)
def test_checkpoints_of_another_recipe_are_never_resumed(photos, tmp_path, caplog, other):
    interrupted_run(stub(), photos, tmp_path / "ck", after=8)
    extractor = other()
    with caplog.at_level(logging.INFO, logger="cbir.extract"):
        result = run(extractor, photos, tmp_path / "ck")
    assert result.resumed_images == 0 and extractor.described == 12
    assert "describing every image again" in caplog.text
    assert np.array_equal(result.descriptors, run(other(), photos, tmp_path / "fresh").descriptors)


def test_an_image_replaced_between_runs_is_described_again(photos, tmp_path, caplog):
    interrupted_run(stub(), photos, tmp_path / "ck", after=8)
    replaced = photos / "picture_005.jpg"  # in the second finished chunk
    Image.new("RGB", (160, 120), (250, 10, 10)).save(replaced)
    os.utime(replaced, ns=(1, 1))  # even with an old modification time: its size changed
    extractor = stub()
    with caplog.at_level(logging.INFO, logger="cbir.extract"):
        result = run(extractor, photos, tmp_path / "ck")
    assert "picture_005.jpg changed since it was described" in caplog.text
    assert result.resumed_images == 4 and extractor.described == 8
    row = result.images.index("picture_005.jpg")
    assert result.descriptors[row][:3] == pytest.approx([250, 10, 10], abs=3)


def test_an_image_rewritten_with_the_same_size_is_caught_by_its_modification_time(photos, tmp_path):
    interrupted_run(stub(), photos, tmp_path / "ck", after=8)
    target = photos / "picture_002.jpg"
    data = bytearray(target.read_bytes())
    data[-3] ^= 0xFF  # same size, other content
    target.write_bytes(bytes(data))
    os.utime(target, ns=(10**18, 10**18))
    extractor = stub()
    result = run(extractor, photos, tmp_path / "ck")
    assert result.resumed_images == 0 and extractor.described == 12


def test_unreadable_files_are_skipped_with_the_reason_and_rows_stay_aligned(photos, tmp_path):
    (photos / "picture_006.jpg").write_bytes(b"")  # in the middle of a batch: a short batch follows
    (photos / "zz_notes.png").write_text("not a picture")
    result = run(stub(), photos, tmp_path / "ck")
    assert [(s.image, "empty" in s.reason) for s in result.skipped] == [("picture_006.jpg", True), ("zz_notes.png", False)]
    assert result.skipped[0].reason == "picture_006.jpg: file is empty"  # relative: no machine's path in it
    assert len(result.images) == len(result.descriptors) == 11 and "picture_006.jpg" not in result.images
    for image, row in zip(result.images, result.descriptors):
        with Image.open(photos / image) as picture:
            mean = np.asarray(picture.convert("RGB").resize((96, 96)), np.float32).reshape(-1, 3).mean(0)
        assert row[:3] == pytest.approx(mean, abs=1.0), image


def test_a_renamed_image_is_described_again_even_when_the_count_is_the_same(photos, tmp_path):
    interrupted_run(stub(), photos, tmp_path / "ck", after=8)
    (photos / "picture_001.jpg").rename(photos / "picture_001b.jpg")
    extractor = stub()
    result = run(extractor, photos, tmp_path / "ck")
    assert result.resumed_images == 0 and extractor.described == 12
    assert "picture_001b.jpg" in result.images


def test_checkpoints_of_another_image_list_of_the_same_length_are_not_resumed(photos, tmp_path):
    interrupted_run(stub(), photos, tmp_path / "ck", after=8)
    # One image added at the front, one removed at the end: same count, every old file unchanged.
    (photos / "picture_011.jpg").rename(tmp_path / "moved_away.jpg")
    Image.new("RGB", (160, 120), (0, 200, 0)).save(photos / "picture_000a.jpg")
    result = run(stub(), photos, tmp_path / "ck")
    assert result.images == names(photos)  # every image once, in order
    assert result.resumed_images == 0


def test_with_bars_off_progress_goes_to_the_log(photos, tmp_path, caplog, monkeypatch):
    import cbir.extract

    monkeypatch.setattr(cbir.extract, "LOG_EVERY_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="cbir.extract"):
        run(stub(), photos, tmp_path / "ck")
    lines = [r.getMessage() for r in caplog.records if "images/s)" in r.getMessage()]
    assert lines[0].startswith("xception (untrained): 4 / 12 images (") and lines[-1].startswith("xception (untrained): 12 / 12 images")
