"""The classification web page and its HTTP API (Gradio 6), over one :class:`Predictor`.

``build_demo(predictor)`` makes the page; :func:`serve` launches it. Two API
endpoints, both usable from ``gradio_client.Client`` or plain HTTP:

* ``/predict``: an image file -> the class probabilities ``{"label": top class,
  "confidences": [...]}`` (calibrated when the model is; the same code as ``sslmed
  predict``), the out-of-distribution warning (Markdown, empty when not raised) and
  the details as JSON (:meth:`Prediction.as_dict`); no Grad-CAM;
* ``/explain``: an image file -> the model input as an image, the Grad-CAM overlay
  and, for models with a decoder (CRSM), the reconstruction.

Beside Gradio's API, ``POST /api/classify`` (:func:`classify_route`) takes the image
file as the request body and answers JSON in one round trip, without Gradio's queue:
the fast path for programs.

The page runs ``/predict`` and then ``/explain``. Input that cannot be classified
(nothing uploaded, an empty, corrupt or non-image file, a file over the size limit)
raises ``gr.Error`` with one sentence; the server keeps serving. The model is loaded
once, in eval mode; predictions run under ``torch.inference_mode()``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import gradio as gr
import torch
from PIL import Image

from sslmed.errors import ImageLoadError
from sslmed.explain import grad_cam, overlay, tensor_to_image
from sslmed.predict import Prediction, Predictor
from sslmed.rundir import atomic_write_bytes

DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_CONCURRENCY = 2
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
#: queued requests beyond this are refused at once instead of waiting without bound
DEFAULT_QUEUE_SIZE = 256
IMAGE_HEIGHT = 320
#: (how often, how old) in seconds: uploaded and generated files older than an hour are deleted
CACHE_LIFETIME = (1800, 3600)
#: file kinds offered as examples and named on the page
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".dcm", ".dicom")

DISCLAIMER = (
    "**Research tool, not a diagnostic device.** This model was trained in a research "
    "project on public data sets; it has not been validated clinically and must not be "
    "used to diagnose, treat or triage anyone."
)
FORMATS_TEXT = "PNG, JPEG, WebP, TIFF or DICOM"


class DemoError(gr.Error):
    """One clear message for the person (or program) that sent the request, titled by
    what went wrong (``title``) and answered with HTTP ``status`` by ``/api/classify``."""

    def __init__(self, message: str, title: str = "Cannot classify this file", status: int = 400) -> None:
        # Gradio 6's page titles every error toast "Error" whatever the title, so the
        # message starts with it too ("File too large — scan.png: ...")
        super().__init__(f"{title} — {message}", title=title, print_exception=False)
        self.title = title
        self.status = status
        self.text = message


class DemoService:
    """What the page does, without the page: checked loading, prediction, explanation.

    Each method takes the path of an uploaded file (what ``gr.File`` gives) and raises
    :class:`DemoError` with a message meant for the user on bad input.
    """

    def __init__(self, predictor: Predictor, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB) -> None:
        if max_upload_mb <= 0:
            raise ValueError(f"max_upload_mb must be positive, got {max_upload_mb}")
        self.predictor = predictor
        self.max_upload_mb = float(max_upload_mb)
        self.decoder: torch.nn.Module | None = predictor.extras.get("decoder")

    def load(self, file: Any) -> Image.Image:
        """The uploaded image as the model reads it; :class:`DemoError` when it is not usable."""
        path = _file_path(file)
        if path is None:
            raise DemoError(f"No image received: upload an X-ray image ({FORMATS_TEXT}) first.", "No image")
        name = os.path.basename(path)
        try:
            size = os.path.getsize(path)
        except OSError:
            raise DemoError(f"{name}: the upload could not be read; please upload it again.", "Upload failed") from None
        if size > self.max_upload_mb * 1e6:
            raise DemoError(self.too_large_message(name, size), "File too large", 413)
        return self.decode(path, name)

    def too_large_message(self, name: str, size: float) -> str:
        """What a person is told about a file over the limit."""
        return f"{name}: the file is {size / 1e6:.3g} MB; the limit is {self.max_upload_mb:g} MB."

    def decode(self, source: str | bytes, name: str) -> Image.Image:
        """An image file (path or bytes) through the one loader; :class:`DemoError` naming ``name``."""
        try:
            return self.predictor.load(source)
        except ImageLoadError as exc:
            text = str(exc).replace(source if isinstance(source, str) else "<uploaded image>", name)
            raise DemoError(text, "Not a readable image") from None
        except Exception as exc:  # the loader should name every problem; never show a traceback
            raise DemoError(
                f"{name}: could not be read as an image ({type(exc).__name__})", "Not a readable image"
            ) from exc

    def predict(self, file: Any) -> dict[str, float]:
        """Class probabilities ``{label: p}`` of one uploaded image (calibrated when the model is)."""
        return self.analyse(file).probabilities

    def analyse(self, file: Any) -> Prediction:
        """Probabilities and the out-of-distribution score of one uploaded image."""
        return self.predictor.analyse_images([self.load(file)])[0]

    def explain(self, file: Any) -> tuple[Image.Image, Image.Image, Image.Image | None]:
        """The model input as an image, the Grad-CAM overlay of the top class, and the
        decoder's reconstruction (``None`` when the model has no decoder)."""
        image = self.load(file)
        x = self.predictor.model_input(image).to(self.predictor.device)
        cam = grad_cam(self.predictor.model, x)
        reconstruction = None
        if self.decoder is not None:
            with torch.inference_mode():
                out = self.decoder(self.predictor.model.backbone.forward_features(x))
            reconstruction = tensor_to_image(out)
        view = tensor_to_image(x)
        # laid over the model's view, so that both panels have the same size and every
        # Grad-CAM cell lies over the pixels it came from (a 64 px upload is not a thumbnail)
        return view, overlay(view, cam.cam), reconstruction


