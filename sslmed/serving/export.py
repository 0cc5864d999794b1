"""The classifier export: the probed backbone plus its linear probe folded into one head.

Evaluation fits the probe; this module turns it into ``model/model.safetensors`` +
``model/model.json`` (see :mod:`sslmed.artifacts.exports`), which ``predict``, ``serve`` and
the demo read without scikit-learn. The head gives logits; the task's activation
(softmax for multi-class, sigmoid for multi-label, named in ``model.json``) gives
exactly the probe's probabilities.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sslmed.artifacts.exports import save_model
from sslmed.core.backbone import Backbone
from sslmed.core.tasks import MULTICLASS, Task
from sslmed.evaluation.ood import GATE_TENSOR_PREFIX as GATE_PREFIX
from sslmed.evaluation.ood import TENSOR_PREFIX as OOD_PREFIX

if TYPE_CHECKING:
    from sslmed.evaluation.trust import TrustFit


def export_classifier(
    directory: Path,
    backbone: Backbone,
    probe: Any,
    meta: dict[str, Any],
    extra_tensors: dict[str, dict[str, torch.Tensor]] | None = None,
    task: Task = MULTICLASS,
    trust: TrustFit | None = None,
) -> None:
    """Write ``model.safetensors`` + ``model.json`` (``meta``: backbone spec, classes, ...).

    ``extra_tensors`` (e.g. a CRSM decoder's weights, by export name) are stored under
    ``<name>.`` prefixes; ``meta["extras"]`` describes how to rebuild them. ``task`` and
    its activation are recorded so that predict applies the right one. ``trust``
    (:func:`sslmed.evaluation.trust.fit_trust`) adds the temperature (``meta["calibration"]``; the
    head stays as fitted, :class:`~sslmed.serving.predict.Predictor` divides the logits by it)
    and the OOD score (``ood.*`` tensors, ``meta["ood"]``).
    """
    weight, bias = task.head(probe, len(meta["classes"]))
    tensors = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    tensors.update({"head.weight": weight, "head.bias": bias})
    if trust is not None:
        meta = dict(meta)
        if trust.calibration is not None:
            meta["calibration"] = trust.calibration.summary()
        meta["ood"] = trust.ood.meta()
        tensors.update({f"{OOD_PREFIX}.{k}": v for k, v in trust.ood.to_tensors().items()})
        if trust.gate is not None:  # the input-statistics gate: flagged by either score
            meta["ood"]["gate"] = trust.gate.meta()
            tensors.update({f"{GATE_PREFIX}.{k}": v for k, v in trust.gate.to_tensors().items()})
    for name, state in (extra_tensors or {}).items():
        tensors.update({f"{name}.{k}": v for k, v in state.items()})
    save_model(directory, tensors, {**meta, "task": task.name, "activation": task.activation})
