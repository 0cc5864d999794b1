"""What a classification task changes, in one object: multi-class or multi-label.

A :class:`Task` says how labels are read, how a probe is fitted and scored, how the
training fraction is drawn, which activation turns logits into probabilities and how
a fitted linear probe becomes a head. Evaluation, export and predict ask the task
instead of branching on ``source.task``:

* :data:`MULTICLASS`: one label per image; softmax over the classes; a multinomial
  probe; accuracy, balanced accuracy, macro one-vs-rest AUC, recall per class;
* :data:`MULTILABEL` (e.g. CheXpert findings): a 0/1 target per finding, ``nan`` where
  unknown; one sigmoid per finding; one binary probe per finding; AUC per finding.

This module needs numpy and torch only, so ``predict`` can use it without
scikit-learn (the probes are fitted by estimators the caller passes in).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from sslmed.core.errors import UsageError
from sslmed.core.metrics import metric_values, metrics, multilabel_metrics

#: makes an unfitted scikit-learn style estimator (``fit``, ``predict_proba``, ``classes_``)
ProbeFactory = Callable[[], Any]


def targets_matrix(records: Sequence[Any], n_classes: int) -> np.ndarray:
    """``N×n_classes`` float array of the records' targets (``nan`` where unknown)."""
    matrix = np.full((len(records), n_classes), np.nan)
    for row, record in enumerate(records):
        if record.targets is not None:
            matrix[row] = record.targets
    return matrix


# ------------------------------------------------- probes folded into heads


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
    """Fold a :class:`sslmed.core.tasks.MultiLabelProbe` of linear pipelines into one weight
    row and bias per finding (sigmoid of the logit equals that finding's probability;
    a finding the probe kept as a constant frequency gets a zero row and its log-odds)."""
    if len(probe.models) != n_findings:
        raise ValueError(f"the probe has {len(probe.models)} findings, the export {n_findings}")
    rows: list[np.ndarray | None] = []
    biases: list[float] = []
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


