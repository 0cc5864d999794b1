"""``evaluation.export: fine-tuned``: the run's model/ is the network fine-tuned with all the
training labels, its own head included, calibrated and with its OOD check, and what
sslmed serves and predicts is that model (real PneumoniaMNIST radiographs)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from faults import write_small_data
from safetensors.torch import load_file

from sslmed.app.runner import run_recipe
from sslmed.core.errors import RecipeError, UsageError
from sslmed.core.plugins import get_registry
from sslmed.core.recipe import load_recipe
from sslmed.serving.predict import Predictor

RECIPE = """\
name: tuned
data_root: {root}
data:
  small: {{name: csv, path: small, split_column: split, val_from_train: 0.25}}
steps:
  - name: pretrain
    data: small
    backbone: {{name: resnet18, small_input: true}}
    objective: {{name: simclr}}
    augmentations: [{{name: simclr}}]
    image_size: 16
    batch_size: 16
    epochs: 1
    accelerator: cpu
evaluation:
  data: small
  probes: [linear]
  baselines: [random_init]
  # 100% is not a fine-tuning row here: the export fine-tunes it all the same
  finetune: {{epochs: 2, batch_size: 8, patience: 1, label_fractions: [0.5]}}
  export: fine-tuned
"""


def test_the_export_is_the_fine_tuned_backbone_and_predict_gives_its_answers(data_dir: Path, tmp_path: Path):
    write_small_data(tmp_path, data_dir / "pneumoniamnist" / "pneumoniamnist.npz")
    recipe = tmp_path / "tuned.yaml"
    recipe.write_text(RECIPE.format(root=tmp_path))
    result = run_recipe(recipe, runs_dir=tmp_path / "runs", progress=False)
    rows = {(r["model"], r["probe"], r["label_fraction"]): r for r in result.rows}
    assert ("sslmed:pretrain", "fine-tune", 0.5) in rows and ("random_init", "fine-tune", 0.5) in rows
    assert ("sslmed:pretrain", "fine-tune", 1.0) in rows  # trained for the export, and reported
    assert ("random_init", "fine-tune", 1.0) not in rows
    tuned = rows[("sslmed:pretrain", "fine-tune", 1.0)]

    model_dir = result.run_dir / "model"
    meta = json.loads((model_dir / "model.json").read_text())
    assert (meta["metrics"]["model"], meta["metrics"]["probe"]) == ("sslmed:pretrain", "fine-tune")
    assert meta["metrics"]["balanced_accuracy"] == tuned["balanced_accuracy"]
    assert "calibration" in meta and "gate" in meta["ood"]
    exported = load_file(str(model_dir / "model.safetensors"))
    pretrained = load_file(str(result.run_dir / "steps" / "pretrain" / "backbone.safetensors"))
    changed = [
        k for k, v in pretrained.items() if v.is_floating_point() and not torch.equal(exported[f"backbone.{k}"], v)
    ]
    assert len(changed) > len(pretrained) // 2, "the exported backbone is the fine-tuned one, not the pre-trained"

    # what predict answers for the test images is the fine-tuned network's own answer
    with open(tmp_path / "small" / "labels.csv", newline="") as handle:
        test = [tmp_path / "small" / "images" / r["path"] for r in csv.DictReader(handle) if r["split"] == "test"]
    predictor = Predictor(model_dir, device="cpu")
    answers = predictor.analyse(test)
    assert all(a.calibrated and a.ood_flag is not None for a in answers)
    predicted = [predictor.classes.index(max(a.probabilities, key=a.probabilities.get)) for a in answers]
    assert predicted == np.argmax(tuned["test_predictions"]["proba"], axis=1).tolist()


def test_a_fine_tuned_export_without_a_validation_split_is_one_line(data_dir: Path, tmp_path: Path):
    write_small_data(tmp_path, data_dir / "pneumoniamnist" / "pneumoniamnist.npz")
    recipe = tmp_path / "tuned.yaml"
    recipe.write_text(RECIPE.format(root=tmp_path).replace(", val_from_train: 0.25", ""))
    with pytest.raises(UsageError, match="export: 'fine-tuned' needs a validation split in small"):
        run_recipe(recipe, runs_dir=tmp_path / "runs", progress=False)


def test_a_fine_tuned_export_without_fine_tuning_settings_is_refused_naming_the_key(tmp_path: Path):
    text = RECIPE.format(root=tmp_path).replace(
        "  finetune: {epochs: 2, batch_size: 8, patience: 1, label_fractions: [0.5]}\n", ""
    )
    path = tmp_path / "no-finetune.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, get_registry())
    message = str(caught.value)
    assert "evaluation" in message and "export: 'fine-tuned' needs a finetune section" in message
