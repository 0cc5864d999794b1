"""Downloads that survive a dropped connection: HTTP ``Range`` resume, checksums, clear errors.

A file downloads to ``<name>.part`` beside its final place and is renamed only once it
is complete and its checksum matches, so a finished-looking file is always a whole
one. An interrupted download keeps its ``.part``; the next attempt (a retry in the same
call, or the next ``sslmed data fetch``) asks the server for the rest with a ``Range``
header, and starts over when the server does not honour it.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from sslmed.core.errors import DataError
from sslmed.data.catalog import Download

log = logging.getLogger(__name__)

CHUNK = 1 << 16
#: a download whose catalogue entry gives no size is refused past this many bytes
MAX_UNSIZED_BYTES = 64 * 2**30
#: the overall deadline of one download: this many seconds, plus its size at MIN_RATE
DEADLINE_FLOOR_S = 600.0
#: bytes per second a download may not stay under for long (a server dripping bytes)
MIN_RATE = 32 * 1024
USER_AGENT = "sslmed-fetch (+https://github.com/; python urllib)"


class UnreachableError(DataError):
    """The server could not be reached at all (no network, unknown host, refused)."""


def file_digest(path: Path, algorithm: str) -> str:
    """The hex digest of a file, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(path: Path, item: Download) -> dict[str, str]:
    """Check ``path`` against the item's pinned checksum; return the digests computed.

    Raises a :class:`DataError` naming the file, the expected and the actual value (and
    removes the file, so the next attempt downloads it afresh).
    """
    found = {"sha256": file_digest(path, "sha256")}
    if item.md5:
        found["md5"] = file_digest(path, "md5")
    for algorithm in ("md5", "sha256"):
        expected = getattr(item, algorithm)
        if expected and found[algorithm] != expected:
            path.unlink(missing_ok=True)
            raise DataError(
                f"{item.filename}: {algorithm} checksum mismatch (expected {expected}, got {found[algorithm]}; "
                f"from {item.url}): the file was removed; run the fetch again, and if it fails again the source "
                "has changed"
            )
    return found


def no_space(path: Path) -> DataError:
    """The error for a full disk while writing ``path``."""
    return DataError(f"no space left on the device while writing {path}: free some space and run the fetch again")


def _progress(total: int | None, initial: int, name: str, quiet: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=name,
        disable=quiet,
        leave=False,
    )


class SlowServerError(DataError):
    """The server kept the connection open but sent too little for too long."""


def default_deadline(item: Download) -> float:
    """Seconds a download of ``item`` may take in all: :data:`DEADLINE_FLOOR_S` plus its
    size at :data:`MIN_RATE` (an hour and a half for a 2.5 GB archive)."""
    return DEADLINE_FLOOR_S + (item.size or 0) / MIN_RATE