class Task:
    """The multi-class / multi-label differences; see :data:`MULTICLASS` and :data:`MULTILABEL`."""

    name: str = ""
    #: applied to the head's logits: ``"softmax"`` or ``"sigmoid"`` (written to ``model.json``)
    activation: str = ""
    #: whether evaluation trains the supervised-from-scratch reference for this task
    supervised_reference: bool = True
    #: True when each class has its own probability (they need not sum to 1)
    independent: bool = False
    #: what a page calls the probabilities of one image
    probabilities_title: str = "Class probabilities"

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    def labels(self, records: Sequence[Any], n_classes: int) -> np.ndarray:
        """The records' labels as the probes take them."""
        raise NotImplementedError

    def subsample(self, labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
        """Sorted indices of a ``fraction`` of the training labels."""
        raise NotImplementedError

    def counts(self, records: Sequence[Any], classes: Sequence[str]) -> dict[str, Any]:
        """Label counts of some records, for manifests and ``sslmed data inspect``."""
        raise NotImplementedError

    def fit_probe(self, make: ProbeFactory, x: np.ndarray, y: np.ndarray) -> Any:
        """A probe fitted on features ``x`` and labels ``y``."""
        raise NotImplementedError

    def probe_proba(self, probe: Any, x: np.ndarray, n_classes: int) -> np.ndarray:
        """``N×n_classes`` probabilities of a fitted probe."""
        raise NotImplementedError

    def metrics(self, y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
        """The scores a results row holds."""
        raise NotImplementedError

    def selection_score(self, y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> float:
        """What the probe's regularisation is chosen by on the validation split (higher is better)."""
        raise NotImplementedError

    def predictions(self, y_true: np.ndarray, proba: np.ndarray) -> dict[str, Any] | None:
        """Per-image test labels and probabilities kept in results (bootstrap CIs), or None."""
        return None

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities from a head's ``N×classes`` logits."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss of a head with ``logits`` (the supervised reference,
        fine-tuning); ``weight``: one weight per class (see :meth:`class_weights`)."""
        raise NotImplementedError

    def class_weights(self, labels: np.ndarray, n_classes: int) -> torch.Tensor | None:
        """Balanced class weights of training ``labels`` for :meth:`loss` (None: not weighted)."""
        return None

    def head(self, probe: Any, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A fitted linear probe as one ``nn.Linear``'s weight and bias, so that
        :meth:`activate` of its logits equals the probe's probabilities."""
        raise NotImplementedError


class MultiClassTask(Task):
    """One class per image: softmax, a multinomial logistic probe, class-stratified fractions."""

    name = "multiclass"
    activation = "softmax"

    def labels(self, records: Sequence[Any], n_classes: int) -> np.ndarray:
        return np.array([r.label for r in records])

    def subsample(self, labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
        """Class-stratified (at least one image per class)."""
        indices = np.arange(len(labels))
        if fraction >= 1.0:
            return indices
        from sklearn.model_selection import train_test_split  # evaluation only: predict never subsamples

        size = max(len(set(labels.tolist())), int(round(fraction * len(labels))))
        chosen, _rest = train_test_split(indices, train_size=size, stratify=labels, random_state=seed)
        return np.sort(chosen)

    def counts(self, records: Sequence[Any], classes: Sequence[str]) -> dict[str, Any]:
        """``{"per_class": {class: images}}``."""
        labels = [r.label for r in records]
        return {"per_class": {c: labels.count(i) for i, c in enumerate(classes)}}

    def fit_probe(self, make: ProbeFactory, x: np.ndarray, y: np.ndarray) -> Any:
        return make().fit(x, y)

    def probe_proba(self, probe: Any, x: np.ndarray, n_classes: int) -> np.ndarray:
        """Probabilities over all classes, even if the probe saw only some of them."""
        proba = np.zeros((len(x), n_classes))
        proba[:, probe.classes_] = probe.predict_proba(x)
        return proba

    def metrics(self, y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
        return metrics(y_true, proba, classes)

    def selection_score(self, y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> float:
        return metric_values(y_true, proba, len(classes))["balanced_accuracy"]

    def predictions(self, y_true: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
        return {"y_true": [int(y) for y in y_true], "proba": np.round(proba, 5).tolist()}

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=1)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        if weight is not None:
            weight = weight.to(device=logits.device, dtype=logits.dtype)
        return torch.nn.functional.cross_entropy(logits, labels, weight=weight)

    def class_weights(self, labels: np.ndarray, n_classes: int) -> torch.Tensor:
        """``images / (classes present × images of the class)``, scikit-learn's
        ``class_weight="balanced"``; a class without training images gets 1 (it never
        occurs in the loss)."""
        counts = np.bincount(np.asarray(labels, dtype=int), minlength=n_classes).astype(float)
        present = counts > 0
        weights = np.ones(n_classes)
        weights[present] = counts.sum() / (present.sum() * counts[present])
        return torch.tensor(weights, dtype=torch.float32)

    def head(self, probe: Any, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        return linear_head_from_probe(probe, n_classes)


class MultiLabelProbe:
    """One binary probe per finding, each fitted on the images whose label is known;
    ``predict_proba`` gives ``N×findings`` probabilities of presence. A finding with one
    class only among the known labels keeps its frequency (0.5 with no label at all)."""

    def __init__(self, make: ProbeFactory) -> None:
        self.make = make
        self.models: list[Any] = []
        self.n_features = 0

    def fit(self, x: np.ndarray, y: np.ndarray) -> MultiLabelProbe:
        self.models, self.n_features = [], x.shape[1]
        for j in range(y.shape[1]):
            known = ~np.isnan(y[:, j])
            truth = y[known, j].astype(int)
            if len(set(truth.tolist())) < 2:
                self.models.append(float(truth.mean()) if len(truth) else 0.5)
            else:
                model = self.make()
                if getattr(model, "n_neighbors", 0) > len(truth):
                    model.set_params(n_neighbors=len(truth))
                self.models.append(model.fit(x[known], truth))
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        columns = [
            np.full(len(x), m) if isinstance(m, float) else m.predict_proba(x)[:, list(m.classes_).index(1)]
            for m in self.models
        ]
        return np.stack(columns, axis=1)


class MultiLabelTask(Task):
    """Findings per image (``nan``: unknown): one sigmoid and one binary probe per finding."""

    name = "multilabel"
    activation = "sigmoid"
    supervised_reference = False  # not yet: the report's CIs and tables are multi-class only
    independent = True
    probabilities_title = "Finding probabilities (one per finding, independent: they need not sum to 1)"

    def labels(self, records: Sequence[Any], n_classes: int) -> np.ndarray:
        return targets_matrix(records, n_classes)

    def subsample(self, labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
        """Uniform (findings overlap, so there is nothing to stratify on); at least two images."""
        if fraction >= 1.0:
            return np.arange(len(labels))
        size = max(2, int(round(fraction * len(labels))))
        return np.sort(np.random.default_rng(seed).choice(len(labels), size=size, replace=False))

    def counts(self, records: Sequence[Any], classes: Sequence[str]) -> dict[str, Any]:
        """``{"per_finding": {finding: {positive, negative, unknown}}}``."""
        matrix = targets_matrix(records, len(classes))
        return {
            "per_finding": {
                c: {
                    "positive": int(np.sum(matrix[:, i] == 1)),
                    "negative": int(np.sum(matrix[:, i] == 0)),
                    "unknown": int(np.sum(np.isnan(matrix[:, i]))),
                }
                for i, c in enumerate(classes)
            }
        }

    def fit_probe(self, make: ProbeFactory, x: np.ndarray, y: np.ndarray) -> MultiLabelProbe:
        return MultiLabelProbe(make).fit(x, y)

    def probe_proba(self, probe: Any, x: np.ndarray, n_classes: int) -> np.ndarray:
        return np.asarray(probe.predict_proba(x))

    def metrics(self, y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
        return multilabel_metrics(y_true, proba, classes)

    def selection_score(self, y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> float:
        score = multilabel_metrics(y_true, proba, classes)["macro_auc"]
        return -1.0 if np.isnan(score) else score

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Binary cross-entropy over the known labels only. ``weight`` is not used: end-to-end
        training is multi-class only (:attr:`supervised_reference`); the multi-label linear
        probe balances each finding's positives and negatives in scikit-learn."""
        known = ~torch.isnan(labels)
        if not known.any():  # a batch without a single known label teaches nothing
            return logits.sum() * 0.0
        return torch.nn.functional.binary_cross_entropy_with_logits(logits[known], labels[known])

    def head(self, probe: Any, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        return multilabel_head_from_probe(probe, n_classes)


MULTICLASS = MultiClassTask()
MULTILABEL = MultiLabelTask()
TASKS: dict[str, Task] = {task.name: task for task in (MULTICLASS, MULTILABEL)}


def task_for(name: str | None) -> Task:
    """The task called ``name`` (``ImageSource.task``, ``model.json``'s ``task``);
    ``None`` means multi-class, as in exports written before tasks were recorded."""
    if name is None:
        return MULTICLASS
    if name not in TASKS:
        raise UsageError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return TASKS[name]
