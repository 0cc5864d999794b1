"""Logins for the page and API, the refusal to serve beyond loopback without them, and
``POST /api/classify`` (loopback only: nothing here binds another address)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from sslmed.core.errors import UsageError
from sslmed.serving.predict import Predictor
from sslmed.serving.web.auth import LoginGuard, is_loopback, read_credentials
from sslmed.serving.web.page import build_demo
from sslmed.serving.web.server import serve
from sslmed.testing.models import free_port, shared_model_export

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")
USER, PASSWORD = "reader", "correct horse battery"
MAX_UPLOAD_MB = 1.0


@pytest.fixture(scope="module")
def predictor(data_dir: Path) -> Predictor:
    return Predictor(shared_model_export(data_dir), device="cpu")


@pytest.fixture(scope="module")
def image(data_dir: Path) -> Path:
    return data_dir / "samples" / "darkcovidnet_00001304_001.png"


@pytest.fixture(scope="module")
def server(predictor: Predictor) -> Iterator[str]:
    port = free_port()
    demo = serve(
        predictor,
        host="127.0.0.1",
        port=port,
        max_upload_mb=MAX_UPLOAD_MB,
        examples_dir=None,
        block=False,
        credentials={USER: PASSWORD},
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        demo.close()


def test_without_credentials_the_page_and_api_refuse(server: str, image: Path) -> None:
    with httpx.Client(base_url=server, timeout=30) as http:
        assert http.get("/config").status_code == 401  # what the page needs to show anything
        assert http.get("/gradio_api/info").status_code == 401
        upload = http.post("/gradio_api/upload", files={"files": ("x.png", image.read_bytes())})
        assert upload.status_code in (401, 403)
        assert http.post("/gradio_api/call/predict", json={"data": [None]}).status_code in (401, 403)
        answer = http.post("/api/classify", content=image.read_bytes())
        assert answer.status_code == 401 and answer.headers["www-authenticate"].startswith("Basic")
        wrong = http.post("/api/classify", content=image.read_bytes(), auth=(USER, "wrong"))
        assert wrong.status_code == 401
        assert http.post("/login", data={"username": USER, "password": "wrong"}).status_code == 400


def test_with_credentials_page_and_api_work(server: str, image: Path, predictor: Predictor) -> None:
    expected = predictor.analyse([image])[0].as_dict()
    with httpx.Client(base_url=server, timeout=60) as http:
        assert http.post("/login", data={"username": USER, "password": PASSWORD}).status_code == 200
        assert http.get("/config").status_code == 200  # the login cookie opens the page
        answer = http.post("/api/classify", content=image.read_bytes(), auth=(USER, PASSWORD))
    assert answer.status_code == 200
    body = answer.json()
    assert body["label"] == max(expected["probabilities"], key=expected["probabilities"].get)
    assert body["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-5)
    assert body["out_of_distribution"] == expected["out_of_distribution"]
    client = Client(server + "/", auth=(USER, PASSWORD), verbose=False)
    try:
        label, _warning, details = client.predict(handle_file(str(image)), api_name="/predict")
        assert label["label"] == body["label"] and details["calibrated"] is True
    finally:
        client.close()


def test_classify_route_refuses_bad_input_with_its_own_message(server: str, image: Path, tmp_path: Path) -> None:
    auth = (USER, PASSWORD)
    with httpx.Client(base_url=server, timeout=60) as http:
        text = http.post("/api/classify?name=notes.png", content=b"not an image\n" * 20, auth=auth)
        assert text.status_code == 400 and "notes.png" in text.json()["error"]
        assert text.json()["title"] == "Not a readable image"
        huge = http.post("/api/classify?name=big.tif", content=b"\0" * int(3e6), auth=auth)
        assert huge.status_code == 413 and "the limit is 1 MB" in huge.json()["error"]
        empty = http.post("/api/classify", content=b"", auth=auth)
        assert empty.status_code == 400 and empty.json()["title"] == "No image"
        multipart = http.post("/api/classify", files={"file": (image.name, image.read_bytes())}, auth=auth)
        assert multipart.status_code == 200 and multipart.json()["label"]


def test_failed_logins_lock_the_name() -> None:
    guard = LoginGuard({USER: PASSWORD}, max_failures=3, window=60, lockout=60)
    assert guard(USER, PASSWORD)
    for _ in range(3):
        assert not guard(USER, "guess")
    assert not guard(USER, PASSWORD), "locked: even the right password is refused for a while"
    assert not guard("nobody", PASSWORD)
    header = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert not guard.check_basic(header)
    assert LoginGuard({USER: PASSWORD}).check_basic(header)
    assert not LoginGuard({USER: PASSWORD}).check_basic("Basic !!!")


def test_binding_beyond_loopback_needs_logins_or_no_auth(predictor: Predictor, tmp_path: Path) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20")
    with pytest.raises(UsageError, match="--auth-file"):
        serve(predictor, host="0.0.0.0", block=False)  # refused before anything is bound
    from sslmed.app.cli import cli

    model = str(predictor.model_dir)
    result = CliRunner().invoke(cli, ["serve", model, "--host", "0.0.0.0"], env={"SSLMED_AUTH": ""})
    assert result.exit_code == 2 and "--no-auth" in result.output and "Traceback" not in result.output
    bad = tmp_path / "logins.txt"
    bad.write_text("# logins\nreader-without-password\n")
    result = CliRunner().invoke(cli, ["serve", model, "--host", "0.0.0.0", "--auth-file", str(bad)])
    assert result.exit_code == 2 and "logins.txt, line 2" in result.output
    result = CliRunner().invoke(cli, ["serve", model, "--auth-file", str(bad), "--no-auth"])
    assert result.exit_code == 2


def test_credentials_from_a_file_or_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "logins.txt"
    path.write_text(f"# who may log in\n{USER}:{PASSWORD}\nsecond:pa:ss\n")
    assert read_credentials(path, environ={}) == {USER: PASSWORD, "second": "pa:ss"}
    assert read_credentials(None, environ={"SSLMED_AUTH": f"{USER}:{PASSWORD}"}) == {USER: PASSWORD}
    assert read_credentials(None, environ={}) is None
    with pytest.raises(UsageError, match="cannot be read"):
        read_credentials(tmp_path / "absent.txt", environ={})


def test_no_auth_is_announced_on_the_page(predictor: Predictor) -> None:
    demo = build_demo(predictor, notice="**This page has no login**")
    texts = [block.value for block in demo.blocks.values() if getattr(block, "elem_id", None) == "notice"]
    assert texts == ["**This page has no login**"]
