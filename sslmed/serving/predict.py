"""Exported model -> classifier -> ``{label: probability}`` for image files.

The classifier is the backbone of the probed step with the linear probe folded into
one ``nn.Linear`` (standardisation included; see :mod:`sslmed.serving.export`). It reads only
safetensors and JSON, preprocesses exactly as evaluation does and applies the task's
activation named in ``model.json`` (softmax over classes, or for a multi-label model one
sigmoid per finding), so predictions and reported metrics agree. It never imports the
trainer or scikit-learn.

When the export carries them, probabilities are calibrated (the logits divided by the
temperature fitted on the validation split, ``model.json``'s ``calibration``) and each
image gets an out-of-distribution score with a flag (``ood``; see :mod:`sslmed.evaluation.ood`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sslmed.artifacts.exports import load_model_files
from sslmed.artifacts.rundir import MODEL_EXPORT, RunDir, meta_file, weights_file
from sslmed.core.backbone import Backbone
from sslmed.core.errors import CheckpointError, UsageError
from sslmed.core.plugins import get_registry
from sslmed.core.registry import Registry
from sslmed.core.tasks import Task, task_for
from sslmed.data.imaging import Source, load_image
from sslmed.evaluation.ood import GATE_TENSOR_PREFIX as GATE_PREFIX
from sslmed.evaluation.ood import TENSOR_PREFIX as OOD_PREFIX
from sslmed.evaluation.ood import FeatureDistance, InputGate, input_statistics
from sslmed.training.transforms import eval_transform, image_mode


class Classifier(torch.nn.Module):
    """Backbone + linear head; ``forward`` gives logits."""

    def __init__(self, backbone: Backbone, n_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = torch.nn.Linear(backbone.feature_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


@dataclass
class Prediction:
    """One image's answer: class probabilities (calibrated when the export has a
    temperature) and, when the export has an OOD score, how unlike the training images
    the image is (``ood_score``) and whether that is beyond the threshold."""

    probabilities: dict[str, float]
    calibrated: bool
    ood_score: float | None = None
    ood_threshold: float | None = None
    #: the input-statistics gate's score and threshold (exports since the gate; else ``None``)
    gate_score: float | None = None
    gate_threshold: float | None = None

    @property
    def ood_flag(self) -> bool | None:
        """True when the image lies further from the training images than the threshold,
        in its features or (where the export has the gate) in its intensity statistics."""
        if self.ood_score is None or self.ood_threshold is None:
            return None
        gated = self.gate_score is not None and self.gate_threshold is not None
        gated = gated and self.gate_score > self.gate_threshold  # type: ignore[operator]
        return self.ood_score > self.ood_threshold or gated

    def as_dict(self) -> dict[str, Any]:
        """What ``sslmed predict`` and the HTTP API return for the image."""
        out: dict[str, Any] = {"probabilities": self.probabilities, "calibrated": self.calibrated}
        if self.ood_score is not None and self.ood_threshold is not None:
            out["out_of_distribution"] = {
                "score": round(self.ood_score, 4),
                "threshold": round(float(self.ood_threshold), 4),
                "flagged": bool(self.ood_flag),
            }
            if self.gate_score is not None:
                out["out_of_distribution"]["input_gate"] = {
                    "score": round(self.gate_score, 4),
                    "threshold": round(float(self.gate_threshold or 0.0), 4),
                }
        return out


def find_model_dir(path: str | Path) -> Path:
    """A model export folder from a run folder, a model folder or a ``model.json`` path."""
    path = Path(path)
    if path.is_file() and path in (meta_file(path.parent, MODEL_EXPORT), weights_file(path.parent, MODEL_EXPORT)):
        path = path.parent
    for candidate in (path, RunDir(path).model_dir):
        if meta_file(candidate, MODEL_EXPORT).is_file():
            return candidate
    if not path.exists():
        raise CheckpointError(f"{path}: not found")
    raise CheckpointError(
        f"{path}: no exported model here (expected model.json, or a run folder with model/; run evaluation first)"
    )


class Predictor:
    """A trained classifier that takes image files: load once, predict many."""

    def __init__(self, model_dir: str | Path, registry: Registry | None = None, device: str | None = None) -> None:

        self.model_dir = find_model_dir(model_dir)
        tensors, self.meta = load_model_files(self.model_dir)
        registry = registry or get_registry()
        self.classes: list[str] = list(self.meta["classes"])
        self.image_size: int = int(self.meta["image_size"])
        self.in_channels: int = int(self.meta["in_channels"])
        try:
            #: multi-class (softmax) or multi-label (one sigmoid per finding)
            self.task: Task = task_for(self.meta.get("task"))
        except UsageError as exc:
            raise CheckpointError(f"{meta_file(self.model_dir, MODEL_EXPORT)}: {exc}") from None
        where = meta_file(self.model_dir, MODEL_EXPORT)
        try:
            backbone = registry.build("backbone", self.meta["backbone"], in_channels=self.in_channels)
        except (TypeError, ValueError, UsageError) as exc:  # UsageError: an unknown name or option
            raise CheckpointError(f"{where}: backbone {self.meta['backbone']} cannot be built ({exc})") from None
        self.model = Classifier(backbone, len(self.classes))
        extras = self.meta.get("extras", {})
        skipped = (*extras, OOD_PREFIX, GATE_PREFIX)
        model_tensors = {k: v for k, v in tensors.items() if k.split(".", 1)[0] not in skipped}
        try:
            result = self.model.load_state_dict(model_tensors, strict=False)
        except RuntimeError as exc:  # a size mismatch: e.g. 2 head rows for 3 classes
            first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc)[:200])
            raise CheckpointError(
                f"{self.model_dir}: weights do not fit model.json ({len(self.classes)} classes, backbone "
                f"{self.meta['backbone']}): {first}"
            ) from None
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(
                f"{self.model_dir}: weights do not fit backbone {self.meta['backbone']} "
                f"(missing e.g. {result.missing_keys[:2]}, unexpected e.g. {result.unexpected_keys[:2]})"
            )
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model.to(self.device).eval()
        #: extra modules of the export (e.g. ``decoder`` of a CRSM model), in eval mode
        self.extras: dict[str, torch.nn.Module] = {}
        for name, description in extras.items():
            module = registry.build(
                description["kind"],
                description["spec"],
                backbone=backbone,
                **{k: v for k, v in description.items() if k not in ("kind", "spec")},
            )
            try:
                module.load_state_dict({k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(name + ".")})
            except RuntimeError as exc:
                raise CheckpointError(f"{self.model_dir}: weights of {name!r} do not fit ({str(exc)[:200]})") from None
            self.extras[name] = module.to(self.device).eval()
        self.transform = eval_transform(self.image_size, self.in_channels)
        #: logits are divided by this before the activation (1.0: the export is not calibrated)
        self.temperature: float = float((self.meta.get("calibration") or {}).get("temperature", 1.0))
        self.calibrated = "calibration" in self.meta
        self._fast_backbone: torch.nn.Module | None = None
        self.ood: FeatureDistance | None = None
        self.gate: InputGate | None = None
        if "ood" in self.meta:
            try:
                self.ood = FeatureDistance.from_export(tensors, self.meta["ood"])
                if "gate" in self.meta["ood"]:
                    self.gate = InputGate.from_export(tensors, self.meta["ood"]["gate"])
            except (KeyError, TypeError, ValueError) as exc:
                raise CheckpointError(
                    f"{self.model_dir}: its out-of-distribution score is incomplete ({exc})"
                ) from None

    def _inference_backbone(self) -> torch.nn.Module:
        """The backbone as predictions run it: batch norm folded into the convolutions and
        channels-last memory (about 10% faster on a CPU, same outputs to 1e-5). Grad-CAM
        and the decoder use :attr:`model`, whose modules stay as trained. A backbone
        that ``torch.fx`` cannot trace is used as it is."""
        if self._fast_backbone is None:
            from torch.fx.experimental.optimization import fuse

            fast: torch.nn.Module = self.model.backbone
            if self.device.type == "cpu":
                try:
                    fast = fuse(copy.deepcopy(self.model.backbone)).to(memory_format=torch.channels_last)
                except Exception:  # tracing is an optimisation only; any failure keeps the plain module
                    fast = self.model.backbone
            self._fast_backbone = fast
        return self._fast_backbone

    def load(self, source: Source) -> Image.Image:
        """An image file as the model reads it (before resizing)."""
        return load_image(source, mode=image_mode(self.in_channels))  # type: ignore[arg-type]

    def model_input(self, image: Image.Image) -> torch.Tensor:
        """The normalised ``1×C×H×W`` tensor the model sees."""
        return self.transform(image).unsqueeze(0)

    @torch.inference_mode()
    def forward_batch(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Calibrated probabilities, pooled features and OOD scores (None without an
        OOD score) of a ``N×C×H×W`` batch of model inputs (:meth:`model_input`)."""
        batch = batch.to(self.device)
        backbone = self._inference_backbone()
        if backbone is not self.model.backbone:
            batch = batch.contiguous(memory_format=torch.channels_last)
        features = backbone(batch)
        logits = self.model.head(features).float() / self.temperature
        probabilities = self.task.activate(logits).cpu().numpy()
        pooled = features.float().cpu().numpy()
        return probabilities, pooled, (self.ood.score(pooled) if self.ood is not None else None)

    def analyse_images(self, images: Sequence[Image.Image]) -> list[Prediction]:
        """Calibrated class probabilities and the OOD score for already-loaded images."""
        batch = torch.cat([self.model_input(image) for image in images])
        probabilities, _, found = self.forward_batch(batch)
        scores = found if found is not None else [None] * len(images)
        threshold = self.ood.threshold if self.ood is not None else None
        gates = self.gate.score(input_statistics(batch)) if self.gate is not None else [None] * len(images)
        gate_threshold = self.gate.threshold if self.gate is not None else None
        return [
            Prediction(
                {c: float(p) for c, p in zip(self.classes, row, strict=False)},
                self.calibrated,
                None if score is None else float(score),
                threshold,
                None if gate is None else float(gate),
                gate_threshold,
            )
            for row, score, gate in zip(probabilities, scores, gates, strict=True)
        ]

    def analyse(self, sources: Sequence[Source]) -> list[Prediction]:
        """:meth:`analyse_images` for image files (each loaded with the one image loader)."""
        return self.analyse_images([self.load(source) for source in sources])

    def predict_images(self, images: Sequence[Image.Image]) -> list[dict[str, float]]:
        """Class probabilities (calibrated when the export is) for already-loaded images
        (multi-label: one probability of presence per finding, which need not sum to 1)."""
        return [result.probabilities for result in self.analyse_images(images)]

    def predict(self, sources: Sequence[Source]) -> list[dict[str, float]]:
        """Class (or finding) probabilities for image files (each loaded with the one image loader)."""
        return self.predict_images([self.load(source) for source in sources])
