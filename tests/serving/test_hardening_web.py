"""The web page under identical concurrent requests: every output file is complete."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sslmed.serving.predict import Predictor
from sslmed.serving.web.page import build_demo
from sslmed.serving.web.service import image_file
from sslmed.testing.models import shared_model_export
from sslmed.testing.web import launched_demo

httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")


def test_result_images_are_written_once_and_whole(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8))
    seen: list[bytes] = []
    stop = threading.Event()

    def write() -> str:
        return image_file(image, tmp_path)

    path = Path(write())
    expected = path.read_bytes()

    def read() -> None:
        while not stop.is_set():
            try:
                seen.append(path.read_bytes())
            except FileNotFoundError:  # between the unlink and the first rewrite: absent, never partial
                continue

    reader = threading.Thread(target=read)
    reader.start()
    try:
        path.unlink()  # force rewrites while the reader reads
        with ThreadPoolExecutor(8) as pool:
            paths = set(pool.map(lambda _: write(), range(64)))
    finally:
        stop.set()
        reader.join()
    assert paths == {str(path)}
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    assert len(seen) > 1 and all(data == expected for data in seen)  # every read saw the whole file


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[str]:
    predictor = Predictor(shared_model_export(data_dir, decoder=True), device="cpu")
    with launched_demo(build_demo(predictor, concurrency_limit=2)) as url:
        yield url


def test_identical_concurrent_explain_requests_all_succeed(server: str, data_dir: Path) -> None:
    """The same upload explained 24 times at once: every answer's images download whole."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    try:
        from serve_load import call_endpoint
    finally:
        sys.path.pop(0)
    image = str(data_dir / "samples" / "covid_cxnet_040.png")
    barrier = threading.Barrier(24)

    def one(_: int) -> str:
        with httpx.Client(base_url=server, timeout=300) as http:
            barrier.wait()
            try:
                call_endpoint(http, "explain", image, 300)
                return "ok"
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(24) as pool:
        outcomes = list(pool.map(one, range(24)))
    assert outcomes == ["ok"] * 24
