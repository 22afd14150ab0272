"""Tiny stand-ins for Oxford5k / Paris6k in their official archive layouts, and a local HTTP server.

The real archives can't be downloaded here, so tests build small ones with the same structure:
Oxford's flat `oxbuild_images-v1.tgz` and `gt_files_170407.tgz` ("oxc1_" query prefix), Paris's
per-landmark folders split over `paris_1-v1.tgz` / `paris_2-v1.tgz` plus `paris_120310.tgz` (and a
zero-byte JPEG, as the real set has). `serve_directory` serves such a folder on 127.0.0.1 with Range
requests, optional basic auth, refusals and dropped connections.

Each `make_*_layout` returns a dict:
    "images_dir"  extracted images (what the dataset's images/ folder should look like)
    "gt_dir"      extracted ground truth (the gt/ folder)
    "archive_dir" the folder holding the archives (serve it, or copy archives from it)
    "archives"    {file name: path} of every archive
    "images"      sorted relative paths of all images, corrupt ones included
    "corrupt"     relative paths of the deliberately broken images
    "queries"     the expected tuple[Query, ...], sorted by name
    "landmarks"   the landmark names used
"""

from __future__ import annotations

import base64
import shutil
import tarfile
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cbir.datasets import Query

OXFORD_LANDMARKS = (
    "all_souls", "ashmolean", "balliol", "bodleian", "christ_church", "cornmarket",
    "hertford", "keble", "magdalen", "pitt_rivers", "radcliffe_camera",
)  # fmt: skip
PARIS_LANDMARKS = (
    "defense", "eiffel", "invalides", "louvre", "moulinrouge", "museedorsay",
    "notredame", "pantheon", "pompidou", "sacrecoeur", "triomphe",
)  # fmt: skip


