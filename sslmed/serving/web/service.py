"""The service behind the page and the API: one :class:`Predictor`, uploads checked and
decoded once, results as the page and the API show them, temporary image files pruned.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import torch
from PIL import Image

from sslmed.core.errors import ImageLoadError
from sslmed.core.files import atomic_write_bytes
from sslmed.data.imaging import DICOM_SHOWN, DICOM_SUFFIXES
from sslmed.data.imaging import decode as decode_image
from sslmed.serving.explain import GradCam, grad_cam, overlay, tensor_to_image
from sslmed.serving.predict import Prediction, Predictor

DEFAULT_CONCURRENCY = 2
DEFAULT_QUEUE_SIZE = 256
_last_prune = {"at": 0.0}
DEFAULT_MAX_UPLOAD_MB = 20.0
#: files classified in one batch (a zip counts its images); the rest become rows with an error
MAX_BATCH_FILES = 200
#: images run through the model at once in a batch
BATCH_CHUNK = 32


#: (how often, how old) in seconds: uploaded and generated files older than an hour are deleted
CACHE_LIFETIME = (1800, 3600)


#: file kinds offered as examples and named on the page
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".dcm", ".dicom")


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
        path = file_path(file)
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

    def dicom_fields(self, source: str | bytes | None) -> dict[str, str] | None:
        """For a DICOM file, what explains the picture (modality, view position,
        photometric interpretation, window applied; :data:`sslmed.data.imaging.DICOM_SHOWN`),
        never a patient identifier; ``None`` for other files."""
        if source is None:
            return None
        try:
            if isinstance(source, bytes):
                head, suffix = source[:132], ""
            else:
                with open(source, "rb") as handle:
                    head, suffix = handle.read(132), os.path.splitext(source)[1].lower()
            if not (head[128:132] == b"DICM" or suffix in DICOM_SUFFIXES):
                return None
            info = decode_image(source)[1]
        except (OSError, ImageLoadError):
            return None
        return {k: v for k, v in (info.dicom or {}).items() if k in DICOM_SHOWN} or None

    def predict(self, file: Any) -> dict[str, float]:
        """Class probabilities ``{label: p}`` of one uploaded image (calibrated when the model is)."""
        return self.analyse(file).probabilities

    def analyse(self, file: Any) -> Prediction:
        """Probabilities and the out-of-distribution score of one uploaded image."""
        return self.predictor.analyse_images([self.load(file)])[0]

    def explain(self, file: Any) -> Explanation:
        """The model input as an image, the Grad-CAM overlay of the top class (``None``
        when no stage is large enough; the caption says so), and the decoder's
        reconstruction (``None`` when the model has no decoder)."""
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
        heat = overlay(view, cam.cam) if cam.cam is not None else None
        return Explanation(view, heat, reconstruction, cam)

    def classify_many(self, files: Iterable[Any]) -> list[BatchRow]:
        """One row per image of ``files`` (paths, ``(name, bytes)`` pairs, or zips of
        images): the top class, the probabilities and the OOD flag, or the error that
        stopped it. At most :data:`MAX_BATCH_FILES` images; each within the upload limit."""
        rows: list[BatchRow] = []
        pending: list[tuple[BatchRow, Image.Image]] = []
        for name, data, error in self._batch_items(files):
            row = BatchRow(name)
            rows.append(row)
            if error is None and len(rows) > MAX_BATCH_FILES:
                error = f"not classified: a batch takes at most {MAX_BATCH_FILES} images"
            if error is None:
                try:
                    pending.append((row, self.decode(data, name)))  # type: ignore[arg-type]
                except DemoError as exc:
                    error = exc.text
            row.error = error
        for start in range(0, len(pending), BATCH_CHUNK):
            chunk = pending[start : start + BATCH_CHUNK]
            for (row, _), result in zip(chunk, self.predictor.analyse_images([i for _, i in chunk]), strict=True):
                row.prediction = result
        return rows

    def _batch_items(self, files: Iterable[Any]) -> Iterator[tuple[str, bytes | str | None, str | None]]:
        """``(name, path or bytes, error)`` for every image of ``files``, zips opened."""
        limit = self.max_upload_mb * 1e6
        for file in files:
            if isinstance(file, tuple):
                name, data = file
                size = len(data)
            else:
                path = file_path(file)
                if path is None:
                    continue
                name, data = os.path.basename(path), path
                try:
                    size = os.path.getsize(path)
                except OSError:
                    yield name, None, "the upload could not be read; please upload it again"
                    continue
            if size > limit:
                yield name, None, self.too_large_message(name, size)
                continue
            is_zip = name.lower().endswith(".zip") or (
                zipfile.is_zipfile(io.BytesIO(data) if isinstance(data, bytes) else data)
            )
            if not is_zip:
                yield name, data, None
                continue
            try:
                with zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data) as archive:
                    members = [m for m in archive.infolist() if _is_image_member(m)]
                    if not members:
                        yield name, None, f"the zip holds no image files ({FORMATS_TEXT})"
                    for member in members:
                        label = f"{name}/{member.filename}"
                        if member.file_size > limit:  # declared size: a zip bomb is never inflated
                            yield label, None, self.too_large_message(label, member.file_size)
                            continue
                        with archive.open(member) as handle:
                            content = handle.read(int(limit) + 1)
                        if len(content) > limit:
                            yield label, None, self.too_large_message(label, len(content))
                        else:
                            yield label, content, None
            except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError) as exc:
                yield name, None, f"not a readable zip file ({type(exc).__name__})"

    def batch_csv(self, rows: list[BatchRow]) -> str:
        """The batch table as CSV text (one column per class probability)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(batch_columns(self.predictor.classes))
        for row in rows:
            writer.writerow(row.cells(self.predictor.classes))
        return buffer.getvalue()


