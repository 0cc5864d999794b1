"""The web app through its HTTP API (gradio_client against a loopback server), the
Grad-CAM computation, and the ``sslmed serve`` command's handling of bad models."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import wait
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from sslmed.serving.explain import grad_cam
from sslmed.serving.predict import Predictor
from sslmed.serving.web.cards import DISCLAIMER, model_card
from sslmed.serving.web.page import build_demo
from sslmed.serving.web.server import launch_options
from sslmed.serving.web.service import DemoError, DemoService
from sslmed.testing.models import make_model_export, shared_model_export
from sslmed.testing.web import launched_demo

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

MAX_UPLOAD_MB = 1.0
# gradio's queue calls a pandas option that pandas 3 deprecates; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")


@pytest.fixture(scope="module")
def samples(data_dir: Path) -> Path:
    folder = data_dir / "samples"
    if not any(folder.glob("*.png")):
        pytest.skip(f"no sample images in {folder}")
    return folder


@pytest.fixture(scope="module")
def crsm_predictor(data_dir: Path) -> Predictor:
    """A model export with a decoder extra, as a CRSM run writes one."""
    return Predictor(shared_model_export(data_dir, decoder=True), device="cpu")


@pytest.fixture(scope="module")
def server(crsm_predictor: Predictor, samples: Path) -> Iterator[str]:
    demo = build_demo(crsm_predictor, examples_dir=samples, max_upload_mb=MAX_UPLOAD_MB, concurrency_limit=2)
    with launched_demo(demo, examples_dir=samples, max_upload_mb=MAX_UPLOAD_MB, api=True) as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[Client]:
    client = Client(server, verbose=False)
    yield client
    client.close()


def test_endpoints_are_named(client: Client) -> None:
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/predict", "/explain"} <= set(endpoints)


def test_prediction_over_http_equals_the_predictor(client: Client, crsm_predictor: Predictor, samples: Path) -> None:
    for name in ("covid_cxnet_001.jpeg", "hannover_covid_fff13f3a.png"):
        result, warning, details = client.predict(handle_file(str(samples / name)), api_name="/predict")
        expected = crsm_predictor.predict([samples / name])[0]
        assert details == crsm_predictor.analyse([samples / name])[0].as_dict()
        assert bool(warning) == details["out_of_distribution"]["flagged"]  # the warning shows exactly when flagged
        assert result["label"] == max(expected, key=expected.get)
        got = {c["label"]: c["confidence"] for c in result["confidences"]}
        assert set(got) == set(expected)
        for label, p in expected.items():
            assert got[label] == pytest.approx(p, abs=1e-5)


def test_explain_gives_model_view_gradcam_and_reconstruction(
    client: Client, crsm_predictor: Predictor, samples: Path
) -> None:
    view_path, overlay_path, reconstruction_path, caption = client.predict(
        handle_file(str(samples / "covid_cxnet_040.png")), api_name="/explain"
    )
    assert "layer4" in caption and "4×4" in caption  # 32 px with the small stem: the last stage is 4×4
    view, overlay, reconstruction = (Image.open(p) for p in (view_path, overlay_path, reconstruction_path))
    assert view.width == view.height >= crsm_predictor.image_size
    assert overlay.size == view.size  # shown at the size of the model's view, never as a thumbnail
    colours = np.asarray(overlay.convert("RGB")).astype(int)
    assert np.abs(colours[..., 0] - colours[..., 2]).max() > 60, "the Grad-CAM overlay should be coloured, not grey"
    assert reconstruction.width == reconstruction.height >= crsm_predictor.image_size


def make_bad_files(folder: Path, samples: Path) -> dict[str, Path]:
    png = (samples / "darkcovidnet_00001304_001.png").read_bytes()
    files = {
        "text": folder / "notes.png",
        "empty": folder / "empty.png",
        "truncated": folder / "cut.png",
        "large": folder / "large.tif",
    }
    files["text"].write_text("not an image\n" * 50)
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(png[: len(png) // 4])
    Image.open(samples / "darkcovidnet_00001304_001.png").save(files["large"])  # uncompressed: about 1.05 MB
    assert files["large"].stat().st_size > MAX_UPLOAD_MB * 1e6
    return files


@pytest.mark.parametrize(
    "kind, message",
    [
        ("text", "is a text file, not an image"),
        ("empty", "empty"),
        ("truncated", "cut.png"),
        ("large", "the limit is 1 MB"),
        (None, "No image received"),
    ],
)
def test_bad_input_gives_one_message_and_the_server_keeps_serving(
    client: Client, samples: Path, tmp_path: Path, kind: str | None, message: str
) -> None:
    files = make_bad_files(tmp_path, samples)
    argument = handle_file(str(files[kind])) if kind else None
    for endpoint in ("/predict", "/explain"):
        with pytest.raises(AppError, match=message) as info:
            client.predict(argument, api_name=endpoint)
        assert "/tmp" not in str(info.value), "messages name the file, not the server's paths"
    assert client.predict(handle_file(str(samples / "hannover_covid_fff13f3a.png")), api_name="/predict")[0]["label"]


def test_concurrent_requests_all_succeed(client: Client, samples: Path) -> None:
    image = handle_file(str(samples / "covid_cxnet_040.png"))
    jobs = [client.submit(image, api_name="/predict") for _ in range(8)]
    wait(jobs, timeout=120)
    labels = {job.result()[0]["label"] for job in jobs}
    assert len(labels) == 1


def test_only_uploads_and_examples_are_served(server: str, samples: Path) -> None:
    def status(path: str) -> int:
        try:
            with urllib.request.urlopen(f"{server}gradio_api/file={path}", timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert status(str(samples.resolve() / "hannover_covid_fff13f3a.png")) == 200
    assert status("/etc/passwd") == 403
    assert status(str(Path(__file__).resolve())) == 403


def test_grad_cam_matches_a_direct_computation(crsm_predictor: Predictor, samples: Path) -> None:
    model = crsm_predictor.model
    x = crsm_predictor.model_input(crsm_predictor.load(samples / "covid_cxnet_001.jpeg"))
    result = grad_cam(model, x)
    features = model.backbone.forward_features(x).detach().requires_grad_(True)
    logits = model.head(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(features, 1), 1))
    (gradient,) = torch.autograd.grad(logits[0, result.class_index], features)
    expected = torch.relu((gradient[0].mean(dim=(1, 2))[:, None, None] * features[0]).sum(0))
    expected = (expected / expected.max()).detach().numpy() if expected.max() > 0 else expected.detach().numpy()
    assert result.class_index == int(logits.argmax())
    np.testing.assert_allclose(result.cam, expected, atol=1e-4)
    assert not model.backbone.last_stage()._forward_hooks, "the hook is removed after use"
    assert all(p.grad is None for p in model.parameters()), "no parameter gradients are made"


def test_service_without_decoder_and_model_card(data_dir: Path, samples: Path, tmp_path: Path) -> None:
    predictor = Predictor(make_model_export(tmp_path, data_dir, per_class=3), device="cpu")
    service = DemoService(predictor, max_upload_mb=5)
    shown = service.explain(str(samples / "covid_cxnet_007.jpg"))
    assert shown.reconstruction is None and shown.heatmap is not None and shown.heatmap.size == shown.view.size
    with pytest.raises(DemoError, match="No image received"):
        service.predict(None)
    card = model_card(predictor)
    assert DISCLAIMER in card and "test-export" in card and "balanced accuracy" in card and "covid3" in card
    demo = build_demo(predictor, examples_dir=None)  # no examples folder: still builds
    assert demo is not None and launch_options(None)["allowed_paths"] == []


def test_serve_command_refuses_a_missing_model_in_one_line(tmp_path: Path) -> None:
    from sslmed.app.cli import cli

    result = CliRunner().invoke(cli, ["serve", str(tmp_path / "no-such-run")])
    assert result.exit_code == 1
    assert "Error:" in result.output and "not found" in result.output and "Traceback" not in result.output
    assert "127.0.0.1" in CliRunner().invoke(cli, ["serve", "--help"]).output


@pytest.mark.slow
def test_a_trained_crsm_model_shows_its_reconstruction(tiny_recipe, tmp_path: Path, samples: Path) -> None:
    """A real (tiny) CRSM run: its model export carries the decoder, and the page's
    explain step returns the decoder's reconstruction beside the model input."""
    from sslmed.app.runner import run_recipe
    from sslmed.core.plugins import get_registry

    if "crsm" not in get_registry().names("objective"):
        pytest.skip("the crsm objective is not registered")
    recipe = tiny_recipe(objective="crsm", extra="")
    result = run_recipe(
        recipe, ("defaults.augmentations=[{name: simclr}, {name: mdre}]",), runs_dir=tmp_path / "runs", progress=False
    )
    predictor = Predictor(result.run_dir, device="cpu")
    assert "decoder" in predictor.extras
    shown = DemoService(predictor).explain(str(samples / "hannover_covid_fff13f3a.png"))
    assert shown.reconstruction is not None and shown.reconstruction.size == shown.view.size