def _file_path(file: Any) -> str | None:
    """The path in whatever ``gr.File`` hands over (a path, or an object with ``.name``)."""
    if file is None or file == "" or file == []:
        return None
    if isinstance(file, (list, tuple)):
        file = file[0]
    if isinstance(file, dict):
        return file.get("path")
    return str(getattr(file, "name", file))


def image_file(image: Image.Image | None, folder: Path | None = None) -> str | None:
    """``image`` as a PNG file named by its content, written once and atomically.

    Gradio would save a returned PIL image under a name derived from its content by
    rewriting the file in place, so identical concurrent requests (the same upload
    twice) truncated the file another client was downloading. Here each file is written
    to a temporary name and renamed: a reader only ever sees a complete file.
    """
    if image is None:
        return None
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    folder = folder or Path(tempfile.gettempdir()) / "sslmed-explain"
    path = folder / f"{hashlib.sha256(data).hexdigest()[:32]}.png"
    if path.is_file():
        os.utime(path)  # in use again: the prune below must not take it as an hour old
    else:
        atomic_write_bytes(path, data)
    _prune(folder)
    return str(path)


_last_prune = {"at": 0.0}


def _prune(folder: Path) -> None:
    """Delete result images older than the cache lifetime, at most every half hour."""
    now = time.time()
    if now - _last_prune["at"] < CACHE_LIFETIME[0]:
        return
    _last_prune["at"] = now
    for old in folder.glob("*.png"):
        try:
            if now - old.stat().st_mtime > CACHE_LIFETIME[1]:
                old.unlink()
        except OSError:  # another process pruned it first
            pass


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def model_card(predictor: Predictor) -> str:
    """Markdown describing the model: recipe, data, architecture, test metrics, limits."""
    meta = predictor.meta
    backbone = meta.get("backbone", {})
    arch = backbone.get("name", "?") if isinstance(backbone, dict) else str(backbone)
    lines = [
        DISCLAIMER,
        "",
        f"- **Recipe:** `{meta.get('recipe', '?')}` (pre-training step `{meta.get('step', '?')}`)",
        f"- **Data (probe and test):** `{meta.get('data', '?')}`",
        f"- **Backbone:** `{arch}`, input {predictor.image_size}×{predictor.image_size} px, "
        f"{predictor.in_channels} channel(s); linear probe on frozen features",
        f"- **Classes:** {', '.join(predictor.classes)}",
    ]
    if predictor.extras:
        lines.append(f"- **Extra modules:** {', '.join(sorted(predictor.extras))}")
    metrics = meta.get("metrics") or {}
    if metrics:
        lines += [
            "",
            "**Test metrics** (held-out split, as reported by the run):",
            "",
            "| metric | value |",
            "|---|---|",
        ]
        for key, name in (
            ("accuracy", "accuracy"),
            ("balanced_accuracy", "balanced accuracy"),
            ("macro_auc", "macro AUC"),
        ):
            if key in metrics:
                lines.append(f"| {name} | {_format_value(metrics[key])} |")
        for label, value in (metrics.get("recall") or {}).items():
            lines.append(f"| recall {label} | {_format_value(value)} |")
        if "train_images" in metrics:
            lines.append(f"| probe training images | {metrics['train_images']} |")
    else:
        lines += ["", "*No test metrics were recorded with this model.*"]
    lines += ["", calibration_text(meta), "", ood_text(meta)]
    lines += [
        "",
        "Grad-CAM shows where the evidence for the top class lies in the last feature "
        "map; it is a coarse aid for looking at the model, not a finding.",
        "",
        f"Run: `{predictor.model_dir.parent.name}`",
    ]
    return "\n".join(lines)


