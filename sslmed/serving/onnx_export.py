"""The classifier as one ONNX graph: normalised pixels in, calibrated probabilities,
pooled features and the out-of-distribution score out.

The graph is what :class:`sslmed.serving.predict.Predictor` computes after its preprocessing
(the eval transform stays outside: resize to ``image_size``², scale to 0-1, normalise
with ``config.json``'s ``preprocessing``). Its input ``pixel_values`` is
``batch×C×H×W`` float32 with a dynamic batch; its outputs:

* ``probabilities`` (``batch×classes``): the head's logits divided by the calibration
  temperature, then the task's activation (softmax, or one sigmoid per finding);
* ``features`` (``batch×feature_dim``): the pooled backbone features, for your own
  out-of-distribution score or downstream model;
* ``ood_score`` (``batch``, only when the export has an OOD score): the
  :class:`sslmed.evaluation.ood.FeatureDistance` score, flagged above ``config.json``'s
  ``ood.threshold``;
* ``gate_score`` (``batch``, only when the export has the input gate): the
  :class:`sslmed.evaluation.ood.InputGate` score of the input's intensity statistics,
  flagged above ``ood.gate.threshold``;
* ``ood_flag`` (``batch``, bool, with ``ood_score``): either score above its threshold,
  the flag ``sslmed predict`` and the page give.

:class:`OnnxPredictor` runs such a file with onnxruntime and numpy only.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from sslmed.core.errors import CheckpointError, UsageError
from sslmed.evaluation.ood import intensity_statistics

ONNX_FILE = "model.onnx"
#: the opset the exporter writes (onnxruntime >= 1.17 runs it)
OPSET = 18
INPUT, OUTPUTS = "pixel_values", ("probabilities", "features", "ood_score", "gate_score", "ood_flag")


def graph_outputs(predictor: Any) -> list[str]:
    """The outputs a predictor's graph has: the OOD ones only where its export has them."""
    if predictor.ood is None:
        return list(OUTPUTS[:2])
    return [name for name in OUTPUTS if name != "gate_score" or predictor.gate is not None]


#: loggers of the exporter's graph optimiser, which log every rewrite at INFO
QUIET_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx")


@contextlib.contextmanager
def _quiet(names: tuple[str, ...]) -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


class ExportGraph(nn.Module):
    """Backbone + head + temperature + activation (+ OOD score) as one module."""

    def __init__(self, predictor: Any) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(predictor.model.backbone).cpu().eval()
        self.head = copy.deepcopy(predictor.model.head).cpu().eval()
        self.temperature = float(predictor.temperature)
        self.sigmoid = predictor.task.activation == "sigmoid"
        self.with_ood = predictor.ood is not None
        self.with_gate = self.with_ood and predictor.gate is not None
        if self.with_ood:  # float32 in the graph; the score is a distance of unit vectors
            self.register_buffer("means", torch.tensor(predictor.ood.means, dtype=torch.float32))
            self.register_buffer("precision", torch.tensor(predictor.ood.precision, dtype=torch.float32))
            self.ood_threshold = float(predictor.ood.threshold)
        if self.with_gate:
            # float64: the statistics' covariance is nearly singular (the histogram sums to 1),
            # so its precision has large entries of both signs that float32 would cancel badly
            self.register_buffer("gate_mean", torch.tensor(predictor.gate.mean, dtype=torch.float64))
            self.register_buffer("gate_precision", torch.tensor(predictor.gate.precision, dtype=torch.float64))
            self.gate_threshold = float(predictor.gate.threshold)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.backbone(pixel_values)
        logits = self.head(features) / self.temperature
        probabilities = torch.sigmoid(logits) if self.sigmoid else torch.softmax(logits, dim=1)
        if not self.with_ood:
            return probabilities, features
        z = nn.functional.normalize(features, dim=1)
        means, precision = cast(torch.Tensor, self.means), cast(torch.Tensor, self.precision)  # buffers
        diff = z[:, None, :] - means[None, :, :]  # batch × classes × features
        squared = ((diff @ precision) * diff).sum(dim=2)
        score = torch.sqrt(torch.clamp(squared.min(dim=1).values, min=0.0))
        flag = score > self.ood_threshold
        if not self.with_gate:
            return probabilities, features, score, flag
        d = intensity_statistics(pixel_values).double() - cast(torch.Tensor, self.gate_mean)[None, :]
        gate = torch.sqrt(torch.clamp(((d @ cast(torch.Tensor, self.gate_precision)) * d).sum(dim=1), min=0.0))
        return probabilities, features, score, gate.float(), flag | (gate > self.gate_threshold)


def export_onnx(predictor: Any, path: Path) -> Path:
    """Write ``predictor``'s classifier to ``path`` (one ``.onnx`` file, dynamic batch),
    atomically; return ``path``."""
    import onnx  # here: only ONNX export needs it (start-up speed of the rest)

    graph = ExportGraph(predictor).eval()
    example = torch.zeros(2, predictor.in_channels, predictor.image_size, predictor.image_size)
    outputs = graph_outputs(predictor)
    batch = torch.export.Dim("batch", min=1, max=4096)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    try:
        # the exporter prints its progress on stdout (where the command's JSON goes) and its
        # optimiser logs every rewrite at INFO: both kept out of the user's terminal
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), _quiet(QUIET_LOGGERS):
            program = torch.onnx.export(
                graph,
                (example,),
                input_names=[INPUT],
                output_names=list(outputs),
                dynamic_shapes={"pixel_values": {0: batch}},
                opset_version=OPSET,
                dynamo=True,
                verbose=False,
                external_data=False,
            )
        if program is None:  # the dynamo exporter always returns a program
            raise RuntimeError("torch.onnx.export returned no program")
        program.save(str(temp))
        onnx.checker.check_model(str(temp))
        temp.replace(path)
    except Exception as exc:
        temp.unlink(missing_ok=True)
        if isinstance(exc, (UsageError, CheckpointError)):
            raise
        raise CheckpointError(
            f"{predictor.model_dir}: backbone {predictor.meta['backbone']} cannot be exported to ONNX "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    return path


class OnnxPredictor:
    """A ``model.onnx`` of an export folder run with onnxruntime (no torch needed for
    the arrays): ``run(pixel_values)`` gives the graph's outputs by name."""

    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort  # here: an optional runtime, loaded only when asked for
        except ImportError:  # pragma: no cover - onnxruntime is a dependency
            raise UsageError("onnxruntime is not installed (pip install onnxruntime)") from None
        self.folder = Path(folder)
        path = self.folder / ONNX_FILE
        if not path.is_file():
            raise CheckpointError(f"{path}: not found (write it with `sslmed export RUN --format onnx`)")
        config_path = self.folder / "config.json"
        self.config: dict[str, Any] = json.loads(config_path.read_text()) if config_path.is_file() else {}
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        """The outputs for a ``batch×C×H×W`` float32 array of normalised pixels."""
        values = self.session.run(None, {INPUT: np.ascontiguousarray(pixel_values, dtype=np.float32)})
        return dict(zip(self.output_names, values, strict=True))