def draw_landmark_image(landmark_index: int, image_index: int, width: int = 64, height: int = 48) -> Image.Image:
    """A small picture: the landmark fixes colour and stripe texture, the image index shifts details."""
    rng = np.random.default_rng(1000 * landmark_index + image_index)
    hue = np.array([(97 * landmark_index) % 256, (53 * landmark_index + 80) % 256, (181 * landmark_index + 40) % 256])
    yy, xx = np.mgrid[0:height, 0:width]
    period = 4 + 3 * landmark_index
    stripes = np.sin((xx + (landmark_index % 2) * yy + image_index) * 2 * np.pi / period)
    pixels = hue[None, None, :] + 50 * stripes[..., None] + rng.normal(0, 6, size=(height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
    draw.rectangle((x0, y0, x0 + width // 3, y0 + height // 3), fill=tuple(int(c) for c in 255 - hue))
    return image


def _query_box(landmark_index: int, query_number: int) -> tuple[float, float, float, float]:
    """A box written with one decimal, as in the official files, so parsing gives these exact floats."""
    return (2.5 + query_number, 1.5 + landmark_index, 40.7 + query_number, 30.1 + landmark_index)


def _format_box(box: tuple[float, float, float, float]) -> str:
    return " ".join(f"{value:.1f}" for value in box)


def _write_ground_truth(
    gt_dir: Path, landmark: str, ids: list[str], landmark_index: int, queries_per_landmark: int, prefix: str
) -> list[Query]:
    """Official-format files for one landmark: query boxes on its first images; good, ok, junk lists."""
    half = max(1, len(ids) // 2)
    good, ok, junk = ids[:half], ids[half:-1], ids[-1:]
    queries = []
    for number in range(1, queries_per_landmark + 1):
        name = f"{landmark}_{number}"
        image = ids[(number - 1) % len(ids)]
        box = _query_box(landmark_index, number)
        (gt_dir / f"{name}_query.txt").write_text(f"{prefix}{image} {_format_box(box)}\n")
        for kind, members in (("good", good), ("ok", ok), ("junk", junk)):
            (gt_dir / f"{name}_{kind}.txt").write_text("".join(f"{member}\n" for member in members))
        queries.append(Query(name, image, box, {"good": good, "ok": ok, "junk": junk}))
    return queries


def _pack(archive: Path, source: Path, names: list[str]) -> Path:
    """A .tgz holding `names` (relative to `source`), directories recursively, as tar would."""
    with tarfile.open(archive, "w:gz") as tar:
        for name in names:
            tar.add(source / name, arcname=name)
    return archive


def make_oxford_layout(
    tmp_dir: Path,
    n_landmarks: int = 2,
    images_per_landmark: int = 4,
    queries_per_landmark: int = 2,
    n_distractors: int = 2,
) -> dict:
    """Oxford5k in miniature: flat JPEGs, "oxc1_" query prefix, the two official archive names."""
    tmp_dir = Path(tmp_dir)
    images_dir, gt_dir, archive_dir = tmp_dir / "oxford_images", tmp_dir / "oxford_gt", tmp_dir / "oxford_archives"
    for folder in (images_dir, gt_dir, archive_dir):
        folder.mkdir(parents=True)
    landmarks = OXFORD_LANDMARKS[:n_landmarks]
    queries: list[Query] = []
    for landmark_index, landmark in enumerate(landmarks):
        ids = [f"{landmark}_{number:06d}" for number in range(images_per_landmark)]
        for image_index, image_id in enumerate(ids):
            draw_landmark_image(landmark_index, image_index).save(images_dir / f"{image_id}.jpg", quality=90)
        queries += _write_ground_truth(gt_dir, landmark, ids, landmark_index, queries_per_landmark, "oxc1_")
    for number in range(n_distractors):
        draw_landmark_image(len(landmarks), number).save(images_dir / f"oxford_{number:06d}.jpg", quality=90)

    images = sorted(path.name for path in images_dir.iterdir())
    archives = {
        "oxbuild_images-v1.tgz": _pack(archive_dir / "oxbuild_images-v1.tgz", images_dir, images),
        "gt_files_170407.tgz": _pack(
            archive_dir / "gt_files_170407.tgz", gt_dir, sorted(path.name for path in gt_dir.iterdir())
        ),
    }
    return {
        "images_dir": images_dir,
        "gt_dir": gt_dir,
        "archive_dir": archive_dir,
        "archives": archives,
        "images": images,
        "corrupt": [],
        "queries": tuple(sorted(queries, key=lambda query: query.name)),
        "landmarks": list(landmarks),
    }


def make_paris_layout(
    tmp_dir: Path,
    n_landmarks: int = 2,
    images_per_landmark: int = 4,
    queries_per_landmark: int = 2,
) -> dict:
    """Paris6k in miniature: paris/<landmark>/ folders over two image archives, no query prefix,
    and one zero-byte JPEG (the real set has about 20 broken files)."""
    tmp_dir = Path(tmp_dir)
    images_dir, gt_dir, archive_dir = tmp_dir / "paris_images", tmp_dir / "paris_gt", tmp_dir / "paris_archives"
    for folder in (gt_dir, archive_dir):
        folder.mkdir(parents=True)
    landmarks = PARIS_LANDMARKS[:n_landmarks]
    queries: list[Query] = []
    for landmark_index, landmark in enumerate(landmarks):
        folder = images_dir / "paris" / landmark
        folder.mkdir(parents=True)
        ids = [f"paris_{landmark}_{number:06d}" for number in range(images_per_landmark)]
        for image_index, image_id in enumerate(ids):
            draw_landmark_image(landmark_index, image_index).save(folder / f"{image_id}.jpg", quality=90)
        queries += _write_ground_truth(gt_dir, landmark, ids, landmark_index, queries_per_landmark, "")
    corrupt = f"paris/{landmarks[0]}/paris_{landmarks[0]}_{images_per_landmark:06d}.jpg"
    (images_dir / corrupt).write_bytes(b"")

    # The real split: the first landmarks in paris_1, the rest in paris_2, both rooted at paris/.
    split = max(1, len(landmarks) // 2)
    archives = {
        "paris_1-v1.tgz": _pack(
            archive_dir / "paris_1-v1.tgz", images_dir, [f"paris/{lm}" for lm in landmarks[:split]]
        ),
        "paris_2-v1.tgz": _pack(
            archive_dir / "paris_2-v1.tgz", images_dir, [f"paris/{lm}" for lm in landmarks[split:]]
        ),
        "paris_120310.tgz": _pack(
            archive_dir / "paris_120310.tgz", gt_dir, sorted(path.name for path in gt_dir.iterdir())
        ),
    }
    images = sorted(path.relative_to(images_dir).as_posix() for path in images_dir.rglob("*.jpg"))
    return {
        "images_dir": images_dir,
        "gt_dir": gt_dir,
        "archive_dir": archive_dir,
        "archives": archives,
        "images": images,
        "corrupt": [corrupt],
        "queries": tuple(sorted(queries, key=lambda query: query.name)),
        "landmarks": list(landmarks),
    }


def place_extracted(layout: dict, dataset_root: Path) -> None:
    """Copy a layout's extracted images and ground truth to `<dataset_root>/images` and `/gt`."""
    shutil.copytree(layout["images_dir"], Path(dataset_root) / "images")
    shutil.copytree(layout["gt_dir"], Path(dataset_root) / "gt")


# --------------------------------------------------------------------------------------------
# A local HTTP server


@dataclass(frozen=True)
class ServedRequest:
    path: str  # file name asked for, relative to the served folder
    range: str | None  # the Range header, if any
    authorized: bool  # whether it carried the right credentials (always True without auth)
    status: int


@dataclass
class ServerBehaviour:
    """How `serve_directory` answers; tests may change it between requests and read `requests`."""

    credentials: tuple[str, str] | None = None  # require basic auth with this user and password
    forbidden: set[str] = field(default_factory=set)  # names answered with 403
    missing: set[str] = field(default_factory=set)  # names answered with 404 although present
    html_page: set[str] = field(default_factory=set)  # names answered with a 200 HTML page (a login form)
    cut_after: dict[str, int] = field(default_factory=dict)  # name -> body bytes sent before hanging up
    ignore_range: bool = False  # answer 200 with the whole file even when asked for a range
    # Answer a range request with a 206 that starts this many bytes before the byte asked for (a
    # broken proxy or server): the client must notice and not append it.
    range_shift: int = 0
    requests: list[ServedRequest] = field(default_factory=list)

    def requests_for(self, name: str) -> list[ServedRequest]:
        return [request for request in self.requests if request.path == name]


class _ArchiveServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, behaviour: ServerBehaviour) -> None:
        super().__init__(("127.0.0.1", 0), _RangeRequestHandler)
        self.root = root.resolve()
        self.behaviour = behaviour
        self.lock = threading.Lock()


class _RangeRequestHandler(BaseHTTPRequestHandler):
    server: _ArchiveServer

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        behaviour = self.server.behaviour
        name = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        authorized = behaviour.credentials is None or self._has_credentials(behaviour.credentials)
        range_header = self.headers.get("Range")
        path = (self.server.root / name).resolve()

        def record(status: int) -> None:
            with self.server.lock:
                behaviour.requests.append(ServedRequest(name, range_header, authorized, status))

        if not authorized:
            record(401)
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="dataset archives"')
            self._end_empty()
            return
        if name in behaviour.forbidden:
            record(403)
            self.send_response(403)
            self._end_empty()
            return
        if name in behaviour.missing or not path.is_relative_to(self.server.root) or not path.is_file():
            record(404)
            self.send_response(404)
            self._end_empty()
            return
        if name in behaviour.html_page:
            page = b"<html><body><form>Please accept the terms of access</form></body></html>"
            record(200)
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            if send_body:
                self.wfile.write(page)
            return

        size = path.stat().st_size
        span = None if behaviour.ignore_range else self._requested_span(range_header, size)
        if span is not None and span[0] >= size:
            record(416)
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self._end_empty()
            return
        if span is None:
            start, end = 0, size - 1
            record(200)
            self.send_response(200)
        else:
            start, end = max(0, span[0] - behaviour.range_shift), span[1]
            record(206)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Type", "application/x-gzip")
        self.send_header("Content-Length", str(end + 1 - start))
        self.end_headers()
        if not send_body:
            return
        with path.open("rb") as source:
            source.seek(start)
            body = source.read(end + 1 - start)
        cut = behaviour.cut_after.get(name)
        if cut is not None and cut < len(body):
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True  # the client sees the connection end mid-body
            return
        self.wfile.write(body)

    def _has_credentials(self, credentials: tuple[str, str]) -> bool:
        expected = "Basic " + base64.b64encode(":".join(credentials).encode()).decode()
        return self.headers.get("Authorization") == expected

    @staticmethod
    def _requested_span(header: str | None, size: int) -> tuple[int, int] | None:
        """(first, last) byte of a single 'bytes=N-' or 'bytes=N-M' range; None to send it all."""
        if not header or not header.startswith("bytes="):
            return None
        first, _, last = header.removeprefix("bytes=").partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            return None
        return int(first), min(int(last), size - 1) if last else size - 1

    def _end_empty(self) -> None:
        self.send_header("Content-Length", "0")
        self.end_headers()


@contextmanager
def serve_directory(path: Path, behaviour: ServerBehaviour | None = None) -> Iterator[str]:
    """Serve `path` on 127.0.0.1 (a free port) for the `with` block; yields the base URL.

    Pass a ServerBehaviour to require auth, refuse names, drop connections, and to see the requests.
    """
    server = _ArchiveServer(Path(path), behaviour if behaviour is not None else ServerBehaviour())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
