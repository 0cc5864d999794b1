"""The Python API: a trained model in two lines.

>>> import sslmed
>>> model = sslmed.load_model("runs/quickstart/<run>")  # doctest: +SKIP
>>> model.predict("image.png").probabilities  # doctest: +SKIP

:func:`load_model` takes a run folder, its ``model/`` folder or an ``sslmed export``
folder. Images may be file paths (PNG, JPEG, TIFF, DICOM, ...), bytes, PIL images,
numpy arrays (``H×W`` grey or ``H×W×3`` RGB; a ``uint8`` array is taken as it is, any
other type is scaled by its own range as 16-bit files are) or pydicom datasets; one
image gives one answer, a list gives a list. Everything goes through the same loader
and preprocessing as ``sslmed predict``, so the numbers are the same.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image

from sslmed.core.errors import ImageLoadError
from sslmed.data.imaging import _normalise_mode, _to_uint8  # the loader's own mode handling, for in-memory images
from sslmed.serving.predict import Prediction, Predictor

#: one image as :meth:`Model.predict` and :meth:`Model.embed` take it
ImageLike = Any  # str | Path | bytes | PIL.Image.Image | np.ndarray | pydicom.Dataset


def _is_one(images: Any) -> bool:
    """True for a single image, False for a sequence of images."""
    if isinstance(images, (str, Path, bytes, Image.Image)) or hasattr(images, "pixel_array"):
        return True
    if isinstance(images, np.ndarray):  # H×W, H×W×{1,3,4}: one; N×H×W×C or N×H×W: several
        return images.ndim == 2 or (images.ndim == 3 and images.shape[2] in (1, 3, 4))
    return False


def _from_array(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageLoadError(f"array of shape {array.shape}: expected H×W (grey) or H×W×3 (RGB)")
    if array.dtype != np.uint8:
        array = _to_uint8(array)
    mode = "L" if array.ndim == 2 else ("RGB" if array.shape[2] == 3 else "RGBA")
    return Image.fromarray(np.ascontiguousarray(array), mode)


class Model:
    """A loaded model: :meth:`predict` (calibrated probabilities and the OOD flag) and
    :meth:`embed` (pooled backbone features)."""

    def __init__(self, predictor: Predictor, batch_size: int = 32) -> None:
        self.predictor = predictor
        self.batch_size = batch_size

    @property
    def classes(self) -> list[str]:
        """The class (or finding) names, in the order of the probabilities."""
        return list(self.predictor.classes)

    @property
    def feature_dim(self) -> int:
        """Length of an embedding."""
        return int(self.predictor.model.backbone.feature_dim)

    def __repr__(self) -> str:
        return (
            f"Model({self.predictor.meta['backbone'].get('name')!r}, classes={self.classes}, "
            f"image_size={self.predictor.image_size}, calibrated={self.predictor.calibrated}, "
            f"ood={self.predictor.ood is not None})"
        )

    def image(self, image: ImageLike) -> Image.Image:
        """One image as the model reads it (8-bit grey or RGB, before resizing)."""
        mode = "L" if self.predictor.in_channels == 1 else "RGB"
        if isinstance(image, Image.Image):
            image = _normalise_mode(image)
        elif isinstance(image, np.ndarray):
            image = _normalise_mode(_from_array(image))
        elif hasattr(image, "pixel_array") and hasattr(image, "save_as"):  # a pydicom dataset
            buffer = io.BytesIO()
            image.save_as(buffer, enforce_file_format=True)
            return self.predictor.load(buffer.getvalue())
        else:
            return self.predictor.load(image)
        return image if image.mode == mode else image.convert(mode)

    def _chunks(self, images: Sequence[ImageLike]) -> Iterable[list[Image.Image]]:
        for start in range(0, len(images), self.batch_size):
            yield [self.image(i) for i in images[start : start + self.batch_size]]

    def predict(self, images: ImageLike | Sequence[ImageLike]) -> Prediction | list[Prediction]:
        """:class:`~sslmed.serving.predict.Prediction` per image: ``probabilities`` (by class),
        ``calibrated``, ``ood_score``, ``ood_flag``; ``as_dict()`` gives the JSON of
        ``sslmed predict``. Raises :class:`~sslmed.core.errors.ImageLoadError` for an image
        that cannot be read."""
        if _is_one(images):
            return self._predict_all([cast(ImageLike, images)])[0]
        return self._predict_all(list(cast(Sequence[ImageLike], images)))

    def _predict_all(self, images: list[ImageLike]) -> list[Prediction]:
        return [p for chunk in self._chunks(images) for p in self.predictor.analyse_images(chunk)]

    def embed(self, images: ImageLike | Sequence[ImageLike]) -> np.ndarray:
        """Pooled backbone features: ``N×feature_dim`` float32 (``feature_dim`` for one image)."""
        if _is_one(images):
            return self.embed([images])[0]
        rows = []
        for chunk in self._chunks(list(images)):
            batch = np.concatenate([self.predictor.model_input(i).numpy() for i in chunk])
            rows.append(self.predictor.forward_batch(torch.from_numpy(batch))[1])
        return np.concatenate(rows) if rows else np.zeros((0, self.feature_dim), dtype=np.float32)


def load_model(path: str | Path, device: str | None = None, batch_size: int = 32) -> Model:
    """The model of a run folder, a ``model/`` folder or an ``sslmed export`` folder.

    ``device`` defaults to the GPU when there is one; ``batch_size`` images go through
    the model at a time. Raises :class:`~sslmed.core.errors.CheckpointError` when ``path``
    holds no model.
    """
    return Model(Predictor(path, device=device), batch_size=batch_size)
