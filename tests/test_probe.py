"""The issue-28 probe, against the app as `python app.py` serves it: each door found open there has
a test here that knocks on it, so the next change does not reopen one.

The collection holds synthetic photos, a 16-bit grey PNG and a transparent PNG, and beside each of
those the picture Gradio's default RGB conversion makes of it (a decoy: a query converted on the way
in finds its decoy first). It is served from a folder that also holds the index files, as a run
from the repository is.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.backbones import BACKBONES
from cbir.recipe import RecipeSettings
from cbir.weights import Weights
from cbir.build import BuildSettings, build_indexes
from cbir.datasets import folder_collection
from cbir.thumbnails import DEFAULT_MAX_SIDE, thumbnail_name
from served_app import AppDidNotStart, running_app
from synthetic import make_gallery

pytestmark = pytest.mark.slow

# What one refused hostile request may cost the server, at most (the decode it used to do cost a GB).
REFUSAL_BUDGET_MB = 150


def resident_megabytes(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def grey_16_bit() -> Image.Image:
    """Dark-to-mid grey with structure, every value above 255: Gradio's RGB conversion clips it all
    to white."""
    y, x = np.mgrid[0:120, 0:160]
    values = 3000 + 9000 * ((x // 20 + y // 20) % 2) + 120 * x
    return Image.fromarray(values.astype(np.uint16))


def transparent() -> Image.Image:
    """A dark shape on a transparent background whose hidden colour is black: cbir.images shows it
    on white, Gradio's conversion on black."""
    rgba = np.zeros((120, 160, 4), np.uint8)
    rgba[20:100, 30:130] = (40, 60, 160, 255)
    rgba[45:75, 60:100] = (230, 200, 20, 255)
    return Image.fromarray(rgba, "RGBA")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    photos = root / "photos"
    make_gallery(photos, 10)
    for name, picture in (("grey16", grey_16_bit()), ("transparent", transparent())):
        picture.save(photos / f"{name}.png")
        picture.convert("RGB").save(photos / f"{name}_as_gradio_made_it.png")  # the decoy
    index_root = root / "indexes"
    settings = BuildSettings(index_dir=index_root, recipe=RecipeSettings(weights=Weights.parse("none"), input_size=96),
                             progress=False, thumbnails=False)  # fmt: skip  (made when first shown, as after a build without them)
    build_indexes(folder_collection(photos, "probe"), [BACKBONES["xception"]], settings)
    log = root / "app.log"
    try:
        with running_app(index_root, "--weights", "none", "--input-size", "96", log=log, cwd=root) as app:
            yield {"url": app.url, "pid": app.pid, "photos": photos, "root": root, "log": log}
    except AppDidNotStart as error:
        pytest.fail(str(error))


@pytest.fixture(scope="module")
def client(served):
    from gradio_client import Client

    return Client(served["url"], verbose=False)


def search_photo(client, path: Path, k=5, **options):
    from gradio_client import handle_file

    values = {"expand": False, "expand_n": 3, "expand_alpha": 3.0} | options
    return client.predict(handle_file(str(path)), "", "probe", "xception", "cosine", k, values["expand"],
                          values["expand_n"], values["expand_alpha"], api_name="/search_photo")  # fmt: skip


def raw_search_photo(url: str, photo: Path, k=5, expand=False, expand_n=3, expand_alpha=3.0) -> tuple[str, str]:
    """`/search_photo` as any HTTP client may call it, NaN and infinities included (JSON has no such
    numbers, gradio_client refuses to send them; Python's json module on the server reads them):
    the server's last event and its data."""
    import httpx

    with open(photo, "rb") as sent:
        uploaded = httpx.post(url + "gradio_api/upload", files={"files": (photo.name, sent)}, timeout=60).json()[0]
    file = {"path": uploaded, "orig_name": photo.name, "meta": {"_type": "gradio.FileData"}}
    # A raw call sends every input of the endpoint: verify and diffusion (issue 29) last, off.
    data = [file, "", "probe", "xception", "cosine", k, expand, expand_n, expand_alpha, False, False]
    body = json.dumps({"data": data}, allow_nan=True)  # NaN and Infinity as JavaScript writes them
    started = httpx.post(url + "gradio_api/call/search_photo", content=body,
                         headers={"Content-Type": "application/json"}, timeout=60)  # fmt: skip
    assert started.status_code == 200, started.text
    answer = httpx.get(url + f"gradio_api/call/search_photo/{started.json()['event_id']}", timeout=120).text
    events = [line.removeprefix("event: ") for line in answer.splitlines() if line.startswith("event: ")]
    data_lines = [line.removeprefix("data: ") for line in answer.splitlines() if line.startswith("data: ")]
    said = json.loads(data_lines[-1]) if data_lines[-1] not in ("", "null") else None
    return events[-1], said["error"] if isinstance(said, dict) and "error" in said else str(said)


