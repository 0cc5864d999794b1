"""Each objective on real radiographs: a short run on covid3 at 32 px through the whole
pipeline (loader, Lightning, checkpoints, export, kNN probe against the same network at
random init; a two-layer CNN registered by the test keeps it to seconds), and exact
resume of the momentum encoders, their queue and centre.

Sized for the test suite (ten optimiser steps): whether the frozen encoder beats random
init needs a real budget, and at ten steps it does not (the kNN rows are printed with
``-s``); that comparison belongs in ``bench/`` (docs/methods.md)."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from faults import write_small_data
from methods_support import EXPORTED, METHODS, SMALL, TinyBackbonePlugin, objective_spec
from safetensors.torch import load_file

from sslmed.app.prepare import build_sources, load_recipe_file
from sslmed.app.runner import run_recipe
from sslmed.core import plugins
from sslmed.training.engine import load_checkpoint, train_step

RECIPE = """\
name: methods
data_root: {root}
data:
  covid3: {{name: csv, path: covid3, patient_column: patient_id, test_size: 0.2, val_size: 0.1}}
defaults:
  backbone: {{name: test_tiny_cnn, width: 16}}
  objective: {objective}
  augmentations: [{augmentation}]
  image_size: 32
  batch_size: 16
  max_steps: {steps}
  log_every_n_steps: 1
  accelerator: cpu
  cache: "on"
  optimizer: {{name: adamw, lr: 0.002}}
steps:
  - {{name: pretrain, data: covid3}}
evaluation:
  data: covid3
  probes: [knn]
  baselines: [random_init]
