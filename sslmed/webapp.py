"""The classification web page and its HTTP API (Gradio 6), over one :class:`Predictor`.

``build_demo(predictor)`` makes the page; :func:`serve` launches it. Two API
endpoints, both usable from ``gradio_client.Client`` or plain HTTP:

* ``/predict``: an image file -> ``{"label": top class, "confidences": [...]}``
  (the probabilities of :meth:`Predictor.predict`, the same code as
  ``sslmed predict``; no Grad-CAM, so it is the fast one);
* ``/explain``: an image file -> the model input as an image, the Grad-CAM overlay
  and, for models with a decoder (CRSM), the reconstruction.

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

from sslmed.checkpoints import atomic_write_bytes
from sslmed.errors import ImageLoadError
from sslmed.explain import grad_cam, overlay, tensor_to_image
from sslmed.predict import Predictor

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
    """One clear message for the person (or program) that sent the request."""

    def __init__(self, message: str) -> None:
        super().__init__(message, title="Cannot classify this file", print_exception=False)


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
            raise DemoError(f"No image received: upload an X-ray image ({FORMATS_TEXT}) first.")
        name = os.path.basename(path)
        try:
            size = os.path.getsize(path)
        except OSError:
            raise DemoError(f"{name}: the upload could not be read; please upload it again.") from None
        if size > self.max_upload_mb * 1e6:
            raise DemoError(f"{name}: the file is {size / 1e6:.3g} MB; the limit is {self.max_upload_mb:g} MB.")
        try:
            return self.predictor.load(path)
        except ImageLoadError as exc:
            raise DemoError(str(exc).replace(path, name)) from None
        except Exception as exc:  # the loader should name every problem; never show a traceback
            raise DemoError(f"{name}: could not be read as an image ({type(exc).__name__})") from exc

    def predict(self, file: Any) -> dict[str, float]:
        """Class probabilities ``{label: p}`` of one uploaded image."""
        image = self.load(file)
        return self.predictor.predict_images([image])[0]

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
        return tensor_to_image(x), overlay(image, cam.cam), reconstruction


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
    if not path.is_file():
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
    lines += [
        "",
        "Grad-CAM shows where the evidence for the top class lies in the last feature "
        "map; it is a coarse aid for looking at the model, not a finding.",
        "",
        f"Run: `{predictor.model_dir.parent.name}`",
    ]
    return "\n".join(lines)


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
) -> gr.Blocks:
    """The page over ``predictor``; launch it with :func:`launch_options` (or :func:`serve`).

    ``concurrency_limit`` requests run at once (the rest wait in Gradio's queue, at
    most ``queue_size``); files over ``max_upload_mb`` are refused with a message.
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
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                upload = gr.File(
                    label=f"X-ray image ({FORMATS_TEXT})", file_count="single", type="filepath", elem_id="upload"
                )
                classify = gr.Button("Classify", variant="primary", elem_id="classify")
                example_slot = gr.Column()
            with gr.Column(scale=2):
                label = gr.Label(
                    num_top_classes=min(top_k, len(predictor.classes)),
                    label="Class probabilities",
                    elem_id="probabilities",
                )
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

        def clear() -> tuple[None, None, None, None]:
            return None, None, None, None

        def explain(file: Any) -> tuple[str | None, ...]:
            return tuple(image_file(image) for image in service.explain(file))

        def predict(file: Any) -> dict[str, float]:
            return service.predict(file)

        def analyse(file: Any) -> tuple[dict[str, float], str | None, str | None, str | None]:
            images = tuple(image_file(image) for image in service.explain(file))
            return service.predict(file), *images

        if examples:
            with example_slot:  # clicking an example classifies it at once
                gr.Examples(
                    examples=[[path] for path in examples],
                    inputs=[upload],
                    example_labels=captions,
                    outputs=[label, model_view, heatmap, reconstruction],
                    fn=analyse,
                    run_on_click=True,
                    cache_examples=False,
                    label="Examples (real radiographs; the label in brackets is the data set's)",
                )

        cleared = gr.on(
            [classify.click, upload.upload],
            clear,
            inputs=None,
            outputs=[label, model_view, heatmap, reconstruction],
            queue=False,
            api_visibility="private",
            show_progress="hidden",
        )
        predicted = cleared.then(
            predict,
            inputs=[upload],
            outputs=[label],
            api_name="predict",
            api_description="Class probabilities of one image file (PNG, JPEG, WebP, TIFF, DICOM).",
        )
        predicted.success(
            explain,
            inputs=[upload],
            outputs=[model_view, heatmap, reconstruction],
            api_name="explain",
            api_description="Model input, Grad-CAM overlay and (CRSM models) reconstruction of one image file.",
        )
    demo.queue(default_concurrency_limit=concurrency_limit, max_size=queue_size)
    return demo


def launch_options(
    examples_dir: str | Path | None = None, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
) -> dict[str, Any]:
    """Keyword arguments for ``demo.launch`` that go with :func:`build_demo`.

    Only the examples folder is served besides uploads; Gradio itself refuses uploads
    far over the limit (twice it, plus 1 MB) so that huge files never reach the disk,
    while the page explains the limit for the ones in between.
    """
    allowed = [str(Path(examples_dir).resolve())] if examples_dir and Path(examples_dir).is_dir() else []
    return {
        "allowed_paths": allowed,
        "max_file_size": int(max_upload_mb * 2e6 + 1e6),
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
) -> gr.Blocks:
    """Load ``model`` (a run folder, model folder or :class:`Predictor`) once and serve the
    page on ``host:port`` (loopback by default, never shared). Blocks unless ``block`` is
    false; returns the running demo (``demo.close()`` stops it).

    ``threads`` sets torch's threads per request; by default the CPU cores divided by
    ``concurrency_limit``, so that requests running at once do not oversubscribe the
    cores (on a busy 2-core machine, 2 threads per request ran ResNet-18 5 times slower
    than 1).
    """
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // concurrency_limit))
    predictor = model if isinstance(model, Predictor) else Predictor(model)
    if examples_dir is None:
        examples_dir = default_examples_dir()
    demo = build_demo(
        predictor, examples_dir=examples_dir, max_upload_mb=max_upload_mb, concurrency_limit=concurrency_limit
    )
    demo.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        quiet=False,
        **launch_options(examples_dir, max_upload_mb),
    )
    return demo
