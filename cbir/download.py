"""Resumable, authenticated HTTP downloads with progress: datasets, ground-truth files, bundles.

A download goes into `<dest>.part` and is renamed to `dest` only once its size matches what the
server announced, so `dest` existing means complete. An interrupted download resumes with a Range
request; a server that answers from another byte than the one asked for is not trusted, and the
download starts over.
"""

from __future__ import annotations

import http.client
import json
import logging
import netrc
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from urllib.parse import urlsplit

from tqdm import tqdm

from cbir import __version__, atomic
from cbir.digests import sha256_file
from cbir.errors import CbirError

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 1 << 20


class DownloadProblem(str, Enum):
    DENIED = "denied"  # 401/403, or a login page served instead of the file
    NOT_FOUND = "not_found"  # 404/410: a dead link
    UNREACHABLE = "unreachable"  # no answer: refused, DNS, TLS, timeout
    INCOMPLETE = "incomplete"  # the body stopped early; the .part is kept for a resume
    HTTP = "http"  # any other failure of the server


class DownloadError(CbirError):
    """A download that failed; `problem` lets callers add advice that fits what was fetched."""

    def __init__(self, message: str, *, url: str, problem: DownloadProblem, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.problem = DownloadProblem(problem)
        self.status = status


@dataclass(frozen=True)
class HttpSettings:
    user: str | None = None
    password: str | None = None  # with no user/password, ~/.netrc is looked up for the URL's host
    progress: bool = True  # tqdm bars on stderr
    timeout: float = 60.0  # seconds without an answer before a connection counts as lost


def download(url: str, dest: Path, settings: HttpSettings) -> Path:
    """Fetch `url` into `dest`, resuming a `.part` left by an earlier attempt.

    The file is renamed to `dest` only once its size matches what the server announced, so `dest`
    existing means complete. Raises DownloadError (a DatasetError) with `problem` set.
    """
    dest = Path(dest)
    partial = dest.with_suffix(dest.suffix + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    opener = _opener_for(url, settings)
    for _attempt in range(2):  # a second attempt only after dropping a .part the server can't continue
        offset = partial.stat().st_size if partial.exists() else 0
        if _fetch_into(opener, url, partial, offset, settings):
            partial.replace(dest)
            write_record(dest)
            return dest
        partial.unlink(missing_ok=True)
    raise DownloadError(f"the server for {url} cannot resume nor restart the download", url=url, problem=DownloadProblem.HTTP)


HUB_HOSTS = ("huggingface.co", "hf.co")


def _hub_token(url: str) -> str | None:
    """HF_TOKEN, for a Hugging Face Hub URL (a private dataset repository holding a bundle)."""
    host = urlsplit(url).hostname or ""
    if any(host == hub or host.endswith("." + hub) for hub in HUB_HOSTS):
        return os.environ.get("HF_TOKEN") or None
    return None


def _opener_for(url: str, settings: HttpSettings) -> urllib.request.OpenerDirector:
    """An opener that answers basic-auth challenges from the URL's own host only."""
    credentials = _credentials_for(url, settings)
    if credentials is None:
        return urllib.request.build_opener()
    parts = urlsplit(url)
    passwords = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    passwords.add_password(None, f"{parts.scheme}://{parts.netloc}/", *credentials)
    return urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(passwords))


def _credentials_for(url: str, settings: HttpSettings) -> tuple[str, str] | None:
    if settings.user:
        return settings.user, settings.password or ""
    host = urlsplit(url).hostname
    if not host:
        return None
    try:
        entry = netrc.netrc().authenticators(host)
    except FileNotFoundError:
        return None
    except (netrc.NetrcParseError, OSError) as error:
        logger.warning("ignoring ~/.netrc: %s", error)
        return None
    if entry is None:
        return None
    login, _account, password = entry
    return login, password or ""


def _fetch_into(
    opener: urllib.request.OpenerDirector, url: str, partial: Path, offset: int, settings: HttpSettings
) -> bool:
    """One request, appended to or replacing `partial`; False when the .part must be dropped."""
    request = urllib.request.Request(url, headers={"User-Agent": f"cbir/{__version__}"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    token = _hub_token(url)
    if token:
        # Only to the Hub itself: the file is then served from a signed CDN address, which must not
        # receive it (an unredirected header is not sent on along a redirect).
        request.add_unredirected_header("Authorization", f"Bearer {token}")
    try:
        response = opener.open(request, timeout=settings.timeout)
    except urllib.error.HTTPError as error:
        with error:
            if error.code == 416 and offset:
                # The .part may already be whole (a crash just before the rename).
                _start, total = _parse_content_range(error.headers.get("Content-Range", ""))
                return total == offset
            raise _http_failure(url, error.code, error.reason) from None
    except (urllib.error.URLError, OSError) as error:  # refused, DNS, TLS, timeout
        reason = getattr(error, "reason", None) or error
        raise DownloadError(f"could not reach {url} ({reason}).", url=url, problem=DownloadProblem.UNREACHABLE) from error

    with response:
        status = getattr(response, "status", None) or 200  # file:// answers carry no status
        if response.headers.get_content_type() == "text/html":
            # A login or terms page served in place of the archive.
            raise DownloadError(
                f"the server answered {url} with a web page, not the archive (a login or terms page?).",
                url=url,
                problem=DownloadProblem.DENIED,
                status=status,
            )
        if status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range", ""))
            if start != offset:
                logger.warning("%s: server resumed at byte %s instead of %s; starting over", url, start, offset)
                return False
            mode = "ab"
        else:
            if offset:
                logger.info("%s: server does not resume downloads; starting from zero", url)
            offset, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        written = _copy_body(response, partial, mode, offset, total, url, settings)

    if total is None:
        logger.warning("%s: the server gave no size, so completeness can't be checked", url)
    elif written > total:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"{url} sent {written} bytes, more than the {total} announced.", url=url, problem=DownloadProblem.HTTP)
    elif written < total:
        raise DownloadError(
            f"the download of {url} stopped after {written} of {total} bytes; {partial} is kept: run again to resume.",
            url=url,
            problem=DownloadProblem.INCOMPLETE,
        )
    return True


def _copy_body(
    response: http.client.HTTPResponse,
    partial: Path,
    mode: str,
    offset: int,
    total: int | None,
    url: str,
    settings: HttpSettings,
) -> int:
    """Stream the body into `partial`; returns the file's size when the body ended."""
    written = offset
    with (
        partial.open(mode) as out,
        tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=partial.name.removesuffix(".part"),
            disable=not settings.progress,
        ) as bar,
    ):
        while True:
            try:
                chunk = response.read(_CHUNK_BYTES)
            except (http.client.HTTPException, OSError) as error:  # connection dropped or timed out
                out.flush()
                raise DownloadError(
                    f"the download of {url} stopped after {written} bytes ({error!r}); {partial} is kept: "
                    "run again to resume.",
                    url=url,
                    problem=DownloadProblem.INCOMPLETE,
                ) from error
            if not chunk:
                return written
            out.write(chunk)
            written += len(chunk)
            bar.update(len(chunk))


def _parse_content_range(header: str) -> tuple[int | None, int | None]:
    """(first byte, total size) of 'bytes 100-199/200' or 'bytes */200'; None where unknown."""
    try:
        unit, _, spec = header.strip().partition(" ")
        span, _, total_text = spec.partition("/")
        if unit != "bytes":
            return None, None
        start = None if span == "*" else int(span.split("-")[0])
        total = None if total_text in ("", "*") else int(total_text)
        return start, total
    except ValueError:
        return None, None


def _http_failure(url: str, code: int, reason: str) -> DownloadError:
    if code in (401, 403):
        return DownloadError(f"access denied (HTTP {code}) for {url}.", url=url, problem=DownloadProblem.DENIED, status=code)
    if code in (404, 410):
        return DownloadError(f"{url} does not exist (HTTP {code}).", url=url, problem=DownloadProblem.NOT_FOUND, status=code)
    return DownloadError(f"the download of {url} failed (HTTP {code} {reason}).", url=url, problem=DownloadProblem.HTTP, status=code)


# --------------------------------------------------------------------------------------------
# What was downloaded: size and sha256 beside the file, checked whenever it is used again


def record_path(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + ".record.json")



def write_record(path: Path) -> None:
    record = {"size": Path(path).stat().st_size, "sha256": sha256_file(path)}
    atomic.write_text(record_path(path), json.dumps(record, indent=1))


def matches_record(path: Path) -> bool | None:
    """Whether a downloaded file is still what was downloaded: None when it has no record (placed
    by hand), else whether its size and sha256 match the record written after the download."""
    try:
        record = json.loads(record_path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or Path(path).stat().st_size != record.get("size"):
        return False
    return sha256_file(path) == record.get("sha256")


def forget(path: Path) -> None:
    """Delete a downloaded file and its record."""
    Path(path).unlink(missing_ok=True)
    record_path(path).unlink(missing_ok=True)