@dataclass
class Explanation:
    """What the page shows beside the probabilities of one image."""

    view: Image.Image
    heatmap: Image.Image | None
    reconstruction: Image.Image | None
    cam: GradCam

    @property
    def caption(self) -> str:
        return self.cam.caption()


@dataclass
class BatchRow:
    """One file of a batch: its prediction, or the error that stopped it."""

    file: str
    prediction: Prediction | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str | None:
        if self.prediction is None:
            return None
        probabilities = self.prediction.probabilities
        return max(probabilities, key=lambda c: probabilities[c])

    def cells(self, classes: list[str]) -> list[Any]:
        """The row as the table and the CSV show it (see :func:`batch_columns`)."""
        p = self.prediction
        if p is None:
            return [self.file, "", *([""] * len(classes)), "", "", self.error or ""]
        flag = "" if p.ood_flag is None else ("yes" if p.ood_flag else "no")
        score = "" if p.ood_score is None else round(p.ood_score, 4)
        return [self.file, self.label, *(round(p.probabilities[c], 4) for c in classes), score, flag, ""]

    def as_dict(self) -> dict[str, Any]:
        """The row as the batch API answers it."""
        if self.prediction is None:
            return {"file": self.file, "error": self.error}
        return {"file": self.file, "label": self.label, **self.prediction.as_dict()}


def batch_columns(classes: list[str]) -> list[str]:
    """Columns of the batch table: file, top class, one probability per class, OOD, error."""
    return ["file", "top class", *(f"p({c})" for c in classes), "OOD score", "OOD flagged", "error"]


def _is_image_member(member: zipfile.ZipInfo) -> bool:
    name = member.filename
    base = os.path.basename(name)
    return (
        not member.is_dir()
        and not base.startswith(".")
        and not name.startswith("__MACOSX/")
        and os.path.splitext(base)[1].lower() in IMAGE_SUFFIXES
    )


def dicom_markdown(fields: dict[str, str] | None) -> str:
    """The page's note on a DICOM upload ('' for other files)."""
    if not fields:
        return ""
    names = {
        "modality": "Modality",
        "view_position": "View position",
        "photometric_interpretation": "Photometric interpretation",
        "window": "Window applied",
        "bits_stored": "Bits stored",
    }
    rows = "\n".join(f"| {names[k]} | {fields[k]} |" for k in DICOM_SHOWN if k in fields)
    return "**DICOM file** (patient identifiers are never read out or shown)\n\n| field | value |\n|---|---|\n" + rows


def file_path(file: Any) -> str | None:
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


def text_file(text: str, name: str, folder: Path | None = None) -> str:
    """``text`` as a file called ``name`` in a folder named by its content (a download)."""
    data = text.encode("utf-8")
    folder = folder or Path(tempfile.gettempdir()) / "sslmed-explain"
    path = folder / hashlib.sha256(data).hexdigest()[:32] / name
    if not path.is_file():
        atomic_write_bytes(path, data)
    return str(path)


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
