"""Reading the images of a source: from files under a root, or from an array, as a torch ``Dataset``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sslmed.core.errors import DataError, ImageLoadError
from sslmed.data.imaging import load_image
from sslmed.data.sources import ImageRecord, ImageSource
from sslmed.data.verify import log


def file_reader(root: Path) -> Callable[..., Image.Image]:
    """A picklable ``read`` function for images stored as files under ``root``."""
    return FileReader(root)


class FileReader:
    """``read(ref, mode)`` for files under ``root`` (picklable, for DataLoader workers)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __call__(self, ref: str | int, mode: str = "L") -> Image.Image:
        return load_image(self.root / str(ref), mode=mode)  # type: ignore[arg-type]


class ArrayReader:
    """A picklable ``read`` function over an ``N×H×W`` uint8 array (e.g. MedMNIST)."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __call__(self, ref: str | int, mode: str = "L") -> Image.Image:
        return Image.fromarray(self.images[int(ref)]).convert(mode)


class ImageDataset(torch.utils.data.Dataset):
    """``(transform(image), label)`` for each record of one split.

    For multi-label sources the second item is the float ``targets`` tensor (``nan``
    where unknown) instead of the class index.
    """

    def __init__(
        self,
        source: ImageSource,
        records: Sequence[ImageRecord],
        transform: Callable[[Image.Image], Any],
        mode: str = "L",
        substitute_unreadable: bool | None = None,
    ) -> None:
        self.source = source
        self.records = list(records)
        self.transform = transform
        self.mode = mode
        # a source with on_error: skip but verify: false finds bad files only while training:
        # use the next readable image instead of stopping (never where labels are read
        # from the records, as evaluation does)
        self.substitute_unreadable = (
            bool(source.details.get("skip_unreadable")) if substitute_unreadable is None else substitute_unreadable
        )
        self._unreadable: set[int] = set()

    def __len__(self) -> int:
        return len(self.records)

    def _read(self, index: int) -> tuple[int, Image.Image]:
        """The image of ``index``, or of the next readable record when substituting."""
        for offset in range(len(self.records)):
            position = (index + offset) % len(self.records)
            if position in self._unreadable:
                continue
            try:
                return position, self.source.read(self.records[position].ref, self.mode)
            except ImageLoadError as exc:
                if not self.substitute_unreadable:
                    raise
                self._unreadable.add(position)
                log.warning("data %r: %s; left out (on_error: skip), the next image is used", self.source.name, exc)
        raise DataError(f"data {self.source.name!r}: none of its {len(self.records)} images can be read")

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        index, raw = self._read(index)
        record = self.records[index]
        image = self.transform(raw)
        if record.targets is not None:
            return image, torch.tensor(record.targets, dtype=torch.float32)
        return image, record.label
