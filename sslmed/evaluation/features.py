"""Frozen features: the labelled images of a split as model inputs, and the features of
several backbones (or raw pixels) extracted from them in one pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from sslmed.core.backbone import Backbone
from sslmed.core.tasks import Task, task_for
from sslmed.data.readers import ImageDataset
from sslmed.data.sources import ImageRecord, ImageSource
from sslmed.training.transforms import eval_transform, image_mode


def device() -> torch.device:
    """The device evaluation runs on: a GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class LabelledSplit:
    """Images of one split as model inputs: a loader factory, labels."""

    source: ImageSource
    records: list[ImageRecord]

    @property
    def task(self) -> Task:
        return task_for(self.source.task)

    @property
    def labels(self) -> np.ndarray:
        """Class indices (``N``), or for multi-label sources targets (``N×findings``, nan: unknown)."""
        return self.task.labels(self.records, len(self.source.classes))

    def loader(
        self, transform: Callable, in_channels: int, batch_size: int, shuffle: bool = False
    ) -> torch.utils.data.DataLoader:
        # labels come from the records: an unreadable file may not be replaced by another
        dataset = ImageDataset(
            self.source, self.records, transform, mode=image_mode(in_channels), substitute_unreadable=False
        )
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle)


RAW_PIXELS = None  # in ``extract_features``' models: flattened input pixels, no model


@torch.inference_mode()
def extract_features(
    models: Mapping[str, Backbone | None],
    split: LabelledSplit,
    image_size: int,
    in_channels: int,
    batch_size: int = 128,
) -> dict[str, np.ndarray]:
    """Pooled features of every image of ``split`` for each model, in one pass over the
    images (each is decoded once, however many models look at it). A model given as
    ``RAW_PIXELS`` yields the flattened normalised pixels: the no-learning reference."""
    run_on = device()
    for model in models.values():
        if model is not None:
            model.to(run_on).eval()
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in models}
    for images, _labels in split.loader(eval_transform(image_size, in_channels), in_channels, batch_size):
        batch = images.to(run_on)
        for name, model in models.items():
            out = batch.flatten(1) if model is None else model(batch)
            chunks[name].append(out.float().cpu().numpy())
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


@dataclass
class FeatureSet:
    """Features of the train, (optional) val and test splits for one model."""

    model: str
    train: np.ndarray
    test: np.ndarray
    val: np.ndarray | None = None
