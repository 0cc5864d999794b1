"""The classification page (Gradio 6 Blocks): upload, examples, probabilities, the
out-of-distribution warning, Grad-CAM and the model card.

``build_demo(predictor)`` makes the page; two Gradio API endpoints come with it:
``/predict`` (an image file -> the class probabilities, the OOD warning and the
details as JSON) and ``/explain`` (the model input, the Grad-CAM overlay and, for
models with a decoder, the reconstruction). Input that cannot be classified raises
``gr.Error`` with one sentence; the server keeps serving.
"""

from __future__ import annotations

import csv
import stat
from pathlib import Path
from typing import Any

import gradio as gr

from sslmed.data.roots import resolve_data_root
from sslmed.serving.predict import Predictor
from sslmed.serving.web.cards import DISCLAIMER, model_card, ood_warning, trained_on
from sslmed.serving.web.service import (
    CACHE_LIFETIME,
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_QUEUE_SIZE,
    FORMATS_TEXT,
    IMAGE_SUFFIXES,
    DemoService,
    image_file,
)

IMAGE_HEIGHT = 320


#: a labels.csv larger than this is not read (captions only)
MAX_LABELS_BYTES = 1 << 20


def _plain_file(path: Path) -> bool:
    """A regular file that is not a symbolic link (``lstat``: a link is never followed)."""
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def example_files(examples_dir: str | Path | None) -> tuple[list[str], list[str]]:
    """Image files of ``examples_dir`` (sorted) and a caption for each (its label from
    ``labels.csv`` when there is one); empty when the folder is absent.

    Only regular files that are not symbolic links are offered: a link (``ex/shadow.dcm ->
    /etc/shadow``) would hand its target to anyone who selects the example, and a FIFO or
    device would hang the page. A folder that is itself a link is not used either."""
    if examples_dir is None:
        return [], []
    folder = Path(examples_dir)
    if folder.is_symlink() or not folder.is_dir():
        return [], []
    labels: dict[str, str] = {}
    labels_file = folder / "labels.csv"
    if _plain_file(labels_file) and labels_file.stat().st_size <= MAX_LABELS_BYTES:
        with open(labels_file, newline="", encoding="utf-8", errors="replace") as handle:
            for row in csv.DictReader(handle):
                if row.get("path") and row.get("label"):
                    labels[row["path"]] = row["label"]
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and _plain_file(p))
    captions = [f"{p.name} ({labels[p.name]})" if p.name in labels else p.name for p in files]
    resolved = folder.resolve()
    return [str(resolved / p.name) for p in files], captions


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


def default_examples_dir() -> Path | None:
    """The ``samples`` folder of the data root (:func:`sslmed.data.roots.resolve_data_root`), if present."""
    folder = resolve_data_root() / "samples"
    return folder if folder.is_dir() and not folder.is_symlink() else None
