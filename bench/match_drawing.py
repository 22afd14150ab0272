"""What drawing one result's matches costs on the page (SearchPage.explain_result): the verification
of that one pair, loading both pictures as they were described, and the drawing; and the whole
call, on a 1024 x 768 JPEG result (Oxford's size) and an edited crop of it as the query.

    python bench/match_drawing.py            # median of 20 after 2 warm-up calls

Photos are synthetic (tests/synthetic.py's `draw_textured_picture`: many small shapes, so the
keypoint bound is reached, as on real photos); the query is described once (as the page does,
per search). Prints one line per part, in ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def median_ms(call, repeats: int) -> float:
    call(), call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    arguments = parser.parse_args(argv)

    from stubs import RECIPE, StubbedEngine
    from synthetic import draw_textured_picture
    from test_verification import edited_crop

    from cbir.datasets import folder_collection
    from cbir.index import Manifest, StoreSpec, write_index
    from cbir.layout import IndexLayout, write_collection_record
    from cbir.local_features import (
        LocalFeatureSettings,
        describe_image,
        describe_picture,
        picture_as_described,
    )
    from cbir.match_drawing import draw_match
    from cbir.verification import MIN_INLIERS, verify_pair
    from cbir_ui.behaviour import SearchPage

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        photos = root / "photos"
        photos.mkdir()
        for seed in range(4):
            draw_textured_picture(seed, 1024, 768).save(photos / f"photo_{seed:02d}.jpg", quality=90)
        query_path = root / "query.jpg"
        edited_crop(photos / "photo_00.jpg", 40).save(query_path, quality=90)
        collection = folder_collection(photos, "photos")
        write_collection_record(IndexLayout(root / "indexes"), collection)
        settings = LocalFeatureSettings()
        manifest = Manifest(collection="photos", recipe=RECIPE, images=list(collection.images),
                            store=StoreSpec("exact"), local_features=settings)  # fmt: skip
        write_index(IndexLayout(root / "indexes").index_dir("photos", RECIPE.key),
                    np.eye(len(collection.images), RECIPE.dim, dtype=np.float32), manifest,
                    local_features=[describe_image(photos / image, settings) for image in collection.images])  # fmt: skip

        query_features = describe_picture(picture_as_described(query_path, settings), settings)
        result_path = photos / "photo_00.jpg"
        result_features = describe_image(result_path, settings)
        match = verify_pair(query_features, result_features, min_matches=MIN_INLIERS)
        query_picture = picture_as_described(query_path, settings)
        result_picture = picture_as_described(result_path, settings)
        parts = {
            "verify the pair": lambda: verify_pair(query_features, result_features, min_matches=MIN_INLIERS),
            "load both pictures": lambda: [picture_as_described(path, settings) for path in (query_path, result_path)],
            "draw": lambda: draw_match(query_picture, result_picture, match),
        }
        engine = StubbedEngine(root / "indexes")
        engine.next = np.eye(1, RECIPE.dim, dtype=np.float32)[0]
        page = SearchPage(engine, root / "indexes")
        answer = page.search_photo(str(query_path), "", "photos", RECIPE.key, "cosine", 4, verify=True, session="s")
        position = [hit.image for hit in answer.result.hits].index("photo_00.jpg")
        parts["SearchPage.explain_result (all of it)"] = lambda: page.explain_result(position, "s")
        print(f"{match.inliers} inliers; {len(query_features)} and {len(result_features)} keypoints; "
              f"drawing {draw_match(query_picture, result_picture, match).size}")  # fmt: skip
        for label, call in parts.items():
            print(f"{label}: {median_ms(call, arguments.repeats):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