def calibration_text(meta: dict[str, Any]) -> str:
    """One sentence on whether (and how well) the probabilities are calibrated."""
    cal = meta.get("calibration")
    if not cal:
        return "**Probabilities:** the probe's softmax, *not calibrated* (this export has no temperature)."
    return (
        f"**Probabilities are calibrated:** temperature scaling (T = {cal['temperature']:.2f}, fitted on "
        f"{cal['fitted_on']}); on the test split the expected calibration error went from "
        f"{cal['ece_before']:.3f} to {cal['ece_after']:.3f} and the Brier score from "
        f"{cal['brier_before']:.3f} to {cal['brier_after']:.3f}."
    )


def ood_text(meta: dict[str, Any]) -> str:
    """One sentence on the out-of-distribution check of this model."""
    ood = meta.get("ood")
    if not ood:
        return "**Out-of-distribution check:** none (this export has no feature statistics)."
    return (
        f"**Out-of-distribution check:** an image whose features lie further from the training images' "
        f"than {ood['threshold']:.2f} (the {ood['quantile']:.0%} quantile of {ood['fitted_on']}) is flagged; "
        "the check cannot prove an image is a chest radiograph, and misses some that are not."
    )


def trained_on(predictor: Predictor) -> str:
    """The short "what this model was trained on" box beside the results."""
    meta = predictor.meta
    metrics = meta.get("metrics") or {}
    scores = ", ".join(
        f"{name} {_format_value(metrics[key])}"
        for key, name in (("balanced_accuracy", "balanced accuracy"), ("macro_auc", "macro AUC"))
        if key in metrics
    )
    cal = meta.get("calibration")
    ood = meta.get("ood")
    probabilities = (
        f"calibrated (T = {cal['temperature']:.2f}, test ECE {cal['ece_after']:.3f})" if cal else "not calibrated"
    )
    lines = [
        "**What this model was trained on**",
        "",
        f"- Data: `{meta.get('data', '?')}` (chest radiographs); classes: {', '.join(predictor.classes)}",
        f"- Test split: {scores or 'no metrics recorded'}",
        f"- Probabilities: {probabilities}",
        f"- Out-of-distribution threshold: {format(ood['threshold'], '.2f') if ood else 'none'}",
        "",
        "Research tool, not a diagnostic device.",
    ]
    return "\n".join(lines)


def ood_warning(prediction: Prediction) -> str:
    """The warning shown above the probabilities ('' when the image is not flagged)."""
    if not prediction.ood_flag:
        return ""
    return (
        f"### ⚠ This image is unlike the images this model was trained on\n"
        f"Its out-of-distribution score is {prediction.ood_score:.2f}, above the threshold "
        f"{prediction.ood_threshold:.2f}. It may not be a chest radiograph, or it comes from a very "
        "different source; **the probabilities below are not meaningful for it**."
    )