def test_grad_cam_and_predictions_can_run_at_once(crsm_predictor: Predictor, samples: Path) -> None:
    """The Grad-CAM hook acts only in its own thread: predictions running beside it
    (as concurrent requests do) get exactly their sequential results."""
    from concurrent.futures import ThreadPoolExecutor

    service = DemoService(crsm_predictor)
    files = [str(p) for p in sorted(samples.glob("*.png"))[:4]]
    expected = [service.predict(f) for f in files]
    with ThreadPoolExecutor(4) as pool:
        explained = [pool.submit(service.explain, f) for f in files]
        predicted = [pool.submit(service.predict, f) for f in files * 3]
        results = [future.result() for future in predicted]
        assert all(future.result().heatmap is not None for future in explained)
    for i, result in enumerate(results):
        assert result == pytest.approx(expected[i % len(files)], abs=1e-5)


def test_batch_api_answers_a_row_per_file_and_csv(server: str, crsm_predictor: Predictor, samples: Path) -> None:
    """POST /api/classify_batch: several multipart files (one not an image) -> one row
    each, the bad one with its error; ``?format=csv`` gives the page's CSV."""
    import json as json_module
    import uuid

    files = [("a.png", (samples / "hannover_covid_fff13f3a.png").read_bytes()), ("bad.png", b"not an image")]
    boundary = uuid.uuid4().hex
    body = (
        b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
            + data
            + b"\r\n"
            for name, data in files
        )
        + f"--{boundary}--\r\n".encode()
    )

    def post(query: str = "") -> bytes:
        request = urllib.request.Request(
            f"{server}api/classify_batch{query}",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read()

    answer = json_module.loads(post())
    assert answer["classes"] == crsm_predictor.classes
    good, bad = answer["rows"]
    assert good["file"] == "a.png" and good["label"] in crsm_predictor.classes and "out_of_distribution" in good
    expected = crsm_predictor.analyse([samples / "hannover_covid_fff13f3a.png"])[0].probabilities
    assert good["probabilities"] == pytest.approx(expected, abs=1e-5)
    assert bad["file"] == "bad.png" and bad["error"]
    lines = post("?format=csv").decode().splitlines()
    assert lines[0].startswith("file,top class,p(") and len(lines) == 3 and lines[2].startswith("bad.png,")


def test_api_shows_dicom_fields_but_no_identifier(server: str) -> None:
    from sslmed.testing.dicom import IDENTIFIERS, identified_dicom

    request = urllib.request.Request(f"{server}api/classify?name=study.dcm", data=identified_dicom())
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read().decode()
    assert '"view_position":"PA"' in body.replace(" ", "") and "centre 2000" in body
    assert not any(value in body for value in IDENTIFIERS.values())