def send_blob(url: str, blob: bytes, blob_id: str, kind: str = "background", index: str = "null") -> None:
    """What the browser's image editor does before a search: its canvas, sent to the editor's
    `accept_blobs` through /gradio_api/component_server."""
    import httpx

    config = httpx.get(url + "config", timeout=30).json()
    editor = next(c["id"] for c in config["components"] if c["type"] == "imageeditor")
    fields = {"component_id": str(editor), "session_hash": "probe", "fn_name": "accept_blobs",
              "type": kind, "index": index, "id": blob_id}  # fmt: skip
    answer = httpx.post(url + "gradio_api/component_server", data=fields, files={"file": ("blob", blob, "image/png")},
                        timeout=60)  # fmt: skip
    assert answer.status_code == 200, answer.text


def test_a_pixel_bomb_sent_as_the_editors_blob_is_refused_from_its_header(served, client):
    from gradio_client.exceptions import AppError

    bomb = io.BytesIO()
    Image.new("1", (11_300, 11_300)).save(bomb, "PNG")  # 15 KB; every side under 16,384 px
    assert len(bomb.getvalue()) < 20_000
    before = resident_megabytes(served["pid"])
    grown = []
    for call in range(3):
        send_blob(served["url"], bomb.getvalue(), f"hostile-{call}")
        with pytest.raises(AppError) as refused:
            client.predict({"id": f"hostile-{call}", "background": None, "layers": [], "composite": None},
                           "probe", "xception", "cosine", 5, api_name="/search")  # fmt: skip
        assert "at most 64,000,000 pixels" in str(refused.value) and "Traceback" not in str(refused.value)
        grown.append(resident_megabytes(served["pid"]) - before)
    print(f"\nserver RSS before {before:.0f} MB; growth after each of 3 blob searches: "
          + ", ".join(f"{mb:+.0f} MB" for mb in grown))  # fmt: skip
    assert grown[-1] < REFUSAL_BUDGET_MB


def test_an_editor_layer_numbered_in_the_billions_costs_nothing(served):
    before = resident_megabytes(served["pid"])
    picture = io.BytesIO()
    Image.new("RGB", (16, 16)).save(picture, "PNG")
    send_blob(served["url"], picture.getvalue(), "layered", kind="layer", index=str(10**8))  # Gradio's own: +800 MB
    assert resident_megabytes(served["pid"]) - before < REFUSAL_BUDGET_MB


def test_a_16_bit_grey_and_a_transparent_photo_find_themselves_first(served, client):
    for name in ("grey16", "transparent"):
        gallery, _ = search_photo(client, served["photos"] / f"{name}.png", k=3)
        assert gallery[0]["caption"].startswith(f"#1 {name} · cos 1.000"), (name, [g["caption"] for g in gallery])


@pytest.mark.parametrize(
    "options, refused",
    [
        ({"k": math.nan}, "Top k must be a whole number from 1 to 100"),
        ({"k": 1e9}, "Top k must be a whole number from 1 to 100"),
        ({"expand": True, "expand_n": math.nan}, "top n read must be a whole number from 1 to 200"),
        ({"expand": True, "expand_alpha": math.nan}, "α must be a number from 0 to 10"),
        ({"expand": True, "expand_alpha": math.inf}, "α must be a number from 0 to 10"),
    ],
    ids=["k NaN", "k huge", "n NaN", "alpha NaN", "alpha inf"],
)
def test_numbers_that_are_not_finite_or_in_range_are_refused_with_a_sentence(served, options, refused):
    event, said = raw_search_photo(served["url"], served["photos"] / "picture_003.jpg", **options)
    assert event == "error" and refused in said, (event, said)


def test_a_hit_whose_image_was_deleted_is_counted_apart_with_why(served, client, tmp_path):
    deleted = served["photos"] / "picture_006.jpg"
    query = tmp_path / "query.jpg"
    shutil.copy(deleted, query)
    search_photo(client, query, k=20)  # every thumbnail made, whichever tests ran before
    thumbnail = served["root"] / "indexes" / "probe" / "thumbnails" / thumbnail_name("probe", deleted.name, DEFAULT_MAX_SIDE)
    # Its thumbnail goes too: one that outlives its image is served as it is (a bundle has
    # thumbnails alone), which is not this door.
    thumbnail.unlink()
    deleted.unlink()
    gallery, status = search_photo(client, query, k=8)
    assert len(gallery) == 7 and status.startswith("7 results in ")
    assert "1 more found but not shown" in status and "picture_006: file not found" in status
    assert not any(item["caption"].startswith("#1 ") for item in gallery)  # rank 1 was the deleted one


def test_the_index_files_are_never_served(served):
    index = served["root"] / "indexes" / "probe" / "xception"
    targets = [index / "manifest.json", index / "descriptors.npy", Path("indexes/probe/xception/manifest.json")]
    assert all((served["root"] / target).is_file() for target in targets)
    for target in targets:
        for route in ("gradio_api/file=", "file="):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(served["url"] + route + str(target), timeout=10)
            assert refused.value.code in (403, 404), (route, target)


def test_a_visitors_errors_are_one_line_each_in_the_servers_log(served, client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError):
        search_photo(client, served["photos"] / "picture_003.jpg", k=0)
    raw_search_photo(served["url"], served["photos"] / "picture_003.jpg", k=math.nan)
    text = served["log"].read_text()
    assert "refused: Top k must be a whole number" in text
    assert "Traceback" not in text, text[-3000:]
