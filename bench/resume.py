"""Does resuming an interrupted extraction hold at a million images? A simulation, without decoding.

    python bench/resume.py                  # 1,000,000 paths
    python bench/resume.py --quick          # 20,000 paths

The paths name files that do not exist, so every image is "skipped" at once and the run measures
only what surrounds the network: the listing, the decoding queue, the checkpoints (one file per
512 images) and, after an interrupt half way, the resume (reading every checkpoint back and
checking each file's stamp). A real R1M build adds the forward pass, about 5-9 images/s per backbone
on 2 cores (docs/performance.md), so this overhead is what must stay small beside it.
Results go to bench/results/resume.json and resume.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import write_report  # noqa: E402
from cbir.extract import DEFAULT_CHECKPOINT_EVERY, extract_descriptors  # noqa: E402
from cbir.recipe import Recipe  # noqa: E402


class NeverCalled:
    """Stands in for the network: with no readable file it must never be asked to describe."""

    def __init__(self) -> None:
        self.recipe = Recipe.create("xception", weights="none")
        self.input_size, self.dim = self.recipe.input_size, self.recipe.dim

    def describe(self, images, *, pad_to=None):
        raise AssertionError("nothing should reach the network in this simulation")


class Interrupt(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--name", default="resume")
    arguments = parser.parse_args(argv)
    total = 20_000 if arguments.quick else arguments.images
    logging.basicConfig(level=logging.ERROR)  # a million "skipping" warnings would measure the logger
    started = time.perf_counter()
    paths = [f"r1m/{index // 1000:04d}/{index:07d}.jpg" for index in range(total)]
    listing = time.perf_counter() - started
    extractor = NeverCalled()
    half = total // 2

    def stop_half_way(done: int, _: int) -> None:
        if done >= half:
            raise Interrupt

    with tempfile.TemporaryDirectory() as temporary:
        root, checkpoints = Path(temporary) / "images", Path(temporary) / "checkpoints"
        root.mkdir()
        started = time.perf_counter()
        try:
            extract_descriptors(extractor, root, paths, checkpoint_dir=checkpoints, progress=False,
                                on_progress=stop_half_way)  # fmt: skip
        except Interrupt:
            pass
        first = time.perf_counter() - started
        files = len(list(checkpoints.glob("chunk_*.npz")))
        size = sum(path.stat().st_size for path in checkpoints.iterdir())
        started = time.perf_counter()
        result = extract_descriptors(extractor, root, paths, checkpoint_dir=checkpoints, progress=False)
        second = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert len(result.skipped) == total and result.resumed_images >= half - DEFAULT_CHECKPOINT_EVERY
    rows = [
        ["paths listed", total, f"{listing:.2f} s"],
        ["first run, interrupted half way", result.resumed_images, f"{first:.1f} s ({first / half * 1e6:.0f} µs per image)"],
        ["checkpoint files / bytes at the interrupt", files, f"{size / 2**20:.1f} MB"],
        ["second run: resumed images / time for the rest", result.resumed_images, f"{second:.1f} s"],
        ["peak memory of the process", "", f"{peak:.0f} MB"],
    ]  # fmt: skip
    report = {"command": "python bench/resume.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "cores": os.cpu_count(), "images": total, "listing_seconds": listing, "first_run_seconds": first,
              "checkpoint_files": files, "checkpoint_bytes": size, "resumed_images": result.resumed_images,
              "second_run_seconds": second, "peak_rss_mb": peak}  # fmt: skip
    write_report(arguments.out, arguments.name, report,
                 f"Resuming a {total:,}-image extraction, simulated without decoding: `{report['command']}`",
                 ["what", "images", "measured"], rows)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
