"""Class weighting of the evaluation (``evaluation.class_weight``): balanced by default.

Medical sets are imbalanced (kermany's train split is 25.7% normal): an unweighted
probe calls most images the majority class. On a real imbalanced subset of
PneumoniaMNIST (raw pixels, 1 normal in 11 training images), the balanced probe's
minority recall must be higher than the unweighted one's; the setting must round-trip
through a recipe; rows, results.json and results.md must name it.
"""

from __future__ import annotations

import json

import numpy as np
import pydantic
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight

from sslmed.app.results import class_weight_line, write_results
from sslmed.core.plugins import get_registry
from sslmed.core.recipe import EvaluationSettings, Recipe, load_recipe
from sslmed.core.tasks import MULTICLASS, MULTILABEL
from sslmed.evaluation.features import FeatureSet
from sslmed.evaluation.probes import fit_linear, linear_probe, probe_rows

CLASSES = ["normal", "pneumonia"]


@pytest.fixture(scope="module")
def imbalanced(data_dir):
    """Raw pixels of a real imbalanced PneumoniaMNIST subset: train 40 normal / 400
    pneumonia (official train split), validation 40 / 40 (official val split), and the
    official test split (234 / 390)."""
    data = np.load(data_dir / "pneumoniamnist" / "pneumoniamnist.npz")
    rng = np.random.default_rng(0)

    def take(split: str, per_class: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
        y = data[f"{split}_labels"].ravel()
        chosen = np.concatenate([rng.choice(np.flatnonzero(y == c), n, replace=False) for c, n in per_class.items()])
        return data[f"{split}_images"][chosen].reshape(len(chosen), -1) / 255.0, y[chosen]

    train = take("train", {0: 40, 1: 400})
    val = take("val", {0: 40, 1: 40})
    test = data["test_images"].reshape(len(data["test_images"]), -1) / 255.0, data["test_labels"].ravel()
    return train, val, test


@pytest.mark.needs_data
def test_balanced_probe_recalls_the_minority_class_better(imbalanced):
    train, val, (x_test, y_test) = imbalanced
    recall = {}
    for weight in ("balanced", "none"):
        probe, _c = fit_linear(MULTICLASS, train, val, CLASSES, seed=0, class_weight=weight)
        predicted = probe.predict(x_test)
        recall[weight] = float(np.mean(predicted[y_test == 0] == 0))
    # measured: normal recall 0.581 balanced (C=0.01) vs 0.440 unweighted (C=1) on the 234 normal
    # test images; pneumonia recall 0.977 vs 0.992
    assert recall["balanced"] >= recall["none"] + 0.05, recall


@pytest.mark.needs_data
def test_rows_name_the_weighting_and_the_default_is_balanced(imbalanced):
    (x, y), (xv, yv), (xt, yt) = imbalanced
    features = FeatureSet("raw_pixels", x, xt, xv)
    labels = {"train": y, "val": yv, "test": yt}
    settings = EvaluationSettings(data="d", probes=["linear", "knn"], baselines=[])
    assert settings.class_weight == "balanced"
    rows = probe_rows(features, labels, CLASSES, settings).rows
    assert {r["probe"]: r["class_weight"] for r in rows} == {"linear": "balanced", "knn": "none"}
    unweighted = probe_rows(features, labels, CLASSES, settings.model_copy(update={"class_weight": "none"})).rows
    assert unweighted[0]["class_weight"] == "none"
    assert unweighted[0]["recall"]["normal"] < rows[0]["recall"]["normal"]


def test_the_setting_round_trips_through_a_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        """name: r
data:
  d: {name: csv, path: kermany}
steps:
  - name: s
    data: d
    backbone: {name: resnet18}
    objective: {name: simclr}
    augmentations: [{name: simclr}]
evaluation: {data: d, class_weight: none}
"""
    )
    registry = get_registry()
    loaded = load_recipe(recipe, registry)
    assert loaded.evaluation.class_weight == "none"
    again = Recipe.model_validate(loaded.model_dump())
    assert again.evaluation.class_weight == "none"
    assert load_recipe(recipe, registry, ["evaluation.class_weight=balanced"]).evaluation.class_weight == "balanced"
    with pytest.raises(pydantic.ValidationError):
        EvaluationSettings(data="d", class_weight="auto")


def test_results_files_name_the_weighting(tmp_path):
    recipe = Recipe.model_validate(
        {
            "name": "r",
            "data": {"d": {"name": "csv", "path": "x"}},
            "steps": [
                {
                    "name": "s",
                    "data": "d",
                    "backbone": {"name": "resnet18"},
                    "objective": {"name": "simclr"},
                    "augmentations": [{"name": "simclr"}],
                }
            ],
            "evaluation": {"data": "d"},
        }
    )
    metrics = {"accuracy": 0.5, "balanced_accuracy": 0.5, "macro_auc": 0.5, "recall": {"a": 0.5, "b": 0.5}}
    rows = [
        {"model": "m", "probe": "linear", "label_fraction": 1.0, "class_weight": "balanced", **metrics},
        {"model": "m", "probe": "knn", "label_fraction": 1.0, "class_weight": "none", **metrics},
    ]
    write_results(tmp_path, recipe, rows, ["a", "b"])
    assert json.loads((tmp_path / "results.json").read_text())["class_weight"] == "balanced"
    assert "Class weights: balanced (linear); none (knn)" in (tmp_path / "results.md").read_text()
    assert class_weight_line([{"probe": "linear"}]) == ""  # rows written before the setting


def test_torch_class_weights_match_scikit_learn_and_change_the_loss():
    labels = np.array([0] * 10 + [1] * 90 + [2] * 20)
    weights = MULTICLASS.class_weights(labels, 4)  # class 3 absent: weight 1, never in the loss
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    assert torch.allclose(weights[:3], torch.tensor(expected, dtype=torch.float32))
    assert weights[3] == 1.0
    logits, target = torch.zeros(4, 4), torch.tensor([0, 1, 1, 1])
    logits[:, 1] = 2.0  # the majority class predicted everywhere: weighting raises the loss
    assert MULTICLASS.loss(logits, target, weights) > MULTICLASS.loss(logits, target)


def test_multilabel_probe_balances_each_finding():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = np.stack([(x[:, 0] > 1.3).astype(float), (x[:, 1] > 0).astype(float)], axis=1)  # finding 0: ~10% positive
    probe = MULTILABEL.fit_probe(lambda: linear_probe(1.0, 0, "balanced"), x, y)
    assert all(m[-1].class_weight == "balanced" for m in probe.models)
    plain = MULTILABEL.fit_probe(lambda: linear_probe(1.0, 0, "none"), x, y)
    assert all(m[-1].class_weight is None for m in plain.models)
    # the rare finding: the balanced probe calls more of its positives
    positives = y[:, 0] == 1
    balanced_hits = (probe.predict_proba(x)[positives, 0] > 0.5).mean()
    plain_hits = (plain.predict_proba(x)[positives, 0] > 0.5).mean()
    assert balanced_hits >= plain_hits
