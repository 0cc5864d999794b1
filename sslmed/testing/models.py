"""Helpers for the predict / web-app / browser tests: small real model exports.

A model export is made the way evaluation makes one (``export_classifier`` on a
linear probe fitted over backbone features of real covid3 images), but from a
randomly initialised backbone, so it takes seconds instead of a training run.
Optionally it carries a ``decoder`` extra, as a CRSM model does.
"""

from __future__ import annotations

import atexit
import csv
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sslmed.core.hookspecs import hookimpl
from sslmed.core.metrics import metrics
from sslmed.core.plugins import get_registry, register_plugin
from sslmed.data.imaging import load_image
from sslmed.evaluation.ood import input_statistics
from sslmed.evaluation.trust import fit_trust
from sslmed.serving.detection import measure_and_record
from sslmed.serving.export import export_classifier
from sslmed.training.transforms import eval_transform

STAND_IN_DECODER = "test_upsampler"


class UpsamplingDecoder(torch.nn.Module):
    """A tiny decoder: 1×1 convolution of the feature map, then bilinear upsampling."""

    def __init__(self, feature_channels: int, image_size: int, out_channels: int) -> None:
        super().__init__()
        self.image_size = image_size
        self.project = torch.nn.Conv2d(feature_channels, out_channels, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(
            self.project(features), size=(self.image_size,) * 2, mode="bilinear", align_corners=False
        )


class _StandInDecoderPlugin:
    """Registers :class:`UpsamplingDecoder` as decoder ``test_upsampler``."""

    @hookimpl
    def register_decoders(self, register: Any) -> None:
        from pydantic import BaseModel, ConfigDict

        class Args(BaseModel):
            model_config = ConfigDict(extra="forbid")

        def build(_args: Any, *, backbone: Any, image_size: int, out_channels: int, **_: Any) -> UpsamplingDecoder:
            return UpsamplingDecoder(backbone.feature_dim, image_size, out_channels)

        register(STAND_IN_DECODER, build, args=Args, description="stand-in decoder for the web-app tests")


def ensure_stand_in_decoder() -> None:
    """Register the stand-in decoder once per process."""
    if STAND_IN_DECODER not in get_registry().names("decoder"):
        register_plugin(_StandInDecoderPlugin(), name="tests.stand_in_decoder")


def decoder_spec() -> dict[str, Any]:
    """CRSM's real ``resnet_decoder`` (small) when its plugin is there, else the stand-in."""
    if "resnet_decoder" in get_registry().names("decoder"):
        return {"name": "resnet_decoder", "width": 32, "min_width": 8}
    ensure_stand_in_decoder()
    return {"name": STAND_IN_DECODER}


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def covid3_records(data_dir: Path, per_class: int, skip: int = 0) -> list[tuple[Path, str]]:
    """``per_class`` images of each covid3 class (in file order, after ``skip``)."""
    by_class: dict[str, list[Path]] = {}
    with open(data_dir / "covid3" / "labels.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            by_class.setdefault(row["label"], []).append(data_dir / "covid3" / "images" / row["path"])
    return [(path, label) for label in sorted(by_class) for path in by_class[label][skip : skip + per_class]]


def make_model_export(
    directory: Path,
    data_dir: Path,
    *,
    arch: str = "resnet18",
    small_input: bool = True,
    image_size: int = 32,
    per_class: int = 6,
    decoder: bool = False,
    seed: int = 0,
    trust: bool = True,
    measure_ood: bool = True,
) -> Path:
    """Write ``directory/model.{safetensors,json}``: a random-init backbone with a linear
    probe fitted on real covid3 features (metrics on the next ``per_class`` images);
    ``trust``: with a temperature and an OOD score, as evaluation exports it."""
    registry = get_registry()
    spec = {"name": arch, "small_input": small_input}
    torch.manual_seed(seed)
    backbone = registry.build("backbone", spec, in_channels=1).eval()
    transform = eval_transform(image_size, 1)
    train, test = covid3_records(data_dir, per_class), covid3_records(data_dir, per_class, skip=per_class)
    classes = sorted({label for _, label in train})

    @torch.inference_mode()
    def features(records: list[tuple[Path, str]]) -> np.ndarray:
        batch = torch.stack([transform(load_image(path)) for path, _ in records])
        statistics[len(statistics)] = input_statistics(batch)
        return backbone(batch).numpy()

    statistics: dict[int, np.ndarray] = {}

    train_y = np.array([classes.index(label) for _, label in train])
    test_y = np.array([classes.index(label) for _, label in test])
    train_x, test_x = features(train), features(test)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(train_x, train_y)
    meta: dict[str, Any] = {
        "extras": {},
        "recipe": "test-export",
        "step": "random-init",
        "backbone": spec,
        "in_channels": 1,
        "image_size": image_size,
        "classes": classes,
        "data": f"covid3 ({len(train)} images)",
        "metrics": {
            "model": "test",
            "probe": "linear",
            "train_images": len(train),
            **metrics(test_y, probe.predict_proba(test_x), classes),
        },
    }
    extra_tensors = None
    if decoder:
        description: dict[str, Any] = {
            "kind": "decoder",
            "spec": decoder_spec(),
            "image_size": image_size,
            "out_channels": 1,
        }
        module = get_registry().build(
            "decoder", description["spec"], backbone=backbone, image_size=image_size, out_channels=1
        )
        meta["extras"] = {"decoder": description}
        extra_tensors = {"decoder": module.state_dict()}
    # calibrated and with an OOD score, as evaluation exports it (no val split: out of fold)
    fitted = (
        fit_trust(
            probe,
            len(classes),
            (train_x, train_y),
            (test_x, test_y),
            seed=seed,
            statistics={"train": statistics[0], "test": statistics[1]},
        )
        if trust
        else None
    )
    export_classifier(directory, backbone, probe, meta, extra_tensors=extra_tensors, trust=fitted)
    if fitted is not None and measure_ood:  # as evaluation does: the export measures its own OOD detection
        measure_and_record(directory, fitted.test_flags(), data_dir, per_category=4)
    return directory


_EXPORTS: dict[tuple, Path] = {}


def shared_model_export(data_dir: Path, **options: Any) -> Path:
    """:func:`make_model_export` once per test session and options (read-only: copy it
    before changing it); removed when the session ends."""
    key = (str(data_dir), tuple(sorted(options.items())))
    if key not in _EXPORTS:
        directory = Path(tempfile.mkdtemp(prefix="sslmed-test-model-"))
        atexit.register(shutil.rmtree, directory, True)
        _EXPORTS[key] = make_model_export(directory, data_dir, **options)
    return _EXPORTS[key]