"""
STEPS = 10


@pytest.fixture(autouse=True)
def tiny_backbone():
    plugins.register_plugin(TinyBackbonePlugin(), name="test-tiny-backbone")
    yield
    plugins.unregister_plugin("test-tiny-backbone")


def _augmentation(method: str) -> str:
    if method == "dino":
        return "{name: multicrop, local_views: 2}"
    if method == "fastsiam":
        return "{name: multicrop, global_views: 4, local_views: 0}"
    return "{name: simclr, min_scale: 0.3}"


def write_recipe(folder: Path, data_dir: Path, method: str, steps: int = STEPS) -> Path:
    path = folder / f"{method}.yaml"
    spec = json.dumps(objective_spec(method))
    path.write_text(RECIPE.format(root=data_dir, objective=spec, augmentation=_augmentation(method), steps=steps))
    return path


@pytest.mark.parametrize("method", METHODS)
def test_short_run_on_covid3_loss_falls_and_is_probed(method: str, data_dir: Path, tmp_path: Path):
    steps = STEPS
    result = run_recipe(write_recipe(tmp_path, data_dir, method, steps), runs_dir=tmp_path / "runs", progress=False)
    step = result.run_dir / "steps" / "pretrain"
    with open(step / "logs" / "metrics.csv", newline="") as handle:
        loss = [float(r["train/loss_step"]) for r in csv.DictReader(handle) if r.get("train/loss_step")]
    assert len(loss) == steps
    if method == "moco":
        # with a queue the loss first rises, while real keys replace the queue's random
        # initial ones (easy negatives); a short run shows positives above the queue's
        # negatives: below chance, log(1 + queue_size)
        assert all(value < math.log(1 + SMALL["moco"]["queue_size"]) for value in loss[-3:]), loss
    else:
        assert sum(loss[-3:]) / 3 < sum(loss[:3]) / 3, loss
    meta = json.loads((step / "backbone.json").read_text())
    assert meta["exported_backbone"] == EXPORTED[method]
    knn = {r["model"]: r["balanced_accuracy"] for r in result.rows if r["probe"] == "knn"}
    assert set(knn) == {"sslmed:pretrain", "random_init"}
    print(f"{method}: loss {[round(v, 3) for v in loss]}, kNN balanced accuracy {knn}")


@pytest.mark.parametrize("method", ["byol", "moco", "dino"])
def test_resume_continues_the_momentum_encoders_exactly(method: str, data_dir: Path, tmp_path: Path):
    """Two epochs in one go, and the same two epochs resumed from the first epoch's
    checkpoint: the same student, teacher, queue and centre, to the bit."""
    recipe_path = write_small_data(tmp_path, data_dir / "pneumoniamnist" / "pneumoniamnist.npz")
    spec = json.dumps(objective_spec(method))
    views = "{name: multicrop, local_views: 2}" if method == "dino" else "{name: simclr}"
    recipe, registry = load_recipe_file(
        recipe_path,
        (
            f"defaults.objective={spec}",
            f"defaults.augmentations=[{views}]",
            "steps.0.epochs=2",
            "defaults.backbone={name: test_tiny_cnn}",
        ),
    )
    step = recipe.step("first")
    source = build_sources(recipe, registry)[step.data]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    train_step(step, source, whole, registry, progress=False)
    (first,) = (whole / "checkpoints").glob("epoch000-*.ckpt")
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(first, resumed / "checkpoints" / first.name)
    train_step(step, source, resumed, registry, progress=False)
    (a,) = (whole / "checkpoints").glob("epoch001-*.ckpt")
    (b,) = (resumed / "checkpoints").glob("epoch001-*.ckpt")
    state_a, state_b = load_checkpoint(a)["state_dict"], load_checkpoint(b)["state_dict"]
    assert state_a.keys() == state_b.keys()
    assert any(k.startswith("teacher_backbone.") for k in state_a)
    if method == "moco":
        assert "criterion.memory_bank.bank" in state_a  # the queue is in the checkpoint
    if method == "dino":
        assert "criterion.center" in state_a
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    # the teacher moved away from the student, and the export is the paper's one
    exported = load_file(str(whole / "backbone.safetensors"))
    prefix = "teacher_backbone." if EXPORTED[method] == "teacher" else "backbone."
    for key, value in exported.items():
        assert torch.equal(value, state_a[prefix + key]), key
    assert not torch.equal(state_a["teacher_backbone.blocks.0.weight"], state_a["backbone.blocks.0.weight"])


def test_byol_plus_reconstruction_is_one_recipe_line(data_dir: Path, tmp_path: Path):
    """The thesis's contrast + reconstruction on another objective: BYOL + MDRE + a decoder,
    from ``reconstruction:`` in the step; both terms logged, the decoder exported."""
    from sslmed.testing.models import decoder_spec, ensure_stand_in_decoder

    ensure_stand_in_decoder()  # resnet_decoder needs a ResNet; the test's CNN gets a small upsampler
    recipe = write_recipe(tmp_path, data_dir, "byol")
    reconstruction = json.dumps({"weight": 1.0, "decoder": decoder_spec()})
    text = recipe.read_text().replace(
        "[{name: simclr, min_scale: 0.3}]", "[{name: simclr, min_scale: 0.3}, {name: mdre}]"
    )
    step_line = "  - {name: pretrain, data: covid3}"
    recipe.write_text(text.replace(step_line, f"{step_line[:-1]}, reconstruction: {reconstruction}}}"))
    assert "{name: mdre}" in recipe.read_text() and "reconstruction: {" in recipe.read_text()
    result = run_recipe(recipe, runs_dir=tmp_path / "runs", progress=False)
    step = result.run_dir / "steps" / "pretrain"
    with open(step / "logs" / "metrics.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("train/loss_step")]
    loss, objective, reconstruction = (
        [float(r[f"train/{name}_step"]) for r in rows] for name in ("loss", "objective", "reconstruction")
    )
    assert len(loss) == STEPS
    for total, own, pixels in zip(loss, objective, reconstruction, strict=True):
        assert total == pytest.approx(own + pixels, rel=1e-4, abs=1e-5)
    assert sum(reconstruction[-3:]) < sum(reconstruction[:3]), reconstruction
    meta = json.loads((step / "backbone.json").read_text())
    assert meta["extras"]["decoder"]["spec"] == decoder_spec()
    assert (step / "decoder.safetensors").is_file()
