"""Issue 21 (5), the download half: servers that send too much, too slowly, or lie
(the loopback server of sslmed.testing; no data needed)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from sslmed.core.errors import DataError
from sslmed.data.catalog import Download
from sslmed.data.fetch.download import download
from sslmed.testing.loopback import loopback_server

BODY = bytes(range(256)) * 64  # 16 KiB


@pytest.fixture
def server():
    with loopback_server() as running:
        yield running


def item(base: str, size: int | None = len(BODY), body: bytes = BODY) -> Download:
    return Download("x", f"{base}/x.bin", "x.bin", md5=hashlib.md5(body).hexdigest(), size=size)


def test_a_body_without_length_is_bounded_by_the_catalogue_size(server, tmp_path: Path) -> None:
    served, base = server
    served.files["/x.bin"] = BODY * 20  # 20 times what the catalogue says
    served.no_length.add("/x.bin")
    with pytest.raises(DataError, match="more than the 16,384 bytes the catalogue gives"):
        download(item(base), tmp_path, quiet=True, retries=0)
    assert not list(tmp_path.iterdir()), "nothing past the limit is kept"


def test_a_dripping_server_meets_an_overall_deadline(server, tmp_path: Path) -> None:
    served, base = server
    served.files["/x.bin"] = BODY
    served.drip["/x.bin"] = 0.05  # a byte every 50 ms: every read succeeds, the file never ends
    started = time.monotonic()
    with pytest.raises(DataError, match="too slow to finish"):
        download(item(base), tmp_path, quiet=True, retries=0, deadline=0.5)
    assert time.monotonic() - started < 5


def test_a_416_on_resume_never_promotes_a_truncated_part(server, tmp_path: Path) -> None:
    served, base = server
    served.files["/x.bin"] = BODY
    served.refuse_range.add("/x.bin")
    (tmp_path / "x.bin.part").write_bytes(BODY[:100])  # left by an interrupted fetch
    path = download(item(base), tmp_path, quiet=True, wait=0)
    assert path.read_bytes() == BODY  # started over, not renamed at 100 bytes
    assert served.requests[-1] == ("/x.bin", None)


def test_a_non_numeric_content_length_is_one_clear_line(server, tmp_path: Path) -> None:
    served, base = server
    served.files["/x.bin"] = BODY
    served.headers["/x.bin"] = {"Content-Length": "lots"}
    with pytest.raises(DataError, match="Content-Length that is not a number"):
        download(item(base), tmp_path, quiet=True, retries=0)