def example_files(examples_dir: str | Path | None) -> tuple[list[str], list[str]]:
    """Image files of ``examples_dir`` (sorted) and a caption for each (its label from
    ``labels.csv`` when there is one); empty when the folder is absent."""
    if examples_dir is None:
        return [], []
    folder = Path(examples_dir)
    if not folder.is_dir():
        return [], []
    labels: dict[str, str] = {}
    if (folder / "labels.csv").is_file():
        with open(folder / "labels.csv", newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if row.get("path") and row.get("label"):
                    labels[row["path"]] = row["label"]
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    captions = [f"{p.name} ({labels[p.name]})" if p.name in labels else p.name for p in files]
    return [str(p.resolve()) for p in files], captions


def build_demo(
    predictor: Predictor,
    *,
    examples_dir: str | Path | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    concurrency_limit: int = DEFAULT_CONCURRENCY,
    top_k: int = 5,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    notice: str | None = None,
) -> gr.Blocks:
    """The page over ``predictor``; launch it with :func:`launch_options` (or :func:`serve`).

    ``concurrency_limit`` requests run at once (the rest wait in Gradio's queue, at
    most ``queue_size``); files over ``max_upload_mb`` are refused with a message.
    ``notice`` (Markdown) is shown on top of the page, e.g. that it has no login.
    """
    if concurrency_limit < 1:
        raise ValueError(f"concurrency_limit must be at least 1, got {concurrency_limit}")
    service = DemoService(predictor, max_upload_mb)
    examples, captions = example_files(examples_dir)
    size = predictor.image_size

    # uploads and result images live in Gradio's cache; delete them after an hour
    with gr.Blocks(
        title="sslmed: chest X-ray classification", analytics_enabled=False, delete_cache=CACHE_LIFETIME
    ) as demo:
        gr.Markdown(
            "# Chest X-ray classification (sslmed)\n"
            f"Upload or drop a radiograph ({FORMATS_TEXT}, up to {max_upload_mb:g} MB) or click an "
            "example: it is classified at once (**Classify** runs it again). " + DISCLAIMER
        )
        if notice:
            gr.Markdown(notice, elem_id="notice")
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                upload = gr.File(
                    label=f"X-ray image ({FORMATS_TEXT})", file_count="single", type="filepath", elem_id="upload"
                )
                classify = gr.Button("Classify", variant="primary", elem_id="classify")
                gr.Markdown(trained_on(predictor), elem_id="trained-on")
                example_slot = gr.Column()
            with gr.Column(scale=2):
                warning = gr.Markdown("", elem_id="ood-warning")
                label = gr.Label(
                    # multi-label: every finding has its own probability, so all are shown
                    num_top_classes=len(predictor.classes)
                    if predictor.task.independent
                    else min(top_k, len(predictor.classes)),
                    label=predictor.task.probabilities_title,
                    elem_id="probabilities",
                )
                with gr.Accordion("Details (calibration, out-of-distribution score)", open=False):
                    details = gr.JSON(label="As the API returns them", elem_id="details")
                with gr.Row():
                    model_view = gr.Image(
                        label=f"As the model sees it ({size}×{size} px)",
                        type="pil",
                        image_mode=None,
                        format="png",
                        interactive=False,
                        height=IMAGE_HEIGHT,
                        elem_id="model-view",
                    )
                    reconstruction = gr.Image(
                        label="CRSM reconstruction (decoder output)",
                        type="pil",
                        image_mode=None,
                        format="png",
                        interactive=False,
                        height=IMAGE_HEIGHT,
                        visible=service.decoder is not None,
                        elem_id="reconstruction",
                    )
                    heatmap = gr.Image(
                        label="Grad-CAM on the last backbone stage (top class)",
                        type="pil",
                        format="png",
                        interactive=False,
                        height=IMAGE_HEIGHT,
                        elem_id="gradcam",
                    )
        with gr.Accordion("Model card", open=True):
            gr.Markdown(model_card(predictor), elem_id="model-card")

        def clear() -> tuple[str, None, None, None, None, None]:
            return "", None, None, None, None, None

        def explain(file: Any) -> tuple[str | None, ...]:
            return tuple(image_file(image) for image in service.explain(file))

        def predict(file: Any) -> tuple[dict[str, float], str, dict[str, Any]]:
            result = service.analyse(file)
            return result.probabilities, ood_warning(result), result.as_dict()

        def analyse(file: Any) -> tuple[Any, ...]:
            images = tuple(image_file(image) for image in service.explain(file))
            return *predict(file), *images

        if examples:
            with example_slot:  # clicking an example classifies it at once
                gr.Examples(
                    examples=[[path] for path in examples],
                    inputs=[upload],
                    example_labels=captions,
                    outputs=[label, warning, details, model_view, heatmap, reconstruction],
                    fn=analyse,
                    run_on_click=True,
                    cache_examples=False,
                    label="Examples (real radiographs; the label in brackets is the data set's)",
                )

        cleared = gr.on(
            [classify.click, upload.upload],
            clear,
            inputs=None,
            outputs=[warning, label, details, model_view, heatmap, reconstruction],
            queue=False,
            api_visibility="private",
            show_progress="hidden",
        )
        predicted = cleared.then(
            predict,
            inputs=[upload],
            outputs=[label, warning, details],
            api_name="predict",
            api_description=(
                "Class probabilities (calibrated when the model is), the out-of-distribution warning "
                "(empty when not raised) and both as JSON, for one image file (PNG, JPEG, WebP, TIFF, DICOM)."
            ),
        )
        predicted.success(
            explain,
            inputs=[upload],
            outputs=[model_view, heatmap, reconstruction],
            api_name="explain",
            api_description="Model input, Grad-CAM overlay and (CRSM models) reconstruction of one image file.",
        )
    demo.queue(default_concurrency_limit=concurrency_limit, max_size=queue_size)
    demo.sslmed_service = service  # read by launch_options: /api/classify runs the same service
    demo.sslmed_concurrency = concurrency_limit
    return demo


def launch_options(
    examples_dir: str | Path | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    *,
    demo: gr.Blocks | None = None,
    guard: LoginGuard | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``demo.launch`` that go with :func:`build_demo`.

    Only the examples folder is served besides uploads; :class:`UploadLimit` refuses uploads
    far over the limit (twice it, plus 1 MB) so that huge files never reach the disk,
    while the page explains the limit for the ones in between. With ``demo`` (made by
    :func:`build_demo`) the app also gets ``POST /api/classify``; with ``guard`` every
    page, Gradio endpoint and ``/api/classify`` needs a login.
    """
    allowed = [str(Path(examples_dir).resolve())] if examples_dir and Path(examples_dir).is_dir() else []
    from starlette.middleware import Middleware

    hard_limit = int(max_upload_mb * 2e6 + 1e6)
    app_kwargs: dict[str, Any] = {
        "middleware": [Middleware(UploadLimit, limit=hard_limit, max_upload_mb=max_upload_mb)]
    }
    service = getattr(demo, "sslmed_service", None)
    if service is not None:
        app_kwargs["routes"] = api_routes(service, guard, getattr(demo, "sslmed_concurrency", 2))
    extra: dict[str, Any] = {"app_kwargs": app_kwargs}
    if guard is not None:
        extra["auth"] = guard
        extra["auth_message"] = "This sslmed server needs a login (ask whoever runs it)."
    return {
        **extra,
        "allowed_paths": allowed,
        # no Gradio limit: its page would refuse big files in its own words; UploadLimit
        # refuses them on the server, before they are read, in sslmed's
        "max_file_size": None,
        "share": False,
        "show_error": False,
        "footer_links": ["api"],
        "theme": gr.themes.Soft(),
    }


def default_examples_dir() -> Path | None:
    """``../shared/data/samples`` beside the project (or ``$SSLMED_DATA/samples``), if present."""
    candidates = []
    if os.environ.get("SSLMED_DATA"):
        candidates.append(Path(os.environ["SSLMED_DATA"]) / "samples")
    candidates += [
        Path.cwd().parent / "shared" / "data" / "samples",
        Path(__file__).resolve().parents[2] / "shared" / "data" / "samples",
    ]
    return next((c for c in candidates if c.is_dir()), None)


# ------------------------------------------------------------------ the fast JSON route


def api_routes(service: DemoService, guard: LoginGuard | None = None, concurrency: int = 2) -> list[Any]:
    """``POST /api/classify``: the image file as the request body (or a multipart field
    ``file``) -> ``{"label": top class, "probabilities": ..., "calibrated": ...,
    "out_of_distribution": ...}`` in one round trip.

    It skips Gradio's upload-then-queue protocol (three requests, a temporary file and
    an event stream), which costs more than the model itself for small images. At most
    ``concurrency`` predictions of this route run at once; errors are JSON
    ``{"error": message, "title": ...}`` with 400 (not an image), 401 (login needed)
    or 413 (over the size limit).
    """
    import anyio
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    limiter: list[anyio.CapacityLimiter] = []  # made in the server's event loop, on first use
    limit = int(service.max_upload_mb * 1e6)

    def refuse(error: DemoError) -> JSONResponse:
        return JSONResponse({"error": error.text, "title": error.title}, status_code=error.status)

    async def classify(request: Request) -> JSONResponse:
        if guard is not None and not guard.check_basic(request.headers.get("authorization")):
            return JSONResponse(
                {"error": "login required: send HTTP basic credentials (curl -u USER)", "title": "Not logged in"},
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="sslmed"'},
            )
        name = request.query_params.get("name", "upload")
        declared = int(request.headers.get("content-length") or 0)
        if declared > limit + 65536:  # refused before reading: a huge body never reaches memory
            return refuse(DemoError(service.too_large_message(name, declared), "File too large", 413))
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=4, max_part_size=limit + 1)
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                return refuse(DemoError("No image received: send the file as the multipart field 'file'.", "No image"))
            name, data = upload.filename or name, await upload.read()
        else:
            data = bytearray()
            async for chunk in request.stream():
                data += chunk
                if len(data) > limit:
                    break
            data = bytes(data)
        if not data:
            return refuse(
                DemoError(f"No image received: send the image file ({FORMATS_TEXT}) as the body.", "No image")
            )
        if len(data) > limit:
            return refuse(DemoError(service.too_large_message(name, len(data)), "File too large", 413))
        if not limiter:
            limiter.append(anyio.CapacityLimiter(concurrency))

        def run() -> Prediction:
            return service.predictor.analyse_images([service.decode(data, name)])[0]

        try:
            result = await anyio.to_thread.run_sync(run, limiter=limiter[0])
        except DemoError as error:
            return refuse(error)
        top = max(result.probabilities, key=result.probabilities.get)
        return JSONResponse({"label": top, **result.as_dict()})

    return [Route("/api/classify", classify, methods=["POST"])]


class UploadLimit:
    """ASGI middleware: an upload (``POST .../upload``) whose declared size is over
    ``limit`` bytes is answered at once with 413 and sslmed's message, before any of it
    is read or stored (Gradio's own limit would answer with its own words)."""

    def __init__(self, app: Any, limit: int, max_upload_mb: float) -> None:
        self.app, self.limit, self.max_upload_mb = app, limit, max_upload_mb

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].rstrip("/").endswith("/upload"):
            headers = dict(scope.get("headers") or [])
            declared = int(headers.get(b"content-length", b"0") or 0)
            if declared > self.limit:
                from starlette.responses import PlainTextResponse

                message = (
                    f"The file is about {declared / 1e6:.3g} MB; the limit is {self.max_upload_mb:g} MB. "
                    "Upload a smaller export of the image (e.g. PNG or JPEG)."
                )
                # plain text: the page shows the body as it is ("HTTP 413: The file is ...")
                await PlainTextResponse(message, status_code=413)(scope, receive, send)
                return
        await self.app(scope, receive, send)


# ------------------------------------------------------------------ logins


AUTH_ENV = "SSLMED_AUTH"
LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """True when ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_credentials(text: str, origin: str) -> dict[str, str]:
    """``user:password`` lines (blank lines and ``#`` comments ignored) -> ``{user: password}``;
    :class:`~sslmed.errors.UsageError` naming ``origin`` and the line for anything else."""
    from sslmed.errors import UsageError

    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user.strip() or not password:
            raise UsageError(f"{origin}, line {number}: expected 'user:password' (the password may not be empty)")
        found[user.strip()] = password
    if not found:
        raise UsageError(f"{origin}: no 'user:password' line")
    return found


def read_credentials(
    auth_file: str | Path | None = None, environ: dict[str, str] | None = None
) -> dict[str, str] | None:
    """Logins from ``auth_file`` or else the ``SSLMED_AUTH`` environment variable
    (never from the command line, where other users of the machine could read them);
    ``None`` when neither is given."""
    from sslmed.errors import UsageError

    environ = os.environ if environ is None else environ
    if auth_file is not None:
        path = Path(auth_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--auth-file {path}: cannot be read ({exc.strerror or exc})") from None
        return parse_credentials(text, f"--auth-file {path}")
    if environ.get(AUTH_ENV):
        return parse_credentials(environ[AUTH_ENV], f"${AUTH_ENV}")
    return None


class LoginGuard:
    """Checks logins (Gradio's ``auth`` callable and HTTP basic for ``/api/classify``)
    and limits failures: after ``max_failures`` wrong passwords for one user name within
    ``window`` seconds that name is locked for ``lockout`` seconds, and after
    ``4 × max_failures`` failures in all, every login is; the right password does not
    open a locked name. Gradio's login form does not give the client's address, so the
    limit is per name and overall."""

    def __init__(
        self, credentials: dict[str, str], max_failures: int = 5, window: float = 60.0, lockout: float = 300.0
    ) -> None:
        import threading

        self.credentials = dict(credentials)
        self.max_failures, self.window, self.lockout = max_failures, window, lockout
        self.failures: dict[str | None, list[float]] = {}  # user (None: all users) -> failure times
        self.locked_until: dict[str | None, float] = {}
        self.lock = threading.Lock()

    def __call__(self, username: str, password: str) -> bool:
        return self.check(username, password)

    def check(self, username: str, password: str) -> bool:
        """True for a right user name and password while neither is locked."""
        import hmac
        import logging
        import time

        log = logging.getLogger(__name__)
        now = time.monotonic()
        with self.lock:
            if any(self.locked_until.get(key, 0.0) > now for key in (username, None)):
                log.warning("login refused for %r: locked after repeated failures", username)
                return False
            expected = self.credentials.get(username)
            # compare even for unknown names, so the time taken does not tell which names exist
            ok = hmac.compare_digest((expected or "\0").encode(), password.encode()) and expected is not None
            if ok:
                return True
            for key, allowed in ((username, self.max_failures), (None, 4 * self.max_failures)):
                times = [t for t in self.failures.get(key, []) if now - t < self.window] + [now]
                self.failures[key] = times
                if len(times) >= allowed:
                    self.locked_until[key] = now + self.lockout
                    self.failures[key] = []
                    log.warning(
                        "logins %s locked for %.0f s after %d failures", key or "of all users", self.lockout, allowed
                    )
            log.warning("failed login for %r", username)
            return False

    def check_basic(self, header: str | None) -> bool:
        """:meth:`check` for an HTTP ``Authorization: Basic ...`` header."""
        import base64
        import binascii

        if not header or not header.lower().startswith("basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return self.check(user, password)


NO_AUTH_NOTICE = (
    "**This page has no login** (started with `--no-auth` on {host}): anyone who can reach this "
    "address can use it and send it images."
)


def serve(
    model: str | Path | Predictor,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    concurrency_limit: int = DEFAULT_CONCURRENCY,
    examples_dir: str | Path | None = None,
    threads: int | None = None,
    block: bool = True,
    credentials: dict[str, str] | None = None,
    no_auth: bool = False,
) -> gr.Blocks:
    """Load ``model`` (a run folder, model folder or :class:`Predictor`) once and serve the
    page on ``host:port`` (loopback by default, never shared). Blocks unless ``block`` is
    false; returns the running demo (``demo.close()`` stops it).

    ``credentials`` (``{user: password}``, see :func:`read_credentials`) make every page
    and endpoint need a login. A ``host`` other than loopback needs them, or
    ``no_auth=True``, which the page and the log then announce.

    ``threads`` sets torch's threads per request; by default the CPU cores divided by
    ``concurrency_limit``, so that requests running at once do not oversubscribe the
    cores (on a busy 2-core machine, 2 threads per request ran ResNet-18 5 times slower
    than 1).
    """
    import logging

    from sslmed.errors import UsageError

    notice = None
    if not credentials and not is_loopback(host):
        if not no_auth:
            raise UsageError(
                f"--host {host}: other machines could use this page; give logins with --auth-file FILE "
                f"or ${AUTH_ENV} ('user:password'), or pass --no-auth to serve it without a login"
            )
        notice = NO_AUTH_NOTICE.format(host=host)
        logging.getLogger(__name__).warning("serving on %s WITHOUT a login (--no-auth): anyone there can use it", host)
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // concurrency_limit))
    predictor = model if isinstance(model, Predictor) else Predictor(model)
    if examples_dir is None:
        examples_dir = default_examples_dir()
    demo = build_demo(
        predictor,
        examples_dir=examples_dir,
        max_upload_mb=max_upload_mb,
        concurrency_limit=concurrency_limit,
        notice=notice,
    )
    guard = LoginGuard(credentials) if credentials else None
    demo.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        quiet=False,
        **launch_options(examples_dir, max_upload_mb, demo=demo, guard=guard),
    )
    return demo
