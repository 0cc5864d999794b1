"""The classifier export: the probed backbone plus its linear probe folded into one head.

Evaluation fits the probe; this module turns it into ``model/model.safetensors`` +
``model/model.json`` (see :mod:`sslmed.checkpoints`), which ``predict``, ``serve`` and
the demo read without scikit-learn. The head gives logits; the task's activation
(softmax for multi-class, sigmoid for multi-label, named in ``model.json``) gives
exactly the probe's probabilities.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sslmed.checkpoints import save_model
from sslmed.models import Backbone
from sslmed.ood import TENSOR_PREFIX as OOD_PREFIX
from sslmed.tasks import MULTICLASS, Task

if TYPE_CHECKING:
    from sslmed.trust import TrustFit

#: the bias of a class the probe never saw: its probability is ~0
UNSEEN_BIAS = -1e4


def _fold(probe: Any) -> tuple[np.ndarray, np.ndarray]:
    """``StandardScaler`` + ``LogisticRegression`` -> the logistic model's coefficients
    and intercepts on unscaled features (a constant feature's scale counts as 1)."""
    scaler, logistic = probe[0], probe[-1]
    scale = np.where(scaler.scale_ == 0, 1.0, scaler.scale_)
    coef = logistic.coef_ / scale
    intercept = logistic.intercept_ - (logistic.coef_ * scaler.mean_ / scale).sum(axis=1)
    return coef, intercept


def linear_head_from_probe(probe: Any, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a multi-class ``StandardScaler`` + ``LogisticRegression`` pipeline into one
    weight and bias giving logits over all ``n_classes`` (softmax of them equals
    ``predict_proba``)."""
    coef, intercept = _fold(probe)
    if coef.shape[0] == 1:  # binary: p(class 1) = sigmoid(z) = softmax([0, z])[1]
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    weight = np.zeros((n_classes, coef.shape[1]))
    bias = np.full(n_classes, UNSEEN_BIAS)  # classes the probe never saw get ~0 probability
    classes = probe[-1].classes_
    weight[classes] = coef
    bias[classes] = intercept
    return torch.tensor(weight, dtype=torch.float32), torch.tensor(bias, dtype=torch.float32)


def multilabel_head_from_probe(probe: Any, n_findings: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a :class:`sslmed.tasks.MultiLabelProbe` of linear pipelines into one weight
    row and bias per finding (sigmoid of the logit equals that finding's probability;
    a finding the probe kept as a constant frequency gets a zero row and its log-odds)."""
    if len(probe.models) != n_findings:
        raise ValueError(f"the probe has {len(probe.models)} findings, the export {n_findings}")
    rows, biases = [], []
    for model in probe.models:
        if isinstance(model, float):
            p = min(max(model, 1e-6), 1 - 1e-6)
            rows.append(None)
            biases.append(float(np.log(p / (1 - p))))
            continue
        coef, intercept = _fold(model)  # binary: coef_ is the logit of class 1
        rows.append(coef[0])
        biases.append(float(intercept[0]))
    weight = np.stack([np.zeros(probe.n_features) if r is None else r for r in rows])
    return torch.tensor(weight, dtype=torch.float32), torch.tensor(biases, dtype=torch.float32)


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
    (:func:`sslmed.trust.fit_trust`) adds the temperature (``meta["calibration"]``; the
    head stays as fitted, :class:`~sslmed.predict.Predictor` divides the logits by it)
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
    for name, state in (extra_tensors or {}).items():
        tensors.update({f"{name}.{k}": v for k, v in state.items()})
    save_model(directory, tensors, {**meta, "task": task.name, "activation": task.activation})
