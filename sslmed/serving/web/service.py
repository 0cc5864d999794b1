"""The service behind the page and the API: one :class:`Predictor`, uploads checked and
decoded once, results as the page and the API show them, temporary image files pruned.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import gradio as gr
import torch
from PIL import Image

from sslmed.core.errors import ImageLoadError
from sslmed.core.files import atomic_write_bytes
from sslmed.serving.explain import grad_cam, overlay, tensor_to_image
from sslmed.serving.predict import Prediction, Predictor

DEFAULT_CONCURRENCY = 2
DEFAULT_QUEUE_SIZE = 256
_last_prune = {"at": 0.0}
DEFAULT_MAX_UPLOAD_MB = 20.0


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