def _attempt(item: Download, part: Path, timeout: float, quiet: bool, deadline: float) -> None:
    """One request: continue ``part`` from where it stops (or start it); raises on failure.

    The body may not outgrow the catalogue's size (or :data:`MAX_UNSIZED_BYTES`), with a
    Content-Length or without one, and the whole download must end by ``deadline``
    (``time.monotonic()``): a server dripping a byte every few seconds never trips the
    per-read ``timeout``."""
    have = part.stat().st_size if part.exists() else 0
    limit = item.size if item.size is not None else MAX_UNSIZED_BYTES
    request = urllib.request.Request(item.url, headers={"User-Agent": USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        status = getattr(response, "status", 200)
        if have and status != 206:  # the server ignores Range: start over
            log.info("%s: the server does not resume downloads; starting over", item.filename)
            have = 0
        length = response.headers.get("Content-Length")
        if length is not None and not length.strip().isdigit():
            raise DataError(f"{item.url}: the server sent a Content-Length that is not a number ({length[:40]!r})")
        total = have + int(length) if length is not None else None
        if total is not None and total > limit:
            raise DataError(
                f"{item.url}: the server announces {total:,} bytes, more than the {limit:,} "
                f"{'the catalogue gives' if item.size is not None else 'allowed'} for {item.filename}"
            )
        mode = "ab" if have else "wb"
        with open(part, mode) as out, _progress(total, have, item.filename, quiet) as bar:
            received = have
            while True:
                block = response.read1(CHUNK)  # what has arrived: a drip cannot hold the loop
                if not block:
                    break
                try:
                    out.write(block)
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        raise no_space(part) from None
                    raise
                received += len(block)
                bar.update(len(block))
                if received > limit:
                    part.unlink(missing_ok=True)
                    raise DataError(
                        f"{item.url}: the server sent more than the {limit:,} bytes "
                        f"{'the catalogue gives' if item.size is not None else 'allowed'} for {item.filename}; "
                        "the download was removed"
                    )
                if time.monotonic() > deadline:
                    raise SlowServerError(f"{item.url}: too slow ({received:,} bytes by the deadline)")
        if total is not None and received < total:
            raise http.client.IncompleteRead(b"", total - received)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        return reason.strerror if isinstance(reason, OSError) and reason.strerror else str(reason)
    if isinstance(exc, http.client.IncompleteRead):
        return "the connection closed before the whole file arrived"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def download(
    item: Download,
    folder: Path,
    *,
    retries: int = 3,
    timeout: float = 60.0,
    quiet: bool = False,
    wait: float = 1.0,
    deadline: float | None = None,
) -> Path:
    """Download ``item`` into ``folder`` (resuming a ``.part`` left there), verify it, return its path.

    A file already complete in ``folder`` is verified and reused. A dropped connection
    is retried ``retries`` times, each resuming where the last stopped; after that a
    :class:`DataError` says what happened and that the next fetch resumes.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. --root /proc/self, a read-only or missing parent
        raise DataError(
            f"cannot write downloads in {folder}: {exc.strerror or exc} (choose another --root, a folder you can write)"
        ) from None
    target = folder / item.filename
    if target.is_file():
        try:
            verify_checksum(target, item)
            return target
        except DataError:
            log.warning("%s: the copy in %s does not match its checksum; downloading it again", item.filename, folder)
    part = target.with_name(target.name + ".part")
    last: BaseException | None = None
    seconds = deadline if deadline is not None else default_deadline(item)
    ends = time.monotonic() + seconds
    for attempt in range(retries + 1):
        try:
            _attempt(item, part, timeout, quiet, ends)
            last = None
            break
        except SlowServerError:
            have = part.stat().st_size if part.exists() else 0
            raise SlowServerError(
                f"cannot download {item.url}: the server sent {have:,} bytes in {seconds:.0f} s, too slow to finish; "
                f"the bytes received are kept in {part} and the next fetch resumes from there"
            ) from None
        except urllib.error.HTTPError as exc:
            if exc.code == 416:  # "range not satisfiable": whole only if it has the catalogue's size
                have = part.stat().st_size if part.exists() else 0
                if item.size is not None and have == item.size:
                    last = None
                    break
                # a truncated (or unknown) part is never promoted: start again from byte 0
                log.info("%s: the server refused to resume (HTTP 416); starting over", item.filename)
                part.unlink(missing_ok=True)
                last = exc
                continue
            last = exc
            if 400 <= exc.code < 500:
                break  # a missing file does not come back by asking again
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as exc:
            last = exc
            received = part.exists() and part.stat().st_size > 0
            if isinstance(exc, urllib.error.URLError) and not received:
                break  # refused, unknown host, no network: asking again at once does not help
        if attempt < retries:
            have = part.stat().st_size if part.exists() else 0
            log.info("%s: %s; resuming from byte %d", item.filename, _describe(last), have)
            time.sleep(wait * (attempt + 1))
    if last is not None:
        have = part.stat().st_size if part.exists() else 0
        kept = f"; the {have} bytes received are kept in {part} and the next fetch resumes from there" if have else ""
        if isinstance(last, urllib.error.URLError) and not isinstance(last, urllib.error.HTTPError) and not have:
            raise UnreachableError(
                f"cannot reach the server for {item.url}: {_describe(last)} (check the network, or download the "
                f"file by hand and put it at {target})"
            )
        raise DataError(f"cannot download {item.url}: {_describe(last)}{kept}")
    try:
        os.replace(part, target)
    except OSError as exc:
        raise DataError(f"cannot move {part} to {target}: {exc.strerror or exc}") from None
    if item.size is not None and target.stat().st_size != item.size:
        size = target.stat().st_size
        target.unlink()
        raise DataError(f"{item.filename}: {size} bytes, expected {item.size} (from {item.url}); the file was removed")
    verify_checksum(target, item)
    return target
