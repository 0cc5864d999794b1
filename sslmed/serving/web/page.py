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
from sslmed.serving.web.cards import DISCLAIMER, model_card, ood_warning, ood_weak_note, trained_on
from sslmed.serving.web.examples import Example, file_digest, find_examples
from sslmed.serving.web.service import (
    CACHE_LIFETIME,
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_QUEUE_SIZE,
    FORMATS_TEXT,
    IMAGE_SUFFIXES,
    MAX_BATCH_FILES,
    BatchRow,
    DemoError,
    DemoService,
    batch_columns,
    dicom_markdown,
    file_path,
    image_file,
    text_file,
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


def example_outcome(example: Example | None, top: str) -> str:
    """Whether the model got an example right ('' for an image that is not an example)."""
    if example is None or example.label is None:
        return ""
    verdict = "**right**" if top == example.label else "**wrong**"
    return (
        f"Example from the {example.origin}: true label **{example.label}**; the model's top class is {top}: {verdict}."
    )


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
    found = find_examples(predictor.model_dir, predictor.meta, examples_dir)
    by_digest = {example.digest(): example for example in found}
    examples, captions = [str(e.path) for e in found], [e.caption for e in found]
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
                gr.Markdown(ood_weak_note(predictor.meta), elem_id="ood-quality")
                warning = gr.Markdown("", elem_id="ood-warning")
                outcome = gr.Markdown("", elem_id="example-outcome")
                dicom_info = gr.Markdown("", elem_id="dicom-info")
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
                        label="Grad-CAM (top class)",
                        type="pil",
                        format="png",
                        interactive=False,
                        height=IMAGE_HEIGHT,
                        elem_id="gradcam",
                    )
                cam_caption = gr.Markdown("", elem_id="gradcam-caption")
        with gr.Accordion(f"Many images at once (up to {MAX_BATCH_FILES}, or a zip of them)", open=True):
            batch_upload = gr.File(
                label=f"Several image files ({FORMATS_TEXT}) or a .zip of them, each up to {max_upload_mb:g} MB",
                file_count="multiple",
                type="filepath",
                elem_id="batch-upload",
            )
            batch_button = gr.Button("Classify all", elem_id="batch-classify")
            batch_table = gr.Dataframe(
                headers=batch_columns(predictor.classes),
                value=None,
                interactive=False,
                label="One row per image (an unreadable file: a row with its error)",
                elem_id="batch-table",
            )
            batch_csv = gr.File(label="The table as CSV", interactive=False, elem_id="batch-csv")
        with gr.Accordion("Model card", open=True):
            gr.Markdown(model_card(predictor), elem_id="model-card")

        def clear() -> tuple[Any, ...]:
            return "", None, None, None, None, None, "", "", ""

        def explain(file: Any) -> tuple[str | None, ...]:
            shown = service.explain(file)
            images = (shown.view, shown.heatmap, shown.reconstruction)
            return *(image_file(image) for image in images), shown.caption

        def example_of(file: Any) -> Example | None:
            path = file if isinstance(file, str) else getattr(file, "name", None)
            try:
                return by_digest.get(file_digest(path)) if by_digest and path else None
            except OSError:
                return None

        def predict(file: Any) -> tuple[dict[str, float], str, dict[str, Any]]:
            result = service.analyse(file)
            details = result.as_dict()
            fields = service.dicom_fields(file_path(file))
            if fields:
                details["dicom"] = fields
            return result.probabilities, ood_warning(result), details

        def dicom_note(file: Any) -> str:
            return dicom_markdown(service.dicom_fields(file_path(file)))

        def analyse(file: Any) -> tuple[Any, ...]:  # an example: also whether the model got it right
            probabilities, *rest = predict(file)
            top = max(probabilities, key=lambda c: probabilities[c])
            return probabilities, *rest, example_outcome(example_of(file), top), *explain(file)

        def classify_all(files: Any) -> tuple[list[list[Any]], str | None]:
            rows: list[BatchRow] = service.classify_many(files or [])
            if not rows:
                raise DemoError("No images received: choose several image files or a zip first.", "No images")
            table = [row.cells(predictor.classes) for row in rows]
            return table, text_file(service.batch_csv(rows), "sslmed-predictions.csv")

        if examples:
            with example_slot:  # clicking an example classifies it at once
                gr.Examples(
                    examples=[[path] for path in examples],
                    inputs=[upload],
                    example_labels=captions,
                    outputs=[label, warning, details, outcome, model_view, heatmap, reconstruction, cam_caption],
                    fn=analyse,
                    run_on_click=True,
                    cache_examples=False,
                    label=f"Examples ({found[0].origin}; the true label in brackets)" if found[0].label else "Examples",
                )

        cleared = gr.on(
            [classify.click, upload.upload],
            clear,
            inputs=None,
            outputs=[warning, label, details, model_view, heatmap, reconstruction, outcome, cam_caption, dicom_info],
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
        predicted.success(dicom_note, inputs=[upload], outputs=[dicom_info], api_visibility="private")
        predicted.success(
            explain,
            inputs=[upload],
            outputs=[model_view, heatmap, reconstruction, cam_caption],
            api_name="explain",
            api_description=(
                "Model input, Grad-CAM overlay (none when no stage is large enough), (CRSM models) "
                "reconstruction and the Grad-CAM caption naming its layer, of one image file."
            ),
        )
        batch_button.click(
            classify_all,
            inputs=[batch_upload],
            outputs=[batch_table, batch_csv],
            api_name="classify_many",
            api_description="A table (file, top class, probabilities, OOD) and its CSV, for image files or zips.",
        )
    demo.queue(default_concurrency_limit=concurrency_limit, max_size=queue_size)
    demo.sslmed_service = service  # read by launch_options: /api/classify runs the same service
    demo.sslmed_concurrency = concurrency_limit
    demo.sslmed_examples = [str(e.path) for e in found]  # read by launch_options: served besides uploads
    return demo


def default_examples_dir() -> Path | None:
    """The ``samples`` folder of the data root (:func:`sslmed.data.roots.resolve_data_root`), if present."""
    folder = resolve_data_root() / "samples"
    return folder if folder.is_dir() and not folder.is_symlink() else None
