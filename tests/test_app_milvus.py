"""The page over a collection built with `--store milvus --milvus-uri <Milvus Lite file>`: its `/search`
asks Milvus and answers with the exact scan's ranking and scores."""

from __future__ import annotations

from pathlib import Path

import pytest

from optional import need

need("pymilvus")
need("milvus_lite")

from synthetic import crop_of, make_gallery
from served_app import AppDidNotStart, running_app

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import build_index

    root = tmp_path_factory.mktemp("app-milvus")
    photos, index_root = root / "photos", root / "indexes"
    make_gallery(photos, 16)
    built = build_index.main(["--images", str(photos), "--name", "demo", "--store", "milvus", "--milvus-uri",
                              str(root / "milvus.db"), "--weights", "none", "--input-size", "96", "--index-dir",
                              str(index_root), "--no-progress"])  # fmt: skip
    assert built == 0
    # As when build_index.py exits: Milvus Lite lets go of its file, which the app then opens.
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(str(root / "milvus.db"))
    try:
        with running_app(index_root, log=root / "app.log", cwd=root) as app:
            yield {"url": app.url, "photos": photos, "index_root": index_root, "root": root}
    except AppDidNotStart as error:
        pytest.fail(str(error))


def test_api_search_through_milvus_lite_gives_the_exact_scans_ranking_and_scores(served, tmp_path):
    from gradio_client import Client, handle_file

    from cbir.search import SearchEngine
    from cbir_ui.formatting import gallery_items

    manifest = (served["index_root"] / "demo" / "xception" / "manifest.json").read_text()
    assert '"kind": "milvus"' in manifest
    query = tmp_path / "crop.png"
    crop_of(served["photos"] / "picture_006.jpg", fraction=0.8, scale=1.2).save(query)
    # The exact scan of the same index, in this process (it reads descriptors.npy, never the Milvus file).
    engine = SearchEngine(served["index_root"])
    client = Client(served["url"], verbose=False)
    for metric in ("cosine", "euclidean"):
        exact = engine.search(query, collection="demo", recipe="xception", metric=metric, k=8, exact=True)
        expected = [caption for _, caption in gallery_items(exact, lambda image: "served")]
        editor = {"background": handle_file(str(query)), "layers": [], "composite": None}
        gallery, status = client.predict(editor, "demo", "xception", metric, 8, api_name="/search")
        assert [item["caption"] for item in gallery] == expected, metric
        assert "index search" in status  # answered by the store (Milvus), not by the page's own exact scan
    assert (served["root"] / "milvus.db").exists()
