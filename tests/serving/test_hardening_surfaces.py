"""Issue 21, the web surfaces: symlinked examples, per-client login lockout, uploads without a length."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sslmed.serving.web.page import default_examples_dir, example_files


def _examples(folder: Path, secret: Path) -> Path:
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "real.png")
    secret.write_text("root:secret-hash")
    (folder / "shadow.dcm").symlink_to(secret)
    (folder / "inner").mkdir()
    (folder / "linked_dir.png").symlink_to(folder / "inner")
    os.mkfifo(folder / "pipe.png")
    (folder / "labels.csv").symlink_to(secret)  # a linked labels file is not read either
    return folder


def test_examples_never_follow_links_or_special_files(tmp_path: Path) -> None:
    folder = _examples(tmp_path / "ex", tmp_path / "shadow")
    files, captions = example_files(folder)
    assert [Path(f).name for f in files] == ["real.png"]
    assert captions == ["real.png"]


def test_the_default_samples_folder_is_held_to_the_same_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    root.mkdir()
    _examples(root / "samples", tmp_path / "shadow")
    monkeypatch.setenv("SSLMED_DATA", str(root))
    assert [Path(f).name for f in example_files(default_examples_dir())[0]] == ["real.png"]
    # a samples folder that is itself a link elsewhere is not used
    (root / "samples").rename(tmp_path / "elsewhere")
    (root / "samples").symlink_to(tmp_path / "elsewhere")
    assert default_examples_dir() is None
    assert example_files(root / "samples") == ([], [])


def test_failed_logins_from_one_address_never_lock_out_another() -> None:
    from sslmed.serving.web.auth import LoginGuard

    guard = LoginGuard({"reader": "right"}, max_failures=5, window=60, lockout=300)
    for n in range(40):  # the `curl -u uN:x` loop from one address
        assert not guard.check(f"u{n}", "x", client="10.0.0.66")
    for _ in range(10):  # and five failures on the real name, from the same address
        guard.check("reader", "guess", client="10.0.0.66")
    assert guard.check("reader", "right", client="10.0.0.7"), "another address still gets in"
    assert not guard.check("reader", "right", client="10.0.0.66"), "the guessing address is locked"


def test_the_login_guard_sees_the_address_through_the_middleware() -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from sslmed.serving.web.api import UploadLimit
    from sslmed.serving.web.auth import LoginGuard

    guard = LoginGuard({"reader": "right"}, max_failures=2)

    def login(request):  # Gradio's login calls auth(name, password): no request in sight
        return PlainTextResponse("ok" if guard("reader", request.query_params["p"]) else "no")

    from starlette.middleware import Middleware

    middleware = [Middleware(UploadLimit, limit=1000, max_upload_mb=0.001)]
    client = TestClient(Starlette(routes=[Route("/login", login, methods=["POST"])], middleware=middleware))
    for _ in range(3):
        assert client.post("/login?p=x").text == "no"
    assert client.post("/login?p=right").text == "no"  # locked for this client ("testclient")
    assert guard.check("reader", "right", client="127.0.0.9")


def _sink_app(received: list[int]):
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def read_all(request):
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            received.append(total)
        return PlainTextResponse(f"stored {total}")

    from starlette.middleware import Middleware

    from sslmed.serving.web.api import UploadLimit

    # as launch_options gives it to Gradio: a user middleware, inside Starlette's error handler
    return Starlette(
        routes=[
            Route("/gradio_api/upload", read_all, methods=["POST"]),
            Route("/api/classify", read_all, methods=["POST"]),
        ],
        middleware=[Middleware(UploadLimit, limit=100_000, max_upload_mb=0.05)],
    )


@pytest.mark.parametrize("path", ["/gradio_api/upload", "/api/classify"])
def test_chunked_bodies_without_a_length_are_stopped_at_the_limit(path: str) -> None:
    from starlette.testclient import TestClient

    received: list[int] = []
    client = TestClient(_sink_app(received))

    def body():  # Transfer-Encoding: chunked, no Content-Length
        for _ in range(100):
            yield b"\0" * 10_000

    answer = client.post(path, content=body())
    assert answer.status_code == 413 and "the limit is 0.05 MB" in answer.text
    assert max(received, default=0) <= 100_000, "nothing past the limit reached the route"
    assert client.post(path, content=b"\0" * 1000).text == "stored 1000"
    bad = client.post(path, content=b"x", headers={"content-length": "abc"})
    assert bad.status_code == 400


def test_launch_options_serve_only_the_listed_example_files(tmp_path: Path) -> None:
    from sslmed.serving.web.server import launch_options

    folder = _examples(tmp_path / "ex", tmp_path / "shadow")
    options = launch_options(folder, max_upload_mb=1.0)
    # the upload limit is UploadLimit's (the chunked-body test above); Gradio's page keeps no
    # cap of its own, so a big file gets sslmed's message (tests/serving/test_browser.py)
    assert "max_file_size" not in options
    # only the listed files are served, not the folder (a link added later is not reachable)
    assert options["allowed_paths"] == [str((folder / "real.png").resolve())]


def test_auth_file_that_is_a_fifo_or_huge_is_refused_in_one_line(tmp_path: Path) -> None:
    from sslmed.core.errors import UsageError
    from sslmed.serving.web.auth import read_credentials

    fifo = tmp_path / "logins.fifo"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="not a regular file"):
        read_credentials(fifo)  # before: blocked for ever in open()
    with pytest.raises(UsageError, match="not a regular file"):
        read_credentials("/dev/zero")
    big = tmp_path / "big.txt"
    big.write_bytes(b"a:b\n" * 300_000)
    with pytest.raises(UsageError, match="allowed"):
        read_credentials(big)
